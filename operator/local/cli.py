"""``mlrollout dev FILE.yaml``: run a ModelDeployment on this machine, no cluster.

Validates the file and checks for Prometheus before starting anything; then runs the
engine until Ctrl-C (or ``--max-duration``), re-reading the file whenever it changes, so
editing the model version starts a canary just as ``kubectl apply`` would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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

EXIT_USAGE = 2
EXIT_RUNTIME = 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="ModelDeployment YAML (as for kubectl apply)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="state, routing table, logs and timeline (default: .mlrollout/NAME next to FILE)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore state saved by a past run")
    parser.add_argument("--prometheus-bin", default=None, help="path of the prometheus binary")
    parser.add_argument("--router-port", type=int, default=None, help="router port (default: free)")
    parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds between engine rounds at most (default 1)"
    )
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, help="Prometheus scrape interval, seconds"
    )
    parser.add_argument(
        "--max-duration", type=float, default=None, help="stop after this many seconds"
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
    run_dir = args.run_dir or default_run_dir(manifest)
    if args.fresh:
        (run_dir / "state.json").unlink(missing_ok=True)
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
    try:
        session.start()
        watch(session, args.file, args.max_duration)
    except KeyboardInterrupt:
        display.note("stopping: shutting everything down")
    except (ProcessError, OSError) as exc:
        _error(str(exc))
        code = EXIT_RUNTIME
    finally:
        session.close()
        json_path, png_path = session.timeline_paths
        print(f"timeline: {png_path}\ndecision log: {json_path}\nstate: {session.state_path}")
    return code


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return None


def watch(session: LocalSession, path: Path, max_duration: float | None = None) -> None:
    """Run engine rounds until interrupted or ``max_duration``; re-read ``path`` on change."""
    started = time.monotonic()
    seen = _mtime(path)
    while max_duration is None or time.monotonic() - started < max_duration:
        result = session.tick()
        deadline = time.monotonic() + session.sleep_for(result)
        while time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
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
