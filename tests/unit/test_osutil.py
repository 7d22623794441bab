"""The shared OS helpers: atomic writes and the process-alive check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlrollout.services.osutil import pid_alive, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    target.write_text("old")
    write_atomic(target, "new", fsync=True)
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "\udcff")  # a lone surrogate cannot be encoded
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_pid_alive_tells_a_running_process_from_a_reaped_one() -> None:
    assert pid_alive(os.getpid())
    code = "import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    pgid = child.pid  # a new session's leader: its group id is its pid
    assert pid_alive(child.pid) and pid_alive(pgid, group=True)
    child.kill()
    child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(pgid, group=True)
