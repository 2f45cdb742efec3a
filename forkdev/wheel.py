"""invoke wheel PATH: a wheel of the checkout at PATH, built in the wheel image (or on the host with --native),
landing in --out with SHA256SUMS, a CycloneDX SBOM and an in-toto provenance statement; wheel.image builds the
image.

The task turns flags and config into one checked job and makes the calls; the machinery is in
forkdev/core/wheelbuild.py, loaded when the task runs (cli.py).
"""

from __future__ import annotations

import os
import sys
import time

from invoke import Collection

from .core import cache as store
from .core import config, ui, validate
from .core.gitrepo import Repo
from .core.scratch import scratch
from .core.tasking import runner, task, toggle

HELP = {
    "repo": "the checkout, e.g. ~/vllm (positional, or --repo)",
    "out": "where the wheel, SHA256SUMS, SBOM and provenance land (default: config wheel.out, dist/)",
    "native": "build on this host instead of in the wheel image",
    "no_native": "build in the image, whatever config wheel.native says",
    "target": "target profile: how the checkout builds (default: config target)",
    "cmake_arg": "a -DNAME=VALUE for cmake: the profile's configure step and a pyproject backend's (CMAKE_ARGS); "
    "repeatable",
    "ca_cert": "a CA bundle for the in-image pip (default: the one the host's pip uses: PIP_CERT, pip config, "
    "SSL_CERT_FILE, REQUESTS_CA_BUNDLE)",
    "no_ca_cert": "give the in-image build no CA bundle, whatever the host's pip or config wheel.ca_cert says",
    "isolation": "let pip fetch build dependencies in an isolated environment (needs the network)",
    "no_isolation": "build with the image's own build dependencies, whatever config wheel.isolation says",
    "repair": "repair a Linux platform wheel to its manylinux tag with auditwheel, whatever config wheel.repair says",
    "no_repair": "keep the raw linux_* wheel pip wrote (no auditwheel)",
}


@task(positional=["repo"], help=HELP, iterable=["cmake_arg"])
def build(
    c,
    repo,
    out=None,
    native=False,
    no_native=False,
    target=None,
    cmake_arg=None,
    ca_cert=None,
    no_ca_cert=False,
    isolation=False,
    no_isolation=False,
    repair=False,
    no_repair=False,
    dry_run=False,
    json=False,
    quiet=False,
):
    """Build a wheel of the checkout (in the wheel image, or --native); wheel path on stdout."""
    from .core import outdir, source
    from .core.image import rfc3339
    from .core.wheelbuild import (
        Job,
        build_env,
        build_in_image,
        build_on_host,
        cmake_env,
        finish,
        image_ca,
        recipe_check,
    )

    run = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    cfg, profile = settings.wheel, settings.target
    checkout = Repo.open(validate.plain(repo, "the checkout path", "pass the path of a checkout"), run)
    recipe_check(checkout.path, profile)
    out_dir = outdir.resolve(validate.plain(out or cfg.out, "--out"), checkout.path)
    on_host = toggle("native", native, no_native, cfg.native)
    cmake_args = [validate.cmake_define(a) for a in (*profile.cmake_args, *cfg.cmake_args, *(cmake_arg or []))]
    outdir.check_writable(out_dir, [])  # a SHA256SUMS we could not update is refused before the build
    isolated = toggle("isolation", isolation, no_isolation, cfg.isolation)
    # auditwheel repairs Linux wheels only: the image is Linux; a --native build on macOS or Windows is left as is.
    repaired = toggle("repair", repair, no_repair, cfg.repair) and (not on_host or sys.platform.startswith("linux"))
    ca = None if on_host else image_ca(run, ca_cert, no_ca_cert, cfg.ca_cert, isolated)
    src = source.describe(checkout, settings.secret_paths)
    ui.info(f"source: {src.commit[:12]}{' + uncommitted work' if src.dirty else ''} ({len(src.files)} files)")
    env = build_env(checkout, src, profile, isolated, cfg)
    if repaired:
        env["FORKDEV_REPAIR"] = "1"
    if cmake_args:
        # A pyproject backend runs cmake itself (scikit-build-core, setuptools with a cmake build_ext): CMAKE_ARGS is
        # what they read. Appended to what the build's environment already holds (wheel.env, or the host's own).
        before = env.get("CMAKE_ARGS", os.environ.get("CMAKE_ARGS", "") if on_host else "")
        env["CMAKE_ARGS"] = cmake_env(before, cmake_args)
    log = store.log(settings.cache_dir(run), "wheel", checkout.path.name)
    plan = {
        "path": str(checkout.path),
        "target": profile.name,
        "commit": src.commit,
        "dirty": src.dirty,
        "out": str(out_dir),
        "native": on_host,
        "isolation": isolated,
        "repair": repaired,
        "cmake_args": cmake_args,
        "ca_cert": str(ca) if ca else None,
        "log": str(log),
    }
    with scratch("wheel") as tmp:
        stage_src, stage_out = tmp / "src", tmp / "out"
        job = Job(run, settings, checkout, src, stage_src, stage_out, env, cmake_args, log, plan)
        started = rfc3339(time.time())
        built_by = build_on_host(job) if on_host else build_in_image(job, ca, isolated)
        if run.dry_run:
            ui.info(f"dry run: would write a wheel, its SBOM and provenance, and SHA256SUMS into {out_dir}")
            if json:
                ui.emit_json({**plan, "dry_run": True})
            return
        result = finish(stage_src, stage_out, out_dir, profile, src, built_by, plan, started, log, isolated)
    if json:
        ui.emit_json(result)
    else:
        ui.result(result["wheel"])


@task(help={"force": "build even when an image of the same recipe exists"})
def image(c, force=False, dry_run=False, json=False, quiet=False):
    """Build the wheel image from docker/Dockerfile (skipped when one of the same recipe exists)."""
    from .core import builder

    run = runner(c, dry_run, quiet)
    settings = config.load(c)
    engine = settings.engine(run)
    ref, args = config.wheel_image(settings.wheel)
    built = builder.ensure(engine, run, ref, args, force=force)
    if json:
        ui.emit_json({"image": built.ref, "id": built.id, "built": built.built, "dry_run": run.dry_run})
    else:
        ui.result(built.ref)


wheel = Collection("wheel")
wheel.add_task(build, default=True)
wheel.add_task(image)
