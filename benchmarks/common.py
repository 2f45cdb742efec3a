"""What every benchmark shares: a vLLM-sized upstream with history, running the tools as a user does, medians."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import support  # noqa: E402

# The benchmarks' own FROM image: a test session running beside them sweeps and removes forkdev-test/ images.
support.OS_IMAGE = "forkdev-bench/debian:bookworm"

# vLLM's main branch has about 10,000 first-parent commits; the tree has 4,494 files and 62 MB.
HISTORY = int(os.environ.get("BENCH_COMMITS", "10000"))


def invoke(*args: str, cache: Path, env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """`invoke ARGS` as a user runs it; (seconds, result). A failure ends the benchmark with its stderr."""
    full = {**os.environ, "INVOKE_CACHE_DIR": str(cache), "INVOKE_DEV_REPOSITORY": "forkdev-bench/{target}-dev"}
    # As on a user's machine: modules cached as .pyc after the first run (a CI image may set this to disable it).
    full.pop("PYTHONDONTWRITEBYTECODE", None)
    full.update(env or {})
    start = time.perf_counter()
    res = subprocess.run(support.invoke_argv(*args), capture_output=True, text=True, env=full)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return took, res


def import_invoke_seconds(rounds: int = 5) -> float:
    """The floor under every task: starting this interpreter and importing invoke, nothing of ours."""
    argv = [sys.executable, "-c", "import invoke"]
    return median([timed(lambda: subprocess.run(argv, check=True)) for _ in range(rounds)])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def history(repo: Path, commits: int, seed: int = 7) -> None:
    """`commits` upstream-like commits made with git fast-import: each changes as many Python files as one of vLLM's
    last 400 commits did (shared/data's vllm-commits-400.tsv: 1 file in 37% of them, 5.1 on average, up to 142),
    each file at its real size in the tree (11 KB on average), so fetching and checking them out costs git what
    the real history does."""
    rng = random.Random(seed)
    sizes = {p: s for p, s, _ in support.manifest() if p.startswith("vllm/") and p.endswith(".py")}
    py = sorted(sizes)
    rows = (support.DATA / "vllm-commits-400.tsv").read_text().splitlines()[1:]
    counts = [max(1, int(row.split("\t")[2])) for row in rows]
    head = support.git(repo, "rev-parse", "HEAD")
    chunks = []
    for i in range(commits):
        files = rng.sample(py, min(len(py), rng.choice(counts)))
        msg = f"upstream commit {i}".encode()
        chunk = [
            b"commit refs/heads/main\n",
            f"committer Bench <b@x> {1700000000 + i} +0000\n".encode(),
            f"data {len(msg)}\n".encode() + msg + b"\n",
        ]
        if i == 0:
            chunk.append(f"from {head}\n".encode())
        for f in files:
            data = support.content(f, sizes[f], salt=str(i))
            chunk.append(f"M 100644 inline {f}\ndata {len(data)}\n".encode() + data + b"\n")
        chunks.append(b"".join(chunk))
    support.git(repo, "fast-import", "--quiet", input=b"".join(chunks))
    support.git(repo, "reset", "-q", "--hard", "main")  # the benchmark's own fresh repository


def vllm_sized_upstream(root: Path) -> Path:
    print(f"building a vLLM-sized upstream with {HISTORY} commits ...", file=sys.stderr)
    support.make_upstream(root, limit_bytes=None)
    history(root, HISTORY)
    return root
