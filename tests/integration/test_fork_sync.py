"""`invoke fork-sync` on real repositories: an upstream, the fork's remote, and the user's checkout.

After every run, the user's files and refs are compared byte for byte with what they must be.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import support
from support import commit_all, git

from forkdev.core.errors import Failure

ENV = support.GIT_ENV


write = support.write_files


def snapshot(repo: Path) -> dict:
    """Everything of the user's that a sync must not lose or change: refs (but our private fetch ref), HEAD,
    the index, every file in the working tree, the stashes, and any merge in progress."""
    refs = [
        r
        for r in git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
        if not r.startswith("refs/forkdev/")
    ]
    files = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    return {
        "refs": refs,
        "head": git(repo, "symbolic-ref", "-q", "HEAD"),
        "index": git(repo, "ls-files", "-s"),
        "files": files,
        "stash": git(repo, "stash", "list"),
        "merge_head": (repo / ".git" / "MERGE_HEAD").exists(),
    }


@pytest.fixture
def repos(tmp_path):
    """upstream (U), the fork's remote (origin, bare) and the user's checkout of the fork (F)."""
    up, origin, fork = tmp_path / "upstream", tmp_path / "origin.git", tmp_path / "fork"
    up.mkdir()
    git(up, "init", "-q")
    write(
        up,
        {
            "vllm/a.py": "A = 1\n",
            ".gitignore": "*.so\n",
            "extras/shared.txt": "upstream v1\n",
            "README.md": "upstream\n",
            "vllm/conflict.py": "X = 'base'\n",
        },
    )
    commit_all(up, "upstream 1")
    support.sh("git", "clone", "-q", "--bare", up, origin)
    support.sh("git", "clone", "-q", origin, fork)
    git(fork, "remote", "add", "upstream", str(up))
    write(
        fork,
        {
            "extras/mine.txt": "fork only\n",
            "extras/shared.txt": "fork's version\n",
            ".github/workflows/fork-sync.yml": "name: fork-sync\n",
            ".gitignore": "*.so\nfork-only/\n",
        },
    )
    commit_all(fork, "fork: tooling")
    git(fork, "push", "-q", "origin", "main")
    write(
        up,
        {
            "vllm/a.py": "A = 2\n",
            "extras/shared.txt": "upstream v2\n",
            "extras/added.txt": "upstream adds\n",
            ".gitignore": "*.so\nupstream-only/\n",
        },
    )
    commit_all(up, "upstream 2")
    return up, origin, fork


def diverge(up: Path, fork: Path, forks: dict[str, str], upstreams: dict[str, str]) -> None:
    """The fork and upstream each commit their own version of some files."""
    write(fork, forks)
    commit_all(fork, "the fork's side")
    write(up, upstreams)
    commit_all(up, "upstream's side")


def both_edit_conflict_py(up: Path, fork: Path) -> None:
    diverge(up, fork, {"vllm/conflict.py": "X = 'fork'\n"}, {"vllm/conflict.py": "X = 'upstream'\n"})


def sync(invoke, fork: Path, *args: str):
    return invoke("fork-sync", "--repo", str(fork), *args, env=ENV)


def test_merge_keeps_protected_paths_and_unions_gitignore(invoke, repos):
    up, origin, fork = repos
    before = git(fork, "rev-parse", "HEAD")
    res = sync(invoke, fork, "--json")
    assert res.code == 0, res.err
    head = git(fork, "rev-parse", "HEAD")
    assert git(fork, "rev-list", "--parents", "-n1", "HEAD").split()[1:] == [before, git(up, "rev-parse", "HEAD")]
    assert (fork / "vllm/a.py").read_text() == "A = 2\n"
    assert (fork / "extras/shared.txt").read_text() == "fork's version\n"
    assert (fork / "extras/mine.txt").read_text() == "fork only\n"
    assert not (fork / "extras/added.txt").exists()
    assert (fork / ".github/workflows/fork-sync.yml").read_text() == "name: fork-sync\n"
    assert (fork / ".gitignore").read_text().splitlines() == ["*.so", "fork-only/", "upstream-only/"]
    assert git(fork, "status", "--porcelain") == ""
    assert res.json["after"] == head and res.json["restored"] == ["extras/"]
    assert res.json["resolved"] == {".gitignore": "union"}


def test_upstream_deleting_a_protected_file_does_not_delete_the_forks(invoke, repos):
    up, _, fork = repos
    git(up, "rm", "-q", "extras/shared.txt")
    commit_all(up, "upstream deletes extras/shared.txt")
    assert sync(invoke, fork).code == 0
    assert (fork / "extras/shared.txt").read_text() == "fork's version\n"


def test_a_conflict_elsewhere_aborts_and_leaves_everything_as_it_was(invoke, repos):
    up, _, fork = repos
    both_edit_conflict_py(up, fork)
    state = snapshot(fork)
    res = sync(invoke, fork)
    assert res.code != 0 and "Traceback" not in res.err
    assert "vllm/conflict.py" in res.last_error and "--strategy" in res.last_error
    assert snapshot(fork) == state
    ok = sync(invoke, fork, "--strategy", "vllm/*.py=theirs")
    assert ok.code == 0, ok.err
    assert (fork / "vllm/conflict.py").read_text() == "X = 'upstream'\n"


def test_a_conflict_in_a_protected_path_keeps_the_forks_side(invoke, repos):
    up, _, fork = repos
    write(up, {".github/workflows/fork-sync.yml": "name: upstream's\n"})
    commit_all(up, "upstream adds a workflow of the same name")
    assert sync(invoke, fork).code == 0
    assert (fork / ".github/workflows/fork-sync.yml").read_text() == "name: fork-sync\n"


def test_a_protected_glob_keeps_the_forks_files_when_upstream_changes_them(invoke, repos):
    up, _, fork = repos
    write(fork, {"conf/a.cfg": "fork's a\n", "conf/b.cfg": "fork's b\n"})
    commit_all(fork, "fork: its own config")
    write(up, {"conf/a.cfg": "upstream's a\n", "vllm/a.py": "A = 3\n"})
    commit_all(up, "upstream adds conf/a.cfg too")
    res = sync(invoke, fork, "--protect", "*.cfg", "--json")
    assert res.code == 0, res.err
    assert (fork / "conf/a.cfg").read_text() == "fork's a\n"
    assert (fork / "conf/b.cfg").read_text() == "fork's b\n"
    assert git(fork, "ls-tree", "-r", "--name-only", "HEAD", "conf").split() == ["conf/a.cfg", "conf/b.cfg"]
    assert "*.cfg" in res.json["restored"] and (fork / "vllm/a.py").read_text() == "A = 3\n"


@pytest.mark.parametrize(
    ("args", "kept"),
    [
        # git decides what a protected path is, so a strategy never overrides it, however the path is written
        (["--protect", "./vllm/conflict.py", "--strategy", "*=theirs"], True),
        (["--protect", ":(glob)vllm/conflict.*", "--strategy", "*=theirs"], True),
        # a file is not under the folder `vllm/conflict.py/`: not protected, so the conflict is named, not committed
        (["--protect", "vllm/conflict.py/"], False),
    ],
)
def test_protected_means_what_git_matches_and_no_conflict_marker_is_ever_committed(invoke, repos, args, kept):
    up, _, fork = repos
    both_edit_conflict_py(up, fork)
    state = snapshot(fork)
    res = sync(invoke, fork, *args)
    if kept:
        assert res.code == 0, res.err
        assert (fork / "vllm/conflict.py").read_text() == "X = 'fork'\n"
        assert (fork / "vllm/a.py").read_text() == "A = 2\n"
    else:
        assert res.code != 0 and "vllm/conflict.py" in res.last_error and "Traceback" not in res.err
        assert snapshot(fork) == state
    assert "<<<<<<<" not in git(fork, "show", "HEAD:vllm/conflict.py")


def test_union_leaves_what_it_cannot_merge_as_a_conflict_and_keeps_a_mode_change(invoke, repos):
    up, _, fork = repos
    write(up, {"data.bin": "\0base\n", "run.sh": "echo base\n"})  # a binary file and a script, then in both
    commit_all(up, "base files")
    assert sync(invoke, fork).code == 0
    write(fork, {"data.bin": "\0fork\n", "run.sh": "echo base\necho fork\n"})
    commit_all(fork, "fork edits both")
    write(up, {"data.bin": "\0upstream\n", "run.sh": "echo upstream\necho base\n"})
    (up / "run.sh").chmod(0o755)
    commit_all(up, "upstream edits both, run.sh executable")
    state = snapshot(fork)
    res = sync(invoke, fork, "--strategy", "*=union")
    assert res.code != 0 and "data.bin" in res.last_error, res.err
    assert snapshot(fork) == state, "binary files are not merged line by line: nothing changed"
    assert sync(invoke, fork, "--strategy", "*.sh=union", "--strategy", "data.bin=ours").code == 0
    assert (fork / "data.bin").read_bytes() == b"\0fork\n"
    assert set((fork / "run.sh").read_text().splitlines()) == {"echo upstream", "echo base", "echo fork"}
    assert git(fork, "ls-tree", "HEAD", "run.sh").split()[0] == "100755", "upstream's chmod +x survives union"


@pytest.mark.parametrize("args", [[], ["--strategy", "*=theirs"]])
def test_a_file_meeting_a_folder_is_a_conflict_named_by_its_path_whatever_the_strategy(invoke, repos, args):
    up, _, fork = repos
    diverge(up, fork, {"tools/run.txt": "the fork's folder\n"}, {"tools": "upstream's file\n"})
    state = snapshot(fork)
    res = sync(invoke, fork, *args)
    assert res.code != 0 and "Traceback" not in res.err
    assert "tools (a file on one side, a folder on the other)" in res.err and "tools~" not in res.last_error
    assert snapshot(fork) == state


def test_protecting_everything_is_said(invoke, repos):
    up, _, fork = repos
    before = git(fork, "rev-parse", "HEAD^{tree}")
    res = sync(invoke, fork, "--protect", ".")
    assert res.code == 0, res.err
    assert "took in every change upstream made" in res.err
    assert git(fork, "rev-parse", "HEAD^{tree}") == before


@pytest.mark.parametrize("value", ["app.cfg", None, 5])
def test_config_protect_that_is_not_a_list_is_refused(invoke, repos, tmp_path, value):
    _, _, fork = repos
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"fork_sync": {"protect": value}}))
    state = snapshot(fork)
    res = invoke("-f", str(conf), "fork-sync", "--repo", str(fork), env=ENV)
    assert res.code != 0 and "Traceback" not in res.err
    assert res.last_error.startswith("error: config fork_sync.protect is") and "list" in res.last_error
    assert snapshot(fork) == state


def test_a_protect_value_git_refuses_is_one_line(invoke, repos):
    _, _, fork = repos
    state = snapshot(fork)
    res = sync(invoke, fork, "--protect", ":(bogus)x")
    assert res.code != 0 and "Traceback" not in res.err
    assert "protected paths :(bogus)x" in res.last_error and "--protect" in res.last_error
    assert snapshot(fork) == state


@pytest.mark.parametrize("kind", ["staged", "unstaged", "untracked"])
def test_a_dirty_tree_is_refused_and_autostash_keeps_every_byte(invoke, repos, kind):
    _, _, fork = repos
    if kind == "staged":
        write(fork, {"vllm/a.py": "A = 'staged'\n"})
        git(fork, "add", "vllm/a.py")
        name = "vllm/a.py"
    elif kind == "unstaged":
        write(fork, {"README.md": "my notes\n"})
        name = "README.md"
    else:
        write(fork, {"extras/wip.txt": "untracked work\n"})
        name = "extras/wip.txt"
    state = snapshot(fork)
    refused = sync(invoke, fork)
    assert refused.code != 0 and name in refused.last_error and "--autostash" in refused.last_error
    assert snapshot(fork) == state

    if kind == "staged":  # upstream changed the same file: refused before anything moves, the work in place
        res = sync(invoke, fork, "--autostash")
        assert res.code == 1 and "Traceback" not in res.err
        assert "your uncommitted changes to vllm/a.py conflict with the merge; nothing was changed" in res.last_error
        assert f"your work is where it was, in {fork}" in res.last_error
        assert snapshot(fork) == state
        return
    res = sync(invoke, fork, "--autostash")
    assert res.code == 0, res.err
    assert (fork / name).read_bytes() == state["files"][name]
    assert git(fork, "stash", "list") == ""
    assert (fork / "extras/shared.txt").read_text() == "fork's version\n"


def test_a_dirty_checkout_is_not_touched_when_syncing_another_branch(invoke, repos):
    _, _, fork = repos
    git(fork, "branch", "-q", "sync-target")
    write(fork, {"README.md": "my notes\n", "scratch.txt": "mine\n"})
    files_before = snapshot(fork)["files"]
    res = sync(invoke, fork, "--into", "sync-target")
    assert res.code == 0, res.err
    assert snapshot(fork)["files"] == files_before
    assert git(fork, "show", "sync-target:vllm/a.py") == "A = 2"


def test_a_failed_fetch_is_an_error_and_changes_nothing(invoke, repos, tmp_path):
    _, _, fork = repos
    state = snapshot(fork)
    res = sync(invoke, fork, "--upstream", str(tmp_path / "no-such-upstream"))
    assert res.code != 0 and "no-such-upstream" in res.last_error and "nothing was changed" in res.last_error
    assert snapshot(fork) == state


def test_push_only_when_ahead_and_a_rejected_push_rewrites_nothing(invoke, repos, tmp_path):
    up, origin, fork = repos
    assert sync(invoke, fork, "--push").code == 0
    assert support.sh("git", "-C", origin, "rev-parse", "main") == git(fork, "rev-parse", "HEAD")
    again = sync(invoke, fork, "--push")
    assert again.code == 0 and "nothing to push" in again.err

    other = tmp_path / "other"
    support.sh("git", "clone", "-q", origin, other)
    write(other, {"NOTES": "someone else\n"})
    commit_all(other, "someone else pushes")
    git(other, "push", "-q", "origin", "main")
    write(up, {"vllm/a.py": "A = 3\n"})
    commit_all(up, "upstream 3")
    remote_before = support.sh("git", "-C", origin, "rev-parse", "main")
    res = sync(invoke, fork, "--push")
    assert res.code != 0 and "rejected" in res.last_error and "nothing was rewritten" in res.last_error
    assert support.sh("git", "-C", origin, "rev-parse", "main") == remote_before
    assert (fork / "vllm/a.py").read_text() == "A = 3\n", "the merge is kept locally"


def test_dry_run_moves_nothing(invoke, repos):
    _, _, fork = repos
    state = snapshot(fork)
    res = sync(invoke, fork, "--dry-run", "--json")
    assert res.code == 0, res.err
    assert res.json["after"] != res.json["before"] and res.json["dry_run"] is True
    assert snapshot(fork) == state


def test_bad_input_is_one_line(invoke, repos, tmp_path):
    _, origin, fork = repos
    assert "not a git checkout" in sync(invoke, origin).last_error, "a bare repository has nothing to carry"
    assert "malformed --strategy" in sync(invoke, fork, "--strategy", "nonsense").last_error
    assert "unknown strategy 'mine'" in sync(invoke, fork, "--strategy", "x=mine").last_error
    assert "no branch 'nope'" in sync(invoke, fork, "--into", "nope").last_error
    assert "not a git checkout" in sync(invoke, tmp_path).last_error
    git(fork, "checkout", "-q", "--detach")
    assert "detached" in sync(invoke, fork).last_error


def test_sigint_at_any_moment_loses_nothing(repos):
    """Interrupt a sync with autostash at many moments; each time the user's edits and untracked files are in the
    working tree, the stash is empty, and the branch is either the old commit or the merge, checked out cleanly."""
    up, _, fork = repos
    support.write_tree(fork, limit_bytes=512)  # thousands of files make the run long enough to interrupt
    commit_all(fork, "fork: a big tree")
    write(up, {f"vllm/gen{i}.py": f"G = {i}\n" for i in range(300)})
    commit_all(up, "upstream: many files")
    before = git(fork, "rev-parse", "HEAD")
    outcomes: set[bool] = set()
    for delay in (0.15, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 1.0, 1.2):
        write(fork, {"README.md": f"my edit {delay}\n", "notes/wip.txt": f"untracked {delay}\n"})
        proc = subprocess.Popen(
            support.invoke_argv("fork-sync", "--repo", str(fork), "--autostash"),
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        head = git(fork, "rev-parse", "HEAD")
        assert head in (before, *git(fork, "rev-list", "--merges", "-n1", "HEAD").split())
        outcomes.add(head == before)
        assert git(fork, "stash", "list") == "", "stash, fast-forward and restore happen whole"
        assert (fork / "README.md").read_text() == f"my edit {delay}\n"
        assert (fork / "notes/wip.txt").read_text() == f"untracked {delay}\n"
        assert not (fork / ".git" / "MERGE_HEAD").exists()
        changed = {line.split(maxsplit=1)[1] for line in git(fork, "status", "--porcelain").splitlines()}
        assert changed <= {"README.md", "notes/"}, changed
        if head != before:  # the test's own repository: start the next round from the old commit
            git(fork, "stash", "push", "-q", "--include-untracked")
            git(fork, "reset", "-q", "--keep", before)
            git(fork, "stash", "pop", "-q")
    assert outcomes == {True, False}, "interrupted both before and after the branch moved"


# ---- the user's work rides on top of the merge, exactly ---------------------------------------------------------
def work(repo: Path) -> dict:
    """The user's work as git and the disk show it: staged diff, unstaged diff, untracked files, and the bytes
    and modes of every file outside .git."""
    return {
        "staged": git(repo, "diff", "--cached", "--binary"),
        "unstaged": git(repo, "diff", "--binary"),
        "untracked": git(repo, "ls-files", "--others", "--exclude-standard"),
        "files": {
            str(p.relative_to(repo)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo).parts
        },
    }


def make_work(fork: Path) -> None:
    """A staged edit, an edit staged then edited again, an unstaged edit, a staged and an unstaged deletion, an
    executable bit, an untracked file and an ignored one: none of them in files the upstream change touches."""
    write(fork, {"README.md": "staged notes\n", "vllm/conflict.py": "X = 'staged'\n"})
    git(fork, "add", "README.md", "vllm/conflict.py")
    write(fork, {"vllm/conflict.py": "X = 'staged, then more'\n", "extras/mine.txt": "unstaged edit\n"})
    git(fork, "rm", "-q", "--cached", ".github/workflows/fork-sync.yml")
    (fork / "extras/shared.txt").unlink()
    (fork / "README.md").chmod(0o755)
    write(fork, {"notes/wip.txt": "untracked work\n", "vllm/_local.so": "ignored build output\n"})


def merged(before: dict) -> dict:
    """The user's work (as `work` shows it) after the fixture's upstream change is merged under it: the files
    upstream changed hold the merge's content; the diffs, untracked files and every other byte are as they were."""
    after = {**before, "files": dict(before["files"])}
    after["files"]["vllm/a.py"] = (b"A = 2\n", before["files"]["vllm/a.py"][1])
    after["files"][".gitignore"] = (b"*.so\nfork-only/\nupstream-only/\n", before["files"][".gitignore"][1])
    return after


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


