"""Moving a checked-out branch to a new commit and carrying the user's work across, so that no stop loses it.

fork-sync used `git stash` + `git merge --ff-only` + `git stash pop`: a kill between them left the work only in a
stash, the staged/unstaged split was always lost, and a pop that conflicted left markers in the tree. Here:

1. plan (objects only): the index (I) and the working tree (W: tracked and untracked files that git does not
   ignore, staged in a scratch copy of the index) become commits on the old tip. The index and the working
   tree to be, I' and W', are 3-way merges of each with the new commit (their base is the old tip). If either
   conflicts, nothing is touched and the files are named.
2. journal: refs/forkdev/sync/* keep every object from gc; then a journal (JSON, written and fsynced beside
   the lock, renamed into place) names the branch, both tips and the four snapshots.
3. move: index I -> I' (`read-tree -i -m`: the index only, refused if it changed meanwhile; without -i git
   would also demand that the user's files match the index, which unstaged work does not), working tree
   W -> W' (`read-tree -m -u` on the scratch index, whose stat data is fresh: git refuses to overwrite a file
   that changed meanwhile), then the branch by compare-and-swap. The journal and the refs go last.

A journal found by the next run is settled first (`recover`): the branch still at the old tip -> roll back (the
working tree to W, the index to I), at the new commit -> finish. Whatever mix of before and after a stop left,
each path is brought to its goal; a path holding neither (edited after the stop) is left as it is, and then
everything is also kept under refs/forkdev/rescue/<time>/. A file the move writes that is missing, empty or
cut short is the stopped checkout's (git removes a file before it writes it again): it is brought to its goal.
Going forward the index moves before the working tree, going back after it: so whenever the tree holds a file
the merge added, the index knows it (even one that .gitignore matches), and a capture after a stop in between
sees it. journal.py holds the state on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import ui
from .errors import Failure
from .gitrepo import Repo
from .journal import SNAPSHOTS, SYNC_REFS, Move, Place, read_journal, remove_journal, write_journal
from .proc import Result

RESCUE_REFS = "refs/forkdev/rescue"
# The snapshot commits are private (never on a branch, never pushed), so they need no identity of the user's.
SNAPSHOT_IDENT = {
    "GIT_AUTHOR_NAME": "forkdev",
    "GIT_AUTHOR_EMAIL": "forkdev@localhost",
    "GIT_COMMITTER_NAME": "forkdev",
    "GIT_COMMITTER_EMAIL": "forkdev@localhost",
}


# ---- planning, in objects only -------------------------------------------------------------------------------------
def capture(place: Place) -> tuple[str, str]:
    """The user's work, for `plan`: (tree of the index, tree of the working tree), the latter staged in the
    scratch index the move checks out with. Writes objects and scratch files only. It is taken once the fetch is
    done, even when `git status` found the checkout clean: an edit or a deletion made while the fetch ran is work
    too (read-tree takes a missing file for an unchanged one, and would write upstream's back), and `git status`
    does not always refresh the index (GIT_OPTIONAL_LOCKS=0, a busy index.lock)."""
    return _capture(place, place.scratch / "move.index")


def plan(place: Place, branch: str, before: str, new: str, work: tuple[str, str]) -> tuple[Move | None, list[str]]:
    """The move of `branch` from `before` to `new` carrying the index and the working tree as `capture` found
    them, or (None, the paths where the user's work and `new` conflict). Writes objects only."""
    repo = place.repo
    base_tree, new_tree = repo.out("rev-parse", f"{before}^{{tree}}", f"{new}^{{tree}}").split()
    index_tree, tree_tree = work
    snaps: dict[str, str] = {}
    conflicts: list[str] = []
    for name, tree, what in (("index", index_tree, "the index"), ("tree", tree_tree, "the working tree")):
        if name == "tree" and tree == index_tree:  # everything is staged: the index's snapshots serve
            snaps["tree"], snaps["tree_after"] = snaps["index"], snaps.get("index_after", "")
            continue
        snaps[name] = _commit(repo, tree, before, base_tree, f"{what} before fork-sync")
        if snaps[name] == before:  # nothing of the user's there: it becomes the new commit's
            snaps[f"{name}_after"] = new
            continue
        res = repo.git(
            "merge-tree", "--write-tree", "-z", "--name-only", "--no-messages", new, snaps[name], check=False
        )
        if res.returncode not in (0, 1):
            raise Failure(f"git merge-tree failed ({res.reason}); fork-sync needs git 2.38 or newer")
        merged, *paths = res.stdout.decode("utf-8", "surrogateescape").split("\0")
        if res.returncode == 1:
            conflicts += [p for p in paths if p]
            continue
        snaps[f"{name}_after"] = _commit(repo, merged, new, new_tree, f"{what} after fork-sync")
    if conflicts:
        return None, sorted(set(conflicts))
    move = Move(str(repo.path), branch, before, new, **snaps, pid=os.getpid(), started=time.strftime("%F %T %z"))
    status = _refuse_ignored_in_the_way(place, move.tree, move.tree_after)
    if not move.carries_work and not _adds_ignored(place, status):
        move = dataclasses.replace(move, direct=True)
    return move, []


def _adds_ignored(place: Place, status: dict[str, str]) -> bool:
    """Whether a move may leave a file that no capture sees if it stops inside git's checkout: one it adds that
    .gitignore matches, or any change to a .gitignore (then what matches changes halfway)."""
    if any(path.rpartition("/")[2] == ".gitignore" for path in status):
        return True
    added = [path for path, st in status.items() if st == "A"]
    if not added:
        return False
    data = "".join(f"{path}\0" for path in added).encode("utf-8", "surrogateescape")
    res = place.repo.git("check-ignore", "-z", "--stdin", "--no-index", input=data, check=False)
    if res.returncode not in (0, 1):  # 1: none of them is ignored
        raise Failure(f"git check-ignore failed ({res.reason}); nothing was changed")
    return res.returncode == 0


def _capture(place: Place, index_file: Path) -> tuple[str, str]:
    """(tree of the index, tree of the working tree), staged into `index_file`: a copy of the real index, so
    only changed files are hashed and the real index is not even locked. It is left matching the working tree."""
    repo = place.repo
    # copy2 keeps the index's mtime: git takes an entry as racily clean by comparing the file's mtime with the
    # index's, and a copy made later would pass a same-size edit of that second as unchanged.
    if (place.git_dir / "index").exists():
        shutil.copy2(place.git_dir / "index", index_file)
    env = {"GIT_INDEX_FILE": str(index_file)}
    res = repo.git("write-tree", env=env, check=False)
    if not res.ok:
        raise Failure(
            f"the index of '{repo.path}' cannot be saved ({res.reason}); resolve its conflicts (git status) and "
            "run fork-sync again; nothing was changed"
        )
    repo.git("add", "-A", env=env)
    return res.out, repo.git("write-tree", env=env).out


def _commit(repo: Repo, tree: str, parent: str, parent_tree: str, what: str) -> str:
    if tree == parent_tree:
        return parent
    return repo.git("commit-tree", tree, "-p", parent, "-m", f"forkdev: {what}", env=SNAPSHOT_IDENT).out


def _refuse_ignored_in_the_way(place: Place, src: str, dst: str) -> dict[str, str]:
    """git's checkout overwrites ignored files; a file the move adds must not replace one (a local .env, say).
    Returns what the move does, path by path (git's A, D, M, T)."""
    raw = place.repo.git("diff-tree", "-r", "-z", "--no-renames", "--name-status", src, dst).stdout
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    status = dict(zip(fields[1::2], fields[0::2], strict=False))  # the last field is empty
    blocked = []
    for path, st in status.items():
        if st != "A":
            continue
        parts = path.split("/")
        for depth in range(len(parts), 0, -1):  # the file itself, then each folder it needs
            stem = "/".join(parts[:depth])
            if status.get(stem) == "D":
                break  # a tracked file there, which the move removes first
            on_disk = place.repo.path / stem
            if not os.path.lexists(on_disk):
                continue
            if on_disk.is_dir() and not on_disk.is_symlink():  # a folder: fine, unless the file goes there
                if depth == len(parts) and _holds_more_than(on_disk, stem, status):
                    blocked.append(stem)
                break
            blocked.append(stem)  # a file (or link) of the user's where the merge needs its file or folder
            break
    if blocked:
        raise Failure(
            f"the merge brings {', '.join(sorted(blocked)[:10])} where '{place.repo.path}' has a file that git "
            "ignores; move it away and run fork-sync again; nothing was changed"
        )
    return status


def _holds_more_than(folder: Path, stem: str, status: dict[str, str]) -> bool:
    """Whether `folder` holds a file other than the tracked ones the move deletes (git would drop it)."""
    for root, _, files in os.walk(folder):
        for name in files:
            rel = f"{stem}/{Path(root, name).relative_to(folder).as_posix()}"
            if status.get(rel) != "D":
                return True
    return False


# ---- moving --------------------------------------------------------------------------------------------------------
def apply(place: Place, move: Move) -> None:
    """Journal, then index, working tree and branch. A failure undoes what was done; a kill leaves the journal
    for the next run. A Ctrl-C waits until the move is whole."""
    place = place.shielded()
    repo = place.repo
    with uninterruptible():
        _set_refs(repo, move.refs())
        write_journal(place.journal, move)
        try:
            if not (move.direct and _direct(place, move)):
                # -i: the index only (git refuses if it changed meanwhile); the tree moves next, on the scratch
                # index, whose stat data is fresh
                repo.git("read-tree", "-i", "-m", move.index, move.index_after, mutates=True)
                scratch_index = {"GIT_INDEX_FILE": str(place.scratch / "move.index")}
                checkout(repo, move.tree, move.tree_after, env=scratch_index)
                repo.git("update-index", "-q", "--refresh", mutates=True)
            ref = f"refs/heads/{move.branch}"
            repo.git("update-ref", "-m", "fork-sync: merge upstream", ref, move.new, move.before, mutates=True)
        except Failure as exc:
            _undo(place, move, exc)
        close(place, move)


def _direct(place: Place, move: Move) -> bool:
    """A clean checkout moves as `git merge` moves it: one `read-tree -m -u` of the real index, which leaves its
    stat data fresh (no refresh). git checks every entry it changes against the file first and writes nothing
    when one differs: an edit since the capture, or stat data `git status` could not refresh. Then (False) the
    two-step move decides, on the scratch index's fresh stat data. Stopped inside, the files are partly written
    and the index is not: recovery brings each path back or forward, as after a stop inside the two-step move
    (a file this move adds is never ignored, so a capture sees it)."""
    return checkout(place.repo, move.before, move.new, check=False).ok


def checkout(repo: Repo, old: str, new: str, env: dict[str, str] | None = None, check: bool = True) -> Result:
    """The working tree (and the index in `env`, or the real one) from tree `old` to `new`: `read-tree -m -u`,
    which refuses to overwrite a file that differs from the index, and writes files on one worker per core, as
    `checkout.workers=0` asks (git's default is one: a merge of a few weeks of vLLM rewrites ~1,500 files, and
    spends most of its time there). A `checkout.workers` the user set is theirs and is kept."""
    own = repo.git("config", "--get", "checkout.workers", check=False).returncode == 0
    workers = () if own else ("-c", "checkout.workers=0")
    return repo.git(*workers, "read-tree", "-m", "-u", old, new, env=env, mutates=True, check=check)


def _undo(place: Place, move: Move, exc: Failure) -> None:
    try:
        rescue, _ = settle(place, move, forward=False)
    except Failure as again:
        raise Failure(
            f"moving '{move.branch}' to the merge failed ({exc}), and undoing it too ({again}); your work is kept "
            f"in {SYNC_REFS}/tree (files) and {SYNC_REFS}/index (staged): run fork-sync again to finish the undo"
        ) from None
    close(place, move)
    kept = f"; files changed meanwhile were left as they were, and are also kept in {rescue}/" if rescue else ""
    raise Failure(
        f"moving '{move.branch}' to the merge failed ({exc}); nothing was changed: '{move.branch}', the index and "
        f"the working tree are as they were{kept}"
    )


def close(place: Place, move: Move) -> None:
    remove_journal(place.journal)
    _delete_refs(place.repo, list(move.refs()))


def _set_refs(repo: Repo, refs: dict[str, str]) -> None:
    lines = "".join(f"update {ref} {sha}\n" for ref, sha in refs.items())
    repo.git("update-ref", "--stdin", input=lines.encode(), mutates=True)


def _delete_refs(repo: Repo, refs: list[str]) -> None:
    if refs:
        repo.git("update-ref", "--stdin", input="".join(f"delete {r}\n" for r in refs).encode(), mutates=True)


# ---- recovering ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recovery:
    what: str  # "rolled back" | "finished" | "pending" (dry run)
    move: Move
    rescue: str = ""  # refs/forkdev/rescue/<time> when something had to be kept aside


def recover(place: Place, dry_run: bool) -> Recovery | None:
    """Settle a move that a kill interrupted: undo it while the branch is still at its old tip, else finish it.
    Without a journal, drop the refs a run killed before writing one (or after removing it) left behind."""
    move = read_journal(place.journal)
    if move is None:
        stale = place.repo.git("for-each-ref", "--format=%(refname)", f"{SYNC_REFS}/").out.split()
        if stale and not dry_run:
            _delete_refs(place.repo, stale)
        return None
    if dry_run:
        ui.warn(
            f"an interrupted fork-sync of '{move.branch}' (pid {move.pid}, {move.started}) is pending; "
            "a real run settles it first"
        )
        return Recovery("pending", move)
    if move.worktree == str(place.repo.path):
        checkout: Place | None = place
    elif Path(move.worktree).is_dir():  # a sync in another worktree of this repository was stopped
        checkout = Place.of(Repo(Path(move.worktree), place.repo.run))
    else:
        checkout = None
    tip = place.repo.rev(f"refs/heads/{move.branch}")
    head = checkout.repo.git("symbolic-ref", "--quiet", "HEAD", check=False).out if checkout else ""
    if checkout is None or head != f"refs/heads/{move.branch}" or tip not in (move.before, move.new):
        why = (
            f"'{move.worktree}' is gone"
            if checkout is None
            else f"'{move.worktree}' has another branch checked out"
            if head != f"refs/heads/{move.branch}"
            else f"'{move.branch}' has moved since (to {tip or 'nothing'})"
        )
        rescue = _keep(place.repo, move, {})
        remove_journal(place.journal)
        _delete_refs(place.repo, list(move.refs()))
        raise Failure(
            f"an interrupted fork-sync of '{move.branch}' was found, but {why}, so it was neither undone nor "
            f"finished; your work as it was before it is kept in {rescue}/tree (files) and {rescue}/index "
            f"(staged), e.g. 'git diff HEAD {rescue}/tree'; run fork-sync again when your checkout is as you want it"
        )
    forward = tip == move.new
    checkout = checkout.shielded()
    with uninterruptible():
        rescue, odd = settle(checkout, move, forward)
        close(checkout, move)  # the same journal and refs, through the shielded runner
    done = (
        f"finished: '{move.branch}' is at the merge {move.new[:12]}"
        + (", your work on top of it (staged and unstaged as it was)" if move.carries_work else "")
        if forward
        else f"rolled back: '{move.branch}' is at {move.before[:12]} again"
        + (", your work back as it was (staged and unstaged)" if move.carries_work else "")
    )
    kept = ""
    if rescue:
        named = ", ".join(odd[:10]) + (" ..." if len(odd) > 10 else "")
        kept = (
            f"; {named} changed after the interruption and were left as they are; the work before the sync "
            f"({rescue}/tree, /index) and as found ({rescue}/tree_found, /index_found) are kept"
        )
    ui.warn(f"an interrupted fork-sync (pid {move.pid}, {move.started}) was {done}{kept}")
    return Recovery("finished" if forward else "rolled back", move, rescue)


def settle(place: Place, move: Move, forward: bool) -> tuple[str, list[str]]:
    """Bring the index and the working tree to the move's end (forward) or start, from whatever mix of the two
    they hold. A path that holds neither is left as it is; then everything is kept under a rescue ref. Returns
    (that ref's prefix or "", those paths)."""
    repo = place.repo
    place.refuse_index_lock()
    start, end = (move.index, move.tree), (move.index_after, move.tree_after)
    goal, other = (end, start) if forward else (start, end)
    found = _capture(place, place.scratch / "settle.index")  # (index, working tree) as they are now
    trees = repo.out("rev-parse", *(f"{c}^{{tree}}" for c in (*goal, *other))).split()
    odd = [_neither(repo, found[i], trees[i], trees[2 + i], in_transit=i == 1) for i in (0, 1)]
    rescue = ""
    if odd[0] or odd[1]:
        tip = repo.out("rev-parse", "HEAD")
        rescue = _keep(
            repo,
            move,
            {
                "index_found": _commit(repo, found[0], tip, "", "the index found by fork-sync"),
                "tree_found": _commit(repo, found[1], tip, "", "the working tree found by fork-sync"),
            },
        )
    target = [_overlay(place, trees[i], found[i], odd[i], name) for i, name in enumerate(("index", "tree"))]

    def index() -> None:
        if found[0] != target[0]:
            repo.git("read-tree", "-i", "-m", found[0], target[0], mutates=True)

    def tree() -> None:
        if found[1] != target[1]:
            _refuse_ignored_in_the_way(place, found[1], target[1])
            scratch_index = {"GIT_INDEX_FILE": str(place.scratch / "settle.index")}  # matches the tree as found
            checkout(repo, found[1], target[1], env=scratch_index)

    # Forward the index moves first, back the tree does: so whenever the tree holds a file the merge added, the
    # index knows it, and a capture after a stop in between sees it (even one that .gitignore matches).
    for step in (index, tree) if forward else (tree, index):
        step()
    repo.git("update-index", "-q", "--refresh", mutates=True)
    return rescue, sorted(set(odd[0]) | set(odd[1]))


def _neither(repo: Repo, found: str, goal: str, other: str, in_transit: bool = False) -> list[str]:
    """The paths where `found` holds neither the goal's content nor the other side's. With `in_transit` (the
    working tree), a file the move writes (the two sides differ there) that is missing, or holds only the first
    bytes of a side, is not one of them: git removes each file it rewrites before it writes it again (on several
    workers, checkout.workers, it removes them all first), so a stop in between leaves files missing, empty or
    cut short. That is the checkout's doing, not the user's, and they are brought to the goal."""
    if found in (goal, other):
        return []

    def changed(a: str, b: str) -> dict[str, tuple[str, str, str]]:
        """path -> (A, D, M or T; its blob in a; in b), from diff-tree's raw lines (":mode mode a b S", path)."""
        fields = repo.git("diff-tree", "-r", "-z", "--no-renames", a, b).stdout.split(b"\0")
        rows = zip(fields[0::2], fields[1::2], strict=False)  # the last field is empty
        return {p.decode("utf-8", "surrogateescape"): _raw(head) for head, p in rows}

    from_goal, from_other = changed(goal, found), changed(other, found)
    odd = from_goal.keys() & from_other.keys()
    if in_transit and odd:
        written = changed(goal, other)
        odd -= {p for p in odd if p in written and _cut_short(repo, from_goal[p][2], written[p][1:])}
    return sorted(odd)


def _raw(head: bytes) -> tuple[str, str, str]:
    _, _, a, b, status = head.decode().lstrip(":").split(" ")
    return status, a, b


def _cut_short(repo: Repo, found: str, sides: tuple[str, str]) -> bool:
    """Whether the blob `found` is missing (all zeros) or the first bytes of a side's (one that holds the path)."""
    if not found.strip("0"):
        return True

    def blob(oid: str) -> bytes | None:  # None: no file's (a submodule's commit)
        res = repo.git("cat-file", "blob", oid, check=False)
        return res.stdout if res.ok else None

    part = blob(found)
    return part is not None and any(side.strip("0") and (blob(side) or b"").startswith(part) for side in sides)


def _overlay(place: Place, goal: str, found: str, paths: list[str], name: str) -> str:
    """The tree `goal` with `paths` as they are in `found` (absent there: absent here)."""
    if not paths:
        return goal
    repo = place.repo
    env = {"GIT_INDEX_FILE": str(place.scratch / f"overlay-{name}.index")}
    repo.git("read-tree", goal, env=env)
    listing = repo.git("ls-tree", "-r", "-z", "--full-tree", found).stdout.decode("utf-8", "surrogateescape")
    entries = {item.split("\t", 1)[1]: item for item in listing.split("\0") if item}
    zero = "0" * len(goal)
    info = "".join(entries.get(p, f"0 {zero}\t{p}") + "\0" for p in paths)  # mode 0 removes the path
    repo.git("update-index", "-z", "--index-info", input=info.encode("utf-8", "surrogateescape"), env=env)
    return repo.git("write-tree", env=env).out


def _keep(repo: Repo, move: Move, found: dict[str, str]) -> str:
    """Keep the move's snapshots (and what was found) under refs/forkdev/rescue/<time>; returns that prefix."""
    prefix = f"{RESCUE_REFS}/{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    refs = {f"{prefix}/{name}": getattr(move, name) for name in SNAPSHOTS} | {
        f"{prefix}/{name}": sha for name, sha in found.items()
    }
    _set_refs(repo, refs)
    return prefix


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it. (Its git commands run shielded, so the signal sent
    to our process group does not reach them either.)"""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
