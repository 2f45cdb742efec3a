"""`invoke fork-sync`, what a merge does: protected paths keep the fork's side, strategies, conflicts that change
nothing, a dirty tree, push, dry run, flags over config, and values that never become options. After every run
the user's files and refs are compared byte for byte with what they must be (support/forksync.py)."""

from __future__ import annotations

import json

import pytest
import support
from support import commit_all, git
from support.forksync import ENV, both_edit_conflict_py, diverge, no_identity, snapshot, sync, write

from forkdev.core.errors import Failure


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
    assert git(fork, "for-each-ref", "refs/forkdev/") == "", "said before the fetch, which a network can make long"

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
        ([], {"INVOKE_UPSTREAM_REMOTE": "--upload-pack=touch {marker}"}, "upstream.remote (INVOKE_UPSTREAM_REMOTE)"),
        (
            [],
            {"INVOKE_UPSTREAM_URL": "--upload-pack=touch {marker}", "INVOKE_UPSTREAM_REMOTE": "no"},
            "upstream.url (INVOKE_UPSTREAM_URL)",
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
