"""``mlrollout demo``: the whole rollout loop in a few minutes, on this machine.

Builds the example artifacts, deploys v1, sends steady traffic through the router with
the load generator, rolls out v2 (a good model: promoted) and then v3 (a bad one: rolled
back by the analysis), and prints where the timeline plot and decision log are. Exits
non-zero unless both outcomes are the expected ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlrollout.operator.local.display import LiveDisplay
from mlrollout.operator.local.manifest import Manifest, load_manifest, manifest_document
from mlrollout.operator.local.procs import ManagedProcess, ProcessError, install_signal_handlers
from mlrollout.operator.local.prom import PrometheusMissingError, find_prometheus
from mlrollout.operator.local.session import LocalSession, SessionOptions, outcome_of
from mlrollout.operator.rundir import STATE_FILE

EXPECTED = {"v2": "promoted", "v3": "rolledBack"}


def demo_spec(version: str, uri: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The demo's ModelDeployment: short steps and windows so a rollout takes about a minute."""
    spec: dict[str, Any] = {
        "model": {"name": "fraud", "version": version, "uri": uri},
        "rollout": {
            "steps": [{"weight": 20}, {"weight": 50, "pause": "5s"}, {"weight": 80}],
            "progressDeadline": "2m",
            "analysis": {
                "interval": "3s",
                "window": "20s",
                "minSamples": 30,
                "failureLimit": 2,
                "maxStaleness": "20s",
                "onProviderError": {"action": "hold", "maxHold": "1m"},
                "metrics": {
                    # A short demo: a tolerance that ~200 clean requests can show.
                    "errorRate": {"max": 0.05, "maxIncrease": 0.05},
                    # On a busy laptop the two processes' p95 differ by noise: only a gross
                    # ratio is a finding (null would mean the default, 1.5, as in the CRD).
                    "latency": {"quantile": 0.95, "maxSeconds": 1.0, "maxRatio": 5.0},
                    # Servers close a drift window every 1000 rows: the demo's traffic is
                    # batched (8 rows a request) so the canary fills one in seconds.
                    "inputDrift": {"maxPsiIncrease": 0.2},
                    "predictionDrift": {"maxPsi": 0.25},
                },
            },
        },
    }
    return manifest_document("fraud", spec, env)


def write_manifest(path: Path, doc: dict[str, Any]) -> Manifest:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return load_manifest(path)


@dataclass(frozen=True)
class DemoOptions:
    work_dir: Path
    rate: float = 30.0
    step_timeout_s: float = 240.0
    rebuild: bool = False
    prometheus_bin: str | None = None


def build_examples(models_dir: Path, rebuild: bool) -> None:
    if not rebuild and all((models_dir / v / "model.json").exists() for v in ("v1", "v2", "v3")):
        return
    from mlrollout.services.model.examples import write_examples

    print(f"building example models in {models_dir} ...", flush=True)
    write_examples(models_dir)


