"""The ``mlrollout`` command line: one subcommand per job, each implemented in its own module.

Subcommand modules expose ``configure(parser)`` and ``run(args) -> int``; they are
imported lazily so that ``mlrollout router`` does not pay for onnxruntime, and
``mlrollout export`` does not pay for kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "mlrollout.services.model.export",
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
        "mlrollout.operator.local.loadgen",
        "send steady prediction traffic to an endpoint",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlrollout",
        description="Progressive (canary) delivery of ML models: export, serve, route, roll out.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in SUBCOMMANDS:
        parser = build_parser()
        if argv and argv[0] not in {"-h", "--help"}:
            parser.print_usage(sys.stderr)
            print(
                f"mlrollout: unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}",
                file=sys.stderr,
            )
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"mlrollout {name}", description=SUBCOMMANDS[name][1])
    module.configure(sub)
    args = sub.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
