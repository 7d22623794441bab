"""The control plane the cluster tests stand on: real authn/authz, real controllers, kwok
nodes, clean start and stop."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest


def test_tls_and_rbac_are_real(control_plane: Any) -> None:
    cp = control_plane
    assert cp.server.startswith("https://127.0.0.1:")
    ns = f"auth-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "serviceaccount", "probe", "-n", ns)
    kubeconfig = cp.sa_kubeconfig(ns, "probe")
    who = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:probe"
    # A fresh ServiceAccount may do nothing: RBAC is enforced, not bypassed.
    denied = cp.kubectl("get", "pods", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    can = cp.kubectl("auth", "can-i", "--list", "-n", ns, kubeconfig=kubeconfig).stdout
    assert "pods" not in can and "secrets" not in can
    # ...and its request is in the audit log, refused.
    events = cp.audit(f"system:serviceaccount:{ns}:probe")
    assert any(e["verb"] == "list" and e["responseStatus"]["code"] == 403 for e in events)


def test_deployments_become_available_on_kwok_nodes(control_plane: Any) -> None:
    cp = control_plane
    ns = f"kwok-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "deployment", "web", "--image=example.invalid/web:1", "--replicas=3",
               "-n", ns)  # fmt: skip
    cp.kubectl("wait", "deployment/web", "-n", ns, "--for=condition=Available", "--timeout=90s",
               timeout=120)  # fmt: skip
    dep = cp.get_json("deployment", "web", "-n", ns)
    assert dep["status"]["readyReplicas"] == 3
    pods = cp.get_json("pods", "-n", ns)["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-0", "kwok-node-1"}
    assert all(p["status"]["phase"] == "Running" and p["status"].get("podIP") for p in pods)
    # The garbage collector: deleting the Deployment removes its ReplicaSet and pods.
    cp.kubectl("delete", "deployment", "web", "-n", ns)
    deadline = time.monotonic() + 60
    while cp.get_json("pods", "-n", ns)["items"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cp.get_json("pods", "-n", ns)["items"] == []
    assert cp.get_json("replicasets", "-n", ns)["items"] == []


def test_a_taken_port_is_retried_and_stop_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpm = sys.modules["mlrollout_tests_controlplane"]  # loaded by tests/conftest.py
    if cpm.missing_binaries():
        pytest.skip("control plane not built: runs once `make kube-bins` has built it")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real, calls = cpm._free_port, []

    def first_one_taken() -> int:  # etcd's client port is the first one picked
        calls.append(1)
        return int(taken.getsockname()[1]) if len(calls) == 1 else int(real())

    monkeypatch.setattr(cpm, "_free_port", first_one_taken)
    cp = cpm.ControlPlane(tmp_path / "cp")
    try:
        cp.start()
        assert cp.kubectl("get", "nodes", "-o", "name").stdout.split() == [
            "node/kwok-node-0",
            "node/kwok-node-1",
        ]
        assert len(calls) > 6  # one attempt picks 6 ports: the start was retried
        pids = [p.popen.pid for p in cp._processes.values()]
        assert len(pids) == 5 and "etcd" in (cp.workdir / "logs" / "etcd.log").read_text()
    finally:
        cp.stop()
        taken.close()
    for pid in pids:
        assert (
            not os.path.exists(f"/proc/{pid}")
            or "zombie" in Path(f"/proc/{pid}/status").read_text()
        ), pid
