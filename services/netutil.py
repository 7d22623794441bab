"""Small helpers for processes on 127.0.0.1: free ports and readiness waits.

Shared by the CLI (local mode), the tests and the benchmarks.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 30.0, expect_status: int = 200, interval: float = 0.05
) -> None:
    """Poll ``url`` until it answers ``expect_status``; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == expect_status:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
            if exc.code == expect_status:
                return
        except OSError as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer {expect_status} within {timeout:.0f}s (last: {last})")
