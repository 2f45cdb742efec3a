"""`nox -s bench`: every figure the issues name, each printed next to the naive way's, measured in the same run.

`nox -s bench -- dev native fork-sync` runs some parts; BENCH_WORKDIR=DIR keeps the generated trees there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch  # noqa: E402
import dev_image  # noqa: E402
import fork_sync  # noqa: E402
import live_sync  # noqa: E402
import native_build  # noqa: E402
import nightly  # noqa: E402
import smoke  # noqa: E402
from common import support  # noqa: E402

from forkdev.core.engine import Engine  # noqa: E402
from forkdev.core.proc import Runner  # noqa: E402

PARTS = {
    "dev": (dev_image, lambda work: dev_image.run(Engine.detect(Runner(echo=False), "docker"), work)),
    "native": (native_build, lambda work: native_build.run(Engine.detect(Runner(echo=False), "docker"), work)),
    "fork-sync": (fork_sync, fork_sync.run),
    # nightly and batch build with RUN --mount: podman (buildah) resolves the local FROM image without a registry
    "nightly": (nightly, lambda work: nightly.run(Engine.detect(Runner(echo=False), "podman"), work)),
    "batch": (batch, lambda work: batch.run(Engine.detect(Runner(echo=False), "podman"), work)),
    "sync": (live_sync, lambda work: live_sync.run(Engine.detect(Runner(echo=False), "docker"), work)),
    "smoke": (smoke, smoke.run),
}


def main() -> None:
    parts = sys.argv[1:] or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    keep = os.environ.get("BENCH_WORKDIR")  # keep the generated trees there, to look at or profile
    if keep:
        shutil.rmtree(keep, ignore_errors=True)
    try:
        measure_all(parts, keep)
    finally:
        if not keep:  # what the benchmarks built (forkdev-bench/..., their OS image included), on both engines
            for kind in ("docker", "podman"):
                with contextlib.suppress(Exception):
                    support.remove_test_images(Engine.detect(Runner(echo=False), kind), ("forkdev-bench",), False)


def measure_all(parts: list[str], keep: str | None) -> None:
    with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="forkdev-bench-") as tmp:
        for part in parts:
            module, measure = PARTS[part]
            figures = measure(Path(tmp) / part)
            module.report(figures)
            print(json.dumps({part: figures}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
