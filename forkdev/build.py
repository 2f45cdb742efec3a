"""invoke build SHA: the thin image of an upstream commit, from a cached mirror of the upstream."""

from __future__ import annotations

from .core import config
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.ship import ship_task
from .core.tasking import task


def mirror(c, run: Runner, url: str) -> Repo:
    """A bare mirror of `url` under the cache dir, created or refreshed. A failed fetch is an error."""
    path = config.cache_path(c, "mirrors", url)
    if not path.exists():
        res = run(["git", "clone", "--mirror", "--quiet", url, str(path)], check=False)
    else:
        res = run(["git", "-C", str(path), "fetch", "--prune", "--quiet", "origin"], check=False)
    if not res.ok and not res.dry:
        raise Failure(f"cannot fetch upstream '{url}' ({res.reason}); check upstream.url or your network")
    if not path.exists():
        raise Failure(f"dry run stops here: the mirror of '{url}' does not exist yet")
    return Repo(path, run)


@task(
    iterable=["tag"],
    help={
        "sha": "the upstream commit (full or abbreviated sha, or a branch or tag name)",
        "base": "base image (default: the upstream image of the commit's merge-base, else the local nightly)",
        "tag": "an extra tag; repeatable",
        "push": "push every tag to its registry",
        "force": "build even when native sources changed",
        "target": "target profile (default: config target)",
        "upstream": "upstream URL or path (default: config upstream.url, else the target's)",
        "dry_run": "show the plan; build nothing",
        "json": "print one JSON object on stdout",
    },
)
def build(c, sha, base=None, tag=None, push=False, force=False, target=None, upstream=None, dry_run=False, json=False):
    """Thin image of an upstream commit (fetched into a cached mirror)."""
    run = Runner(dry_run=config.dry_run(c, dry_run))
    profile = config.target(target or c.config.target)
    url = upstream or c.config.upstream.url or profile.upstream
    repo = mirror(c, run, url)
    commit = repo.rev(f"{sha}^{{commit}}")
    if commit is None:
        raise Failure(f"unknown commit '{sha}' in upstream {url} (just fetched); check the sha or pass --upstream")
    ship_task(c, run, repo, commit, profile, url, base=base, tags=tag, push=push, force=force, json=json)
