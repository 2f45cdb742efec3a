"""invoke wheel PATH: a wheel of the checkout at PATH, built in the wheel image (or on the host with --native),
landing in --out with SHA256SUMS, a CycloneDX SBOM and an in-toto provenance statement.

Plan first: the target's recipe is checked against the checkout, --out is checked, the source is described, the
image is named. Then the working tree is copied to a scratch directory, built there (the checkout is only read),
the wheel is stamped with its build record, and only then do complete files move into --out.
"""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Collection

from .core import cache as store
from .core import config, ui, validate
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.scratch import scratch
from .core.tasking import runner, task, toggle

if TYPE_CHECKING:
    from .core import source

# The wheel machinery (builder, source, wheelfile, attest, outdir) is imported where it runs: see cli.py.

MARK = "forkdev-wheel: error: "  # how the entrypoint's own failure line starts

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


@dataclass(frozen=True)
class Job:
    """One wheel build, as every builder (the image, the host) is handed it."""

    run: Runner
    settings: config.Settings
    repo: Repo
    src: source.Source
    stage_src: Path  # the scratch copy of the tree the build sees
    stage_out: Path  # where the build writes the wheel
    env: dict[str, str]
    cmake_args: list[str]
    log: Path
    plan: dict[str, Any]  # what the result reports, filled in as the build goes


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
    ca = None if on_host else _image_ca(run, ca_cert, no_ca_cert, cfg.ca_cert, isolated)
    src = source.describe(checkout, settings.secret_paths)
    ui.info(f"source: {src.commit[:12]}{' + uncommitted work' if src.dirty else ''} ({len(src.files)} files)")
    env = _build_env(checkout, src, profile, isolated, cfg)
    if repaired:
        env["FORKDEV_REPAIR"] = "1"
    if cmake_args:
        # A pyproject backend runs cmake itself (scikit-build-core, setuptools with a cmake build_ext): CMAKE_ARGS is
        # what they read. Appended to what the build's environment already holds (wheel.env, or the host's own).
        before = env.get("CMAKE_ARGS", os.environ.get("CMAKE_ARGS", "") if on_host else "")
        env["CMAKE_ARGS"] = cmake_env(before, cmake_args)
    log = store.log(settings.cache_dir(), "wheel", checkout.path.name)
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
        started = _now()
        built_by = _native(job) if on_host else _in_image(job, ca, isolated)
        if run.dry_run:
            ui.info(f"dry run: would write a wheel, its SBOM and provenance, and SHA256SUMS into {out_dir}")
            if json:
                ui.emit_json({**plan, "dry_run": True})
            return
        result = _finish(stage_src, stage_out, out_dir, profile, src, built_by, plan, started, log, isolated)
    if json:
        ui.emit_json(result)
    else:
        ui.result(result["wheel"])


def recipe_check(root: Path, profile: config.Target) -> None:
    """The checkout has what the target's recipe builds from, or one sentence says what is missing."""
    py = root / profile.wheel_python
    if not ((py / "pyproject.toml").is_file() or (py / "setup.py").is_file()):
        where = "the root" if profile.wheel_python in ("", ".") else f"{profile.wheel_python}/"
        raise Failure(
            f"'{root}' has no build recipe for target {profile.name}: no pyproject.toml or setup.py in {where}; "
            "pass the checkout of a Python package, or --target the profile that matches its layout"
        )
    if profile.wheel_cmake and not (root / profile.wheel_cmake / "CMakeLists.txt").is_file():
        raise Failure(
            f"'{root}' has no build recipe for target {profile.name}: no CMakeLists.txt in "
            f"{profile.wheel_cmake or '.'}/; pass a checkout laid out as {profile.name} is, or another --target"
        )


def cmake_env(before: str, cmake_args: list[str]) -> str:
    """CMAKE_ARGS: what it held, then the -D options, each quoted once (scikit-build-core splits it with shlex)."""
    return " ".join(part for part in (before.strip(), shlex.join(cmake_args)) if part)


def _image_ca(run: Runner, given: str | None, refused: bool, configured: str, isolated: bool) -> Path | None:
    """The CA bundle mounted (read-only, never copied: it lands in no layer and no wheel) for the in-image pip:
    --ca-cert or config wheel.ca_cert, else, when the build reaches the package index (--isolation), the one the
    host's pip uses, said once; --no-ca-cert keeps any out."""
    from .core import builder

    if given and refused:
        raise Failure("--ca-cert and --no-ca-cert contradict each other; pass one of them")
    if refused:
        return None
    if given or configured:
        return _ca_cert(given or configured)
    if not isolated:
        return None  # no network, no index: nothing to trust
    found = builder.host_ca(run, sys.executable, os.environ)
    if found is None:
        return None
    ui.info(f"CA bundle for the in-image pip: {found[0]} (from {found[1]}); --no-ca-cert keeps it out")
    return found[0]


