"""Filesystem rules that overlay and patches share: paths stay inside their directory, and results land whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .errors import Failure


def inside(root: Path, relative: str, what: str) -> Path:
    """root/relative, refusing absolute paths and anything that escapes root with '..' or through a symlink."""
    if not relative or os.path.isabs(relative):
        raise Failure(f"{what} '{relative}' must be a relative path")
    path = root / relative
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise Failure(f"{what} '{relative}' escapes {root} (via '..' or a symlink); keep it inside")
    return path


def write_tree_atomically(dest: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Make `dest` hold exactly `files` (relative path -> (bytes, mode)): built beside it, then swapped in."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        for rel, (data, mode) in files.items():
            f = staging / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
            f.chmod(mode)
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.rename(dest, old)
        os.rename(staging, dest)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_files(root: Path, files: Mapping[str, tuple[bytes, int] | None]) -> None:
    """Write each file (None: delete it) under root; every file is replaced by a rename, never half-written."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content[0])
        os.chmod(tmp, content[1])
        os.replace(tmp, path)
