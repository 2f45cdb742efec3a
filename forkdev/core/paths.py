"""Path safety: the filesystem rules every task that reads or writes a user's files shares. They take values
(paths, not the invoke context) and raise a `Failure` naming the input and the remedy. (The overlay directory's own
rules, built on these, are in overlaydir.py.)

- Paths from definitions and registries are relative and stay inside their root by their text (`relative`);
  reads go through `inside` (the real path stays in the root), writes through `under` (no parent is a symlink).
- Nothing is read or written through a symlink: trees are walked with lstat (`walk`, `read`), a link is kept
  as a `Symlink`, and a link may be written only where it stays inside its tree (`link_stays_inside`).
- An output file is never an input (`output_file`, `stdout_apart`): the same file by any name is refused first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure

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
