"""``mlrollout serve ARTIFACT``: check the artifact, then run the BentoML service.

Everything that can be refused is refused here, before BentoML starts, with one
line on stderr and a non-zero exit: a bad setting, a busy port, an artifact that
cannot be downloaded, does not match its digest or does not load. Workers then
receive a local, verified artifact directory through the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from mlrollout.services.osutil import pid_alive

from .settings import TRACKS, Settings, SettingsError, env_float, env_int

HOME_PREFIX = "mlrollout-serve-"
EXIT_USAGE = 2
EXIT_ARTIFACT = 3


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("artifact", help="artifact directory, .tar.gz, or http(s):// URL")
    add("--host", default="127.0.0.1", help="IP address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=3000, help="port to listen on (default 3000)")
    add(
        "--deployment",
        default=os.environ.get("MLROLLOUT_DEPLOYMENT", "default"),
        help="the deployment label on every metric series (env MLROLLOUT_DEPLOYMENT)",
    )
    add(
        "--track",
        choices=TRACKS,
        default=os.environ.get("MLROLLOUT_TRACK", "stable"),
        help="the track label on every metric series (env MLROLLOUT_TRACK)",
    )
    add(
        "--sha256",
        default=None,
        help="expected sha256 of the .tar.gz (file or URL), or of model.onnx for a directory",
    )
    add("--workers", type=int, default=1, help="worker processes: 1 (scale with replicas)")
    add(
        "--max-body-bytes",
        type=int,
        default=Settings.max_body_bytes,
        help=f"request body limit in bytes (default {Settings.max_body_bytes})",
    )
    add(
        "--drift-window",
        type=int,
        default=None,
        help="rows per drift test window (default: $MLROLLOUT_DRIFT_WINDOW or 1000)",
    )
    add(
        "--feedback-bytes",
        type=int,
        default=None,
        help="bytes of predictions kept for /feedback, 0 = off "
        f"(default: $MLROLLOUT_FEEDBACK_BYTES or {Settings.feedback_bytes})",
    )
    add(
        "--max-header-bytes",
        type=int,
        default=None,
        help="request line + headers limit, larger is 431 "
        f"(default: $MLROLLOUT_MAX_HEADER_BYTES or {Settings.max_header_bytes})",
    )
    add(
        "--header-timeout",
        type=float,
        default=None,
        help="seconds for a request's headers to arrive, else 408 "
        f"(default: $MLROLLOUT_HEADER_TIMEOUT_S or {Settings.header_timeout_s:g})",
    )
    add(
        "--body-timeout",
        type=float,
        default=None,
        help="seconds for a request's body to arrive once its headers have, else 408 "
        f"(default: $MLROLLOUT_BODY_TIMEOUT_S or {Settings.body_timeout_s:g})",
    )
    add("--tracing", action="store_true", help="let OpenTelemetry trace the model routes too")
    add("--access-log", action="store_true", help="log every request (BentoML access log)")


def _fail(code: int, message: str) -> int:
    print(f"mlrollout serve: error: {message}", file=sys.stderr)
    return code


def check_listen(host: str, port: int) -> str | None:
    """Return why ``host:port`` cannot be listened on, or None if it can."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"--host must be an IP address (BentoML binds addresses only), got {host!r}"
    if not 0 < port < 65536:
        return f"--port must be in 1..65535, got {port}"
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def prepare_artifact(location: str, sha256: str | None) -> str:
    """Download/extract/verify the artifact and prove it loads; return its local directory."""
    from mlrollout.services.model.dataplane import Dataplane

    # A trial load here turns a corrupt model into a clear refusal instead of a
    # worker that never becomes ready; workers then load the verified local copy.
    plane = Dataplane.from_artifact(location, sha256=sha256, deployment="preflight", track="stable")
    return str(plane.artifact.path)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings(
            artifact=args.artifact,
            deployment=args.deployment,
            track=args.track,
            workers=args.workers,
            max_body_bytes=args.max_body_bytes,
            drift_window=(
                args.drift_window
                if args.drift_window is not None
                else env_int(os.environ, "MLROLLOUT_DRIFT_WINDOW", Settings.drift_window)
            ),
            tracing=args.tracing,
            access_log=args.access_log,
            feedback_bytes=_or_env(
                args.feedback_bytes, env_int, "MLROLLOUT_FEEDBACK_BYTES", Settings.feedback_bytes
            ),
            max_header_bytes=_or_env(
                args.max_header_bytes,
                env_int,
                "MLROLLOUT_MAX_HEADER_BYTES",
                Settings.max_header_bytes,
            ),
            header_timeout_s=_or_env(
                args.header_timeout,
                env_float,
                "MLROLLOUT_HEADER_TIMEOUT_S",
                Settings.header_timeout_s,
            ),
            body_timeout_s=_or_env(
                args.body_timeout, env_float, "MLROLLOUT_BODY_TIMEOUT_S", Settings.body_timeout_s
            ),
        )
    except SettingsError as exc:
        return _fail(EXIT_USAGE, str(exc))
    if problem := check_listen(args.host, args.port):
        return _fail(EXIT_USAGE, problem)
    try:
        local = prepare_artifact(args.artifact, args.sha256)
    except Exception as exc:  # every artifact problem ends as one readable line
        return _fail(EXIT_ARTIFACT, f"artifact {args.artifact!r} refused: {exc}")
    settings = dataclasses.replace(settings, artifact=local, sha256="")

    # Each instance gets its own BentoML home: BentoML keeps its Prometheus
    # multiprocess directory there and wipes it on start, so a shared home would let
    # two servers on one host clobber and mix each other's metrics.
    _remove_stale_homes()
    home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
    os.environ.update(settings.to_env())
    os.environ["BENTOML_HOME"] = home
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"  # no usage analytics traffic
    try:
        return _serve(args.host, args.port, _model_label(local))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _or_env(given: Any, read: Any, name: str, default: Any) -> Any:
    return given if given is not None else read(os.environ, name, default)


def _remove_stale_homes() -> None:
    """Remove homes left by servers that were killed (SIGKILL skips our cleanup)."""
    for path in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*-*"):
        pid = path.name[len(HOME_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _model_label(artifact_dir: str) -> str:
    try:
        card = json.loads((Path(artifact_dir) / "model.json").read_text())
        return f"{card['name']} {card['version']}"
    except (OSError, ValueError, KeyError, TypeError):
        return artifact_dir


def _serve(host: str, port: int, label: str = "the model") -> int:
    # Imported only now: BentoML reads BENTOML_HOME when it is first used.
    from _bentoml_impl.server import serve_http

    from . import service

    svc = service.service
    svc.inject_config()
    threading.Thread(target=_say_ready, args=(host, port, label), daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        serve_http(svc, host=host, port=port)
    return 0


def _say_ready(host: str, port: int, label: str, timeout: float = 600.0) -> None:
    """Print one line once /readyz answers 200, so a user (or a script) knows."""
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    print(
                        f"ready: serving {label} "
                        f"on {base} (POST {base}/predict, OIP {base}/v2/models/..., "
                        f"metrics {base}/metrics)",
                        flush=True,
                    )
                    return
        except OSError:
            pass
        time.sleep(0.2)
