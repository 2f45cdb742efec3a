"""`invoke nightly` on a synthetic upstream whose Dockerfile compiles with a fixed cost: the unchanged re-run
(target <= 1 s), and a Python-only nightly (one thin layer) against a full rebuild of the same commit."""

from __future__ import annotations

import json
from pathlib import Path

from batch import COMPILE_SECONDS
from common import invoke, median, support

from forkdev.core.engine import Engine


def run(engine: Engine, work: Path) -> dict:
    up = work / "upstream"
    support.ensure_os_image(engine)
    support.make_buildable_upstream(up, limit_bytes=None)  # the real tree's sizes: 62 MB of context
    conf = work / "bench.yaml"
    conf.write_text(f"nightly:\n  build_args:\n    compile_seconds: '{COMPILE_SECONDS}'\n")
    env = {"INVOKE_ENGINE_NAME": engine.kind, "INVOKE_NIGHTLY_REPOSITORY": "forkdev-bench/nightly"}

    def nightly(*args: str) -> tuple[float, dict]:
        took, res = invoke(
            "-f", str(conf), "nightly", "--upstream", str(up), "--json", "--quiet", *args, cache=work / "cache", env=env
        )
        return took, json.loads(res.stdout)

    first, out = nightly()
    assert out["built"] == "full"
    reruns = []
    for _ in range(5):
        took, out = nightly()
        assert out["built"] == "nothing"
        reruns.append(took)
    (up / "vllm" / "sampling_params.py").write_text("SAMPLING = 'bench'\n")
    support.commit_all(up, "python only")
    thin, out = nightly()
    assert out["built"] == "thin"
    full, out = nightly("--full", "--force")
    assert out["built"] == "full"
    return {
        "first_full_seconds": first,
        "rerun_seconds": median(reruns),
        "thin_seconds": thin,
        "full_seconds": full,
        "ratio": thin / full,
        "engine": engine.kind,
        "compile_seconds": COMPILE_SECONDS,
    }


def report(r: dict) -> None:
    print(
        f"\ninvoke nightly on a vLLM-sized synthetic upstream ({r['engine']}, compile step {r['compile_seconds']} s):"
    )
    print(f"  unchanged re-run     {r['rerun_seconds']:>8.3f} s   median of 5, builds nothing (target <= 1 s)")
    print(
        f"  python-only nightly  {r['thin_seconds']:>8.2f} s   full rebuild of the same commit "
        f"{r['full_seconds']:.2f} s   ratio {r['ratio']:.3f}x"
    )
