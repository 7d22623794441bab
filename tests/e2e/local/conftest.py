"""Fixtures of the local-mode end-to-end tests: example artifacts and a running stack.

One stack (Prometheus, router, stable v1, steady traffic) serves a whole test module; each
test rolls out one canary and waits for its outcome, so servers start once, not per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlrollout.operator.local.prom import PrometheusMissingError, find_prometheus
from mlrollout.operator.local.session import LocalSession, SessionOptions

from tests.doubles.local import (
    Stack,
    drive,
    healthy,
    manifest_doc,
    start_loadgen,
    write_manifest,
)


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    try:
        return find_prometheus()
    except PrometheusMissingError as exc:
        pytest.fail(str(exc))  # local mode needs it; `make install` provides it


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlrollout.services.model.examples import write_examples

    out = tmp_path_factory.mktemp("examples")
    write_examples(out)
    return out


@pytest.fixture(scope="module")
def stack(
    examples: Path, prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Prometheus, router and stable v1 with steady traffic, for one test module."""
    work = tmp_path_factory.mktemp("stack")
    yaml_path = work / "fraud.yaml"
    manifest = write_manifest(yaml_path, manifest_doc("v1", examples / "v1"))
    session = LocalSession(
        manifest,
        SessionOptions(run_dir=work / "run", prometheus_bin=prometheus_bin, poll_s=0.5),
    )
    try:
        session.start()
        drive(session, healthy("v1"), 120, "stable v1 healthy")
        start_loadgen(session, examples, "traffic")
        yield Stack(session, examples, yaml_path)
    finally:
        session.close()
