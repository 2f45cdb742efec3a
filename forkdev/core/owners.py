"""Who owns the containers run, shell and smoke start, so that a later run removes only what a dead one left.

A process that starts such a container first claims a folder `<cache>/run/owners/<pid>-<random>/` and holds an
flock on its `lock` file for as long as it lives; each container it starts carries that file's path in its
`dev.forkdev.owner` label (and its private files, the secrets among them, live in the same folder). The kernel
drops an flock when its holder dies, kill -9 included, whatever PID namespace or host name it ran under, so a
lock nobody holds proves the owner gone. Nothing else does: a pid means nothing in another PID namespace (a CI
job's container with the host's name), and a lock file this machine does not have (another machine's, another
container's cache) proves nothing either. A `--keep` container carries no owner label: no sweep removes it.

Claims and sweeps take one lock on the owners folder (shared to claim, exclusive to look), so a sweep never
sees a claim half made.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from . import cache as store
from . import labels as L
from . import ui
from .engine import Engine
from .errors import Failure
from .proc import Runner

LOCK = "lock"


def folder(cache: Path) -> Path:
    """`<cache>/run/owners`, inside `<cache>/run` that only we can enter (0700): what is in it is ours alone."""
    owners = store.owners(cache.resolve())
    owners.parent.mkdir(parents=True, exist_ok=True)
    owners.parent.chmod(0o700)
    owners.mkdir(exist_ok=True)
    return owners


@contextlib.contextmanager
def _guard(owners: Path, how: int) -> Iterator[None]:
    """The owners folder's own lock: shared while a claim is made, exclusive while a sweep looks."""
    fd = os.open(owners.with_name("owners.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # and with it the lock


def _take(lock: Path) -> int | None:
    """An fd holding `lock`'s flock, or None when its owner (or a sweep) holds it. O_RDWR: on NFS an flock is a
    POSIX lock, which an exclusive lock needs a writable file for."""
    fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Claim:
    """This process's claim on the containers it starts (one per cache, held until the process ends)."""

    def __init__(self, cache: Path, engine: Engine, run: Runner) -> None:
        owners = folder(cache)
        with _guard(owners, fcntl.LOCK_SH):
            self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=owners))
            self.lock = self.folder / LOCK
            self._fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._engine, self._run = engine, run
        self._started: set[str] = set()  # names of the owned containers it may still have

    @classmethod
    def planned(cls, cache: Path, engine: Engine, run: Runner) -> Claim:
        """What a dry run shows: the names and paths a claim gives, with nothing made (no folder, no lock)."""
        self = cls.__new__(cls)
        self.folder = store.owners(cache.resolve()) / f"{os.getpid()}-dry-run"
        self.lock, self._fd = self.folder / LOCK, None
        self._engine, self._run, self._started = engine, run, set()
        return self

    def container(self, purpose: str, *, keep: bool = False) -> tuple[str, dict[str, str]]:
        """A fresh container name (forkdev-<purpose>-<pid>-<random>: pids repeat across PID namespaces) and its
        labels; owned unless `keep`, which no sweep may remove."""
        name = f"forkdev-{purpose}-{os.getpid()}-{secrets.token_hex(4)}"
        found = {L.RUN: purpose, L.HOST: socket.gethostname()}
        if not keep:
            found[L.OWNER] = str(self.lock)
            self._started.add(name)
        return name, found

    def private(self, name: str) -> Path:
        """A new directory for one container's private files (mounted read-only); gone when the claim ends."""
        path = self.folder / name
        path.mkdir(mode=0o755)
        path.chmod(0o755)  # whatever the umask: the image's own user reads it
        return path

    def gone(self, name: str) -> None:
        """The container is known to be removed (its `run --rm` returned, its `rm --force` succeeded)."""
        self._started.discard(name)

    def release(self) -> None:
        """End the claim: the private files go at once; the folder too, unless a container it owns may still
        be there (a removal failed), whose next sweep then removes both."""
        if self._fd is None:
            return
        for path in self.folder.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        left: list[str] | None = []
        if self._started:
            # Asked without an echo: this runs as the process exits, after the task's last line (its error, say).
            quiet = dataclasses.replace(self._run, echo=False)
            try:
                left = _listed(self._engine, quiet, self.lock, timeout=30)
            except Failure:  # the engine does not answer: keep the lock for a later sweep
                left = None
        if left == []:
            shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


_claims: dict[Path, Claim] = {}
_claims_lock = threading.Lock()


def claim(cache: Path, engine: Engine, run: Runner) -> Claim:
    """This process's claim under `cache`, made on first use and released when the process exits (under a dry
    run, one that makes nothing)."""
    if run.dry_run:
        return Claim.planned(cache, engine, run)
    key = cache.resolve()
    with _claims_lock:
        if key not in _claims:
            if not _claims:
                atexit.register(_release_all)
            _claims[key] = Claim(key, engine, run)
        return _claims[key]


def _release_all() -> None:
    for own in list(_claims.values()):
        own.release()
    _claims.clear()


def _listed(engine: Engine, run: Runner, lock: Path, timeout: float | None = None) -> list[str] | None:
    """Names of the containers owned through `lock`; None when the engine cannot say."""
    res = run(
        engine.cmd("ps", "-a", "--filter", f"label={L.OWNER}={lock}", "--format", "{{.Names}}"),
        mutates=False,
        check=False,
        timeout=timeout,
    )
    return res.out.split() if res.ok else None


@contextlib.contextmanager
def unheld(cache: Path) -> Iterator[list[Path]]:
    """The claim folders under `cache` whose owner is gone, their locks held by us for the block (so no other
    sweep works on them meanwhile). A folder whose lock another process holds is not among them. Where no claim
    was ever made there is nothing to sweep, and nothing is made (a dry run looks, too)."""
    if not store.owners(cache.resolve()).is_dir():
        yield []
        return
    owners = folder(cache)
    dead: list[Path] = []
    fds: list[int] = []
    try:
        with _guard(owners, fcntl.LOCK_EX):
            for path in sorted(owners.iterdir()):
                try:
                    if not stat.S_ISDIR(path.lstat().st_mode):
                        continue
                    fd = _take(path / LOCK)
                except FileNotFoundError:  # a claim killed before it locked (claims are atomic to us), or ending
                    dead.append(path)
                    continue
                except OSError:  # not a lock we made (a symlink, another user's): it proves nothing
                    continue
                if fd is not None:
                    fds.append(fd)
                    dead.append(path)
        yield dead
    finally:
        for fd in fds:
            os.close(fd)


def sweep(engine: Engine, run: Runner, cache: Path) -> list[str]:
    """Remove the containers, and the claim folders, of owners under `cache` that are gone; returns the names.
    The engine is asked only about a dead owner's containers: usually there is none, and nothing to ask."""
    removed = []
    with unheld(cache) as dead:
        for path in dead:
            names = _listed(engine, run, path / LOCK) if (path / LOCK).exists() else []
            if names is None:
                continue  # the engine cannot say: leave them for a later sweep
            left = False
            for name in names:
                ui.info(f"removing {name}, left by a run that was killed")
                if run(engine.cmd("rm", "--force", name), check=False).ok:
                    removed.append(name)
                else:
                    left = True
            if not left and not run.dry_run:
                shutil.rmtree(path, ignore_errors=True)
    return removed
