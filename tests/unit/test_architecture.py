"""The layering rules that import-linter cannot see: pure modules read no clock and do no
network or process I/O; the strict-typing list and the pure-module list are one list.

import-linter (`make lint`) checks which packages a module imports; stdlib modules are
one node each there (``urllib``, ``time``), so ``urllib.request`` versus ``urllib.parse``
and ``time.time()`` versus ``time`` as a type are told apart here, on the syntax tree.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Modules whose import means I/O outside the process, or a process.
IO_MODULES = {
    "urllib.request",
    "urllib.error",
    "http.client",
    "http.server",
    "socket",
    "ssl",
    "subprocess",
    "asyncio",
    "requests",
}
# Calls that read a clock or wait on one: time is passed in (``now``) instead.
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("time", "perf_counter"),
    ("time", "sleep"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}
CLOCK_NAMES = {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "sleep"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pure_modules() -> list[str]:
    contracts = _pyproject()["tool"]["importlinter"]["contracts"]
    (pure,) = [c for c in contracts if c["id"] == "pure"]
    return list(pure["source_modules"])


def module_files(module: str) -> list[Path]:
    """The source files of ``module`` (a package: all its modules) via the package-dir map."""
    for prefix, folder in _pyproject()["tool"]["setuptools"]["package-dir"].items():
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix) :].lstrip(".").split(".") if module != prefix else []
            base = ROOT / folder / Path(*rest) if rest else ROOT / folder
            if base.is_dir():
                return sorted(base.rglob("*.py"))
            return [base.with_suffix(".py")]
    raise AssertionError(f"{module} is under no package-dir entry")


def violations(source: str) -> Iterator[str]:
    """Clock reads and I/O imports in one module's source, as ``line: what``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in IO_MODULES:
                    yield f"{node.lineno}: import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in IO_MODULES:
                yield f"{node.lineno}: from {node.module} import ..."
            for alias in node.names:
                if f"{node.module}.{alias.name}" in IO_MODULES:
                    yield f"{node.lineno}: from {node.module} import {alias.name}"
                if node.module == "time" and alias.name in CLOCK_NAMES:
                    yield f"{node.lineno}: from time import {alias.name}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else None
            if isinstance(owner, ast.Attribute):
                name = owner.attr  # datetime.datetime.now()
            if (name, node.func.attr) in CLOCK_CALLS:
                yield f"{node.lineno}: {name}.{node.func.attr}()"


def test_pure_modules_read_no_clock_and_do_no_io() -> None:
    found = {}
    for module in pure_modules():
        files = module_files(module)
        assert files and all(f.exists() for f in files), f"{module}: no source at {files}"
        for path in files:
            bad = list(violations(path.read_text()))
            if bad:
                found[str(path.relative_to(ROOT))] = bad
    assert found == {}, f"pure modules must take time and data as arguments: {found}"


def test_the_checker_finds_clock_reads_and_io() -> None:
    source = (
        "import time\nimport urllib.request\nfrom datetime import datetime\n"
        "from time import monotonic\nimport datetime as dt\n"
        "def f():\n    return time.time(), datetime.now(), dt.datetime.utcnow()\n"
    )
    assert sorted(violations(source)) == sorted(
        [
            "2: import urllib.request",
            "4: from time import monotonic",
            "7: time.time()",
            "7: datetime.now()",
            "7: datetime.utcnow()",
        ]
    )
    # Parsing and formatting times is fine: only reading the clock is not.
    assert list(violations("from datetime import datetime\nx = datetime.fromisoformat(s)\n")) == []


def test_strict_typing_covers_exactly_the_pure_modules() -> None:
    overrides = _pyproject()["tool"]["mypy"]["overrides"]
    (strict,) = [o for o in overrides if o.get("disallow_untyped_defs")]
    typed = {m.removesuffix(".*") for m in strict["module"]}
    assert typed == set(pure_modules())


def test_architecture_page_is_generated_from_the_code() -> None:
    from tools import archdoc

    text = (ROOT / archdoc.DOC).read_text()
    fresh = archdoc.updated(text, archdoc.render(ROOT))
    assert fresh == text, "docs/architecture.md is stale: run python -m tools.archdoc write"
    # A page that lost a row (a module added without regenerating) is told apart.
    stale = text.replace("| `reconcile` |", "| `reconciler` |", 1)
    assert stale != text and archdoc.updated(stale, archdoc.render(ROOT)) == text


def test_every_installed_module_says_what_it_is() -> None:
    from tools import archdoc

    missing = [
        str(path.relative_to(ROOT))
        for _name, folder in archdoc._packages(ROOT, _pyproject())
        for path in sorted(folder.glob("*.py"))
        if not archdoc.summary(path)
    ]
    assert missing == [], f"modules without a docstring: {missing}"


def test_no_merge_conflict_markers_are_committed() -> None:
    """Seven people merge into one branch here; a conflict resolved by committing both
    sides once reached the architecture page."""
    markers = ("<<<<<<< ", ">>>>>>> ")
    found = []
    for folder in ("operator", "services", "tests", "bench", "tools", "docs", "helm", "crds"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".tpl"}:
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if line.startswith(markers):
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    for name in ("README.md", "Makefile", "pyproject.toml"):
        text = (ROOT / name).read_text()
        found += [
            f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if line.startswith(markers)
        ]
    assert found == [], f"merge conflict markers: {found}"


def _reexporting_packages() -> list[tuple[str, Path]]:
    """Packages whose ``__init__`` imports their own submodules (to re-export names)."""
    from tools import archdoc

    out = []
    for name, folder in archdoc._packages(ROOT, _pyproject()):
        init = folder / "__init__.py"
        if init.exists() and any(
            isinstance(n, ast.ImportFrom) and (n.module or "").startswith(name + ".")
            for n in ast.walk(ast.parse(init.read_text()))
        ):
            out.append((name, folder))
    return out


def test_submodules_never_import_through_their_reexporting_package() -> None:
    """``from pkg import sibling`` inside ``pkg`` goes through ``pkg/__init__``, which
    imports the siblings back: an import loop that works only while the order holds."""
    packages = _reexporting_packages()
    assert ("mlrollout.operator.decide", ROOT / "operator" / "decide") in packages
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for name, folder in packages
        for path in sorted(folder.glob("*.py"))
        if path.name != "__init__.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == name
    ]
    assert found == [], f"import the sibling module itself (import {{pkg}}.{{mod}} as x): {found}"
