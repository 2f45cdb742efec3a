"""`invoke smoke` with uv against venv + pip, on the same real wheels, in the same run.

Two wheels of the cmake-backed test package (a C library inside, laid out as MLC-LLM is) are built on the host
with `invoke wheel --native`; each is then smoked in a fresh environment with uv, and with venv + pip (the way
without uv: `python -m venv` bootstraps pip, then `pip install`). The figure is the smoke's own time per wheel
(environment, install, import and checks, smoke command), as `invoke smoke --json` reports it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common import invoke, median, support

ROUNDS = {"uv": 7, "pip": 3}
ENV = {"INVOKE_TARGET": "mlc-llm"}


def run(work: Path) -> dict:
    if not shutil.which("uv"):
        raise SystemExit("uv is not installed: pip install uv (it is in the test extra), then run the bench again")
    cache, dist = work / "cache", work / "dist"
    wheels = []
    for version in ("0.1.0", "0.2.0"):
        src = work / f"pkg-{version}"
        support.make_cmake_package(src, version=version)
        _, res = invoke("wheel", str(src), "--native", "--out", str(dist), "--json", "--quiet", cache=cache, env=ENV)
        wheels.append(json.loads(res.stdout)["wheel"])
    per_wheel: dict[str, list[float]] = {"uv": [], "pip": []}
    for installer, rounds in ROUNDS.items():
        for _ in range(rounds):
            args = ["smoke", "--installer", installer, "--json", "--quiet"] + [f"--wheel={w}" for w in wheels]
            _, res = invoke(*args, cache=cache)
            for result in json.loads(res.stdout)["wheels"]:
                assert result["ok"] and result["installer"] == installer, result
                per_wheel[installer].append(result["seconds"])
    uv, pip = median(per_wheel["uv"]), median(per_wheel["pip"])
    return {
        "wheels": len(wheels),
        "uv_seconds_per_wheel": round(uv, 3),
        "pip_seconds_per_wheel": round(pip, 3),
        "ratio": round(uv / pip, 3),
        "uv_samples": len(per_wheel["uv"]),
        "pip_samples": len(per_wheel["pip"]),
    }


def report(r: dict) -> None:
    print(f"\ninvoke smoke, {r['wheels']} wheels of a cmake-backed package, each in a fresh environment:")
    print(
        f"  per wheel with uv    {r['uv_seconds_per_wheel']:>8.3f} s   venv + pip {r['pip_seconds_per_wheel']:.3f} s"
        f"   ratio {r['ratio']:.3f}x (target <= 0.1x); medians of {r['uv_samples']} and {r['pip_samples']}"
    )
