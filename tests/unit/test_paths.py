"""The filesystem rules overlay and patches share, as data: paths from definitions and registries, where a symlink
may point, and which overlay directory the tool may replace (on real directories in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forkdev.core import overlaydir, paths
from forkdev.core.errors import Failure
from forkdev.core.tasking import setting


@pytest.mark.parametrize(
    ("value", "normalised"),
    [("vllm/config.py", "vllm/config.py"), ("a/./b/", "a/b"), ("a/../b", "b"), (".", "."), ("x/..", ".")],
)
def test_a_relative_path_is_normalised(value, normalised):
    assert paths.relative(value, "src") == normalised


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "must be a relative path"),
        (None, "must be a relative path"),
        ("/etc/passwd", "must be a relative path"),
        ("..", "escapes"),
        ("a/../../b", "escapes"),
        ("a\0b", "control character"),
        ("a\nb", "control character"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
        ("d/" * 2048 + "f", "too long"),
        ("a\udcffb", "not valid UTF-8"),
    ],
)
def test_a_path_that_is_not_relative_or_leaves_its_root_is_one_line(value, words):
    with pytest.raises(Failure, match=words) as exc:
        paths.relative(value, "src")
    assert "\n" not in str(exc.value) and "\0" not in str(exc.value)


@pytest.mark.parametrize(
    ("at", "target", "stays"),
    [
        ("alias.py", "config.py", True),
        ("vllm/alias.py", "../README.md", True),
        ("vllm/x/alias.py", "../../README.md", True),
        ("alias.py", "../README.md", False),
        ("vllm/alias.py", "../../README.md", False),
        ("vllm/alias.py", "sub/../../x", False),  # '..' after a name: the name may be a link to anywhere
        ("vllm/alias.py", "/etc/passwd", False),
        ("vllm/alias.py", "", False),
        ("vllm/alias.py", "./config.py", True),
    ],
)
def test_where_a_symlink_may_point_from_its_place_in_a_tree(at, target, stays):
    assert paths.link_stays_inside(at, target) is stays


def test_a_path_cannot_be_a_file_and_a_directory():
    assert paths.conflict(["a", "b/c"]) is None
    assert paths.conflict(["a", "a/b"]) == ("a", "a/b")
    assert paths.conflict(["x/y/z", "x/y"]) == ("x/y", "x/y/z")


@pytest.fixture
def place(tmp_path) -> Path:
    """users/me (home, with a file), work/fork (the checkout, build/ ignored), notes/, a file, an overlay."""
    (tmp_path / "work" / "fork" / "build").mkdir(parents=True)
    (tmp_path / "users" / "me").mkdir(parents=True)
    (tmp_path / "users" / "me" / ".bashrc").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("")
    (tmp_path / "file.txt").write_text("")
    overlaydir.write_tree(tmp_path / "ov", {"a.py": (b"A = 1\n", 0o644)})
    (tmp_path / "link").symlink_to(tmp_path / "ov")
    return tmp_path


def rules(place: Path, value: str, must_exist: bool = False) -> Path:
    return overlaydir.overlay_dir(
        value,
        "--dest",
        checkout=place / "work" / "fork",
        home=place / "users" / "me",
        ignored=lambda rel: rel.startswith("build/"),
        must_exist=must_exist,
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/", "is the filesystem root"),
        ("{p}/users/me", "is your home directory"),
        ("{p}/users/me/", "is your home directory"),
        ("{p}/users", "holds your home directory"),
        ("{p}/work/fork", "is the checkout"),
        ("{p}/work", "contains the checkout"),
        ("{p}", "contains the checkout"),
        ("{p}/work/fork/build/..", "is the checkout"),
        ("{p}/work/fork/ov", "not ignored by git"),
        ("{p}/notes", "was not made by invoke overlay"),
        ("{p}/file.txt", "is a file"),
        ("{p}/link", "is a symlink"),
        ("{p}/" + "o" * 201, "name too long"),
    ],
)
def test_an_overlay_directory_the_tool_may_not_replace(place, value, words):
    before = sorted(str(p) for p in place.rglob("*"))
    with pytest.raises(Failure, match=words):
        rules(place, value.format(p=place))
    assert sorted(str(p) for p in place.rglob("*")) == before


def test_an_overlay_directory_the_tool_may_replace(place):
    assert rules(place, f"{place}/new") == place / "new"
    assert rules(place, f"{place}/ov") == place / "ov"
    assert rules(place, f"{place}/link/../ov") == place / "ov"
    assert rules(place, f"{place}/work/fork/build/ov") == place / "work/fork/build/ov"
    (place / "ov" / "mine.txt").write_text("the user's")
    with pytest.raises(Failure, match="holds 'mine.txt', which invoke overlay did not write"):
        rules(place, f"{place}/ov")
    assert rules(place, f"{place}/ov", must_exist=True) == place / "ov", "patches write only their own files"
    with pytest.raises(Failure, match="no overlay at .*run 'invoke overlay' first"):
        rules(place, f"{place}/new", must_exist=True)


def test_staging_of_a_dead_run_is_swept_and_a_live_ones_is_not(place):
    dead = place / f".ov.new-{2**22 + 7}-abc"  # above the largest pid_max Linux allows: no such process
    live = place / f".ov.new-{os.getpid()}-abc"
    empty = place / f".ov.old-{2**22 + 7}-def"
    for d in (dead, live):
        overlaydir.write_tree(d, {})  # marked, as a run makes them
    empty.mkdir()
    assert sorted(overlaydir.sweep(place / "ov")) == sorted([dead, empty])
    assert live.is_dir() and not dead.exists() and not empty.exists()


@pytest.mark.parametrize(
    ("flag", "configured", "words"),
    [
        ("-x", "", "--dest '-x' starts with '-'"),
        (None, "-x", "overlay.dest '-x' starts with '-'"),
        (None, ["a"], "overlay.dest must be text, not list"),
        (None, "a\0b", r"overlay.dest 'a\\x00b' holds a line break or NUL"),
    ],
)
def test_a_flag_or_config_value_is_text_that_no_command_takes_for_an_option(flag, configured, words):
    with pytest.raises(Failure, match=words):
        setting(flag, configured, "--dest", "overlay.dest", optional=True)
    assert setting(None, "", "--dest", "overlay.dest", optional=True) is None
    assert setting("ov", "-ignored", "--dest", "overlay.dest") == "ov"
