"""Rollback in local mode: time from a canary's fault to its weight 0, and the blast radius.

One local-mode stack (Prometheus, router, stable v1, steady traffic from the built-in load
generator through the router) serves every repeat. Each repeat rolls out a new canary
whose model server fails a share of its requests from its very first one
(``MLROLLOUT_FAULT_ERROR_RATE``), so the fault starts when the router table first gives
the canary weight. The engine is driven here (``LocalSession.tick``), which lets us read
the routing table right after each round:

- time to weight 0: from the table that first gave the canary weight until the table
  that took it away (resolution: the round cadence, ``POLL_S``);
- blast radius: the router's own count of 5xx answers over that span, plus one second
  for requests still in flight; cross-checked against the load generator's report.
"""

from __future__ import annotations

import re
import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlrollout.operator.local.manifest import manifest_document
from mlrollout.operator.local.prom import find_prometheus
from mlrollout.operator.local.session import LocalSession, SessionOptions, outcome_of
from mlrollout.operator.model import Analysis, Rollout
from mlrollout.services.model.dataplane import FAULT_ENV
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.local import (
    drive,
    healthy,
    start_loadgen,
    stop_loadgen,
    variant,
    write_manifest,
)

POLL_S = 0.25  # longest pause between engine rounds: the resolution of time to weight 0
# Shortened variant: analysis every second (the sequential tests stay valid at any
# cadence); the other settings stay default.
SHORT_ANALYSIS = {"interval": "1s"}


@dataclass(frozen=True)
class RollbackConfig:
    repeats: int = 3  # with the spec's default analysis
    short_repeats: int = 3  # with ``short_analysis``
    short_analysis: dict[str, Any] = field(default_factory=lambda: dict(SHORT_ANALYSIS))
    guard_repeats: int = 3  # default analysis with the router guard on (the spec's default)
    fault_rate: float = 0.5
    rate: float = 40.0  # load generator requests per second
    batch: int = 8  # rows per request
    timeout_s: float = 300.0  # per repeat

    def __post_init__(self) -> None:
        counts = (self.repeats, self.short_repeats, self.guard_repeats)
        if min(counts) < 0 or sum(counts) < 1:
            raise ValueError("the rollback benchmark needs at least one repeat")
        if not 0 < self.fault_rate <= 1 or self.rate <= 0 or self.batch < 1:
            raise ValueError("fault rate must be in (0, 1], rate > 0 and batch >= 1")


@dataclass(frozen=True)
class Trial:
    variant: str  # "default" or "short"
    version: str
    outcome: str | None
    seconds_to_zero: float
    bad_answers: int  # 5xx the router answered between the fault and weight 0 (+1 s)
    canary_requests: int  # requests the canary answered in that span
    peak_weight: int
    reason: str


def doc(
    version: str,
    uri: Path,
    analysis: dict[str, Any] | None,
    env: dict[str, str],
    guard: bool = True,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "fraud", "version": version, "uri": str(uri)}}
    if analysis:
        spec["rollout"] = {"analysis": analysis}
    if not guard:  # the operator's analysis alone, as before the router guard
        spec["traffic"] = {"guard": {"enabled": False}}
    return manifest_document("fraud", spec, env)


def router_counts(router_url: str) -> dict[tuple[str, str], float]:
    """(track, outcome) -> requests so far, from the router's /metrics."""
    with urllib.request.urlopen(f"{router_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "mlrollout_router_requests_total":
                key = (s.labels.get("track", ""), s.labels.get("outcome", ""))
                out[key] = out.get(key, 0.0) + s.value
    return out


def _canary_weight(session: LocalSession) -> int:
    table = session.router.get_routes()
    return table.canary_weight if table else 0


def run_trial(
    session: LocalSession,
    yaml_path: Path,
    examples: Path,
    name: str,
    version: str,
    analysis: dict[str, Any] | None,
    config: RollbackConfig,
) -> Trial:
    uri = variant(examples, "v2", version)
    env = {FAULT_ENV: str(config.fault_rate)}
    guard = name == "guard"
    session.apply(write_manifest(yaml_path, doc(version, uri, analysis, env, guard)))
    deadline = time.monotonic() + config.timeout_s
    t_fault: float | None = None
    before: dict[tuple[str, str], float] = {}
    peak = 0
    while time.monotonic() < deadline:
        result = session.tick()
        weight = _canary_weight(session)
        peak = max(peak, weight)
        if t_fault is None and weight > 0:
            t_fault, before = time.monotonic(), router_counts(session.router_url)
        if t_fault is not None and weight == 0:
            elapsed = time.monotonic() - t_fault
            time.sleep(1.0)  # requests sent to the canary before the switch still land
            after = router_counts(session.router_url)
            bad = sum(v - before.get(k, 0.0) for k, v in after.items() if k[1] == "server_error")
            canary = sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == "canary")
            status = drive(session, lambda st: outcome_of(st, version) is not None, 60, version)
            history = [h for h in status.get("history") or [] if h.get("version") == version]
            return Trial(
                name,
                version,
                outcome_of(status, version),
                elapsed,
                int(bad),
                int(canary),
                peak,
                str(history[-1].get("reason", "")) if history else "",
            )
        time.sleep(session.sleep_for(result))
    raise TimeoutError(f"rollback benchmark: {version} not back to weight 0 in {config.timeout_s}s")


