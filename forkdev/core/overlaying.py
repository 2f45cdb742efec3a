"""What `invoke overlay` does with its definitions, as values: parse them strictly, then build every entry of the
overlay in memory (files transformed, symlinks kept when they stay inside), raising on the first problem with
the definition's file:line. The secret paths (core/secrets.py) never reach an overlay: a definition naming one
is refused, and a directory's walk leaves them out. forkdev/overlay.py holds the task and the format's
description."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import secrets
from .errors import Failure
from .overlaydir import MARKER
from .paths import Entry, Symlink, conflict, link_stays_inside, read, relative, shown, walk, within

LINE = re.compile(
    r"^(?P<src>[^\s#]+)"
    r"(?:\s+->\s+(?P<dest>[^\s:]\S*))?"
    r"(?:\s+::\s+transform=(?P<name>[A-Za-z][\w-]*)(?::(?P<arg>.+))?)?\s*$"
)

Transform = Callable[[str, str | None], str]
TRANSFORMS: dict[str, Transform] = {}


def transform(name: str) -> Callable[[Transform], Transform]:
    def register(fn: Transform) -> Transform:
        TRANSFORMS[name] = fn
        return fn

    return register


def _pair(arg: str | None, name: str) -> tuple[str, str]:
    if not arg or "=>" not in arg:
        raise ValueError(f"transform '{name}' takes OLD=>NEW")
    old, new = arg.split("=>", 1)
    return old, new


@transform("replace")
def _replace(text: str, arg: str | None) -> str:
    """replace:OLD=>NEW, every literal occurrence."""
    old, new = _pair(arg, "replace")
    return text.replace(old, new)


@transform("regex")
def _regex(text: str, arg: str | None) -> str:
    r"""regex:PATTERN=>REPLACEMENT (Python re, multiline; \1 groups)."""
    pattern, repl = _pair(arg, "regex")
    return re.sub(pattern, repl, text, flags=re.M)


@transform("header")
def _header(text: str, arg: str | None) -> str:
    """header:TEXT, a first line (after a shebang) such as '# fork: patched'."""
    if not arg:
        raise ValueError("transform 'header' takes the line to add")
    if text.startswith("#!"):
        first, _, rest = text.partition("\n")
        return f"{first}\n{arg}\n{rest}"
    return f"{arg}\n{text}"


@dataclass(frozen=True)
class Definition:
    where: str  # file:line
    src: str  # normalised, relative to the repository
    dest: str  # normalised, relative to the overlay directory ('.': its root)
    transform: str | None
    arg: str | None


def parse(data: bytes, origin: str) -> list[Definition]:
    """Every definition of a definitions file's bytes, or a Failure naming `origin`:line for any other input."""
    defs = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        where = f"{shown(origin)}:{number}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Failure(f"{where}: not UTF-8 text; save the definitions as UTF-8") from None
        if not line or line.startswith("#"):
            continue
        bad = next((ch for ch in line if (ord(ch) < 32 and ch != "\t") or ord(ch) == 127), None)
        if bad is not None:
            raise Failure(f"{where}: holds the control character {bad!r}; remove it")
        m = LINE.match(line)
        if not m:
            raise Failure(
                f"{where}: malformed overlay definition '{shown(line)}'; "
                "write 'src [-> dest] [:: transform=name[:arg]]'"
            )
        if m["name"] and m["name"] not in TRANSFORMS:
            raise Failure(f"{where}: unknown transform '{m['name']}'; known: {', '.join(sorted(TRANSFORMS))}")
        try:
            src = relative(m["src"], "src")
            dest = relative(m["dest"] or m["src"], "dest")
        except Failure as exc:
            raise Failure(f"{where}: {exc}") from None
        for what, path in (("src", src), ("dest", dest)):
            if ".git" in path.split("/"):  # git's own files (config, hooks) are no overlay's, nor made by one
                raise Failure(f"{where}: {what} '{shown(path)}' is under .git; overlay files of the working tree")
        if m["name"] in ("replace", "regex") and (m["arg"] or "").startswith("=>"):
            # an empty OLD (or PATTERN) matches between every two characters: NEW everywhere
            raise Failure(f"{where}: transform '{m['name']}' has nothing to replace before '=>'; write OLD=>NEW")
        if dest.split("/")[0] == MARKER:
            raise Failure(f"{where}: dest '{shown(dest)}' is the overlay's own marker {MARKER}; pick another name")
        defs.append(Definition(where, src, dest, m["name"], m["arg"]))
    return defs


