"""The model artifact: a directory (or the same as ``.tar.gz``) with the model, its profile and card.

``load_artifact`` is the one way in. It accepts a local directory, a local ``.tar.gz`` or an
``http(s)://`` URL, and refuses anything it cannot vouch for: a missing file, a card that is
not valid JSON, a digest that does not match. Downloads land in a cache directory under a
temporary name and are renamed into place only once complete and verified, so a crash or a
concurrent loader never sees half a file.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
PROFILE_FILE = "profile.json"
CARD_FILE = "model.json"
REQUIRED_FILES = (MODEL_FILE, PROFILE_FILE, CARD_FILE)
CARD_KEYS = ("name", "version", "task", "inputs", "sha256")
DOWNLOAD_TIMEOUT_S = 60.0
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


def default_cache_dir() -> Path:
    base = os.environ.get("MLROLLOUT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "mlrollout" if base else Path.home() / ".cache" / "mlrollout"


def load_artifact(
    source: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Artifact:
    """Load and verify an artifact from a directory, a ``.tar.gz`` or an ``http(s)://`` URL.

    ``sha256``, when given, must be the digest of ``model.onnx`` (the one in ``model.json``)
    or, for a tarball, of the ``.tar.gz`` file itself. Raises ``ArtifactError`` on anything
    it cannot verify.
    """
    text = os.fspath(source)
    scheme = urllib.parse.urlsplit(text).scheme
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    expected = _normalise(sha256)
    if scheme in ("http", "https"):
        local = _download(text, cache, expected)
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
    return _verified_tarball(local, cache, expected)


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


def _verified_tarball(tarball: Path, cache: Path, expected: str | None) -> Artifact:
    unpacked, digest = _unpack(tarball, cache)
    artifact = read_artifact_dir(unpacked)
    if expected is not None and expected not in (digest, artifact.sha256):
        raise ArtifactError(
            f"sha256 mismatch for {tarball}: expected {expected}, got {digest} for the tarball "
            f"and {artifact.sha256} for its {MODEL_FILE}"
        )
    return artifact


def _download(url: str, cache: Path, expected: str | None) -> Path:
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
                shutil.copyfileobj(resp, out, _CHUNK)
        except (urllib.error.URLError, OSError) as exc:
            raise ArtifactError(f"cannot download {url}: {exc}") from exc
        try:
            _verified_tarball(tmp, cache, expected)
        except ArtifactError as exc:
            raise ArtifactError(f"{url}: {exc}") from exc
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _unpack(tarball: Path, cache: Path) -> tuple[Path, str]:
    """Unpack into ``cache/unpacked/<digest>``: only the three artifact files, never outside it."""
    digest = sha256_file(tarball)
    target = cache / "unpacked" / digest[:32]
    if target.is_dir():
        return target, digest
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for member in tar.getmembers():
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
    return target, digest


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
