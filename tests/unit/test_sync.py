"""fork-sync's pure pieces as data: where a remote puts a fetched branch, the journal, strategies."""

from __future__ import annotations

import pytest

from forkdev.core import journal
from forkdev.core.errors import Failure
from forkdev.core.sync import matches, parse_strategies, tracking_ref

DEFAULT = ["+refs/heads/*:refs/remotes/upstream/*"]


@pytest.mark.parametrize(
    ("refspecs", "ref", "expected"),
    [
        (DEFAULT, "refs/heads/main", "refs/remotes/upstream/main"),
        (DEFAULT, "refs/heads/release/v1", "refs/remotes/upstream/release/v1"),
        (["+refs/heads/main:refs/remotes/up/main"], "refs/heads/main", "refs/remotes/up/main"),
        (["+refs/heads/main:refs/remotes/up/main"], "refs/heads/dev", None),
        (["refs/heads/*:refs/remotes/u/*", "^refs/heads/main"], "refs/heads/main", None),
        (["refs/heads/main"], "refs/heads/main", None),  # fetched, but stored nowhere
        (["refs/heads/feat-*-x:refs/remotes/u/f/*"], "refs/heads/feat-a-x", "refs/remotes/u/f/a"),
        ([], "refs/heads/main", None),
    ],
)
def test_where_a_remote_puts_a_fetched_branch(refspecs, ref, expected):
    assert tracking_ref(refspecs, ref) == expected


def move(**kw) -> journal.Move:
    fields = {name: f"{i:040x}" for i, name in enumerate(("before", "new", *journal.SNAPSHOTS), 1)}
    return journal.Move(**({"worktree": "/w", "branch": "main", "pid": 7, "started": "now"} | fields | kw))


def test_the_journal_round_trips_and_is_replaced_whole(tmp_path):
    path = tmp_path / "fork-sync.journal"
    assert journal.read_journal(path) is None
    journal.write_journal(path, move())
    journal.write_journal(path, move(branch="dev"))
    assert journal.read_journal(path) == move(branch="dev")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fork-sync.journal"], "no temporary file is left"
    journal.remove_journal(path)
    assert journal.read_journal(path) is None


@pytest.mark.parametrize("text", ["{", '{"version": 2}', '{"version": 1, "branch": "main"}'])
def test_an_unreadable_journal_is_one_sentence_saying_where_the_work_is(tmp_path, text):
    path = tmp_path / "fork-sync.journal"
    path.write_text(text)
    with pytest.raises(Failure, match=r"cannot be read .*kept in refs/forkdev/sync/.*then remove the file"):
        journal.read_journal(path)


def test_a_move_carries_work_only_when_index_or_tree_differ_from_the_tip():
    clean = move(index=f"{1:040x}", tree=f"{1:040x}")
    assert not clean.carries_work and move().carries_work
    assert set(move().refs()) == {f"refs/forkdev/sync/{n}" for n in (*journal.SNAPSHOTS, "new")}


def test_strategies_and_patterns():
    assert parse_strategies(["docs/*=theirs", "a=b=union"]) == {"docs/*": "theirs", "a=b": "union"}
    with pytest.raises(Failure, match="unknown strategy 'mine'"):
        parse_strategies({"x": "mine"})
    assert matches("extras/a/b.txt", "extras/") and matches("docs/x.md", "docs/*") and not matches("extrasx", "extras/")
