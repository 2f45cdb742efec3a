"""Live sync's pieces as data: what a changed path is now (read without following links), and the script that
makes the container's tree ready for it without removing or writing anything through a link."""

from __future__ import annotations

import subprocess
from pathlib import Path

import support

from forkdev.core import livesync, secrets
from forkdev.core.base import Location
from forkdev.core.config import TARGETS
from forkdev.core.gitrepo import Repo
from forkdev.core.proc import Runner

VLLM = TARGETS["vllm"]


def checkout(root: Path) -> Repo:
    support.sh("git", "init", "-q", root)
    (root / ".gitignore").write_text("build/\n*.so\n")
    (root / "vllm" / "sub").mkdir(parents=True)
    (root / "vllm" / "a.py").write_text("A = 1\n")
    (root / "vllm" / "sub" / "b.py").write_text("B = 1\n")
    (root / "vllm" / "link").symlink_to("sub")
    (root / "vllm" / "out").symlink_to("/etc")
    return Repo(root, Runner(echo=False))


def test_each_changed_path_is_read_as_it_is_now_without_following_links(tmp_path):
    repo = checkout(tmp_path / "vllm")
    paths = ["vllm/a.py", "vllm/sub", "vllm/link", "vllm/link/b.py", "vllm/out/passwd", "vllm/gone", "vllm/a.py/x"]
    plan = livesync.plan(repo, paths, Location("/opt/src/vllm", "/opt/src"), VLLM)
    assert plan.root == "/opt/src"
    assert [(s.op, s.below) for s in plan.steps] == [
        ("f", "vllm/a.py"),
        ("D", "vllm/sub"),
        ("l", "vllm/link"),
        ("d", "vllm/gone"),  # gone: removed there too
        ("d", "vllm/a.py/x"),  # under a file: no such path
    ], "under a link (vllm/link/b.py, vllm/out/passwd) is no path of the checkout"
    site = livesync.plan(repo, ["vllm", "vllm/a.py", "tests/t.py"], Location("/site/vllm", None), VLLM)
    assert site.root == "/site/vllm" and [s.below for s in site.steps] == ["a.py"]
    assert site.skipped == ["vllm", "tests/t.py"], "the package folder itself is never touched; tests/ has no place"


def test_a_deleted_folder_that_git_ignores_is_not_synced(tmp_path):
    repo = checkout(tmp_path / "vllm")
    raw = {str(repo.path / p) for p in ("build", "vllm/x.so", "vllm/gone", ".git/index", ".")}
    found = livesync.changed_paths(repo, raw, secrets.DEFAULT)
    assert found == ["vllm/gone"], "'build/' matches a folder only: asked as one"


def test_the_prepare_script_makes_real_folders_on_the_way_and_removes_nothing_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not ours\n")
    root = tmp_path / "root"
    (root / "pkg" / "dir").mkdir(parents=True)
    (root / "pkg" / "dir" / "inner").write_text("")
    (root / "pkg" / "file").write_text("")
    (root / "pkg" / "link").symlink_to(outside)
    (root / "pkg" / "link2").symlink_to(outside)
    ops = [
        *("d", "pkg/link2/keep"),  # under a link: not in the tree, nothing removed
        *("f", "pkg/link/new"),  # a file under what is a link here: the link becomes a folder
        *("D", "pkg/file"),  # a folder where a file is
        *("f", "pkg/dir"),  # a file where a folder is: the folder goes (cp writes the file)
        *("f", "pkg/fresh/deep/x"),  # folders on the way are made
        *("d", "pkg/link2"),  # a link is removed as a link
    ]
    res = subprocess.run(["sh", "-c", livesync.PREPARE, "sync", str(root), *ops], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (outside / "keep").read_text() == "not ours\n" and sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (root / "pkg" / "link").is_dir() and not (root / "pkg" / "link").is_symlink()
    assert (root / "pkg" / "file").is_dir() and not (root / "pkg" / "dir").exists()
    assert (root / "pkg" / "fresh" / "deep").is_dir() and not (root / "pkg" / "fresh" / "deep" / "x").exists()
    assert not (root / "pkg" / "link2").exists() and not (root / "pkg" / "link2").is_symlink()
