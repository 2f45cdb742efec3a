"""invoke build SHA: the thin image of an upstream commit, from a cached mirror of the upstream."""

from __future__ import annotations

from .core import config, validate
from .core.errors import Failure
from .core.gitrepo import mirror
from .core.tasking import runner, task
from .dev import HELP, thin_image


@task(
    iterable=["tag"],
    help={
        "sha": "the upstream commit (full or abbreviated sha, or a branch or tag name)",
        "upstream": "upstream URL or path (default: config upstream.url, else the target's)",
        **HELP,
    },
)
def build(
    c,
    sha,
    upstream=None,
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
):
    """Thin image of an upstream commit (fetched into a cached mirror)."""
    run = runner(c, dry_run, quiet)
    validate.git_ref(sha, "SHA")
    url = validate.source(upstream or c.config.upstream.url or config.of(c, target).upstream, "--upstream")
    repo = mirror(config.cache_path(config.cache_dir(c), "mirrors", url), url, run)
    commit = repo.rev(f"{sha}^{{commit}}")
    if commit is None:
        raise Failure(f"unknown commit '{sha}' in upstream {url} (just fetched); check the sha or pass --upstream")
    thin_image(
        c,
        run,
        repo,
        commit,
        target=target,
        source=url if "://" in url else None,
        base=base,
        tags=tag,
        push=push,
        no_push=no_push,
        force=force,
        no_force=no_force,
        json=json,
    )
