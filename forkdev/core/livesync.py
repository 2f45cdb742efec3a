"""Live sync: keep a running container in step with the checkout. Each saved change of a shipped file (edit, new
file or folder, deletion of either, a file that became a folder or a link) is copied in (a tar streamed through
`cp -`, so a big file never sits in memory) or removed, within a fraction of a second; ignored files and the
secret paths (core/secrets.py, whatever git says of them) never travel, native sources are refused as
`invoke dev` refuses them, and a restart pattern restarts the server.

Nothing is written or removed through a link inside the container: before a path's first write, and before any
removal, a small script (as root, in the container) makes sure that every folder on the way is a real folder
(a link or a file where the checkout now has a folder is replaced) and that a folder does not sit where the
checkout now has a file. What it made sure of is remembered, so repeated saves go straight to `cp`.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import threading
import time
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import secrets, ui
from .base import Location
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo, z_paths
from .proc import Runner

if TYPE_CHECKING:
    from . import nativebuild

# Kills the processes whose command line holds $1, but PID 1 (the prologue that restarts them) and itself.
RESTART = (
    'pat=$1; for d in /proc/[0-9]*; do pid=${d#/proc/}; [ "$pid" = 1 ] && continue; [ "$pid" = $$ ] && continue; '
    'cmd=$(tr "\\000" " " < "$d/cmdline" 2>/dev/null) || continue; '
    'case "$cmd" in *"$pat"*) kill "$pid" 2>/dev/null || :;; esac; done'
)

# $1: the folder the paths are under (never touched itself), then pairs of an operation and a path below it:
# d (remove whatever is there), D (a folder), f (a file or link comes next, by cp). Every folder on the way must be
# a real one: for a removal, a link or a missing folder on the way means the path is not there; for a write, a
# link or a file on the way is replaced by a folder. Links are never followed: -L is asked before -e and -d.
PREPARE = """set -e
root=$1; shift
while [ $# -gt 1 ]; do
  op=$1; rest=$2; shift 2; cur=$root; ok=1
  while :; do
    case $rest in */*) part=${rest%%/*}; rest=${rest#*/} ;; *) break ;; esac
    cur=$cur/$part
    if [ -L "$cur" ] || { [ -e "$cur" ] && [ ! -d "$cur" ]; }; then
      if [ "$op" = d ]; then ok=0; break; fi
      rm -f -- "$cur"
    fi
    if [ ! -d "$cur" ]; then
      if [ "$op" = d ]; then ok=0; break; fi
      mkdir -- "$cur"
    fi
  done
  [ "$ok" = 1 ] || continue
  cur=$cur/$rest
  case $op in
    d) rm -rf -- "$cur" ;;
    D) if [ -L "$cur" ] || { [ -e "$cur" ] && [ ! -d "$cur" ]; }; then rm -f -- "$cur"; fi
       [ -d "$cur" ] || mkdir -- "$cur" ;;
    f) if [ -d "$cur" ] && [ ! -L "$cur" ]; then rm -rf -- "$cur"; fi ;;
  esac
