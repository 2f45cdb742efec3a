"""Every place under the tool's cache (config `cache_dir`, default ~/.cache/forkdev), and the one way a small file
there is read and written.

Each function takes the cache's root (config.cache_dir) and names one place; nothing else spells a path under it.
A file is written whole or not at all: filled beside its place under a name of its own, flushed and fsynced, then
renamed over it, so a reader (another run, a run after a crash or kill -9) sees the old bytes or the new ones. A
file is read without following a symlink: the tool reads only what it wrote.

    <root>/mirrors/<name>-<hash>        bare mirrors of upstreams (nightly, build, batch)
    <root>/dev/<name>-<hash>.json       the last images `invoke dev` made of a checkout (run's default image)
    <root>/overlay/<name>-<hash>        `invoke overlay`'s default destination for a checkout
    <root>/worktrees/<name>-<hash>      `invoke patches --into worktree`'s worktree of a checkout
    <root>/locks/<name>-<hash>          locks of one destination (an overlay's)
    <root>/nightly/<target>.json        nightly's state (last builds); .last-run.json its last outcome; .lock; .log
    <root>/nightly/<target>.cron.sh     the script the cron entry runs
    <root>/bases/<digest>-...           facts read from base images (config, history, package location)
    <root>/run/owners/<pid>-<random>    a live run's, shell's or smoke's lock and private files
    <root>/batch/results.json, logs/    batch's default results file and per-state logs
    <root>/wheel/, smoke/               their logs
    <root>/ccache                       the host wheel build's compiler cache
    <root>/native/<target>/<base>-<env> `invoke dev --native`'s workspace per base image and build environment:
                                        src/ (the synced tree), build/ (the build directory), state.json, build.log
    <root>/native/<target>/ccache       its compiler cache, shared by every base of the target
    <root>/demo                         invoke demo's sandbox
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import Failure


def keyed(root: Path, kind: str, key: str) -> Path:
    """A place per repository (or other key): <root>/<kind>/<readable name>-<hash of the whole key>."""
    name = os.path.basename(key.rstrip("/")).removesuffix(".git") or "root"
    return root / kind / f"{_plain(name)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def mirror(root: Path, url: str) -> Path:
    return keyed(root, "mirrors", url)


def dev_record(root: Path, checkout: Path) -> Path:
    return keyed(root, "dev", str(checkout)).with_suffix(".json")


def overlay(root: Path, checkout: Path) -> Path:
    return keyed(root, "overlay", str(checkout))


def worktree(root: Path, checkout: Path) -> Path:
    return keyed(root, "worktrees", str(checkout))


def lock(root: Path, what: str) -> Path:
    return keyed(root, "locks", what)


def nightly(root: Path, target: str, suffix: str = ".json") -> Path:
    """nightly's files of a target: its state (.json), last outcome (.last-run.json), .lock, .log, .cron.sh."""
    return root / "nightly" / f"{target}{suffix}"


def base_file(root: Path, name: str) -> Path:
    return root / "bases" / name


def owners(root: Path) -> Path:
    return root / "run" / "owners"


def batch(root: Path, name: str) -> Path:
    return root / "batch" / name


def log(root: Path, task: str, name: str) -> Path:
    return root / task / f"{name}.log"


def ccache(root: Path) -> Path:
    return root / "ccache"


def native_workspace(root: Path, target: str, base_id: str, env_id: str) -> Path:
    """`invoke dev --native`'s build workspace of one target on one base image, in one build environment (image
    ids, sha256:<hex>): a build directory is only ever reused by the same compiler on the same base."""
    short = [ident.split(":")[-1][:16] for ident in (base_id, env_id)]
    return _native(root, target) / f"{short[0]}-{short[1]}"


def native_ccache(root: Path, target: str) -> Path:
    return _native(root, target) / "ccache"


def _native(root: Path, target: str) -> Path:
    return root / "native" / (_plain(target).strip(".") or "target")  # never '..': a target is a name from config


def _plain(name: str) -> str:
    """`name` as a file name of ours: letters, digits, '.', '_' and '-' only, at most 60 characters."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:60]


def demo(root: Path) -> Path:
    return root / "demo"


# ---- one reader, one writer -----------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    """The object at `path`, or {} when there is none (a torn or foreign file counts as none; so does a symlink,
    which is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Any) -> None:
    write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (see the module's docstring). A place that cannot take
    it (a directory there, no permission) is one sentence naming it; the temporary file never stays."""
    tmp = path.with_name(f".{path.name[:200]}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise Failure(f"cannot write '{path}' ({why}); move away what is there, or use another cache") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
