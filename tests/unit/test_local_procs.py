"""Process cleanup: a stopped or closed supervisor leaves no process of its group behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlrollout.operator.local.procs import ProcessError, Supervisor, descendants, wait_ready
from mlrollout.services.netutil import free_port

# A parent that forks a grandchild, prints its pid, and ignores SIGTERM: the worst case.
STUBBORN_TREE = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _wait_for_line(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text.strip().splitlines()[0]
        time.sleep(0.02)
    raise TimeoutError(f"nothing written to {path}")


def test_stop_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path, stop_timeout=0.5)
    try:
        proc = sup.start("tree", [sys.executable, "-c", STUBBORN_TREE])
        grandchild = int(_wait_for_line(proc.log_path))
        assert _pid_alive(proc.pid) and _pid_alive(grandchild)
        sup.stop("tree")
        assert not _pid_alive(proc.pid)
        assert not _pid_alive(grandchild)
        assert sup.names() == []
    finally:
        sup.close()


# Like BentoML's circus: the worker moves into a session of its own, out of our group.
ESCAPING_TREE = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def test_descendants_walks_the_whole_tree() -> None:
    table = {10: (1, 100), 11: (10, 110), 12: (11, 120), 13: (1, 130), 14: (10, 140)}
    assert descendants(10, table) == {(11, 110), (12, 120), (14, 140)}
    assert descendants(13, table) == set()


def test_children_in_their_own_session_are_stopped_too(tmp_path: Path) -> None:
    with Supervisor(tmp_path, stop_timeout=2) as sup:
        proc = sup.start("tree", [sys.executable, "-c", ESCAPING_TREE])
        worker = int(_wait_for_line(proc.log_path))
        try:
            assert os.getpgid(worker) != proc.pid  # really outside the group
            sup.stop("tree")
            assert not _pid_alive(worker)
        finally:
            if _pid_alive(worker):
                os.kill(worker, signal.SIGKILL)


def test_remembered_workers_are_stopped_after_their_parent_crashed(tmp_path: Path) -> None:
    with Supervisor(tmp_path, stop_timeout=2) as sup:
        proc = sup.start("tree", [sys.executable, "-c", ESCAPING_TREE])
        worker = int(_wait_for_line(proc.log_path))
        try:
            proc.remember_descendants()
            os.kill(proc.pid, signal.SIGKILL)  # the crash: the worker is orphaned
            proc.popen.wait(timeout=10)
            assert _pid_alive(worker)
            sup.stop("tree")
            assert not _pid_alive(worker)
        finally:
            if _pid_alive(worker):
                os.kill(worker, signal.SIGKILL)


def test_close_stops_everything_and_refuses_new_processes(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path, stop_timeout=2)
    procs = [sup.start(f"p{i}", ["sleep", "60"]) for i in range(3)]
    sup.close()
    assert [p.alive() for p in procs] == [False, False, False]
    with pytest.raises(ProcessError, match="closed"):
        sup.start("late", ["sleep", "1"])


def test_starting_a_name_again_replaces_the_old_process(tmp_path: Path) -> None:
    with Supervisor(tmp_path, stop_timeout=2) as sup:
        first = sup.start("x", ["sleep", "60"])
        second = sup.start("x", ["sleep", "60"])
        assert not first.alive() and second.alive()
    assert not second.alive()


def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as sup, pytest.raises(ProcessError, match="no-such-binary"):
        sup.start("bad", ["/nonexistent/no-such-binary"])


def test_output_goes_to_the_log_and_is_quoted_back(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as sup:
        proc = sup.start("echo", [sys.executable, "-c", "print('hello from child')"])
        proc.popen.wait(timeout=10)
        assert "hello from child" in proc.log_tail()
        assert proc.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_children_die_with_a_killed_parent(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM runs the cleanup handlers; SIGKILL runs nothing, so PDEATHSIG must do it."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from mlrollout.operator.local.procs import Supervisor, install_signal_handlers
        install_signal_handlers()
        sup = Supervisor(Path({str(tmp_path)!r}), stop_timeout=2)
        try:
            p = sup.start("sleeper", ["sleep", "60"])
            print(p.pid, flush=True)
            time.sleep(60)
        finally:
            sup.close()
        """
    )
    out = tmp_path / "parent.out"
    with out.open("w") as fh:
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=fh)
    child = 0
    try:
        child = int(_wait_for_line(out, timeout=20))
        assert _pid_alive(child)
        parent.send_signal(sig)
        parent.wait(timeout=20)
        deadline = time.monotonic() + 10
        while _pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and _pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_wait_ready_fails_fast_with_the_log_when_the_process_exits(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as sup:
        proc = sup.start("bad", [sys.executable, "-c", "print('port in use'); raise SystemExit(3)"])
        # exits -> "exited with code 3"; a timeout would say "not ready within"
        with pytest.raises(ProcessError, match="exited with code 3") as info:
            wait_ready(proc, f"http://127.0.0.1:{free_port()}/healthz", timeout=60)
        assert "port in use" in str(info.value)
