"""The overlay directory: what `invoke overlay` writes and `patches --into overlay` applies to.

- It is replaced as a whole, so the tool replaces only what it made: every overlay directory holds MARKER, listing
  what the tool wrote there, and `overlay_dir` refuses anything else (a file, a symlink, an unmarked directory,
  one holding a file the list lacks) and, marked or not, the filesystem root, the home directory and anything
  holding the checkout.
- `write_tree` builds beside the destination and swaps it in; staging named `.NAME.new-PID-*` / `.NAME.old-PID-*`
  never survives a failure, and a later run removes what a killed run (kill -9) left.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import Failure
from .paths import Entry, File, _lstat, conflict, put, read, replace_files, shown, walk, within
from .scratch import alive

MARKER = ".forkdev-overlay"


def overlay_dir(
    value: str,
    what: str,
    *,
    checkout: Path,
    home: Path,
    ignored: Callable[[str], bool],
    must_exist: bool = False,
) -> Path:
    """The real path of the overlay directory `value` names, when the tool may replace it as a whole: absent
    (unless `must_exist`), or a directory it made (MARKER inside); never a file or a symlink; never the filesystem
    root, the home directory or a directory holding it, or the checkout or a directory holding it; inside the
    checkout only where git ignores it (`ignored(relative path + '/')`)."""
    path = os.path.join(os.getcwd(), os.path.expanduser(value)).rstrip("/") or "/"
    head, name = os.path.split(path)
    if name in ("", ".", ".."):  # the directory the OS reaches; its own name is no link to refuse
        real = os.path.realpath(path)
    elif os.path.islink(path):
        raise Failure(f"{what} '{shown(value)}' is a symlink; pass the directory itself (the link is not followed)")
    else:
        real = os.path.join(os.path.realpath(head), name)
    if len(os.path.basename(real).encode()) > 200:
        raise Failure(f"{what} '{shown(value)}' has a name too long (over 200 bytes); shorten it")
    st = _lstat(real)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise Failure(f"{what} '{shown(value)}' is a file; pass a directory (the overlay replaces it whole)")
    checkout, home = Path(os.path.realpath(checkout)), Path(os.path.realpath(home))
    for danger, why in (
        (real == "/", "is the filesystem root"),
        (real == str(checkout), "is the checkout"),
        (within(checkout, real), f"contains the checkout {checkout}"),
        (within(home, real), "is your home directory" if real == str(home) else "holds your home directory"),
    ):
        if danger:
            raise Failure(f"{what} '{shown(value)}' {why}, and the overlay directory is replaced whole; pass a new one")
    if within(real, checkout) and not ignored(os.path.relpath(real, checkout) + "/"):
        raise Failure(
            f"{what} '{shown(value)}' is inside the checkout and not ignored by git; pick a directory outside it "
            "or add it to .gitignore"
        )
    if st is None and must_exist:
        raise Failure(f"no overlay at '{real}' ({what}); run 'invoke overlay' first")
    if st is not None and not marked(Path(real)):
        raise Failure(
            f"{what} '{shown(value)}' exists and was not made by invoke overlay (no {MARKER} in it); pass a "
            "directory that does not exist yet, or move this one away"
        )
    if st is not None and not must_exist:
        _refuse_foreign(Path(real), what)
    return Path(real)


def marked(directory: Path) -> bool:
    """Whether `directory` is one the tool made (a real directory holding MARKER as a regular file)."""
    d, m = _lstat(directory), _lstat(directory / MARKER)
    return d is not None and stat.S_ISDIR(d.st_mode) and m is not None and stat.S_ISREG(m.st_mode)


def _manifest(directory: Path) -> set[str]:
    """The paths MARKER says the tool wrote in `directory` (none when it cannot be read as such)."""
    try:
        entry = read(directory / MARKER)
        paths = json.loads(entry[0])["paths"] if isinstance(entry, tuple) else []
    except (ValueError, KeyError, TypeError, RecursionError, Failure):
        return set()
    return {p for p in paths if isinstance(p, str)} if isinstance(paths, list) else set()


def _marker(paths: set[str]) -> File:
    note = "made by invoke overlay, which replaces this directory whole; a file not listed here stops it"
    return json.dumps({"made_by": note, "paths": sorted(paths)}, indent=0).encode() + b"\n", 0o644


def _refuse_foreign(directory: Path, what: str) -> None:
    """A file or link the tool did not write (a user's notes put there later) stops the replacement."""
    listed = _manifest(directory)
    foreign = [rel for rel, _, _ in walk(directory) if rel != MARKER and rel not in listed]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise Failure(
            f"{what} '{directory}' holds '{shown(foreign[0])}'{more}, which invoke overlay did not write and would "
            "delete; move it out of the overlay directory"
        )


def record(directory: Path, written: Mapping[str, Entry | None]) -> None:
    """Note in MARKER what was written into an overlay directory after it was made (None: removed)."""
    listed = _manifest(directory) | {rel for rel, entry in written.items() if entry is not None}
    listed -= {rel for rel, entry in written.items() if entry is None}
    replace_files(directory, {MARKER: _marker(listed)})


def write_tree(dest: Path, files: Mapping[str, Entry]) -> None:
    """Make `dest` (checked by overlay_dir) hold exactly `files` and MARKER: built beside it, then swapped in."""
    if clash := conflict(list(files)):
        raise ValueError(f"'{clash[0]}' is both a file and a directory of the tree")  # callers check this first
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-{os.getpid()}-", dir=dest.parent))
    old = None
    try:
        put(staging / MARKER, _marker(set(files)))
        for rel in sorted(files):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            put(staging / rel, files[rel])
        if os.path.lexists(dest):
            if not marked(dest):
                raise Failure(f"'{dest}' changed while the overlay was written (it is no overlay now); run again")
            _refuse_foreign(dest, "the overlay directory")
            old = dest.parent / f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(dest, old)
        try:
            os.rename(staging, dest)
        except BaseException:
            if old is not None:
                os.rename(old, dest)
                old = None
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)


def sweep(dest: Path) -> list[Path]:
    """Remove the staging directories of `dest` that a run no longer alive left (marked ones, or empty ones)."""
    staging = re.compile(rf"\.{re.escape(dest.name)}\.(?:new|old)-(\d+)-\w+")
    removed = []
    for name in os.listdir(dest.parent):
        m = staging.fullmatch(name)
        path = dest.parent / name
        st = _lstat(path)
        if not m or st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or alive(int(m[1])):
            continue
        if marked(path):
            shutil.rmtree(path)
        else:
            try:
                os.rmdir(path)  # made, then killed before its marker: empty, or not ours to remove
            except OSError:
                continue
        removed.append(path)
    return removed