# ---- identity, flags over config, the remote-tracking ref ----------------------------------------------------------
def no_identity(tmp_path: Path) -> dict[str, str]:
    """An environment where git knows no user: no config files, no guessing, empty identity variables."""
    home = tmp_path / "home-without-gitconfig"
    home.mkdir()
    idents = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
    return {
        **dict.fromkeys(idents, ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "user.useConfigOnly",
        "GIT_CONFIG_VALUE_0": "true",
    }


def test_without_a_git_identity_a_dry_run_works_and_a_real_run_says_how_to_set_one(invoke, repos, tmp_path):
    _, _, fork = repos
    env = no_identity(tmp_path)
    state = snapshot(fork)
    dry = invoke("fork-sync", "--repo", str(fork), "--dry-run", "--json", env=env)
    assert dry.code == 0, dry.err
    assert dry.json["after"] != dry.json["before"] and dry.json["dry_run"] is True
    real = invoke("fork-sync", "--repo", str(fork), env=env)
    assert real.code == 1 and "Traceback" not in real.err
    assert real.last_error.startswith(f"error: git has no identity to make the merge commit in '{fork}'")
    assert "git config user.name 'Your Name' && git config user.email you@example.com" in real.last_error
    assert snapshot(fork) == state


def test_no_push_and_no_autostash_switch_off_what_config_switches_on(invoke, repos):
    _, origin, fork = repos
    on = {**ENV, "INVOKE_FORK_SYNC_PUSH": "1", "INVOKE_FORK_SYNC_AUTOSTASH": "1"}
    remote_before = support.sh("git", "-C", origin, "rev-parse", "main")
    write(fork, {"README.md": "my notes\n"})
    state = snapshot(fork)
    refused = invoke("fork-sync", "--repo", str(fork), "--no-autostash", env=on)
    assert refused.code == 1 and "uncommitted changes" in refused.last_error and "README.md" in refused.last_error
    assert snapshot(fork) == state
    kept = invoke("fork-sync", "--repo", str(fork), "--no-push", env=on)
    assert kept.code == 0, kept.err
    assert (fork / "README.md").read_text() == "my notes\n", "config's autostash carried the work"
    assert support.sh("git", "-C", origin, "rev-parse", "main") == remote_before, "--no-push won over config"
    pushed = invoke("fork-sync", "--repo", str(fork), env=on)
    assert pushed.code == 0, pushed.err
    assert support.sh("git", "-C", origin, "rev-parse", "main") == git(fork, "rev-parse", "HEAD")
    both = invoke("fork-sync", "--repo", str(fork), "--push", "--no-push", env=ENV)
    assert both.code == 1 and "--push and --no-push contradict each other" in both.last_error


def test_the_remote_tracking_ref_follows_a_successful_sync_of_a_named_remote(invoke, repos):
    up, _, fork = repos
    assert git(fork, "for-each-ref", "refs/remotes/upstream/") == ""
    res = sync(invoke, fork, "--json")
    assert res.code == 0, res.err
    assert res.json["tracking"] == "refs/remotes/upstream/main"
    assert git(fork, "rev-parse", "refs/remotes/upstream/main") == git(up, "rev-parse", "HEAD")
    write(up, {"README.md": "upstream 3\n"})
    commit_all(up, "upstream 3")
    by_url = sync(invoke, fork, "--upstream", str(up), "--json")  # a URL has no remote-tracking refs
    assert by_url.code == 0 and by_url.json["tracking"] == ""
    assert git(fork, "rev-parse", "refs/remotes/upstream/main") != git(up, "rev-parse", "HEAD")
    up_to_date = sync(invoke, fork, "--json")  # nothing to merge, still fetched: the ref catches up
    assert up_to_date.code == 0 and up_to_date.json["up_to_date"] is True
    assert git(fork, "rev-parse", "refs/remotes/upstream/main") == git(up, "rev-parse", "HEAD")


# ---- values never become options ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--upstream=--upload-pack=touch {marker}"], {}, "--upstream"),
        ([], {"INVOKE_UPSTREAM_REMOTE": "--upload-pack=touch {marker}"}, "config upstream.remote"),
        (
            [],
            {"INVOKE_UPSTREAM_URL": "--upload-pack=touch {marker}", "INVOKE_UPSTREAM_REMOTE": "no"},
            "config upstream.url",
        ),
        (["--branch=--upload-pack=touch {marker}"], {}, "--branch"),
        (["--into=--upload-pack=touch {marker}"], {}, "--into"),
        (["--protect=--upload-pack=touch {marker}"], {}, "--protect"),
        (["--strategy=--output={marker}=ours"], {}, "--strategy path"),
        (["--repo=--upload-pack=touch {marker}"], {}, "--repo"),
    ],
)
def test_a_value_starting_with_a_dash_is_refused_and_runs_nothing(invoke, repos, tmp_path, args, env, named):
    _, _, fork = repos
    marker = tmp_path / "ran"
    state = snapshot(fork)
    argv = [a.format(marker=marker) for a in args]
    res = invoke(
        "fork-sync",
        *([] if named == "--repo" else ["--repo", str(fork)]),
        *argv,
        env={
            **ENV,
            **{k: v.format(marker=marker, m=marker) for k, v in env.items()},
        },
    )
    assert res.code == 1 and "Traceback" not in res.err
    assert res.last_error.startswith(f"error: {named} '--") and "starts with '-'" in res.last_error
    assert not marker.exists()
    assert snapshot(fork) == state


