"""invoke dev: a thin image of a local checkout, in seconds."""

from __future__ import annotations

from .core import config
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.ship import ship_task
from .core.tasking import task


@task(
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
    ship_task(c, run, repo, ref, profile, str(repo.path), base=base, tags=tag, push=push, force=force, json=json)
