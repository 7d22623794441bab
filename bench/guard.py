"""The router guard and paired agreement on real processes: how fast, at what cost.

One stack on 127.0.0.1: the router (``mlrollout router --table``) in front of real model
servers (``mlrollout serve``, BentoML + onnxruntime), fed by a paced client at a fixed
request rate. No operator and no Prometheus: this measures what the router does by itself,
which is what bounds the time to weight 0 where Prometheus scrapes every 15-30 s.

Trials, each with a fresh canary in the table (a table without the canary in between
clears the guard):

- ``errors``: the canary's server fails ``fault_rate`` of its requests from its first one
  (``MLROLLOUT_FAULT_ERROR_RATE``), at ``weight`` % of ``rate`` requests/s. Time to weight
  0 = from the client sending the first request the canary answered to the trip (the
  router's wall clock, same host); bad answers = 5xx the client got.
- ``agreement``: the canary is a model trained on shuffled labels (about the same share
  of positives as stable, wrong on ~40 % of rows), every canary request mirrored to
  stable; time and compared rows until the agreement test trips.
- ``healthy``: the canary is v2 (a different good model, no faults) for ``healthy_s``
  seconds: neither test may trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from mlrollout.services import sequential as sq
from mlrollout.services.model import examples
from mlrollout.services.model.dataplane import FAULT_ENV
from mlrollout.services.model.export import export_model

from tests.doubles.router import router as router_process
from tests.doubles.router import write_table
from tests.doubles.server import RunningServer, running_server

DEPLOYMENT = "guard"


@dataclass(frozen=True)
class GuardConfig:
    repeats: int = 10  # per faulty variant
    rate: float = 40.0  # requests per second through the router
    weight: int = 10  # canary percent
    fault_rate: float = 0.5
    alpha: float = 0.005  # the guard's share of the default rollout alpha 0.01
    min_agreement: float = 0.9
    agreement_weight: int = 20
    healthy_s: float = 20.0
    trial_timeout_s: float = 30.0
    after_trip_s: float = 1.0  # keep the load on after a trip: no canary answer may follow

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.rate <= 0 or not 0 < self.weight < 100:
            raise ValueError("guard bench needs repeats >= 1, rate > 0 and a weight in 1..99")


@dataclass
class Answer:
    sent: float  # client wall clock
    track: str
    status: int
    prediction: Any = None


@dataclass(frozen=True)
class Trial:
    variant: str
    tripped: bool
    test: str | None
    seconds_to_zero: float | None  # first canary answer's send time -> trip
    bad_answers: int  # 5xx the client got
    canary_answers: int  # answers the canary gave (all before the trip)
    canary_after_trip: int  # canary answers to requests sent after the trip (must be 0)
    evidence: dict[str, Any]
    positive_share: dict[str, float]  # share of class-1 answers per track


def make_shuffled(out: Path, seed: int = 3) -> Path:
    """A deep tree trained on shuffled labels: ~30 % positives, like stable, but wrong."""
    from sklearn.tree import DecisionTreeClassifier

    data = examples.make_dataset()
    y = np.random.default_rng(seed).permutation(data.y_train)
    model = DecisionTreeClassifier(random_state=0).fit(data.X_train, y)
    return export_model(
        model,
        data.X_train,
        y,
        out,
        name=examples.MODEL_NAME,
        version="v9-shuffled",
        feature_names=examples.FEATURE_NAMES,
        intended_use="Benchmark fixture: right marginals, wrong answers (shuffled labels).",
        overwrite=True,
    )


def records(traffic: Path) -> list[bytes]:
    out = []
    for line in traffic.read_text().splitlines():
        out.append(json.dumps({"instances": [json.loads(line)["record"]]}).encode())
    return out


def guard_state(router_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{router_url}/-/table", timeout=2) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


async def paced_load(
    router_url: str, bodies: list[bytes], rate: float, timeout_s: float, after_trip_s: float,
    until_s: float | None = None,
) -> tuple[list[Answer], dict[str, Any] | None]:  # fmt: skip
    """Send at ``rate``/s until the guard tripped + ``after_trip_s`` (or ``until_s``)."""
    answers: list[Answer] = []
    trip: dict[str, Any] | None = None
    stop_at = time.time() + (until_s if until_s is not None else timeout_s)
    tasks: set[asyncio.Task[None]] = set()
    conn = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(body: bytes) -> None:
            sent = time.time()
            async with session.post(
                f"{router_url}/predict", data=body, headers={"content-type": "application/json"}
            ) as resp:
                text = await resp.read()
                pred = None
                if resp.status == 200:
                    with contextlib.suppress(ValueError, KeyError, IndexError):
                        pred = json.loads(text)["predictions"][0]
                track = resp.headers.get("x-mlrollout-track", "?")
                answers.append(Answer(sent, track, resp.status, pred))

        async def watch() -> None:
            nonlocal trip, stop_at
            while time.time() < stop_at:
                doc = await asyncio.to_thread(guard_state, router_url)
                found = doc["routerState"]["guard"].get("trip")
                if found is not None and trip is None:
                    trip = found
                    if until_s is None:
                        stop_at = min(stop_at, time.time() + after_trip_s)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        start, i = time.time(), 0
        while time.time() < stop_at:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            task = asyncio.create_task(one(bodies[i % len(bodies)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await watcher
    return answers, trip


def summarise_trial(variant: str, answers: list[Answer], trip: dict[str, Any] | None) -> Trial:
    canary = [a for a in answers if a.track == "canary"]
    first = min((a.sent for a in canary), default=None)
    at = trip["at"] if trip else None
    after = sum(1 for a in canary if at is not None and a.sent > at + 0.05)
    share: dict[str, float] = {}
    for track in ("stable", "canary"):
        preds = [a.prediction for a in answers if a.track == track and a.prediction is not None]
        if preds:
            share[track] = sum(1 for p in preds if str(p) == "1") / len(preds)
    return Trial(
        variant=variant,
        tripped=trip is not None,
        test=trip["test"] if trip else None,
        seconds_to_zero=(at - first) if at is not None and first is not None else None,
        bad_answers=sum(1 for a in answers if a.status >= 500),
        canary_answers=len(canary),
        canary_after_trip=after,
        evidence=dict(trip["evidence"]) if trip else {},
        positive_share=share,
    )


@dataclass
class Stack:
    work: Path
    table: Path
    router_url: str
    stable: RunningServer
    generation: int = 0

    def route(self, canary: RunningServer | None, weight: int, **extra: Any) -> None:
        """Write the next table and wait until the router has it in force."""
        self.generation += 1
        backends = {"stable": {"url": self.stable.url, "version": "v1"}}
        weights = {"stable": 100}
        if canary is not None:
            backends["canary"] = {"url": canary.url, "version": f"c{self.generation}"}
            weights = {"stable": 100 - weight, "canary": weight}
        doc = {"generation": self.generation, "deployment": DEPLOYMENT, "backends": backends,
               "weights": weights, **(extra if canary is not None else {})}  # fmt: skip
        write_table(self.table, doc)
        for _ in range(200):
            if guard_state(self.router_url).get("generation") == self.generation:
                return
            time.sleep(0.02)
        raise RuntimeError(f"router did not apply generation {self.generation}")


@contextlib.contextmanager
def stack(work: Path) -> Iterator[tuple[Stack, dict[str, Path]]]:
    art = examples.write_examples(work / "examples")
    art["shuffled"] = make_shuffled(work / "examples" / "shuffled")
    table = work / "routes.json"
    with running_server(str(art["v1"]), args=("--deployment", DEPLOYMENT)) as stable:
        write_table(table, {"generation": 0, "deployment": DEPLOYMENT,
                            "backends": {"stable": {"url": stable.url, "version": "v1"}},
                            "weights": {"stable": 100}})  # fmt: skip
        with router_process(table) as (port, _proc):
            yield Stack(work, table, f"http://127.0.0.1:{port}", stable), art


def run_guard(work: Path, config: GuardConfig) -> dict[str, Any]:
    """All trials; the figures for docs/benchmarks.md."""
    trials: list[Trial] = []
    with stack(work) as (s, art):
        bodies = records(work / "examples" / examples.TRAFFIC_FILE)
        guard = {"alpha": config.alpha}
        args = ("--deployment", DEPLOYMENT, "--track", "canary")
        env = {FAULT_ENV: str(config.fault_rate)}
        with running_server(str(art["v1"]), args=args, env=env) as faulty:
            for _ in range(config.repeats):
                s.route(faulty, config.weight, guard=guard)
                answers, trip = asyncio.run(
                    paced_load(s.router_url, bodies, config.rate, config.trial_timeout_s,
                               config.after_trip_s)
                )  # fmt: skip
                trials.append(summarise_trial("errors", answers, trip))
                s.route(None, 0)
        agreement_guard = {**guard, "minAgreement": config.min_agreement}
        mirror = {"percent": 100, "source": "canary"}
        with running_server(str(art["shuffled"]), args=args) as wrong:
            for _ in range(config.repeats):
                s.route(wrong, config.agreement_weight, guard=agreement_guard, agreement=mirror)
                answers, trip = asyncio.run(
                    paced_load(s.router_url, bodies, config.rate, config.trial_timeout_s,
                               config.after_trip_s)
                )  # fmt: skip
                trials.append(summarise_trial("agreement", answers, trip))
                s.route(None, 0)
        with running_server(str(art["v2"]), args=args) as good:
            s.route(good, config.agreement_weight, guard=agreement_guard, agreement=mirror)
            answers, trip = asyncio.run(
                paced_load(s.router_url, bodies, config.rate, config.trial_timeout_s, 0.0,
                           until_s=config.healthy_s)
            )  # fmt: skip
            state = guard_state(s.router_url)["routerState"]["guard"]
            healthy = summarise_trial("healthy", answers, trip)
            healthy.evidence.update(state["evidence"])
            trials.append(healthy)
            s.route(None, 0)
    return {"config": asdict(config), "trials": [asdict(t) for t in trials]}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians and ranges per variant, and the test's own bound on bad answers."""
    cfg = result["config"]
    out: dict[str, Any] = {}
    for variant in ("errors", "agreement", "healthy"):
        ts = [t for t in result["trials"] if t["variant"] == variant]
        if not ts:
            continue
        secs = [t["seconds_to_zero"] for t in ts if t["seconds_to_zero"] is not None]
        out[variant] = {
            "trials": len(ts),
            "tripped": sum(1 for t in ts if t["tripped"]),
            "seconds_median": statistics.median(secs) if secs else None,
            "seconds_max": max(secs) if secs else None,
            "bad_median": statistics.median(t["bad_answers"] for t in ts),
            "bad_max": max(t["bad_answers"] for t in ts),
            "canary_after_trip": sum(t["canary_after_trip"] for t in ts),
            "rows_median": statistics.median(
                t["evidence"].get("agreeRows", 0) + t["evidence"].get("disagreeRows", 0) for t in ts
            ),
            "positive_share": ts[-1]["positive_share"],
            "evidence": ts[-1]["evidence"],
        }
    out["errors_needed"] = sq.hits_needed(
        sq.split_null(cfg["weight"] / 100), cfg["alpha"], sq.GUARD_RATIOS
    )
    return out


