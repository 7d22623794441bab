"""Decision quality: the real rollout engine against synthetic traffic, beside two baselines.

A traffic and fault model (Poisson arrivals, optional diurnal swing and sparse traffic,
per-request errors with shared error bursts, log-normal latency with noisy per-second
jitter per version, predicted classes and paired agreement, Prometheus scrape lag and
gaps) produces the counters a model server and the router would export. The real engine
(``plan_queries`` + ``decide``, status passed from call to call as the operator stores
it) reads them through the same query names; its only shortcut is that PromQL is
answered from the simulated counters (``increase`` over the query's range, as of the
last scrape) instead of by Prometheus.

Beside it, on the same worlds, three baseline policies judge per interval on a window:

- **Flagger-like**: every interval, fixed thresholds on the window (error rate, p95 from
  the histogram as ``histogram_quantile`` interpolates it); a failed check (no data
  counts as failed) adds to a counter, ``threshold`` failures roll back; a passing check
  advances one step; after the last step, promotion.
- **Argo-like**: per step an analysis of ``count`` measurements; the first failed
  measurement aborts (failureLimit 0); no data is inconclusive (the step waits).
- **per-window (mlrollout 0.1)**: the engine before issue 11: per window minSamples,
  one-sided Fisher test of errors vs stable, p95 <= ratio x stable's, failureLimit runs.

Everything is seeded; a scenario of 1,000 rollouts takes seconds.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import scipy.stats
from mlrollout.operator import queries as q
from mlrollout.operator.decide.engine import Observations, decide, plan_queries
from mlrollout.operator.interfaces import DeploymentKey, ProviderError, RevisionState, Sample
from mlrollout.operator.model import (
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    parse_duration,
    revision_id,
)
from mlrollout.services.metrics import LATENCY_BUCKETS

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = DeploymentKey("sim", "fraud")
_RANGE = re.compile(r"\[([0-9]+)s\]")


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Version:
    """How one model version behaves, per request."""

    error: float = 0.0005  # server-error probability
    latency: float = 0.001  # median seconds
    sigma: float = 0.35  # log-normal spread
    classes: tuple[float, ...] = (0.7, 0.3)  # predicted-class shares
    disagree: float = 0.02  # share of mirrored rows answered differently from stable


@dataclass(frozen=True)
class World:
    """Traffic and faults around the rollout."""

    rps: float = 40.0
    diurnal: float = 0.0  # relative amplitude of a sinusoidal swing
    diurnal_period: float = 900.0
    burst_rate: float = 0.0  # shared error bursts per second
    burst_error: float = 0.2  # error probability during a burst (both versions)
    burst_seconds: float = 10.0
    jitter: float = 0.0  # sd of a per-second, per-version log latency multiplier
    gap_rate: float = 0.0  # Prometheus outages per second
    gap_seconds: float = 30.0
    scrape: float = 5.0  # scrape interval, seconds
    mirror: float = 0.1  # share of canary requests mirrored for agreement


@dataclass(frozen=True)
class Scenario:
    name: str
    canary: Version
    world: World = field(default_factory=World)
    stable: Version = field(default_factory=Version)
    bad: bool = False  # what a right decision is: rollback (bad) or promotion
    note: str = ""


# Only the edges around the latencies simulated are emitted (the engine reads any edges).
_EDGES = np.array([e for e in LATENCY_BUCKETS if 0.0002 <= e <= 0.05])


class Traffic:
    """Per-second counters of both versions, generated as the weights are decided."""

    def __init__(self, sc: Scenario, rng: np.random.Generator) -> None:
        self.sc, self.rng, self.t = sc, rng, 0
        k = len(sc.stable.classes)
        self.cum: dict[str, list[np.ndarray]] = {}
        # Per version: requests, errors, bucket counts (edges + inf), class counts; mirror.
        self.width = 2 + len(_EDGES) + 1 + k
        for track in ("stable", "canary"):
            self.cum[track] = [np.zeros(self.width)]
        self.mirror = [np.zeros(2)]  # agree, disagree (rows)
        self.bursts = self._spans(sc.world.burst_rate, sc.world.burst_seconds, 7200)
        self.gaps = self._spans(sc.world.gap_rate, sc.world.gap_seconds, 7200)
        self.served_bad = 0  # canary errors and wrong answers clients got

    def _spans(self, rate: float, length: float, horizon: int) -> np.ndarray:
        marks = np.zeros(horizon, dtype=bool)
        if rate <= 0:
            return marks
        for start in np.nonzero(self.rng.random(horizon) < rate)[0]:
            marks[start : start + int(length)] = True
        return marks

    def advance(self, seconds: int, weight: int) -> None:
        """Simulate ``seconds`` more seconds with the canary at ``weight`` percent."""
        w, rng = self.sc.world, self.rng
        t = np.arange(self.t, self.t + seconds)
        rate = w.rps * (1 + w.diurnal * np.sin(2 * math.pi * t / w.diurnal_period))
        arrivals = rng.poisson(np.maximum(rate, 0.0))
        canary_n = rng.binomial(arrivals, weight / 100)
        burst = self.bursts[np.minimum(t, len(self.bursts) - 1)]
        for track, n in (("stable", arrivals - canary_n), ("canary", canary_n)):
            v = self.sc.canary if track == "canary" else self.sc.stable
            p_err = np.where(burst, np.maximum(v.error, w.burst_error), v.error)
            errors = rng.binomial(n, p_err)
            scale = v.latency * np.exp(w.jitter * rng.standard_normal(seconds))
            z = (np.log(_EDGES)[None, :] - np.log(scale)[:, None]) / v.sigma
            cdf = scipy.stats.norm.cdf(z)
            probs = np.diff(
                np.concatenate([np.zeros((seconds, 1)), cdf, np.ones((seconds, 1))], axis=1), axis=1
            )
            buckets = rng.multinomial(n, np.clip(probs, 0, None) / probs.sum(axis=1, keepdims=True))
            classes = rng.multinomial(n, v.classes)
            rows = np.concatenate([n[:, None], errors[:, None], buckets, classes], axis=1)
            running = self.cum[track][-1] + np.cumsum(rows, axis=0)
            self.cum[track].extend(running)
            if track == "canary":
                mirrored = rng.binomial(n, w.mirror)
                bad = rng.binomial(mirrored, v.disagree)
                m = self.mirror[-1] + np.cumsum(np.stack([mirrored - bad, bad], axis=1), axis=0)
                self.mirror.extend(m)
                # Wrong answers reach clients on every canary request, not only mirrored ones.
                self.served_bad += int(errors.sum() + rng.binomial(n - errors, v.disagree).sum())
        self.t += seconds

    def visible(self, track: str, at: float) -> np.ndarray:
        """Counters as of the last scrape at or before ``at``."""
        s = self.sc.world.scrape
        i = int(max(0.0, math.floor(at / s) * s))
        series = self.mirror if track == "mirror" else self.cum[track]
        return series[min(i, len(series) - 1)]

    def window(self, track: str, now: float, seconds: float) -> np.ndarray:
        return np.maximum(self.visible(track, now) - self.visible(track, now - seconds), 0.0)

    def gap(self, now: float) -> bool:
        return bool(self.gaps[min(int(now), len(self.gaps) - 1)])


# --------------------------------------------------------------------------- engine


def _answers(traffic: Traffic, planned: Mapping[str, str], now: float) -> dict[str, Any]:
    """The engine's queries, answered from the simulated counters."""
    if traffic.gap(now):
        down = ProviderError("prometheus: connection refused (simulated outage)")
        return dict.fromkeys(planned, down)
    k_edges = len(_EDGES)
    out: dict[str, Any] = {}
    for name, promql in planned.items():
        m = _RANGE.search(promql)
        seconds = float(m.group(1)) if m else 0.0
        kind, _, rest = name.partition(".")
        track = rest.partition("@")[0]
        if name == q.FRESHNESS:
            out[name] = [Sample({}, now % traffic.sc.world.scrape)]
        elif name == q.AGREEMENT:
            a, d = traffic.window("mirror", now, seconds)
            out[name] = [Sample({"result": "agree"}, a), Sample({"result": "disagree"}, d)]
        elif kind in ("requests", "errors", "latency", "predictionBins"):
            win = traffic.window(track, now, seconds)
            if kind == "requests":
                out[name] = [Sample({}, win[0])]
            elif kind == "errors":
                out[name] = [Sample({}, win[1])] if win[1] else []
            elif kind == "latency":
                cum = np.cumsum(win[2 : 3 + k_edges])
                out[name] = [
                    Sample({"le": repr(float(e))}, c) for e, c in zip(_EDGES, cum, strict=False)
                ]
                out[name].append(Sample({"le": "+Inf"}, cum[-1]))
            else:
                out[name] = [Sample({"bin": str(i)}, c) for i, c in enumerate(win[3 + k_edges :])]
        else:
            out[name] = []  # stable drift and anything else: not simulated
    return out


