"""Two small operating-system helpers the operator and the services share.

``write_atomic``: a reader (the router watching its table, ``mlrollout get`` reading a run
file, a plot reading a timeline) sees the old file or the new one, never half of one:
write a temp file in the same directory, then rename it over the target.
``pid_alive``: whether a process (or a process group) still exists; a process owned by
another user counts as alive.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace ``path`` with ``text`` in one rename; ``fsync`` also survives a power cut."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int, *, group: bool = False) -> bool:
    """Whether process ``pid`` (with ``group``: process group ``pid``) exists."""
    try:
        if group:
            os.killpg(pid, 0)
        else:
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
