"""`invoke fork-sync` with the user's work in the checkout: it rides on top of the merge, exactly (the staged /
unstaged split, modes, untracked and ignored files), or the sync is refused and it stays where it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support import commit_all, git
from support.forksync import ENV, make_work, merged, snapshot, sync, work, write


def test_autostash_carries_the_staged_unstaged_split_and_every_byte(invoke, repos):
    _, _, fork = repos
    make_work(fork)
    before = work(fork)
    merged_before = git(fork, "rev-parse", "HEAD")
    res = sync(invoke, fork, "--autostash")
    assert res.code == 0, res.err
    assert git(fork, "rev-parse", "HEAD^1") == merged_before
    assert git(fork, "show", "HEAD:vllm/a.py") == "A = 2", "upstream's change is in the merge"
    assert work(fork) == merged(before), "staged, unstaged, untracked, ignored: every byte, mode and the split"
    assert git(fork, "stash", "list") == "" and not (fork / ".git/forkdev/fork-sync.journal").exists()
    assert git(fork, "for-each-ref", "refs/forkdev/sync/", "refs/forkdev/rescue/") == ""


def test_work_in_files_upstream_also_changed_is_merged_under_it_when_it_does_not_conflict(invoke, repos):
    up, _, fork = repos
    lines = "".join(f"line {i}\n" for i in range(1, 10))
    write(up, {"vllm/long.py": lines, "vllm/other.py": lines})
    commit_all(up, "upstream: two longer files")
    assert sync(invoke, fork).code == 0
    write(up, {"vllm/long.py": "upstream\n" + lines[7:], "vllm/other.py": "upstream\n" + lines[7:]})
    commit_all(up, "upstream edits the first lines")
    write(fork, {"vllm/other.py": lines + "staged\n"})
    git(fork, "add", "vllm/other.py")
    write(fork, {"vllm/long.py": lines + "unstaged\n", "vllm/other.py": lines + "staged\nunstaged\n"})
    staged, unstaged = git(fork, "diff", "--cached", "-U0"), git(fork, "diff", "-U0")
    res = sync(invoke, fork, "--autostash")
    assert res.code == 0, res.err
    assert (fork / "vllm/long.py").read_text() == "upstream\n" + lines[7:] + "unstaged\n"
    assert (fork / "vllm/other.py").read_text() == "upstream\n" + lines[7:] + "staged\nunstaged\n"
    assert git(fork, "show", ":vllm/other.py") == ("upstream\n" + lines[7:] + "staged").strip()
    hunks = [line for line in git(fork, "diff", "--cached", "-U0").splitlines() if line.startswith(("+", "-"))]
    assert hunks == [line for line in staged.splitlines() if line.startswith(("+", "-"))]
    hunks = [line for line in git(fork, "diff", "-U0").splitlines() if line.startswith(("+", "-"))]
    assert hunks == [line for line in unstaged.splitlines() if line.startswith(("+", "-"))]


@pytest.mark.parametrize("kind", ["unstaged", "untracked"])
def test_work_that_would_conflict_with_the_merge_is_refused_and_left_in_place(invoke, repos, kind):
    up, _, fork = repos
    if kind == "unstaged":
        write(fork, {"vllm/a.py": "A = 'mine'\n"})  # upstream changes this line too
        name = "vllm/a.py"
    else:
        write(up, {"vllm/new.py": "NEW = 'upstream'\n"})
        commit_all(up, "upstream adds vllm/new.py")
        write(fork, {"vllm/new.py": "NEW = 'mine, untracked'\n"})
        name = "vllm/new.py"
    state = snapshot(fork)
    res = sync(invoke, fork, "--autostash", "--json")
    assert res.code == 1 and "Traceback" not in res.err
    assert f"your uncommitted changes to {name} conflict with the merge; nothing was changed" in res.last_error
    assert res.json["work_conflicts"] == [name] and res.json["after"] != res.json["before"]
    assert snapshot(fork) == state


def test_an_ignored_file_where_the_merge_puts_one_is_refused(invoke, repos):
    """git's checkout would overwrite it (a local build of vllm/_C.so, a .env): fork-sync does not."""
    up, _, fork = repos
    write(up, {"vllm/_C.so": "upstream's binary\n"})
    git(up, "add", "-f", "vllm/_C.so")
    commit_all(up, "upstream ships a binary its .gitignore matches")
    write(fork, {"vllm/_C.so": "my local build\n"})
    state = snapshot(fork)
    for args in ([], ["--autostash"]):
        res = sync(invoke, fork, *args)
        assert res.code == 1 and "the merge brings vllm/_C.so where" in res.last_error, res.err
        assert "has a file that git ignores; move it away" in res.last_error
        assert snapshot(fork) == state
    (fork / "vllm/_C.so").unlink()
    assert sync(invoke, fork).code == 0
    assert (fork / "vllm/_C.so").read_text() == "upstream's binary\n"


