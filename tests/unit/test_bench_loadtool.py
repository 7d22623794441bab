"""The benchmark's hey parser and /proc accounting."""

from __future__ import annotations

import os
import time

import pytest
from mlrollout.services.bench.loadtool import parse_hey, tree_cpu_seconds, tree_rss_mb

HEY_FULL = """
Summary:
  Total:\t0.5000 secs
  Slowest:\t0.0300 secs
  Fastest:\t0.0001 secs
  Requests/sec:\t2000.1234

Latency distribution:
  10% in 0.0002 secs
  50% in 0.0010 secs
  99% in 0.0200 secs

Status code distribution:
  [200]\t990 responses
  [503]\t8 responses
"""

HEY_SHORT = """
Summary:
  Slowest:\t0.0150 secs
  Requests/sec:\t100.0

Latency distribution:
  50% in 0.0040 secs
  0% in 0.0000 secs

Status code distribution:
  [200]\t96 responses
"""


def test_parse_full_output() -> None:
    stats = parse_hey(HEY_FULL, sent=1000)
    assert stats.ok == 990
    assert stats.errors == 10  # 8 answered 503, 2 never answered
    assert stats.rps == pytest.approx(2000.1234)
    assert stats.p50_ms == pytest.approx(1.0)
    assert stats.p99_ms == pytest.approx(20.0)


def test_short_run_uses_slowest_for_p99() -> None:
    stats = parse_hey(HEY_SHORT, sent=96)
    assert stats.errors == 0
    assert stats.p99_ms == pytest.approx(15.0)


def test_garbage_output_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="unexpected hey output"):
        parse_hey("connection refused", sent=10)


def test_tree_accounting_sees_own_cpu_and_memory() -> None:
    before = tree_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert tree_cpu_seconds(os.getpid()) - before >= 0.15
    assert tree_rss_mb(os.getpid()) > 10
