"""invoke build SHA: the thin image of an upstream commit, from a cached mirror of the upstream."""

from __future__ import annotations

from .core import cache as store
from .core import config, ui, validate
from .core.errors import Failure
from .core.gitrepo import mirror_unless_dry
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
    settings = config.load(c, target, upstream)
    url = settings.upstream
    path = store.mirror(settings.cache_dir(run), url)
    repo = mirror_unless_dry(path, url, run)
    commit = repo.rev(f"{sha}^{{commit}}") if repo is not None else None
    if commit is None and run.dry_run:  # the plan needs the commit's files, which only a fetch would bring
        why = "no mirror of it yet" if repo is None else f"its mirror does not have '{sha}' yet"
        ui.info(f"dry run: {why}; a real run fetches {url} into {path}, then makes the thin image of {sha}")
        if json:
            ui.emit_json({"dry_run": True, "image": None, "commit": None, "reason": why})
        return
    if commit is None:
        raise Failure(f"unknown commit '{sha}' in upstream {url} (just fetched); check the sha or pass --upstream")
    thin_image(
        settings,
        run,
        repo,
        commit,
        source=url if "://" in url else None,
        base=base,
        tags=tag,
        push=push,
        no_push=no_push,
        force=force,
        no_force=no_force,
        json=json,
    )
