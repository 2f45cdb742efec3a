"""The exact files a build sees: the checkout's working tree as git knows it (tracked files, uncommitted edits,
untracked files that are not ignored; submodules included), copied to a scratch directory. Ignored files (an old
build/, a stale .so) and the secret paths (core/secrets.py; tracked or not) never reach the build, and the
user's checkout is only read."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from . import secrets
from .gitrepo import Repo, z_paths


@dataclass(frozen=True)
class Source:
    uri: str  # the origin's URL, else file://<checkout>
    commit: str
    dirty: bool
    files: tuple[str, ...]  # relative paths, sorted

    def tree_sha256(self, root: Path) -> str:
        """One hash of every path, mode and content under `root` that the build saw."""
        h = hashlib.sha256()
        for rel in self.files:
            p = root / rel
            st = os.lstat(p)
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + oct(st.st_mode).encode() + b"\0")
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode("utf-8", "surrogateescape"))
            else:
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            h.update(b"\0")
        return h.hexdigest()


def describe(repo: Repo, hidden: secrets.Paths) -> Source:
    """What `export` would copy, and the commit and dirtiness it stands for (a changed secret path is none);
    reads only."""
    commit = repo.resolve("HEAD", "commit (HEAD)")
    status = repo.git("status", "--porcelain", "-z", "--untracked-files=all", "--ignore-submodules=none")
    url = secrets.public_url(repo.url())
    uri = url if url else f"file://{repo.path}"
    dirty = bool(hidden.keep(_status_paths(status.stdout)))
    return Source(uri, commit, dirty, tuple(sorted(_files(repo, "", hidden))))


def _status_paths(raw: bytes) -> list[str]:
    """The paths of `git status --porcelain -z` ("XY path", a rename's or copy's source as the next field)."""
    found, fields = [], z_paths(raw)
    i = 0
    while i < len(fields):
        found.append(fields[i][3:])
        i += 2 if set(fields[i][:2]) & {"R", "C"} else 1
    return found


def _files(repo: Repo, prefix: str, hidden: secrets.Paths) -> list[str]:
    listed = repo.run(
        [
            "git",
            "-C",
            str(repo.path / prefix) if prefix else str(repo.path),
            "ls-files",
            "-co",
            "--exclude-standard",
            "-z",
        ],
        mutates=False,
    )
    found = []
    for rel in filter(None, listed.stdout.decode("utf-8", "surrogateescape").split("\0")):
        path = f"{prefix}{rel}"
        if hidden.hidden(path):
            continue
        full = repo.path / path
        if full.is_dir() and not full.is_symlink():
            if (full / ".git").exists():  # a submodule: its own files
                found += _files(repo, path + "/", hidden)
            continue
        if os.path.lexists(full):  # a tracked file deleted in the working tree is not part of it
            found.append(path)
    return found


def export(repo: Repo, source: Source, dest: Path) -> None:
    """Copy `source.files` from the checkout to `dest` (symlinks as symlinks, modes kept)."""
    for rel in source.files:
        src, out = repo.path / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)


def hand_over(root: Path, uid: int, gid: int) -> None:
    """Give the tree to the build user of an image (when we run as root and it does not)."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