def base_spec(analysis: Mapping[str, Any] | None = None, agreement: bool = False) -> dict[str, Any]:
    a = {"interval": "5s", **(analysis or {})}
    spec: dict[str, Any] = {
        "model": {"name": "fraud", "version": "v2", "uri": "https://m/v2"},
        "rollout": {
            "steps": [{"weight": 20}, {"weight": 50}],
            "progressDeadline": "10m",
            "analysis": a,
        },
    }
    if agreement:
        spec["traffic"] = {"agreement": {"percent": 10}}
    return spec


def _stable_status() -> ModelDeploymentStatus:
    from mlrollout.operator.model import ModelRef, Revision

    v1 = Revision.of(ModelRef(name="fraud", version="v1", uri="https://m/v1"), "stable")
    v1.serving_since = T0 - timedelta(hours=1)
    return ModelDeploymentStatus(stable=v1, stable_ready=True)


@dataclass
class Outcome:
    decision: str  # promoted, rolledBack, undecided
    seconds: float
    canary_requests: int
    served_bad: int
    reason: str = ""


def run_engine(
    sc: Scenario, spec_doc: Mapping[str, Any], seed: int, horizon: float = 1800.0
) -> Outcome:
    """One rollout through the real engine."""
    spec = ModelDeploymentSpec.model_validate(spec_doc)
    interval = round(parse_duration(spec.rollout.analysis.interval))
    rng = np.random.default_rng(seed)
    traffic = Traffic(sc, rng)
    status = _stable_status()
    states: dict[str, RevisionState] = {}
    elapsed = 0.0
    states = {
        rev: RevisionState(rev, ready=True, url=f"http://{rev}")
        for rev in (status.stable.id if status.stable else "", revision_id(spec.model))
    }
    while elapsed <= horizon:
        now = T0 + timedelta(seconds=elapsed)
        planned = plan_queries(spec, status, KEY, states, now)
        results = _answers(traffic, planned, elapsed) if planned else {}
        d = decide(spec, status, Observations(states, results), now)
        status = d.status
        if status.canary is None and elapsed > 0:
            last = status.history[-1] if status.history else None
            outcome = last.outcome if last else "undecided"
            return Outcome(
                "promoted" if outcome == "promoted" else "rolledBack",
                elapsed,
                int(traffic.visible("canary", elapsed)[0]),
                traffic.served_bad,
                last.reason if last else "",
            )
        traffic.advance(interval, status.weights.canary)
        elapsed += interval
    return Outcome(
        "undecided", horizon, int(traffic.visible("canary", horizon)[0]), traffic.served_bad
    )


