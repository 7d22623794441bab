"""The one module that talks to Prometheus: instant queries over the HTTP API.

Synchronous (urllib) on purpose: ``reconcile`` is synchronous and shared by local mode and
the kopf operator; kopf handlers call it through ``asyncio.to_thread``. Every failure
(connection refused, timeout, HTTP error, Prometheus error status, malformed answer)
becomes ``ProviderError`` with a message naming the server and the cause, so the engine
can hold or roll back as the spec says. How fresh the data is, is checked by the engine
with a ``timestamp()`` query (``queries.FRESHNESS``), per deployment.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

from mlrollout.operator.interfaces import ProviderError, Sample

MAX_BODY = 16 * 1024 * 1024


class PrometheusProvider:
    """A ``MetricsProvider`` over ``GET {base_url}/api/v1/query``."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"Prometheus URL must be http(s)://host[:port][/path], got {base_url!r}"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.base_url!r}, timeout={self.timeout})"

    def query(self, promql: str, now: datetime) -> list[Sample]:
        """Evaluate ``promql`` at ``now``; a vector or scalar answer becomes samples."""
        params = urllib.parse.urlencode(
            {"query": promql, "time": f"{now.timestamp():.3f}", "timeout": f"{self.timeout:g}s"}
        )
        body = self._get(f"/api/v1/query?{params}")
        return _parse(body, self.base_url, promql)

    def is_online(self) -> bool:
        # A trivial query rather than /-/ready: Prometheus-compatible backends (Thanos,
        # Mimir under /prometheus, ...) all answer the query API, not all the probe.
        try:
            self._get("/api/v1/query?query=1", timeout=min(self.timeout, 2.0))
        except ProviderError:
            return False
        return True

    def _get(self, path: str, timeout: float | None = None) -> bytes:
        url = self.base_url + path
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                return bytes(resp.read(MAX_BODY))
        except urllib.error.HTTPError as exc:
            # Prometheus answers 400/422/503 with a JSON error body worth showing.
            detail = _error_detail(exc.read(64 * 1024))
            raise ProviderError(
                f"Prometheus {self.base_url} answered HTTP {exc.code}: {detail}"
            ) from exc
        except TimeoutError as exc:
            raise ProviderError(
                f"Prometheus {self.base_url} did not answer within {timeout or self.timeout:g}s"
            ) from exc
        except urllib.error.URLError as exc:
            raise ProviderError(f"Prometheus {self.base_url} unreachable: {exc.reason}") from exc
        except OSError as exc:
            raise ProviderError(f"Prometheus {self.base_url} unreachable: {exc}") from exc


def _error_detail(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
        return f"{doc.get('errorType', 'error')}: {doc.get('error', '')}".strip()
    except (ValueError, AttributeError):
        return raw[:200].decode("utf-8", "replace").strip() or "(empty body)"


def _parse(raw: bytes, server: str, promql: str) -> list[Sample]:
    try:
        doc: Any = json.loads(raw)
    except ValueError as exc:
        raise ProviderError(f"Prometheus {server} sent invalid JSON") from exc
    if not isinstance(doc, dict) or doc.get("status") != "success":
        detail = f"{doc.get('errorType')}: {doc.get('error')}" if isinstance(doc, dict) else doc
        raise ProviderError(f"Prometheus {server} query failed ({detail}): {promql}")
    data = doc.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "vector":
            return [_sample(item["metric"], item["value"]) for item in result or []]
        if kind == "scalar":
            return [_sample({}, result)]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProviderError(f"Prometheus {server} sent a malformed {kind}: {exc}") from exc
    raise ProviderError(f"query must return a vector or scalar, got {kind!r}: {promql}")


def _sample(metric: Any, pair: Any) -> Sample:
    timestamp, text = pair
    value = float(text)  # Prometheus encodes values as strings, incl. "NaN" and "+Inf"
    labels = {str(k): str(v) for k, v in dict(metric).items()}
    return Sample(labels=labels, value=value, timestamp=float(timestamp))
