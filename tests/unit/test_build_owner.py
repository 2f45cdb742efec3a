"""A full build's lock file: what the legacy builder says it made goes in; a later run takes only a free lock file
of ours, whatever path an image's label names."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from forkdev.core import fullbuild

LEGACY_OUTPUT = """\
Step 1/5 : FROM 127.0.0.1:5000/forkdev-test/debian:bookworm
 ---> 97ac9c9ec4e7
Step 2/5 : RUN echo one > /one
 ---> Using cache
 ---> 6b6fcf92176a
Step 3/5 : COPY . /opt/vllm-source
 ---> 718745762600
Step 4/5 : RUN false
 ---> Running in 408d96270009
"""


def test_the_legacy_builder_s_own_steps_are_noted_never_the_base_or_a_cached_step(tmp_path):
    fd = os.open(tmp_path / "forkdev-build-1-abc.lock", os.O_RDWR | os.O_CREAT)
    owner = fullbuild.Owner(tmp_path / "forkdev-build-1-abc.lock", fd)
    for line in LEGACY_OUTPUT.splitlines():
        owner.note(line)
    os.close(fd)
    assert (tmp_path / "forkdev-build-1-abc.lock").read_text() == "image 718745762600\ncontainer 408d96270009\n"


def test_a_later_run_takes_only_a_free_lock_file_of_ours(tmp_path):
    free = tmp_path / "forkdev-build-123-a1b2c3.lock"
    free.write_text("")
    fd = fullbuild._take(free)
    assert fd is not None
    os.close(fd)

    held = tmp_path / "forkdev-build-124-a1b2c3.lock"
    held.write_text("")
    holder = os.open(held, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    assert fullbuild._take(held) is None, "its build still runs"
    os.close(holder)

    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    link = tmp_path / "forkdev-build-125-a1b2c3.lock"
    link.symlink_to(victim)
    assert fullbuild._take(link) is None, "a symlink is never followed"
    assert fullbuild._take(victim) is None, "a label may name any path: only ours are taken"
    assert fullbuild._take(Path("forkdev-build-126-a1b2c3.lock")) is None, "nor a relative one"
    assert victim.read_text() == "root:x:0:0\n"
