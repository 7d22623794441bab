"""The ModelDeployment CRD, generated from the pydantic models (``operator/model/``).

``python -m mlrollout.operator.crd write`` renders ``crds/modeldeployment.yaml`` and copies it
to the Helm chart and the plain manifests; ``check`` exits 1 when any copy differs from
what the models produce; ``print`` writes it to stdout. ``mlrollout crd`` is the same.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3 schema. The
conversion below inlines ``$ref``s, turns ``X | None`` into an optional ``X``, drops
titles and null defaults, rewrites numeric ``exclusiveMinimum``, and attaches the CEL
rules from ``model.CEL_RULES``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml
from mlrollout.operator import api, builders
from mlrollout.operator import model as m
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticUndefined, core_schema, to_jsonable_python

CRD_PATH = Path("crds/modeldeployment.yaml")
# The chart renders its copy from a template (helm/mlrollout/files/crds, written by
# tools/deploy_assets.py) so that the CRD upgrades with the chart; a crds/ folder in
# the chart as well would make Helm install it twice.
COPIES = (Path("manifests/crd.yaml"),)
HEADER = (
    "# Generated from operator/model/ by `python -m mlrollout.operator.crd write`. Do not edit.\n"
)

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also emit defaults that come from ``default_factory`` (Kubernetes applies them)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            # An object default is written out in full: the API server checks a default
            # against the CEL rules as it stands, without filling in the nested defaults
            # first, so `default: {}` fails every rule that reads a defaulted field.
            if isinstance(value, BaseModel):
                return value.model_dump(mode="json", by_alias=True, exclude_none=True)
            return to_jsonable_python(value, by_alias=True, exclude_none=True)
        default = super().get_default_value(schema)
        return PydanticUndefined if default is PydanticUndefined else default


# Children are named after the ModelDeployment (builders.check_owner_name): refuse names
# they cannot carry at the API server. A schema on metadata.name (the one metadata
# restriction structural schemas allow) rather than CEL: `matches` on the unbounded name
# would blow CEL's estimated cost budget.
NAME_SCHEMA = {
    "type": "string",
    "description": (
        f"At most {builders.MAX_OWNER_NAME} lowercase letters, digits and '-', starting with a "
        "letter: Services and Deployments are named after it."
    ),
    "maxLength": builders.MAX_OWNER_NAME,
    "pattern": builders.OWNER_NAME_PATTERN,
}


def _rules_by_name() -> dict[str, list[dict[str, str]]]:
    return {cls.__name__: rules for cls, rules in m.CEL_RULES.items()}


_CONSTRAINT_NAMES = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
    "min_length": "minLength",
    "max_length": "maxLength",
}


def _convert(node: Any, defs: dict[str, Any], rules: dict[str, list[dict[str, str]]]) -> Any:
    if not isinstance(node, dict):
        return node
    node = dict(node)
    # Constraints on an annotated type inside a union (``Int | None``) come out of pydantic
    # under their Python names.
    for python, schema in _CONSTRAINT_NAMES.items():
        if python in node:
            node[schema] = node.pop(python)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        target = _convert(defs[name], defs, rules)
        if name in rules:
            target["x-kubernetes-validations"] = rules[name]
        # Beside a $ref only annotations (description, default): values, not schemas, so
        # they are kept as they are (a default object run through _convert came out `{}`).
        target.update({k: v for k, v in node.items() if k in _KEEP})
        return _clean(target)
    if node.get("x-kubernetes-int-or-string"):
        return {k: v for k, v in node.items() if k in _KEEP or k == "anyOf"}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {options} in a structural schema")
        merged = _convert(options[0], defs, rules)
        merged.update({k: v for k, v in node.items() if k in _KEEP})
        return _clean(merged)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {k: _convert(v, defs, rules) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs, rules)
        elif key == "additionalProperties":
            continue  # `false` is implied by a structural schema (unknown fields are pruned)
        else:
            out[key] = value
    return _clean(out)


def _clean(node: dict[str, Any]) -> dict[str, Any]:
    if "default" in node and node["default"] is None:
        del node["default"]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    # description and type first: easier to read in the YAML
    first = {k: node[k] for k in ("description", "type") if k in node}
    return first | {k: v for k, v in node.items() if k not in first}


def schema_of(cls: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model."""
    raw = cls.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    defs = raw.pop("$defs", {})
    rules = _rules_by_name()
    out = _convert(raw, defs, rules)
    if cls.__name__ in rules:
        out["x-kubernetes-validations"] = rules[cls.__name__]
    return out


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    spec = schema_of(m.ModelDeploymentSpec)
    spec["description"] = "What to serve and how to roll out changes to it."
    status = schema_of(m.ModelDeploymentStatus)
    status["description"] = "Written by the operator; everything needed to resume a rollout."
    # (name, type, jsonPath, description, priority): priority 1 shows only with -o wide.
    columns = [
        ("Phase", "string", ".status.phase", "Where the deployment stands.", 0),
        ("Stable", "string", ".status.stable.version", "Stable model version.", 0),
        ("Canary", "string", ".status.canary.version", "Canary model version, if any.", 0),
        ("Step", "string", ".status.step", "Current canary step as n/m.", 0),
        ("Weight", "integer", ".status.weights.canary", "Percent of traffic to the canary.", 0),
        ("Message", "string", ".status.message", "Human summary of the phase.", 0),
        ("Age", "date", ".metadata.creationTimestamp", "Time since creation.", 0),
        ("Stable-Revision", "string", ".status.stable.id", "Stable revision id.", 1),
        ("Canary-Revision", "string", ".status.canary.id", "Canary revision id.", 1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "mlrollout",
                "app.kubernetes.io/part-of": "mlrollout",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.KIND.lower(),
                "shortNames": ["md"],
                "categories": ["mlrollout"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, "description": d}
                        | ({"priority": prio} if prio else {})
                        for n, t, p, d, prio in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "A model served behind a router, rolled out progressively: a "
                                "new model version runs as a canary, is judged from Prometheus "
                                "metrics, and is promoted or rolled back automatically."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                # Nothing but name restrictions (no description either):
                                # the structural-schema rule refuses the CRD otherwise.
                                "metadata": {
                                    "type": "object",
                                    "properties": {"name": NAME_SCHEMA},
                                },
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in schema defaults as the API server does (missing properties, recursively).

    Lets tests check that the CRD's defaults equal the models' and evaluate CEL rules on
    the object the API server would see.
    """
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    body = yaml.dump(crd(), Dumper=_NoAliases, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def default_root() -> Path:
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def write(root: Path) -> list[Path]:
    text = render()
    written = []
    for rel in (CRD_PATH, *COPIES):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def check(root: Path) -> list[str]:
    """Problems found: one line per copy that is missing or differs (with a short diff)."""
    text = render()
    problems = []
    for rel in (CRD_PATH, *COPIES):
        path = root / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
            continue
        current = path.read_text()
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(rel), "generated", lineterm="", n=1
            )
            problems.append(f"{rel}: differs from the models\n" + "\n".join(list(diff)[:40]))
    return problems


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["write", "check", "print"], help="what to do")
    parser.add_argument(
        "--root", type=Path, default=None, help="repository root (default: this checkout)"
    )


def run(args: argparse.Namespace) -> int:
    root = args.root or default_root()
    if args.action == "print":
        sys.stdout.write(render())
        return 0
    if args.action == "write":
        for path in write(root):
            print(f"wrote {path}")
        return 0
    problems = check(root)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("run `make crds` to regenerate", file=sys.stderr)
        return 1
    print("CRD copies match the models")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlrollout.operator.crd", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
