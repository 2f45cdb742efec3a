"""Exclusive locks for runs that must never overlap (a sync of one repository, the nightly build).

An flock is released by the kernel when its holder dies, even by kill -9, so a lock is never stale. The holder's
pid is written beside it, so the run that is refused can say who holds it. The lock file is opened without
following a link: a link planted at its place is refused, never written through. (filelock did the same flock
on Linux; importing it cost every locking task 10-15 ms.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import Failure


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at `path` for the block; if another process holds it, fail at once naming its pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise Failure(
            f"the lock {path} cannot be opened ({exc.strerror}); it must be a plain file: remove what is there"
        ) from None
    pidfile = path.with_name(path.name + ".pid")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = pidfile.read_text().strip() or "?"
            except OSError:
                holder = "?"
            raise Failure(f"another {what} is running (pid {holder}, lock {path}); wait for it to finish") from None
        except OSError as exc:  # a file system without flock (some network mounts)
            raise Failure(
                f"the lock {path} cannot be taken ({exc.strerror}): its file system has no flock; use a local disk"
            ) from None
        try:
            tmp = pidfile.with_name(f"{pidfile.name}.{os.getpid()}")
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, pidfile)
            yield
        finally:
            with contextlib.suppress(OSError):
                pidfile.unlink()
    finally:
        os.close(fd)  # the lock goes with the last descriptor of this open
