"""The Argo CD health check (Lua), run by a real Lua interpreter (lupa) on engine statuses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lupa
import pytest
import yaml

from tests.doubles.decide import Scenario, TrackTraffic

ARGOCD = Path(__file__).parents[2] / "manifests" / "argocd"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval("function(obj)\n" + (ARGOCD / "health.lua").read_text() + "\nend")
    out = check(lua.table_from(obj, recursive=True))
    return str(out["status"]), str(out["message"])


def md(s: Scenario, generation: int = 1) -> dict[str, Any]:
    status = {**s.status, "observedGeneration": 1}
    return {
        "metadata": {"name": "fraud", "generation": generation},
        "spec": s.spec,
        "status": status,
    }


def spec() -> dict[str, Any]:
    return {
        "model": {"name": "fraud", "version": "v1", "uri": "https://m.example/v1"},
        "rollout": {"steps": [{"weight": 20}, {"weight": 50, "pause": "manual"}]},
    }


def test_phases_map_to_argocd_health() -> None:
    s = Scenario(spec(), T0)
    s.healthy_traffic()
    s.tick()
    assert health(md(s)) == ("Healthy", "Healthy: v1 is serving")

    s.set_model("v2")
    s.tick()
    status, message = health(md(s))
    assert status == "Progressing" and message.startswith("Progressing: ")

    s.run(600, every=30)
    assert s.phase == "Paused"  # the manual step
    assert health(md(s))[0] == "Suspended"

    s.canary = TrackTraffic(requests=1000, errors=300)
    s.run(120, every=30)
    assert s.phase == "RolledBack"
    status, message = health(md(s))
    assert status == "Degraded" and "rolled back" in message


def test_unobserved_spec_and_missing_status_are_progressing() -> None:
    s = Scenario(spec(), T0)
    s.healthy_traffic()
    s.tick()
    assert health(md(s, generation=2))[0] == "Progressing"
    assert health({"metadata": {"name": "x", "generation": 1}, "spec": {}})[0] == "Progressing"


@pytest.mark.parametrize("phase", ["Degraded", "InvalidSpec"])
def test_degraded_and_invalid_spec_are_degraded(phase: str) -> None:
    obj = {"metadata": {"generation": 3}, "status": {"phase": phase, "observedGeneration": 3}}
    assert health(obj) == ("Degraded", f"{phase}: {phase}")


def test_the_configmap_patch_holds_the_same_script() -> None:
    doc = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    embedded = doc["data"]["resource.customizations.health.mlrollout.io_ModelDeployment"]
    assert embedded == (ARGOCD / "health.lua").read_text()
