"""``mlrollout dev`` (pydantic) and the cluster (the CRD's schema + CEL) accept exactly the
same ModelDeployment specs (issue 12 item 7), proven over generated specs.

Before the fix, pydantic coerced ``weight: "10"``, ``true`` and ``enabled: "yes"`` that the
CRD refuses; ``serving.resources`` with unknown names, ``cpu: -1`` or requests above limits
passed the API server and were marked InvalidSpec only by the operator; durations beyond
Go's ``time.Duration`` were accepted.

The API server is emulated as it handles a create with ``fieldValidation=Strict``:
unknown fields refused; nulls of fields without a default pruned, nulls of fields with one
defaulted (``PruneNonNullableNullsWithoutDefaults``, then defaulting); the structural
schema checked with kube-openapi's rules (a whole float within 2^53 passes for an integer,
``isFloatInt``; a pattern's ``$`` is the end of the text, as in Go's RE2); then the CEL rules
with Kubernetes' list and quantity libraries and Go's ``time.ParseDuration``. Whole floats
are sent as integers to CEL, as kubectl sends them (YAML ``10.0`` becomes JSON ``10``).
``test_the_real_api_server_agrees`` sends generated specs to a real kube-apiserver when the
``control_plane`` fixture can start one.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlrollout.operator import model as m
from pydantic import ValidationError

from tests.doubles.apiserver import SCHEMA, anchored, crd_verdict


def model_verdict(raw: Any) -> str | None:
    try:
        m.ModelDeploymentSpec.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:2])
    return None


# --------------------------------------------------------------------------- generated specs

# Values that broke parity before (or sit on a boundary), tried wherever their type fits.
HOSTILE: dict[str, list[Any]] = {
    "integer": ["10", 10.0, 10.5, True, False, -1, 0, 2**31, 2**63, 1e20, None],
    "number": ["0.5", True, -1, 0, 1, 0.5, 1e300, 2, None],
    "boolean": ["yes", "true", 1, 0, None],
    "string": [5, 1.0, True, "", "x" * 300, "a\n", None],
    "duration": ["0s", "0ms", "1h", "1.5m", "0.0000000001s", "2562047h", "2562048h",
                 "99999999999h", "2562047h47m16.854775807s", "2562047h47m16.854775808s",
                 "30 seconds", "1d", "-1s", "manual"],
    "quantity": ["-1", -1, 1.5, 2.0, 2, "500m", "1Gi", "1e3", "1E3", "abc", "0", ".5", "5.",
                 "1Ki", "1k", "+1", None, True],
    "resource": ["cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "nvidia.com/gpu",
                 "gpu", "CPU", "", "a/b/c"],
}  # fmt: skip
DURATION_FIELDS = {"pause", "maxHold", "interval", "window", "maxStaleness", "progressDeadline"}


def _valid_string(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in node:
        return st.sampled_from(node["enum"])
    lo, hi = node.get("minLength", 0), min(node.get("maxLength", 40), 40)
    if "pattern" in node:
        return st.from_regex(anchored(node["pattern"]).replace(r"\Z", ""), fullmatch=True).filter(
            lambda s: lo <= len(s) <= node.get("maxLength", 10**6)
        )
    return st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=lo, max_size=hi)


def _valid_number(node: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    lo, hi = node.get("minimum"), node.get("maximum")
    if integer:
        return st.integers(
            min_value=int(lo) if lo is not None else -(2**31),
            max_value=int(hi) if hi is not None else 2**31,
        )
    return st.floats(
        min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False,
        exclude_min=bool(node.get("exclusiveMinimum")), exclude_max=bool(node.get("exclusiveMaximum")),
    ) | st.sampled_from([v for v in (lo, hi, 0, 1) if v is not None])  # fmt: skip


def value_for(
    node: dict[str, Any], name: str = "", depth: int = 0, hostile_share: int = 4
) -> st.SearchStrategy[Any]:
    """A value for a schema node: valid for the schema, or (one time in ``hostile_share``;
    never when it is 0) one of the hostile values for its type."""
    deeper = {"depth": depth + 1, "hostile_share": hostile_share}
    if node.get("x-kubernetes-int-or-string"):
        fine = st.sampled_from(["100m", "1", "256Mi", "1Gi", 1, 4, "2.5"])
        return fine | st.sampled_from(HOSTILE["quantity"]) if hostile_share else fine
    kind = node.get("type")
    hostile: list[Any] = HOSTILE.get("duration" if name in DURATION_FIELDS else str(kind), [])
    if kind == "object" and "properties" in node:
        valid: st.SearchStrategy[Any] = _object(node, depth, hostile_share)
    elif kind == "object":  # a map (resources.requests / limits)
        names = HOSTILE["resource"] if hostile_share else ["cpu", "memory", "nvidia.com/gpu"]
        item = value_for(node["additionalProperties"], **deeper)
        valid = st.dictionaries(st.sampled_from(names), item, max_size=3)
    elif kind == "array":
        lo, hi = node.get("minItems", 0), min(node.get("maxItems", 3), 3)
        valid = st.lists(value_for(node["items"], **deeper), min_size=lo, max_size=hi)
        hostile = [[], None]
    elif kind == "string":
        valid = _valid_string(node)
    elif kind in ("integer", "number"):
        valid = _valid_number(node, kind == "integer")
    elif kind == "boolean":
        valid = st.booleans()
    else:
        valid = st.nothing()
    if not hostile or not hostile_share:
        return valid
    return st.one_of(*[valid] * (hostile_share - 1), st.sampled_from(hostile))


def _object(
    node: dict[str, Any], depth: int, hostile_share: int
) -> st.SearchStrategy[dict[str, Any]]:
    props = node["properties"]
    required = set(node.get("required", []))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, sub in props.items():
            # Required fields are nearly always there; optional ones often left out.
            present = draw(st.integers(0, 19)) < (19 if key in required else 6)
            if present and depth < 6:
                out[key] = draw(value_for(sub, key, depth + 1, hostile_share))
        if hostile_share and draw(st.integers(0, 49)) == 0:
            out["unknownField"] = 1
        return out

    return build()


# Half the specs are valid field by field (cross-field rules may still refuse them); the
# others carry a hostile value in about one field of 10.
specs = st.one_of(value_for(SCHEMA, hostile_share=0), value_for(SCHEMA, hostile_share=10))
# `make test` runs a fast sample; docs/reliability.md gives the long run
# (MLROLLOUT_PARITY_EXAMPLES=3000, MLROLLOUT_PARITY_SERVER_EXAMPLES=1000).
EXAMPLES = int(os.environ.get("MLROLLOUT_PARITY_EXAMPLES", "400"))


# --------------------------------------------------------------------------- the tests

PARITY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)


@pytest.mark.timeout(1800)  # the long run takes minutes on a shared machine
@PARITY
@given(specs)
def test_models_and_crd_accept_the_same_generated_specs(raw: dict[str, Any]) -> None:
    by_model, by_crd = model_verdict(raw), crd_verdict(raw)
    assert (by_model is None) == (by_crd is None), (
        f"\nspec: {json.dumps(raw, default=str)}\nmodels: {by_model or 'accepted'}"
        f"\nCRD: {by_crd or 'accepted'}"
    )


def test_generated_specs_are_both_accepted_and_refused() -> None:
    """The generator is not trivially one-sided: a fixed sample has both outcomes."""
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
    @given(specs)
    def sample(raw: dict[str, Any]) -> None:
        outcomes["accepted" if model_verdict(raw) is None else "refused"] += 1

    sample()
    assert outcomes["accepted"] >= 30 and outcomes["refused"] >= 30, outcomes


# The issue's cases, each decided the same way on both sides (and the way Kubernetes does).
BASE = {"model": {"name": "fraud", "version": "v1", "uri": "./m"}}
CASES: list[tuple[dict[str, Any], bool]] = [
    ({**BASE, "rollout": {"steps": [{"weight": "10"}]}}, False),
    ({**BASE, "rollout": {"steps": [{"weight": True}]}}, False),
    ({**BASE, "rollout": {"steps": [{"weight": 10.5}]}}, False),
    # kubectl sends YAML 10.0 as 10, and kube-openapi takes a whole float as an integer.
    ({**BASE, "rollout": {"steps": [{"weight": 10.0}]}}, True),
    ({**BASE, "rollout": {"analysis": {"metrics": {"errorRate": {"enabled": "yes"}}}}}, False),
    ({**BASE, "serving": {"resources": {"requests": {"gpu": "1"}}}}, False),
    ({**BASE, "serving": {"resources": {"requests": {"nvidia.com/gpu": 1}}}}, True),
    ({**BASE, "serving": {"resources": {"requests": {"cpu": -1}}}}, False),
    ({**BASE, "serving": {"resources": {"requests": {"cpu": "-1"}}}}, False),
    ({**BASE, "serving": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}}, False),
    ({**BASE, "serving": {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1024Mi"}}}}, True),
    ({**BASE, "rollout": {"progressDeadline": "2562048h"}}, False),
    ({**BASE, "rollout": {"steps": [{"weight": 10, "pause": "99999999999h"}]}}, False),
    ({**BASE, "rollout": {"analysis": {"onProviderError": {"maxHold": "2562048h"}}}}, False),
    ({**BASE, "rollout": {"steps": [{"weight": 10, "pause": "2562047h"}]}}, True),
    ({**BASE, "rollout": {"analysis": {"interval": "0.0000000001s"}}}, False),
    ({**BASE, "serving": {"replicas": None}}, True),
    # Found by the long run: the CRD's list map refuses a name given twice, as the models do.
    ({**BASE, "serving": {"env": [{"name": "A"}, {"name": "A"}]}}, False),
    ({**BASE, "model": {"name": "fraud", "version": "v1", "uri": "./m", "sha256": None}}, True),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "accepted"), CASES)
def test_the_issues_cases(raw: dict[str, Any], accepted: bool) -> None:
    assert (model_verdict(raw) is None) == accepted, model_verdict(raw)
    assert (crd_verdict(raw) is None) == accepted, crd_verdict(raw)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("1h30m", 5400 * 10**9),
        ("1.5s", 1_500_000_000),
        ("0.0000000001s", 0),
        ("2562047h47m16.854775807s", 2**63 - 1),
        ("1.000000000000000000001s", 10**9),
    ],
)
def test_durations_follow_go(text: str, nanos: int) -> None:
    assert m.go_duration_nanos(text) == nanos
    assert m.parse_duration(text) == pytest.approx(nanos / 1e9)


@pytest.mark.parametrize("text", ["2562047h47m16.854775808s", "2562048h", "99999999999h", "1d"])
def test_durations_beyond_go_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        m.go_duration_nanos(text)


# --------------------------------------------------------------------------- the real server


def as_kubectl_sends(value: Any) -> Any:
    """kubectl turns YAML into JSON through float64: a whole float is sent as an integer."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: as_kubectl_sends(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_kubectl_sends(v) for v in value]
    return value


