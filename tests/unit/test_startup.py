"""Every task starts by building the whole collection, so what a task module imports at its top every task pays
for, `invoke dev`'s edit loop (a few tenths of a second) among them. The machinery only some tasks use loads
where they run (forkdev/cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import support

MACHINERY = [
    "forkdev.core.batching",  # batch
    "forkdev.core.bakefile",
    "forkdev.core.fullbuild",  # nightly, batch
    "forkdev.core.fixes",
    "forkdev.core.overlaying",  # overlay
    "forkdev.core.patching",  # patches
    "forkdev.core.paths",
    "forkdev.core.overlaydir",
    "forkdev.core.sync",  # fork-sync
    "forkdev.core.carry",
    "forkdev.core.journal",
    "forkdev.core.container",  # run, shell, devcontainer
    "forkdev.core.launch",
    "forkdev.core.gpu",
    "forkdev.core.envfiles",
    "forkdev.core.livesync",
    "forkdev.core.owners",  # run, shell, smoke
    "forkdev.core.builder",  # wheel, smoke
    "forkdev.core.wheelfile",
    "forkdev.core.attest",
    "forkdev.core.source",
    "forkdev.core.outdir",
    "forkdev.core.demoing",  # demo
    "forkdev.core.tour",
    "forkdev.core.sandbox",
    "forkdev.core.nativebuild",  # dev --native
    "uuid",  # imports platform
]


def test_building_the_collection_loads_none_of_the_machinery_only_some_tasks_use():
    probe = "import json, sys; from forkdev.cli import namespace; namespace(); print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout))
    assert "forkdev.dev" in loaded and "forkdev.core.ship" in loaded, "the probe sees what the collection loads"
    assert sorted(loaded & set(MACHINERY)) == []


def test_a_dev_run_without_native_loads_no_native_build_machinery():
    probe = (
        "import json, sys, invoke; from forkdev.cli import namespace; from forkdev import dev; "
        "from forkdev.core import config; c = invoke.Context(invoke.Config(overrides=namespace().configuration())); "
        "spec = dev.native_spec(config.load(c), False, False, None, False); "
        "print(json.dumps([spec, sorted(sys.modules)]))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    spec, loaded = json.loads(res.stdout)
    assert spec is None and "forkdev.core.config" in loaded, "the probe asked about a refused native build"
    assert sorted(set(loaded) & set(MACHINERY)) == []


@pytest.mark.parametrize("asked", ["dev --help", "build -h", "batch --help", "verify --help", "wheel --help"])
def test_help_after_a_task_with_a_positional_argument_is_its_help_not_that_argument(asked, tmp_path):
    """invoke's parser gives `--help` after such a task to its positional argument; the task prints its help, as
    `invoke --help TASK` does, and touches nothing (no cache made)."""
    name, flag = asked.split()
    env = {**os.environ, "INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run(support.invoke_argv(name, flag), capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and "starts with '-'" not in res.stdout
    qualified = "wheel.build" if name == "wheel" else name
    expected = subprocess.run(support.invoke_argv("--help", qualified), capture_output=True, text=True, env=env)
    assert res.stdout == expected.stdout and f"Usage: inv[oke] [--core-opts] {qualified} [--options]" in res.stdout
    assert not (tmp_path / "cache").exists()
