"""invoke demo's values: how a step's command is shown, which names are the demo's, which processes a killed demo
left (real processes, found by the mark in their environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkdev.core import demoing, tour
from forkdev.core.config import demo_prefix as prefix_of
from forkdev.core.errors import Failure


def test_a_step_is_shown_as_typed_paths_under_home_shortened_scripts_as_a_placeholder():
    home = os.path.expanduser("~")
    args = ["dev", f"{home}/.cache/forkdev/demo/work/fork", "--json"]
    assert tour.display("invoke", args) == "invoke dev ~/.cache/forkdev/demo/work/fork --json"
    assert (
        tour.display("forkdev", ["run", "--", "python3", "-c", "a\nb\n"]) == "forkdev run -- python3 -c <2-line script>"
    )
    # what a shell would not read back the same is quoted whole, never as ~/'...'
    assert tour.display("invoke", ["dev", f"{home}/my checkout"]) == f"invoke dev '{home}/my checkout'"
    assert tour.display("invoke", ["run", "--", "sh", "-c", "echo $HOME"]) == "invoke run -- sh -c 'echo $HOME'"


def test_only_names_under_the_prefix_are_the_demos():
    assert demoing.ours("forkdev-demo/vllm:nightly", "forkdev-demo")
    assert demoing.ours("localhost/forkdev-demo/vllm-dev:local-1", "forkdev-demo")  # podman's local names
    assert not demoing.ours("forkdev-demo-other/vllm:1", "forkdev-demo")
    assert not demoing.ours("forkdev-demox:1", "forkdev-demo")
    assert not demoing.ours("docker.io/forkdev-demo/vllm:1", "forkdev-demo")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("docker.io/me", "names a registry"),
        ("127.0.0.1:5000/demo", "names a registry"),
        ("localhost/demo", "names a registry"),
        ("-x", "demo.prefix"),
        ("Upper", "not a valid image repository"),
        ("", "demo.prefix"),
    ],
)
def test_a_prefix_that_could_name_someone_elses_images_is_refused(value, message):
    with pytest.raises(Failure, match=message):
        prefix_of(value)
    assert prefix_of("forkdev-test/demo-1/") == "forkdev-test/demo-1"


def _sleeper(mark: str | None) -> subprocess.Popen:
    env = {**os.environ, demoing.MARK: mark} if mark else dict(os.environ)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def test_the_steps_of_a_killed_demo_are_found_by_their_mark_and_stopped_and_nothing_else(tmp_path):
    home = tmp_path / "demo"
    gone = subprocess.Popen(["true"])
    gone.wait()  # a demo that was killed: its pid runs no more
    orphan = _sleeper(f"{home}:{gone.pid}")
    running = _sleeper(f"{home}:{os.getpid()}")  # a step of a demo that still runs
    elsewhere = _sleeper(f"{tmp_path / 'other'}:{gone.pid}")  # another cache's demo
    unmarked = _sleeper(None)
    try:
        found = demoing.orphans(home)
        assert found == [orphan.pid]
        demoing.stop(found)
        assert orphan.wait(10) == -15, "SIGTERM first: a live sync removes its container then"
        assert all(p.poll() is None for p in (running, elsewhere, unmarked))
    finally:
        for p in (orphan, running, elsewhere, unmarked):
            p.kill()
            p.wait()


def test_clean_removes_a_symlink_in_the_demos_place_as_a_link_never_what_it_points_to(tmp_path):
    mine = tmp_path / "important"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    home = tmp_path / "cache" / "demo"
    home.parent.mkdir()
    home.symlink_to(mine)
    removed = demoing.clean(_NoEngineRunner(), [], demoing.Layout(home), "forkdev-demo")
    assert removed == [str(home)] and not home.is_symlink() and (mine / "notes.txt").read_text() == "keep me"


class _NoEngineRunner:
    dry_run = False


def test_a_sandbox_recipe_changes_with_what_shapes_its_commits():
    base = demoing.recipe("forkdev-demo/debian:bookworm", 0)
    assert base == demoing.recipe("forkdev-demo/debian:bookworm", 0)
    assert base != demoing.recipe("other/debian:bookworm", 0) and base != demoing.recipe(base["os_image"], 2048)


def test_the_layout_keeps_everything_under_one_directory(tmp_path):
    layout = demoing.Layout(tmp_path / "demo")
    for path in (layout.sandbox, layout.work, layout.logs, layout.config, layout.rootfs, layout.cache("podman")):
        assert Path(path).is_relative_to(tmp_path / "demo")


def test_the_steps_config_names_only_keys_the_tasks_read_and_keeps_everything_in_the_sandbox(tmp_path):
    from forkdev.core import config
    from forkdev.core.engine import Engine

    layout = demoing.Layout(tmp_path / "demo")
    engine = Engine("podman", "/usr/bin/podman", "4.3", "4.3", "host")
    cfg = demoing.step_config(layout, engine, "forkdev-demo", "")
    for section, values in cfg.items():
        assert section in config.DEFAULTS, section
        if isinstance(values, dict) and section != "targets":
            unknown = set(values) - set(config.DEFAULTS[section])
            assert not unknown, f"{section}: {unknown} (a key the tasks no longer read sets nothing)"
    assert config.target("vllm", cfg["targets"]).published_base is None  # never a pull from Docker Hub
    for key in ("dev", "nightly", "batch"):
        assert cfg[key]["repository"].startswith("forkdev-demo/") and cfg[key]["push"] is False
    assert Path(cfg["cache_dir"]).is_relative_to(layout.home) and cfg["engine"]["name"] == "podman"
    assert Path(cfg["container"]["hf_cache"]).is_relative_to(layout.home) and cfg["container"]["gpu"] == "none"
