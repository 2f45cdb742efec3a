"""invoke dev: a thin image of a local checkout, in well under a second."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING, Any

from .core import base as bases
from .core import cache as store
from .core import config, ship, ui, validate
from .core.errors import Failure
from .core.gitrepo import Repo, with_untracked
from .core.native import build_args as native_build_args
from .core.proc import Runner, concurrently
from .core.tasking import runner, task, toggle

if TYPE_CHECKING:
    from .core import nativebuild

HELP = {
    "base": "base image (default: the upstream image of the merge-base, else the target's nightly)",
    "tag": "an extra tag for the image; repeatable; pushed with --push",
    "push": "push the --tag references, and the primary tag when dev.repository names a registry",
    "no_push": "do not push, whatever config dev.push says",
    "force": "build even when native sources changed (ships the base's compiled code)",
    "no_force": "refuse native changes, whatever config dev.force says",
    "target": "target profile: vllm, sglang, mlc-llm (default: config target)",
}


def thin_image(
    settings: config.Settings,
    run: Runner,
    repo: Repo,
    ref: str | None,
    *,
    source: str | None,
    base: str | None,
    tags: list[str] | None,
    push: bool,
    no_push: bool,
    force: bool,
    no_force: bool,
    json: bool,
    native: nativebuild.Spec | None = None,
) -> dict[str, Any]:
    """What `invoke dev` and `invoke build` share once they know the repository state: flags over the settings,
    the image, then the result: its reference on stdout (or one JSON object), logs on stderr."""
    profile, upstream = settings.target, settings.upstream
    explicit = base or settings.dev.base
    if explicit:
        validate.image_ref(explicit, "--base")
    request = ship.Request(
        repo=repo,
        ref=ref,
        target=profile,
        source=source,
        upstream=upstream,
        bases=(explicit,) if explicit else (),
        explicit_base=bool(explicit),
        repository=settings.dev.repository,
        tags=tuple(tags or ()),
        push=toggle("push", push, no_push, settings.dev.push),
        force=toggle("force", force, no_force, settings.dev.force),
        cache=settings.cache_dir(run),
        registry=settings.registry,
        epoch=config.epoch(),
        secret_paths=settings.secret_paths,
        secret_values=settings.secret_values,
        native=native,
    )
    ship.check(request)  # bad tags and pushes are refused before the engine is even asked
    last = store.dev_record(request.cache, repo.path)
    if native is not None:  # what a failed compile leaves standing
        recorded = store.read_json(last).get("image")
        kept = f"'{recorded}' stays the last good image" if isinstance(recorded, str) else "no image was made"
        request = dataclasses.replace(request, native=dataclasses.replace(native, kept=kept))
    if explicit:
        engine, found = settings.engine(run), [explicit]
    else:  # the default bases need git only: asked while the engine answers
        nightly, branch = settings.nightly.repository, settings.branch
        engine, found = concurrently(
            lambda: settings.engine(run),
            lambda: bases.candidates(profile, nightly, repo, ref, upstream, branch),
        )
    made = _made(store.read_json(last)) if ref is None else None
    request = dataclasses.replace(request, bases=tuple(found), made=made)
    result = ship.ship(engine, run, request)
    if not run.dry_run and ref is None:  # `invoke run` starts the last image of this checkout by default
        image = result["image"]
        try:  # a record for later runs: the image is made whether or not it can be kept
            store.write_json(last, {"image": image, "made": [*(t for t in made or () if t != image), image][-MADE:]})
        except Failure as exc:
            ui.warn(f"{exc}; the next run will not know this image was made here")
    if json:
        ui.emit_json(result)
    else:
        ui.result(result["image"])
    return result


MADE = 16  # the tags of a checkout's recent states that `dev` remembers (a return to one of them is reused)


def _made(recorded: dict[str, Any]) -> tuple[str, ...]:
    tags = recorded.get("made")
    tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    last = recorded.get("image")
    return (*tags, last) if isinstance(last, str) and last not in tags else tuple(tags)


def native_spec(
    settings: config.Settings, on: bool, off: bool, ref: str | None, force: bool
) -> nativebuild.Spec | None:
    """How a native change is compiled (--native, or config dev.native: build), or None when it is refused."""
    if not toggle("native", on, off, settings.dev.native):
        return None  # before the import: the edit loop does not pay 13 ms for machinery it does not use
    from .core import nativebuild

    profile = settings.target
    if force:
        raise Failure(
            "--native and --force contradict each other: --native compiles native changes, --force ships "
            "them uncompiled; pass one of them"
        )
    if ref is not None:
        raise Failure(f"--native builds the working tree, not --ref {ref}; check {ref} out and run it there")
    name = profile.name
    if not profile.native_build or not profile.native_outputs:
        raise Failure(
            f"target {name} says nothing of how its native part is built; set targets.{name}.native_build (the "
            f"command, e.g. [python3, setup.py, build_ext, --inplace]) and native_outputs (e.g. [pkg/**/*.so])"
        )
    configured = settings.dev.native_image or profile.native_image
    stage, wheel_args = "", None
    if configured:
        image = validate.image_ref(configured, "dev.native_image")
    elif profile.native_stage:  # built at the base's commit (core/nativebuild.stage_image)
        image, stage = "", validate.plain(profile.native_stage, f"targets.{name}.native_stage", "fix invoke.yaml")
    else:
        image, wheel_args = config.wheel_image(settings.wheel)
    jobs = settings.dev.native_jobs
    shaping, parallel = native_build_args(profile, settings.native.build_args, settings.native.cuda_arch, False)
    checked = {k: validate.plain(v, f"build arg {k}", "fix it") for k, v in {**shaping, **parallel}.items()}
    return nativebuild.Spec(
        image=image,
        wheel_args=wheel_args,
        command=(
            validate.plain(profile.native_build[0], f"targets.{name}.native_build's program", "fix invoke.yaml"),
            *(
                validate.argument(a, f"targets.{name}.native_build", "fix invoke.yaml")
                for a in profile.native_build[1:]
            ),
        ),
        rebuild=tuple(
            validate.argument(a, f"targets.{name}.native_rebuild", "fix invoke.yaml") for a in profile.native_rebuild
        ),
        outputs=nativebuild.check_globs(profile.native_outputs, f"targets.{name}.native_outputs"),
        configure=profile.native_configure,
        jobs=jobs if jobs > 0 else os.cpu_count() or 1,
        env={k.upper(): checked[k] for k in shaping},
        stage=stage,
        stage_args=checked,
        stage_repository=settings.dev.repository,
    )


def explanation(repo: Repo, profile: config.Target, against: str, ref: str | None) -> dict[str, Any]:
    """Each path `ref` (else the working tree) changed since `against`, native or shipped, and the profile rule
    that decided; git only: no engine, no build."""
    changes = repo.diff(against, ref) if ref is not None else with_untracked(repo.diff(against, None), repo.untracked())
    paths = []
    for change in changes:
        native, rule, why = profile.classify(change.path)
        paths.append({"path": change.path, "native": native, "rule": rule, "why": why})
    return {
        "target": profile.name,
        "checked_against": profile.checked_against,
        "against": against,
        "paths": paths,
    }


def explain_base(repo: Repo, settings: config.Settings, ref: str | None) -> tuple[str, str]:
    """The commit `invoke dev` diffs against, as git alone can tell it: the merge-base with the upstream's branch
    (what the upstream's image and a nightly of that commit are built from), else HEAD; and how it was found."""
    found = bases.merge_base(repo, ref, settings.upstream, settings.branch)
    if found:
        return found[0], f"the merge-base with {found[1]}"
    head = repo.resolve(ref or "HEAD", "--ref")
    return head, f"{ref or 'HEAD'}: no upstream branch here, so a base built from an older commit shows more"


def source_url(repo: Repo) -> str | None:
    """The checkout's origin as an image source label, when it is a URL (a local path says nothing elsewhere)."""
    url = repo.url("origin")
    return url if url and re.match(r"^(https?|ssh|git)://|^[\w.-]+@[\w.-]+:", url) else None


@task(
    positional=["repo"],
    iterable=["tag"],
    help={
        "repo": "the checkout, e.g. ~/vllm (positional, or --repo)",
        "ref": "a commit of the checkout to ship instead of its working tree",
        "explain": "list each path changed since the base's commit (the merge-base with upstream) as native or "
        "shipped and why; builds nothing",
        "native": "compile native changes incrementally in the build environment and ship the compiled files that "
        "changed (config dev.native: build)",
        "no_native": "refuse native changes, whatever config dev.native says",
        **HELP,
    },
)
def dev(
    c,
    repo,
    ref=None,
    base=None,
    tag=None,
    push=False,
    no_push=False,
    force=False,
    no_force=False,
    target=None,
    dry_run=False,
    json=False,
    quiet=False,
    explain=False,
    native=False,
    no_native=False,
):
    """Thin image = base + one layer of the checkout's changed files (uncommitted work included)."""
    run = runner(c, dry_run, quiet)
    checkout = Repo.open(validate.plain(repo, "the checkout path"), run)
    if ref is not None:
        validate.git_ref(ref, "--ref")
    if explain:
        settings = config.load(c, target)
        profile = settings.target
        against, how = explain_base(checkout, settings, ref)
        report = {**explanation(checkout, profile, against, ref), "against_is": how}
        if json:
            ui.emit_json(report)
            return
        ui.info(f"target {profile.name}, layout checked against {profile.checked_against or 'no upstream commit'}")
        ui.info(f"changes since {against[:12]} ({how})")
        for p in report["paths"]:
            ui.result(f"{'native ' if p['native'] else 'shipped'} {p['path']}  ({p['rule'] or '-'}: {p['why']})")
        return
    settings = config.load(c, target)
    build_native = native_spec(settings, native, no_native, ref, toggle("force", force, no_force, settings.dev.force))
    thin_image(
        settings,
        run,
        checkout,
        ref,
        native=build_native,
        source=source_url(checkout),
        base=base,
        tags=tag,
        push=push,
        no_push=no_push,
        force=force,
        no_force=no_force,
        json=json,
    )