done
"""
PER_CALL = 500  # paths per call of the script: a branch switch changes thousands


def changed_paths(repo: Repo, raw: set[str], hidden: secrets.Paths) -> list[str]:
    """Repository paths of changed files, without .git, the secret paths and what git ignores."""
    rel = sorted({os.path.relpath(p, repo.path) for p in raw})
    rel = hidden.keep(p for p in rel if not p.startswith(("..", ".git/")) and p != ".git")
    rel = [p for p in rel if p != "."]  # the checkout itself (its own times changed)
    if not rel:
        return []
    # A path that is gone is also asked as a folder ("build/"): a pattern for folders only cannot match it else.
    gone = [f"{p}/" for p in rel if not os.path.lexists(repo.path / p)]
    asked = "\0".join(rel + gone).encode("utf-8", "surrogateescape")
    res = repo.git("check-ignore", "--stdin", "-z", "--no-index", input=asked, check=False)
    ignored = {p.rstrip("/") for p in z_paths(res.stdout)}
    return [p for p in rel if p not in ignored]


def with_new_folders(repo: Repo, raw: set[str], added: set[str]) -> set[str]:
    """The raw paths plus what git would ship inside folders that were just made (a watcher misses what is
    written into a folder before it watches that folder: `mkdir -p a/b && touch a/b/f`, `cp -r`)."""
    found = set(raw)
    for path in sorted(added):
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            continue
        rel = os.path.relpath(path, repo.path)
        if not is_dir or rel.startswith("..") or rel == ".":
            continue
        listed = repo.git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", f"{rel}/", check=False)
        found.update(str(repo.path / p) for p in z_paths(listed.stdout))
    return found


@dataclass(frozen=True)
class Step:
    op: str  # "d" remove, "D" a folder, "f" a regular file, "l" a symlink
    rel: str  # the repository path
    below: str  # the image path, relative to the plan's root


@dataclass(frozen=True)
class Plan:
    root: str  # the image folder the paths are under: the source tree, or the package in site-packages
    steps: list[Step]
    skipped: list[str]  # paths with no place in the image


def plan(repo: Repo, paths: list[str], location: Location, target: Target) -> Plan:
    """What each changed path is now in the checkout, read without following links: a path under a symlinked
    folder is no path of the checkout (git does not follow links either) and is left out."""
    root = posixpath.normpath(location.image_path(location.mapped_root(target.package_path), target.package_path))
    steps, skipped = [], []
    for rel in paths:
        inside = location.image_path(rel, target.package_path)
        below = posixpath.relpath(inside, root) if inside is not None else ".."
        if below == "." or below.startswith("../") or below == "..":
            skipped.append(rel)
            continue
        op = _kind(repo.path, rel)
        if op is not None:
            steps.append(Step(op, rel, below))
    return Plan(root, steps, skipped)


def _kind(top: Path, rel: str) -> str | None:
    parts = rel.split("/")
    for i in range(1, len(parts)):
        try:
            st = os.lstat(top.joinpath(*parts[:i]))
        except OSError:
            return "d"  # a folder on the way is gone: so is the path
        if stat.S_ISLNK(st.st_mode):
            return None
        if not stat.S_ISDIR(st.st_mode):
            return "d"
    try:
        mode = os.lstat(top / rel).st_mode
    except OSError:
        return "d"
    if stat.S_ISDIR(mode):
        return "D"
    if stat.S_ISLNK(mode):
        return "l"
    return "f" if stat.S_ISREG(mode) else None  # a fifo, a socket: nothing to copy


class Mirror:
    """One running container kept in step with the checkout."""

    def __init__(
        self,
        engine: Engine,
        run: Runner,
        repo: Repo,
        name: str,
        location: Location,
        target: Target,
        restart: str | None,
        hidden: secrets.Paths,
        native: nativebuild.Live | None = None,
    ) -> None:
        self.engine, self.run, self.repo, self.name = engine, run, repo, name
        self.location, self.target, self.restart, self.hidden = location, target, restart, hidden
        self.native = native  # --native: native sources sync too, and rebuild the compiled files they make
        self.known: dict[str, str] = {}  # image path below the root -> "d" / "f" / "l", as made sure in the container

    def sync(self, raw: set[str], added: Set[str] = frozenset()) -> int:
        """Bring one batch of changes into the container; returns how many paths it synced."""
        start = time.monotonic()
        paths = changed_paths(self.repo, with_new_folders(self.repo, raw, added) if added else raw, self.hidden)
        native = [p for p in paths if self.target.is_native(p)]
        if native and self.native is None:
            ui.warn(
                f"not synced: native sources changed ({', '.join(native[:10])}); rebuild with 'invoke nightly', or "
                "sync with --native"
            )
            paths = [p for p in paths if not self.target.is_native(p)]
        if not paths:
            return 0
        found = plan(self.repo, paths, self.location, self.target)
        self._write(found.root, found.steps, self.repo.path)
        steps = len(found.steps)
        if native and self.native is not None:  # a failed build raises: the container keeps what it runs
            tree, compiled = self.native.rebuild()
            self._write("/", [Step("f", rel, path.lstrip("/")) for rel, path, _ in compiled], tree)
            self.native.held(compiled)
            steps += len(compiled)
        if self.restart:
            cmd = self.engine.cmd("exec", self.name, "sh", "-c", RESTART, "forkdev-restart", self.restart)
            self.run(cmd)
        ui.info(
            f"synced {steps} path(s) in {time.monotonic() - start:.2f}s"
            + (f"; restarted '{self.restart}'" if self.restart else "")
        )
        return steps

    def _write(self, root: str, steps: list[Step], top: Path) -> None:
        """Make sure of the folders on the way (and of the leaf's kind), then copy the files and links in."""
        unsure = [s for s in steps if not self._sure(root, s)]
        for i in range(0, len(unsure), PER_CALL):
            chunk = unsure[i : i + PER_CALL]
            args = [a for s in chunk for a in ("f" if s.op == "l" else s.op, s.below)]
            self.run(
                self.engine.cmd("exec", "--user", "0", self.name, "sh", "-c", PREPARE, "forkdev-sync", root, *args)
            )
            for s in chunk:
                self._made(root, s)
        files = [s for s in steps if s.op in ("f", "l")]
        if files:
            self._copy(root, files, top)

    def _sure(self, root: str, step: Step) -> bool:
        """Whether the container is known to hold real folders on the way and a leaf of the kind to be written."""
        if step.op == "d":
            return False
        parts = step.below.split("/")
        if any(self.known.get(posixpath.join(root, *parts[:i])) != "d" for i in range(1, len(parts))):
            return False
        return self.known.get(posixpath.join(root, step.below)) == ("d" if step.op == "D" else "f")

    def _made(self, root: str, step: Step) -> None:
        here = posixpath.join(root, step.below)
        if step.op == "d":
            for key in [k for k in self.known if k == here or k.startswith(here + "/")]:
                del self.known[key]
            return
        parts = step.below.split("/")
        self.known.update((posixpath.join(root, *parts[:i]), "d") for i in range(1, len(parts)))
        self.known[here] = "d" if step.op == "D" else "f"

    def _copy(self, root: str, files: list[Step], top: Path) -> None:
        """Stream a tar of the files and links through `cp -`: read in pieces, whatever their size."""
        read_end, write_end = os.pipe()
        problems: list[str] = []

        def produce() -> None:
            try:
                with os.fdopen(write_end, "wb") as out:
                    write_tar(out, top, root, files, problems)
            except OSError as exc:  # cp stopped reading (its own failure says why), or the pipe broke
                problems.append(str(exc))

        writer = threading.Thread(target=produce, daemon=True)
        writer.start()
        try:
            with os.fdopen(read_end, "rb") as source:
                self.run(self.engine.cmd("cp", "-", f"{self.name}:/"), input=source)
        finally:
            writer.join()
        for problem in problems[:3]:
            ui.warn(f"not synced: {problem}; it syncs again when it next changes")


def write_tar(out, top: Path, root: str, files: list[Step], problems: list[str]) -> None:
    """A tar of the files and links at their image paths; a file that vanished or changed kind since the plan is
    left out (its change comes as an event of its own), one that shrank is padded to the size it had."""
    now = time.time()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for step in files:
            info = tarfile.TarInfo(posixpath.join(root, step.below).lstrip("/"))
            info.uid = info.gid = 0
            info.mtime = now  # newer than any bytecode of the old source: Python recompiles it
            full = top / step.rel
            try:
                if step.op == "l":
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(full), 0o777
                    tar.addfile(info)
                    continue
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                problems.append(f"{step.rel} ({exc.strerror})")
                continue
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o111 else 0o644
                tar.addfile(info, _Exactly(fh, st.st_size))


class _Exactly:
    """`size` bytes of a file that may shrink while it is read: what is missing reads as zeros."""

    def __init__(self, fh, size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n) if n else b""
        self.left -= n
        return data + b"\0" * (n - len(data))


def watching(path: Path, stop: threading.Event) -> Iterator[tuple[set[str], set[str]]]:
    """Batches of (changed paths, the ones among them that were added) until `stop` is set. The first batch,
    often empty, comes once the watcher is up: what changes from then on is seen."""
    from watchfiles import Change
    from watchfiles import watch as watch_files  # here: only a live sync needs it

    for changes in watch_files(
        path, debounce=30, step=10, stop_event=stop, rust_timeout=200, yield_on_timeout=True, raise_interrupt=True
    ):
        yield {p for _, p in changes}, {p for c, p in changes if c == Change.added}


def follow(mirror: Mirror, batches: Iterator[tuple[set[str], set[str]]]) -> None:
    """Sync each batch until the batches end (the container ended, or Ctrl-C). A batch that fails is named and
    the sync goes on: its paths sync again when they next change."""
    for raw, added in batches:
        if not raw:
            continue
        try:
            mirror.sync(raw, added)
        except Failure as exc:
            ui.warn(f"not synced: {exc}")


def follow_logs(engine: Engine, run: Runner, name: str, stop: threading.Event) -> threading.Thread:
    """Stream the container's output (to stderr) in a thread; when the container ends, set `stop`."""

    def follow_output() -> None:
        try:
            run(engine.cmd("logs", "--follow", name), stream=True, check=False, mutates=False)
        finally:
            stop.set()

    thread = threading.Thread(target=follow_output, daemon=True)
    thread.start()
    return thread
