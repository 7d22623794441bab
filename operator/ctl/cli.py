"""``mlrollout get|list|status|promote|abort|retry|pause|resume|history|undo``.

The same commands work against the cluster (kubeconfig, ``-n``, ``--context``) and against
a local run (``--local [DIR]``, or found on their own when ``.mlrollout/NAME`` exists in
the working directory). Installed also as the kubectl plugin ``kubectl-mlrollout``.
Controls change the spec only (``spec.controls`` tokens, ``spec.model`` for undo), so
GitOps users can make the same change in Git instead (``--dry-run`` prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from mlrollout.operator.ctl import controls, view
from mlrollout.operator.ctl.stores import (
    KubeStore,
    LocalStore,
    NotFoundError,
    RolloutStore,
    StoreError,
    find_run_dir,
)

COMMANDS: dict[str, str] = {
    "get": "show one rollout: phase, step, weights, versions, checks, events (-w to watch)",
    "list": "list the ModelDeployments of a namespace (or the local runs here)",
    "status": "wait for a rollout to finish; exit 0 healthy, non-zero rolled back/degraded",
    "promote": "skip the canary's current pause (--full: promote it now)",
    "abort": "roll the canary back now",
    "retry": "try a rolled-back model again",
    "pause": "hold the canary at its current step (spec.controls.paused)",
    "resume": "continue a paused canary",
    "history": "every revision with version, URI, outcome, reason and time",
    "undo": "roll out an earlier revision again (default: the previous stable)",
}
NEEDS_NAME = set(COMMANDS) - {"list"}
CONTROLS = ("promote", "abort", "retry", "pause", "resume")


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = COMMANDS[command]
    if command in NEEDS_NAME:
        parser.add_argument("name", metavar="NAME", help="ModelDeployment name")
    target = parser.add_argument_group("where the rollout runs")
    target.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace (default: the kubeconfig context's, else 'default')",
    )
    target.add_argument(
        "--context", default=None, help="kubeconfig context (default: the current one)"
    )
    target.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)",
    )
    target.add_argument(
        "--local",
        nargs="?",
        const=Path("."),
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "a local `mlrollout dev` run: its run dir, or a folder holding .mlrollout/ "
            "(default without DIR: the working directory). Without --local, "
            "./.mlrollout/NAME is used when it exists, else the cluster"
        ),
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "yaml"),
        default="text",
        help="output format (default: text)",
    )
    if command == "get":
        parser.add_argument(
            "-w", "--watch", action="store_true", help="keep showing changes until Ctrl-C"
        )
        parser.add_argument(
            "--interval", type=float, default=2.0, help="seconds between reads with -w (default 2)"
        )
        parser.add_argument(
            "--events", type=int, default=5, help="how many recent events to show (default 5)"
        )
    if command == "status":
        parser.add_argument(
            "--timeout",
            type=_duration,
            default=None,
            help="give up after this long, e.g. 30s, 5m, 1h30m (default: wait forever); exit 4",
        )
        parser.add_argument(
            "--interval", type=float, default=2.0, help="seconds between reads (default 2)"
        )
        parser.add_argument(
            "--watch",
            dest="wait",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="wait for the outcome (default); --no-watch reports the state now",
        )
    if command == "promote":
        parser.add_argument(
            "--full",
            action="store_true",
            help="promote now, skipping the remaining steps (default: only end the current pause)",
        )
    if command == "undo":
        parser.add_argument(
            "--to-revision",
            default=None,
            metavar="N",
            help="revision number (from `history`) or id prefix (default: the previous stable)",
        )
    if command in (*CONTROLS, "undo"):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print the spec change and its effect, change nothing (e.g. to commit it to Git)",
        )
    parser.set_defaults(ctl_command=command)


def _duration(text: str) -> float:
    from mlrollout.operator.model import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _err(command: str, message: str) -> None:
    print(f"mlrollout {command}: error: {message}", file=sys.stderr)


def open_store(args: argparse.Namespace, cwd: Path | None = None) -> RolloutStore:
    """The local run when asked for (or found in the working directory), else the cluster."""
    cwd = cwd or Path.cwd()
    name = getattr(args, "name", None)
    if args.local is not None:
        run_dir = find_run_dir(name, args.local, cwd)
        return LocalStore(run_dir or args.local)
    if args.namespace is None and args.context is None and args.kubeconfig is None:
        if name:
            found = find_run_dir(name, None, cwd)
            if found is not None:
                return LocalStore(found)
        elif LocalStore(cwd).list():
            return LocalStore(cwd)  # `list` next to .mlrollout/: the local runs
    from mlrollout.operator.kube import Kube

    try:
        kube, namespace = Kube.from_kubeconfig(args.kubeconfig, args.context)
    except Exception as exc:  # kubernetes raises several unrelated types for a bad config
        raise StoreError(
            f"no cluster configured ({exc}); use --kubeconfig, or --local for a local run"
        ) from exc
    return KubeStore(kube, args.namespace or namespace)


def _print_doc(doc: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip())


def run(args: argparse.Namespace) -> int:
    command = args.ctl_command
    try:
        store = open_store(args)
        return COMMAND_RUNNERS[command](store, args)
    except NotFoundError as exc:
        _err(command, str(exc))
        return view.EXIT_USAGE
    except controls.Refused as exc:
        _err(command, str(exc))
        return view.EXIT_USAGE
    except StoreError as exc:
        _err(command, str(exc))
        return view.EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


def _now() -> datetime:
    return datetime.now(tz=UTC)


def cmd_get(store: RolloutStore, args: argparse.Namespace) -> int:
    if not args.watch:
        snap = store.get(args.name)
        if args.output == "text":
            print("\n".join(view.render_get(snap, _now(), events=args.events)))
        else:
            _print_doc(snap.to_json(), args.output)
        return 0
    tty = sys.stdout.isatty()
    last: list[str] | None = None
    while True:
        snap = store.get(args.name)
        if args.output != "text":
            doc = snap.to_json()
            if doc != last:
                _print_doc(doc, args.output)
                print("---" if args.output == "yaml" else "", flush=True)
                last = doc  # type: ignore[assignment]
        else:
            lines = view.render_get(snap, _now(), events=args.events)
            if tty:
                sys.stdout.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
                sys.stdout.flush()
            elif _changed(lines, last):
                print(time.strftime("%H:%M:%S"), "-" * 40)
                print("\n".join(lines), flush=True)
            last = lines
        time.sleep(args.interval)


def _changed(lines: list[str], last: list[str] | None) -> bool:
    # Ages tick every second; compare without them so a pipe gets a block per real change.
    def strip(ls: list[str] | None) -> list[str]:
        return [ln for ln in (ls or []) if not ln.startswith(("Analysis:", "Stable:", "Canary:"))]

    return last is None or strip(lines) != strip(last) or lines[:4] != last[:4]


def cmd_list(store: RolloutStore, args: argparse.Namespace) -> int:
    snaps = store.list()
    if args.output == "text":
        print(view.render_list(snaps, _now()) if snaps else "no ModelDeployments found")
    else:
        _print_doc([s.to_json() for s in snaps], args.output)
    return 0


def cmd_status(store: RolloutStore, args: argparse.Namespace) -> int:
    started = time.monotonic()
    said = ""
    while True:
        snap = store.get(args.name)
        outcome = view.rollout_outcome(snap)
        if args.output == "text" and outcome.message != said and (outcome.done or args.wait):
            print(outcome.message, flush=True)
            said = outcome.message
        timed_out = args.timeout is not None and time.monotonic() - started >= args.timeout
        if outcome.done or not args.wait or timed_out:
            code = outcome.code
            if not outcome.done and timed_out and args.output == "text":
                print(f"timed out after {args.timeout:g}s: {outcome.message}", file=sys.stderr)
            if not outcome.done and not args.wait:
                code = view.EXIT_TIMEOUT
            if args.output != "text":
                _print_doc(
                    {
                        "name": snap.name,
                        "phase": snap.status.get("phase"),
                        "done": outcome.done,
                        "exitCode": code,
                        "message": outcome.message,
                    },
                    args.output,
                )
            elif not args.wait and not outcome.done:
                print(outcome.message)
            return code
        time.sleep(args.interval)


def _act(store: RolloutStore, args: argparse.Namespace, action: controls.Action) -> int:
    applied = None
    if not args.dry_run:
        applied = store.patch(args.name, action.patch)
    if args.output == "text":
        if args.dry_run:
            print("dry run, nothing changed. The spec change (merge patch):")
            print(yaml.safe_dump(action.patch, sort_keys=False).rstrip())
        else:
            print(applied)
        print(f"What happens: {action.message}")
    else:
        _print_doc(
            {"patch": action.patch, "applied": applied, "effect": action.message}, args.output
        )
    return 0


def cmd_control(store: RolloutStore, args: argparse.Namespace) -> int:
    snap = store.get(args.name)
    action = controls.plan_control(
        snap, args.ctl_command, _now(), full=getattr(args, "full", False)
    )
    return _act(store, args, action)


def cmd_history(store: RolloutStore, args: argparse.Namespace) -> int:
    snap = store.get(args.name)
    if args.output == "text":
        print(view.render_history(snap, _now()))
    else:
        _print_doc(view.history_rows(snap), args.output)
    return 0


def cmd_undo(store: RolloutStore, args: argparse.Namespace) -> int:
    snap = store.get(args.name)
    return _act(store, args, controls.plan_undo(snap, _now(), args.to_revision))


COMMAND_RUNNERS: dict[str, Callable[[RolloutStore, argparse.Namespace], int]] = {
    "get": cmd_get,
    "list": cmd_list,
    "status": cmd_status,
    "history": cmd_history,
    "undo": cmd_undo,
    **dict.fromkeys(CONTROLS, cmd_control),
}
