"""Write the benchmark results: raw JSON, PNG charts and ``docs/benchmarks.md``."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cpu_ratios(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[float]:
    """CPU per request of each run over the reference's in the same round.

    A run too short for the clock to tick (10 ms) reads 0 CPU; such rounds are left out.
    """
    return [
        a["cpu_us_per_request"] / b["cpu_us_per_request"]
        for a, b in zip(runs, reference, strict=False)
        if b["cpu_us_per_request"] > 0
    ]


def _fmt_spread(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def serving_table(cells: list[dict[str, Any]], batch: int, reference: str) -> list[str]:
    rows = [c for c in cells if c["batch"] == batch]
    ref = next((c for c in rows if c["server"] == reference), None)
    lines = [
        "| server | CPU us/request | x bare | p50 ms | p99 ms | p99/p50 | req/s | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        runs = c["runs"]
        cpu = [r["cpu_us_per_request"] for r in runs]
        ratio = "-"
        if ref is not None:
            # Ratios per round (same round = same machine conditions), then their median and spread.
            ratios = cpu_ratios(runs, ref["runs"])
            ratio = _fmt_spread(ratios, 2) if ratios else "-"
        p50 = [r["p50_ms"] for r in runs]
        p99 = [r["p99_ms"] for r in runs]
        tail = [b / a for a, b in zip(p50, p99, strict=True) if a > 0]
        rss = [r["rss_mb"] for r in runs if r["rss_mb"] == r["rss_mb"]]
        lines.append(
            f"| {c['server']} | {_fmt_spread(cpu)} | {ratio} | {_fmt_spread(p50, 2)} | {_fmt_spread(p99, 2)} "
            f"| {_fmt_spread(tail, 1) if tail else '-'} | {_fmt_spread([r['rps'] for r in runs])} "
            f"| {_fmt_spread(rss) if rss else '-'} |"
        )
    return lines


def chart_serving(cells: list[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({c["batch"] for c in cells})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        rows = [c for c in cells if c["batch"] == batch]
        names = [c["server"] for c in rows]
        meds = [statistics.median(r["cpu_us_per_request"] for r in c["runs"]) for c in rows]
        lows = [
            m - min(r["cpu_us_per_request"] for r in c["runs"])
            for m, c in zip(meds, rows, strict=True)
        ]
        highs = [
            max(r["cpu_us_per_request"] for r in c["runs"]) - m
            for m, c in zip(meds, rows, strict=True)
        ]
        ax.barh(names, meds, xerr=[lows, highs], color="#4c72b0")
        ax.set_xscale("log")
        ax.set_xlabel("server CPU per request (us, log scale)")
        ax.set_title(f"batch {batch}")
    fig.tight_layout()
    path = out / "serving-cpu.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


FLOOR = "onnxruntime in-process (floor)"


def _med_cpu(cell: dict[str, Any]) -> float:
    return statistics.median(r["cpu_us_per_request"] for r in cell["runs"])


def _serving_reading(cells: list[dict[str, Any]]) -> list[str]:
    out = []
    for batch in sorted({c["batch"] for c in cells}):
        row = {c["server"]: c for c in cells if c["batch"] == batch}
        ours, floor = row.get("mlrollout server"), row.get(FLOOR)
        if ours and floor and _med_cpu(ours) > 0:
            share = _med_cpu(floor) / _med_cpu(ours) * 100
            out.append(
                f"- Serving, batch {batch}: the model itself (in-process floor, "
                f"{_med_cpu(floor):,.0f} us) is {share:.0f}% of the mlrollout server's "
                f"{_med_cpu(ours):,.0f} us per request; the rest is HTTP, BentoML, validation "
                "and metrics, so it is the "
                f"{'framework' if share < 50 else 'model'} that dominates at this batch size."
            )
    spreads = [
        (max(r["cpu_us_per_request"] for r in c["runs"]) - min(r["cpu_us_per_request"] for r in c["runs"]))
        / _med_cpu(c) * 100
        for c in cells
        if len(c["runs"]) > 1 and _med_cpu(c) > 0
    ]  # fmt: skip
    if spreads:
        out.append(
            f"- Noise: CPU per request varied by {statistics.median(spreads):.0f}% (median over "
            f"cells; worst {max(spreads):.0f}%) between rounds of the same cell, on a machine "
            "shared with other work. Differences smaller than that are not findings."
        )
    return out


def _operator_reading(section: dict[str, Any]) -> list[str]:
    r = section["result"]
    idle, an = r["idle"], r["analysis"]
    burst = statistics.median(r["burst_latency_s"])
    paced = statistics.median(r["paced_latency_s"])
    keeps_up = an["runs_per_s"] >= 0.9 * an["wanted_runs_per_s"]
    cfg = section["config"]
    total = r["deployments"] + cfg["paced"]
    return [
        f"- Operator (real control plane): a new ModelDeployment got its children in "
        f"{paced:.2f} s (median) with {r['deployments']} managed, and {burst:.2f} s when all "
        f"{r['deployments']} arrived at once (the bench POSTed them in "
        f"{r['burst_create_s']:.1f} s; all were Healthy after {r['burst_settle_s']:.0f} s, "
        "pods made Ready by kwok and the real Deployment controller). "
        f"At rest the operator used {idle['operator_core_share'] * 100:.1f}% of a core for "
        f"{total} Healthy deployments ({idle['operator_cpu_ms_per_md_per_interval']:.1f} ms "
        f"per deployment per {cfg['analysis_interval']} drift check; nothing runs in "
        f"between), while the control plane itself used {idle['control_plane_cpu_s']:.1f} s "
        f"of CPU over the same {idle['wall_s']:.0f} s. "
        f"An analysis run costs {an['operator_cpu_ms_per_run']:.1f} ms of operator CPU and "
        f"{an['prometheus_cpu_ms_per_run']:.1f} ms of Prometheus CPU; the operator "
        + (
            "kept up with every canary's interval."
            if keeps_up
            else f"managed {an['runs_per_s']:.1f} of the {an['wanted_runs_per_s']:.1f} runs/s "
            "wanted, so analysis falls behind the interval at this scale."
        )
    ]


def _rollback_reading(section: dict[str, Any]) -> list[str]:
    out = []
    cfg = section["config"]
    for name, variant in section.get("variants", {}).items():
        rows = [t for t in section["trials"] if t["variant"] == name]
        secs = statistics.median(t["seconds_to_zero"] for t in rows)
        bad = statistics.median(t["bad_answers"] for t in rows)
        weight = statistics.median(t["peak_weight"] for t in rows)
        if variant.get("guard"):
            out.append(
                f"- Rollback (router guard on): {secs:.1f} s to weight 0 in the operator's "
                f"table (median), {bad:.0f} bad answers: the router took the canary off at "
                "its guard's crossing, and the operator recorded the rollback on its next round "
                "(the router's own time to weight 0 is in the router guard section)."
            )
            continue
        s, floor = variant["settings"], variant["floor_s"]
        canary_rate = cfg["rate"] * weight / 100
        why = (
            "close to that floor: the interval sets the time"
            if secs <= floor * 1.5
            else f"the other {secs - floor:.0f} s go to the evidence (a few canary errors: "
            f"at {canary_rate:.0f} canary requests/s and {cfg['fault_rate']:.0%} faults, "
            f"{canary_rate * cfg['fault_rate']:.0f} errors/s), the scrape lag, and where the "
            "runs fall after the canary starts"
        )
        expected = canary_rate * secs * cfg["fault_rate"]
        out.append(
            f"- Rollback ({name} analysis): {secs:.0f} s to weight 0 (median) against a floor "
            f"of {floor:.0f} s (one analysis interval, {s['interval']}: a sequential test "
            "rolls back on the run that sees it cross); "
            f"{why}. The blast radius, {bad:.0f} bad answers, follows from that time: "
            f"{cfg['rate']:g} requests/s x {weight:.0f}% canary weight x {secs:.0f} s x "
            f"{cfg['fault_rate']:.0%} faults = {expected:.0f} expected."
        )
    return out


def reading(results: dict[str, Any]) -> list[str]:
    """``## Reading these figures``: what dominates each cost, from this run's numbers."""
    lines: list[str] = []
    if results.get("serving"):
        lines += _serving_reading(results["serving"]["cells"])
    if results.get("operator"):
        lines += _operator_reading(results["operator"])
    if results.get("rollback"):
        lines += _rollback_reading(results["rollback"])
    missed = [t for t in results.get("targets", []) if not t["met"]]
    for t in missed:
        lines.append(f"- Missed: {t['target']} (measured {t['measured']}); see the section above.")
    if not lines:
        return []
    return ["## Reading these figures", "", *lines, ""]


