"""`invoke fork-sync` stopped at every step or run twice at once: SIGINT at any moment, SIGKILL before and after
every git call, a second run while one holds the repository; nothing of the user's is ever lost, and the next run
settles what a killed one left."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import support
from support import commit_all, git
from support.forksync import ENV, counted, interrupted, make_work, merged, snapshot, sync, wait_for, work, write


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


def test_a_second_run_while_one_holds_the_repository_is_refused_naming_its_pid(invoke, repos, wrapped, tmp_path):
    _, _, fork = repos
    log = tmp_path / "first.log"
    first = wrapped(fork, log, wait_before="fetch")  # holds the lock, waiting in front of its fetch
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
    """Work made after `git status` found the checkout clean (here once the fetch is done, in front of the merge)
    is work too: an edit or a deletion of a file the merge changes makes the sync refuse, and nothing is changed
    (git's read-tree alone would take the missing file for an unchanged one and write upstream's back); one
    elsewhere stays on top of the merge, unstaged."""
    _, _, fork = repos
    before = git(fork, "rev-parse", "HEAD")
    log = tmp_path / "run.log"
    run = wrapped(fork, log, wait_before="merge-base")
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


@pytest.mark.parametrize(
    ("args", "move"),
    [(("--autostash",), "two-step"), ((), "two-step"), ((), "one-step")],
    ids=["autostash-over-work", "clean-checkout", "clean-checkout-one-read-tree"],
)
def test_a_kill_at_any_git_call_loses_nothing_and_the_next_run_settles_it(invoke, repos, wrapped, tmp_path, args, move):
    """The crash matrix: SIGKILL the task just before its N-th git call, for every N of a run with --autostash
    over staged, unstaged, untracked and ignored work (or of a plain run over a clean checkout, whose work is
    not staged: only an ignored file; moved in two steps where the merge changes .gitignore, else in one
    read-tree), and just after each call from the first that writes a ref on (there a kill can fall between git
    and the journal's write or removal); then a second run. Each time the branch ends merged and the work is
    back byte for byte, staged and unstaged as it was; and right after the kill, without a journal the checkout
    is wholly before or wholly after."""
    up, _, fork = repos
    if args:
        make_work(fork)
    else:
        write(fork, {"vllm/_local.so": "ignored build output\n"})
    if move == "one-step":
        git(up, "checkout", "-q", "HEAD~1", "--", ".gitignore")  # the merge leaves the fork's .gitignore as it is
        commit_all(up, "upstream: .gitignore back")
    before_work = work(fork)
    expected = merged(before_work)
    if move == "one-step":
        expected["files"][".gitignore"] = before_work["files"][".gitignore"]
    before, theirs = git(fork, "rev-parse", "HEAD"), git(up, "rev-parse", "HEAD")
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)

    calls = counted(wrapped, fork, tmp_path, *args)
    tree = git(fork, "rev-parse", "HEAD^{tree}")
    assert work(fork) == expected and len(calls) > 20
    two_step = any(" read-tree -i -m " in f" {line} " for line in calls)
    assert two_step == (move == "two-step"), calls

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


def worked_and_counted(up: Path, fork: Path, wrapped, tmp_path: Path):
    """The user's work made in the fork: (what it must be after the merge, the fork's and upstream's commits, a
    pristine copy of the checkout, and the git calls of one uninterrupted sync with --autostash, which it runs)."""
    make_work(fork)
    expected = merged(work(fork))
    before, theirs = git(fork, "rev-parse", "HEAD"), git(up, "rev-parse", "HEAD")
    pristine = tmp_path / "pristine"
    shutil.copytree(fork, pristine, symlinks=True)
    return expected, before, theirs, pristine, counted(wrapped, fork, tmp_path, "--autostash")


def test_two_runs_at_once_end_in_one_correct_merge_even_when_one_is_killed(invoke, repos, wrapped, tmp_path, cache_dir):
    """Two `fork-sync --autostash` started together on one checkout, one of them killed before its N-th git call
    (N = 0: not killed): each run succeeds, is refused by the lock or was killed; a third run then finds the
    branch merged once and the work intact, staged and unstaged as it was."""
    up, _, fork = repos
    expected, before, theirs, pristine, calls = worked_and_counted(up, fork, wrapped, tmp_path)
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


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_while_settling_an_interrupted_sync_is_settled_by_the_run_after(invoke, repos, wrapped, tmp_path, when):
    up, _, fork = repos
    expected, before, theirs, pristine, calls = worked_and_counted(up, fork, wrapped, tmp_path)
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
    up, _, fork = repos
    *_, pristine, calls = worked_and_counted(up, fork, wrapped, tmp_path)
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
    up, _, fork = repos
    *_, pristine, calls = worked_and_counted(up, fork, wrapped, tmp_path)
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


def _stalled_checkout_workers(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(an environment, a marker): git's own exec path, but a checkout worker writes the marker and sleeps instead
    of writing files. git starts its workers after it has removed every file they are to write."""
    real = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip())
    hooked, marker = tmp_path / "exec-path", tmp_path / "workers-started"
    hooked.mkdir()
    for entry in real.iterdir():
        if entry.name != "git":
            (hooked / entry.name).symlink_to(entry)
    (hooked / "git").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = checkout--worker ]; then : > {shlex.quote(str(marker))}; exec sleep 600; fi\n'
        f'exec {shlex.quote(str(real / "git"))} "$@"\n'
    )
    (hooked / "git").chmod(0o755)
    return {"GIT_EXEC_PATH": str(hooked)}, marker


