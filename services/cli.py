"""The ``mlrollout`` command line: one subcommand per job, each implemented in its own module.

Subcommand modules expose ``configure(parser)`` and ``run(args) -> int``; they are
imported lazily so that ``mlrollout router`` does not pay for onnxruntime, and
``mlrollout export`` does not pay for kopf.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "mlrollout.services.model.export_cli",
        "export a fitted scikit-learn pipeline as a model artifact",
    ),
    "examples": (
        "mlrollout.services.model.examples",
        "write ready example model artifacts (v1, v2 good; v3 bad)",
    ),
    "serve": ("mlrollout.services.server.cli", "serve a model artifact (BentoML + onnxruntime)"),
    "router": ("mlrollout.services.router.cli", "run the weighted canary router"),
    "dev": (
        "mlrollout.operator.local.cli",
        "run a ModelDeployment locally: servers, router, Prometheus, rollout engine",
    ),
    "demo": (
        "mlrollout.operator.local.demo",
        "the end-to-end demo: v1, then a good v2 (promoted), then a bad v3 (rolled back)",
    ),
    "crd": (
        "mlrollout.operator.crd",
        "print or check the ModelDeployment CRD generated from the models",
    ),
    "loadgen": (
        "mlrollout.operator.local.loadgen_cli",
        "send steady prediction traffic to an endpoint",
    ),
    "completion": (
        "mlrollout.services.completion",
        "print a shell completion script (bash or zsh)",
    ),
}

# Commands that see and steer rollouts; one module serves them all (``configure(parser,
# command)``), and they are what ``kubectl mlrollout`` is for.
ROLLOUT_MODULE = "mlrollout.operator.ctl.cli"
ROLLOUT_COMMANDS: dict[str, str] = {
    "get": "show a rollout: phase, step, weights, versions, checks, events (-w: watch)",
    "list": "list ModelDeployments (cluster namespace or local runs)",
    "status": "wait for a rollout's outcome; exit 0 healthy, non-zero rolled back/degraded",
    "promote": "end the canary's current pause (--full: promote now)",
    "abort": "roll the canary back now",
    "retry": "try a rolled-back model again",
    "pause": "hold the canary at its step",
    "resume": "continue a paused canary",
    "history": "revisions with version, URI, outcome, reason, time",
    "undo": "roll out an earlier revision again",
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and "default" not in text.lower()
            and action.default not in (None, argparse.SUPPRESS, False)
            and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            text += " (default: %(default)s)"
        return text


def version() -> str:
    try:
        return importlib.metadata.version("mlrollout")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def all_commands() -> dict[str, str]:
    """Every command and its one-line help, in the order ``--help`` lists them."""
    return {
        **{name: help_text for name, (_m, help_text) in SUBCOMMANDS.items()},
        **ROLLOUT_COMMANDS,
    }


def build_parser(prog: str = "mlrollout") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Progressive (canary) delivery of ML models: export, serve, route, roll out.",
    )
    parser.add_argument("--version", action="version", version=f"mlrollout {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in all_commands().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str, prog: str = "mlrollout") -> tuple[argparse.ArgumentParser, Any]:
    """The parser of one command and the module that runs it."""
    if name in ROLLOUT_COMMANDS:
        module = importlib.import_module(ROLLOUT_MODULE)
        sub = argparse.ArgumentParser(
            prog=f"{prog} {name}", description=ROLLOUT_COMMANDS[name], formatter_class=HelpFormatter
        )
        module.configure(sub, name)
        return sub, module
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub = argparse.ArgumentParser(
        prog=f"{prog} {name}",
        description=SUBCOMMANDS[name][1],
        formatter_class=HelpFormatter,
    )
    module.configure(sub)
    return sub, module


def main(argv: Sequence[str] | None = None, prog: str = "mlrollout") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = all_commands()
    if argv and argv[0] in {"--version", "version"}:
        print(f"mlrollout {version()}")
        return 0
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in commands:
        parser = build_parser(prog)
        if argv and argv[0] not in {"-h", "--help"}:
            parser.print_usage(sys.stderr)
            close = difflib.get_close_matches(argv[0], list(commands), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            print(
                f"{prog}: unknown command {argv[0]!r}{hint}; choose from {', '.join(commands)}",
                file=sys.stderr,
            )
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if threading.current_thread() is threading.main_thread():
        # A shell starts background jobs with SIGINT ignored, and Python then keeps it
        # ignored: `dev`, `get -w` or `status` launched that way (a script, CI) could not
        # be stopped with SIGINT. Our long-running commands always take Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sub, module = command_parser(name, prog)
        args = sub.parse_args(rest)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C, even while still importing: no traceback
        return 130


def kubectl_plugin() -> int:
    """``kubectl mlrollout ...``: the rollout commands under kubectl's name."""
    return main(prog="kubectl mlrollout")


if __name__ == "__main__":
    sys.exit(main())
