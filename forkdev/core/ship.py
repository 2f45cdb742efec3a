"""The thin-image pipeline, from values to an image: plan -> write -> tag/push.

`ship` takes a `Request` (plain values; no invoke context) and returns the result as a dict. Everything that can
be refused is refused before anything is built: tags and repository are validated first, native changes stop
the run after the plan, and `--push` must have somewhere to push to. The secret paths never reach the plan,
and the layer (files, labels) is scanned for every secret value the task knows before anything is loaded,
tagged or pushed, a reused image's included (core/secrets.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from . import base as bases
from . import image, secrets, thin, ui, validate
from . import labels as L
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner
from .registry import Policy, Ref, Registry

if TYPE_CHECKING:
    from . import nativebuild  # the native build's machinery loads where a native change is compiled (cli.py)


@dataclass(frozen=True)
class Request:
    """What one thin image is made of: a checkout or commit, its target and bases, and where it goes."""

    repo: Repo
    ref: str | None  # None: the working tree
    target: Target
    source: str | None  # org.opencontainers.image.source (a URL), or None
    bases: tuple[str, ...]  # candidate base images, best first
    explicit_base: bool  # the user named the base (changes the remedy when it is missing)
    repository: str  # where local-<sha12> tags go
    tags: tuple[str, ...]  # extra tags; pushed with --push
    push: bool
    force: bool
    cache: Path
    registry: Policy
    epoch: int | None = None  # SOURCE_DATE_EPOCH, when set
    primary: str | None = None  # the image's own tag; None: <repository>:local-<sha12>[-dirty-<hash>]
    labels: Mapping[str, str] = field(default_factory=dict)  # more labels (e.g. the nightly's native hash)
    upstream: str = ""  # where the base's commit can be fetched from ("" = the target's upstream)
    # The tags this checkout's recent runs made. A state whose tag is not among them is new here: it is written
    # without first asking the engine whether that tag already holds it (each edit saves that call; a tag that
    # did hold it, made elsewhere, is loaded again, to the same image id). None: always ask.
    made: tuple[str, ...] | None = None
    secret_paths: secrets.Paths = secrets.DEFAULT  # never shipped (config container.secrets, container.secret_paths)
    secret_values: tuple[secrets.Known, ...] = ()  # besides the secrets files' and the environment's
    # `invoke dev --native`: how a native change is compiled (core/nativebuild.py) instead of refused; None: refused
    native: nativebuild.Spec | None = None

    @classmethod
    def layer_on(
        cls,
        base: str,
        *,
        repo: Repo,
        commit: str,
        target: Target,
        image: str,
        repository: str,
        upstream: str,
        source: str | None,
        cache: Path,
        registry: Policy,
        labels: Mapping[str, str],
        secret_paths: secrets.Paths,
        secret_values: tuple[secrets.Known, ...],
    ) -> Request:
        """A thin layer of an upstream `commit` on `base`, a known image of its native state, tagged `image`: what
        nightly and batch make. No other base is tried, nothing is forced, and nothing is pushed here (the caller
        publishes, once, where it decides to)."""
        return cls(
            repo=repo,
            ref=commit,
            target=target,
            source=source,
            upstream=upstream,
            bases=(base,),
            explicit_base=True,
            repository=repository,
            tags=(),
            push=False,
            force=False,
            cache=cache,
            registry=registry,
            primary=image,
            labels=labels,
            secret_paths=secret_paths,
            secret_values=secret_values,
        )


def pushed_refs(req: Request, primary: str) -> list[str]:
    """Exactly what --push pushes: the extra tags, and the primary tag only when its repository names a
    registry (the default `forkdev/...` would mean Docker Hub's namespace of that name: never pushed)."""
    refs = list(req.tags)
    if validate.registry_host(req.repository):
        refs.insert(0, primary)
    return refs


def check(req: Request) -> None:
    """Refuse bad tags, a bad repository and a --push with nowhere to go, before anything is built."""
    validate.repository(req.repository, "dev.repository")
    for tag in req.tags:
        validate.image_ref(tag, "--tag")
    if req.push and not pushed_refs(req, f"{req.repository}:x"):
        raise Failure(
            f"--push has nothing to push: '{req.repository}' names no registry; pass --tag REGISTRY/NAME:TAG or set "
            "dev.repository to REGISTRY/NAME (docker.io/you/name for Docker Hub)"
        )


def ship(engine: Engine, run: Runner, req: Request) -> dict[str, Any]:
    check(req)
    with ui.step("base image"):
        base = bases.resolve(
            engine, run, list(req.bases), explicit=req.explicit_base, cache=req.cache, target=req.target
        )
    with ui.step("changes"):
        plan = thin.plan(req.repo, req.ref, base, req.target, req.epoch, req.upstream, req.secret_paths)
        thin.describe(plan, base)
    native = None
    if plan.native and req.native is not None:
        from . import nativebuild

        with ui.step(f"native: {len(plan.native)} changed native paths"):
            native = nativebuild.build(
                engine,
                run,
                req.native,
                repo=req.repo,
                base=base,
                target=req.target,
                cache=req.cache,
                hidden=req.secret_paths,
            )
        plan = dataclasses.replace(plan, compiled=native.entries, native_env=native.env)
    elif plan.native and not req.force:
        listed = ", ".join(plan.native[:20]) + (" ..." if len(plan.native) > 20 else "")
        raise Failure(
            f"native sources changed since the base's commit {base.revision[:12]} ({listed}); a thin "
            "image would ship stale compiled code: pass --native to compile them, run 'invoke nightly' for a new "
            "base, or pass --force"
        )
    elif plan.native:
        ui.warn(f"--force: shipping despite {len(plan.native)} native changes; compiled code is the base's")

    key = plan.key(base, req.labels)
    suffix = f"-dirty-{plan.diff_hash[:12]}" if plan.dirty else ""
    primary = req.primary or f"{req.repository}:local-{plan.revision[:12]}{suffix}"
    labels = {**thin_labels(plan, base, req.source, key), **req.labels}
    files = plan.files(base, req.target)
    known = secrets.known(req.repo.path, req.secret_paths, req.secret_values)  # a mirror has no secrets files
    shipped = [(e.path, e.data) for e in plan.entries] + [(path, data) for path, _, data in files[len(plan.entries) :]]
    secrets.scan(
        shipped + [(f"label {k}", v.encode("utf-8", "surrogateescape")) for k, v in labels.items()],
        known,
        f"the layer of {primary}",
    )
    existing = engine.inspect_image(run, primary) if req.made is None or primary in req.made else None
    reused = existing is not None and engine.labels(existing).get(L.KEY) == key
    if reused:
        image_id = Engine.image_id(existing)
        ui.ok(f"{primary} already holds this state; reusing it")
    else:
        content = image.Content(
            files=files,
            deleted=plan.deleted + plan.bytecode,
            dirs=[*plan.new_dirs, L.PROOF_DIR],
            labels=labels,
            epoch=plan.epoch,
            created_by=f"forkdev {__version__}: {plan.revision[:12]}{' + uncommitted work' if plan.dirty else ''}",
        )
        with ui.step(f"layer -> {primary}"):
            history = bases.history(engine, run, base, req.cache)
            image_id = image.write(engine, run, base, history, content, primary)
    for extra in req.tags:
        engine.tag(run, primary, extra)
    pushed = pushed_refs(req, primary) if req.push else []
    for ref in pushed:
        publish(engine, run, Registry(Ref.parse(ref).host, req.registry, run), [ref])
    return {
        "image": primary,
        "tags": [primary, *req.tags],
        "pushed": pushed,
        "image_id": image_id or None,
        "revision": plan.revision,
        "dirty": plan.dirty,
        "base": base.ref,
        "base_id": base.id,
        "base_revision": base.revision,
        "reused": reused,
        "files": len(plan.entries),
        "deleted": len(plan.deleted),
        "skipped": plan.skipped,
        "native": native.summary() if native is not None else None,
        "dry_run": run.dry_run,
    }


def thin_labels(plan: thin.Plan, base: bases.Base, source: str | None, key: str) -> dict[str, str]:
    """Our labels on a thin image; all of them follow from the inputs, so the image id is reproducible."""
    labels = {
        L.REVISION: plan.revision,
        L.CREATED: image.rfc3339(plan.epoch),
        L.BASE_NAME: base.ref,
        L.BASE_ID: base.id,
        L.BASE_REVISION: base.revision,
        L.DIRTY: str(plan.dirty).lower(),
        L.KEY: key,
    }
    if source:
        labels[L.SOURCE] = secrets.public_url(source) or source
    if plan.native_env is not None and plan.native_env.get("id"):
        labels[L.NATIVE_ENV] = plan.native_env["id"]
    return labels


def publish(engine: Engine, run: Runner, registry: Registry, refs: list[str]) -> None:
    """The one publish step: the registry is asked first whether it lets us in (a 401 or a registry that is not
    there is one line before any upload), then each ref is pushed within the registry policy's time."""
    if not refs:
        return
    registry.check()
    for ref in refs:
        with ui.step(f"push {ref}"):
            engine.push(run, ref, timeout=registry.policy.timeout)
