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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .core import config, ui
from .core.errors import Failure
from .core.fsutil import inside, write_tree_atomically
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.tasking import task

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
    src: str
    dest: str
    transform: str | None
    arg: str | None


def parse(text: str, origin: str) -> list[Definition]:
    defs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{origin}:{number}"
        m = LINE.match(line)
        if not m:
            raise Failure(
                f"{where}: malformed overlay definition '{line}'; write 'src [-> dest] [:: transform=name[:arg]]'"
            )
        if m["name"] and m["name"] not in TRANSFORMS:
            raise Failure(f"{where}: unknown transform '{m['name']}'; known: {', '.join(sorted(TRANSFORMS))}")
        defs.append(Definition(where, m["src"], m["dest"] or m["src"], m["name"], m["arg"]))
    return defs


def build(repo: Path, dest_dir: Path, defs: list[Definition]) -> dict[str, tuple[bytes, int]]:
    """Every overlay file in memory: (bytes, mode) by path inside the overlay. Raises on the first problem."""
    files: dict[str, tuple[bytes, int]] = {}
    for d in defs:
        try:
            src = inside(repo, d.src, "src")
            inside(dest_dir, d.dest, "dest")
        except Failure as exc:
            raise Failure(f"{d.where}: {exc}") from None
        if not src.exists():
            raise Failure(f"{d.where}: src '{d.src}' does not exist in {repo}")
        sources = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file() and ".git" not in p.parts)
        for path in sources:
            rel_dest = d.dest if path == src else os.path.join(d.dest, str(path.relative_to(src)))
            data = path.read_bytes()
            if d.transform:
                data = _apply(d, path, data, rel_dest)
            files[os.path.normpath(rel_dest)] = (data, path.stat().st_mode & 0o777)
    return files


def _apply(d: Definition, path: Path, data: bytes, rel_dest: str) -> bytes:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure(f"{d.where}: transform '{d.transform}' needs text, and {path.name} is binary") from None
    try:
        new = TRANSFORMS[d.transform](text, d.arg)
    except (ValueError, re.error) as exc:
        raise Failure(f"{d.where}: {exc}") from None
    if new == text:
        raise Failure(
            f"{d.where}: transform '{d.transform}' changed nothing in {d.src}; the upstream file moved "
            "on: update the definition"
        )
    if rel_dest.endswith(".py"):
        try:
            compile(new, rel_dest, "exec")
        except SyntaxError as exc:
            raise Failure(
                f"{d.where}: after transform '{d.transform}', {rel_dest} does not compile "
                f"(line {exc.lineno}: {exc.msg})"
            ) from None
    return new.encode("utf-8")


def resolve_dest(c, repo: Repo, dest: str | None) -> Path:
    """The overlay directory. Inside the checkout it must be ignored by git, so `git status` stays unchanged."""
    path = (
        Path(os.path.expanduser(dest)).resolve()
        if dest
        else config.cache_path(config.cache_dir(c), "overlay", str(repo.path))
    )
    real = os.path.realpath(path)
    if os.path.commonpath([str(repo.path), real]) == str(repo.path):
        rel = os.path.relpath(real, repo.path)
        if not repo.git("check-ignore", "-q", "--no-index", rel + "/", check=False).ok:
            raise Failure(
                f"--dest '{dest}' is inside the checkout and not ignored by git; pick a directory outside "
                "it or add it to .gitignore"
            )
    return path


@task(
    help={
        "repo": "the checkout (default: config overlay.repo, '.')",
        "definitions": "the definitions file (default: config overlay.definitions, relative to the repo)",
        "dest": "the overlay directory (default: config overlay.dest, else one under the cache dir)",
        "dry_run": "parse, transform and list; write nothing",
    },
)
def overlay(c, repo=None, definitions=None, dest=None, dry_run=False):
    """Copy the overlay definitions' files, transformed, into the overlay directory (the checkout is only read)."""
    run = Runner(dry_run=config.dry_run(c, dry_run))
    r = Repo.open(repo or c.config.overlay.repo, run)
    defs_file = Path(os.path.expanduser(definitions or c.config.overlay.definitions))
    defs_path = defs_file if defs_file.is_absolute() else r.path / defs_file
    if not defs_path.is_file():
        raise Failure(f"no overlay definitions at '{defs_path}'; create it or pass --definitions FILE")
    defs = parse(defs_path.read_text(), str(defs_file))
    dest_dir = resolve_dest(c, r, dest or c.config.overlay.dest)
    files = build(r.path, dest_dir, defs)
    for rel in sorted(files):
        ui.info(f"  {rel}")
    if run.dry_run:
        ui.ok(f"would write {len(files)} files from {len(defs)} definitions to {dest_dir}")
        return
    write_tree_atomically(dest_dir, files)
    ui.ok(f"{len(files)} files from {len(defs)} definitions in {dest_dir}")
