"""Hostile backends for router tests: each reads a request, then misbehaves one way.

``hostile(kind)`` is an ``asyncio.start_server`` callback; ``HostileBackend`` runs one in
a thread of its own (for tests that drive a router process from threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable

from mlrollout.services.netutil import free_port

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)


def hostile(kind: str) -> Behaviour:
    """Backends that misbehave after reading a request."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await read_request(reader)
            if kind == "huge-headers":  # 200 MB of headers, as fast as the router reads
                writer.write(b"HTTP/1.1 200 OK\r\n")
                line = b"x-junk: " + b"j" * 1000 + b"\r\n"
                for _ in range(200_000):
                    writer.write(line)
                    await writer.drain()
            elif kind == "one-huge-header":
                writer.write(b"HTTP/1.1 200 OK\r\nx-junk: ")
                for _ in range(200):
                    writer.write(b"j" * (1 << 20))
                    await writer.drain()
            elif kind == "many-small-headers":
                writer.write(
                    b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 5000 + b"content-length: 2\r\n\r\n{}"
                )
                await writer.drain()
            elif kind == "huge-body":  # 100 MB announced and sent
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (100 << 20))
                for _ in range(100):
                    writer.write(b"b" * (1 << 20))
                    await writer.drain()
            elif kind == "huge-chunked-body":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n%s\r\n" % (1 << 20, b"c" * (1 << 20))
                for _ in range(100):
                    writer.write(chunk)
                    await writer.drain()
            elif kind == "garbage":
                writer.write(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(5)
            elif kind == "silence":
                await asyncio.sleep(30)
            elif kind == "slow-drip-headers":
                for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" * 10:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
            elif kind == "slow-drip-body":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                for _ in range(1000):
                    writer.write(b"d")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            elif kind == "not-ready":  # a model server starting up
                body = b'{"error": "model not ready"}'
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
            elif kind == "rst":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01" + b"\x00" * 7)
            else:
                raise AssertionError(kind)
        writer.close()

    return behave


KINDS = (
    "huge-headers", "one-huge-header", "many-small-headers", "huge-body", "huge-chunked-body",
    "garbage", "silence", "slow-drip-headers", "slow-drip-body", "not-ready", "rst",
)  # fmt: skip


class HostileBackend:
    """A hostile backend on its own event loop thread; ``kind`` may change between requests."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HostileBackend:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hostile backend did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hostile(self.kind)(reader, writer)

        server = self.loop.run_until_complete(asyncio.start_server(behave, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()