def test_values_reach_git_only_after_end_of_options(repos, tmp_path):
    """Below the task's checks: the fetch itself hands the upstream to git after `--`, so even a value that got
    past validation names a repository, never an option."""
    from forkdev.core.gitrepo import Repo
    from forkdev.core.proc import Runner
    from forkdev.core.sync import Merge

    _, _, fork = repos
    marker = tmp_path / "ran"
    run = Runner(echo=False)
    with pytest.raises(Failure, match="fetching branch 'main' of upstream '--upload-pack=touch "):
        Merge(Repo.open(fork, run), run).fetch(f"--upload-pack=touch {marker}", "main")
    assert not marker.exists()


@pytest.mark.parametrize("branch", ["main:refs/heads/mine", "*", "a..b"])
def test_a_branch_that_would_widen_the_refspec_is_refused(invoke, repos, branch):
    _, _, fork = repos
    state = snapshot(fork)
    res = sync(invoke, fork, f"--branch={branch}")
    assert res.code == 1 and "is not a valid branch name" in res.last_error and branch in res.last_error
    assert snapshot(fork) == state


def test_a_url_with_a_command_transport_runs_nothing(invoke, repos, tmp_path):
    _, _, fork = repos
    marker = tmp_path / "ran"
    res = sync(invoke, fork, f"--upstream=ext::sh -c touch% {marker}")
    assert res.code == 1 and "fetching branch 'main'" in res.last_error
    assert not marker.exists()


