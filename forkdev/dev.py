"""invoke dev: a thin image of a local checkout, in seconds."""

from __future__ import annotations

from invoke import task

from . import config, ui
from .engine import Engine
from .gitrepo import Repo
from .proc import Runner
from .ship import Request, ship


@task(
    default=True,
    positional=["path"],
    iterable=["tag"],
    help={
        "path": "the checkout, e.g. ~/vllm (invoke has no optional positionals: always give it)",
        "ref": "a commit of the checkout to ship instead of its working tree",
        "base": "base image (default: the upstream image of the merge-base, else the local nightly)",
        "tag": "an extra tag for the image; repeatable",
        "push": "push every tag to its registry",
        "force": "build even when native sources changed (ships the base's compiled code)",
        "target": "target profile: vllm, sglang, mlc-llm (default: config target)",
        "dry_run": "show the plan; build, tag and push nothing",
        "json": "print one JSON object on stdout (logs stay on stderr)",
    },
)
def dev(c, path, ref=None, base=None, tag=None, push=False, force=False, target=None, dry_run=False, json=False):
    """Thin image = base + one layer of the checkout's changed files (uncommitted work included)."""
    run = Runner(dry_run=config.dry_run(c, dry_run))
    profile = config.target(target or c.config.target)
    repo = Repo.open(path, run)
    engine = Engine.detect(run, c.config.engine.name, c.config.engine.network)
    result = ship(
        c,
        engine,
        run,
        Request(
            repo=repo,
            ref=ref,
            target=profile,
            source=str(repo.path),
            base=base or c.config.dev.base,
            repository=c.config.dev.repository,
            tags=tuple(tag or ()),
            push=push or c.config.dev.push,
            force=force or c.config.dev.force,
        ),
    )
    if json:
        ui.emit_json(result)
    else:
        ui.ok(("would build " if run.dry_run else "") + result["image"])
