"""In-place edits of the user's ModelDeployment file: values change, comments and layout stay."""

from __future__ import annotations

import pytest
import yaml
from mlrollout.operator.ctl.yamledit import YamlEditError, set_values

DOC = """\
# my wine model (comment kept)
apiVersion: mlrollout.io/v1alpha1
kind: ModelDeployment
metadata:
  name: wine
spec:
  model:
    name: wine
    version: v2   # the new one
    uri: ./models/v2
    sha256: "aaaa"
  rollout:
    steps:
      - weight: 20
      - weight: 50
"""


def test_replaces_scalars_in_place_and_keeps_comments() -> None:
    out = set_values(DOC, {("spec", "model", "version"): "v1", ("spec", "model", "uri"): "./m/v1"})
    assert "# my wine model (comment kept)" in out
    assert 'version: "v1"   # the new one' in out
    doc = yaml.safe_load(out)
    assert doc["spec"]["model"] == {
        "name": "wine",
        "version": "v1",
        "uri": "./m/v1",
        "sha256": "aaaa",
    }
    assert doc["spec"]["rollout"]["steps"] == [{"weight": 20}, {"weight": 50}]


def test_adds_missing_mappings_at_the_right_indent() -> None:
    out = set_values(DOC, {("spec", "controls", "promote"): "tok-1"})
    doc = yaml.safe_load(out)
    assert doc["spec"]["controls"] == {"promote": "tok-1"}
    assert out.startswith(DOC)  # appended, nothing else touched
    again = set_values(out, {("spec", "controls", "paused"): True})
    assert yaml.safe_load(again)["spec"]["controls"] == {"promote": "tok-1", "paused": True}
    third = set_values(again, {("spec", "controls", "promote"): "tok-2"})
    assert yaml.safe_load(third)["spec"]["controls"] == {"promote": "tok-2", "paused": True}


def test_adds_a_key_inside_a_nested_mapping_before_later_keys() -> None:
    out = set_values(DOC, {("spec", "model", "extra"): 1})
    doc = yaml.safe_load(out)
    assert doc["spec"]["model"]["extra"] == 1 and doc["spec"]["rollout"]["steps"][0] == {
        "weight": 20
    }


def test_none_removes_a_key() -> None:
    out = set_values(DOC, {("spec", "model", "sha256"): None})
    assert "sha256" not in out and yaml.safe_load(out)["spec"]["model"]["uri"] == "./models/v2"
    assert set_values(DOC, {("spec", "controls", "x"): None}) == DOC


def test_empty_controls_key_becomes_a_block() -> None:
    text = DOC + "  controls:\n"
    out = set_values(text, {("spec", "controls", "abort"): "a1"})
    assert yaml.safe_load(out)["spec"]["controls"] == {"abort": "a1"}


def test_flow_style_is_refused_not_mangled() -> None:
    text = "spec: {model: {name: a, version: v1, uri: x}}\n"
    with pytest.raises(YamlEditError, match="not a block mapping"):
        set_values(text, {("spec", "model", "version"): "v2"})
