"""Benchmarks on a checkout the size of vLLM (4,494 files, 62 MB, 3,000 commits), each figure with its ratio
against the naive way, measured in the same run. `nox -s bench` runs this; `-- dev` or `-- fork-sync` one part.

dev: a change of 30 committed files plus one uncommitted edit, shipped by `invoke dev`, against the naive
    build of the same change (the justfile's way: the base holds a .git; bind-mount the checkout's .git,
    `git fetch` + `git checkout` the commit inside a container of the base, commit it as the image).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import support  # noqa: E402

from forkdev.core.engine import Engine  # noqa: E402
from forkdev.core.proc import Runner  # noqa: E402

HISTORY = int(os.environ.get("BENCH_COMMITS", "3000"))
CHANGED = 30


def invoke(*args: str, cache: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "INVOKE_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    res = subprocess.run(
        support.invoke_argv(*args),
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return took, res


def history(repo: Path, commits: int, seed: int = 7) -> None:
    """`commits` upstream-like commits (about 5 files each, as in vLLM's last 400) made with git fast-import."""
    rng = random.Random(seed)
    py = [p for p, _, _ in support.manifest() if p.startswith("vllm/") and p.endswith(".py")]
    head = support.git(repo, "rev-parse", "HEAD")
    chunks = []
    for i in range(commits):
        files = rng.sample(py, rng.choice([1, 2, 3, 5, 8, 13]))
        msg = f"upstream commit {i}".encode()
        chunk = [
            b"commit refs/heads/main\n",
            f"committer Bench <b@x> {1700000000 + i} +0000\n".encode(),
            f"data {len(msg)}\n".encode() + msg + b"\n",
        ]
        if i == 0:
            chunk.append(f"from {head}\n".encode())
        for f in files:
            data = support.content(f, 1500, salt=str(i))
            chunk.append(f"M 100644 inline {f}\ndata {len(data)}\n".encode() + data + b"\n")
        chunks.append(b"".join(chunk))
    support.git(repo, "fast-import", "--quiet", input=b"".join(chunks))
    support.git(repo, "reset", "-q", "--hard", "main")  # the fixture's own fresh repository


def bench_dev(engine: Engine, work: Path) -> dict:
    cache = work / "cache"
    up = work / "upstream"
    print(f"building a vLLM-sized upstream with {HISTORY} commits ...", file=sys.stderr)
    support.make_upstream(up, limit_bytes=None)
    history(up, HISTORY)
    tip = support.git(up, "rev-parse", "HEAD")
    files = int(support.git(up, "ls-files", "--", ".").count("\n")) + 1
    print(f"building the base (source tree with .git, like the justfile's nightly) at {tip[:12]} ...", file=sys.stderr)
    base = support.build_base(engine, up, tip, "forkdev-bench/vllm-base:editable", with_git=True)

    fork = work / "fork"
    support.sh("git", "clone", "-q", up, fork)
    rng = random.Random(1)
    py = sorted(p for p in support.git(fork, "ls-files", "vllm").splitlines() if p.endswith(".py"))
    for path in rng.sample(py, CHANGED):
        f = fork / path
        f.write_bytes(f.read_bytes() + b"\n# a fork change\n")
    commit = support.commit_all(fork, "fork: 30 files")
    dirty = fork / rng.choice(py)
    dirty.write_bytes(dirty.read_bytes() + b"\n# uncommitted\n")
    changed = subprocess.run(
        ["git", "-C", str(fork), "diff", "--name-only", tip], capture_output=True, text=True, check=True
    ).stdout.split()
    changed_bytes = sum((fork / p).stat().st_size for p in changed)

    # ours: the first run against a base also asks the base where the package lives (cached per image id)
    cold, res = invoke("dev", str(fork), "--base", base, "--json", cache=cache)
    out = json.loads(res.stdout)
    inspect = lambda ref: json.loads(support.sh(engine.exe, "image", "inspect", ref))[0]  # noqa: E731
    layer = inspect(out["image"])["Size"] - inspect(base)["Size"]
    reruns = []
    for _ in range(9):
        t, again = invoke("dev", str(fork), "--base", base, "--json", cache=cache)
        assert json.loads(again.stdout)["reused"] is True
        reruns.append(t)
    # the loop a developer repeats: one more edit, a new image (median of 5)
    warm = []
    for i in range(5):
        dirty.write_bytes(dirty.read_bytes() + f"# edit {i}\n".encode())
        t, again = invoke("dev", str(fork), "--base", base, "--json", cache=cache)
        assert json.loads(again.stdout)["reused"] is False
        warm.append(t)
    took = statistics.median(warm)

    # naive (median of 5): fetch + checkout the commit from a bind-mounted .git in a container of the base
    name = "forkdev-bench-naive"
    script = f"git fetch -q /host-git {commit} && git checkout -q FETCH_HEAD"
    mount = f"{fork / '.git'}:/host-git:ro"
    naive_run = [engine.exe, "run", "--name", name, "--network", "none", "-v", mount, "-w", "/opt/vllm-source"]
    naives = []
    for _ in range(5):
        start = time.perf_counter()
        support.sh(*naive_run, "--entrypoint", "sh", base, "-c", script)
        support.sh(engine.exe, "commit", name, "forkdev-bench/naive:latest")
        naives.append(time.perf_counter() - start)
        support.sh(engine.exe, "rm", "-f", name)
    naive = statistics.median(naives)
    naive_layer = inspect("forkdev-bench/naive:latest")["Size"] - inspect(base)["Size"]

    return {
        "repo_files": files,
        "repo_commits": HISTORY + 1,
        "changed_files": len(changed),
        "changed_bytes": changed_bytes,
        "layer_bytes": layer,
        "layer_ratio": layer / changed_bytes,
        "layer_target_bytes": int(changed_bytes * 1.05 + 64 * 1024),
        "dev_seconds": took,
        "dev_cold_seconds": cold,
        "naive_seconds": naive,
        "naive_layer_bytes": naive_layer,
        "time_ratio": took / naive,
        "rerun_seconds_median": statistics.median(reruns),
    }


def bench_fork_sync(work: Path, rounds: int = 6) -> dict:
    """fork-sync against `git fetch upstream main && git merge FETCH_HEAD` on identical clones of a fork 500
    upstream commits behind, carrying its own extras/ and workflow."""
    up = work / "upstream"
    print(f"building a vLLM-sized upstream with {HISTORY} commits ...", file=sys.stderr)
    support.make_upstream(up, limit_bytes=None)
    history(up, HISTORY)
    seed = work / "seed"
    support.sh("git", "clone", "-q", up, seed)
    support.git(seed, "checkout", "-q", "-B", "main", "HEAD~500")  # the benchmark's own fresh clone
    (seed / "extras").mkdir()
    (seed / "extras" / "fork.txt").write_text("fork only\n")
    (seed / ".github" / "workflows").mkdir(parents=True, exist_ok=True)
    (seed / ".github" / "workflows" / "fork-sync.yml").write_text("name: fork-sync\n")
    support.commit_all(seed, "fork: tooling")
    ours, plain = [], []
    for i in range(rounds):
        a, b = work / f"a{i}", work / f"b{i}"
        for clone in (a, b):
            support.sh("git", "clone", "-q", seed, clone)
            support.git(clone, "remote", "add", "upstream", str(up))

        def run_ours(a=a):
            start = time.perf_counter()
            invoke("fork-sync", "--repo", str(a), cache=work / "cache")
            ours.append(time.perf_counter() - start)

        def run_plain(b=b):
            start = time.perf_counter()
            support.git(b, "fetch", "-q", "upstream", "main")
            support.git(b, "merge", "-q", "--no-edit", "FETCH_HEAD")
            plain.append(time.perf_counter() - start)

        for step in (run_ours, run_plain) if i % 2 == 0 else (run_plain, run_ours):  # neither gets a warm cache
            step()
        assert support.git(a, "rev-parse", "HEAD^{tree}") == support.git(b, "rev-parse", "HEAD^{tree}")
    startup = statistics.median(invoke("--list", cache=work / "cache")[0] for _ in range(5))
    return {
        "startup_seconds": startup,
        "files": len(support.git(up, "ls-files").splitlines()),
        "commits": HISTORY + 1,
        "merged_commits": 500,
        "fork_sync_seconds": statistics.median(ours),
        "git_merge_seconds": statistics.median(plain),
        "ratio": statistics.median(ours) / statistics.median(plain),
    }


def main() -> None:
    parts = sys.argv[1:] or ["dev", "fork-sync"]
    engine = Engine.detect(Runner(echo=False)) if "dev" in parts else None
    keep = os.environ.get("BENCH_WORKDIR")  # keep the generated trees there, to look at or profile
    if keep:
        shutil.rmtree(keep, ignore_errors=True)
    with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="forkdev-bench-") as tmp:
        if "dev" in parts:
            r = bench_dev(engine, Path(tmp) / "dev")
            print(
                f"\ninvoke dev on a vLLM-sized checkout ({r['repo_files']} files, {r['repo_commits']} commits, "
                f"{r['changed_files']} changed files, {r['changed_bytes']} bytes):"
            )
            print(
                f"  new layer            {r['layer_bytes']:>10} bytes  = {r['layer_ratio']:.3f}x the changed "
                f"files (target <= 1.05x + 64 KiB = {r['layer_target_bytes']} bytes)"
                f"   naive layer: {r['naive_layer_bytes']} bytes"
            )
            print(
                f"  invoke dev, edit loop {r['dev_seconds']:>9.2f} s      naive fetch+checkout build "
                f"{r['naive_seconds']:.2f} s   ratio {r['time_ratio']:.2f}x (target <= 1.0x); medians of 5"
            )
            print(
                f"  invoke dev, first run against a new base (locates the package once) {r['dev_cold_seconds']:.2f} s"
                f" = {r['dev_cold_seconds'] / r['naive_seconds']:.2f}x"
            )
            print(
                f"  unchanged re-run     {r['rerun_seconds_median']:>10.3f} s      median of 9, no build "
                "(target <= 0.5 s)"
            )
            print(json.dumps({"dev": r}))
        if "fork-sync" in parts:
            r = bench_fork_sync(Path(tmp) / "fork-sync")
            print(
                f"\ninvoke fork-sync of {r['merged_commits']} upstream commits into a fork ({r['files']} files, "
                f"{r['commits']} commits):"
            )
            print(
                f"  invoke fork-sync     {r['fork_sync_seconds']:>10.2f} s      git fetch + git merge "
                f"{r['git_merge_seconds']:.2f} s   ratio {r['ratio']:.2f}x (target <= 1.5x); medians of 6, "
                "same merged tree"
            )
            rest = (r["fork_sync_seconds"] - r["startup_seconds"]) / r["git_merge_seconds"]
            print(
                f"  of which interpreter + invoke startup ('invoke --list') {r['startup_seconds']:.2f} s; "
                f"without it {rest:.2f}x"
            )
            print(json.dumps({"fork_sync": r}))


if __name__ == "__main__":
    main()
