"""The cache: one place per thing, and small files there (dev's last image, the nightly's builds, base facts) read
only when the tool wrote them, and written whole and durably."""

from __future__ import annotations

import os

import pytest

from forkdev.core import cache as store
from forkdev.core.errors import Failure


def test_a_state_that_is_a_symlink_is_not_followed_and_writing_replaces_the_link_not_its_target(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"image": "someone else\'s"}')
    link = tmp_path / "state.json"
    link.symlink_to(target)
    assert store.read_json(link) == {}
    store.write_json(link, {"image": "ours"})
    assert not link.is_symlink() and store.read_json(link) == {"image": "ours"}
    assert target.read_text() == '{"image": "someone else\'s"}'


@pytest.mark.parametrize("raw", [b"\xff\x00{", b"[1, 2]", b""])
def test_a_torn_or_foreign_state_reads_as_none(tmp_path, raw):
    (tmp_path / "state.json").write_bytes(raw)
    assert store.read_json(tmp_path / "state.json") == {}


def test_a_place_that_cannot_take_the_state_is_one_sentence_and_leaves_nothing(tmp_path):
    (tmp_path / "state.json").mkdir()
    with pytest.raises(Failure, match=r"cannot write '.*state.json' \(Is a directory\); move away what is there"):
        store.write_json(tmp_path / "state.json", {"image": "x"})
    assert os.listdir(tmp_path) == ["state.json"], "the temporary file is gone"


def test_raw_bytes_are_written_exactly_and_a_killed_writer_leaves_no_half_file_in_the_place(tmp_path):
    place = tmp_path / "bases" / "abc-config.json"
    store.write_bytes(place, b'{"b": 1,  "a": 2}')  # a base's config: its bytes are its id, never re-serialised
    assert place.read_bytes() == b'{"b": 1,  "a": 2}'
    pid = os.fork()
    if pid == 0:  # a writer killed between its write and its rename: what stays is a temporary file, not the place
        original = os.replace
        os.replace = lambda *a: os.kill(os.getpid(), 9)  # dies where the rename would be
        try:
            store.write_bytes(place, b"new")
        finally:
            os.replace = original
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, "the writer was killed mid-write"
    assert place.read_bytes() == b'{"b": 1,  "a": 2}'
    left = [p.name for p in place.parent.iterdir() if p != place]
    assert len(left) == 1 and left[0].startswith(".abc-config.json.") and left[0].endswith(".tmp")


def test_every_place_is_under_the_root_and_a_key_is_kept_apart_by_its_hash(tmp_path):
    root = tmp_path / "cache"
    one, other = store.mirror(root, "https://h/a/vllm.git"), store.mirror(root, "https://h/b/vllm.git")
    assert one != other and one.name.startswith("vllm-") and other.name.startswith("vllm-")
    places = [
        one,
        store.dev_record(root, tmp_path / "co"),
        store.overlay(root, tmp_path / "co"),
        store.worktree(root, tmp_path / "co"),
        store.lock(root, "overlay /x"),
        store.nightly(root, "vllm"),
        store.nightly(root, "vllm", ".cron.sh"),
        store.base_file(root, "d-config.json"),
        store.owners(root),
        store.batch(root, "results.json"),
        store.log(root, "wheel", "co"),
        store.ccache(root),
        store.demo(root),
    ]
    assert all(p.is_relative_to(root) for p in places) and len(set(places)) == len(places)
    assert store.keyed(root, "mirrors", "../../etc").parent == root / "mirrors", "a key never climbs out"
