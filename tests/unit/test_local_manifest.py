"""Reading a ModelDeployment file for local mode: every bad file gets a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlrollout.operator.local.manifest import (
    ManifestError,
    check_local_uris,
    load_manifest,
    parse_manifest,
)

GOOD = """\
apiVersion: mlrollout.io/v1alpha1
kind: ModelDeployment
metadata:
  name: fraud
spec:
  model: {name: fraud, version: v1, uri: ./models/v1}
  rollout:
    steps: [{weight: 10}, {weight: 50, pause: 5s}]
"""


def test_good_file() -> None:
    m = parse_manifest(GOOD, Path("/x/fraud.yaml"))
    assert (m.name, m.namespace) == ("fraud", "local")
    assert m.spec.model.version == "v1"
    assert [s.weight for s in m.spec.rollout.steps] == [10, 50]
    assert m.raw_spec["model"]["uri"] == "./models/v1"
    assert m.base_dir == Path("/x")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("spec: [unclosed", "not valid YAML"),
        ("", "exactly one YAML document"),
        (GOOD + "---\n" + GOOD, "exactly one YAML document"),
        ("- a\n- b\n", "expected a mapping"),
        (GOOD.replace("v1alpha1", "v9"), "apiVersion must be"),
        (GOOD.replace("kind: ModelDeployment", "kind: Deployment"), "kind must be"),
        (GOOD.replace("name: fraud\nspec", "name: Fraud_Model\nspec"), "metadata.name"),
        (
            "apiVersion: mlrollout.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: a}\n",
            "spec is missing",
        ),
        (GOOD.replace("weight: 50", "weight: 5"), "non-decreasing"),
        (GOOD.replace("weight: 10", "weight: 101"), r"spec\.rollout\.steps\.0\.weight"),
        (GOOD.replace("  rollout:", "  rolout:"), "spec.rolout"),
        (GOOD.replace("pause: 5s", "pause: soon"), "pause"),
    ],
)
def test_bad_files_say_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(ManifestError, match=match) as info:
        parse_manifest(text, Path("deploy.yaml"))
    assert "deploy.yaml" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")


def test_local_model_paths_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "fraud.yaml"
    path.write_text(GOOD)
    manifest = load_manifest(path)
    with pytest.raises(ManifestError, match="does not exist"):
        check_local_uris(manifest)
    (tmp_path / "models" / "v1").mkdir(parents=True)
    check_local_uris(manifest)  # relative to the YAML file, not the working directory


def test_urls_are_not_checked_locally() -> None:
    m = parse_manifest(
        GOOD.replace("./models/v1", "https://example.invalid/m.tar.gz"), Path("a.yaml")
    )
    check_local_uris(m)


def test_model_card_must_match_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "fraud.yaml"
    path.write_text(GOOD)
    artifact = tmp_path / "models" / "v1"
    artifact.mkdir(parents=True)
    (artifact / "model.json").write_text('{"name": "fraud", "version": "v7"}')
    with pytest.raises(ManifestError, match=r"spec\.model\.version is 'v1' but the artifact"):
        check_local_uris(load_manifest(path))
    (artifact / "model.json").write_text('{"name": "fraud", "version": "v1"}')
    check_local_uris(load_manifest(path))


def test_the_local_demo_header_gives_commands_that_exist() -> None:
    """Issue 13: the header said `mlrollout dev -f` (no such flag) and that paths were
    relative to the working directory (they are relative to the file)."""
    import shlex

    from mlrollout.services import cli

    path = Path(__file__).parents[2] / "examples" / "local-demo.yaml"
    header = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    commands = [ln.split("#")[0].strip() for ln in header if ln.startswith("mlrollout ")]
    assert len(commands) >= 2
    for command in commands:
        argv = shlex.split(command)[1:]
        parser, _module = cli.command_parser(argv[0])
        parser.parse_args(argv[1:])  # exits (SystemExit) on an unknown flag
    assert "relative to this file" in " ".join(header)
    manifest = load_manifest(path)
    assert manifest.base_dir == path.parent
