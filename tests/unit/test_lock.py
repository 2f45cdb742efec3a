"""Exclusive locks: held by one process at a time, named with their holder's pid when refused, free again when
the holder dies (even by kill -9), and never written through a link planted where the lock file goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from forkdev.core.errors import Failure
from forkdev.core.lock import exclusive

HOLD = (
    "import sys, time; from pathlib import Path; from forkdev.core.lock import exclusive\n"
    "with exclusive(Path(sys.argv[1]), 'test run'):\n    print('held', flush=True); time.sleep(60)\n"
)


def test_a_held_lock_refuses_a_second_run_naming_the_holder_and_is_free_once_it_is_killed(tmp_path):
    path = tmp_path / "locks" / "run.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Failure) as refused, exclusive(path, "test run"):
            pass
        assert str(refused.value) == (
            f"another test run is running (pid {holder.pid}, lock {path}); wait for it to finish"
        )
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with exclusive(path, "test run"):  # the kernel let go of it with its holder
        assert (path.parent / "run.lock.pid").read_text() == f"{os.getpid()}\n"
    assert not (path.parent / "run.lock.pid").exists()


def test_a_link_where_the_lock_goes_is_refused_and_its_target_left_alone(tmp_path):
    victim = tmp_path / "not-ours.txt"
    victim.write_text("someone else's\n")
    (tmp_path / "run.lock").symlink_to(victim)
    refused = r"^the lock .*run\.lock cannot be opened \(.*\); it must be a plain file"
    with pytest.raises(Failure, match=refused), exclusive(tmp_path / "run.lock", "test run"):
        pass
    assert victim.read_text() == "someone else's\n" and (tmp_path / "run.lock").is_symlink()
