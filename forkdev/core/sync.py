"""Merging the upstream into a fork without touching the user's work until the result is ready (what
`invoke fork-sync` runs; it takes values, not the invoke context).

The merge is computed by `git merge-tree --write-tree` (no working tree, no index: only objects are written),
protected paths and per-path strategies are resolved in a temporary index file, and the merge commit is made
with `git commit-tree`. Only then does the branch move: a compare-and-swap `git update-ref` when it is not
checked out; when it is, carry.py moves index, working tree and branch together, journaled, so that a kill at
any point is settled by the next run, and the user's work (staged, unstaged, untracked) rides on top. A
conflict, a failed fetch or an interrupt before that point leaves branch, index and working tree as they were.
One sync per repository runs at a time.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import carry, journal, lock, proc, ui
from .errors import Failure
from .gitrepo import Repo, z_paths
from .proc import Runner

STRATEGIES = ("ours", "theirs", "union")
FETCHED = "refs/forkdev/upstream"  # a private ref; the remote-tracking ref moves only after a successful sync
DRY_RUN_IDENT = {
    "GIT_AUTHOR_NAME": "forkdev dry-run",
    "GIT_AUTHOR_EMAIL": "dry-run@forkdev.invalid",
    "GIT_COMMITTER_NAME": "forkdev dry-run",
    "GIT_COMMITTER_EMAIL": "dry-run@forkdev.invalid",
}


@dataclass(frozen=True)
class Request:
    """What to sync, as checked values (the task makes it from flags and config)."""

    repo: str
    upstream: str  # a remote name, URL or path
    branch: str  # the upstream branch
    into: str = ""  # "" = the checked-out branch
    protect: tuple[str, ...] = ()
    strategies: Mapping[str, str] = field(default_factory=dict)
    push: bool = False
    autostash: bool = False


@dataclass
class Outcome:
    repo: str = ""  # the checkout's top level
    branch: str = ""
    before: str = ""
    upstream: str = ""
    after: str = ""
    up_to_date: bool = False
    restored: list[str] = field(default_factory=list)  # protected paths put back to the fork's version
    resolved: dict[str, str] = field(default_factory=dict)  # path -> strategy
    conflicts: list[str] = field(default_factory=list)  # between the fork and upstream: nothing was changed
    work_conflicts: list[str] = field(default_factory=list)  # between the user's work and the merge: likewise
    pushed: bool = False
    tracking: str = ""  # the remote-tracking ref moved to the fetched commit, when the upstream is a remote
    recovered: str = ""  # what was done with an interrupted sync found first: "rolled back" | "finished"
    rescue: str = ""  # refs/forkdev/rescue/<time>/: where work found beside an interrupted sync was kept
    stash: str = ""  # always "": fork-sync no longer stashes (kept for readers of --json)


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

    @staticmethod
    def in_progress(git_dir: Path) -> str | None:
        for name in ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "rebase-merge", "rebase-apply"):
            if (git_dir / name).exists():
                return name
        return None

    def identity(self, dry_run: bool) -> dict[str, str] | None:
        """The identity for the merge commit: git's own (None), a stand-in for a dry run, or a Failure saying
        how to set one."""
        for var in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
            res = self.repo.git("var", var, check=False)
            if not res.ok:
                break
        else:
            return None
        if dry_run:
            ui.info("no git identity is set: the dry run's merge commit is made as 'forkdev dry-run'")
            return DRY_RUN_IDENT
        raise Failure(
            f"git has no identity to make the merge commit in '{self.repo.path}' ({res.reason}); set one with "
            "git config user.name 'Your Name' && git config user.email you@example.com (add --global for all)"
        )

    def worktree_of(self, branch: str) -> str | None:
        """The worktree where `branch` is checked out, if any."""
        lines = self.repo.git("worktree", "list", "--porcelain", "-z").stdout.decode("utf-8", "surrogateescape")
        path = None
        for line in lines.split("\0"):
            if line.startswith("worktree "):
                path = line.removeprefix("worktree ")
            elif line == f"branch refs/heads/{branch}":
                return path
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
        self,
        ours: str,
        theirs: str,
        protect: list[str],
        strategies: Mapping[str, str],
        out: Outcome,
        message: str,
        scratch: Path,
        ident: Mapping[str, str] | None,
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

        if res.returncode == 0 and not stages and not (protect and self._differs(ours, tree, protect)):
            result_tree = tree  # no conflict, and the fork's protected paths came through as they were
        else:
            result_tree = self._settle(ours, theirs, tree, stages, protect, strategies, out, scratch)
            if result_tree is None:
                return None
            if result_tree != tree and result_tree == self.repo.out("rev-parse", f"{ours}^{{tree}}"):
                ui.warn(
                    f"the protected paths ({', '.join(protect)}) took in every change upstream made: the merge keeps "
                    "the fork's tree as it was; narrow config fork_sync.protect / --protect if that is not meant"
                )
        return self.repo.git("commit-tree", result_tree, "-p", ours, "-p", theirs, "-m", message, env=ident).out

    def _differs(self, ours: str, tree: str, paths: list[str]) -> bool:
        res = self.repo.git("diff-tree", "-r", "--quiet", ours, tree, "--", *paths, check=False)
        if res.returncode not in (0, 1):
            raise Failure(
                f"git does not take the protected paths {', '.join(paths)} ({res.reason}); fix config "
                "fork_sync.protect or --protect (paths or globs inside the repository); nothing was changed"
            )
        return res.returncode == 1

    def _settle(
        self,
        ours: str,
        theirs: str,
        tree: str,
        stages: dict[str, dict[int, tuple[str, str]]],
        protect: list[str],
        strategies: Mapping[str, str],
        out: Outcome,
        scratch: Path,
    ) -> str | None:
        """The merged tree with the fork's protected paths put back and conflicts resolved by strategy, built in
        a scratch index; None when a conflict remains (listed in `out`)."""
        with tempfile.TemporaryDirectory(prefix="merge-", dir=scratch) as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            git = functools.partial(self.repo.git, env=env)  # the temporary index, never the user's
            git("read-tree", tree)
            # Git alone says what is protected (one pathspec engine for all of it): the merge's entries there
            # go, the fork's come back, and no conflict or strategy there counts.
            protected: set[str] = set()
            if protect:
                out.restored = sorted(p for p in protect if self._differs(ours, tree, [p]))
                present = git("ls-files", "-z", "--", *protect).stdout
                if present:
                    git("update-index", "-z", "--force-remove", "--stdin", input=present)
                forks = {"GIT_INDEX_FILE": os.path.join(tmp, "ours")}  # ls-tree would take no globs
                self.repo.git("read-tree", ours, env=forks)
                listing = self.repo.git("ls-files", "-s", "-z", "--", *protect, env=forks).stdout
                if listing:
                    git("update-index", "-z", "--index-info", input=listing)
                protected = set(z_paths(present)) | {e.split("\t", 1)[1] for e in z_paths(listing)}
            sides = self._in_either(ours, theirs, list(stages)) if stages else set()
            for path, st in sorted(stages.items()):
                if path in protected:
                    continue
                if path not in sides:  # merge-tree moved it aside as PATH~COMMIT: no strategy can place it
                    out.conflicts.append(f"{path.rsplit('~', 1)[0]} (a file on one side, a folder on the other)")
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
            return git("write-tree").out

    def _in_either(self, ours: str, theirs: str, paths: list[str]) -> set[str]:
        """Which of `paths` (literal) are files in `ours` or `theirs`."""
        found: set[str] = set()
        for side in (ours, theirs):
            raw = self.repo.git(
                "ls-tree", "-r", "-z", "--name-only", side, "--", *paths, env={"GIT_LITERAL_PATHSPECS": "1"}
            ).stdout
            found.update(z_paths(raw))
        return found

    def _resolve(self, path: str, st: dict[int, tuple[str, str]], strategy: str | None, tmp: str):
        """(mode, oid) or "delete" for a conflicted path under `strategy`, or None when it stays conflicted."""
        if strategy == "ours":
            return st.get(2, "delete")
        if strategy == "theirs":
            return st.get(3, "delete")
        regular = all(mode in ("100644", "100755") for mode, _ in st.values())
        if strategy == "union" and 2 in st and 3 in st and regular:  # lines of text: not links, not submodules
            files = []
            for stage in (2, 1, 3):
                f = os.path.join(tmp, f"stage{stage}")
                with open(f, "wb") as fh:
                    if stage in st:
                        fh.write(self.repo.git("cat-file", "blob", st[stage][1]).stdout)
                files.append(f)
            merged = self.run(["git", "merge-file", "-p", "--union", *files], mutates=False, check=False)
            if merged.returncode != 0:  # binary files, or an error: it stays a conflict, named
                return None
            oid = self.repo.git("hash-object", "-w", "--stdin", input=merged.stdout).out
            base_mode = st.get(1, ("",))[0]
            return (st[3][0] if st[2][0] == base_mode else st[2][0], oid)  # a mode change on either side wins
        return None


def sync(run: Runner, req: Request) -> Outcome:
    repo = Repo.open(req.repo, run)
    for name, what in ((req.branch, "upstream branch (--branch)"), (req.into, "branch (--into)")):
        if name and not run(["git", "check-ref-format", f"refs/heads/{name}"], mutates=False, check=False).ok:
            raise Failure(f"{what} '{name}' is not a valid branch name; pass a name such as main or release/v1")
    place = journal.Place.of(repo)  # (a bare repository has no top level: Repo.open refused it)
    with lock.exclusive(place.lock, f"fork-sync of {repo.path}"), journal.scratch(place):
        recovery = carry.recover(place, run.dry_run)
        out = _sync(run, place, req)
        if recovery:
            out.recovered, out.rescue = recovery.what, recovery.rescue
        return out


def _sync(run: Runner, place: journal.Place, req: Request) -> Outcome:
    repo = place.repo
    s = Merge(repo, run)

    # Looked at before the fetch, not beside it (25 ms sooner): a refusal (uncommitted changes, say) comes at once,
    # not after a network fetch, and stopping a fetch halfway would leave its temporary pack behind.
    target, before, checked_out = _where(s, place, req)
    with ui.step(f"fetch {req.upstream} {req.branch}"):
        theirs = s.fetch(req.upstream, req.branch)
    out = Outcome(str(repo.path), branch=target, before=before, upstream=theirs, after=before)
    if repo.git("merge-base", "--is-ancestor", "--end-of-options", theirs, before, check=False).ok:
        out.up_to_date = True
        ui.ok(f"'{target}' already contains upstream {req.branch} ({theirs[:12]})")
    else:

        def merge() -> str | None:
            ident = s.identity(run.dry_run)
            with ui.step("merge (objects only)"):
                message = f"Merge upstream {req.branch} ({theirs[:12]}) into {target}"
                return s.merge(before, theirs, list(req.protect), req.strategies, out, message, place.scratch, ident)

        def capture() -> tuple[str, str] | Failure | None:  # a failure counts only if the branch is to move
            try:
                return carry.capture(place) if checked_out else None
            except Failure as exc:
                return exc

        # The user's work does not depend on the merge: it is captured while the merge is computed.
        new, work = proc.concurrently(merge, capture)
        for path in out.restored:
            ui.info(f"  kept the fork's {path}")
        for path, strategy in out.resolved.items():
            ui.info(f"  resolved {path} with '{strategy}'")
        if new is None:
            for path in out.conflicts:
                ui.warn(f"conflict: {path}")
            return out
        out.after = new
        move = None
        if checked_out:
            with ui.step("carry the index and the working tree (objects only)"):
                if isinstance(work, Failure):
                    raise work
                move, out.work_conflicts = carry.plan(place, target, before, new, work)
            if move is None:
                return out
        if not run.dry_run:
            with ui.step(f"move {target} to {new[:12]}"):
                if move is not None:
                    carry.apply(place, move)
                else:
                    _move_branch(repo, target, before, new)
            if move is not None and move.carries_work:
                ui.info("  your work is on top, staged and unstaged as it was")
    out.tracking = _track(repo, req.upstream, req.branch, theirs)
    if req.push:
        out.pushed = _push(repo, run, target)
    return out


def _where(s: Merge, place: journal.Place, req: Request) -> tuple[str, str, bool]:
    """(the branch to merge into, its commit, whether it is checked out here), or a Failure saying why the sync
    cannot go on: a detached HEAD, no such branch, an operation in progress, uncommitted changes (without
    --autostash), or the branch checked out in another worktree."""
    repo = place.repo
    current = s.current_branch()
    target = req.into or current
    if not target:
        raise Failure(f"HEAD of '{repo.path}' is detached; check out the fork's branch or pass --into BRANCH")
    before = repo.rev(f"refs/heads/{target}")
    if not before:
        raise Failure(f"no branch '{target}' in '{repo.path}'; pass --into with an existing branch")
    checked_out = target == current
    if checked_out:
        busy = s.in_progress(place.git_dir)
        if busy:
            raise Failure(f"'{repo.path}' has an operation in progress ({busy}); finish or abort it first")
        place.refuse_index_lock()
        dirty = [] if req.autostash else s.dirty()
        if dirty:
            listed = ", ".join(dirty[:20]) + (" ..." if len(dirty) > 20 else "")
            raise Failure(f"uncommitted changes in '{repo.path}' ({listed}); commit them, or pass --autostash")
    else:
        elsewhere = s.worktree_of(target)
        if elsewhere:
            raise Failure(f"branch '{target}' is checked out in '{elsewhere}'; run fork-sync there (--repo)")
    return target, before, checked_out


def _move_branch(repo: Repo, branch: str, before: str, new: str) -> None:
    """A branch that is not checked out moves by compare-and-swap: nothing else of the user's is touched."""
    res = repo.git(
        "update-ref", "-m", "fork-sync: merge upstream", f"refs/heads/{branch}", new, before, mutates=True, check=False
    )
    if not res.ok:
        raise Failure(f"'{branch}' moved while fork-sync ran ({res.reason}); nothing was changed: run it again")