def test_a_stale_index_lock_is_one_line_naming_it_and_the_remedy(invoke, repos):
    _, _, fork = repos
    write(fork, {"README.md": "my notes\n"})
    lock = fork / ".git" / "index.lock"
    lock.write_bytes(b"")
    state = snapshot(fork)
    res = sync(invoke, fork, "--autostash")
    assert res.code == 1 and "Traceback" not in res.err
    assert res.last_error == (
        f"error: '{lock}' exists: another git command is using '{fork}', or one was killed; if none is running, "
        f"remove it (rm '{lock}') and run fork-sync again; nothing was changed"
    )
    assert snapshot(fork) == state
    lock.unlink()
    assert sync(invoke, fork, "--autostash").code == 0
    assert (fork / "README.md").read_text() == "my notes\n"


def test_an_index_with_unresolved_conflicts_is_one_line_and_nothing_moves(invoke, repos):
    """A conflict left in the index with no operation in progress (a `git stash pop` that conflicted leaves one):
    the work cannot be saved as a tree, so --autostash cannot carry it; said in one line with the remedy, and the
    branch, the index and the files stay as they were."""
    _, _, fork = repos
    git(fork, "checkout", "-q", "-b", "side")
    write(fork, {"README.md": "side\n"})
    commit_all(fork, "side")
    git(fork, "checkout", "-q", "main")
    write(fork, {"README.md": "main\n"})
    commit_all(fork, "main edit")
    env = {**os.environ, **ENV}
    conflicted = subprocess.run(["git", "-C", str(fork), "merge", "-q", "side"], capture_output=True, env=env)
    assert conflicted.returncode == 1 and "README.md" in git(fork, "diff", "--name-only", "--diff-filter=U")
    for name in ("MERGE_HEAD", "MERGE_MSG", "MERGE_MODE"):
        (fork / ".git" / name).unlink(missing_ok=True)  # what a conflicted `git stash pop` leaves: no MERGE_HEAD
    state = snapshot(fork)
    res = sync(invoke, fork, "--autostash")
    assert res.code == 1 and "Traceback" not in res.err
    assert res.last_error.startswith(f"error: the index of '{fork}' cannot be saved (")
    assert res.last_error.endswith("resolve its conflicts (git status) and run fork-sync again; nothing was changed")
    assert snapshot(fork) == state


def _moves(err: str) -> list[str]:
    """How the checkout moved, from the echo of the move step: its read-tree and update-index calls, without the
    commits."""
    step = err[err.index("» move ") :].splitlines()
    calls = [_git_words(line) for line in step if line.startswith("+ git ")]
    return [" ".join(w for w in words if len(w) != 40) for words in calls if words[0] in ("read-tree", "update-index")]


def _git_words(line: str) -> list[str]:
    """An echoed `+ git -C PATH [-c KEY=VALUE ...] SUBCOMMAND ...` from its subcommand on."""
    words = line.split()[2:]
    while words[0] in ("-C", "-c"):
        words = words[2:]
    return words


def _checkouts(trace: Path) -> list[tuple[list[str], int]]:
    """Each `read-tree -u` git ran, from its trace2 events: (its argv, how many checkout workers it started)."""
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    found = {e["sid"]: e["argv"] for e in events if e["event"] == "start" and "read-tree" in e["argv"]}
    return [
        (argv, sum(e["event"] == "child_start" and "checkout--worker" in e["argv"] for e in events if e["sid"] == sid))
        for sid, argv in found.items()
        if "-u" in argv
    ]


