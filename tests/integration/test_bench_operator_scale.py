"""Smoke size of the operator benchmark: 10 ModelDeployments, the real operator, the real
control plane (tests/cluster/controlplane.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlrollout.operator.local.procs import Supervisor

from bench.__main__ import SMOKE_SCALE
from bench.operator_scale import markdown, missing_control_plane, run_operator_scale

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs_control_plane() -> None:
    missing = missing_control_plane()
    if missing:
        pytest.skip(
            f"control plane not built ({', '.join(missing)} missing): this runs once "
            "tests/cluster/build.sh has built it (`make test` does that first)"
        )


# The run bounds itself (control plane start, 120 s to Healthy, 300 s for canaries);
# pytest's default 300 s would cut a loaded machine's run short instead.
@pytest.mark.timeout(900)
def test_every_deployment_gets_children_and_canaries_are_analysed(tmp_path: Path) -> None:
    config = SMOKE_SCALE
    with Supervisor(log_dir=tmp_path / "logs") as sup:
        result = run_operator_scale(sup, tmp_path, config)
        # Every process the benchmark started is stopped when it returns.
        assert all(not p.alive() for p in sup)
    assert len(result.burst_latency_s) == config.deployments
    assert len(result.paced_latency_s) == config.paced
    assert all(t > 0 for t in result.burst_latency_s + result.paced_latency_s)
    # 10 children per ModelDeployment, plus the ModelDeployments and the canaries' objects.
    assert result.objects >= 11 * (config.deployments + config.paced)
    assert len(result.burst_healthy_s) == config.deployments
    assert result.analysis["runs"] > 0  # verdicts came back from real PromQL
    assert result.analysis["operator_cpu_s"] > 0
    assert 20 < result.rss_reconciled_mb <= result.rss_peak_mb
    lines = markdown(result, config)
    assert any(line.startswith("| burst:") for line in lines)
