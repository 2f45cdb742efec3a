"""What `invoke wheel` does once its flags and config are resolved: the recipe checked, the build's environment,
the scratch copy built in the wheel image (or on the host), and the wheel stamped and landed with its records.

Plan first: the target's recipe is checked against the checkout, --out is checked, the source is described, the
image is named. Then the working tree is copied to a scratch directory, built there (the checkout is only read),
the wheel is stamped with its build record, and only then do complete files move into --out.
"""

from __future__ import annotations

import json as jsonlib
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import assets, attest, builder, config, outdir, owners, source, ui, validate, wheelfile
from . import container as ctr
from .errors import Failure
from .fullbuild import version_of
from .gitrepo import Repo
from .image import rfc3339
from .proc import Runner

MARK = "forkdev-wheel: error: "  # how the entrypoint's own failure line starts


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


def image_ca(run: Runner, given: str | None, refused: bool, configured: str, isolated: bool) -> Path | None:
    """The CA bundle mounted (read-only, never copied: it lands in no layer and no wheel) for the in-image pip:
    --ca-cert or config wheel.ca_cert, else, when the build reaches the package index (--isolation), the one the
    host's pip uses, said once; --no-ca-cert keeps any out."""
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


def build_env(repo: Repo, src: source.Source, profile, isolated: bool, cfg: config.Wheel) -> dict[str, str]:
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
    if job.run.dry_run:
        return
    source.export(job.repo, job.src, job.stage_src)
    job.stage_out.mkdir()
    job.plan["tree_sha256"] = job.src.tree_sha256(job.stage_src)


def build_in_image(job: Job, ca: Path | None, isolated: bool) -> dict:
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
        owners.sweep(engine, run, settings.cache_dir(run))  # the build containers of a wheel run that was killed
        own = owners.claim(settings.cache_dir(run), engine, run)
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


def build_on_host(job: Job) -> dict:
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


def finish(stage_src, stage_out, out_dir, profile, src, built_by, plan, started, log, isolated) -> dict:
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
    finished = rfc3339(time.time())
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
