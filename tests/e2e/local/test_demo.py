"""``mlrollout demo`` end to end, as ``make demo`` runs it: v2 promoted, v3 rolled back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_promotes_v2_and_rolls_back_v3(tmp_path: Path, prometheus_bin: str) -> None:
    work = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlrollout.services.cli",
            "demo",
            "--work-dir",
            str(work),
            "--prometheus-bin",
            prometheus_bin,
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "v2: promoted (expected promoted)" in result.stdout
    assert "v3: rolledBack (expected rolledBack)" in result.stdout
    assert f"timeline plot: {work / 'run' / 'timeline.png'}" in result.stdout
    events = [
        (e["event"], e["canary_version"])
        for e in json.loads((work / "run" / "timeline.json").read_text())["entries"]
        if e["event"] in ("promoted", "rolled_back")
    ]
    assert [name for name, _v in events] == ["promoted", "rolled_back"]
    load = json.loads((work / "run" / "loadgen.json").read_text())
    assert load["sent"] > 0 and load["failed"] == 0
