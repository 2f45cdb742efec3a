"""`invoke dev` against what a user does today, on a checkout the size of vLLM with history.

The naive way (the justfile's): the base image holds the repository with its history at the base's commit; a
BuildKit build bind-mounts the checkout's .git and runs `git fetch` + `git checkout` of the commit to ship.
It ships committed work only; ours also ships the uncommitted edit and the untracked file.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

from common import import_invoke_seconds, invoke, median, support, timed, vllm_sized_upstream

from forkdev.core.engine import Engine

CHANGED = 30
ROUNDS = 9
LAYER_STEP = re.compile(r"^  layer -> \S+: ([\d.]+)s$", re.M)  # ui.step's timing line of the layer step
NAIVE_DOCKER = "/usr/bin/docker"  # the 20.10 client: BuildKit built in (the 28.x client here has no buildx)
NAIVE_DOCKERFILE = """FROM {base}
ARG COMMIT
RUN --mount=type=bind,source=.git,target=/host-git \\
    cd /opt/vllm-source && git fetch -q /host-git "$COMMIT" && git checkout -q FETCH_HEAD
"""


def run(engine: Engine, work: Path) -> dict:
    cache = work / "cache"
    up = vllm_sized_upstream(work / "upstream")
    tip = support.git(up, "rev-parse", "HEAD")
    print(f"building the base (the tree with its .git, as the justfile's nightly) at {tip[:12]} ...", file=sys.stderr)
    base = support.build_base(engine, up, tip, "forkdev-bench/vllm-base:git", with_git=True)

    fork = work / "fork"
    support.sh("git", "clone", "-q", up, fork)
    support.settle_checkout(fork)  # a checkout as users have one
    rng = random.Random(1)
    py = sorted(p for p in support.git(fork, "ls-files", "vllm").splitlines() if p.endswith(".py"))
    picked = rng.sample(py, CHANGED + 2)
    for path in picked[:CHANGED]:
        f = fork / path
        f.write_bytes(f.read_bytes() + b"\n# a fork change\n")
    support.git(fork, "rm", "-q", picked[CHANGED])
    support.commit_all(fork, "fork: 30 files changed, one deleted")
    dirty = fork / picked[CHANGED + 1]
    dirty.write_bytes(dirty.read_bytes() + b"\n# uncommitted\n")
    (fork / "vllm" / "fork_untracked.py").write_text("UNTRACKED = True\n")
    changed = support.git(fork, "diff", "--name-only", tip).split() + ["vllm/fork_untracked.py"]
    changed_bytes = sum((fork / p).stat().st_size for p in changed if (fork / p).exists())

    args = ("dev", str(fork), "--base", base, "--json", "--quiet")
    cold, res = invoke(*args, cache=cache)  # the first run asks the base where its package is (once per image)
    out = json.loads(res.stdout)
    layer = support.inspect(engine, out["image"])["Size"] - support.inspect(engine, base)["Size"]
    reruns = []
    for _ in range(9):
        t, again = invoke(*args, cache=cache)
        assert json.loads(again.stdout)["reused"] is True
        reruns.append(t)
    dockerfile = work / "Dockerfile.naive"
    dockerfile.write_text(NAIVE_DOCKERFILE.format(base=base))

    def naive_build(commit: str) -> None:
        subprocess.run(
            [
                NAIVE_DOCKER,
                "build",
                "-q",
                "--network",
                "none",
                "-t",
                "forkdev-bench/naive:latest",
                "--build-arg",
                f"COMMIT={commit}",
                "-f",
                str(dockerfile),
                str(fork),
            ],
            env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )

    def run_ours(i: int) -> None:  # the loop a developer repeats: one more edit, a new image
        dirty.write_bytes(dirty.read_bytes() + f"# edit {i}\n".encode())
        t, again = invoke(*args, cache=cache)
        assert json.loads(again.stdout)["reused"] is False
        ours.append(t)
        loads.append(float(LAYER_STEP.search(again.stderr).group(1)))  # the engine's load of the archive

    def run_naive(i: int) -> None:  # the naive loop: an edit must be committed to be fetched
        dirty.write_bytes(dirty.read_bytes() + f"# naive edit {i}\n".encode())
        commit = support.commit_all(fork, f"naive edit {i}")
        naive.append(timed(lambda: naive_build(commit)))

    naive_build(support.git(fork, "rev-parse", "HEAD"))  # warm: BuildKit has the context from here on
    ours, naive, loads = [], [], []
    for i in range(ROUNDS):  # taken in turns, so that the machine's slow moments fall on both alike
        for step in (run_ours, run_naive) if i % 2 == 0 else (run_naive, run_ours):
            step(i)
    naive_layer = support.inspect(engine, "forkdev-bench/naive:latest")["Size"] - support.inspect(engine, base)["Size"]
    return {
        "repo_files": len(support.git(up, "ls-files").splitlines()),
        "repo_commits": int(support.git(up, "rev-list", "--count", "HEAD")),
        "changed_files": len(changed),
        "changed_bytes": changed_bytes,
        "layer_bytes": layer,
        "layer_ratio": layer / changed_bytes,
        "layer_target_bytes": int(changed_bytes * 1.05 + 64 * 1024),
        "dev_seconds": median(ours),
        "dev_cold_seconds": cold,
        "naive_seconds": median(naive),
        "naive_layer_bytes": naive_layer,
        "time_ratio": median(ours) / median(naive),
        "rerun_seconds": median(reruns),
        "layer_step_seconds": median(loads),
        "startup_seconds": median([invoke("--list", cache=cache)[0] for _ in range(5)]),
        "import_invoke_seconds": import_invoke_seconds(),
    }


def report(r: dict) -> None:
    print(
        f"\ninvoke dev on a vLLM-sized checkout ({r['repo_files']} files, {r['repo_commits']} commits; "
        f"{r['changed_files']} files changed: 30 committed, 1 deleted, 1 uncommitted, 1 untracked; "
        f"{r['changed_bytes']} bytes):"
    )
    print(
        f"  edit loop            {r['dev_seconds']:>8.3f} s   naive BuildKit fetch+checkout {r['naive_seconds']:.3f} s"
        f"   ratio {r['time_ratio']:.2f}x (target <= 0.8x, at most 1.0x); medians of {ROUNDS}, taken in turns"
    )
    print(f"  unchanged re-run     {r['rerun_seconds']:>8.3f} s   median of 9, nothing built (target <= 0.3 s)")
    print(
        f"  new layer            {r['layer_bytes']:>8} B   = {r['layer_ratio']:.3f}x the changed bytes "
        f"(target <= 1.05x + 64 KiB = {r['layer_target_bytes']} B); naive layer {r['naive_layer_bytes']} B"
    )
    print(f"  first run against a new base (asks the base once) {r['dev_cold_seconds']:.3f} s")
    floor = r["import_invoke_seconds"] + r["layer_step_seconds"]
    print(
        f"  where the edit loop goes: interpreter + invoke + the task collection ('invoke --list') "
        f"{r['startup_seconds']:.3f} s; writing the layer and the engine's load of it {r['layer_step_seconds']:.3f} s; "
        f"the rest (git, base inspect, plan) {r['dev_seconds'] - r['startup_seconds'] - r['layer_step_seconds']:.3f} s"
    )
    print(
        f"  floor: 'python -c \"import invoke\"' {r['import_invoke_seconds']:.3f} s + the layer step "
        f"{r['layer_step_seconds']:.3f} s = {floor:.3f} s: {floor / r['naive_seconds']:.2f}x the naive build "
        "before any work of ours"
    )
