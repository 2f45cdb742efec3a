"""Small state files (dev's last image, the nightly's builds): read only what the tool wrote, written whole."""

from __future__ import annotations

import os

import pytest

from forkdev.core import state
from forkdev.core.errors import Failure


def test_a_state_that_is_a_symlink_is_not_followed_and_writing_replaces_the_link_not_its_target(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"image": "someone else\'s"}')
    link = tmp_path / "state.json"
    link.symlink_to(target)
    assert state.read(link) == {}
    state.write(link, {"image": "ours"})
    assert not link.is_symlink() and state.read(link) == {"image": "ours"}
    assert target.read_text() == '{"image": "someone else\'s"}'


@pytest.mark.parametrize("raw", [b"\xff\x00{", b"[1, 2]", b""])
def test_a_torn_or_foreign_state_reads_as_none(tmp_path, raw):
    (tmp_path / "state.json").write_bytes(raw)
    assert state.read(tmp_path / "state.json") == {}


def test_a_place_that_cannot_take_the_state_is_one_sentence_and_leaves_nothing(tmp_path):
    (tmp_path / "state.json").mkdir()
    with pytest.raises(Failure, match=r"cannot write '.*state.json' \(Is a directory\); move away what is there"):
        state.write(tmp_path / "state.json", {"image": "x"})
    assert os.listdir(tmp_path) == ["state.json"], "the temporary file is gone"