def tracking_ref(refspecs: list[str], ref: str) -> str | None:
    """Where a remote's fetch refspecs put `ref` (refs/heads/main -> refs/remotes/upstream/main), or None."""
    mapped = None
    for spec in refspecs:
        spec = spec.strip().removeprefix("+")
        negative = spec.startswith("^")
        src, _, dst = spec.removeprefix("^").partition(":")
        if "*" in src:
            head, _, tail = src.partition("*")
            if not (ref.startswith(head) and ref.endswith(tail) and len(ref) >= len(head) + len(tail)):
                continue
            found = dst.replace("*", ref[len(head) : len(ref) - len(tail)], 1) if dst else None
        elif src == ref:
            found = dst or None
        else:
            continue
        if negative:
            return None
        mapped = mapped or found
    return mapped


def _track(repo: Repo, upstream: str, branch: str, theirs: str) -> str:
    """After a successful sync, the remote-tracking ref of the fetched branch, as `git pull` leaves it; only when
    the upstream is a named remote (a URL has no remote-tracking refs)."""
    specs = repo.git("config", "--get-all", f"remote.{upstream}.fetch", check=False)
    if specs.returncode == 1:  # no such key: a URL or a path, not a remote
        return ""
    if not specs.ok:
        raise Failure(f"reading remote '{upstream}' from git config failed ({specs.reason}); check .git/config")
    ref = tracking_ref(specs.out.splitlines(), f"refs/heads/{branch}")
    if ref is None:
        return ""
    res = repo.git("update-ref", "-m", f"fork-sync: fetch {upstream} {branch}", ref, theirs, mutates=True)
    return "" if res.dry else ref


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
