"""`invoke batch` against one full build per commit, on a history shaped like 400 real consecutive vLLM commits.

The history replays ../shared/data/vllm-commits-400.tsv (tests/data has a copy): each commit changes as many
files as the real one did, and the 28 commits that touched native files move the native state, so the 400
commits span the real 29 native states. The Dockerfile's compile step has a fixed cost (BENCH_COMPILE_SECONDS).
The naive way is what the tool this mirrors does: export each commit and build it fully, as many at once as
ours (--jobs). Both runs start from the same engine state (no image of either exists).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import subprocess
import time
from pathlib import Path

from common import invoke, support

from forkdev.core.engine import Engine

COMPILE_SECONDS = int(os.environ.get("BENCH_COMPILE_SECONDS", "3"))
COMMITS = int(os.environ.get("BENCH_BATCH_COMMITS", "400"))
JOBS = 2
TSV = support.DATA / "vllm-commits-400.tsv"


def replay(up: Path, rows: list[dict]) -> list[str]:
    """One commit per row, oldest first, with the row's change counts and native states."""
    py = sorted(p for p in support.git(up, "ls-files", "vllm").splitlines() if p.endswith(".py"))
    shas = []
    for i, row in enumerate(rows):
        rng = random.Random(i)
        python_files = max(0, int(row["files_changed"]) - int(row["native_files_changed"]))
        for path in rng.sample(py, min(python_files, len(py))):
            (up / path).write_text(f"# {row['commit']}\nVALUE = {i}\n")
        if int(row["native_files_changed"]):
            for n in range(int(row["native_files_changed"])):
                (up / "csrc" / f"bench_{n}.cu").write_text(f"// native state {row['native_state']}\n")
        shas.append(support.commit_all(up, f"replay of {row['commit']}"))
    return shas


def run(engine: Engine, work: Path) -> dict:
    lines = TSV.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]][::-1][:COMMITS]
    states = len({r["native_state"] for r in rows})
    up = work / "upstream"
    support.ensure_os_image(engine)
    support.make_buildable_upstream(up, limit_bytes=256)
    shas = replay(up, rows)
    data = work / "commits.txt"
    data.write_text("\n".join(shas) + "\n")
    conf = work / "bench.yaml"
    conf.write_text(f"nightly:\n  build_args:\n    compile_seconds: '{COMPILE_SECONDS}'\n")
    env = {"INVOKE_ENGINE_NAME": engine.kind, "INVOKE_BATCH_REPOSITORY": "forkdev-bench/batch"}
    start = time.perf_counter()
    _, res = invoke(
        "-f",
        str(conf),
        "batch",
        str(data),
        "--upstream",
        str(up),
        "--jobs",
        str(JOBS),
        "--json",
        "--quiet",
        cache=work / "cache",
        env=env,
    )
    ours = time.perf_counter() - start
    out = json.loads(res.stdout)

    def naive_build(i_sha: tuple[int, str]) -> None:
        i, sha = i_sha
        ctx = work / f"naive-{i}"
        ctx.mkdir()
        archive = subprocess.run(["git", "-C", str(up), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(ctx)], input=archive, check=True)
        subprocess.run(
            [
                engine.exe,
                "build",
                "-q",
                "--network",
                "host",
                "--target",
                "vllm-openai",
                "--build-arg",
                f"compile_seconds={COMPILE_SECONDS}",
                "-f",
                str(ctx / "docker" / "Dockerfile"),
                "-t",
                f"forkdev-bench/naive-batch:{sha}",
                str(ctx),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, **engine.build_env(buildkit=True)},
        )
        subprocess.run(["rm", "-rf", str(ctx)], check=True)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
        list(pool.map(naive_build, enumerate(shas)))
    naive = time.perf_counter() - start
    return {
        "commits": len(shas),
        "native_states": states,
        "compiles": out["full_builds"],
        "failed": out["failed"],
        "batch_seconds": ours,
        "naive_compiles": len(shas),
        "naive_seconds": naive,
        "ratio": ours / naive,
        "compile_seconds": COMPILE_SECONDS,
        "engine": engine.kind,
    }


def report(r: dict) -> None:
    print(
        f"\ninvoke batch of {r['commits']} commits replaying vLLM's last 400 ({r['native_states']} native states), "
        f"compile step {r['compile_seconds']} s, {r['engine']}, {JOBS} at a time:"
    )
    print(
        f"  compiles             {r['compiles']:>8}     one full build per commit: {r['naive_compiles']} "
        f"(target: {r['native_states']})"
    )
    print(
        f"  wall time            {r['batch_seconds']:>8.1f} s   one full build per commit {r['naive_seconds']:.1f} s"
        f"   ratio {r['ratio']:.2f}x"
    )
