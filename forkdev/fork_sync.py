"""invoke fork-sync: merge the upstream into the fork; protected paths keep the fork's version; no work is lost.

The task turns flags and config into checked values and makes one call; the machinery is in forkdev/core/sync.py
(the merge) and forkdev/core/carry.py (moving a checked-out branch with the user's work, crash-safe).
"""

from __future__ import annotations

from .core import config, ui, validate
from .core.errors import Failure
from .core.proc import Runner
from .core.tasking import runner, task, toggle


@task(
    iterable=["protect", "strategy"],
    help={
        "repo": "the fork's checkout (default: config fork_sync.repo, '.')",
        "upstream": "remote name or URL/path of the upstream (default: the fork's remote config upstream.remote, "
        "'upstream', when it has one, else upstream.url or the target's)",
        "branch": "the upstream branch (default: config upstream.branch, 'main')",
        "into": "the fork's branch to merge into (default: the current branch)",
        "protect": "a path that keeps the fork's version whatever upstream did; repeatable (adds to config)",
        "strategy": "PATH_OR_GLOB=ours|theirs|union for conflicts there; repeatable (adds to config)",
        "push": "push the branch when it is ahead of its remote",
        "no_push": "do not push, even when config fork_sync.push says so",
        "autostash": "carry uncommitted work (staged, unstaged, untracked) across the merge",
        "no_autostash": "refuse a dirty tree, even when config fork_sync.autostash says otherwise",
        "dry_run": "fetch and compute the merge; move and push nothing",
        "json": "print one JSON object on stdout",
    },
)
def fork_sync(
    c,
    repo=None,
    upstream=None,
    branch=None,
    into=None,
    protect=None,
    strategy=None,
    push=False,
    no_push=False,
    autostash=False,
    no_autostash=False,
    dry_run=False,
    json=False,
    quiet=False,
):
    """Merge upstream into the fork; protected paths keep the fork's version; no work is ever lost."""
    run = runner(c, dry_run, quiet)
    settings = config.load(c, None, upstream)  # fork_sync.protect and the form of fork_sync.strategies checked there
    cfg = settings.fork_sync
    pattern = "pass a path or glob of the repository"
    from .core.sync import Request, parse_strategies, sync  # the machinery, loaded when the task runs (cli.py)

    strategies = {}
    for source, items in (("config fork_sync.strategies", cfg.strategies), ("--strategy", list(strategy or []))):
        for path, how in parse_strategies(items).items():
            strategies[validate.plain(path, f"{source} path", pattern)] = how
    protected = [*cfg.protect, *(validate.plain(p, "--protect", pattern) for p in protect or [])]
    remedy = "pass the path of the fork's checkout"
    checkout = validate.plain(repo or cfg.repo, _named("--repo", repo, cfg.repo), remedy)
    request = Request(
        repo=checkout,
        upstream=settings.upstream if upstream else default_upstream(settings, checkout, run),
        branch=validate.git_ref(
            branch or settings.branch, _named("--branch", branch, settings.branch, "upstream.branch")
        ),
        into=validate.git_ref(into or cfg.into, _named("--into", into, cfg.into)) if into or cfg.into else "",
        protect=tuple(protected),
        strategies=strategies,
        push=toggle("push", push, no_push, cfg.push),
        autostash=toggle("autostash", autostash, no_autostash, cfg.autostash),
    )
    try:
        out = sync(run, request)
    except KeyboardInterrupt:
        raise Failure(
            "interrupted; your work is where it was (if the branch had already moved, it moved whole, "
            "with your changes on top)",
            code=130,
        ) from None
    if json:
        ui.emit_json(out.__dict__ | {"dry_run": run.dry_run})
    if out.conflicts:
        raise Failure(
            f"merging upstream into '{out.branch}' conflicts in {', '.join(out.conflicts)}; nothing was "
            "changed: resolve by hand (git merge) or add --strategy PATH=ours|theirs|union"
        )
    if out.work_conflicts:
        raise Failure(
            f"your uncommitted changes to {', '.join(out.work_conflicts)} conflict with the merge; nothing was "
            f"changed and your work is where it was, in {out.repo}: commit it and sync again (the conflict "
            "then shows as one with upstream), or sync after you are done with it"
        )
    if not out.up_to_date:
        ui.ok(
            ("would merge" if run.dry_run else "merged")
            + f" upstream {out.upstream[:12]} into {out.branch}"
            + ("" if run.dry_run else f": {out.before[:12]} -> {out.after[:12]}")
        )


def default_upstream(settings: config.Settings, checkout: str, run: Runner) -> str:
    """The fork's remote `upstream.remote` when it has one, else upstream.url, else the target's upstream URL."""
    named = config.named("upstream.remote", settings.remote)
    remote = validate.plain(settings.remote, named, "name a remote of the fork")
    has = run(["git", "-C", checkout, "config", "--get", f"remote.{remote}.url"], mutates=False, check=False)
    if has.ok:
        return remote
    return settings.upstream


def _named(flag: str, given: object, configured: object, key: str = "") -> str:
    """How an error names a value: by its flag when it came from one, else as config.named names its key."""
    return flag if given else config.named(key or "fork_sync." + flag.removeprefix("--"), configured)
