"""The CRD agrees with the models: committed copies, structure, defaults, and the examples."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from mlrollout.operator import crd
from mlrollout.operator.model import ModelDeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _version() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]


def _spec_schema() -> dict[str, Any]:
    return _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _walk(node: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_and_copies_match_the_models() -> None:
    assert crd.check(ROOT) == [], "run `make crds`"


def test_check_reports_a_stale_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crd.write(tmp_path)
    args = argparse.Namespace(action="check", root=tmp_path)
    assert crd.run(args) == 0
    stale = tmp_path / crd.COPIES[0]
    stale.write_text(stale.read_text().replace("shortNames", "shortnames"))
    assert crd.run(args) == 1
    err = capsys.readouterr().err
    assert str(crd.COPIES[0]) in err and "shortnames" in err
    (tmp_path / crd.COPIES[0]).unlink()
    assert any("missing" in p for p in crd.check(tmp_path))


def test_schema_is_structural_and_every_field_is_described() -> None:
    root = _version()["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        if path.endswith("{}") or (path.endswith("[]") and node.get("type") != "object"):
            continue  # map values and scalar list items are described by their field
        if path == ".metadata":
            continue  # the structural-schema rule forbids anything but name restrictions
        assert node.get("description"), f"{path or 'root'} has no description"
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "nullable"):
            assert banned not in node, f"{path} uses {banned}"
        if "default" in node:
            assert node["default"] is not None, path


def test_metadata_schema_only_restricts_the_name() -> None:
    """apiextensions' structural-schema rule: `metadata` may hold `type: object` and
    restrictions on name/generateName, nothing else (not even a description), or the API
    server refuses the whole CRD (issue 10; tests/cluster proves it on a real server)."""
    meta = _version()["schema"]["openAPIV3Schema"]["properties"]["metadata"]
    assert set(meta) <= {"type", "properties"}, meta
    assert set(meta.get("properties", {})) <= {"name", "generateName"}


def test_object_defaults_are_complete() -> None:
    """The API server checks each default against the CEL rules as written, without filling
    in nested defaults (a `default: {}` on traffic failed "gateway is required when router
    is gatewayAPI": no such key router). So every object default is already complete."""
    found = 0
    for path, node in _walk(_version()["schema"]["openAPIV3Schema"]):
        if node.get("type") == "object" and isinstance(node.get("default"), dict):
            found += 1
            default = node["default"]
            assert crd.apply_defaults(node, copy.deepcopy(default)) == default, path
    assert found >= 3


def test_resource_shape() -> None:
    doc = crd.crd()
    assert doc["spec"]["names"]["shortNames"] == ["md"]
    version = _version()
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Phase",
        "Stable",
        "Canary",
        "Step",
        "Weight",
        "Message",
        "Age",
        "Stable-Revision",
        "Canary-Revision",
    ]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert wide == ["Stable-Revision", "Canary-Revision"]  # only with -o wide
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    for name, path in columns.items():
        if path.startswith(".status."):
            node = status
            for part in path.split(".")[2:]:
                node = node["properties"][part]
            assert node["type"] in ("string", "integer"), name


def test_crd_defaults_equal_model_defaults() -> None:
    minimal = {
        "model": {"name": "fraud", "version": "v1", "uri": "./m"},
        "rollout": {"analysis": {"metrics": {"inputDrift": {}}}},
    }
    from_crd = crd.apply_defaults(_spec_schema(), copy.deepcopy(minimal))
    from_model = ModelDeploymentSpec.model_validate(minimal).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert from_crd == from_model


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden (the API server would prune them silently)."""
    out = copy.deepcopy(schema)
    for _, node in _walk(out):
        if "properties" in node:
            node["additionalProperties"] = False
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "mlrollout.io/v1alpha1" and doc["kind"] == "ModelDeployment"
    jsonschema.Draft4Validator(_strict(_spec_schema())).validate(doc["spec"])
    ModelDeploymentSpec.model_validate(doc["spec"])


def test_examples_cover_first_deployment_gates_and_shadow() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"first-deployment.yaml", "canary-with-gates.yaml", "shadow.yaml"} <= names


@pytest.mark.parametrize(
    "bad",
    [
        {
            "model": {"name": "x", "version": "v1", "uri": "u"},
            "rollout": {"steps": [{"weight": 101}]},
        },
        {"model": {"name": "x", "version": "v1", "uri": "u"}, "serving": {"replica": 1}},
        {"model": {"name": "x", "version": "v1"}},
        {
            "model": {"name": "x", "version": "v1", "uri": "u"},
            "rollout": {"analysis": {"metrics": {"latency": {"quantile": 1}}}},
        },
    ],
    ids=["weight>100", "unknown-field", "missing-uri", "quantile-exclusive-max"],
)
def test_schema_rejects_bad_specs(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_strict(_spec_schema())).validate(bad)


def test_crd_object_is_a_valid_apiextensions_v1_resource() -> None:
    import kubernetes_validate

    kubernetes_validate.validate(crd.crd(), kubernetes_validate.latest_version(), strict=True)
