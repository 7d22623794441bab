"""The container images, checked without Docker (none on these machines).

Each Dockerfile installs an explicit, reduced dependency list. These tests hold that list to
pyproject.toml (same version ranges) and to what the image's entry modules import at module
level, transitive requirements included, so a missing dependency shows here and not as an
ImportError in a cluster. Imports made inside functions are not seen; the Dockerfiles'
build step imports the entry modules as a last check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "operator": ["mlrollout.operator.main"],
    "serving": [
        "mlrollout.services.cli",
        "mlrollout.services.server.cli",
        "mlrollout.services.server.service",
        "mlrollout.services.router.cli",
        "mlrollout.services.router.server",
        "mlrollout.services.model.runtime",
        "mlrollout.services.drift",
    ],
}
# Imports the modules as the image would: any top-level module that belongs only to
# distributions outside the image raises ImportError, so optional imports (aiohttp's brotli)
# degrade as they would there and hard ones fail. Prints "ok" or the error.
PROBE = """
import importlib, importlib.abc, json, sys
from importlib import metadata
allowed = set(json.loads(sys.argv[1]))
canon = lambda n: n.lower().replace("_", "-").replace(".", "-")
blocked = {top for top, dists in metadata.packages_distributions().items()
           if not {canon(d) for d in dists} & allowed and top != "mlrollout"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None

sys.meta_path.insert(0, Block())
try:
    for name in sys.argv[2:]:
        importlib.import_module(name)
except ImportError as exc:
    print(f"{name}: {exc}")
else:
    print("ok")
"""


def dockerfile(image: str) -> str:
    return (ROOT / "images" / f"{image}.Dockerfile").read_text()


def image_requirements(image: str) -> list[Requirement]:
    """The quoted requirement strings of the dependency `pip install` in the build stage."""
    block = re.search(r"install \\\n((?:\s+\"[^\"]+\"(?: \\)?\n)+)", dockerfile(image))
    assert block, f"{image}.Dockerfile: dependency install step not found"
    return [Requirement(r) for r in re.findall(r'"([^"]+)"', block[1])]


def closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the requirements and everything they pull in (no extras)."""
    seen: set[str] = set()
    stack = [r.name for r in requirements]
    while stack:
        name = canonicalize_name(stack.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dependency_ranges_match_pyproject(image: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {canonicalize_name(Requirement(d).name): Requirement(d) for d in project}
    for req in image_requirements(image):
        name = canonicalize_name(req.name)
        assert name in declared, f"{image}: {req.name} is not a project dependency"
        assert req.specifier == declared[name].specifier, f"{image}: {req} vs {declared[name]}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_installs_what_its_modules_import(image: str) -> None:
    allowed = sorted(closure(image_requirements(image)))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(allowed), *IMAGES[image]],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.strip() == "ok", f"{image}.Dockerfile: {out.stdout.strip()}"


def test_operator_image_leaves_out_the_model_stack() -> None:
    installed = closure(image_requirements("operator"))
    assert installed.isdisjoint({"onnxruntime", "bentoml", "scikit-learn", "scipy", "matplotlib"})


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_is_multi_stage_and_non_root(image: str) -> None:
    text = dockerfile(image)
    stages = re.findall(r"^FROM .*$", text, re.M)
    assert len(stages) == 2 and " AS build" in stages[0]
    final = text.rpartition(stages[1])[2]
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert re.search(r"^USER 65532:65532$", final, re.M)
    # Nothing is built or installed in the final stage: no compilers, no package managers.
    assert not re.search(r"^RUN ", final, re.M)
    assert "--without-pip" in text


def test_serving_image_has_no_entrypoint() -> None:
    """The operator's pods give the whole command (`mlrollout serve ...`) as args."""
    builders = "".join(p.read_text() for p in sorted((ROOT / "operator" / "builders").glob("*.py")))
    assert re.search(r'"mlrollout",\s*"serve"', builders) and re.search(
        r'"mlrollout",\s*"router"', builders
    )
    assert not re.search(r"^ENTRYPOINT", dockerfile("serving"), re.M)


def test_chart_runs_the_operator_image_entry() -> None:
    chart = (ROOT / "helm" / "mlrollout" / "templates" / "operator" / "deployment.yaml").read_text()
    assert "command: [kopf]" in chart and '"kopf"' in dockerfile("operator")


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*") + 1 :][:4] == [
        "!pyproject.toml",
        "!README.md",
        "!operator/",
        "!services/",
    ]
