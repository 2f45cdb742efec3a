"""`invoke run --sync`: how long a saved edit takes to be visible in the running container (median and max of 20
saves), against what a user does without it: `invoke dev` for the same edit, then a restart of the container on
the new image. The container's own clock times both (it shares the host's)."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

from common import invoke, support

from forkdev.core.engine import Engine

SAVES = 20
# Polls the module every 5 ms and prints when its content changes: "seen <epoch> <content>".
WATCHER = (
    "import time\n"
    "p = '/opt/vllm-source/vllm/envs.py'; last = None\n"
    "while True:\n"
    "    try:\n        now = open(p).read()\n    except OSError:\n        now = None\n"
    "    if now != last:\n        print('seen', time.time(), (now or '').strip(), flush=True); last = now\n"
    "    time.sleep(0.005)\n"
)


def run(engine: Engine, work: Path) -> dict:
    up = work / "upstream"
    first = support.make_upstream(up)
    base = support.build_base(engine, up, first, "forkdev-bench/vllm-base:sync")
    fork = work / "fork"
    support.sh("git", "clone", "-q", up, fork)
    env = {**os.environ, "INVOKE_ENGINE_NAME": engine.kind, "INVOKE_CACHE_DIR": str(work / "cache")}
    proc = subprocess.Popen(
        support.invoke_argv(
            "run", "--repo", str(fork), "--image", base, "--sync", "--quiet", "--", "python3", "-c", WATCHER
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, float] = {}
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            if line.startswith("seen "):
                _, when, *content = line.split()
                seen[" ".join(content)] = float(when)
            if "Ctrl-C to leave" in line:  # the tool says so once its watcher is up and the container runs
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    latencies = []
    try:
        if not ready.wait(60):
            raise SystemExit("the synced container did not start")
        for i in range(SAVES):
            text = f"ENVS = 'save {i}'"
            written = time.time()
            (fork / "vllm" / "envs.py").write_text(text + "\n")
            deadline = time.monotonic() + 10
            while text not in seen and time.monotonic() < deadline:
                time.sleep(0.002)
            if text not in seen:
                raise SystemExit(f"save {i} never reached the container")
            latencies.append(seen[text] - written)
            time.sleep(0.3)
    finally:
        proc.send_signal(2)
        proc.wait(60)

    naive = []
    cache = work / "cache"
    for i in range(3):
        text = f"ENVS = 'rebuilt {i}'"
        written = time.time()
        (fork / "vllm" / "envs.py").write_text(text + "\n")
        _, res = invoke(
            "dev", str(fork), "--base", base, "--quiet", cache=cache, env={"INVOKE_ENGINE_NAME": engine.kind}
        )
        image = res.stdout.strip()
        name = f"forkdev-bench-restart-{i}"
        subprocess.run([engine.exe, "rm", "-f", name], capture_output=True)
        out = subprocess.run(
            [
                engine.exe,
                "run",
                "--name",
                name,
                "--network",
                "none",
                "--entrypoint",
                "python3",
                image,
                "-c",
                "import time; print(time.time(), open('/opt/vllm-source/vllm/envs.py').read().strip())",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split(maxsplit=1)
        assert out[1].strip() == text
        naive.append(float(out[0]) - written)
        subprocess.run([engine.exe, "rm", "-f", name], capture_output=True)
    return {
        "saves": SAVES,
        "sync_median": statistics.median(latencies),
        "sync_max": max(latencies),
        "rebuild_restart_median": statistics.median(naive),
        "ratio": statistics.median(latencies) / statistics.median(naive),
        "engine": engine.kind,
    }


def report(r: dict) -> None:
    print(f"\ninvoke run --sync ({r['engine']}), save-to-visible over {r['saves']} saves:")
    print(
        f"  live sync            {r['sync_median']:>8.3f} s median, {r['sync_max']:.3f} s max (target median <= 0.5 s)"
        f"   invoke dev + restart {r['rebuild_restart_median']:.3f} s   ratio {r['ratio']:.2f}x"
    )