def write_report(results: dict[str, Any], out: Path) -> Path:
    """``out`` is the docs folder: writes benchmarks.md there and raw data under bench/."""
    raw = out / "bench"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench --out docs`); raw figures in",
        "`docs/bench/results.json`. Every comparison is side by side in one run on one machine;",
        "ratios are taken per round and reported as median (min-max over rounds).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; kernel {m['kernel']}",
        f"- Date: {m['date']}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in sorted(results.get('versions', {}).items()))}",
        f"- Mode: {'SMOKE (tiny durations, figures not meaningful)' if results.get('smoke') else 'full'}",
        "",
    ]
    serving = results.get("serving")
    if serving:
        cfg = serving["config"]
        lines += [
            "## Serving: the same model and requests through each server",
            "",
            f"Model: {cfg['model']}. Load: `hey`, {cfg['requests']} POSTs per cell at concurrency "
            f"{cfg['concurrency']}, keep-alive, {cfg['rounds']} rounds; load generator pinned to core(s) "
            f"{cfg['load_core']}, servers to core {cfg['server_core']}. Server CPU is utime+stime of the server "
            "process tree from /proc, divided by answered requests. The floor row is onnxruntime called "
            "in-process (no HTTP).",
            "",
        ]
        for batch in sorted({c["batch"] for c in serving["cells"]}):
            lines += [f"### Batch {batch}", ""]
            lines += serving_table(serving["cells"], batch, "starlette+onnxruntime (bare)")
            lines.append("")
        lines += ["![server CPU per request](bench/serving-cpu.png)", ""]
        chart_serving(serving["cells"], raw)
    for key, title in (
        ("router", "Router overhead"),
        ("drift", "Drift tracking cost"),
        ("rollback", "Rollback: time to weight 0 and blast radius"),
        ("guard", "Router guard and paired agreement"),
        ("decision", "Decision quality: sequential analysis vs per-interval policies (simulated)"),
        ("operator", "Operator at scale"),
        ("controlplane", "Test control plane: build, start-up, idle"),
    ):
        section = results.get(key)
        if section:
            lines += [f"## {title}", "", *section["markdown"], ""]
    targets = results.get("targets")
    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
            for t in targets
        ]
        lines.append("")
    lines += reading(results)
    notes = results.get("notes")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    path = out / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path
