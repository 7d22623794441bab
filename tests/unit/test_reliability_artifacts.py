"""Hostile artifacts (issue 12 item 6): the archive digest is checked before anything is
extracted, extraction and downloads are capped in bytes (and members in number), and a
member that declares more than the cap is refused from its header, before it is inflated.

Before the fix a 2 MB tarball holding a 2 GiB file was extracted in full, even with a
wrong ``--sha256``, and only then refused.
"""

from __future__ import annotations

import http.server
import io
import shutil
import tarfile
import threading
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from mlrollout.services.model import artifact as art
from mlrollout.services.model.artifact import ArtifactError, load_artifact, pack_artifact

from tests.doubles.model import numeric_artifact

_CACHE: dict[str, Path] = {}


@pytest.fixture()
def artifact_dir(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    if "dir" not in _CACHE:
        _CACHE["dir"] = numeric_artifact(tmp_path_factory.mktemp("export") / "tiny")
    copy = tmp_path / "artifact"
    shutil.copytree(_CACHE["dir"], copy)
    return copy


class ZeroStream(io.RawIOBase):
    """``size`` zero bytes, produced as read (no 2 GiB buffer in the test either)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def bomb(path: Path, size: int, name: str = "model.onnx", level: int = 1) -> Path:
    """A .tar.gz whose one member is ``size`` zero bytes (a 64 MiB one packs to ~64 KB)."""
    with tarfile.open(path, "w:gz", compresslevel=level) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BufferedReader(ZeroStream(size)))
    return path


def extracted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of members written to disk (the extraction step, recorded)."""
    calls: list[str] = []
    real = art._extract_member

    def spy(*args: object, **kwargs: object) -> object:
        member = args[1]
        calls.append(member.name)  # type: ignore[attr-defined]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(art, "_extract_member", spy)
    return calls


def test_a_wrong_digest_is_refused_before_anything_is_extracted(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = tmp_path / "a.tar.gz"
    pack_artifact(artifact_dir, tar)
    written = extracted(monkeypatch)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(tar, sha256="f" * 64, cache_dir=tmp_path / "cache")
    assert written == []
    assert not list((tmp_path / "cache").rglob("model.onnx"))


def test_a_right_model_digest_still_loads_a_tarball(artifact_dir: Path, tmp_path: Path) -> None:
    tar = tmp_path / "a.tar.gz"
    pack_artifact(artifact_dir, tar)
    digest = art.sha256_file(artifact_dir / "model.onnx")
    assert load_artifact(tar, sha256=digest, cache_dir=tmp_path / "c").sha256 == digest


def test_a_member_over_the_cap_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = bomb(tmp_path / "bomb.tar.gz", 64 << 20)
    assert tar.stat().st_size < 1 << 20  # a small download...
    written = extracted(monkeypatch)
    with pytest.raises(ArtifactError, match=r"model.onnx is 67108864 bytes.*limit of 16777216"):
        load_artifact(tar, cache_dir=tmp_path / "cache", max_bytes=16 << 20)
    assert written == []  # ...refused before a byte of it was inflated to disk
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_2_gib_member_with_a_wrong_digest_is_refused_at_once(tmp_path: Path) -> None:
    """The issue's case at its real size: 2 GiB of zeros in a ~2 MB tarball."""
    tar = tmp_path / "bomb.tar.gz"
    # Written by hand: a tar header declaring 2 GiB, then deflate of zeros (fast to make).
    size = 2 << 30
    info = tarfile.TarInfo("model.onnx")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with tar.open("wb") as out:
        out.write(comp.compress(header))
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(comp.compress(block))
        out.write(comp.compress(bytes(1024)) + comp.flush())
    assert tar.stat().st_size < 4 << 20
    for digest in ("0" * 64, None):  # wrong digest: refused unread; none: refused by the cap
        with pytest.raises(ArtifactError, match=r"sha256 mismatch|limit of"):
            load_artifact(tar, sha256=digest, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_many_members_are_refused(tmp_path: Path) -> None:
    tar = tmp_path / "many.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        for i in range(art.MAX_MEMBERS + 1):
            info = tarfile.TarInfo(f"junk/{i}.txt")
            info.size = 1
            out.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArtifactError, match=f"more than {art.MAX_MEMBERS} members"):
        load_artifact(tar, cache_dir=tmp_path / "cache")


def test_the_cap_counts_every_member_together(artifact_dir: Path, tmp_path: Path) -> None:
    tar = tmp_path / "a.tar.gz"
    pack_artifact(artifact_dir, tar)
    total = sum((artifact_dir / n).stat().st_size for n in art.REQUIRED_FILES)
    with pytest.raises(ArtifactError, match="limit of"):
        load_artifact(tar, cache_dir=tmp_path / "c1", max_bytes=total - 1)
    assert load_artifact(tar, cache_dir=tmp_path / "c2", max_bytes=total).version == "v1"


def test_the_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLROLLOUT_MAX_ARTIFACT_BYTES", "12345")
    assert art.max_artifact_bytes() == 12345
    monkeypatch.setenv("MLROLLOUT_MAX_ARTIFACT_BYTES", "lots")
    with pytest.raises(ArtifactError, match="MLROLLOUT_MAX_ARTIFACT_BYTES"):
        art.max_artifact_bytes()


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


def test_a_download_over_the_cap_is_cut_off(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "big.tar.gz").write_bytes(bytes(3 << 20))
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match=r"download .* over the limit of 1048576 bytes"):
        load_artifact(f"{base}/big.tar.gz", cache_dir=cache, max_bytes=1 << 20)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_a_wrong_digest_on_a_download_extracts_nothing(
    artifact_dir: Path, tmp_path: Path, http_root: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = http_root
    pack_artifact(artifact_dir, root / "a.tar.gz")
    written = extracted(monkeypatch)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(f"{base}/a.tar.gz", sha256="e" * 64, cache_dir=tmp_path / "cache")
    assert written == []
