"""Exclusive locks for runs that must never overlap (a sync of one repository, the nightly build).

An flock (through filelock) is released by the kernel when its holder dies, even by kill -9, so a lock is never
stale. The holder's pid is written beside it, so the run that is refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import Failure


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at `path` for the block; if another process holds it, fail at once naming its pid."""
    from filelock import FileLock, Timeout  # here: its import costs every task 10 ms

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    pidfile = path.with_name(path.name + ".pid")
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = pidfile.read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise Failure(f"another {what} is running (pid {holder}, lock {path}); wait for it to finish") from None
    try:
        tmp = pidfile.with_name(f"{pidfile.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, pidfile)
        yield
    finally:
        with contextlib.suppress(OSError):
            pidfile.unlink()
        lock.release()
