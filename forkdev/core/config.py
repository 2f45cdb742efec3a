"""Target profiles and every config default. tasks.py hands DEFAULTS to invoke, so invoke.yaml, INVOKE_*
variables and flags can override any key; tasks read their settings through `settings(c)`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Failure


@dataclass(frozen=True)
class Target:
    name: str
    upstream: str
    package: str  # import name
    package_path: str  # where the package lives in the repository
    native: tuple[str, ...]  # a change under these means the base must be recompiled ("dir/" or a file)
    published_base: str | None  # an upstream image per commit; "{sha}" is the full commit
    nightly_image: str  # what `invoke nightly` tags locally

    def is_native(self, path: str) -> bool:
        return any(path.startswith(p) if p.endswith("/") else path == p for p in self.native)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="vllm",
            upstream="https://github.com/vllm-project/vllm.git",
            package="vllm",
            package_path="vllm",
            native=("csrc/", "CMakeLists.txt", "cmake/", "setup.py", "pyproject.toml", "requirements/", "rust/"),
            # vLLM publishes an image per main commit: vllm/vllm-openai:nightly-<full sha>.
            published_base="vllm/vllm-openai:nightly-{sha}",
            nightly_image="forkdev/vllm:nightly",
        ),
        Target(
            name="sglang",
            upstream="https://github.com/sgl-project/sglang.git",
            package="sglang",
            package_path="python/sglang",
            native=("sgl-kernel/", "python/pyproject.toml", "docker/"),
            published_base=None,
            nightly_image="forkdev/sglang:nightly",
        ),
        Target(
            name="mlc-llm",
            upstream="https://github.com/mlc-ai/mlc-llm.git",
            package="mlc_llm",
            package_path="python/mlc_llm",
            native=("cpp/", "3rdparty/", "CMakeLists.txt", "cmake/", "python/setup.py", "python/requirements.txt"),
            published_base=None,
            nightly_image="forkdev/mlc-llm:nightly",
        ),
    )
}

DEFAULTS: dict[str, Any] = {
    "target": "vllm",
    "cache_dir": "~/.cache/forkdev",
    "engine": {
        "name": "",  # docker | podman | "" (auto: docker, then podman)
        "network": "host",  # for steps that need the network; builds here have no bridge
    },
    "upstream": {
        "url": "",  # "" = the target's upstream; a local path works (offline, tests)
        "branch": "main",
    },
    "dev": {
        "base": "",  # "" = the target's published image for the merge-base, else its nightly image
        "repository": "forkdev/{target}-dev",  # local-<sha12> tags go here
        "push": False,
        "force": False,
    },
    "fork_sync": {
        "repo": ".",
        "upstream": "upstream",  # a remote name or a URL/path
        "branch": "main",  # the upstream branch
        "into": "",  # "" = the current branch
        "protect": ["extras/", ".github/workflows/fork-sync.yml"],
        "strategies": {".gitignore": "union"},
        "push": False,
        "autostash": False,
    },
    "overlay": {
        "repo": ".",
        "definitions": "extras/overlay.txt",
        "dest": "",  # "" = a directory under cache_dir; inside the checkout it must be git-ignored
    },
    "patches": {
        "repo": ".",
        "registry": "extras/patches/patches.json",
        "into": "worktree",  # worktree | overlay | checkout | a directory
    },
}


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise Failure(f"unknown target '{name}'; choose one of {', '.join(sorted(TARGETS))}") from None


def cache_dir(c: Any) -> Path:
    path = Path(os.path.expanduser(c.config.cache_dir))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_path(c: Any, kind: str, key: str) -> Path:
    """A per-repository place in the cache: <cache_dir>/<kind>/<name>-<hash of key>."""
    name = os.path.basename(key.rstrip("/")).removesuffix(".git") or "root"
    return cache_dir(c) / kind / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def dry_run(c: Any, flag: bool | None) -> bool:
    """--dry-run on the task, or invoke's own --dry."""
    return bool(flag) or bool(c.config.run.dry)