def _ca_cert(value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(os.path.expanduser(validate.plain(value, "--ca-cert"))).resolve()
    if not path.is_file():
        raise Failure(f"--ca-cert '{value}' is not a file; pass a PEM bundle (e.g. /etc/ssl/certs/ca-certificates.crt)")
    return path


def _build_env(repo: Repo, src: source.Source, profile, isolated: bool, cfg: config.Wheel) -> dict[str, str]:
    from .core.fullbuild import version_of

    env = {
        "FORKDEV_CMAKE_DIR": profile.wheel_cmake,
        "FORKDEV_PYTHON_DIR": profile.wheel_python or ".",
        "CCACHE_MAXSIZE": str(cfg.ccache_size),
    }
    if cfg.jobs > 0:
        env["FORKDEV_JOBS"] = str(cfg.jobs)
    if isolated:
        env["FORKDEV_ISOLATION"] = "1"
    if profile.version_env:
        env[profile.version_env] = version_of(repo, src.commit)
    for key, value in cfg.env.items():
        env[validate.plain(str(key), "wheel.env name")] = validate.plain(str(value), f"wheel.env.{key}")
    return env


def _stage(job: Job) -> None:
    """The scratch copy the build sees, and the hash of exactly those files (taken before the build writes)."""
    from .core import source

    if job.run.dry_run:
        return
    source.export(job.repo, job.src, job.stage_src)
    job.stage_out.mkdir()
    job.plan["tree_sha256"] = job.src.tree_sha256(job.stage_src)


def _in_image(job: Job, ca: Path | None, isolated: bool) -> dict:
    from .core import builder, owners, source
    from .core import container as ctr

    run, settings, stage_src, stage_out, env = job.run, job.settings, job.stage_src, job.stage_out, job.env
    engine = settings.engine(run)
    ref, args = config.wheel_image(settings.wheel)
    image = builder.ensure(engine, run, ref, args)
    cache = settings.wheel.ccache / "image"  # the image's compiler and the host's never share entries
    user = None
    _stage(job)
    if not run.dry_run:
        cache.mkdir(parents=True, exist_ok=True)
        owner = builder.numeric_user(image.user)
        if os.geteuid() != 0:
            user = f"{os.geteuid()}:{os.getegid()}"  # what the build writes is ours
            env = {**env, "HOME": "/tmp"}
        elif owner is not None and owner[0] != 0:
            for path in (stage_src, stage_out):  # the image's own non-root user builds
                source.hand_over(path, *owner)
            if os.stat(cache).st_uid == 0:
                os.chown(cache, *owner)
    network = engine.network if (isolated or ca is not None) else "none"
    own = None
    name, labels = "forkdev-wheel", {}
    if not run.dry_run:  # a dry run leaves nothing in the cache
        owners.sweep(engine, run, settings.cache_dir())  # the build containers of a wheel run that was killed
        own = owners.claim(settings.cache_dir(), engine, run)
        name, labels = own.container("wheel")
    argv = builder.run_argv(
        engine,
        image.ref,
        name=name,
        src=stage_src,
        out=stage_out,
        ccache=cache,
        env=env,
        cmake_args=job.cmake_args,
        user=user,
        network=network,
        ca_cert=ca,
        labels=labels,
    )
    job.plan.update(image=image.ref, image_built=image.built)
    with ctr.running(run, engine, own, name) as box:  # gone on every path: a failure, Ctrl-C, a timeout, SIGTERM
        _run_build(run, argv, job.log, env=None)
        box.ended(0)  # it built: its --rm removed it before the client returned
    return {
        "id": f"urn:forkdev:builder:{engine.kind}-image",
        "image": image.ref,
        "digest": image.id,
        "engine": f"{engine.kind} {engine.server_version}",
        "network": network,
    }


def _native(job: Job) -> dict:
    from .core import assets

    python = job.settings.wheel.python or sys.executable
    cache = job.settings.wheel.ccache / "native"
    _stage(job)
    if not job.run.dry_run:
        cache.mkdir(parents=True, exist_ok=True)
    host_env = {
        **job.env,
        "FORKDEV_SRC": str(job.stage_src),
        "FORKDEV_OUT": str(job.stage_out),
        "FORKDEV_PYTHON": python,
        "CCACHE_DIR": str(cache),
    }
    job.plan.update(python=python)
    _run_build(job.run, ["bash", str(assets.entrypoint()), "build", *job.cmake_args], job.log, env=host_env)
    return {"id": "urn:forkdev:builder:native", "python": python, "platform": sys.platform}


def _run_build(run: Runner, argv: list[str], log: Path, env: dict[str, str] | None) -> None:
    """The build, its output passed through and into `log`; a failure is its own last line plus the log's path."""
    if not run.dry_run:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    with ui.log_to(None if run.dry_run else log), ui.step("build the wheel"):
        res = run(argv, env=env, stream=True, check=False)
    if res.ok:
        return
    lines = res.err.splitlines()
    ours = [line[len(MARK) :] for line in lines if line.startswith(MARK)]
    cmake = _cmake_error(lines)
    why = ours[-1] if ours else f"the build stopped with exit {res.returncode}: {res.reason}"
    raise Failure(f"{why}{f' ({cmake})' if cmake and cmake not in why else ''}; the build log is {log}")


def _cmake_error(lines: list[str]) -> str:
    """cmake's first error and the line that explains it ("CMake Error at CMakeLists.txt:7: Parse error...")."""
    for i, line in enumerate(lines):
        if line.startswith("CMake Error"):
            detail = next((nxt.strip() for nxt in lines[i + 1 : i + 4] if nxt.strip()), "")
            return " ".join(f"{line.strip()} {detail}".split())
    return ""


def _finish(stage_src, stage_out, out_dir, profile, src, built_by, plan, started, log, isolated) -> dict:
    from .core import attest, builder, outdir, wheelfile

    report = builder.report(stage_out / "build-report.tsv")
    wheels = sorted(stage_out.glob("*.whl"))
    if len(wheels) != 1:
        raise Failure(f"the build left {len(wheels)} wheels instead of one; the build log is {log}")
    staged = wheels[0]
    wheel = wheelfile.read(staged)
    # What the wheel holds, never what the profile guesses: a package built under the default profile (vllm) is
    # not vllm, and its import name is the wheel's own (top_level.txt, else its RECORD).
    packages = list(wheel.top_level) or [wheel.name.replace("-", "_").replace(".", "_")]
    ours = config.owns(profile, wheel.name)
    tree = plan["tree_sha256"]
    record = {
        "commit": src.commit,
        "dirty": src.dirty,
        "tree_sha256": tree,
        "target": profile.name,
        "distribution": wheel.name,
        "package": packages[0],
        "packages": packages,
        "smoke": profile.smoke if ours else "",  # the profile's command is for its own distribution only
        "native": report["native"],
        "builder": built_by.get("image") or "native",
    }
    wheelfile.stamp(staged, record)
    wheel = wheelfile.read(staged)
    if wheel.pure_with_native:
        ui.warn(
            f"{staged.name} is tagged pure ({', '.join(wheel.tags)}) yet carries native libraries "
            f"({', '.join(wheel.natives)}): pip would install it on platforms where they cannot load; make setup.py "
            "declare them (a Distribution whose has_ext_modules() is true, or an extension)"
        )
    digest = wheelfile.sha256(staged)
    finished = _now()
    names = [staged.name, attest.sbom_name(staged.name), attest.provenance_name(staged.name)]
    existing_sums = outdir.check_writable(out_dir, names)
    sbom = attest.sbom(wheel, digest, finished, report["needs"])
    provenance = attest.provenance(
        staged.name,
        digest,
        source={"uri": src.uri, "commit": src.commit, "dirty": src.dirty, "tree_sha256": tree},
        builder=built_by,
        parameters={
            "target": profile.name,
            "native": plan["native"],
            "cmake_args": plan["cmake_args"],
            "isolation": isolated,
            "repair": plan["repair"],
        },
        internal={
            "wheel_cmake": profile.wheel_cmake,
            "wheel_python": profile.wheel_python,
            "generator": report.get("generator"),
            "compiler": report.get("compiler"),
        },
        started=started,
        finished=finished,
        log=str(log),
    )
    side = stage_out / "attest"
    side.mkdir()
    (side / names[1]).write_text(jsonlib.dumps(sbom, indent=1, sort_keys=True) + "\n")
    (side / names[2]).write_text(jsonlib.dumps(provenance, indent=1, sort_keys=True) + "\n")
    sums = {
        names[0]: digest,
        names[1]: wheelfile.sha256(side / names[1]),
        names[2]: wheelfile.sha256(side / names[2]),
    }
    written = outdir.publish(out_dir, [side / names[1], side / names[2], staged], sums, existing_sums)
    if report["ccache"] is not None:
        ui.info(f"ccache: {report['ccache']['hits']} hits, {report['ccache']['misses']} misses")
    ui.ok(f"built {out_dir / staged.name} ({src.commit[:12]}{', dirty' if src.dirty else ''})")
    return {
        **plan,
        "wheel": str(out_dir / staged.name),
        "wheels": [str(out_dir / staged.name)],
        "sha256": digest,
        "sbom": str(written[0]),
        "provenance": str(written[1]),
        "sha256sums": str(written[-1]),
        "version": wheel.version,
        "tags": list(wheel.tags),
        "native_libraries": list(wheel.natives),
        "pure_with_native": wheel.pure_with_native,
        "repaired_from": report.get("repaired", " ").split(" ")[0] or None,
        "ccache": report["ccache"],
        "builder": built_by,
        "dry_run": False,
    }


def _now() -> str:
    return dt.datetime.fromtimestamp(time.time(), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
