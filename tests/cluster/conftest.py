"""Fixtures for the tests against the real control plane (``control_plane`` is in tests/)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployment.yaml"
CRD_NAME = "modeldeployments.mlrollout.io"


@pytest.fixture(scope="session")
def md_crd(control_plane: Any) -> Any:
    """``kubectl apply -f crds/`` on the shared control plane (a refusal fails the test);
    returns the control plane once the CRD is Established."""
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    return control_plane


@pytest.fixture(scope="module")
def private_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane of the module's own, for tests that install cluster-wide objects
    (the CRD through Helm or kustomize) whose ownership would clash with other tests'."""
    controlplane = sys.modules["mlrollout_tests_controlplane"]  # loaded by tests/conftest.py
    missing = controlplane.missing_binaries()
    if missing:
        pytest.skip(
            f"control plane not built ({', '.join(missing)} missing): these tests run once "
            "`make kube-bins` has built it (`make test` does that first)"
        )
    cp = controlplane.ControlPlane(tmp_path_factory.mktemp("private-control-plane"))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
