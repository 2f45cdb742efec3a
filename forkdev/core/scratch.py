"""Scratch directories named after the process that made them, so that a later run removes what a killed run
(kill -9 leaves no chance to clean up) left behind: only our own directories, only when their process is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch(purpose: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh directory `forkdev-<purpose>-<pid>-*` for the block, removed after it whatever happens."""
    root = Path(parent or tempfile.gettempdir())
    sweep(root)  # every purpose: a killed full build's context is gone even if the next run builds thin
    path = Path(tempfile.mkdtemp(prefix=f"forkdev-{purpose}-{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(root: Path | None = None, purpose: str = "*") -> list[Path]:
    """Remove `forkdev-<purpose>-<pid>-<random>` directories of ours (of any purpose by default) whose process
    no longer runs; returns them. mkdtemp's random part has no '-', so the pid is the second field from the end."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"forkdev-{purpose}-*-*"):
        pid = path.name.rsplit("-", 2)[-2]
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not pid.isdigit() or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (ours or another user's); pids of 0 or less count as alive."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
