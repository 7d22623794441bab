"""``mlrollout dev FILE.yaml``: run a ModelDeployment on this machine, no cluster.

Validates the file and checks for Prometheus before starting anything; then runs the
engine until Ctrl-C (or ``--max-duration``), re-reading the file whenever it changes, so
editing the model version starts a canary just as ``kubectl apply`` would.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from mlrollout.operator.ctl.view import EXIT_TIMEOUT, Outcome, Snapshot, rollout_outcome
from mlrollout.operator.local.display import LiveDisplay
from mlrollout.operator.local.manifest import (
    Manifest,
    ManifestError,
    check_local_uris,
    load_manifest,
)
from mlrollout.operator.local.procs import ProcessError, install_signal_handlers
from mlrollout.operator.local.prom import PrometheusMissingError, find_prometheus
from mlrollout.operator.local.session import LocalSession, SessionOptions
from mlrollout.operator.rundir import ANALYSIS_FILE, STATE_FILE, RunDirBusy, RunLock

EXIT_USAGE = 2
EXIT_RUNTIME = 1
EXIT_FAILED = 5  # with --until-decided: the run itself failed (a process could not start)
EXIT_INTERRUPTED = 130


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="ModelDeployment YAML (as for kubectl apply)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="state, routing table, logs and timeline (default: .mlrollout/NAME next to FILE)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore state saved by a past run")
    parser.add_argument(
        "--prometheus-bin",
        default=None,
        help="path of the prometheus binary (default: `prometheus` on PATH)",
    )
    parser.add_argument(
        "--router-port", type=int, default=None, help="router port (default: a free port)"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds between engine rounds at most (default 1)"
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=1.0,
        help="Prometheus scrape interval, seconds (default 1)",
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--until-decided",
        action="store_true",
        help=(
            "exit once the rollout the file asks for is decided: 0 promoted/healthy, "
            "1 rolled back, 3 degraded or invalid spec, 4 --max-duration reached first, "
            "5 the run failed, 130 Ctrl-C (default: keep running)"
        ),
    )


def default_run_dir(manifest: Manifest) -> Path:
    return manifest.base_dir / ".mlrollout" / manifest.name


def _error(message: str) -> None:
    print(f"mlrollout dev: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.file)
        check_local_uris(manifest)
        find_prometheus(args.prometheus_bin)
    except (ManifestError, PrometheusMissingError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    if args.poll <= 0 or args.scrape_interval <= 0:
        _error("--poll and --scrape-interval must be positive")
        return EXIT_USAGE
    if args.router_port is not None and (problem := port_problem(args.router_port)):
        _error(problem)
        return EXIT_USAGE
    run_dir = args.run_dir or default_run_dir(manifest)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunDirBusy as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        return _run_locked(args, manifest, run_dir)
    finally:
        lock.release()


def port_problem(port: int, host: str = "127.0.0.1") -> str | None:
    """Why the router cannot listen on ``port``, checked before anything starts."""
    if not 0 < port < 65536:
        return f"--router-port must be in 1..65535, got {port}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as servers set it: a port in TIME_WAIT is free, a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            return (
                f"--router-port {port} is in use on {host} ({exc.strerror or exc}); "
                "pick another port or leave it out for a free one"
            )
    return None


def _run_locked(args: argparse.Namespace, manifest: Manifest, run_dir: Path) -> int:
    if args.fresh:
        (run_dir / STATE_FILE).unlink(missing_ok=True)
    install_signal_handlers()
    options = SessionOptions(
        run_dir=run_dir,
        prometheus_bin=args.prometheus_bin,
        scrape_interval_s=args.scrape_interval,
        poll_s=args.poll,
        router_port=args.router_port,
    )
    display = LiveDisplay()
    session = LocalSession(manifest, options, display=display)
    code = 0
    decided: Callable[[], Outcome | None] | None = None
    if args.until_decided:
        decided = lambda: decided_outcome(session)  # noqa: E731
    try:
        session.start()
        # Once running, Ctrl-C/SIGTERM only ask the loop to stop between engine rounds: an
        # interrupt raised in the middle of a round (a lock held, a write half done) could
        # leave the shutdown below waiting. A second signal interrupts at once.
        stop = threading.Event()
        _stop_on_signals(stop)
        outcome = watch(session, args.file, args.max_duration, decided, stop)
        if stop.is_set():
            raise KeyboardInterrupt("stop requested")
        if args.until_decided:
            if outcome is None:
                display.note(f"not decided within --max-duration {args.max_duration:g}s")
                code = EXIT_TIMEOUT
            else:
                display.note(f"decided: {outcome.message}")
                code = outcome.code
    except KeyboardInterrupt:
        display.note("stopping: shutting everything down")
        if args.until_decided:
            code = EXIT_INTERRUPTED  # not decided: never 0 for a script
    except (ProcessError, OSError) as exc:
        _error(str(exc))
        code = EXIT_RUNTIME if not args.until_decided else EXIT_FAILED
    finally:
        session.close()
        json_path, png_path = session.timeline_paths
        print(
            f"timeline: {png_path}\ndecision log: {json_path}\n"
            f"analysis runs: {session.run_dir / ANALYSIS_FILE}\nstate: {session.state_path}"
        )
    return code


def _stop_on_signals(stop: threading.Event) -> None:
    def request(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt(f"received {signal.Signals(signum).name} again")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request)
    # `kill -USR1 PID` prints every thread's stack (to find where a run is stuck).
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return None


def decided_outcome(session: LocalSession) -> Outcome | None:
    """The outcome of the rollout the file asks for, once decided (as `mlrollout status`)."""
    snap = Snapshot(
        name=session.manifest.name,
        namespace=session.manifest.namespace,
        spec=session.manifest.raw_spec,
        status=session.status or {},
        generation=session.generation,
    )
    outcome = rollout_outcome(snap)
    return outcome if outcome.done else None


def watch(
    session: LocalSession,
    path: Path,
    max_duration: float | None = None,
    decided: Callable[[], Outcome | None] | None = None,
    stop: threading.Event | None = None,
) -> Outcome | None:
    """Run engine rounds until interrupted (``stop`` set), ``max_duration`` or ``decided()``
    says so; re-read ``path`` on change. Returns the decided outcome, if any."""
    stop = stop if stop is not None else threading.Event()
    started = time.monotonic()
    seen = _mtime(path)
    while max_duration is None or time.monotonic() - started < max_duration:
        if stop.is_set():
            return None
        result = session.tick()
        if decided is not None and (outcome := decided()) is not None:
            return outcome
        deadline = time.monotonic() + session.sleep_for(result)
        while time.monotonic() < deadline and not stop.is_set():
            stop.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            mtime = _mtime(path)
            if mtime == seen:
                continue
            seen = mtime
            try:
                manifest = load_manifest(path)
                check_local_uris(manifest)
            except ManifestError as exc:
                # Keep running what was valid; the user fixes the file and saves again.
                session.note(f"not applied: {exc}")
                continue
            if session.apply(manifest):
                session.note(f"{path} changed: applying model {manifest.spec.model.version}")
                break
    return None