def _kill_everything_in(folder: Path) -> None:
    """SIGKILL to every process whose working directory is `folder` (git runs there, and its workers)."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                os.kill(int(proc.name), signal.SIGKILL)


def test_a_kill_inside_a_checkout_on_several_workers_is_settled_by_the_next_run(invoke, repos, tmp_path, cache_dir):
    """A checkout on several workers (checkout.workers) removes every file it rewrites before its workers write
    them: a kill then leaves hundreds missing. They are the checkout's, not deletions of the user's: the next run
    rolls them back, merges, and the user's work is as it was, with nothing left aside."""
    up, _, fork = repos
    write(up, {f"vllm/gen{i}.py": f"G = {i}\n" for i in range(300)})
    commit_all(up, "upstream: many files")
    assert sync(invoke, fork).code == 0
    write(up, {f"vllm/gen{i}.py": f"G = {i} + 1\n" for i in range(300)})
    commit_all(up, "upstream: every one of them changes")
    write(fork, {"README.md": "my notes\n", "wip.txt": "untracked\n"})
    git(fork, "config", "checkout.workers", "2")  # the user's choice, so one core suffices here too
    stall, marker = _stalled_checkout_workers(tmp_path)
    killed = subprocess.Popen(
        support.invoke_argv("fork-sync", "--repo", str(fork), "--autostash"),
        env={**os.environ, **ENV, **stall, "INVOKE_CACHE_DIR": str(cache_dir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(marker, killed, seconds=60)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        _kill_everything_in(fork.resolve())  # git itself runs in its own session
        killed.communicate(timeout=60)
    missing = [i for i in range(300) if not (fork / f"vllm/gen{i}.py").exists()]
    assert len(missing) > 100, "the stop came after git removed the files its workers were to write"
    res = sync(invoke, fork, "--autostash", "--json")
    assert res.code == 0, res.err
    assert res.json["recovered"] == "rolled back" and res.json["rescue"] == "", res.err
    assert all((fork / f"vllm/gen{i}.py").read_text() == f"G = {i} + 1\n" for i in range(300))
    assert (fork / "README.md").read_text() == "my notes\n" and (fork / "wip.txt").read_text() == "untracked\n"
    assert git(fork, "diff", "--name-only") == "README.md" and git(fork, "diff", "--cached") == ""
    assert git(fork, "ls-files", "--others", "--exclude-standard") == "wip.txt"


def test_files_a_stopped_checkout_left_missing_or_cut_short_are_its_own_but_an_edit_is_the_users(
    invoke, repos, wrapped, tmp_path
):
    """What a checkout stopped while writing leaves in a file it writes: nothing, or the first bytes of one side
    (the branch has not moved yet: this is rolled back). Both are settled as the checkout's; a file with other
    bytes is an edit, left as it is and kept aside."""
    up, _, fork = repos
    write(up, {"vllm/long.py": "L = 'upstream'\n" * 50, "vllm/b.py": "B = 'upstream'\n"})
    commit_all(up, "upstream: files the merge rewrites")
    *_, pristine, calls = worked_and_counted(up, fork, wrapped, tmp_path)
    interrupted(wrapped, pristine, fork, tmp_path / "first.log", calls, "before")
    (fork / "vllm/a.py").unlink()  # removed, not yet written again
    (fork / "vllm/long.py").write_text(("L = 'upstream'\n" * 50)[:100])  # added by the merge, cut short
    (fork / "vllm/b.py").write_text("")  # added too: made, not yet written
    (fork / "extras/mine.txt").write_text("edited after the kill\n")
    res = sync(invoke, fork, "--autostash", "--json")
    assert res.code == 0, res.err
    assert "extras/mine.txt changed after the interruption and were left as they are" in res.err
    assert (fork / "extras/mine.txt").read_text() == "edited after the kill\n"
    assert (fork / "vllm/a.py").read_text() == "A = 2\n"
    assert (fork / "vllm/long.py").read_text() == "L = 'upstream'\n" * 50
    assert (fork / "vllm/b.py").read_text() == "B = 'upstream'\n"
