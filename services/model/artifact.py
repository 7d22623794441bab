"""The model artifact: a directory (or the same as ``.tar.gz``) with the model, its profile and card.

``load_artifact`` is the one way in. It accepts a local directory, a local ``.tar.gz`` or an
``http(s)://`` URL, and refuses anything it cannot vouch for: a missing file, a card that is
not valid JSON, a digest that does not match. Downloads land in a cache directory under a
temporary name and are renamed into place only once complete and verified, so a crash or a
concurrent loader never sees half a file.

Hostile archives cost bounded work and disk: a download, and the bytes a tarball's members
declare (all of them, extracted or skipped), are capped at ``max_bytes`` (default 1 GiB,
``MLROLLOUT_MAX_ARTIFACT_BYTES``), checked from each member's header before it is inflated;
at most ``MAX_MEMBERS`` members; and an expected digest is checked before anything is
written: against the archive's own digest, else against ``model.onnx`` inflated in memory
chunk by chunk (never to disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
PROFILE_FILE = "profile.json"
CARD_FILE = "model.json"
REQUIRED_FILES = (MODEL_FILE, PROFILE_FILE, CARD_FILE)
CARD_KEYS = ("name", "version", "task", "inputs", "sha256")
DOWNLOAD_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 1 << 30
MAX_BYTES_ENV = "MLROLLOUT_MAX_ARTIFACT_BYTES"
# An artifact has three files; a few more (a README, folders) are tolerated and skipped.
MAX_MEMBERS = 64
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """The artifact cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified artifact. ``path`` is a local directory holding the three files."""

    path: Path
    card: dict[str, Any]
    profile: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def sha256(self) -> str:
        return str(self.card["sha256"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def max_artifact_bytes() -> int:
    """The cap on a download and on a tarball's contents (``MLROLLOUT_MAX_ARTIFACT_BYTES``)."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ArtifactError(f"{MAX_BYTES_ENV}={raw!r}: must be a number of bytes") from None
    if value <= 0:
        raise ArtifactError(f"{MAX_BYTES_ENV}={raw!r}: must be positive")
    return value


def default_cache_dir() -> Path:
    base = os.environ.get("MLROLLOUT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "mlrollout" if base else Path.home() / ".cache" / "mlrollout"


def load_artifact(
    source: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_bytes: int | None = None,
) -> Artifact:
    """Load and verify an artifact from a directory, a ``.tar.gz`` or an ``http(s)://`` URL.

    ``sha256``, when given, must be the digest of ``model.onnx`` (the one in ``model.json``)
    or, for a tarball, of the ``.tar.gz`` file itself. ``max_bytes`` caps a download and a
    tarball's contents (default: ``max_artifact_bytes()``). Raises ``ArtifactError`` on
    anything it cannot verify.
    """
    text = os.fspath(source)
    scheme = urllib.parse.urlsplit(text).scheme
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    expected = _normalise(sha256)
    cap = max_bytes if max_bytes is not None else max_artifact_bytes()
    if scheme in ("http", "https"):
        local = _download(text, cache, expected, cap)
    elif scheme in ("", "file"):
        local = Path(urllib.parse.urlsplit(text).path if scheme == "file" else text)
        if not local.exists():
            raise ArtifactError(f"artifact {text!r} does not exist")
    else:
        raise ArtifactError(
            f"artifact {text!r}: unsupported scheme {scheme!r} (use a path or http(s)://)"
        )
    if local.is_dir():
        if expected is not None:
            _check_digest(local / MODEL_FILE, expected, what=f"{local}/{MODEL_FILE}")
        return read_artifact_dir(local)
    return _verified_tarball(local, cache, expected, cap)


def read_artifact_dir(path: Path) -> Artifact:
    """Read the three files of an unpacked artifact and check the card against the model."""
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ArtifactError(f"artifact {path} is missing {', '.join(missing)}")
    card = _read_json(path / CARD_FILE)
    profile = _read_json(path / PROFILE_FILE)
    absent = [key for key in CARD_KEYS if key not in card]
    if absent:
        raise ArtifactError(f"{path / CARD_FILE} lacks required keys: {', '.join(absent)}")
    _check_digest(
        path / MODEL_FILE, str(card["sha256"]), what=f"{path / MODEL_FILE} (per model.json)"
    )
    return Artifact(path=path, card=card, profile=profile)


def pack_artifact(directory: Path, out_file: Path) -> str:
    """Write ``directory``'s artifact files as a ``.tar.gz``; return the tarball's sha256."""
    read_artifact_dir(directory)  # never pack something we would refuse to load
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in REQUIRED_FILES:
            tar.add(directory / name, arcname=name)
    os.replace(tmp, out_file)
    return sha256_file(out_file)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _check_digest(path: Path, expected: str, *, what: str) -> None:
    actual = sha256_file(path)
    if actual != _normalise(expected):
        raise ArtifactError(f"sha256 mismatch for {what}: expected {expected}, got {actual}")


def _normalise(digest: str | None) -> str | None:
    return digest.strip().lower().removeprefix("sha256:") if digest is not None else None


def _verified_tarball(tarball: Path, cache: Path, expected: str | None, cap: int) -> Artifact:
    digest = sha256_file(tarball)
    if expected is not None and expected != digest:
        # Not the archive's digest: it must be model.onnx's. Check that before writing a
        # byte, by inflating model.onnx in memory chunk by chunk (within the caps).
        model_digest = _member_digest(tarball, MODEL_FILE, cap)
        if model_digest != expected:
            raise ArtifactError(
                f"sha256 mismatch for {tarball}: expected {expected}, got {digest} for the "
                f"tarball and {model_digest or 'nothing'} for its {MODEL_FILE}"
            )
    unpacked = _unpack(tarball, digest, cache, cap)
    return read_artifact_dir(unpacked)


def _members(tar: tarfile.TarFile, tarball: Path, cap: int) -> Iterator[tarfile.TarInfo]:
    """The members, each checked from its header before its data is read or skipped."""
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise ArtifactError(
                f"{tarball} has more than {MAX_MEMBERS} members; an artifact has three files"
            )
        total += max(member.size, 0)
        if total > cap:
            raise ArtifactError(
                f"{tarball}: {member.name} is {member.size} bytes, and the members so far "
                f"{total} bytes, over the limit of {cap} bytes ({MAX_BYTES_ENV})"
            )
        yield member


def _member_digest(tarball: Path, name: str, cap: int) -> str | None:
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in _members(tar, tarball, cap):
                parts = [p for p in Path(member.name).parts if p not in (".", "")]
                if member.isfile() and parts and parts[-1] == name and len(parts) <= 2:
                    source = tar.extractfile(member)
                    if source is None:
                        return None
                    digest = hashlib.sha256()
                    with source:
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                    return digest.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"{tarball} is not a readable .tar.gz artifact: {exc}") from exc
    return None


