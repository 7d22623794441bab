"""A process supervisor that leaves nothing behind.

Every child runs in its own process group, so stopping it also stops whatever it forked
(BentoML starts worker processes). Three layers make cleanup hold on every exit path:
``Supervisor.close()`` (context manager / ``finally``), an ``atexit`` hook for supervisors
left open, and, on Linux, ``PR_SET_PDEATHSIG`` so a child is signalled even when its parent
is killed with SIGKILL and runs no Python at all. ``install_signal_handlers`` turns SIGTERM
and SIGHUP into ``KeyboardInterrupt`` so those take the same ``finally`` path as Ctrl-C.

PDEATHSIG fires when the *thread* that forked the child exits, so start processes from a
long-lived thread (the main thread or the event loop's), never from a worker pool.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from mlrollout.services.osutil import pid_alive

_PR_SET_PDEATHSIG = 1

# A process identity that survives pid reuse: (pid, start time in clock ticks).
ProcKey = tuple[int, int]


def _death_signal_hook() -> Callable[[], None] | None:
    """Return a pre-exec hook that asks the kernel to SIGTERM the child when we die."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    # Resolve the symbol before fork: the hook then runs no imports and takes no locks.
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return hook


_PREEXEC = _death_signal_hook()


class ProcessError(RuntimeError):
    """A supervised process could not be started or exited when it should not have."""


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    known_descendants: set[ProcKey] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def remember_descendants(self) -> None:
        """Note the current descendants, so they are stopped even if orphaned later."""
        if self.alive():
            self.known_descendants |= descendants(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the process's combined output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process, from /proc (Linux)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        parsed = _stat(int(entry.name))
        if parsed is not None:
            table[int(entry.name)] = (parsed[1], parsed[2])
    return table


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after its last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int, table: dict[int, tuple[int, int]] | None = None) -> set[ProcKey]:
    """Every live descendant of ``pid`` (pure given ``table``)."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _start) in table.items():
        children.setdefault(parent, []).append(child)
    found: set[ProcKey] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.add((child, table[child][1]))
            stack.append(child)
    return found


def _key_alive(key: ProcKey) -> bool:
    stat = _stat(key[0])
    return stat is not None and stat[2] == key[1] and stat[0] != "Z"


def _signal_key(key: ProcKey, sig: int) -> None:
    if _key_alive(key):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(key[0], sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate_tree(
    proc: subprocess.Popen[bytes], known: Iterable[ProcKey] = (), timeout: float = 10.0
) -> None:
    """SIGTERM ``proc``'s group and every descendant; SIGKILL what is left after ``timeout``.

    The group id equals the leader's pid (``start_new_session``), so it stays valid after
    the leader exits. Descendants are signalled one by one as well because some servers
    move workers into sessions of their own (BentoML's circus does); ``known`` adds ones
    seen earlier that were orphaned since (their parent died and they were re-parented).
    """
    pgid = proc.pid
    tree = descendants(pgid) | set(known)

    def signal_all(sig: int) -> None:
        _signal_group(pgid, sig)
        for key in tree:
            _signal_key(key, sig)

    def all_gone() -> bool:
        proc.poll()
        return not pid_alive(pgid, group=True) and not any(_key_alive(k) for k in tree)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not all_gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not all_gone():
        signal_all(signal.SIGKILL)
    # Reap the leader so it does not linger as a zombie (bounded: SIGKILL cannot be caught).
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    # Orphans are reaped by init; a zombie still answers killpg(0), so give them a short,
    # bounded moment rather than waiting on them forever.
    deadline = time.monotonic() + 2.0
    while not all_gone() and time.monotonic() < deadline:
        signal_all(signal.SIGKILL)
        time.sleep(0.05)


class Supervisor:
    """Starts named processes and guarantees they are stopped.

    Use as a context manager, or call ``close()`` in a ``finally``. Output of each process
    goes to ``<log_dir>/<name>.log``.
    """

    def __init__(self, log_dir: Path | None = None, stop_timeout: float = 10.0) -> None:
        if log_dir is None:
            log_dir = Path(tempfile.mkdtemp(prefix="mlrollout-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self._procs: dict[str, ManagedProcess] = {}
        self._lock = threading.Lock()
        self._closed = False
        _LIVE.add(self)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` as ``name``; a previous process of that name is stopped first."""
        if self._closed:
            raise ProcessError(f"cannot start {name!r}: the supervisor is closed")
        self.stop(name)
        log_path = self.log_dir / f"{name}.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with log_path.open("ab") as log:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_PREEXEC,
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {name!r} ({argv[0]}): {exc}") from exc
        proc = ManagedProcess(name=name, argv=list(argv), popen=popen, log_path=log_path)
        with self._lock:
            self._procs[name] = proc
        return proc

    def get(self, name: str) -> ManagedProcess | None:
        with self._lock:
            return self._procs.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._procs)

    def stop(self, name: str, timeout: float | None = None) -> None:
        with self._lock:
            proc = self._procs.pop(name, None)
        if proc is not None:
            limit = self.stop_timeout if timeout is None else timeout
            terminate_tree(proc.popen, proc.known_descendants, limit)

    def close(self) -> None:
        """Stop every process, newest first. Idempotent."""
        self._closed = True
        for name in reversed(self.names()):
            self.stop(name)
        _LIVE.discard(self)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ManagedProcess]:
        with self._lock:
            return iter(list(self._procs.values()))


def wait_ready(proc: ManagedProcess, url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200; fail at once, with its log, if ``proc`` exits first."""
    from mlrollout.services.netutil import wait_http

    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise ProcessError(
                f"{proc.name} exited with code {proc.returncode} before it was ready:\n"
                f"{proc.log_tail()}"
            )
        try:
            wait_http(url, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except TimeoutError as exc:
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{proc.name} was not ready within {timeout:.0f}s ({exc}):\n{proc.log_tail()}"
                ) from exc


_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sup in list(_LIVE):
        sup.close()


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """Route SIGTERM and SIGHUP through the same cleanup path as Ctrl-C (main thread only)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
