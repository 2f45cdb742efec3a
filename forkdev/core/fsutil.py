"""Filesystem rules that overlay and patches share. They take values (paths, not the invoke context) and raise a
`Failure` naming the input and the remedy.

- Paths from definitions and registries are relative and stay inside their root by their text (`relative`);
  reads go through `inside` (the real path stays in the root), writes through `under` (no parent is a symlink).
- Nothing is read or written through a symlink: trees are walked with lstat (`walk`, `read`), a link is kept
  as a `Symlink`, and a link may be written only where it stays inside its tree (`link_stays_inside`).
- An overlay directory is replaced as a whole, so the tool replaces only what it made: every overlay directory
  holds MARKER, listing what the tool wrote there, and `overlay_dir` refuses anything else (a file, a symlink,
  an unmarked directory, one holding a file the list lacks) and, marked or not, the filesystem root, the home
  directory and anything holding the checkout.
- `write_tree` builds beside the destination and swaps it in; staging named `.NAME.new-PID-*` / `.NAME.old-PID-*`
  never survives a failure, and a later run removes what a killed run (kill -9) left.
- An output file is never an input (`output_file`, `stdout_apart`): the same file by any name is refused first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure
from .scratch import alive

MARKER = ".forkdev-overlay"
NAME_MAX = 255  # bytes in one path component (Linux)
PATH_MAX = 4095  # bytes in a path (Linux: 4096 with the NUL)


@dataclass(frozen=True)
class Symlink:
    target: str


File = tuple[bytes, int]  # (content, permission bits)
Entry = File | Symlink  # what a tree holds at a path


def shown(value: object, limit: int = 200) -> str:
    """A value fit for a one-line message: control characters and undecodable bytes escaped, long ones cut."""
    text = repr(str(value))[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def relative(value: object, what: str) -> str:
    """A relative path that stays inside its root by its text, normalised ('a/./b/' -> 'a/b', the root -> '.')."""
    if not isinstance(value, str) or not value:
        raise Failure(f"{what} must be a relative path, not {shown(value) or 'empty'}")
    bad = next((ch for ch in value if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise Failure(f"{what} '{shown(value)}' holds the control character {bad!r}; remove it")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise Failure(f"{what} '{shown(value)}' is not valid UTF-8 text; rename it") from None
    if os.path.isabs(value):
        raise Failure(f"{what} '{shown(value)}' must be a relative path")
    norm = os.path.normpath(value)
    if norm == ".." or norm.startswith("../"):
        raise Failure(f"{what} '{shown(value)}' escapes its directory by '..'; keep it inside")
    if any(len(part.encode()) > NAME_MAX for part in norm.split("/")):
        raise Failure(f"{what} '{shown(value)}' has a name longer than {NAME_MAX} bytes; shorten it")
    if len(encoded) > PATH_MAX:
        raise Failure(f"{what} '{shown(value)}' is too long ({len(encoded)} bytes, at most {PATH_MAX}); shorten it")
    return norm


def within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether `path` is `root` or below it (both absolute; compared as they are)."""
    return os.path.commonpath([os.fspath(root), os.fspath(path)]) == os.fspath(root)


def inside(root: Path, rel: str, what: str) -> Path:
    """root/rel for reading: relative, and its real path (every symlink followed) stays in root's."""
    path = root / relative(rel, what)
    if not within(os.path.realpath(path), os.path.realpath(root)):
        raise Failure(f"{what} '{shown(rel)}' leads out of {root} through a symlink; keep it inside")
    return path


def under(root: Path, rel: str, what: str) -> Path:
    """root/rel for writing: relative, and no existing parent below root is a symlink or a file, so a write
    lands in root itself. The last component may be a symlink: it is replaced or read as a link, never followed."""
    norm = relative(rel, what)
    parts = norm.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        try:
            mode = os.lstat(root / prefix).st_mode
        except FileNotFoundError:
            break
        if stat.S_ISLNK(mode):
            raise Failure(
                f"{what} '{shown(rel)}' goes through the symlink '{shown(prefix)}' in {root}; links are not followed"
            )
        if not stat.S_ISDIR(mode):
            raise Failure(f"{what} '{shown(rel)}' goes through '{shown(prefix)}', which is a file in {root}")
    return root / norm


def link_stays_inside(rel: str, target: str) -> bool:
    """Whether a symlink at `rel` (normalised, relative to a tree's root) pointing at `target` resolves inside
    that tree whatever else the tree holds: relative, '..' only leading and no more of them than `rel` has
    parents, so by induction no chain of such links leaves the tree."""
    if not target or os.path.isabs(target) or "\0" in target:
        return False
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return ".." not in parts[ups:] and ups <= rel.count("/")