def stable_only(version: str) -> Callable[[dict[str, Any]], bool]:
    """Stable ``version`` serving alone (phase Healthy, or RolledBack after a rollback)."""
    return lambda st: (st.get("stable") or {}).get("version") == version and not st.get("canary")


def run_rollback(work: Path, config: RollbackConfig) -> dict[str, Any]:
    from mlrollout.services.model.examples import write_examples

    examples = work / "rollback-examples"
    write_examples(examples)
    yaml_path = work / "fraud.yaml"
    manifest = write_manifest(yaml_path, doc("v1", examples / "v1", None, {}))
    options = SessionOptions(
        run_dir=work / "rollback-run", prometheus_bin=find_prometheus(), poll_s=POLL_S
    )
    trials: list[Trial] = []
    with LocalSession(manifest, options) as session:
        session.start()
        drive(session, healthy("v1"), 180, "stable v1 healthy")
        load, report_path = start_loadgen(
            session, examples, "rollback-load", config.rate, config.batch
        )
        time.sleep(3)  # steady traffic on stable before the first canary
        plan = (
            [("default", None)] * config.repeats
            + [("short", config.short_analysis)] * config.short_repeats
            + [("guard", None)] * config.guard_repeats
        )
        for i, (name, analysis) in enumerate(plan):
            trials.append(
                run_trial(session, yaml_path, examples, name, f"v2-fault-{i}", analysis, config)
            )
            drive(session, stable_only("v1"), 60, "back to stable v1 alone")
        report = stop_loadgen(session, load, report_path)
    return summarise(trials, report, config)


def settings(short: dict[str, Any] | None) -> dict[str, Any]:
    """The analysis settings in force (camelCase), defaults filled in from the spec model."""
    base = Analysis().model_dump(by_alias=True, mode="json", exclude={"metrics"})
    return {**base, **(short or {})}


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def summarise(
    trials: list[Trial], report: dict[str, Any], config: RollbackConfig
) -> dict[str, Any]:
    steps = [s.weight for s in Rollout().steps]
    lines = [
        f"Local mode (`operator/local/`): stable v1 plus one canary at a time whose server fails "
        f"{config.fault_rate:.0%} of requests from its first one (`{FAULT_ENV}`); steady load of "
        f"{config.rate:g} requests/s ({config.batch} rows each) from `mlrollout loadgen` through the "
        f"router; default steps {steps}. Time to weight 0 runs from the routing table that first "
        f"gave the canary weight to the one that took it away (engine rounds at most {POLL_S} s "
        "apart); bad answers are the router's 5xx count over that span (+1 s for requests in "
        "flight). Median (min-max) over repeats.",
        "",
        "| analysis | settings | repeats | seconds to weight 0 | 5xx answered (blast radius) "
        "| canary requests | rolled back by |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    variants: dict[str, Any] = {}
    for name, short in (("default", None), ("short", config.short_analysis), ("guard", None)):
        rows = [t for t in trials if t.variant == name]
        if not rows:
            continue
        s = settings(short)
        shown = {k: s[k] for k in ("interval", "alpha")}
        floor = _seconds(s["interval"])  # a crossing rolls back on the run that sees it
        variants[name] = {"settings": s, "floor_s": floor, "guard": name == "guard"}
        reasons = sorted({c for t in rows for c in failed_checks(t.reason)})
        said = ", ".join(f"{k} {v}" for k, v in shown.items())
        said += "; router guard on" if name == "guard" else "; router guard off"
        lines.append(
            f"| {name} | {said} | {len(rows)} "
            f"| {_spread([t.seconds_to_zero for t in rows], '.1f')} "
            f"| {_spread([t.bad_answers for t in rows], '.0f')} "
            f"| {_spread([t.canary_requests for t in rows], '.0f')} | {', '.join(reasons)} |"
        )
    bad_total = sum(n for code, n in report.get("statuses", {}).items() if code.startswith("5"))
    lines += [
        "",
        f"Cross-check: the load generator saw {bad_total} 5xx answers over the whole run "
        f"({report.get('sent', 0)} requests); the router counted "
        f"{sum(t.bad_answers for t in trials)} within the measured spans.",
    ]
    return {
        "config": asdict(config),
        "trials": [asdict(t) for t in trials],
        "variants": variants,
        "loadgen": report,
        "markdown": lines,
    }


def failed_checks(reason: str) -> list[str]:
    """``analysis failed 2 times in a row (errorRate, latency)`` -> the check names."""
    if reason.startswith("router guard"):
        return ["routerGuard"]
    crossed = re.match(r"sequential test crossed: (\w+)", reason)
    if crossed:
        return [crossed.group(1)]
    found = re.search(r"\(([^)]*)\)", reason)
    if not found:
        return [reason[:40]] if reason else []
    return [c.strip() for c in found.group(1).split(",") if c.strip()]


def _seconds(text: str) -> float:
    from mlrollout.operator.model import parse_duration

    return float(parse_duration(text))
