"""invoke overlay: copy files of the checkout into an overlay directory, transformed, for a build to use.

Definitions, one a line (`#` comments and blank lines allowed):

    src [-> dest] [:: transform=name[:arg]]

`src` is a file or directory of the repository, `dest` a path inside the overlay directory (default: src).
Everything is parsed and transformed before anything is written; the overlay directory is then replaced as a
whole. The checkout is only read.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .core import config, lock, ui
from .core.errors import Failure
from .core.fsutil import (
    MARKER,
    Entry,
    Symlink,
    checkout_path,
    conflict,
    link_stays_inside,
    os_errors,
    overlay_dir,
    read,
    relative,
    shown,
    walk,
    within,
    write_tree,
)
from .core.gitrepo import Repo
from .core.tasking import runner, setting, task

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
        if dest.split("/")[0] == MARKER:
            raise Failure(f"{where}: dest '{shown(dest)}' is the overlay's own marker {MARKER}; pick another name")
        defs.append(Definition(where, src, dest, m["name"], m["arg"]))
    return defs


def build(repo: Path, defs: list[Definition], dest_dir: Path | None = None) -> dict[str, Entry]:
    """Every entry of the overlay in memory, by path inside it: a file's (bytes, mode) or a Symlink. A symlink is
    copied as a link when it stays inside the repository, and inside the overlay from where it lands; nothing
    outside the repository is read. Raises on the first problem, naming the definition's file:line."""
    repo = Path(os.path.realpath(repo))
    files: dict[str, Entry] = {}
    origin: dict[str, str] = {}
    for d in defs:
        try:
            for rel_dest, entry in _entries(repo, d, dest_dir):
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


def _entries(repo: Path, d: Definition, dest_dir: Path | None):
    """(path in the overlay, entry) for one definition."""
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
    if dest_dir is not None and (within(real, dest_dir) or within(dest_dir, real)):
        raise Failure(f"src '{shown(d.src)}' and the overlay directory {dest_dir} overlap; keep them apart")
    found = [("", src, st)] if not stat.S_ISDIR(st.st_mode) else walk(src, skip=frozenset({".git"}))
    for rel, path, pst in found:
        rel_dest = os.path.normpath(os.path.join(d.dest, rel)) if rel else d.dest
        shown_src = shown(os.path.join(d.src, rel) if rel else d.src)
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


def resolve_dest(c, repo: Repo, flag: str | None) -> Path:
    """The overlay directory: --dest, else config overlay.dest, else one in the cache (fsutil.overlay_dir's rules)."""
    value = setting(flag, c.config.overlay.dest, "--dest", "overlay.dest", optional=True)
    return overlay_dir(
        value or str(config.cache_path(config.cache_dir(c), "overlay", str(repo.path))),
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
    run = runner(c, dry_run, quiet)
    with os_errors("make the overlay"):
        setting(None, c.config.cache_dir, "", "cache_dir")  # where the tool keeps what it makes
        r = Repo.open(setting(repo, c.config.overlay.repo, "--repo", "overlay.repo"), run)
        given = setting(definitions, c.config.overlay.definitions, "--definitions", "overlay.definitions")
        defs_path = checkout_path(r.path, given, "--definitions" if definitions else "overlay.definitions")
        if not defs_path.is_file():
            raise Failure(f"no overlay definitions at '{shown(defs_path)}'; create it or pass --definitions FILE")
        defs = parse(defs_path.read_bytes(), given)
        dest_dir = resolve_dest(c, r, dest)
        files = build(r.path, defs, dest_dir)
        for rel in sorted(files):
            ui.info(f"  {shown(rel)}")
        if run.dry_run:
            ui.ok(f"would write {len(files)} files from {len(defs)} definitions to {dest_dir}")
            return
        with lock.exclusive(
            config.cache_path(config.cache_dir(c), "locks", f"overlay {dest_dir}"), f"overlay into {dest_dir}"
        ):
            write_tree(dest_dir, files)
    ui.ok(f"{len(files)} files from {len(defs)} definitions in {dest_dir}")