# ---- runs that are stopped or overlap: a git on PATH that counts, waits or kills -----------------------------
# forkdev finds git through PATH, so this script sits in front of the real one. It counts the calls made by the
# invoke process itself (FORKDEV_TEST_PID, its parent), logging each. At call KILL_AT it kills that process with
# SIGKILL and runs nothing; at call KILL_AFTER it runs git, then kills it (the process never sees the result);
# at call WAIT_AT it waits for LOG.go before running git. Anything else runs the real git.
GIT_WRAPPER = r"""#!/bin/sh
if [ "$PPID" = "${FORKDEV_TEST_PID:-none}" ]; then
    echo "$*" >> "$FORKDEV_TEST_LOG"
    n=$(($(wc -l < "$FORKDEV_TEST_LOG")))
    if [ "$n" = "${FORKDEV_TEST_KILL_AT:-0}" ]; then
        kill -9 "$PPID"
        exit 137
    fi
    if [ "$n" = "${FORKDEV_TEST_KILL_AFTER:-0}" ]; then
        "$FORKDEV_TEST_GIT" "$@"
        kill -9 "$PPID"
        exit 137
    fi
    if [ "$n" = "${FORKDEV_TEST_WAIT_AT:-0}" ]; then
        : > "$FORKDEV_TEST_LOG.waiting"
        i=0
        while [ ! -e "$FORKDEV_TEST_LOG.go" ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    fi
fi
exec "$FORKDEV_TEST_GIT" "$@"
"""


