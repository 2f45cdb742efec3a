"""invoke overlay: copy files of the checkout into an overlay directory, transformed, for a build to use.

Definitions, one a line (`#` comments and blank lines allowed):

    src [-> dest] [:: transform=name[:arg]]

`src` is a file or directory of the repository, `dest` a path inside the overlay directory (default: src).
Everything is parsed and transformed before anything is written; the overlay directory is then replaced as a
whole. The checkout is only read.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core import cache as store
from .core import config
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.tasking import runner, setting, task

# The machinery (core.overlaying, paths, overlaydir, lock) is imported when the task runs: see cli.py.


def resolve_dest(settings: config.Settings, repo: Repo, flag: str | None) -> Path:
    """The overlay directory: --dest, else config overlay.dest, else one in the cache (overlay_dir's rules)."""
    from .core.overlaydir import overlay_dir

    value = setting(flag, settings.overlay.dest, "--dest", "overlay.dest", optional=True)
    return overlay_dir(
        value or str(store.overlay(settings.cache, repo.path)),
        "--dest" if flag else "overlay.dest" if value else "the overlay directory",
        checkout=repo.path,
        home=Path(os.path.expanduser("~")),
        ignored=repo.ignores,
    )


@task(
    help={
        "repo": "the checkout (default: config overlay.repo, '.')",
        "definitions": "the definitions file (default: config overlay.definitions, relative to the repo)",
        "dest": "the overlay directory (default: config overlay.dest, else one under the cache dir); "
        "it is replaced whole, so it must not exist yet or be one that invoke overlay made",
        "dry_run": "parse, transform and list; write nothing",
    },
)
def overlay(c, repo=None, definitions=None, dest=None, dry_run=False, quiet=False):
    """Copy the overlay definitions' files, transformed, into the overlay directory (the checkout is only read)."""
    from .core import lock, ui
    from .core.overlaydir import write_tree
    from .core.overlaying import build, parse
    from .core.paths import checkout_path, os_errors, shown

    run = runner(c, dry_run, quiet)
    with os_errors("make the overlay"):
        settings = config.load(c)
        r = Repo.open(setting(repo, settings.overlay.repo, "--repo", "overlay.repo"), run)
        given = setting(definitions, settings.overlay.definitions, "--definitions", "overlay.definitions")
        defs_path = checkout_path(r.path, given, "--definitions" if definitions else "overlay.definitions")
        if not defs_path.is_file():
            raise Failure(f"no overlay definitions at '{shown(defs_path)}'; create it or pass --definitions FILE")
        defs = parse(defs_path.read_bytes(), given)
        dest_dir = resolve_dest(settings, r, dest)
        files = build(r.path, defs, dest_dir, settings.secret_paths)
        for rel in sorted(files):
            ui.info(f"  {shown(rel)}")
        if run.dry_run:
            ui.ok(f"would write {len(files)} files from {len(defs)} definitions to {dest_dir}")
            return
        with lock.exclusive(store.lock(settings.cache_dir(run), f"overlay {dest_dir}"), f"overlay into {dest_dir}"):
            write_tree(dest_dir, files)
    ui.ok(f"{len(files)} files from {len(defs)} definitions in {dest_dir}")