@pytest.fixture(scope="module")
def custom_objects(control_plane: Any) -> Any:
    """The CRD installed on the real control plane, and a client for its objects."""
    from kubernetes import client, config
    from mlrollout.operator import crd

    control_plane.apply(crd.crd())  # the CRD itself must be acceptable (CEL cost, schema)
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{m.PLURAL}.{m.GROUP}"
    )
    return client.CustomObjectsApi(config.new_client_from_config(str(control_plane.kubeconfig)))


SERVER_EXAMPLES = int(os.environ.get("MLROLLOUT_PARITY_SERVER_EXAMPLES", "200"))


@pytest.mark.timeout(1800)
def test_the_real_api_server_agrees(custom_objects: Any) -> None:
    """A server-side dry-run create with fieldValidation=Strict on a real kube-apiserver
    (tests/cluster/controlplane.py) accepts exactly what the models accept."""
    from kubernetes.client.exceptions import ApiException

    outcomes = {"accepted": 0, "refused": 0}

    @settings(
        max_examples=SERVER_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        derandomize=True,
    )
    @given(raw=specs)
    def one(raw: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{m.GROUP}/{m.VERSION}",
            "kind": m.KIND,
            "metadata": {"name": "parity", "namespace": "default"},
            "spec": as_kubectl_sends(raw),
        }
        try:
            custom_objects.create_namespaced_custom_object(
                m.GROUP, m.VERSION, "default", m.PLURAL, body,
                dry_run="All", field_validation="Strict",
            )  # fmt: skip
            by_server = None
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            by_server = json.loads(exc.body or "{}").get("message", str(exc.status))
        by_model = model_verdict(raw)
        outcomes["accepted" if by_server is None else "refused"] += 1
        assert (by_model is None) == (by_server is None), (
            f"\nspec: {json.dumps(raw, default=str)}\nmodels: {by_model or 'accepted'}"
            f"\nAPI server: {by_server or 'accepted'}"
        )

    one()
    print(f"real API server: {outcomes}")
    assert outcomes["accepted"] >= 10 and outcomes["refused"] >= 10, outcomes
