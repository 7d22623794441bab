"""Where the CLI reads ModelDeployments and writes spec changes: the cluster or a local run.

``KubeStore`` goes through ``operator/kube.py`` (the one module that talks to the API):
a GET of the object, a list of its Events, a JSON merge patch of its spec. ``LocalStore``
reads a local run dir (``state.json``, ``events.jsonl``, ``run.json``) and edits the
ModelDeployment file that ``mlrollout dev`` runs, in place (``yamledit``), so the file
stays the source of truth and ``dev`` picks the change up as it would an editor's save.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mlrollout.operator.api import GROUP
from mlrollout.operator.ctl import yamledit
from mlrollout.operator.ctl.view import EventRecord, Snapshot, parse_time
from mlrollout.operator.kube import Kube, KubeError
from mlrollout.operator.rundir import EVENTS_FILE, RUN_FILE, STATE_FILE
from mlrollout.services.osutil import write_atomic

EVENTS_KEPT = 20


class StoreError(Exception):
    """The deployment cannot be read or changed; the message says why."""


class NotFoundError(StoreError):
    pass


class RolloutStore(Protocol):
    def get(self, name: str) -> Snapshot: ...

    def list(self) -> list[Snapshot]: ...

    def patch(self, name: str, patch: Mapping[str, Any]) -> str:
        """Apply a merge patch of the ModelDeployment; return where it was written."""
        ...


# --------------------------------------------------------------------------- cluster


def event_records(items: list[Mapping[str, Any]], name: str) -> list[EventRecord]:
    """Events about ModelDeployment ``name``, oldest first (pure)."""
    out = []
    for e in items:
        obj = e.get("involvedObject") or e.get("regarding") or {}
        if obj.get("name") != name or obj.get("kind") not in (None, "ModelDeployment"):
            continue
        when = parse_time(
            e.get("lastTimestamp")
            or e.get("eventTime")
            or e.get("firstTimestamp")
            or (e.get("metadata") or {}).get("creationTimestamp")
        )
        out.append(
            EventRecord(
                type=str(e.get("type", "Normal")),
                reason=str(e.get("reason", "")),
                message=str(e.get("message") or e.get("note") or ""),
                time=when,
                count=int(e.get("count") or 1),
            )
        )
    out.sort(key=lambda r: (r.time is None, r.time))
    return out[-EVENTS_KEPT:]


class KubeStore:
    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def _snapshot(self, obj: Mapping[str, Any], events: list[EventRecord]) -> Snapshot:
        meta = obj.get("metadata") or {}
        return Snapshot(
            name=str(meta.get("name")),
            namespace=str(meta.get("namespace", self.namespace)),
            spec=obj.get("spec") or {},
            status=obj.get("status") or {},
            generation=meta.get("generation"),
            events=tuple(events),
        )

    def _events(self, name: str) -> list[EventRecord]:
        try:
            out = self.kube.request(
                "GET",
                f"/api/v1/namespaces/{self.namespace}/events",
                query={"fieldSelector": f"involvedObject.name={name}"},
            )
        except KubeError:
            return []  # events are a courtesy: RBAC may not allow listing them
        return event_records(list((out or {}).get("items") or []), name)

    def get(self, name: str) -> Snapshot:
        try:
            obj = self.kube.get("ModelDeployment", self.namespace, name)
        except KubeError as exc:
            raise StoreError(f"cannot read ModelDeployment {self.namespace}/{name}: {exc}") from exc
        if obj is None:
            raise NotFoundError(
                f"ModelDeployment {name!r} not found in namespace {self.namespace!r} "
                "(kubectl get md -A lists all)"
            )
        return self._snapshot(obj, self._events(name))

    def list(self) -> list[Snapshot]:
        try:
            items = self.kube.list("ModelDeployment", self.namespace)
        except KubeError as exc:
            raise StoreError(f"cannot list ModelDeployments in {self.namespace}: {exc}") from exc
        return sorted((self._snapshot(i, []) for i in items), key=lambda s: s.name)

    def patch(self, name: str, patch: Mapping[str, Any]) -> str:
        try:
            self.kube.merge_patch("ModelDeployment", self.namespace, name, patch)
        except KubeError as exc:
            raise StoreError(
                f"cannot patch ModelDeployment {self.namespace}/{name}: {exc}"
            ) from exc
        return f"modeldeployment.{GROUP}/{name} patched (namespace {self.namespace})"


# --------------------------------------------------------------------------- local


def find_run_dir(name: str | None, local: Path | None, cwd: Path) -> Path | None:
    """The run dir of ``name``: ``local`` itself, or ``<local or cwd>/.mlrollout/<name>``."""
    bases = [local] if local is not None else [cwd]
    for base in bases:
        assert base is not None
        if (base / STATE_FILE).exists() or (base / RUN_FILE).exists():
            return base
        if name is not None and (base / ".mlrollout" / name).is_dir():
            return base / ".mlrollout" / name
    return None


def read_jsonl(path: Path, keep: int) -> list[dict[str, Any]]:
    """The last ``keep`` records of a JSON-lines file; damaged lines are skipped."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines[-keep * 2 :]:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out[-keep:]


