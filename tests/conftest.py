"""Fixtures shared by every test directory.

``control_plane``: one real Kubernetes control plane for the whole session
(``tests/cluster/controlplane.py``: etcd, kube-apiserver with TLS and RBAC,
kube-controller-manager, kube-scheduler, kwok fake nodes, all on 127.0.0.1). Tests that
use it are marked ``cluster`` automatically (``-m "not cluster"`` leaves them out).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_CLUSTER_DIR = Path(__file__).parent / "cluster"


def _load_controlplane() -> Any:
    # --import-mode=importlib puts nothing on sys.path: load the module by path, once.
    name = "mlrollout_tests_controlplane"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _CLUSTER_DIR / "controlplane.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


controlplane = _load_controlplane()
_STARTUP: dict[str, Any] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running ``ControlPlane`` (``.kubeconfig``, ``.kubectl()``, ``.apply()``,
    ``.sa_kubeconfig(ns, sa)``, ``.env()``, ``.wait_ready()``), stopped at session end."""
    missing = controlplane.missing_binaries()
    if missing:
        pytest.skip(
            f"control plane not built ({', '.join(missing)} missing in "
            f"{controlplane.BIN_DIR}); these tests run once `make kube-bins` has built it "
            "(`make test` does that first)"
        )
    t0 = time.monotonic()
    cp = controlplane.ControlPlane(tmp_path_factory.mktemp("control-plane"))
    cp.start()
    _STARTUP.update(cp.timings, total=round(time.monotonic() - t0, 2))
    try:
        yield cp
    finally:
        cp.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _STARTUP:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in _STARTUP.items())
        terminalreporter.write_line(f"control plane v{controlplane.KUBE_VERSION} start-up: {parts}")