def wait_for(session: LocalSession, done: Any, timeout_s: float, what: str) -> None:
    """Run engine rounds until ``done(status)`` is true; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = session.tick()
        if done(result.status):
            return
        time.sleep(session.sleep_for(result))
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s (phase {session.phase()})")


def start_loadgen(session: LocalSession, traffic: Path, rate: float) -> ManagedProcess:
    report = session.run_dir / "loadgen.json"
    report.unlink(missing_ok=True)
    return session.supervisor.start(
        "loadgen",
        [
            sys.executable,
            "-m",
            "mlrollout.services.cli",
            "loadgen",
            session.router_url,
            "--records",
            str(traffic),
            "--rate",
            str(rate),
            "--duration",
            "1800",
            "--batch",
            "8",
            "--feedback",
            "0.2",
            "--report",
            str(report),
        ],
    )


def stop_loadgen(session: LocalSession, proc: ManagedProcess) -> dict[str, Any] | None:
    """Stop the load generator politely so it writes its report, and read the report."""
    proc.popen.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=15)  # if not, the supervisor stops it for good below
    session.supervisor.stop("loadgen")
    try:
        doc = json.loads((session.run_dir / "loadgen.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def run_demo(options: DemoOptions, display: LiveDisplay) -> dict[str, str | None]:
    """The scenario; returns version -> outcome. Everything started is stopped on return."""
    models = options.work_dir / "models"
    build_examples(models, options.rebuild)
    path = options.work_dir / "fraud.yaml"
    manifest = write_manifest(path, demo_spec("v1", "./models/v1"))
    run_dir = options.work_dir / "run"
    (run_dir / STATE_FILE).unlink(missing_ok=True)  # the demo always starts from v1
    (run_dir / "timeline.json").unlink(missing_ok=True)
    session = LocalSession(
        manifest,
        SessionOptions(run_dir=run_dir, prometheus_bin=options.prometheus_bin, poll_s=1.0),
        display=display,
    )
    outcomes: dict[str, str | None] = {}
    try:
        session.start()
        wait_for(
            session,
            lambda st: (
                st.get("phase") == "Healthy" and (st.get("stable") or {}).get("version") == "v1"
            ),
            options.step_timeout_s,
            "v1 becoming healthy",
        )
        loadgen = start_loadgen(session, models / "traffic.jsonl", options.rate)
        for version in ("v2", "v3"):
            display.note(f"=== rolling out {version} (expected: {EXPECTED[version]}) ===")
            session.apply(write_manifest(path, demo_spec(version, f"./models/{version}")))
            try:
                wait_for(
                    session,
                    lambda st, v=version: outcome_of(st, v) is not None,
                    options.step_timeout_s,
                    f"an outcome for {version}",
                )
            except TimeoutError as exc:
                display.note(str(exc))
            outcomes[version] = outcome_of(session.status, version)
            display.note(f"=== {version}: {outcomes[version]} ===")
        report = stop_loadgen(session, loadgen)
        if report:
            display.note(
                f"load: {report['sent']} requests, {report['ok']} ok, {report['failed']} failed"
            )
    finally:
        session.close()
    json_path, png_path = session.timeline_paths
    print(
        "\nsummary\n"
        + "".join(
            f"  {v}: {outcomes.get(v) or 'no outcome'} (expected {want})"
            f"{'' if outcomes.get(v) == want else '  <-- UNEXPECTED'}\n"
            for v, want in EXPECTED.items()
        )
        + f"  timeline plot: {png_path}\n  decision log:  {json_path}\n"
        + f"  process logs:  {session.supervisor.log_dir}\n"
    )
    return outcomes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir", type=Path, default=Path(".mlrollout/demo"), help="where everything goes"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the example models")
    parser.add_argument("--prometheus-bin", default=None, help="path of the prometheus binary")
    parser.add_argument(
        "--step-timeout", type=float, default=240.0, help="seconds allowed per rollout"
    )


def run(args: argparse.Namespace) -> int:
    try:
        find_prometheus(args.prometheus_bin)
    except PrometheusMissingError as exc:
        print(f"mlrollout demo: error: {exc}", file=sys.stderr)
        return 2
    install_signal_handlers()
    options = DemoOptions(
        work_dir=args.work_dir.resolve(),
        rate=args.rate,
        step_timeout_s=args.step_timeout,
        rebuild=args.rebuild,
        prometheus_bin=args.prometheus_bin,
    )
    options.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        outcomes = run_demo(options, LiveDisplay())
    except KeyboardInterrupt:
        print("mlrollout demo: interrupted; everything was stopped", file=sys.stderr)
        return 130
    except (ProcessError, TimeoutError, OSError) as exc:
        print(f"mlrollout demo: error: {exc}", file=sys.stderr)
        return 1
    return 0 if all(outcomes.get(v) == want for v, want in EXPECTED.items()) else 1
