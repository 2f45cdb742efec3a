"""Git, read through the process seam, and the cached bare mirror of an upstream.

Nothing here writes to a user's checkout; the few writes fork-sync needs (a temporary index, moving a branch)
live in sync.py and carry.py and are named there. User values reach git after `--end-of-options` (refs) or `--`
(paths, repositories).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import validate
from .errors import Failure
from .proc import Runner


@dataclass(frozen=True)
class Change:
    """One changed path of a checkout against a commit (a status letter, as git gives it)."""

    status: str  # "A", "M", "D", "T" (type change)
    path: str
    untracked: bool = False


def z_paths(raw: bytes) -> list[str]:
    """The paths of a git `-z` listing (NUL-separated; file names need not be UTF-8)."""
    return [p for p in raw.decode("utf-8", "surrogateescape").split("\0") if p]


def with_untracked(diff: list[Change], untracked: list[str]) -> list[Change]:
    """A working tree's changes: its `diff` from a commit plus its untracked files (which git does not ignore),
    by path; an untracked file at a path the diff deletes from the index is an addition."""
    found = {c.path: c for c in diff}
    found.update((path, Change("A", path, untracked=True)) for path in untracked)
    return [found[path] for path in sorted(found)]


@dataclass(frozen=True)
class Repo:
    """A git checkout, asked through the run's one process seam."""

    path: Path
    run: Runner

    @classmethod
    def open(cls, path: str | os.PathLike[str], run: Runner) -> Repo:
        p = Path(os.path.expanduser(str(path))).resolve()
        if not p.exists():
            raise Failure(f"'{path}' does not exist; pass the path of a git checkout")
        res = run(["git", "-C", str(p), "rev-parse", "--show-toplevel"], mutates=False, check=False)
        if not res.ok:
            raise Failure(f"'{path}' is not a git checkout; pass the path of one (e.g. a clone of the upstream)")
        return cls(Path(res.out), run)

    def git(
        self,
        *args: str,
        check: bool = True,
        mutates: bool = False,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ):
        return self.run(["git", "-C", str(self.path), *args], mutates=mutates, check=check, input=input, env=env)

    def out(self, *args: str) -> str:
        return self.git(*args).out

    def rev(self, ref: str) -> str | None:
        """The object `ref` names, or None when it names nothing here."""
        res = self.git("rev-parse", "--verify", "--quiet", "--end-of-options", ref, check=False)
        return res.out if res.ok else None

    def resolve(self, ref: str, what: str = "ref") -> str:
        sha = self.rev(f"{ref}^{{commit}}")
        if sha is None:
            raise Failure(f"unknown {what} '{ref}' in {self.path}; check the name or fetch it first")
        return sha

    def has_commit(self, sha: str) -> bool:
        return self.git("cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}", check=False).ok

    def ignores(self, path: str) -> bool:
        """Whether git ignores `path` (relative to the checkout; 'dir/' for a directory), tracked files aside."""
        return self.git("check-ignore", "-q", "--no-index", "--", path, check=False).ok

    def is_bare(self) -> bool:
        return self.out("rev-parse", "--is-bare-repository") == "true"

    def diff(self, base: str, ref: str | None) -> list[Change]:
        """What differs from `base` in `ref`, or (ref None) in the tracked files of the working tree: committed,
        staged and unstaged edits and deletions (renames: delete + add). `with_untracked` adds untracked files."""
        args = ["diff", "--name-status", "-z", "--no-renames", "--no-ext-diff", "--end-of-options", base]
        if ref is not None:
            args.append(ref)
        args.append("--")
        fields = self.git(*args).stdout.decode("utf-8", "surrogateescape").split("\0")
        return [Change(fields[i][0], fields[i + 1]) for i in range(0, len(fields) - 1, 2)]

    def untracked(self) -> list[str]:
        """The untracked files git does not ignore."""
        return z_paths(self.git("ls-files", "--others", "--exclude-standard", "-z").stdout)

    def edited(self) -> bool:
        """Whether tracked files differ from HEAD (staged or not)."""
        return not self.git("diff", "--quiet", "HEAD", "--", check=False).ok

    def commit_time(self, sha: str) -> int:
        """The committer time of `sha`, in seconds since the epoch."""
        return int(self.out("show", "-s", "--format=%ct", "--end-of-options", sha))

    def existing_dirs(self, commit: str, dirs: list[str]) -> set[str]:
        """Which of `dirs` (repository paths) are directories in `commit`."""
        if not dirs:
            return set()
        res = self.git("ls-tree", "-d", "-z", "--name-only", "--end-of-options", commit, "--", *dirs)
        return set(z_paths(res.stdout))

    def url(self, remote: str = "origin") -> str | None:
        res = self.git("config", "--get", f"remote.{remote}.url", check=False)
        return res.out or None

    def remote_for(self, url: str) -> str | None:
        """The remote whose URL is `url` (ignoring a trailing .git), if any."""
        res = self.git("remote", "-v", check=False)
        want = url.rstrip("/").removesuffix(".git")
        for line in res.out.splitlines():
            name, remote_url, *_ = line.split()
            if remote_url.rstrip("/").removesuffix(".git") == want:
                return name
        return None


def mirror(path: Path, url: str, run: Runner) -> Repo:
    """A bare mirror of `url` at `path` (a place in the tool's own cache), created or refreshed; a failed fetch is
    an error. It runs under --dry-run too (batch plans with it); nightly and build use `mirror_unless_dry`."""
    validate.source(url, "upstream")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        res = run(["git", "clone", "--mirror", "--quiet", "--", url, str(path)], check=False, mutates=False)
    else:
        res = run(["git", "-C", str(path), "fetch", "--prune", "--quiet", "origin"], check=False, mutates=False)
    if not res.ok:
        raise Failure(f"cannot fetch upstream '{url}' ({res.reason}); check upstream.url or your network")
    return Repo(path, run)


def mirror_unless_dry(path: Path, url: str, run: Runner) -> Repo | None:
    """`mirror`, except under dry-run, which writes nothing, the cache included: the mirror is then read as it is,
    never created or fetched (the clone or fetch a real run would do is echoed as not run), and is None when
    there is none yet."""
    if not run.dry_run:
        return mirror(path, url, run)
    validate.source(url, "upstream")
    if not path.is_dir():
        run(["git", "clone", "--mirror", "--quiet", "--", url, str(path)])
        return None
    run(["git", "-C", str(path), "fetch", "--prune", "--quiet", "origin"])
    return Repo(path, run)
