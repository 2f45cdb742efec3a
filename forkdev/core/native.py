"""The native state of a commit: everything a full (compiling) build depends on, as one hash.

Two commits with the same native hash compile to the same kernels, so one full build serves both: the second is
the first image plus one thin layer of its Python changes. The hash covers the target's native paths at that
commit (their modes and blob ids), the Dockerfile, its stage and the build arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

from .config import Target
from .gitrepo import Repo, z_paths


def build_args(
    target: Target, configured: Mapping[str, object], cuda_arch: str, precompiled: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """(args that shape the compiled result, hashed into the native state; args that only set parallelism), from
    the profile's fields: its own build_args, config's (nightly.build_args), the GPU architectures, the upstream's
    precompiled kernels when `precompiled`, and the compile's parallelism from this machine's CPUs and memory."""
    shaping = {**dict(target.build_args), **{str(k): str(v) for k, v in dict(configured or {}).items()}}
    if target.arch_arg and cuda_arch:
        shaping[target.arch_arg] = str(cuda_arch)
    if target.precompiled_arg and precompiled:
        shaping[target.precompiled_arg] = "1"
    parallel: dict[str, str] = {}
    cpus = os.cpu_count() or 1
    jobs = max(1, min(cpus, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30 // 8))
    if target.jobs_arg:
        parallel[target.jobs_arg] = str(jobs)
    if target.threads_arg:
        parallel[target.threads_arg] = str(max(1, min(8, cpus // jobs)))
    return shaping, parallel


def native_hash(repo: Repo, commit: str, target: Target, build_args: Mapping[str, str], dockerfile: str = "") -> str:
    """The native state of `commit`; `dockerfile`: the Dockerfile's own text when it is not the commit's."""
    paths = sorted({p.rstrip("/") for p in target.native} | ({target.dockerfile} if not dockerfile else set()))
    listing = repo.git("ls-tree", "-r", "-z", "--full-tree", "--end-of-options", commit, "--", *paths).stdout
    digest = hashlib.sha256()
    digest.update(listing)
    digest.update(b"\0dockerfile\0" + dockerfile.encode())
    digest.update(b"\0stage\0" + target.stage.encode())
    digest.update(b"\0args\0" + json.dumps(dict(sorted(build_args.items()))).encode())
    return digest.hexdigest()


def native_paths_changed(repo: Repo, old: str, new: str, target: Target) -> list[str]:
    """The native files that differ between two commits (for saying why a full build is needed)."""
    paths = sorted({p.rstrip("/") for p in target.native} | {target.dockerfile})
    res = repo.git("diff", "--name-only", "-z", "--no-renames", "--end-of-options", old, new, "--", *paths)
    return z_paths(res.stdout)
