"""The package layout: every package folder is listed, and stdlib `operator` is never shadowed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for prefix, folder in cfg["package-dir"].items():
        base = ROOT / folder
        found.add(prefix)
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    assert found == listed


def test_operator_folder_has_no_init() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_stdlib_operator_is_not_shadowed_from_repo_root() -> None:
    code = "import operator, mlrollout.operator; print(operator.eq(1, 1))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


def test_cli_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mlrollout.services.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in ("export", "examples", "serve", "router", "dev"):
        assert name in out.stdout
