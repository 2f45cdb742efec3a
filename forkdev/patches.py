"""invoke patches: apply the fork's ordered .diff patches, all or nothing.

The registry is the fork's existing format, read as it is:

    {"patches": [{"name": "...", "diff": "0001-x.diff", "skip_in_overlay": false,
                  "fallback": {"type": "regex_replace", "file": "...", "pattern": "...", "replacement": "..."}}]}

Every patch is first applied, in order, to a staging copy of the files the patches touch; the target is written
only when all of them applied (each file replaced by a rename), so a failure leaves it as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core import cache as store
from .core import config
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.tasking import runner, setting, task

# The machinery (core.patching, paths, overlaydir) is imported when the task runs: see cli.py.


def resolve_into(settings: config.Settings, repo: Repo, into: str, what: str, run: Runner) -> tuple[Path, bool]:
    """(directory, overlay?) for --into: worktree (default), overlay, checkout, or a directory."""
    from .core import ui
    from .core.overlaydir import overlay_dir
    from .core.paths import shown

    if into == "checkout":
        return repo.path, False
    if into == "overlay":  # the overlay directory's own rules: one that invoke overlay made
        value = setting(None, settings.overlay.dest, "", "overlay.dest", optional=True)
        path = overlay_dir(
            value or str(store.overlay(settings.cache, repo.path)),
            "overlay.dest" if value else "the overlay directory",
            checkout=repo.path,
            home=Path(os.path.expanduser("~")),
            ignored=repo.ignores,
            must_exist=True,
        )
        return path, True
    if into == "worktree" and run.dry_run:
        ui.info("--check: checking against the checkout's files (a worktree of HEAD is made only to apply)")
        return repo.path, False
    if into == "worktree":
        # Ours, in the cache: removed and made again. --force re-adds it where a run left it registered but gone;
        # no `worktree prune`, which would forget the user's own worktrees on a disk not mounted now.
        path = store.worktree(settings.cache_dir(run), repo.path).absolute()
        if path.exists():
            repo.git("worktree", "remove", "--force", "--", str(path), mutates=True, check=False)
        repo.git("worktree", "add", "--quiet", "--force", "--detach", "--", str(path), "HEAD", mutates=True)
        return path, False
    path = Path(os.path.realpath(os.path.expanduser(into)))
    if not path.is_dir():
        raise Failure(f"{what} '{shown(into)}' is not a directory; use worktree, overlay, checkout or a directory")
    return path, False


@task(
    help={
        "repo": "the checkout (default: config patches.repo, '.')",
        "registry": "the registry JSON (default: config patches.registry, relative to the repo)",
        "into": "where to apply: worktree (a fresh worktree of HEAD, the default), overlay (one that invoke overlay "
        "made), checkout, or a directory",
        "check": "report what would happen; change nothing (the same as --dry-run)",
        "reverse": "revert the patches, last first",
        "json": "print one JSON object on stdout",
    },
)
def patches(c, repo=None, registry=None, into=None, check=False, reverse=False, dry_run=False, json=False, quiet=False):
    """Apply the fork's ordered .diff patches, all or nothing; any failure exits non-zero."""
    from .core import ui
    from .core.overlaydir import MARKER, record
    from .core.patching import Stage, apply_all, load
    from .core.paths import checkout_path, os_errors, replace_files

    run = runner(c, check or dry_run, quiet)  # --check is `git apply`'s word; --dry-run every task's
    with os_errors("apply the patches"):
        settings = config.load(c)
        r = Repo.open(setting(repo, settings.patches.repo, "--repo", "patches.repo"), run)
        given = setting(registry, settings.patches.registry, "--registry", "patches.registry")
        found = load(checkout_path(r.path, given, "--registry" if registry else "patches.registry"))
        where = setting(into, settings.patches.into, "--into", "patches.into")
        target, in_overlay = resolve_into(settings, r, where, "--into" if into else "patches.into", run)
        chosen = [p for p in found if not (in_overlay and p.skip_in_overlay)]
        if in_overlay and (
            marker := next((p.name for p in chosen if MARKER in {q.split("/")[0] for q in p.paths}), None)
        ):
            raise Failure(f"patch '{marker}' touches the overlay's own marker {MARKER}; leave it out of the patch")
        if run.dry_run and not target.exists():
            raise Failure(f"dry run stops here: {target} does not exist yet")
        with Stage(target, set().union(*(p.paths for p in chosen)), run) as stage:
            report = apply_all(chosen, stage, reverse)
            changes = stage.changes()
        failed = [name for name, status, _ in report if status == "failed"]
        for name, status, detail in report:
            lines = "".join(f"\n    {line}" for line in detail.splitlines())
            (ui.warn if status == "failed" else ui.info)(f"{status:>20}  {name}{lines}")
        skipped = [p.name for p in found if p not in chosen]
        for name in skipped:
            ui.info(f"{'skipped in overlay':>20}  {name}")
        if json:
            ui.emit_json(
                {
                    "target": str(target),
                    "patches": [{"name": n, "status": s} for n, s, _ in report],
                    "skipped": skipped,
                    "changed": sorted(changes),
                    "check": run.dry_run,
                }
            )
        if failed:
            raise Failure(
                f"{len(failed)} of {len(report)} patches do not apply ({', '.join(failed)}); nothing was "
                f"written to {target}: refresh them against the new upstream"
            )
        if not run.dry_run:
            replace_files(target, changes)
            if in_overlay:
                record(target, changes)  # what patches wrote is the tool's: the next overlay run may replace it
    ui.ok(("would change" if run.dry_run else "changed") + f" {len(changes)} files in {target}")