@pytest.fixture
def wrapped(tmp_path, cache_dir):
    """spawn(fork, log, *args, kill_at=, kill_after=, wait_at=): `invoke fork-sync` behind the counting git, not
    waited for."""
    bin_dir = tmp_path / "wrapped-bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(GIT_WRAPPER)
    (bin_dir / "git").chmod(0o755)
    real = shutil.which("git")

    def spawn(
        fork: Path, log: Path, *args: str, kill_at: int = 0, kill_after: int = 0, wait_at: int = 0
    ) -> subprocess.Popen:
        env = {
            **os.environ,
            **ENV,
            "INVOKE_CACHE_DIR": str(cache_dir),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FORKDEV_TEST_GIT": real,
            "FORKDEV_TEST_LOG": str(log),
            "FORKDEV_TEST_KILL_AT": str(kill_at),
            "FORKDEV_TEST_KILL_AFTER": str(kill_after),
            "FORKDEV_TEST_WAIT_AT": str(wait_at),
        }
        env.pop("GITHUB_ACTIONS", None)
        argv = support.invoke_argv("fork-sync", "--repo", str(fork), *args)
        # `exec` keeps the shell's pid, so $$ is the pid of the invoke process the wrapper must count and kill.
        shell = 'FORKDEV_TEST_PID=$$; export FORKDEV_TEST_PID; exec "$@"'
        return subprocess.Popen(
            ["sh", "-c", shell, "sh", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return spawn


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before reaching {path.name}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_second_run_while_one_holds_the_repository_is_refused_naming_its_pid(invoke, repos, wrapped, tmp_path):
    _, _, fork = repos
    log = tmp_path / "first.log"
    first = wrapped(fork, log, wait_at=1_000)  # a dry count first: where is the fetch?
    assert first.wait(60) == 0, first.communicate()[1]
    fetch_at = next(i for i, line in enumerate(log.read_text().splitlines(), 1) if " fetch " in f" {line} ")
    log.unlink()
    git(fork, "reset", "-q", "--keep", "HEAD~1")  # the test's own repository: back to before the merge

    first = wrapped(fork, log, wait_at=fetch_at)  # holds the lock, waiting in front of its fetch
    try:
        wait_for(log.with_name(log.name + ".waiting"), first)
        state = snapshot(fork)
        second = sync(invoke, fork)
        assert second.code == 1 and "Traceback" not in second.err
        assert f"another fork-sync of {fork} is running (pid {first.pid}" in second.last_error
        assert snapshot(fork) == state, "the refused run changed nothing"
    finally:
        log.with_name(log.name + ".go").touch()  # never leave the first run waiting
    assert first.wait(60) == 0, first.communicate()[1]
    assert (fork / "vllm/a.py").read_text() == "A = 2\n"
    assert sync(invoke, fork).code == 0, "the lock is released when its holder ends"


@pytest.mark.parametrize(
    ("path", "edit", "code"),
    [
        ("vllm/a.py", "A = 'mine, mid-sync'\n", 1),
        ("vllm/a.py", None, 1),
        ("README.md", "mine, mid-sync\n", 0),
        ("README.md", None, 0),
    ],
    ids=["in-a-file-the-merge-changes", "deleting-a-file-the-merge-changes", "elsewhere", "deleting-elsewhere"],
)
def test_an_edit_made_while_a_clean_checkout_syncs_is_never_overwritten(
    invoke, repos, wrapped, tmp_path, path, edit, code
):
    """Work made after `git status` found the checkout clean (here while the fetch runs) is work too: an edit or a
    deletion of a file the merge changes makes the sync refuse, and nothing is changed (git's read-tree alone
    would take the missing file for an unchanged one and write upstream's back); one elsewhere stays on top of
    the merge, unstaged."""
    _, _, fork = repos
    log = tmp_path / "dry.log"
    dry = wrapped(fork, log, wait_at=1_000)
    assert dry.wait(60) == 0, dry.communicate()[1]
    fetch_at = next(i for i, line in enumerate(log.read_text().splitlines(), 1) if " fetch " in f" {line} ")
    git(fork, "reset", "-q", "--keep", "HEAD~1")  # the test's own repository: back to before the merge
    before = git(fork, "rev-parse", "HEAD")
    log = tmp_path / "run.log"
    run = wrapped(fork, log, wait_at=fetch_at)
    try:
        wait_for(log.with_name(log.name + ".waiting"), run)
        write(fork, {path: edit})
    finally:
        log.with_name(log.name + ".go").touch()
    _, err = run.communicate(timeout=60)
    assert run.returncode == code, err
    kept = (fork / path).read_text() if (fork / path).exists() else None
    assert kept == edit, "the edit (or deletion) made during the sync is kept"
    assert git(fork, "diff", "--cached") == "" and git(fork, "diff", "--name-only") == path
    if code:
        assert "Traceback" not in err and git(fork, "rev-parse", "HEAD") == before
        assert not (fork / ".git/forkdev/fork-sync.journal").exists()
    else:
        assert git(fork, "rev-parse", "HEAD^1") == before and (fork / "vllm/a.py").read_text() == "A = 2\n"


def counted(wrapped, fork: Path, tmp_path: Path, *args: str) -> list[str]:
    """The git calls of an uninterrupted `fork-sync ARGS` (which it runs), one line each."""
    full = wrapped(fork, tmp_path / "count.log", *args)
    assert full.wait(60) == 0, full.communicate()[1]
    return (tmp_path / "count.log").read_text().splitlines()


@pytest.mark.parametrize("args", [("--autostash",), ()], ids=["autostash-over-work", "clean-checkout"])
def test_a_kill_at_any_git_call_loses_nothing_and_the_next_run_settles_it(invoke, repos, wrapped, tmp_path, args):
    """The crash matrix: SIGKILL the task just before its N-th git call, for every N of a run with --autostash
    over staged, unstaged, untracked and ignored work (or of a plain run over a clean checkout, whose work is
    not staged: only an ignored file), and just after each call from the first that writes a ref on (there a
    kill can fall between git and the journal's write or removal); then a second run. Each time the branch ends
    merged and the work is back byte for byte, staged and unstaged as it was; and right after the kill, without
    a journal the checkout is wholly before or wholly after."""
    up, _, fork = repos
    if args:
        make_work(fork)
    else:
        write(fork, {"vllm/_local.so": "ignored build output\n"})
    before_work = work(fork)
    expected = merged(before_work)
    before, theirs = git(fork, "rev-parse", "HEAD"), git(up, "rev-parse", "HEAD")
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)

    calls = counted(wrapped, fork, tmp_path, *args)
    tree = git(fork, "rev-parse", "HEAD^{tree}")
    assert work(fork) == expected and len(calls) > 20

    refs_from = next(i for i, line in enumerate(calls, 1) if line.endswith(" update-ref --stdin"))
    points = [(n, "before") for n in range(1, len(calls) + 1)] + [
        (n, "after") for n in range(refs_from, len(calls) + 1)
    ]

    settled: set[str] = set()

    def rounds(worker: int) -> list[tuple[int, str]]:
        done = []
        home = tmp_path / f"worker{worker}"
        home.mkdir()
        checkout = home / "fork"
        for n, when in points[worker::2]:
            where = f"killed {when} call {n}: git {calls[n - 1]}"
            if checkout.exists():
                shutil.rmtree(checkout)
            shutil.copytree(pristine, checkout, symlinks=True)
            kill = {"kill_at": n} if when == "before" else {"kill_after": n}
            crash = wrapped(checkout, home / f"{n}-{when}.log", *args, **kill)
            err = crash.communicate(timeout=60)[1]
            assert crash.returncode == -signal.SIGKILL, f"{where}: not killed ({crash.returncode}): {err}"
            journal = (checkout / ".git/forkdev/fork-sync.journal").exists()
            if not journal:
                assert work(checkout) in (before_work, expected), f"{where}: a checkout half moved, no journal"
            res = sync(invoke, checkout, *args)
            assert res.code == 0, f"{where}\n{res.err}"
            assert ("an interrupted fork-sync" in res.err) == journal, f"{where}: says what it settled\n{res.err}"
            settled.update(what for what in ("was rolled back", "was finished") if what in res.err)
            assert git(checkout, "rev-list", "--parents", "-n1", "HEAD").split()[1:] == [before, theirs], where
            assert git(checkout, "rev-parse", "HEAD^{tree}") == tree, where
            assert work(checkout) == expected, where
            assert git(checkout, "stash", "list") == "", where
            assert git(checkout, "for-each-ref", "refs/forkdev/sync/", "refs/forkdev/rescue/") == "", where
            assert os.listdir(checkout / ".git/forkdev") == ["fork-sync.lock"], where
            done.append((n, when))
        return done

    with ThreadPoolExecutor(2) as pool:
        covered = [point for done in pool.map(rounds, (0, 1)) for point in done]
    assert sorted(covered) == sorted(points)
    assert settled == {"was rolled back", "was finished"}


def test_two_runs_at_once_end_in_one_correct_merge_even_when_one_is_killed(invoke, repos, wrapped, tmp_path, cache_dir):
    """Two `fork-sync --autostash` started together on one checkout, one of them killed before its N-th git call
    (N = 0: not killed): each run succeeds, is refused by the lock or was killed; a third run then finds the
    branch merged once and the work intact, staged and unstaged as it was."""
    up, _, fork = repos
    make_work(fork)
    expected = merged(work(fork))
    before, theirs = git(fork, "rev-parse", "HEAD"), git(up, "rev-parse", "HEAD")
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)
    calls = counted(wrapped, fork, tmp_path, "--autostash")
    moves = [i for i, line in enumerate(calls, 1) if " read-tree -i -m " in line][0]  # the first change
    env = {**os.environ, **ENV, "INVOKE_CACHE_DIR": str(cache_dir)}
    outcomes = set()
    for n in sorted({0, *range(2, moves, 5), *range(moves - 2, len(calls) + 1)}):
        where = f"killed before call {n}" if n else "no kill"
        shutil.rmtree(fork)
        shutil.copytree(pristine, fork, symlinks=True)
        first = wrapped(fork, tmp_path / f"{n}.log", "--autostash", kill_at=n)
        second = subprocess.Popen(
            support.invoke_argv("fork-sync", "--repo", str(fork), "--autostash"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for proc in (first, second):
            err = proc.communicate(timeout=60)[-1]
            last = err.strip().splitlines()[-1] if err.strip() else ""
            assert proc.returncode in (0, 1, -signal.SIGKILL), f"{where}: {err}"
            if proc.returncode == 1:
                assert "another fork-sync of" in last and "is running (pid" in last, f"{where}: {err}"
            outcomes.add(proc.returncode)
        res = sync(invoke, fork, "--autostash")
        assert res.code == 0, f"{where}\n{res.err}"
        assert git(fork, "rev-list", "--parents", "-n1", "HEAD").split()[1:] == [before, theirs], where
        assert work(fork) == expected, where
        assert git(fork, "for-each-ref", "refs/forkdev/sync/", "refs/forkdev/rescue/") == "", where
    assert 0 in outcomes


def interrupted(wrapped, pristine: Path, checkout: Path, log: Path, calls: list[str], when: str) -> None:
    """A fresh copy of the pristine checkout at `checkout`, with a sync killed around its branch move: before it
    (index and working tree moved: to roll back) or after it (the journal still there: to finish)."""
    if checkout.exists():
        shutil.rmtree(checkout)
    shutil.copytree(pristine, checkout, symlinks=True)
    cas = next(i for i, line in enumerate(calls, 1) if " update-ref -m fork-sync: merge upstream " in line)
    crash = wrapped(checkout, log, "--autostash", **({"kill_at": cas} if when == "before" else {"kill_after": cas}))
    crash.communicate(timeout=60)
    assert crash.returncode == -signal.SIGKILL and (checkout / ".git/forkdev/fork-sync.journal").exists()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_while_settling_an_interrupted_sync_is_settled_by_the_run_after(invoke, repos, wrapped, tmp_path, when):
    up, _, fork = repos
    make_work(fork)
    expected = merged(work(fork))
    before, theirs = git(fork, "rev-parse", "HEAD"), git(up, "rev-parse", "HEAD")
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)
    calls = counted(wrapped, fork, tmp_path, "--autostash")
    interrupted(wrapped, pristine, fork, tmp_path / "first.log", calls, when)
    settling = wrapped(fork, tmp_path / "settling.log", "--autostash")  # the calls of a run that settles it
    assert settling.wait(60) == 0, settling.communicate()[1]
    settle_calls = (tmp_path / "settling.log").read_text().splitlines()
    done = next(i for i, line in enumerate(settle_calls, 1) if line.endswith(" symbolic-ref --quiet --short HEAD"))

    def rounds(worker: int) -> int:
        home = tmp_path / f"worker{worker}"
        home.mkdir()
        checkout = home / "fork"
        for n in range(5 + worker, done + 1, 2):
            where = f"first killed {when} its branch move, then the settling run killed before its call {n}"
            interrupted(wrapped, pristine, checkout, home / f"first-{n}.log", calls, when)
            second = wrapped(checkout, home / f"second-{n}.log", "--autostash", kill_at=n)
            second.communicate(timeout=60)
            assert second.returncode == -signal.SIGKILL, where
            res = sync(invoke, checkout, "--autostash")
            assert res.code == 0, f"{where}\n{res.err}"
            assert git(checkout, "rev-list", "--parents", "-n1", "HEAD").split()[1:] == [before, theirs], where
            assert work(checkout) == expected, where
            assert git(checkout, "for-each-ref", "refs/forkdev/sync/", "refs/forkdev/rescue/") == "", where
        return n

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(rounds, (0, 1)))[-1] == done


