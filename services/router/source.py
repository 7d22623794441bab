"""Where routing tables come from: a local file (polled) or a Kubernetes ConfigMap (watched).

A source only delivers bytes to ``offer(data, origin)``; validation and the
keep-the-last-good-table rule live in ``Router.offer``. A source that cannot reach its
backing store logs, backs off and retries; the router keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

log = logging.getLogger("mlrollout.router")

Offer = Callable[[bytes, str], bool]
Reject = Callable[[str], None]  # a table the source refused itself (too large), with why

# A routing table is a few hundred bytes; a ConfigMap holds at most 1 MiB. Anything larger
# is refused unread, so a runaway writer cannot make the router read gigabytes.
MAX_TABLE_BYTES = 1 << 20

# The ConfigMap key the router writes its guard's trip to (the operator reads it).
GUARD_KEY = "guard.json"

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class TableSource(Protocol):
    def describe(self) -> str: ...

    async def run(self, offer: Offer, reject: Reject) -> None:
        """Deliver the current table, then every change, until cancelled."""
        ...


class TableSink(Protocol):
    """Where a watched source delivers (``proxy.Router``)."""

    def offer(self, data: bytes, origin: str) -> bool: ...

    def reject(self, message: str, origin: str) -> None: ...

    def source_state(self, up: bool, error: str | None = None) -> None: ...


async def watch_source(
    sink: TableSink, source: TableSource, backoff: float = 1.0, max_backoff: float = 30.0
) -> None:
    """Run ``source`` until cancelled; if it ever stops (a defect: sources catch their own
    errors), say so (the router turns unready, ``mlrollout_router_table_source_up`` 0),
    log it, and start it again after a back-off."""
    where = source.describe()
    delay = backoff
    while True:
        sink.source_state(True)
        started = asyncio.get_running_loop().time()
        try:
            await source.run(sink.offer, lambda message: sink.reject(message, where))
            error = "the source returned"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("routing table source %s stopped", where)
        sink.source_state(False, error)
        if asyncio.get_running_loop().time() - started > 60:
            delay = backoff  # it ran a good while: not a crash loop
        log.error("routing table source %s stopped (%s); restarting in %.1fs", where, error, delay)
        await asyncio.sleep(delay)
        delay = min(max_backoff, delay * 2)


class FileSource:
    """Polls a file: a cheap ``stat`` every ``interval`` seconds, a content hash on change.

    Every ``recheck`` seconds the file is hashed even if ``stat`` looks unchanged (two
    writes within one timestamp tick keep the same mtime). Write the file atomically
    (write a temporary file, then rename) so a half-written table is never read.
    """

    def __init__(
        self,
        path: str | Path,
        interval: float = 0.15,
        recheck: float = 2.0,
        max_bytes: int = MAX_TABLE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._refused: tuple[int, int, int] | None = None
        self.interval = interval
        self.recheck_every = max(1, round(recheck / interval))
        self._stat: tuple[int, int, int] | None = None
        self._digest: bytes | None = None
        self._missing_logged = False

    def describe(self) -> str:
        return f"file {self.path}"

    def poll(self, offer: Offer, force: bool = False, reject: Reject | None = None) -> None:
        """Check once; offer the content if it changed. Safe to call from the event loop."""
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if (key == self._stat and not force) or key == self._refused:
                return
            with open(self.path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            if not self._missing_logged:
                if self._digest is None and isinstance(exc, FileNotFoundError):
                    # Every local run starts so: the table comes once a server is ready.
                    log.info("no routing table at %s yet; waiting for it", self.path)
                else:
                    log.error(
                        "cannot read routing table %s: %s; keeping the table in force",
                        self.path,
                        exc,
                    )
                self._missing_logged = True
            self._stat = None
            return
        if self._missing_logged:
            log.info("routing table %s is readable again", self.path)
            self._missing_logged = False
        self._stat = key
        if len(data) > self.max_bytes:
            self._refused, self._digest = key, None
            message = f"routing table file is larger than {self.max_bytes} bytes; not read"
            if reject is not None:
                reject(message)
            else:
                log.error("%s: %s", self.describe(), message)
            return
        digest = hashlib.sha256(data).digest()
        if digest != self._digest:
            self._digest = digest
            offer(data, self.describe())

    async def run(self, offer: Offer, reject: Reject) -> None:
        polls = 0
        while True:
            try:
                self.poll(offer, force=polls % self.recheck_every == 0, reject=reject)
            except Exception as exc:  # never let one bad read end the watch
                log.exception("%s: error while polling", self.describe())
                reject(f"error while reading the table: {exc!r}")
                self._stat = None
            polls += 1
            await asyncio.sleep(self.interval)


@dataclass
class KubeAccess:
    """How to reach the Kubernetes API: base URL, headers and TLS settings."""

    server: str
    token_file: Path | None = None
    token: str | None = None
    ssl_context: ssl.SSLContext | bool = True

    def headers(self) -> dict[str, str]:
        # Bound service-account tokens rotate: read the file on every (re)connect.
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def from_environment(cls) -> KubeAccess:
        """In-cluster service account if present, else the current kubeconfig context."""
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT"),
        )
        if host and port and (SA_DIR / "token").exists():
            ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
            server = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
            return cls(server, token_file=SA_DIR / "token", ssl_context=ctx)
        return cls._from_kubeconfig()

    @classmethod
    def _from_kubeconfig(cls) -> KubeAccess:
        # Imported here: the kubernetes client is heavy and in-cluster routers never need it.
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(client_configuration=cfg)
        token = (cfg.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip()
        ctx: ssl.SSLContext | bool = True
        if cfg.host.startswith("https"):
            if not cfg.verify_ssl:
                ctx = False
            else:
                ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
                if cfg.cert_file:
                    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(cfg.host.rstrip("/"), token=token or None, ssl_context=ctx)


class ConfigMapSource:
    """Watches one ConfigMap through the API (a mounted file can lag by a minute)."""

    def __init__(
        self,
        namespace: str,
        name: str,
        access: KubeAccess,
        key: str = "table.json",
        max_backoff: float = 5.0,
    ) -> None:
        self.namespace, self.name, self.key = namespace, name, key
        self.access = access
        # Called with the ConfigMap's guard report (``GUARD_KEY``) after each table delivery.
        self.on_guard: Callable[[str, str], None] | None = None
        self.max_backoff = max_backoff

    def describe(self) -> str:
        return f"configmap {self.namespace}/{self.name} key {self.key}"

    async def run(self, offer: Offer, reject: Reject) -> None:
        import aiohttp

        backoff = 0.2
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=330)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    version = await self._get(session, offer, reject)
                    backoff = 0.2
                    await self._watch(session, offer, reject, version)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error(
                        "%s: %s; keeping the table in force, retrying in %.1fs",
                        self.describe(),
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(self.max_backoff, backoff * 2)

    def _url(self) -> str:
        return f"{self.access.server}/api/v1/namespaces/{quote(self.namespace)}/configmaps"

    async def _get(self, session: Any, offer: Offer, reject: Reject) -> str:
        url = f"{self._url()}/{quote(self.name)}"
        async with session.get(
            url, headers=self.access.headers(), ssl=self.access.ssl_context
        ) as resp:
            if resp.status != 200:
                raise ConnectionError(
                    f"GET {url} answered {resp.status}: {(await resp.text())[:200]}"
                )
            obj = await resp.json()
        self._deliver(obj, offer, reject)
        return str(obj["metadata"]["resourceVersion"])

    async def _watch(self, session: Any, offer: Offer, reject: Reject, version: str) -> None:
        params = {
            "watch": "1",
            "fieldSelector": f"metadata.name={self.name}",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        async with session.get(
            self._url(), params=params, headers=self.access.headers(), ssl=self.access.ssl_context
        ) as resp:
            if resp.status != 200:
                raise ConnectionError(f"watch answered {resp.status}: {(await resp.text())[:200]}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind in ("ADDED", "MODIFIED"):
                    self._deliver(obj, offer, reject)
                elif kind == "DELETED":
                    log.warning("%s was deleted; keeping the table in force", self.describe())
                elif kind == "ERROR":
                    # 410 Gone: our resourceVersion is too old; the caller lists again.
                    raise ConnectionError(f"watch error: {obj.get('message', obj)}")
        # The server ends watches after timeoutSeconds; list again to resume safely.

    def _deliver(self, obj: dict[str, Any], offer: Offer, reject: Reject) -> None:
        data = (obj.get("data") or {}).get(self.key)
        if data is None:
            log.error("%s has no key %r; keeping the table in force", self.describe(), self.key)
            return
        if not isinstance(data, str) or len(data) > MAX_TABLE_BYTES:
            reject(f"key {self.key!r} is not a string of at most {MAX_TABLE_BYTES} characters")
            return
        offer(data.encode(), self.describe())
        guard = (obj.get("data") or {}).get(GUARD_KEY)
        if self.on_guard is not None and isinstance(guard, str) and len(guard) <= MAX_TABLE_BYTES:
            self.on_guard(guard, self.describe())

    async def write_guard(self, report: dict[str, Any], attempts: int = 5) -> bool:
        """Put the guard's report in the ConfigMap under ``guard.json`` (a merge patch of
        that key only), where the operator reads it. Retried with back-off; False if it
        never got through (the canary is at weight 0 in this router either way)."""
        import aiohttp

        url = f"{self._url()}/{quote(self.name)}"
        body = json.dumps({"data": {GUARD_KEY: json.dumps(report, sort_keys=True)}})
        headers = {**self.access.headers(), "Content-Type": "application/merge-patch+json"}
        delay = 0.2
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, attempts + 1):
                try:
                    async with session.patch(
                        url, data=body, headers=headers, ssl=self.access.ssl_context
                    ) as resp:
                        if resp.status == 200:
                            return True
                        why = f"answered {resp.status}: {(await resp.text())[:200]}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    why = str(exc) or type(exc).__name__
                log.error(
                    "cannot write the guard's trip to %s (attempt %d/%d): %s",
                    self.describe(), attempt, attempts, why,
                )  # fmt: skip
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(self.max_backoff, delay * 2)
        return False