def _download(url: str, cache: Path, expected: str | None, cap: int) -> Path:
    """Fetch ``url`` into the cache; a digest-addressed hit skips the network.

    The file is written under a temporary name and renamed into place only once it is
    complete and (when a digest is expected) verified.
    """
    cache.mkdir(parents=True, exist_ok=True)
    key = expected or hashlib.sha256(url.encode()).hexdigest()
    target = cache / f"{key[:32]}.tar.gz"
    if expected is not None and target.is_file():
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=cache)
    tmp = Path(tmp_name)
    try:
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            ):
                _copy_capped(resp, out, cap, url)
        except (urllib.error.URLError, OSError) as exc:
            raise ArtifactError(f"cannot download {url}: {exc}") from exc
        try:
            _verified_tarball(tmp, cache, expected, cap)
        except ArtifactError as exc:
            raise ArtifactError(f"{url}: {exc}") from exc
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _copy_capped(source: Any, out: Any, cap: int, url: str) -> None:
    declared = source.headers.get("content-length") if hasattr(source, "headers") else None
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ArtifactError(
            f"download of {url} is {declared} bytes, over the limit of {cap} bytes ({MAX_BYTES_ENV})"
        )
    total = 0
    while chunk := source.read(_CHUNK):
        total += len(chunk)
        if total > cap:
            raise ArtifactError(
                f"download of {url} is over the limit of {cap} bytes ({MAX_BYTES_ENV})"
            )
        out.write(chunk)


def _unpack(tarball: Path, digest: str, cache: Path, cap: int) -> Path:
    """Unpack into ``cache/unpacked/<digest>``: only the three artifact files, never outside it."""
    target = cache / "unpacked" / digest[:32]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for member in _members(tar, tarball, cap):
                    _extract_member(tar, member, staging)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArtifactError(f"{tarball} is not a readable .tar.gz artifact: {exc}") from exc
        read_artifact_dir(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # a concurrent loader winning the race is fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    # Artifacts are flat: "model.onnx", "./model.onnx" or "<one folder>/model.onnx". Names with
    # "..", absolute paths, links and devices are refused before anything touches the disk;
    # other regular files (a README, say) are skipped.
    path = Path(member.name)
    parts = [p for p in path.parts if p not in (".", "")]
    if path.is_absolute() or ".." in parts:
        raise ArtifactError(f"unsafe path in tarball: {member.name!r}")
    if member.isdir():
        return
    if not member.isfile():
        raise ArtifactError(f"tarball member {member.name!r} is not a regular file")
    if not parts or parts[-1] not in REQUIRED_FILES or len(parts) > 2:
        return
    source = tar.extractfile(member)
    if source is None:
        raise ArtifactError(f"cannot read tarball member {member.name!r}")
    with source, (dest / parts[-1]).open("wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