# --------------------------------------------------------------------------- baselines


def histogram_quantile(qn: float, buckets: np.ndarray) -> float:
    """Prometheus' linear interpolation inside the bucket holding the quantile."""
    cum = np.cumsum(buckets)
    total = cum[-1]
    if total <= 0:
        return math.nan
    rank = qn * total
    i = int(np.searchsorted(cum, rank))
    if i >= len(_EDGES):
        return float(_EDGES[-1])
    lo = 0.0 if i == 0 else float(_EDGES[i - 1])
    below = 0.0 if i == 0 else cum[i - 1]
    inside = cum[i] - below
    return lo + (float(_EDGES[i]) - lo) * ((rank - below) / inside if inside else 0.0)


@dataclass(frozen=True)
class Baseline:
    """Per-interval threshold policies as Flagger, Argo Rollouts and mlrollout 0.1 use them."""

    name: str
    kind: str  # flagger | argo | window
    interval: int = 5
    window: int = 30
    max_error: float = 0.01  # error rate per window (Flagger/Argo: success rate >= 99%)
    max_ratio: float = 1.5  # p95 vs stable's p95 per window
    threshold: int = 2  # Flagger: failed checks before rollback; window: failureLimit
    count: int = 3  # Argo: measurements per step
    min_samples: int = 100  # window: canary requests per window


