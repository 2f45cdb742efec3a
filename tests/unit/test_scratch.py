"""Scratch directories: removed after use, and a later run removes what a killed run (kill -9) left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from forkdev.core.scratch import scratch, sweep

HOLD = (
    "import sys, time; from pathlib import Path; from forkdev.core.scratch import scratch\n"
    "with scratch('test', Path(sys.argv[1])) as p:\n    print(p, flush=True); time.sleep(60)\n"
)


def test_a_scratch_directory_is_gone_after_its_block_even_on_error(tmp_path):
    try:
        with scratch("test", tmp_path) as path:
            (path / "f").write_text("x")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not path.exists()


def test_the_next_run_removes_what_a_killed_run_left_and_nothing_else(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    left = tmp_path / os.path.basename(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert left.is_dir(), "kill -9 gave it no chance to clean up"
    alive = tmp_path / f"forkdev-test-{os.getpid()}-mine"
    alive.mkdir()
    other = tmp_path / "forkdev-test-notapid-x"
    other.mkdir()
    target = tmp_path / "precious"
    target.mkdir()
    (tmp_path / "forkdev-test-999999999-link").symlink_to(target)
    time.sleep(0.1)
    assert sweep(tmp_path, "test") == [left]
    assert alive.is_dir() and other.is_dir() and target.is_dir()


def test_any_scratch_sweeps_what_a_killed_run_left_whatever_its_purpose(tmp_path):
    """A nightly killed in its full build leaves its context; the next run may build thin and never make one."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    left = tmp_path / os.path.basename(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    old_style = tmp_path / "forkdev-patches-d9pdd32r"  # no pid in its name: not provably ours to remove
    old_style.mkdir()
    with scratch("other-purpose", tmp_path) as mine:
        assert mine.is_dir()
        assert not left.exists()
    assert old_style.is_dir() and not mine.exists()
