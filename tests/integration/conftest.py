"""Shared fixtures for integration tests: example artifacts, model servers, a file server.

Everything listens on 127.0.0.1 on free ports and is stopped at fixture teardown,
also when the test fails. Model servers are expensive (a BentoML start is a few
seconds): share them with module-scoped fixtures built on ``serve_model``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.server import FileServer, RunningServer, running_server

ServeModel = Callable[..., contextlib.AbstractContextManager[RunningServer]]


@pytest.fixture(scope="session")
def example_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``mlrollout examples`` output: artifact directories keyed by folder name (v1, v2, v3)."""
    out = tmp_path_factory.mktemp("examples")
    subprocess.run(
        [sys.executable, "-m", "mlrollout.services.cli", "examples", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    found = {p.parent.name: p.parent for p in sorted(out.glob("*/model.json"))}
    assert found, f"mlrollout examples wrote no artifacts into {out}"
    return found


@pytest.fixture(scope="session")
def artifact_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private download cache, so tests never touch ~/.cache."""
    return tmp_path_factory.mktemp("artifact-cache")


@pytest.fixture(scope="session")
def serve_model(artifact_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> ServeModel:
    """``with serve_model(artifact, args=[...]) as server:`` runs a ready ``mlrollout serve``."""
    logs = tmp_path_factory.mktemp("server-logs")

    def serve(artifact: str | Path, args: tuple[str, ...] = (), **kw: Any) -> Any:
        env = {"MLROLLOUT_CACHE": str(artifact_cache), **kw.pop("env", {})}
        return running_server(str(artifact), args=args, env=env, log_dir=logs, **kw)

    return serve


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    """A static HTTP server on 127.0.0.1 over a fresh directory (``.root``)."""
    with FileServer(tmp_path_factory.mktemp("www")) as server:
        yield server
