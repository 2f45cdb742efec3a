"""Fork-sync's test fixtures: an upstream, the fork's remote and the user's checkout (`repos`), the user's work
and what it must be after a merge, and a git on PATH that counts, waits or kills (`wrapped`). The tests are split
by what they specify: test_fork_sync_policy (what a merge keeps, refuses and says), test_fork_sync_carry (the
user's work rides on top, exactly), test_fork_sync_crash (kill -9 at every step, two runs at once)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import support
from support import commit_all, git

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


# ---- runs that are stopped or overlap: a git on PATH that counts, waits or kills -----------------------------
# forkdev finds git through PATH, so this script sits in front of the real one. It counts the calls made by the
# invoke process itself (FORKDEV_TEST_PID, its parent), logging each. At call KILL_AT it kills that process with
# SIGKILL and runs nothing; at call KILL_AFTER it runs git, then kills it (the process never sees the result);
# before a call of the git command WAIT_BEFORE (fetch, say) it waits for LOG.go. Anything else runs the real git.
# Calls may come from two threads at once (the work is captured beside the merge), so a lock counts each once.
GIT_WRAPPER = r"""#!/bin/sh
if [ "$PPID" = "${FORKDEV_TEST_PID:-none}" ]; then
    exec 9>> "$FORKDEV_TEST_LOG.lock"
    flock 9
    echo "$*" >> "$FORKDEV_TEST_LOG"
    n=$(($(wc -l < "$FORKDEV_TEST_LOG")))
    exec 9>&-
    if [ "$n" = "${FORKDEV_TEST_KILL_AT:-0}" ]; then
        kill -9 "$PPID"
        exit 137
    fi
    if [ "$n" = "${FORKDEV_TEST_KILL_AFTER:-0}" ]; then
        "$FORKDEV_TEST_GIT" "$@"
        kill -9 "$PPID"
        exit 137
    fi
    case " $* " in *" ${FORKDEV_TEST_WAIT_BEFORE:-(none)} "*) wait=1 ;; *) wait=0 ;; esac
    if [ "$wait" = 1 ]; then
        : > "$FORKDEV_TEST_LOG.waiting"
        i=0
        while [ ! -e "$FORKDEV_TEST_LOG.go" ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    fi
fi
exec "$FORKDEV_TEST_GIT" "$@"
"""


@pytest.fixture
def wrapped(tmp_path, cache_dir):
    """spawn(fork, log, *args, kill_at=, kill_after=, wait_before=): `invoke fork-sync` behind the counting git,
    not waited for."""
    bin_dir = tmp_path / "wrapped-bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(GIT_WRAPPER)
    (bin_dir / "git").chmod(0o755)
    real = shutil.which("git")

    def spawn(
        fork: Path, log: Path, *args: str, kill_at: int = 0, kill_after: int = 0, wait_before: str = ""
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
            "FORKDEV_TEST_WAIT_BEFORE": wait_before,
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


def counted(wrapped, fork: Path, tmp_path: Path, *args: str) -> list[str]:
    """The git calls of an uninterrupted `fork-sync ARGS` (which it runs), one line each."""
    full = wrapped(fork, tmp_path / "count.log", *args)
    assert full.wait(60) == 0, full.communicate()[1]
    return (tmp_path / "count.log").read_text().splitlines()


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
