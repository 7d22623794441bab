"""Issue 12 item 5 (operator half): forcing a track is an opt-in of the spec, off by default.

``spec.traffic.trackHeader`` (off | weighted | always) reaches the routing table as
``trackHeader``; the router reads a table without it as ``off``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from mlrollout.operator.crd import crd
from mlrollout.operator.interfaces import DeploymentKey
from mlrollout.operator.model import ModelDeploymentSpec
from mlrollout.operator.reconcile import reconcile
from mlrollout.services.router.table import parse_table
from pydantic import ValidationError

from tests.doubles.decide import FakeMetrics, FakeRouter, FakeRuntime

KEY = DeploymentKey("team-a", "fraud")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**traffic: Any) -> dict[str, Any]:
    return {
        "model": {"name": "fraud", "version": "v1", "uri": "https://m.example/v1"},
        "traffic": traffic,
    }


def table_for(raw: dict[str, Any]) -> dict[str, Any]:
    log: list[str] = []
    router = FakeRouter(log)
    reconcile(
        KEY, raw, None, T0, runtime=FakeRuntime(log), router=router, metrics=FakeMetrics(),
        generation=1,
    )  # fmt: skip
    assert router.table is not None
    return router.table


def test_forcing_is_off_by_default() -> None:
    assert ModelDeploymentSpec.model_validate(spec()).traffic.track_header == "off"
    table = table_for(spec())
    assert "trackHeader" not in table  # the router's default is off
    assert parse_table(table).track_header == "off"


@pytest.mark.parametrize("mode", ["weighted", "always"])
def test_an_opt_in_reaches_the_router(mode: str) -> None:
    table = table_for(spec(trackHeader=mode))
    assert table["trackHeader"] == mode
    assert parse_table(table).track_header == mode


@pytest.mark.parametrize("value", ["on", True, "Weighted"])
def test_other_values_are_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        ModelDeploymentSpec.model_validate(spec(trackHeader=value))


def test_forcing_needs_the_builtin_router() -> None:
    gateway = {"parentRefs": [{"name": "gw"}]}
    with pytest.raises(ValidationError, match="trackHeader needs the builtin router"):
        ModelDeploymentSpec.model_validate(
            spec(router="gatewayAPI", gateway=gateway, trackHeader="weighted")
        )


def test_the_crd_has_the_same_field_and_rule() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    traffic = schema["properties"]["spec"]["properties"]["traffic"]
    assert traffic["properties"]["trackHeader"]["enum"] == ["off", "weighted", "always"]
    assert traffic["properties"]["trackHeader"]["default"] == "off"
    rules = [r["rule"] for r in traffic["x-kubernetes-validations"]]
    assert any("trackHeader" in r for r in rules)
