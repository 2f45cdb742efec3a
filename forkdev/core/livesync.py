"""Live sync: keep a running container in step with the checkout. Each saved change of a shipped file (edit, new
file, deletion) is copied in (a tar through `cp -`) or removed, within a fraction of a second; ignored files
never travel, native sources are refused as `invoke dev` refuses them, and a restart pattern restarts the server.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time

from . import ui
from .base import Location
from .config import Target
from .engine import Engine
from .gitrepo import Repo
from .proc import Runner

# Kills the processes whose command line holds $1, but PID 1 (the prologue that restarts them) and itself.
RESTART = (
    'pat=$1; for d in /proc/[0-9]*; do pid=${d#/proc/}; [ "$pid" = 1 ] && continue; [ "$pid" = $$ ] && continue; '
    'cmd=$(tr "\\000" " " < "$d/cmdline" 2>/dev/null) || continue; '
    'case "$cmd" in *"$pat"*) kill "$pid" 2>/dev/null || :;; esac; done'
)


def changed_paths(repo: Repo, raw: set[str]) -> list[str]:
    """Repository paths of changed files, without .git and what git ignores."""
    rel = sorted({os.path.relpath(p, repo.path) for p in raw})
    rel = [p for p in rel if not p.startswith(("..", ".git/")) and p != ".git"]
    if not rel:
        return []
    res = repo.git("check-ignore", "--stdin", "-z", "--no-index", input="\0".join(rel).encode(), check=False)
    ignored = set(res.stdout.decode("utf-8", "surrogateescape").split("\0"))
    return [p for p in rel if p not in ignored]


def layer(repo: Repo, paths: list[str], location: Location, target: Target) -> tuple[bytes, list[str], list[str]]:
    """(tar of the present files at their image paths, image paths to delete, paths with no place in the image)."""
    buf = io.BytesIO()
    deleted, skipped = [], []
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            inside = location.image_path(rel, target.package_path)
            if inside is None:
                skipped.append(rel)
                continue
            full = repo.path / rel
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                deleted.append(inside)
                continue
            info = tarfile.TarInfo(inside.lstrip("/"))
            info.uid = info.gid = 0
            info.mtime = now  # newer than any bytecode of the old source: Python recompiles it
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(full), 0o777
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                data = full.read_bytes()
                info.size, info.mode = len(data), 0o755 if st.st_mode & 0o111 else 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), deleted, skipped


def sync_once(
    engine: Engine,
    run: Runner,
    repo: Repo,
    name: str,
    location: Location,
    target: Target,
    raw: set[str],
    restart: str | None,
) -> int:
    """Bring one batch of changes into the container; returns how many paths it synced."""
    start = time.monotonic()
    paths = changed_paths(repo, raw)
    native = [p for p in paths if target.is_native(p)]
    if native:
        ui.warn(f"not synced: native sources changed ({', '.join(native[:10])}); rebuild with 'invoke nightly'")
    paths = [p for p in paths if not target.is_native(p)]
    if not paths:
        return 0
    data, deleted, skipped = layer(repo, paths, location, target)
    if len(paths) > len(deleted) + len(skipped):
        run(engine.cmd("cp", "-", f"{name}:/"), input=data)
    if deleted:
        run(engine.cmd("exec", name, "rm", "-f", "--", *deleted))
    if restart:
        run(engine.cmd("exec", name, "sh", "-c", RESTART, "forkdev-restart", restart))
    synced = len(paths) - len(skipped)
    ui.info(
        f"synced {synced} path(s) in {time.monotonic() - start:.2f}s" + (f"; restarted '{restart}'" if restart else "")
    )
    return synced


def watch(
    engine: Engine,
    run: Runner,
    repo: Repo,
    name: str,
    location: Location,
    target: Target,
    restart: str | None,
    stop: threading.Event,
) -> None:
    """Sync every change until `stop` is set (the container ended, or Ctrl-C)."""
    from watchfiles import watch as watch_files  # here: only a live sync needs it

    for changes in watch_files(
        repo.path, debounce=30, step=10, stop_event=stop, rust_timeout=200, yield_on_timeout=False, raise_interrupt=True
    ):
        sync_once(engine, run, repo, name, location, target, {path for _, path in changes}, restart)


def follow_logs(engine: Engine, run: Runner, name: str, stop: threading.Event) -> threading.Thread:
    """Stream the container's output (to stderr) in a thread; when the container ends, set `stop`."""

    def follow() -> None:
        try:
            run(engine.cmd("logs", "--follow", name), stream=True, check=False, mutates=False)
        finally:
            stop.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread
