"""Merging the upstream into a fork without touching the user's work until the result is ready (what
`invoke fork-sync` runs; it takes values, not the invoke context).

The merge is computed by `git merge-tree --write-tree` (no working tree, no index: only objects are written),
protected paths and per-path strategies are resolved in a temporary index file, and the merge commit is made
with `git commit-tree`. Only then does the branch move: `git merge --ff-only` when it is checked out (git
refuses to overwrite local changes), else a compare-and-swap `git update-ref`. A conflict, a failed fetch or
an interrupt before that point leaves branch, index and working tree exactly as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import lock, ui
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner

STRATEGIES = ("ours", "theirs", "union")
FETCHED = "refs/forkdev/upstream"  # a private ref: the user's remote-tracking refs are left alone


@dataclass
class Outcome:
    branch: str
    before: str
    upstream: str
    after: str = ""
    up_to_date: bool = False
    restored: list[str] = field(default_factory=list)  # protected paths put back to the fork's version
    resolved: dict[str, str] = field(default_factory=dict)  # path -> strategy
    conflicts: list[str] = field(default_factory=list)
    pushed: bool = False
    stash: str = ""  # where the user's work is, if a restore after --autostash did not apply cleanly


def parse_strategies(items: list[str] | dict[str, str]) -> dict[str, str]:
    pairs = items.items() if isinstance(items, dict) else [_split_strategy(i) for i in items]
    out = {}
    for pattern, strategy in pairs:
        if strategy not in STRATEGIES:
            raise Failure(f"unknown strategy '{strategy}' for '{pattern}'; use one of {', '.join(STRATEGIES)}")
        out[pattern] = strategy
    return out


def _split_strategy(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise Failure(f"malformed --strategy '{item}'; write PATH_OR_GLOB=ours|theirs|union")
    pattern, strategy = item.rsplit("=", 1)
    return pattern, strategy


def matches(path: str, pattern: str) -> bool:
    prefix = pattern.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or fnmatch.fnmatchcase(path, pattern)


class Merge:
    def __init__(self, repo: Repo, run: Runner) -> None:
        self.repo, self.run = repo, run

    # ---- reading ----------------------------------------------------------------------------------
    def current_branch(self) -> str | None:
        res = self.repo.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return res.out if res.ok else None

    def dirty(self) -> list[str]:
        raw = self.repo.git("status", "--porcelain", "-z", "--untracked-files=normal").stdout.decode()
        entries, items = [], raw.split("\0")
        i = 0
        while i < len(items):
            item = items[i]
            if item:
                entries.append(item[3:])
                if item[0] in "RC":  # a rename's source follows
                    i += 1
            i += 1
        return entries

    def in_progress(self) -> str | None:
        git_dir = os.path.join(self.repo.path, self.repo.out("rev-parse", "--git-dir"))
        for name in ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "rebase-merge", "rebase-apply"):
            if os.path.exists(os.path.join(git_dir, name)):
                return name
        return None

    def fetch(self, upstream: str, branch: str) -> str:
        # Fetching writes objects and our private ref only, so it runs under --dry-run too: the plan needs it.
        res = self.repo.git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--refmap=",
            "--",  # nothing after it is an option, whatever a flag or config said
            upstream,
            f"+refs/heads/{branch}:{FETCHED}/{branch}",
            check=False,
        )
        if not res.ok:
            raise Failure(
                f"fetching branch '{branch}' of upstream '{upstream}' failed ({res.reason}); check the remote "
                "name or URL and your network; nothing was changed"
            )
        return self.repo.out("rev-parse", "--verify", "--end-of-options", f"{FETCHED}/{branch}")

    # ---- merging in objects only ----------------------------------------------------------------------
    def merge(
        self, ours: str, theirs: str, protect: list[str], strategies: dict[str, str], out: Outcome, message: str
    ) -> str | None:
        res = self.repo.git("merge-tree", "--write-tree", "-z", "--no-messages", ours, theirs, check=False)
        if res.returncode not in (0, 1):
            raise Failure(f"git merge-tree failed ({res.reason}); fork-sync needs git 2.38 or newer")
        fields = res.stdout.decode("utf-8", "surrogateescape").split("\0")
        tree = fields[0]
        stages: dict[str, dict[int, tuple[str, str]]] = {}
        for item in fields[1:]:
            if not item:
                break
            meta, path = item.split("\t", 1)
            mode, oid, stage = meta.split()
            stages.setdefault(path, {})[int(stage)] = (mode, oid)

        with tempfile.TemporaryDirectory(prefix="forkdev-sync-") as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            git = functools.partial(self.repo.git, env=env)  # the temporary index, never the user's
            git("read-tree", tree)
            if protect:  # every protected path takes the fork's entries, whatever the merge made of them
                out.restored = sorted(
                    p for p in protect if git("diff-tree", "-r", "--quiet", ours, tree, "--", p, check=False).returncode
                )
                present = git("ls-files", "-z", "--", *protect).stdout
                if present:
                    git("update-index", "-z", "--force-remove", "--stdin", input=present)
                listing = git("ls-tree", "-r", "-z", ours, "--", *protect).stdout
                if listing:
                    git("update-index", "-z", "--index-info", input=listing)
            for path, st in sorted(stages.items()):
                if any(matches(path, p) for p in protect):
                    continue
                strategy = next((s for p, s in strategies.items() if matches(path, p)), None)
                entry = self._resolve(path, st, strategy, tmp)
                if entry is None:
                    out.conflicts.append(path)
                    continue
                out.resolved[path] = strategy or ""
                if entry == "delete":
                    git("update-index", "--force-remove", "--", path)
                else:
                    git("update-index", "--add", "--cacheinfo", f"{entry[0]},{entry[1]},{path}")
            if out.conflicts:
                return None
            result_tree = git("write-tree").out
        return self.repo.out("commit-tree", result_tree, "-p", ours, "-p", theirs, "-m", message)

    def _resolve(self, path: str, st: dict[int, tuple[str, str]], strategy: str | None, tmp: str):
        """(mode, oid) or "delete" for a conflicted path under `strategy`, or None when it stays conflicted."""
        if strategy == "ours":
            return st.get(2, "delete")
        if strategy == "theirs":
            return st.get(3, "delete")
        if strategy == "union" and 2 in st and 3 in st:
            files = []
            for stage in (2, 1, 3):
                f = os.path.join(tmp, f"stage{stage}")
                with open(f, "wb") as fh:
                    if stage in st:
                        fh.write(self.repo.git("cat-file", "blob", st[stage][1]).stdout)
                files.append(f)
            merged = self.run(["git", "merge-file", "-p", "--union", *files], mutates=False, check=False)
            oid = self.repo.git("hash-object", "-w", "--stdin", input=merged.stdout).out
            return (st[2][0], oid)
        return None


def sync(
    run: Runner,
    repo_path: str,
    upstream: str,
    branch: str,
    into: str,
    protect: list[str],
    strategies: dict[str, str],
    push: bool,
    autostash: bool,
) -> Outcome:
    repo = Repo.open(repo_path, run)
    for name, what in ((branch, "upstream branch (--branch)"), (into, "branch (--into)")):
        if name and not run(["git", "check-ref-format", f"refs/heads/{name}"], mutates=False, check=False).ok:
            raise Failure(f"{what} '{name}' is not a valid branch name; pass a name such as main or release/v1")
    if repo.is_bare():
        raise Failure(f"'{repo_path}' is a bare repository; run fork-sync in a checkout of the fork")
    # One sync per repository at a time: its worktrees share the branches (and our private refs).
    common = Path(repo.out("rev-parse", "--path-format=absolute", "--git-common-dir"))
    with lock.exclusive(common / "forkdev" / "fork-sync.lock", f"fork-sync of {repo.path}"):
        return _sync(run, repo, upstream, branch, into, protect, strategies, push, autostash)


def _sync(
    run: Runner,
    repo: Repo,
    upstream: str,
    branch: str,
    into: str,
    protect: list[str],
    strategies: dict[str, str],
    push: bool,
    autostash: bool,
) -> Outcome:
    s = Merge(repo, run)
    current = s.current_branch()
    target = into or current
    if not target:
        raise Failure(f"HEAD of '{repo.path}' is detached; check out the fork's branch or pass --into BRANCH")
    before = repo.rev(f"refs/heads/{target}")
    if not before:
        raise Failure(f"no branch '{target}' in '{repo.path}'; pass --into with an existing branch")
    checked_out = target == current
    if checked_out:
        busy = s.in_progress()
        if busy:
            raise Failure(f"'{repo.path}' has an operation in progress ({busy}); finish or abort it first")
        dirty = s.dirty()
        if dirty and not autostash:
            listed = ", ".join(dirty[:20]) + (" ..." if len(dirty) > 20 else "")
            raise Failure(f"uncommitted changes in '{repo.path}' ({listed}); commit them, or pass --autostash")

    with ui.step(f"fetch {upstream} {branch}"):
        theirs = s.fetch(upstream, branch)
    out = Outcome(branch=target, before=before, upstream=theirs, after=before)
    if repo.git("merge-base", "--is-ancestor", "--end-of-options", theirs, before, check=False).ok:
        out.up_to_date = True
        ui.ok(f"'{target}' already contains upstream {branch} ({theirs[:12]})")
    else:
        with ui.step("merge (objects only)"):
            message = f"Merge upstream {branch} ({theirs[:12]}) into {target}"
            new = s.merge(before, theirs, protect, strategies, out, message)
        for path in out.restored:
            ui.info(f"  kept the fork's {path}")
        for path, strategy in out.resolved.items():
            ui.info(f"  resolved {path} with '{strategy}'")
        if new is None:
            for path in out.conflicts:
                ui.warn(f"conflict: {path}")
            return out
        out.after = new
        if not run.dry_run:
            with ui.step(f"move {target} to {new[:12]}"):
                _advance(repo, run, target, before, new, checked_out, autostash and bool(s.dirty()), out)
    if push:
        out.pushed = _push(repo, run, target)
    return out


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it: stash, fast-forward and restore happen whole.
    (The block's git commands run shielded, so the signal sent to our process group does not reach them.)"""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _advance(
    repo: Repo, run: Runner, branch: str, before: str, new: str, checked_out: bool, stash: bool, out: Outcome
) -> None:
    """Move the branch to the merge: the only step that touches the user's checkout, done as one piece."""
    repo = dataclasses.replace(repo, run=dataclasses.replace(run, shielded=True))
    with _uninterruptible():
        _move(repo, branch, before, new, checked_out, stash, out)


