"""invoke nightly: a base image of the latest upstream commit, compiled once per native state; nightly.prune.

The tasks turn flags and config into one checked order and make one call; the machinery is in
forkdev/core/nightlybuild.py. The task holds the lock (two runs never overlap), writes the unattended log, and
records the last run's outcome for `invoke cron.status`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from invoke import Collection

from .core import cache as store
from .core import config, native, ui, validate
from .core.errors import Failure
from .core.lock import exclusive
from .core.registry import Registry
from .core.scratch import sweep
from .core.tasking import runner, task, toggle


@task(
    help={
        "upstream": "upstream URL or path (default: config upstream.url, else the target's)",
        "ref": "the upstream branch or tag to build the tip of (default: config upstream.branch)",
        "commit": "build this upstream commit instead of the ref's tip",
        "full": "compile even when the native state is the last full nightly's",
        "force": "build even when nightly-<sha> exists",
        "push": "push nightly and nightly-<sha> to nightly.repository (it must name a registry)",
        "no_push": "do not push, whatever config nightly.push says",
        "precompiled": "vLLM: build with the upstream's precompiled kernels (VLLM_USE_PRECOMPILED=1), in minutes",
        "no_precompiled": "compile the kernels, whatever config nightly.precompiled says",
        "target": "target profile (default: config target)",
    },
)
def build(
    c,
    upstream=None,
    ref=None,
    commit=None,
    full=False,
    force=False,
    push=False,
    no_push=False,
    precompiled=False,
    no_precompiled=False,
    target=None,
    dry_run=False,
    json=False,
    quiet=False,
):
    """Base image of the latest upstream commit: nightly + nightly-<sha>; one compile per native state."""
    run = runner(c, dry_run, quiet)
    if not run.dry_run:
        sweep()  # what a killed run left in $TMPDIR (its build context), even if this one builds thin
    settings = config.load(c, target, upstream)
    profile, cfg = settings.target, settings.nightly
    pushing = toggle("push", push, no_push, cfg.push)
    prebuilt = toggle("precompiled", precompiled, no_precompiled, settings.native.precompiled)
    if pushing and not validate.registry_host(cfg.repository):
        raise Failure(
            f"--push: nightly.repository '{cfg.repository}' names no registry; set it to REGISTRY/NAME "
            "(docker.io/you/name for Docker Hub)"
        )
    from .core import nightlybuild  # the machinery, loaded when the task runs (cli.py)

    cache = settings.cache_dir(run)
    shaping, parallel = native.build_args(profile, settings.native.build_args, settings.native.cuda_arch, prebuilt)
    order = nightlybuild.Order(
        profile=profile,
        url=settings.upstream,
        ref=ref or settings.branch,
        commit=commit,
        repository=cfg.repository,
        full=full,
        force=force,
        push=pushing,
        cache=cache,
        shaping=shaping,
        parallel=parallel,
        policy=settings.registry,
        secret_paths=settings.secret_paths,
        secret_values=settings.secret_values,
    )
    started = time.time()
    outcome: dict[str, Any] = {"ok": False, "started": nightlybuild.rfc3339(started)}
    # A dry run writes nothing (no log, no lock file, no state) and may run beside a real one.
    locked = (
        contextlib.nullcontext()
        if run.dry_run
        else exclusive(store.nightly(cache, profile.name, ".lock"), "invoke nightly")
    )
    with ui.log_to(None if run.dry_run else cfg.log), locked:
        try:
            result = nightlybuild.build(settings.engine(run), run, order)
            outcome.update(ok=True, message=result["summary"], commit=result["commit"])
        except Failure as exc:
            outcome["message"] = str(exc)
            raise
        finally:
            if not run.dry_run:
                last_run = {**outcome, "finished": nightlybuild.rfc3339(time.time())}
                store.write_json(store.nightly(cache, profile.name, ".last-run.json"), last_run)
    if json:
        ui.emit_json(result)
    else:
        ui.result(result["image"] or "")


@task(
    help={
        "keep": "how many nightly-<sha> tags to keep, newest by creation time (default: config nightly.keep)",
        "push": "prune the registry's nightly-* tags too",
        "target": "target profile (default: config target)",
    },
)
def prune(c, keep=None, push=False, target=None, dry_run=False, json=False, quiet=False):
    """Remove the oldest nightly-<sha> tags (by creation time, never by name); `nightly` itself stays."""
    run = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    repository = settings.nightly.repository
    count = config.keep_count(keep, "--keep") if keep is not None else settings.nightly.keep
    registry = None
    if push:
        host = validate.registry_host(repository)
        if not host:
            raise Failure(f"--push: nightly.repository '{repository}' names no registry; set it to REGISTRY/NAME")
        registry = Registry(host, settings.registry, run)
    from .core import nightlybuild

    state = store.nightly(settings.cache, settings.target.name)
    out = nightlybuild.prune(settings.engine(run), run, repository, state, count, registry)
    stayed = [*out.not_removed, *out.not_removed_in_registry]
    for item in stayed:
        ui.warn(f"kept {item['ref']}: {item['reason']}")
    if json:
        ui.emit_json({**out.__dict__, "kept": count, "dry_run": run.dry_run})
    ui.ok(
        ("would remove " if run.dry_run else "removed ")
        + f"{len(out.removed)} local and {len(out.removed_in_registry)} registry tags"
        + (f"; {len(stayed)} could not go (above)" if stayed else "")
    )


nightly = Collection("nightly")
nightly.add_task(build, default=True)
nightly.add_task(prune)