def test_edits_made_after_a_kill_are_left_alone_and_kept_under_a_rescue_ref(invoke, repos, wrapped, tmp_path):
    _, _, fork = repos
    make_work(fork)
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)
    calls = counted(wrapped, fork, tmp_path, "--autostash")
    interrupted(wrapped, pristine, fork, tmp_path / "first.log", calls, "before")
    write(fork, {"extras/mine.txt": "edited after the kill\n", "late.txt": "new after the kill\n"})
    dry = sync(invoke, fork, "--autostash", "--dry-run")
    assert dry.code == 0 and "is pending; a real run settles it first" in dry.err
    assert (fork / ".git/forkdev/fork-sync.journal").exists()
    res = sync(invoke, fork, "--autostash", "--json")
    assert res.code == 0, res.err
    rescue = res.json["rescue"]
    assert res.json["recovered"] == "rolled back" and rescue.startswith("refs/forkdev/rescue/")
    assert "extras/mine.txt, late.txt changed after the interruption and were left as they are" in res.err
    assert f"the work before the sync ({rescue}/tree, /index) and as found ({rescue}/tree_found" in res.err
    assert (fork / "extras/mine.txt").read_text() == "edited after the kill\n"
    assert (fork / "late.txt").read_text() == "new after the kill\n"
    assert git(fork, "show", f"{rescue}/tree:extras/mine.txt") == "unstaged edit", "the work as it was"
    assert git(fork, "show", f"{rescue}/tree_found:extras/mine.txt") == "edited after the kill"
    assert git(fork, "show", f"{rescue}/index:README.md") == "staged notes"
    staged = [".github/workflows/fork-sync.yml", "README.md", "vllm/conflict.py"]
    assert git(fork, "diff", "--cached", "--name-only").splitlines() == staged, "the split is kept"
    assert (fork / "vllm/a.py").read_text() == "A = 2\n" and git(fork, "for-each-ref", "refs/forkdev/sync/") == ""


def test_an_interrupted_sync_whose_branch_moved_since_is_neither_undone_nor_finished(invoke, repos, wrapped, tmp_path):
    _, _, fork = repos
    make_work(fork)
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)
    calls = counted(wrapped, fork, tmp_path, "--autostash")
    interrupted(wrapped, pristine, fork, tmp_path / "first.log", calls, "before")
    git(fork, "commit", "-q", "--allow-empty", "-m", "the user commits after the kill")
    state = snapshot(fork)
    res = sync(invoke, fork, "--autostash")
    assert res.code == 1 and "Traceback" not in res.err
    assert "an interrupted fork-sync of 'main' was found, but 'main' has moved since" in res.last_error
    rescue = res.last_error.split("kept in ")[1].split("/tree")[0]
    assert git(fork, "show", f"{rescue}/tree:extras/mine.txt") == "unstaged edit"
    assert git(fork, "show", f"{rescue}/index:README.md") == "staged notes"
    assert {k: v for k, v in snapshot(fork).items() if k != "refs"} == {k: v for k, v in state.items() if k != "refs"}
    assert (
        not (fork / ".git/forkdev/fork-sync.journal").exists() and git(fork, "for-each-ref", "refs/forkdev/sync/") == ""
    )