def _move(repo: Repo, branch: str, before: str, new: str, checked_out: bool, stash: bool, out: Outcome) -> None:
    if not checked_out:
        repo.git("update-ref", "-m", "fork-sync", f"refs/heads/{branch}", new, before, mutates=True)
        return
    stashed = False
    if stash:
        repo.git("stash", "push", "--include-untracked", "--quiet", "-m", "forkdev fork-sync autostash", mutates=True)
        stashed = True
    try:
        repo.git("merge", "--ff-only", "--quiet", new, mutates=True)
    finally:
        if stashed:
            res = repo.git("stash", "pop", "--quiet", mutates=True, check=False)
            if not res.ok:
                out.stash = repo.out("rev-parse", "refs/stash")
                ui.warn(
                    f"your changes did not re-apply cleanly; they are safe in stash {out.stash[:12]} "
                    "('git stash list'); apply them with 'git stash pop'"
                )


def _push(repo: Repo, run: Runner, branch: str) -> bool:
    tracking = repo.git(
        *("rev-parse", "--abbrev-ref", "--symbolic-full-name", "--verify", "--quiet", "--end-of-options"),
        f"{branch}@{{upstream}}",
        check=False,
    )
    remote, remote_branch = tracking.out.split("/", 1) if tracking.ok else ("origin", branch)
    known = repo.rev(f"refs/remotes/{remote}/{remote_branch}")
    ahead = int(repo.out("rev-list", "--count", "--end-of-options", f"{known}..{branch}" if known else branch))
    if ahead == 0:
        ui.info(f"'{branch}' is not ahead of {remote}/{remote_branch}; nothing to push")
        return False
    res = repo.git(
        "push", "--quiet", "--", remote, f"refs/heads/{branch}:refs/heads/{remote_branch}", mutates=True, check=False
    )
    if not res.ok:
        raise Failure(
            f"push of '{branch}' to {remote} was rejected ({res.reason}); the merge is kept locally and "
            f"nothing was rewritten: fetch {remote}, merge, and push again"
        )
    return not res.dry