def test_the_checkout_writes_on_one_worker_per_core_unless_the_user_chose_a_number(invoke, repos, tmp_path):
    """git checks out on one worker unless told otherwise, and a merge of a few weeks of vLLM rewrites ~1,500
    files: fork-sync asks for one per core (checkout.workers=0). A checkout.workers the user set is kept."""
    up, _, fork = repos
    for run, chosen in enumerate((None, "1")):
        if chosen:
            git(fork, "config", "checkout.workers", chosen)
        write(up, {f"vllm/many/{run}-{i}.py": f"N = {i}\n" for i in range(120)})  # over git's threshold, 100
        commit_all(up, f"upstream adds 120 files ({run})")
        trace = tmp_path / f"trace{run}.json"
        res = invoke("fork-sync", "--repo", str(fork), env={**ENV, "GIT_TRACE2_EVENT": str(trace)})
        assert res.code == 0, res.err
        assert (fork / f"vllm/many/{run}-119.py").read_text() == "N = 119\n"
        checkouts = _checkouts(trace)  # one, or two where git refused the one-step move (a file it found changed)
        asked, workers = {"checkout.workers=0" in argv for argv, _ in checkouts}, max(n for _, n in checkouts)
        if chosen:
            assert asked == {False} and workers == 0, checkouts
        else:
            assert asked == {True}, checkouts
            assert (workers > 1) == ((os.cpu_count() or 1) > 1), checkouts  # one core: git writes alone


def test_a_clean_checkout_moves_as_git_merge_does_in_one_read_tree_with_fresh_stat_data(invoke, repos):
    """No work to carry and nothing the move adds that .gitignore matches: one `read-tree -m -u` of the real index,
    as `git merge` does, and no refresh after it: the index's stat data is fresh as it is written."""
    up, _, fork = repos
    git(up, "checkout", "-q", "HEAD~1", "--", ".gitignore")  # upstream's .gitignore as the fork started from it
    commit_all(up, "upstream: .gitignore back")
    res = sync(invoke, fork)
    assert res.code == 0, res.err
    assert _moves(res.err) == ["read-tree -m -u"], res.err
    assert (fork / "vllm/a.py").read_text() == "A = 2\n"
    assert git(fork, "diff-files", "--name-only") == "", "every entry's stat data matches its file, unrefreshed"
    assert git(fork, "status", "--porcelain") == ""


def test_stale_stat_data_the_status_could_not_refresh_falls_back_to_the_two_step_move(invoke, repos):
    """A file the merge changes, touched (same bytes, new mtime) where `git status` may not write the index
    (GIT_OPTIONAL_LOCKS=0): git refuses the one-step move and writes nothing; the two-step move, on a fresh scratch
    index, then moves the checkout."""
    up, _, fork = repos
    git(up, "checkout", "-q", "HEAD~1", "--", ".gitignore")
    commit_all(up, "upstream: .gitignore back")
    stamp = (fork / "vllm/a.py").stat().st_mtime_ns + 5_000_000_000
    os.utime(fork / "vllm/a.py", ns=(stamp, stamp))
    res = invoke("fork-sync", "--repo", str(fork), env={**ENV, "GIT_OPTIONAL_LOCKS": "0"})
    assert res.code == 0, res.err
    assert _moves(res.err) == ["read-tree -m -u", "read-tree -i -m", "read-tree -m -u", "update-index -q --refresh"]
    assert (fork / "vllm/a.py").read_text() == "A = 2\n" and git(fork, "status", "--porcelain") == ""


def test_a_move_that_changes_a_gitignore_takes_the_two_step_move(invoke, repos):
    """Stopped inside one read-tree, the files are partly written and the index is not: a file the move adds is
    then seen only if .gitignore does not match it, so a move that changes a .gitignore (what matches changes
    halfway) or adds an ignored file moves the index first."""
    _, _, fork = repos  # the fixture's upstream adds upstream-only/ to .gitignore
    res = sync(invoke, fork)
    assert res.code == 0, res.err
    assert _moves(res.err) == ["read-tree -i -m", "read-tree -m -u", "update-index -q --refresh"], res.err