def flatten(patch: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in patch.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


class LocalStore:
    """One local run dir (``.mlrollout/NAME``) or a folder holding several under .mlrollout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dirs(self) -> list[Path]:
        if (self.root / STATE_FILE).exists() or (self.root / RUN_FILE).exists():
            return [self.root]
        base = self.root / ".mlrollout"
        return (
            sorted(p for p in base.glob("*") if (p / STATE_FILE).exists()) if base.is_dir() else []
        )

    def _dir_of(self, name: str) -> Path:
        for d in self._dirs():
            if d.name == name or _deployment(d) == name:
                return d
        raise NotFoundError(
            f"no local run of {name!r} under {self.root} (start one with `mlrollout dev FILE`, "
            "or give its run dir with --local DIR)"
        )

    def get(self, name: str) -> Snapshot:
        return self._read(self._dir_of(name))

    def list(self) -> list[Snapshot]:
        return [self._read(d) for d in self._dirs()]

    def _read(self, run_dir: Path) -> Snapshot:
        try:
            state = json.loads((run_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {run_dir / 'state.json'}: {exc}") from exc
        run = read_run_json(run_dir)
        spec = state.get("spec") or {}
        generation = state.get("generation")
        manifest = run.get("file")
        if manifest:
            # The file may have changed since dev last read it: that is a generation the
            # engine has not observed yet (as metadata.generation on a cluster).
            current = _spec_of_file(Path(manifest))
            if current is not None:
                if current != spec and generation is not None:
                    generation = int(generation) + 1
                spec = current
        events = [
            EventRecord(
                type=str(e.get("type", "Normal")),
                reason=str(e.get("reason", "")),
                message=str(e.get("message", "")),
                time=parse_time(e.get("time")),
            )
            for e in read_jsonl(run_dir / EVENTS_FILE, EVENTS_KEPT)
        ]
        return Snapshot(
            name=str(state.get("deployment") or run.get("deployment") or run_dir.name),
            namespace=str(state.get("namespace") or "local"),
            spec=spec,
            status=state.get("status") or {},
            generation=generation,
            events=tuple(events),
            source=f"local {run_dir}",
        )

    def patch(self, name: str, patch: Mapping[str, Any]) -> str:
        run_dir = self._dir_of(name)
        manifest = read_run_json(run_dir).get("file")
        if not manifest:
            raise StoreError(
                f"{run_dir}/run.json does not name the ModelDeployment file (run written by an "
                "older mlrollout dev); restart `mlrollout dev FILE` once"
            )
        path = Path(manifest)
        try:
            text = path.read_text()
            edited = yamledit.set_values(text, flatten(patch))
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        except yamledit.YamlEditError as exc:
            raise StoreError(f"cannot edit {path} in place: {exc}; edit it by hand") from exc
        write_atomic(path, edited)
        return f"{path} updated (mlrollout dev applies it within a second)"


def _deployment(run_dir: Path) -> str | None:
    try:
        return str(json.loads((run_dir / STATE_FILE).read_text()).get("deployment"))
    except (OSError, ValueError):
        return None


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _spec_of_file(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    spec = doc.get("spec") if isinstance(doc, dict) else None
    return spec if isinstance(spec, dict) else None
