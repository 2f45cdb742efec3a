"""Where fork-sync keeps its state, and the journal of a move of a checked-out branch (carry.py does the moving).

Everything lives in the repository's common git dir, under forkdev/: the lock (one sync per repository: its
worktrees share the branches), the journal, and a scratch folder for temporary indexes, so that a killed run
leaves nothing in /tmp and the next run finds what it needs. The journal is written whole or not at all
(written and fsynced beside its place, renamed over it, the folder fsynced), before the first change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure
from .gitrepo import Repo

SYNC_REFS = "refs/forkdev/sync"
SNAPSHOTS = ("index", "tree", "index_after", "tree_after")


@dataclass(frozen=True)
class Place:
    """A checkout and fork-sync's own files: the lock, the journal and scratch indexes live in the repository's
    common git dir (one sync per repository); the index is the worktree's."""

    repo: Repo
    git_dir: Path
    home: Path  # <git-common-dir>/forkdev

    @classmethod
    def of(cls, repo: Repo) -> Place:
        git_dir, common = repo.out("rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir").split("\n")
        return cls(repo, Path(git_dir), Path(common) / "forkdev")

    @property
    def lock(self) -> Path:
        return self.home / "fork-sync.lock"

    @property
    def journal(self) -> Path:
        return self.home / "fork-sync.journal"

    @property
    def scratch(self) -> Path:
        return self.home / "scratch"

    def shielded(self) -> Place:
        """The same place, its git commands in their own session: a Ctrl-C to our process group misses them."""
        run = dataclasses.replace(self.repo.run, shielded=True)
        return dataclasses.replace(self, repo=dataclasses.replace(self.repo, run=run))

    def refuse_index_lock(self) -> None:
        lock = self.git_dir / "index.lock"
        if lock.exists():
            raise Failure(
                f"'{lock}' exists: another git command is using '{self.repo.path}', or one was killed; if none "
                f"is running, remove it (rm '{lock}') and run fork-sync again; nothing was changed"
            )


@contextlib.contextmanager
def scratch(place: Place) -> Iterator[Path]:
    """An empty scratch folder for the sync's temporary indexes (one left by a killed run is removed first)."""
    if place.scratch.exists():
        shutil.rmtree(place.scratch)
    place.scratch.mkdir(parents=True)
    try:
        yield place.scratch
    finally:
        shutil.rmtree(place.scratch)


@dataclass(frozen=True)
class Move:
    """A move of a checked-out branch and the user's work: what the journal holds. Snapshots are commits."""

    worktree: str  # the checkout's top level
    branch: str
    before: str  # the branch's tip when the sync began
    new: str  # the commit it moves to
    index: str  # I, on `before`
    tree: str  # W, on `before`
    index_after: str  # I', on `new`
    tree_after: str  # W', on `new`
    pid: int = 0
    started: str = ""
    direct: bool = False  # a clean checkout, moved by one read-tree of the real index (carry._direct)

    @property
    def carries_work(self) -> bool:
        return self.index != self.before or self.tree != self.before

    def refs(self) -> dict[str, str]:
        return {f"{SYNC_REFS}/{name}": getattr(self, name) for name in (*SNAPSHOTS, "new")}


def write_journal(path: Path, move: Move) -> None:
    """Whole or not at all: written and fsynced beside its place, then renamed over it (and the folder fsynced)."""
    data = json.dumps({"version": 1, **dataclasses.asdict(move)}, indent=2).encode() + b"\n"
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_journal(path: Path) -> Move | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if data.pop("version") != 1:
            raise ValueError("unknown version")
        return Move(**data)
    except (ValueError, KeyError, TypeError) as exc:
        raise Failure(
            f"the fork-sync journal '{path}' cannot be read ({exc}); the work it was about is kept in "
            f"{SYNC_REFS}/ (git for-each-ref {SYNC_REFS}): check 'git status', then remove the file"
        ) from None


def remove_journal(path: Path) -> None:
    path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