def _window_check(b: Baseline, traffic: Traffic, now: float) -> str:
    k = len(_EDGES)
    c, s = traffic.window("canary", now, b.window), traffic.window("stable", now, b.window)
    if c[0] <= 0 or (b.kind == "window" and c[0] < b.min_samples):
        return "nodata"
    rate = c[1] / c[0]
    if b.kind == "window":
        if s[0] > 0:
            table = [[int(c[1]), int(c[0] - c[1])], [int(s[1]), int(s[0] - s[1])]]
            if scipy.stats.fisher_exact(table, alternative="greater").pvalue < 0.05:
                return "fail"
        if rate > 0.05:
            return "fail"
    elif rate > b.max_error:
        return "fail"
    p_c = histogram_quantile(0.95, c[2 : 3 + k])
    p_s = histogram_quantile(0.95, s[2 : 3 + k])
    if math.isfinite(p_s) and p_s > 0 and p_c > b.max_ratio * p_s:
        return "fail"
    return "pass"


def run_baseline(b: Baseline, sc: Scenario, seed: int, horizon: float = 1800.0) -> Outcome:
    rng = np.random.default_rng(seed)
    traffic = Traffic(sc, rng)
    steps = [20, 50]
    step, failures, passes, elapsed = 0, 0, 0, 0.0
    traffic.advance(b.interval, steps[0])
    elapsed += b.interval

    def done(decision: str) -> Outcome:
        return Outcome(
            decision, elapsed, int(traffic.visible("canary", elapsed)[0]), traffic.served_bad
        )

    while elapsed <= horizon:
        result = "error" if traffic.gap(elapsed) else _window_check(b, traffic, elapsed)
        if b.kind == "flagger":
            if result in ("fail", "nodata", "error"):
                failures += 1
                if failures >= b.threshold:
                    return done("rolledBack")
            else:
                step += 1
        elif b.kind == "argo":
            if result == "fail":
                return done("rolledBack")
            if result == "pass":
                passes += 1
                if passes >= b.count:
                    step, passes = step + 1, 0
        else:  # window: mlrollout 0.1
            if result == "fail":
                failures += 1
                if failures >= b.threshold:
                    return done("rolledBack")
            elif result == "pass":
                failures = 0
                step += 1
        if step >= len(steps):
            return done("promoted")
        traffic.advance(b.interval, steps[step])
        elapsed += b.interval
    return done("undecided")


BASELINES = (
    Baseline("Flagger-like", "flagger", threshold=5),
    Baseline("Argo-like", "argo", count=3),
    Baseline("per-window (mlrollout 0.1)", "window", threshold=2),
)


# --------------------------------------------------------------------------- scenarios


NOISY = World(jitter=0.25, burst_rate=0.002, gap_rate=0.001)


def scenarios() -> list[Scenario]:
    ok = Version()
    return [
        Scenario("healthy, noisy latency, shared error bursts, Prometheus gaps", ok, NOISY),
        Scenario("healthy, diurnal traffic", ok, World(rps=40, diurnal=0.8, jitter=0.15)),
        Scenario("healthy, sparse traffic (1 req/s)", ok, World(rps=1.0, jitter=0.15)),
        Scenario("1% errors vs stable's 0%", replace(ok, error=0.01), World(jitter=0.15),
                 stable=replace(ok, error=0.0), bad=True),
        Scenario("50% errors (40 req/s)", replace(ok, error=0.5), World(jitter=0.15), bad=True),
        Scenario("22% errors, sparse (1 req/s)", replace(ok, error=0.22), World(rps=1.0), bad=True),
        Scenario("latency 2x", replace(ok, latency=0.002), World(jitter=0.15), bad=True),
        Scenario("wrong answers, right marginals (41% disagree)", replace(ok, disagree=0.41),
                 World(jitter=0.15), bad=True, note="agreement gate on"),
    ]  # fmt: skip


