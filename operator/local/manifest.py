"""Read a ModelDeployment YAML file the way ``kubectl apply`` would, and validate it.

Any problem becomes a ``ManifestError`` whose message names the file and the field, so
``mlrollout dev`` can print it and exit before starting anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlrollout.operator.api import API_VERSION, KIND
from mlrollout.operator.model import ModelDeploymentSpec
from pydantic import ValidationError

DEFAULT_NAMESPACE = "local"
# metadata.name becomes a label value and part of file names: a DNS-1123 label.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ManifestError(ValueError):
    """The file is not a valid ModelDeployment; the message says where and why."""


@dataclass(frozen=True)
class Manifest:
    name: str
    namespace: str
    spec: ModelDeploymentSpec
    raw_spec: dict[str, Any]  # as written, for change detection and the engine
    path: Path

    @property
    def base_dir(self) -> Path:
        """Relative model URIs are relative to the YAML file's folder."""
        return self.path.resolve().parent


def manifest_document(
    name: str, spec: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """A ModelDeployment document around ``spec``; ``env`` becomes ``spec.serving.env``."""
    if env:
        serving = spec.setdefault("serving", {})
        serving["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def format_validation_error(exc: ValidationError, limit: int = 10) -> str:
    lines = []
    for err in exc.errors()[:limit]:
        where = ".".join(["spec", *(str(p) for p in err["loc"])])
        lines.append(f"  {where}: {err['msg']}")
    if exc.error_count() > limit:
        lines.append(f"  (and {exc.error_count() - limit} more)")
    return "\n".join(lines)


def parse_manifest(text: str, path: Path) -> Manifest:
    """Parse the text of a ModelDeployment (pure apart from naming ``path`` in errors)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if len(docs) != 1:
        raise ManifestError(f"{path}: expected exactly one YAML document, found {len(docs)}")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a mapping, got {type(doc).__name__}")
    problems = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        problems.append(f"kind must be {KIND!r}, got {doc.get('kind')!r}")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 63:
        problems.append(f"metadata.name must be a DNS-1123 label (e.g. fraud-model), got {name!r}")
    namespace = metadata.get("namespace", DEFAULT_NAMESPACE) if isinstance(metadata, dict) else ""
    if not isinstance(namespace, str) or not _NAME.match(namespace):
        problems.append(f"metadata.namespace must be a DNS-1123 label, got {namespace!r}")
    raw_spec = doc.get("spec")
    if not isinstance(raw_spec, dict):
        problems.append("spec is missing or not a mapping")
    if problems:
        raise ManifestError(f"{path}: invalid ModelDeployment:\n  " + "\n  ".join(problems))
    assert isinstance(raw_spec, dict) and isinstance(name, str) and isinstance(namespace, str)
    try:
        spec = ModelDeploymentSpec.model_validate(raw_spec)
    except ValidationError as exc:
        raise ManifestError(
            f"{path}: invalid ModelDeployment spec:\n{format_validation_error(exc)}"
        ) from None
    return Manifest(name=name, namespace=namespace, spec=spec, raw_spec=raw_spec, path=path)


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_manifest(text, path)


def check_local_uris(manifest: Manifest) -> None:
    """Local artifact paths must exist; say which one does not, before starting anything."""
    uri = manifest.spec.model.uri
    if "://" in uri:
        return
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = manifest.base_dir / path
    if not path.exists():
        raise ManifestError(
            f"{manifest.path}: spec.model.uri {uri!r} does not exist (looked for {path})"
        )
    card_path = path / "model.json"
    if not card_path.is_file():
        return  # a .tar.gz, or a broken artifact the server will refuse with its own reason
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{card_path}: unreadable model card: {exc}") from None
    # The server labels its metrics with the card's name and version, and analysis selects
    # series by the spec's: a mismatch would leave every check without data, silently.
    for field in ("name", "version"):
        want, have = getattr(manifest.spec.model, field), card.get(field)
        if have is not None and have != want:
            raise ManifestError(
                f"{manifest.path}: spec.model.{field} is {want!r} but the artifact at {path} "
                f"says {have!r} (model.json); they must match"
            )
