"""The benchmark's hey parser and /proc accounting."""

from __future__ import annotations

import os
import time

import pytest

from bench.loadtool import parse_hey_csv, tree_cpu_seconds, tree_rss_mb

HEY_CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0010,0.0001,0.0000,0.0000,0.0009,0.0000,200,0.0010
0.0020,0.0000,0.0000,0.0000,0.0019,0.0000,200,0.0030
0.0030,0.0000,0.0000,0.0000,0.0029,0.0000,200,0.0060
0.0500,0.0000,0.0000,0.0000,0.0499,0.0000,503,0.0600
"""


def test_parse_csv_counts_only_2xx() -> None:
    run = parse_hey_csv(HEY_CSV, sent=5, wall_seconds=0.5)
    assert run.times_ms == pytest.approx([1.0, 2.0, 3.0])
    assert run.errors == 2  # one answered 503, one never answered
    assert run.rps == pytest.approx(10.0)
    assert run.quantile(0.5) == pytest.approx(2.0)
    assert run.quantile(0.99) == pytest.approx(3.0)


def test_no_successful_request_is_an_error() -> None:
    run = parse_hey_csv(HEY_CSV.splitlines()[0] + "\n", sent=4, wall_seconds=1.0)
    assert run.errors == 4
    with pytest.raises(RuntimeError, match="no request"):
        run.quantile(0.5)


def test_garbage_output_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="unexpected hey output"):
        parse_hey_csv("Error: connection refused\nsomething\n", sent=10, wall_seconds=1.0)


def test_tree_accounting_sees_own_cpu_and_memory() -> None:
    before = tree_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert tree_cpu_seconds(os.getpid()) - before >= 0.15
    assert tree_rss_mb(os.getpid()) > 10
