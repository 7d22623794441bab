"""The real operator process against the real control plane and a real Prometheus.

The API server, etcd, garbage collector, Deployment controller and scheduler are real
(tests/cluster/controlplane.py); kwok's fake nodes make the pods Ready, so readiness is
the Deployment controller's. Verdicts are driven through real PromQL: the fake model
servers' counters are scraped by Prometheus every second and the operator queries it like
it would in a cluster. Intervals are shortened to seconds; every wait is bounded and says
what it waited for.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from mlrollout.operator.kube import Kube, KubeError
from mlrollout.operator.model import ModelRef, revision_id
from mlrollout.services.netutil import free_port

pytestmark = pytest.mark.integration

MD = "fraud"
GOOD = dict(rps=60.0, error_rate=0.0, prediction_mix=(0.5, 0.5))


def md_body(namespace: str, version: str, **analysis: Any) -> dict[str, Any]:
    spec_analysis = {
        "interval": "1s",
        "window": "8s",
        "minSamples": 20,
        "failureLimit": 1,
        "maxStaleness": "30s",
        "metrics": {"predictionDrift": {"maxPsi": 0.2}, "errorRate": {"maxIncrease": 0.05}},
        **analysis,
    }
    return {
        "apiVersion": "mlrollout.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD, "namespace": namespace},
        "spec": {
            "model": {
                "name": "fraud",
                "version": version,
                "uri": f"https://models.test/fraud-{version}.tar.gz",
            },
            "rollout": {"steps": [{"weight": 20}, {"weight": 50}], "analysis": spec_analysis},
            "traffic": {"stickyHeader": "x-user-id"},
        },
    }


def rev(version: str) -> str:
    return revision_id(
        ModelRef(name="fraud", version=version, uri=f"https://models.test/fraud-{version}.tar.gz")
    )


CHILD_KINDS = (
    "apps/v1/deployments",
    "v1/services",
    "v1/configmaps",
    "v1/serviceaccounts",
    "rbac.authorization.k8s.io/v1/roles",
    "rbac.authorization.k8s.io/v1/rolebindings",
    "policy/v1/poddisruptionbudgets",
)
# Field managers the API server records for writes the operator makes. Anything else on
# a child (or on a ModelDeployment's status) means some write went out unnamed.
OPERATOR = "mlrollout-operator"


@pytest.fixture(scope="module")
def kube(kcluster: Any) -> Kube:
    return kcluster.kube


def children(kcluster: Any, ns: str, key: str | None = None) -> list[dict[str, Any]]:
    """Objects in ``ns`` owned by a ModelDeployment (the namespace's own defaults, such as
    the ``default`` ServiceAccount and ``kube-root-ca.crt``, are not ours)."""
    return [
        o
        for k in ([key] if key else CHILD_KINDS)
        for o in kcluster.live(k, ns)
        if any(
            r.get("kind") == "ModelDeployment" for r in o["metadata"].get("ownerReferences") or []
        )
    ]


def names(kcluster: Any, key: str, ns: str) -> set[str]:
    return {o["metadata"]["name"] for o in children(kcluster, ns, key)}


def status(kube: Kube, ns: str) -> dict[str, Any]:
    obj = kube.get("ModelDeployment", ns, MD) or {}
    return dict(obj.get("status") or {})


def table(kube: Kube, ns: str) -> dict[str, Any] | None:
    cm = kube.get("ConfigMap", ns, f"{MD}-routes")
    return json.loads(cm["data"]["table.json"]) if cm else None


def phase_is(kube: Kube, ns: str, phase: str) -> Any:
    st = status(kube, ns)
    return st if st.get("phase") == phase else None


def set_version(kube: Kube, ns: str, version: str) -> None:
    kube.merge_patch(
        "ModelDeployment",
        ns,
        MD,
        {
            "spec": {
                "model": {"version": version, "uri": f"https://models.test/fraud-{version}.tar.gz"}
            }
        },
    )


def events(kcluster: Any, ns: str) -> list[str]:
    return [e.get("reason", "") for e in kcluster.live("v1/events", ns)]


def deploy_healthy(
    harness: Any, kube: Kube, exporter: Any, ns: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:

    exporter.set(ns, MD, "1", harness.Traffic(**GOOD), "stable")
    kube.create(body or md_body(ns, "1"))
    return harness.eventually(
        lambda: phase_is(kube, ns, "Healthy"), 30, f"{ns}: first deployment Healthy"
    )


def start_canary(harness: Any, kube: Kube, exporter: Any, ns: str, traffic: dict[str, Any]) -> None:

    exporter.set(ns, MD, "2", harness.Traffic(**traffic), "canary")
    set_version(kube, ns, "2")


def test_new_deployment_becomes_healthy_with_owned_valid_children(
    operator: Any, kcluster: Any, kube: Kube, exporter: Any, harness: Any
) -> None:

    ns = "healthy"
    st = deploy_healthy(harness, kube, exporter, ns)
    assert st["stable"]["version"] == "1"
    uid = kube.get("ModelDeployment", ns, MD)["metadata"]["uid"]
    r1 = f"{MD}-{rev('1')}"
    assert names(kcluster, "apps/v1/deployments", ns) == {r1, f"{MD}-router"}
    assert names(kcluster, "v1/services", ns) == {r1, f"{MD}-stable", MD}
    assert names(kcluster, "v1/configmaps", ns) == {f"{MD}-routes"}
    assert names(kcluster, "policy/v1/poddisruptionbudgets", ns) == {MD}
    routes = table(kube, ns)
    assert routes is not None and routes["weights"] == {"stable": 100}
    assert routes["backends"]["stable"]["version"] == "1"
    assert routes["stickyHeader"] == "x-user-id"

    owned = children(kcluster, ns)
    assert len(owned) == 10, sorted(o["metadata"]["name"] for o in owned)
    for obj in owned:
        # Accepted by the real API server (schema, name rules, quantities, RBAC's escalation
        # check on the router's Role): that is the validation now.
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [uid], obj["metadata"][
            "name"
        ]
    # The real Deployment controller reported the revision ready (pods Ready through kwok).
    dep = kube.get("Deployment", ns, r1)
    assert dep is not None and dep["status"]["readyReplicas"] == 1
    assert "Deployed" in events(kcluster, ns)
    # The operator wrote status many times by now; none of it may look like a spec change.
    assert f"[{ns}/{MD}] Handler 'on_create' succeeded" in operator.log()
    assert f"[{ns}/{MD}] Handler 'on_update" not in operator.log()

    metrics = harness.http_text(operator.metrics_url)
    assert (
        f'mlrollout_operator_phase{{deployment="{MD}",namespace="{ns}",phase="Healthy"}} 1.0'
        in metrics
    )

    # No finalizer: deleting never waits for the operator; the real garbage collector
    # removes the children through their owner references.
    assert not kube.get("ModelDeployment", ns, MD)["metadata"].get("finalizers")
    kube.delete("ModelDeployment", ns, MD)
    harness.eventually(
        lambda: not children(kcluster, ns), 60, "children garbage-collected by the real GC"
    )


def test_good_version_walks_the_steps_and_is_promoted(
    kcluster: Any, kube: Kube, exporter: Any, operator: Any, harness: Any
) -> None:

    ns = "promote"
    deploy_healthy(harness, kube, exporter, ns)
    start_canary(harness, kube, exporter, ns, GOOD)
    seen_weights: set[int] = set()

    def promoted() -> Any:
        st = status(kube, ns)
        seen_weights.add(int((st.get("weights") or {}).get("canary", 0)))
        return (
            st
            if st.get("phase") == "Healthy" and st.get("stable", {}).get("version") == "2"
            else None
        )

    st = harness.eventually(promoted, 60, "v2 promoted")
    assert {20, 50} <= seen_weights, seen_weights  # both steps were taken
    assert "canary" not in st
    assert [h["outcome"] for h in st["history"]][-1] == "promoted"
    routes = table(kube, ns)
    assert routes is not None
    assert routes["weights"] == {"stable": 100}
    assert routes["backends"]["stable"]["version"] == "2"
    harness.eventually(
        lambda: names(kcluster, "apps/v1/deployments", ns) == {f"{MD}-{rev('2')}", f"{MD}-router"},
        10,
        "v1 stopped",
    )
    assert {"StepAdvanced", "Promoted"} <= set(events(kcluster, ns))
    # One spec change, one update handler run, however many status writes happened.
    assert operator.log().count(f"[{ns}/{MD}] Handler 'on_update/spec' succeeded") == 1


@pytest.mark.parametrize(
    ("ns", "canary", "check"),
    [
        ("errors", dict(rps=60.0, error_rate=0.4, prediction_mix=(0.5, 0.5)), "errorRate"),
        ("drift", dict(rps=60.0, error_rate=0.0, prediction_mix=(0.95, 0.05)), "predictionDrift"),
    ],
)
def test_bad_canary_is_rolled_back(
    ns: str,
    canary: dict[str, Any],
    check: str,
    kcluster: Any,
    kube: Kube,
    exporter: Any,
    operator: Any,
    harness: Any,
) -> None:

    deploy_healthy(harness, kube, exporter, ns)
    start_canary(harness, kube, exporter, ns, canary)
    st = harness.eventually(
        lambda: phase_is(kube, ns, "RolledBack"), 45, f"{ns}: canary rolled back"
    )
    assert st["stable"]["version"] == "1"
    assert [r["revision"] for r in st["rejectedRevisions"]] == [rev("2")]
    failed = [v for v in st["analysis"]["verdicts"] if v["outcome"] == "fail"]
    assert check in {v["check"] for v in failed}, st["analysis"]["verdicts"]
    routes = table(kube, ns)
    assert routes is not None and routes["weights"] == {"stable": 100}
    assert routes["backends"]["stable"]["version"] == "1"
    harness.eventually(
        lambda: names(kcluster, "apps/v1/deployments", ns) == {f"{MD}-{rev('1')}", f"{MD}-router"},
        10,
        "canary stopped",
    )
    assert "canary" not in routes["backends"]
    metrics = harness.http_text(operator.metrics_url)
    labels = f'deployment="{MD}",namespace="{ns}"'
    assert f'mlrollout_operator_phase{{{labels},phase="RolledBack"}} 1.0' in metrics
    assert f"mlrollout_operator_rollbacks_total{{{labels}}} 1.0" in metrics
    assert f'mlrollout_operator_verdicts_total{{check="{check}",{labels},result="fail"}}' in metrics


def test_too_little_traffic_holds_the_step(
    kcluster: Any, kube: Kube, exporter: Any, operator: Any, harness: Any
) -> None:

    ns = "quiet"
    deploy_healthy(harness, kube, exporter, ns)
    start_canary(
        harness, kube, exporter, ns, dict(rps=0.5, error_rate=0.0, prediction_mix=(0.5, 0.5))
    )

    def held_with_no_data() -> Any:
        st = status(kube, ns)
        verdicts = st.get("analysis", {}).get("verdicts", [])
        return st if any(v["outcome"] == "noData" for v in verdicts) else None

    harness.eventually(held_with_no_data, 30, "a noData verdict")
    # Several analysis runs later it still holds the first step (and never fails it).
    runs = harness.eventually(
        lambda: status(kube, ns).get("analysis", {}).get("lastRunAt"), 5, "analysis ran"
    )
    harness.eventually(
        lambda: status(kube, ns)["analysis"]["lastRunAt"] != runs, 10, "another analysis run"
    )
    st = status(kube, ns)
    assert st["phase"] in ("Progressing", "Paused"), st["phase"]
    assert st["currentStep"] == 0 and st["weights"]["canary"] == 20
    assert st["analysis"]["consecutiveFailures"] == 0


def versions_of_children(kcluster: Any, ns: str) -> dict[tuple[str, str], list[Any]]:
    """When and what the operator last wrote on each child (its managedFields entries).

    Not resourceVersion: the Deployment controller and kwok keep updating status; a write
    of ours shows as a new time (or fields) under our field manager."""
    return {
        (o["kind"], o["metadata"]["name"]): [
            (m.get("operation"), m.get("time"), json.dumps(m.get("fieldsV1"), sort_keys=True))
            for m in o["metadata"].get("managedFields") or []
            if m.get("manager") == OPERATOR
        ]
        for o in children(kcluster, ns)
    }


def test_invalid_spec_is_refused_with_a_clear_error_and_nothing_changes(
    kcluster: Any, kube: Kube, exporter: Any, operator: Any, harness: Any
) -> None:
    """On a real API server the CRD's schema and CEL rules mirror every rule of the
    operator's own validation (``operator/model``), so an invalid spec never reaches the
    operator: the write is refused with the rule's message and nothing changes. (The
    operator's InvalidSpec path, for objects stored before a stricter CRD, is covered by
    ``tests/unit/test_handlers.py`` and ``tests/unit/test_qa_operator.py``.)"""
    ns = "invalid"
    deploy_healthy(harness, kube, exporter, ns)
    before = versions_of_children(kcluster, ns)
    spec_before = kube.get("ModelDeployment", ns, MD)["spec"]
    for patch, message in [
        (
            {"serving": {"replicas": 2, "autoscaling": {"minReplicas": 1}}},
            "set either replicas or autoscaling",
        ),
        ({"serving": {"resources": {"requests": {"memory": "2Gi"}}}}, "may not exceed its limit"),
        ({"rollout": {"steps": [{"weight": 50}, {"weight": 20}]}}, "non-decreasing"),
    ]:
        with pytest.raises(KubeError, match=message) as refused:
            kube.merge_patch("ModelDeployment", ns, MD, {"spec": patch})
        assert refused.value.status == 422
    md = kube.get("ModelDeployment", ns, MD)
    assert md["spec"] == spec_before
    assert md["status"]["phase"] == "Healthy"
    assert versions_of_children(kcluster, ns) == before


def test_prometheus_down_holds_then_rolls_back_after_max_hold(
    kcluster: Any, kube: Kube, exporter: Any, start_operator: Any, harness: Any
) -> None:

    ns = "promdown"
    op = start_operator((ns,), prometheus_url=f"http://127.0.0.1:{free_port()}")
    try:
        body = md_body(ns, "1", onProviderError={"action": "rollback", "maxHold": "6s"})
        deploy_healthy(harness, kube, exporter, ns, body)
        start_canary(harness, kube, exporter, ns, GOOD)

        def holding() -> Any:
            st = status(kube, ns)
            verdicts = st.get("analysis", {}).get("verdicts", [])
            held = st.get("phase") == "Progressing" and any(
                v["outcome"] == "providerError" for v in verdicts
            )
            return st if held else None

        st = harness.eventually(holding, 20, "a provider-error hold")
        assert st["weights"]["canary"] == 20  # never promoted blind
        st = harness.eventually(
            lambda: phase_is(kube, ns, "RolledBack"), 30, "rollback after maxHold"
        )
        assert st["stable"]["version"] == "1"
        assert "AnalysisProviderError" in events(kcluster, ns)
    finally:
        op.stop()


def test_restarted_operator_resumes_at_the_same_step_without_duplicates(
    kcluster: Any, kube: Kube, exporter: Any, start_operator: Any, harness: Any
) -> None:

    ns = "restart"
    op = start_operator((ns,))
    body = md_body(ns, "1")
    body["spec"]["rollout"]["steps"] = [{"weight": 30, "pause": "manual"}, {"weight": 60}]
    try:
        deploy_healthy(harness, kube, exporter, ns, body)
        start_canary(harness, kube, exporter, ns, GOOD)
        harness.eventually(lambda: phase_is(kube, ns, "Paused"), 40, "paused at the manual step")
    finally:
        op.stop()
    before = status(kube, ns)
    # Every child by kind and name, with its uid: a duplicate would add a name, a
    # delete-and-create would change a uid.
    uids = {
        (o["kind"], o["metadata"]["name"]): o["metadata"]["uid"] for o in children(kcluster, ns)
    }
    versions = versions_of_children(kcluster, ns)

    op = start_operator((ns,))
    try:
        harness.eventually(
            lambda: f"[{ns}/{MD}] Handler 'on_resume' succeeded" in op.log(),
            20,
            "resume handler ran",
        )
        # The pacer's next due reconcile of the paused rollout (analysis interval 1 s).
        analysed = before["analysis"]["lastRunAt"]
        harness.eventually(
            lambda: status(kube, ns)["analysis"]["lastRunAt"] != analysed,
            15,
            "a due reconcile after the restart",
        )
        after = status(kube, ns)
        assert after["phase"] == "Paused"
        assert after["currentStep"] == before["currentStep"] == 0
        assert after["weights"] == before["weights"] == {"stable": 70, "canary": 30}
        assert after["canary"]["id"] == before["canary"]["id"] == rev("2")
        now = {
            (o["kind"], o["metadata"]["name"]): o["metadata"]["uid"] for o in children(kcluster, ns)
        }
        assert now == uids  # nothing created twice, nothing recreated
        # Nothing rewritten either: a resumed, steady rollout costs reads only.
        assert versions_of_children(kcluster, ns) == versions

        kube.merge_patch(
            "ModelDeployment", ns, MD, {"spec": {"controls": {"resume": secrets.token_hex(4)}}}
        )
        harness.eventually(
            lambda: (status(kube, ns).get("stable") or {}).get("version") == "2",
            40,
            "promoted after resume",
        )
    finally:
        op.stop()


def test_every_write_of_the_operator_is_under_its_field_manager(
    kcluster: Any, kube: Kube, exporter: Any, operator: Any, harness: Any
) -> None:
    """managedFields, as the real API server records them: the user's spec under kubectl,
    everything the operator wrote (children, status, kopf's annotations, Events) under
    ``mlrollout-operator``; no write went out as ``python-urllib3`` or ``kopf``."""
    ns = "fields"
    exporter.set(ns, MD, "1", harness.Traffic(**GOOD), "stable")
    kcluster.kubectl("apply", "-f", "-", input=json.dumps(md_body(ns, "1")))
    harness.eventually(lambda: phase_is(kube, ns, "Healthy"), 30, f"{ns}: Healthy")
    start_canary(harness, kube, exporter, ns, GOOD)
    harness.eventually(
        lambda: (status(kube, ns).get("weights") or {}).get("canary"), 30, "canary routed"
    )

    def managers(obj: dict[str, Any], status: bool) -> set[str]:
        return {
            m["manager"]
            for m in obj["metadata"].get("managedFields") or []
            if (m.get("subresource") == "status") == status
        }

    md = kube.get("ModelDeployment", ns, MD)
    assert md is not None
    assert "kubectl-client-side-apply" in managers(md, status=False)  # the user's spec
    assert managers(md, status=True) == {OPERATOR}
    owned = children(kcluster, ns)
    assert len(owned) >= 10
    for obj in owned:
        assert managers(obj, status=False) == {OPERATOR}, (obj["kind"], obj["metadata"]["name"])
    # Deployment status is the Deployment controller's, not ours.
    for dep in children(kcluster, ns, "apps/v1/deployments"):
        assert OPERATOR not in managers(dep, status=True)
    ours = [
        e
        for e in kcluster.live("v1/events", ns)
        if e.get("involvedObject", {}).get("kind") == "ModelDeployment"
    ]
    assert ours
    for e in ours:
        assert managers(e, status=False) == {OPERATOR}, (e["reason"], e["metadata"])
    everything = [md, *owned, *ours]
    seen = set().union(*(managers(o, s) for o in everything for s in (False, True)))
    assert not seen & {"python-urllib3", "kopf", "OpenAPI-Generator", "Python-urllib"}, seen
