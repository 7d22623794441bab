"""The API server's handling of a ModelDeployment spec, emulated (fieldValidation=Strict).

Unknown fields refused; nulls of fields without a default pruned, nulls of fields with one
defaulted (``PruneNonNullableNullsWithoutDefaults``, then defaulting); the structural
schema checked with kube-openapi's rules (a whole float within 2^53 passes for an integer,
``isFloatInt``; a pattern's ``$`` is the end of the text, as in Go's RE2); then the CEL rules
with Kubernetes' list and quantity libraries and Go's ``time.ParseDuration``; an evaluation
error refuses the object, as in Kubernetes. Whole floats reach CEL as integers, as kubectl
sends them (YAML ``10.0`` becomes JSON ``10``). ``tests/unit/test_spec_parity.py`` also
checks generated specs against a real kube-apiserver when one can be started.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema
from mlrollout.operator import crd
from mlrollout.operator import model as m

MAX_SAFE = 2**53 - 1
SCHEMA = crd.schema_of(m.ModelDeploymentSpec)


# --------------------------------------------------------------------------- the CRD side


def _is_integer(checker: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE


def _go_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if isinstance(instance, str) and not re.search(anchored(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def anchored(pattern: str) -> str:
    # RE2 (Go) and Rust read `$` as the end of the text; Python's `$` also matches before
    # a final newline.
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)


_TYPES = jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer)
KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"pattern": _go_pattern}, type_checker=_TYPES
)


def _walk_unknown(node: dict[str, Any], value: Any, path: str) -> str | None:
    """First unknown field (strict field validation refuses it), or None."""
    if isinstance(value, dict) and "properties" in node:
        for key, sub in value.items():
            if key not in node["properties"]:
                return f"{path}.{key}"
            found = _walk_unknown(node["properties"][key], sub, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, sub in value.items():
            found = _walk_unknown(node["additionalProperties"], sub, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, sub in enumerate(value):
            found = _walk_unknown(node["items"], sub, f"{path}[{i}]")
            if found:
                return found
    return None


def prune_nulls(node: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for key in list(value):
            sub = (node.get("properties") or {}).get(key)
            if sub is None and isinstance(node.get("additionalProperties"), dict):
                sub = node["additionalProperties"]
            if sub is None:
                continue
            if value[key] is None:
                if "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                else:
                    del value[key]
            else:
                prune_nulls(sub, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            prune_nulls(node["items"], item)


def ints_for_cel(node: dict[str, Any], value: Any) -> Any:
    """``value`` as the API server hands it to CEL: integers for integer fields (whole floats
    arrive from kubectl as integers), doubles for number fields even when written as 10
    (``int == double`` has no overload in the server's CEL)."""
    if node.get("type") == "integer" and isinstance(value, float):
        return int(value)
    if node.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if node.get("x-kubernetes-int-or-string") and isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        return {
            k: ints_for_cel(props.get(k) or (extra if isinstance(extra, dict) else {}), v)
            for k, v in value.items()
        }
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [ints_for_cel(node["items"], v) for v in value]
    return value


@cache
def _program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule), functions=cel_functions())


def cel_functions() -> dict[str, Callable[..., Any]]:
    """Kubernetes' CEL libraries used by the rules, on cel-python's types."""
    from celpy import celtypes

    def is_sorted(values: Any) -> Any:
        return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(list(values))))

    def quantity(text: Any) -> Any:
        m.quantity_value(str(text))  # an invalid quantity is an evaluation error
        return celtypes.StringType(str(text))

    def compare_to(a: Any, b: Any) -> Any:
        x, y = m.quantity_value(str(a)), m.quantity_value(str(b))
        return celtypes.IntType((x > y) - (x < y))

    def duration(text: Any) -> Any:
        nanos = m.go_duration_nanos(str(text))  # raises ValueError beyond Go's range
        return celtypes.DurationType(seconds=nanos // 10**9, nanos=nanos % 10**9)

    return {
        "isSorted": is_sorted,
        "quantity": quantity,
        "compareTo": compare_to,
        "duration": duration,
    }


def cel_failures(node: dict[str, Any], value: Any, path: str = "spec") -> list[str]:
    import celpy

    out: list[str] = []
    rules = node.get("x-kubernetes-validations", [])
    activation = {"self": celpy.json_to_cel(value)} if rules else {}
    for rule in rules:
        try:
            ok = bool(_program(rule["rule"]).evaluate(activation))
        except Exception as exc:  # an evaluation error refuses the object, as in Kubernetes
            ok, rule = False, {"message": f"{rule['message']} (evaluation error: {exc})"}
        if not ok:
            out.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                out += cel_failures(sub, value[key], f"{path}.{key}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in node:
            for key, sub in value.items():
                out += cel_failures(extra, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            out += cel_failures(node["items"], item, f"{path}[{i}]")
    return out


def duplicate_list_keys(node: dict[str, Any], value: Any, path: str = "spec") -> str | None:
    """A ``x-kubernetes-list-type: map`` list with two items of the same keys (or a ``set``
    with a repeated item): the API server refuses it."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        kind = node.get("x-kubernetes-list-type")
        keys = node.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for i, item in enumerate(value):
            if kind == "map" and isinstance(item, dict):
                key = json.dumps([item.get(k) for k in keys])
            elif kind == "set":
                key = json.dumps(item, sort_keys=True)
            else:
                key = None
            if key is not None:
                if key in seen:
                    return f"{path}[{i}]: duplicate entry {key}"
                seen.add(key)
            found = duplicate_list_keys(node["items"], item, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, dict):
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                found = duplicate_list_keys(sub, value[key], f"{path}.{key}")
                if found:
                    return found
    return None


def crd_verdict(raw: Any) -> str | None:
    """Why the API server would refuse ``raw`` as a spec, or None if it would accept it."""
    if not isinstance(raw, dict):
        return "spec is not an object"
    unknown = _walk_unknown(SCHEMA, raw, "spec")
    if unknown:
        return f"unknown field {unknown}"
    obj = copy.deepcopy(raw)
    prune_nulls(SCHEMA, obj)
    obj = crd.apply_defaults(SCHEMA, obj)
    errors = sorted(KubeValidator(SCHEMA).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        return f"schema: {'/'.join(map(str, errors[0].path))}: {errors[0].message}"
    duplicate = duplicate_list_keys(SCHEMA, obj)
    if duplicate:
        return f"list map: {duplicate}"
    failures = cel_failures(SCHEMA, ints_for_cel(SCHEMA, obj))
    return f"CEL: {failures[0]}" if failures else None
