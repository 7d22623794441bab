"""The local ``TrafficRouter``: the routing table as a JSON file the router process watches.

Writes are atomic (temp file in the same directory, fsync, rename), so the router never
reads half a table, and a table the router would reject is refused here, loudly, before
it reaches the file.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlrollout.services.osutil import write_atomic
from mlrollout.services.router.table import RoutingTable, TableError, check_successor, parse_table

log = logging.getLogger(__name__)


class FileRouter:
    """``confirm_url`` (the router's ``/-/table``): after a write, wait (at most
    ``confirm_timeout`` seconds) until the router has the new table in force. ``reconcile``
    applies routes before it stops revisions, so a revision that leaves the table is only
    stopped once no new request can reach it."""

    def __init__(
        self, path: Path, confirm_url: str | None = None, confirm_timeout: float = 3.0
    ) -> None:
        self.path = path
        self.confirm_url = confirm_url
        self.confirm_timeout = confirm_timeout

    def set_routes(self, table: RoutingTable) -> None:
        current = self.get_routes()
        if current is not None:
            try:
                if not check_successor(current, table):
                    return
            except TableError as exc:
                # A file left by an earlier run with a higher generation, say: say so
                # rather than write a table the router would silently ignore.
                raise TableError(f"{self.path}: {exc}") from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = table.to_doc()
        write_atomic(self.path, json.dumps(doc, indent=2, sort_keys=True) + "\n", fsync=True)
        self._confirm(table.generation)

    def _confirm(self, generation: int) -> None:
        if self.confirm_url is None:
            return
        deadline = time.monotonic() + self.confirm_timeout
        while True:
            try:
                with urllib.request.urlopen(self.confirm_url, timeout=1) as resp:
                    if json.loads(resp.read()).get("generation", -1) >= generation:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # 404: the router is up but has no table in force yet
                    return
            except (OSError, ValueError):
                return  # no router listening: nothing can route to a retired revision
            if time.monotonic() >= deadline:
                log.warning(
                    "router did not apply routing table generation %d within %.1fs",
                    generation,
                    self.confirm_timeout,
                )
                return
            time.sleep(0.02)

    def guard_report(self) -> dict[str, Any] | None:
        """The router's guard report from ``GET /-/table`` (``routerState.guard``); None
        without a router URL or when the router does not answer (it is asked again on the
        next reconcile)."""
        if self.confirm_url is None:
            return None
        try:
            with urllib.request.urlopen(self.confirm_url, timeout=1) as resp:
                doc = json.loads(resp.read(1 << 20))
        except (OSError, ValueError) as exc:
            log.debug("no guard report from %s: %s", self.confirm_url, exc)
            return None
        state = doc.get("routerState") if isinstance(doc, dict) else None
        report = state.get("guard") if isinstance(state, dict) else None
        return report if isinstance(report, dict) else None

    def get_routes(self) -> RoutingTable | None:
        """The table in the file; ``TableError`` naming the file if the router could not
        use it either (never overwritten silently: the file may be another run's)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return parse_table(text)
        except TableError as exc:
            raise TableError(f"{self.path}: {exc}") from exc
