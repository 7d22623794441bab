"""Artifact loading: directories, tarballs, URLs; every refusal is an ArtifactError saying why."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from mlrollout.services.model.artifact import (
    ArtifactError,
    load_artifact,
    pack_artifact,
    sha256_file,
)

from tests.doubles.model import numeric_artifact

_CACHE: dict[str, Path] = {}


@pytest.fixture()
def artifact_dir(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A fresh copy of one exported artifact (exported once per module)."""
    if "dir" not in _CACHE:
        _CACHE["dir"] = numeric_artifact(tmp_path_factory.mktemp("export") / "tiny")
    copy = tmp_path / "artifact"
    shutil.copytree(_CACHE["dir"], copy)
    return copy


def test_loads_a_directory(artifact_dir: Path) -> None:
    art = load_artifact(artifact_dir)
    assert (art.name, art.version) == ("tiny", "v1")
    assert art.sha256 == sha256_file(artifact_dir / "model.onnx")
    assert art.profile["features"][0]["name"] == "a"


@pytest.mark.parametrize("missing", ["model.onnx", "profile.json", "model.json"])
def test_missing_file_is_refused(artifact_dir: Path, missing: str) -> None:
    (artifact_dir / missing).unlink()
    with pytest.raises(ArtifactError, match=missing):
        load_artifact(artifact_dir)


def test_tampered_model_is_refused(artifact_dir: Path) -> None:
    with (artifact_dir / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=r"sha256 mismatch.*per model.json"):
        load_artifact(artifact_dir)


def test_corrupt_card_is_refused(artifact_dir: Path) -> None:
    (artifact_dir / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"model.json is not readable JSON"):
        load_artifact(artifact_dir)


def test_card_without_required_keys_is_refused(artifact_dir: Path) -> None:
    card = json.loads((artifact_dir / "model.json").read_text())
    del card["inputs"]
    (artifact_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"lacks required keys: inputs"):
        load_artifact(artifact_dir)


def test_expected_digest_is_checked_for_directories(artifact_dir: Path, tmp_path: Path) -> None:
    good = sha256_file(artifact_dir / "model.onnx")
    assert load_artifact(artifact_dir, sha256=good).sha256 == good
    with pytest.raises(ArtifactError, match=r"sha256 mismatch"):
        load_artifact(artifact_dir, sha256="0" * 64)


def test_tarball_round_trip_and_digest(artifact_dir: Path, tmp_path: Path) -> None:
    tar = tmp_path / "a.tar.gz"
    digest = pack_artifact(artifact_dir, tar)
    art = load_artifact(tar, sha256=digest, cache_dir=tmp_path / "cache")
    assert art.path.parent == tmp_path / "cache" / "unpacked"
    assert art.sha256 == sha256_file(artifact_dir / "model.onnx")
    with pytest.raises(ArtifactError, match=r"sha256 mismatch"):
        load_artifact(tar, sha256="f" * 64, cache_dir=tmp_path / "cache")


def test_tarball_accepts_the_model_digest_too(artifact_dir: Path, tmp_path: Path) -> None:
    """spec.model.sha256 may be the digest in model.json, whatever the packaging."""
    tar = tmp_path / "a.tar.gz"
    pack_artifact(artifact_dir, tar)
    model_digest = sha256_file(artifact_dir / "model.onnx")
    art = load_artifact(tar, sha256=f"sha256:{model_digest.upper()}", cache_dir=tmp_path / "c")
    assert art.sha256 == model_digest


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("name", ["../model.onnx", "/tmp/model.onnx", "a/../../profile.json"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    tar = _tar_with(tmp_path / "evil.tar.gz", [_file(name, b"x")])
    with pytest.raises(ArtifactError, match=r"unsafe path"):
        load_artifact(tar, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "model.onnx").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("model.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    tar = _tar_with(tmp_path / "link.tar.gz", [(link, None)])
    with pytest.raises(ArtifactError, match=r"not a regular file"):
        load_artifact(tar, cache_dir=tmp_path / "cache")


def test_corrupt_tarball_is_refused_and_leaves_no_partial_unpack(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(ArtifactError, match=r"not a readable .tar.gz"):
        load_artifact(bad, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []


def test_incomplete_tarball_is_refused(artifact_dir: Path, tmp_path: Path) -> None:
    tar = _tar_with(
        tmp_path / "half.tar.gz", [_file("model.onnx", (artifact_dir / "model.onnx").read_bytes())]
    )
    with pytest.raises(ArtifactError, match=r"missing profile.json, model.json"):
        load_artifact(tar, cache_dir=tmp_path / "cache")


def test_missing_path_and_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"does not exist"):
        load_artifact(tmp_path / "nope")
    with pytest.raises(ArtifactError, match=r"unsupported scheme 's3'"):
        load_artifact("s3://bucket/model.tar.gz")


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_download_verifies_and_caches(
    artifact_dir: Path, tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base, root = http_root
    digest = pack_artifact(artifact_dir, root / "tiny.tar.gz")
    cache = tmp_path / "cache"
    art = load_artifact(f"{base}/tiny.tar.gz", sha256=digest, cache_dir=cache)
    assert art.version == "v1"
    # A second load is served from the digest-addressed cache, even with the server file gone.
    (root / "tiny.tar.gz").unlink()
    assert load_artifact(f"{base}/tiny.tar.gz", sha256=digest, cache_dir=cache).path == art.path
    assert not [p for p in cache.iterdir() if p.name.startswith(".download-")]


def test_url_digest_mismatch_leaves_nothing_in_cache(
    artifact_dir: Path, tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base, root = http_root
    pack_artifact(artifact_dir, root / "tiny.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match=r"sha256 mismatch"):
        load_artifact(f"{base}/tiny.tar.gz", sha256="a" * 64, cache_dir=cache)
    assert [p.name for p in cache.iterdir() if p.is_file()] == []  # no download kept


def test_url_not_found_is_a_clear_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    with pytest.raises(ArtifactError, match=r"cannot download .*404"):
        load_artifact(f"{base}/missing.tar.gz", cache_dir=tmp_path / "cache")