def walk(root: Path, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, lstat) of every non-directory below root, sorted; no link is followed and names in
    `skip` are left out with everything below them."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in skip:
            continue
        st = entry.stat(follow_symlinks=False)
        path = Path(entry.path)
        if stat.S_ISDIR(st.st_mode):
            for rel, p, s in walk(path, skip):
                yield f"{entry.name}/{rel}", p, s
        else:
            yield entry.name, path, st


def read(path: Path, st: os.stat_result | None = None) -> Entry | None:
    """What is at `path`, the link itself if it is one; None when nothing is there. A directory or a special
    file (fifo, socket, device) is refused: reading one is never what a definition or a patch means."""
    try:
        st = st or os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return Symlink(os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise Failure(f"'{shown(path)}' is {kind}; only files and symlinks are copied or patched")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(), st.st_mode & 0o777


def put(path: Path, entry: Entry) -> None:
    """Create `entry` at `path`, which must not exist."""
    if isinstance(entry, Symlink):
        os.symlink(entry.target, path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(entry[0])
        os.fchmod(fh.fileno(), entry[1])


def conflict(paths: list[str]) -> tuple[str, str] | None:
    """(path, a path below it) when a tree would need one path as both a file or link and a directory."""
    taken = set(paths)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in taken:
                return "/".join(parts[:i]), path
    return None


def checkout_path(checkout: Path, value: str, what: str) -> Path:
    """The file a flag or config names: a relative name is the checkout's and must stay in it (a symlink out of
    the checkout is not followed); an absolute one is taken as it is."""
    given = os.path.expanduser(value)
    if os.path.isabs(given):
        return Path(given)
    try:
        return inside(checkout, given, what)
    except Failure:
        raise Failure(
            f"{what} '{shown(value)}' leads outside the checkout (a relative path is the checkout's); pass an "
            "absolute path for a file outside it"
        ) from None


# ---- the overlay directory ------------------------------------------------------------------------------------
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


def _lstat(path: str | os.PathLike[str]) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


# ---- writing files into a tree the user owns ------------------------------------------------------------------
def replace_files(root: Path, files: Mapping[str, Entry | None]) -> None:
    """Write each entry (None: delete it) under root, each by a rename, so none is half-written. Every path is
    checked before anything is written: no parent is a symlink or a file (nothing lands outside root), and no
    directory is replaced; a symlink at a path is replaced or removed as a link, never written through."""
    plan = [(under(root, rel, "patched path"), entry) for rel, entry in sorted(files.items())]
    for path, _ in plan:
        st = _lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise Failure(f"'{path}' is a directory; a patch can only change files and symlinks there")
    for path, entry in plan:
        if entry is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        _mkdirs(root, path.parent)
        tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(4)}.tmp"
        put(tmp, entry)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def _mkdirs(root: Path, directory: Path) -> None:
    """Create the missing directories between root and `directory`, one at a time, following no link."""
    missing = []
    while directory != root and _lstat(directory) is None:
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        os.mkdir(d)  # an existing name (a link that appeared meanwhile) fails here instead of being followed


@contextlib.contextmanager
def os_errors(doing: str) -> Iterator[None]:
    """An error of the filesystem (no permission, no space, a name too long) as one sentence, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = f" ('{shown(exc.filename)}')" if exc.filename else ""
        why = "name too long" if exc.errno == errno.ENAMETOOLONG else (exc.strerror or str(exc)).lower()
        raise Failure(f"cannot {doing}{where}: {why}; check the path, its permissions and free space") from None


# ---- an output is never an input ------------------------------------------------------------------------------
def output_file(value: str, what: str, inputs: Mapping[str, Path]) -> Path:
    """The file `value` names, to be replaced whole later, checked before anything is done: refused when it is one
    of `inputs` ({'the dataset': path}) by any name (a symlink, a hard link, `..`), a directory, or a symlink
    (replacing it would drop the user's link)."""
    path = Path(os.path.abspath(os.path.expanduser(value)))
    for name, source in inputs.items():
        if _same_file(os.stat, path, source):
            raise Failure(f"{what} '{shown(value)}' is {name} '{shown(source)}'; pass another path for the results")
    st = _lstat(path)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise Failure(f"{what} '{shown(value)}' is a symlink; pass the path of the file itself")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise Failure(f"{what} '{shown(value)}' is a directory; pass the path of a file in it")
    return path


def stdout_apart(inputs: Mapping[str, Path]) -> None:
    """Refuse a stdout redirected into one of `inputs` (`invoke batch ds.jsonl --emit bake >> ds.jsonl`)."""
    for name, source in inputs.items():
        if _same_file(os.fstat, 1, source):
            raise Failure(
                f"the output goes to {name} '{shown(source)}' itself; redirect it to another file (a `>` there "
                "has emptied it before the task started)"
            )


def _same_file(stat_of: Callable, a: object, b: str | os.PathLike[str]) -> bool:
    """Whether two names are one file: its device and inode, whatever the spelling, symlink or hard link."""
    try:
        first, second = stat_of(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino) and stat.S_ISREG(second.st_mode)
