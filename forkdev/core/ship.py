"""From a repository state to a tagged thin image: what `invoke dev` and `invoke build` share."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from . import base as bases
from . import thin, ui
from .config import Target, cache_dir
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner


@dataclass(frozen=True)
class Request:
    repo: Repo
    ref: str | None  # None: the working tree
    target: Target
    source: str  # org.opencontainers.image.source
    base: str  # "" = the target's defaults
    repository: str
    tags: tuple[str, ...]
    push: bool
    force: bool


def ship(c: Any, engine: Engine, run: Runner, req: Request) -> dict[str, Any]:
    upstream_url = c.config.upstream.url or req.target.upstream
    refs = (
        [req.base]
        if req.base
        else bases.candidates(req.target, req.repo, req.ref, upstream_url, c.config.upstream.branch)
    )
    with ui.step("base image"):
        base = bases.resolve(engine, run, refs, explicit=bool(req.base), cache=cache_dir(c), target=req.target)
    with ui.step("changes"):
        plan = thin.plan(req.repo, req.ref, base, req.target)
        thin.describe(plan, base)
    if plan.native and not req.force:
        listed = ", ".join(plan.native[:20]) + (" ..." if len(plan.native) > 20 else "")
        raise Failure(
            f"native sources changed since the base's commit {base.revision[:12]} ({listed}); a thin "
            "image would ship stale compiled code: run 'invoke nightly' for a new base, or pass --force"
        )
    if plan.native:
        ui.warn(f"--force: shipping despite {len(plan.native)} native changes; compiled code is the base's")

    key = plan.key(base)
    suffix = f"-dirty-{plan.diff_hash[:12]}" if plan.dirty else ""
    primary = f"{req.repository.format(target=req.target.name)}:local-{plan.revision[:12]}{suffix}"
    existing = engine.inspect_image(run, primary)
    reused = existing is not None and engine.labels(existing).get(thin.KEY_LABEL) == key
    if reused:
        image_id = existing["Id"]
        ui.ok(f"{primary} already holds this state; reusing it")
    else:
        labels = {
            bases.REVISION_LABELS[0]: plan.revision,
            "org.opencontainers.image.source": req.source,
            "org.opencontainers.image.created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "org.opencontainers.image.base.name": base.ref,
            "org.opencontainers.image.base.digest": base.digest,
            thin.BASE_REVISION_LABEL: base.revision,
            "dev.forkdev.dirty": str(plan.dirty).lower(),
            thin.KEY_LABEL: key,
        }
        with ui.step(f"layer -> {primary}"):
            image_id = thin.commit_layer(engine, run, base, plan, plan.proof(base, req.target), primary, labels)
    for extra in req.tags:
        engine.tag(run, primary, extra)
    if req.push:
        for ref in (primary, *req.tags):
            with ui.step(f"push {ref}"):
                engine.push(run, ref)
    return {
        "image": primary,
        "tags": [primary, *req.tags],
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
        "dry_run": run.dry_run,
    }


def ship_task(
    c: Any,
    run: Runner,
    repo: Repo,
    ref: str | None,
    target: Target,
    source: str,
    *,
    base: str | None,
    tags: list[str] | None,
    push: bool,
    force: bool,
    json: bool,
) -> None:
    """What `invoke dev` and `invoke build` do once they know the repository state: flags over config, then
    the image, then one JSON object on stdout or a line on stderr."""
    engine = Engine.detect(run, c.config.engine.name, c.config.engine.network)
    request = Request(
        repo=repo,
        ref=ref,
        target=target,
        source=source,
        base=base or c.config.dev.base,
        repository=c.config.dev.repository,
        tags=tuple(tags or ()),
        push=push or c.config.dev.push,
        force=force or c.config.dev.force,
    )
    result = ship(c, engine, run, request)
    if json:
        ui.emit_json(result)
    else:
        ui.ok(("would build " if run.dry_run else "") + result["image"])
