"""The local ``TrafficRouter``: the routing table as a JSON file the router process watches.

Writes are atomic (temp file in the same directory, fsync, rename), so the router never
reads half a table, and a table the router would reject is refused here, loudly, before
it reaches the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mlrollout.services.router.table import TableError, check_successor, parse_table


class FileRouter:
    def __init__(self, path: Path) -> None:
        self.path = path

    def set_routes(self, table: dict[str, Any]) -> None:
        new = parse_table(table)
        current = self.get_routes()
        if current is not None:
            try:
                if not check_successor(parse_table(current), new):
                    return
            except TableError as exc:
                # A file left by an earlier run with a higher generation, say: say so
                # rather than write a table the router would silently ignore.
                raise TableError(f"{self.path}: {exc}") from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(table, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".table-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_routes(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TableError(f"{self.path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise TableError(f"{self.path} does not hold a JSON object")
        return doc
