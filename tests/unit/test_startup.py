"""Every task starts by building the whole collection, so what a task module imports at its top every task pays
for, `invoke dev`'s edit loop (a few tenths of a second) among them. The machinery only some tasks use loads
where they run (forkdev/cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys

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
    "filelock",
    "uuid",  # imports platform
]


def test_building_the_collection_loads_none_of_the_machinery_only_some_tasks_use():
    probe = "import json, sys; from forkdev.cli import namespace; namespace(); print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout))
    assert "forkdev.dev" in loaded and "forkdev.core.ship" in loaded, "the probe sees what the collection loads"
    assert sorted(loaded & set(MACHINERY)) == []