@dataclass
class Row:
    scenario: str
    policy: str
    n: int
    rolled_back: float
    promoted: float
    undecided: float
    median_seconds: float
    median_requests: float
    median_bad: float
    right: float


def summarise(sc: Scenario, policy: str, outcomes: Sequence[Outcome]) -> Row:
    n = len(outcomes)
    rb = sum(o.decision == "rolledBack" for o in outcomes) / n
    pr = sum(o.decision == "promoted" for o in outcomes) / n
    decided = [o for o in outcomes if o.decision != "undecided"] or list(outcomes)
    right = rb if sc.bad else pr
    return Row(
        sc.name,
        policy,
        n,
        rb,
        pr,
        1 - rb - pr,
        float(np.median([o.seconds for o in decided])),
        float(np.median([o.canary_requests for o in decided])),
        float(np.median([o.served_bad for o in decided])),
        right,
    )


def run(
    n: int = 1000,
    seed: int = 1,
    only: Sequence[str] | None = None,
    alpha: float = 0.01,
    baselines: Sequence[Baseline] = BASELINES,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every scenario, ``n`` rollouts each, through the engine and the baselines."""
    rows: list[Row] = []
    t0 = time.perf_counter()
    engine_seconds = 0.0
    for i, sc in enumerate(scenarios()):
        if only and sc.name not in only:
            continue
        agreement = "agreement" in sc.note
        spec = base_spec(
            {"alpha": alpha, **({"metrics": {"agreement": {}}} if agreement else {})}, agreement
        )
        start = time.perf_counter()
        outs = [run_engine(sc, spec, seed * 100_003 + i * 10_007 + j) for j in range(n)]
        engine_seconds += time.perf_counter() - start
        rows.append(summarise(sc, "mlrollout (sequential)", outs))
        for b in baselines:
            outs = [run_baseline(b, sc, seed * 100_003 + i * 10_007 + j) for j in range(n)]
            rows.append(summarise(sc, b.name, outs))
        if progress:
            progress(f"decision: {sc.name}: {time.perf_counter() - t0:.0f}s")
    return {
        "n": n,
        "alpha": alpha,
        "rows": [r.__dict__ for r in rows],
        "engine_seconds": engine_seconds,
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- bench section


@dataclass(frozen=True)
class DecisionConfig:
    rollouts: int = 1000  # for the healthy noisy scenario (the alpha target)
    others: int = 150  # for every other scenario
    alpha: float = 0.01
    seed: int = 1


SMOKE = DecisionConfig(rollouts=20, others=10)


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def section(cfg: DecisionConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The ``decision`` section of docs/benchmarks.md: a table per scenario, and targets."""
    rows: list[Row] = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    engine_rollouts, engine_cpu = 0, 0.0
    for i, sc in enumerate(scenarios()):
        n = cfg.rollouts if i == 0 else cfg.others
        horizon = 600.0 if sc.world.rps < 5 else 1800.0
        agreement = "agreement" in sc.note
        metrics = {"metrics": {"agreement": {}}} if agreement else {}
        spec = base_spec({"alpha": cfg.alpha, **metrics}, agreement)
        seeds = [cfg.seed * 100_003 + i * 10_007 + j for j in range(n)]
        c0 = time.process_time()
        outs = [run_engine(sc, spec, s, horizon) for s in seeds]
        engine_cpu += time.process_time() - c0
        engine_rollouts += n
        rows.append(summarise(sc, "mlrollout (sequential)", outs))
        for b in BASELINES:
            rows.append(summarise(sc, b.name, [run_baseline(b, sc, s, horizon) for s in seeds]))
        if progress:
            progress(f"bench: decision: {sc.name} ({n} rollouts): {time.perf_counter() - t0:.0f}s")
    by = {(r.scenario, r.policy): r for r in rows}
    names = [s.name for s in scenarios()]
    ours = "mlrollout (sequential)"
    lines = [
        "The real engine (`plan_queries` + `decide`, status carried from call to call) against "
        "synthetic traffic from `bench/decision.py`: Poisson arrivals at 40 requests/s unless "
        "noted, steps 20% -> 50%, analysis every 5 s, scrapes every 5 s (counts as of the last "
        "scrape), log-normal latency (median 1 ms) with per-second jitter per version, predicted "
        "classes and mirrored agreement. Noisy world: latency jitter sd 0.25 (log), shared error "
        "bursts (20% errors for 10 s, 0.002/s), Prometheus outages (30 s, 0.001/s). Engine "
        f"defaults except `alpha: {cfg.alpha}`; `maxIncrease` 0.01, `passRisk` 0.05, "
        "`maxRatio` 1.5. Baselines on the same seeds: Flagger-like (every 5 s over a 30 s "
        "window: error rate <= 1% and p95 <= 1.5x stable's, `histogram_quantile` style; no "
        "data fails; 5 failed checks roll back; a pass moves one step), Argo-like (3 passing "
        "measurements per step, the first failure aborts, no data waits), per-window "
        "(mlrollout 0.1: minSamples 100 per 30 s window, Fisher vs stable at p < 0.05, error "
        "rate <= 5%, p95 <= 1.5x stable's, failureLimit 2). Times and requests are medians "
        "over decided rollouts; bad answers are canary errors plus wrong answers clients got. "
        f"Horizon 30 min (10 min at 1 request/s): what is not decided by then is `undecided`.",
        "",
        "| scenario | policy | rollouts | rolled back | promoted | undecided | time to decision | canary requests | bad answers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for policy in (ours, *(b.name for b in BASELINES)):
            r = by.get((name, policy))
            if r is None:
                continue
            right = "**" if policy == ours else ""
            lines.append(
                f"| {name} | {right}{policy}{right} | {r.n} | {_pct(r.rolled_back)} | "
                f"{_pct(r.promoted)} | {_pct(r.undecided)} | {r.median_seconds:.0f} s | "
                f"{r.median_requests:.0f} | {r.median_bad:.0f} |"
            )
    per_rollout = engine_cpu / max(1, engine_rollouts)
    lines += [
        "",
        f"{engine_rollouts} rollouts through the engine in {engine_cpu:.0f} s of CPU "
        f"({per_rollout * 1000:.0f} ms each, mostly the engine's own work per analysis run); "
        f"the whole section took {time.perf_counter() - t0:.0f} s wall, "
        f"{time.process_time() - cpu0:.0f} s CPU, on a shared machine.",
    ]
    healthy = [r for r in rows if r.policy == ours and r.scenario.startswith("healthy")]
    noisy = by[(names[0], ours)]
    one = by[(names[3], ours)]
    wrong = by[(names[7], ours)]
    window = by[(names[0], "per-window (mlrollout 0.1)")]
    targets = [
        {
            "target": f"healthy canaries rolled back <= alpha ({cfg.alpha}) over >= 1,000 "
            "simulated rollouts incl. noisy latency, error bursts, Prometheus gaps",
            "measured": f"{_pct(noisy.rolled_back)} of {noisy.n} (other healthy worlds: "
            + ", ".join(f"{_pct(r.rolled_back)} of {r.n}" for r in healthy[1:])
            + ")",
            "met": noisy.n >= 1000 and all(r.rolled_back <= cfg.alpha for r in healthy),
        },
        {
            "target": "1% vs 0% errors never promoted, rolled back once evidence suffices",
            "measured": f"promoted {_pct(one.promoted)}, rolled back {_pct(one.rolled_back)} "
            f"after a median {one.median_requests:.0f} canary requests ({one.median_seconds:.0f} s)",
            "met": one.promoted == 0 and one.rolled_back >= 0.95,
        },
        {
            "target": "wrong answers with right marginals rolled back without labels",
            "measured": f"rolled back {_pct(wrong.rolled_back)} (agreement gate), median "
            f"{wrong.median_seconds:.0f} s",
            "met": wrong.rolled_back >= 0.95,
        },
        {
            "target": "healthy promotion no slower than today (per-window) at the same steps",
            "measured": f"median {noisy.median_seconds:.0f} s vs {window.median_seconds:.0f} s "
            "(noisy world): evidence of safety within maxIncrease 0.01 needs ~1,000+ canary "
            "requests, per-window passes after 100",
            "met": noisy.median_seconds <= window.median_seconds,
        },
    ]
    return {
        "config": cfg.__dict__,
        "rows": [r.__dict__ for r in rows],
        "markdown": lines,
        "targets": targets,
    }