def section(
    work: Path, config: GuardConfig, rollback: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the trials; figures, targets and the markdown for docs/benchmarks.md."""
    result = run_guard(work, config)
    summary = summarise(result)
    cfg = result["config"]
    e, a, h = summary.get("errors"), summary.get("agreement"), summary.get("healthy")
    lines = [
        f"The router alone (`mlrollout router --table`, no operator, no Prometheus) in front of "
        f"real model servers (`mlrollout serve`, BentoML + onnxruntime), a paced client sending "
        f"{cfg['rate']:g} requests/s (one row each). Guard alpha {cfg['alpha']:g} (half the "
        f"default rollout alpha 0.01). Seconds to weight 0 run from the client sending the first "
        "request the canary answered to the router's trip (same host clock); bad answers are "
        "5xx the client got. Median (max) over trials.",
        "",
        "| canary | weight | trials | tripped (test) | seconds to weight 0 | bad answers "
        "| canary answers after the trip | evidence at the trip (last trial) |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]

    def ev(x: dict[str, Any]) -> str:
        d = x["evidence"]
        if not d:
            return ""
        return (
            f"canary {d['canaryErrors']}/{d['canaryRequests']} errors, stable "
            f"{d['stableErrors']}/{d['stableRequests']}; rows agree {d['agreeRows']}, "
            f"disagree {d['disagreeRows']}"
        )

    def secs(x: dict[str, Any]) -> str:
        if x["seconds_median"] is None:
            return "-"
        return f"{x['seconds_median']:.2f} ({x['seconds_max']:.2f})"

    if e:
        lines.append(
            f"| fails {cfg['fault_rate']:.0%} of requests | {cfg['weight']}% | {e['trials']} "
            f"| {e['tripped']} (errors) | {secs(e)} | {e['bad_median']:.0f} ({e['bad_max']}) "
            f"| {e['canary_after_trip']} | {ev(e)} |"
        )
    if a:
        lines.append(
            f"| shuffled-label model, mirrored 100% to stable, minAgreement "
            f"{cfg['min_agreement']} | {cfg['agreement_weight']}% | {a['trials']} "
            f"| {a['tripped']} (agreement) | {secs(a)} | {a['bad_median']:.0f} ({a['bad_max']}) "
            f"| {a['canary_after_trip']} | {ev(a)} |"
        )
    if h:
        lines.append(
            f"| v2 (a different good model), {cfg['healthy_s']:g} s, same guard | "
            f"{cfg['agreement_weight']}% | 1 | {h['tripped']} | - | {h['bad_median']:.0f} | - "
            f"| {ev(h)} |"
        )
    lines += [
        "",
        f"With stable failing nothing, the error test crosses at exactly "
        f"{summary['errors_needed']} canary errors at {cfg['weight']}% (every error multiplies "
        f"the e-value by up to 1/{cfg['weight'] / 100:g}; `sequential.hits_needed`), so the bad "
        "answers are that many plus any request already at the canary. The time is how long "
        f"the canary takes to fail {summary['errors_needed']} times: at "
        f"{cfg['rate'] * cfg['weight'] / 100:g} canary requests/s failing "
        f"{cfg['fault_rate']:.0%}, {summary['errors_needed'] / (cfg['rate'] * cfg['weight'] / 100 * cfg['fault_rate']):.1f} s "
        "on average; a trial whose canary happens to succeed several times first takes longer "
        "(the worst trial above), with no more bad answers.",
    ]
    if a and a["positive_share"]:
        lines.append(
            "The shuffled-label model's answers are wrong on about 40% of rows (held-out "
            "traffic, offline) while its share of positives is close to stable's (27.8% vs "
            "32.4% offline); no label was used."
        )
    targets: list[dict[str, Any]] = []
    if e and e["seconds_max"] is not None:
        targets.append(
            {
                "target": f"router guard: canary failing {cfg['fault_rate']:.0%} at "
                f"{cfg['rate']:g} req/s, {cfg['weight']}% weight, to weight 0 within 2 s "
                "of its first request (median; scrapes every 30 s do not matter)",
                "measured": f"{e['seconds_median']:.2f} s (worst of {e['trials']}: "
                f"{e['seconds_max']:.2f} s)",
                "met": e["tripped"] == e["trials"] and e["seconds_median"] <= 2.0,
            }
        )
        targets.append(
            {
                "target": "router guard: at most 10 bad answers (worst trial)",
                "measured": f"{e['bad_max']}",
                "met": e["bad_max"] <= 10,
            }
        )
    if rollback:
        off = [t for t in rollback["trials"] if t["variant"] in ("default", "short")]
        if off and e and e["seconds_median"]:
            ratio = statistics.median(t["seconds_to_zero"] for t in off) / e["seconds_median"]
            lines.append(
                f"Side by side in this run: the operator's analysis alone (rollback section, "
                f"guard off) took {ratio:.0f}x as long to weight 0."
            )
    if a:
        targets.append(
            {
                "target": "wrong answers with right marginals found without labels",
                "measured": f"{a['tripped']}/{a['trials']} trials, {a['rows_median']:.0f} rows",
                "met": a["tripped"] == a["trials"],
            }
        )
    if h:
        targets.append(
            {
                "target": "healthy canary (v2) left alone by the guard",
                "measured": "tripped" if h["tripped"] else "not tripped",
                "met": not h["tripped"],
            }
        )
    targets += local_targets(rollback)
    return {**result, "summary": summary, "markdown": lines, "targets": targets}


def local_targets(rollback: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Local mode (operator + router + Prometheus): the rollback section's guard variant."""
    rows = [t for t in (rollback or {}).get("trials", []) if t["variant"] == "guard"]
    if not rows:
        return []
    worst_s = max(t["seconds_to_zero"] for t in rows)
    worst_bad = max(t["bad_answers"] for t in rows)
    return [
        {
            "target": "local mode: canary failing 50% at 40 req/s, 10% weight, at weight 0 in the "
            "operator's table within 5 s of first getting weight, <= 10 bad answers (worst trial)",
            "measured": f"{worst_s:.1f} s, {worst_bad} bad answers ({len(rows)} trials)",
            "met": worst_s <= 5
            and worst_bad <= 10
            and all(t["outcome"] == "rolledBack" for t in rows),
        }
    ]
