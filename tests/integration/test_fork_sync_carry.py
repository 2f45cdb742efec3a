"""`invoke fork-sync` with the user's work in the checkout: it rides on top of the merge, exactly (the staged /
unstaged split, modes, untracked and ignored files), or the sync is refused and it stays where it was."""

from __future__ import annotations

import pytest
from support import commit_all, git
from support.forksync import make_work, merged, snapshot, sync, work, write


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