def build(
    repo: Path, defs: list[Definition], dest_dir: Path | None = None, hidden: secrets.Paths = secrets.DEFAULT
) -> dict[str, Entry]:
    """Every entry of the overlay in memory, by path inside it: a file's (bytes, mode) or a Symlink. A symlink is
    copied as a link when it stays inside the repository, and inside the overlay from where it lands; nothing
    outside the repository is read. Raises on the first problem, naming the definition's file:line."""
    repo = Path(os.path.realpath(repo))
    files: dict[str, Entry] = {}
    origin: dict[str, str] = {}
    for d in defs:
        try:
            for rel_dest, entry in _entries(repo, d, dest_dir, hidden):
                files[rel_dest] = entry
                origin[rel_dest] = d.where
        except Failure as exc:
            raise Failure(f"{d.where}: {exc}") from None
    if clash := conflict(sorted(files)):
        parent, child = clash
        raise Failure(
            f"{origin[child]}: '{shown(parent)}' would be both a file and a directory in the overlay "
            f"({origin[parent]} writes it as a file); give one of them another dest"
        )
    return files


def _entries(repo: Path, d: Definition, dest_dir: Path | None, hidden: secrets.Paths):
    """(path in the overlay, entry) for one definition; a secret path, by its name or where it really is, never."""
    src = repo / d.src
    st = os.lstat(src) if os.path.lexists(src) else None
    if st is None:
        raise Failure(f"src '{shown(d.src)}' does not exist in {repo}")
    parts = d.src.split("/")
    for i in range(1, len(parts) + 1):  # the first of src and its parents that leads out is a symlink
        link = "/".join(parts[:i])
        if not within(os.path.realpath(repo / link), repo):
            raise Failure(
                f"{shown(link)} is a symlink to '{shown(os.readlink(repo / link))}', outside the repository; "
                "make it point inside or leave it out of the definition"
            )
    real = os.path.realpath(src)
    if ".git" in os.path.relpath(real, repo).split(os.sep):
        raise Failure(f"src '{shown(d.src)}' leads into .git by a symlink; overlay files of the working tree")
    if dest_dir is not None and (within(real, dest_dir) or within(dest_dir, real)):
        raise Failure(f"src '{shown(d.src)}' and the overlay directory {dest_dir} overlap; keep them apart")
    found = [("", src, st)] if not stat.S_ISDIR(st.st_mode) else walk(src, skip=frozenset({".git"}))
    for rel, path, pst in found:
        rel_dest = os.path.normpath(os.path.join(d.dest, rel)) if rel else d.dest
        shown_src = shown(os.path.join(d.src, rel) if rel else d.src)
        real = os.path.relpath(os.path.realpath(path), repo) if not stat.S_ISLNK(pst.st_mode) else ""
        if hidden.hidden(os.path.normpath(os.path.join(d.src, rel))) or (real and hidden.hidden(real)):
            if not rel:
                raise Failure(
                    f"src '{shown(d.src)}' is a secret path (config container.secrets / container.secret_paths); "
                    "secrets never go into an overlay: leave it out of the definition"
                )
            continue
        if rel_dest == ".":
            raise Failure(f"dest '{shown(d.dest)}' is the overlay directory itself; name a file for {shown_src}")
        if rel_dest.split("/")[0] == MARKER:
            raise Failure(f"{shown_src} would land on the overlay's own marker {MARKER}; pick another dest")
        entry = read(path, pst)
        if isinstance(entry, Symlink):
            if not within(os.path.realpath(path), repo):
                raise Failure(
                    f"{shown_src} is a symlink to '{shown(entry.target)}', outside the repository; make it point "
                    "inside or leave it out of the definition"
                )
            if not link_stays_inside(rel_dest, entry.target):
                raise Failure(
                    f"{shown_src} is a symlink to '{shown(entry.target)}', which would point outside the overlay "
                    f"directory from {shown(rel_dest)}; keep its place (dest) or leave it out"
                )
            if d.transform:
                raise Failure(f"transform '{d.transform}' needs a file, and {shown_src} is a symlink")
        elif d.transform:
            entry = (_apply(d, shown_src, entry[0], rel_dest), entry[1])
        yield rel_dest, entry


def _apply(d: Definition, name: str, data: bytes, rel_dest: str) -> bytes:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure(f"transform '{d.transform}' needs text, and {name} is binary") from None
    try:
        new = TRANSFORMS[d.transform](text, d.arg)
    except ValueError as exc:  # the transform's own sentence about its argument
        raise Failure(shown(exc)) from None
    except (re.error, RecursionError, OverflowError, MemoryError) as exc:
        why = "it nests too deeply" if isinstance(exc, RecursionError) else shown(exc)
        raise Failure(f"transform '{d.transform}': not a valid regex ({why})") from None
    if new == text:
        raise Failure(
            f"transform '{d.transform}' changed nothing in {name}; the upstream file moved on: update the definition"
        )
    if rel_dest.endswith(".py"):
        try:
            compile(new, rel_dest, "exec")
        except SyntaxError as exc:
            raise Failure(
                f"after transform '{d.transform}', {shown(rel_dest)} does not compile (line {exc.lineno}: "
                f"{shown(exc.msg)})"
            ) from None
        except (ValueError, RecursionError, MemoryError, OverflowError):
            raise Failure(
                f"after transform '{d.transform}', {shown(rel_dest)} does not compile (nested too deeply)"
            ) from None
    return new.encode("utf-8", "surrogatepass")
