"""``mlrollout loadgen URL --records FILE``: the command line around ``loadgen.generate``.

Prints progress to stderr and the report to stdout (and ``--report`` as JSON); exits 1
when every request failed or more than ``--max-failures`` did, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from mlrollout.operator.local.loadgen import (
    DEFAULT_LABEL_FIELD,
    LoadConfig,
    LoadgenError,
    LoadReport,
    Record,
    generate,
    load_records,
)
from mlrollout.services.osutil import write_atomic


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="base URL of the router or a model server")
    parser.add_argument(
        "--records",
        type=Path,
        required=True,
        help="JSON list / JSON lines of records (e.g. traffic.jsonl from `mlrollout examples`)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument(
        "--count", type=int, default=None, help="stop after this many requests (default: no limit)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: no limit; give --count or --duration)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight at most (default 16)"
    )
    parser.add_argument("--batch", type=int, default=1, help="records per request (default 1)")
    parser.add_argument(
        "--feedback",
        type=float,
        default=0.0,
        help="fraction of predictions followed by their label (default 0)",
    )
    parser.add_argument(
        "--label-field",
        default=DEFAULT_LABEL_FIELD,
        help=f"label key in records (default {DEFAULT_LABEL_FIELD!r})",
    )
    parser.add_argument(
        "--offset", type=int, default=0, help="start the replay at this record (default 0)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="replay the records in an order shuffled with this seed (default: file order)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request (default 10)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write the report (totals, per-version counts, time series) as JSON "
        "(default: print only)",
    )
    parser.add_argument(
        "--progress",
        type=float,
        default=5.0,
        help="seconds between progress lines on stderr; 0 for none (default 5)",
    )
    parser.add_argument(
        "--max-failures",
        type=float,
        default=None,
        help="exit 1 if the failed fraction is above this, e.g. 0 for none allowed "
        "(default: exit 1 only when every request failed)",
    )


def _print_progress(report: LoadReport) -> None:
    print(report.progress(), file=sys.stderr, flush=True)


async def _main(config: LoadConfig, records: list[Record], progress_s: float) -> LoadReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await generate(config, records, stop, _print_progress, progress_s)


def exit_code(report: LoadReport, max_failures: float | None) -> tuple[int, str]:
    """0, or 1 with why: every request failed, or more than ``max_failures`` did (pure)."""
    if report.sent and report.ok == 0:
        top = ", ".join(f"{k} x{v}" for k, v in report.statuses.most_common(3))
        return 1, f"every request failed ({top}): is the URL right and the server up?"
    if max_failures is not None and report.sent and report.failed / report.sent > max_failures:
        return 1, (
            f"{report.failed}/{report.sent} requests failed, more than --max-failures "
            f"{max_failures:g}"
        )
    return 0, ""


def run(args: argparse.Namespace) -> int:
    try:
        config = LoadConfig(
            url=args.url,
            rate=args.rate,
            count=args.count,
            duration_s=args.duration,
            concurrency=args.concurrency,
            batch=args.batch,
            feedback=args.feedback,
            timeout_s=args.timeout,
            offset=args.offset,
            seed=args.seed,
        )
        records = load_records(args.records, args.label_field)
    except LoadgenError as exc:
        print(f"mlrollout loadgen: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"sending {args.rate:g} requests/s to {args.url} "
        f"({len(records)} records, batch {args.batch}); Ctrl-C stops and reports",
        file=sys.stderr,
        flush=True,
    )
    report = asyncio.run(_main(config, records, args.progress))
    print(report.summary())
    if args.report:
        write_atomic(args.report, json.dumps(report.to_json(), indent=1) + "\n")
    code, why = exit_code(report, args.max_failures)
    if code:
        print(f"mlrollout loadgen: {why}", file=sys.stderr)
    return code
