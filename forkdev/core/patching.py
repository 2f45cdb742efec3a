"""What `invoke patches` does with the fork's patch registry, as values: parse it strictly (the diffs next to it,
every path they touch checked to stay inside the target), stage the touched files in a scratch copy, and apply
the series there, all or nothing. forkdev/patches.py holds the task and the registry's format."""

from __future__ import annotations

import json as jsonlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure
from .paths import Entry, Symlink, inside, link_stays_inside, put, read, relative, shown, under, walk, within
from .proc import Runner
from .scratch import sweep

DIFF_PATH = re.compile(rb"^(?:---|\+\+\+) (?:[ab]/)?(?P<path>\S+)", re.M)


@dataclass(frozen=True)
class Patch:
    name: str
    diff: bytes  # CRLF normalised
    skip_in_overlay: bool
    fallback: dict | None
    paths: frozenset[str]  # what it touches, relative to the target (checked: they stay inside it)


def load(registry: Path) -> list[Patch]:
    """The registry's patches, or a Failure naming the registry (and the entry) for any other content."""
    if not registry.is_file():
        raise Failure(f"no patch registry at '{shown(registry)}'; create it or pass --registry FILE")
    return parse(registry.read_bytes(), registry)


def parse(data: bytes, registry: Path) -> list[Patch]:
    """The patches of a registry's bytes; the diffs are read next to `registry`."""
    where = shown(registry)
    try:
        doc = jsonlib.loads(data)
    except RecursionError:
        raise Failure(f'{where} nests too deeply to be a patch registry; write {{"patches": [...]}}') from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise Failure(f"{where} is not valid JSON ({shown(exc)}); fix it") from None
    entries = doc.get("patches") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise Failure(f'{where} has no "patches" list; write {{"patches": [{{"name", "diff"}}, ...]}}')
    patches = []
    for i, e in enumerate(entries):
        try:
            patches.append(_entry(e, registry))
        except Failure as exc:
            raise Failure(f"{where} entry {i + 1}: {exc}") from None
    return patches


def _entry(e: object, registry: Path) -> Patch:
    if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("diff"), str):
        raise Failure('needs a "name" and a "diff" (a path next to the registry)')
    name = e["name"]
    if not name or len(name) > 200 or not name.isprintable():
        raise Failure(f"\"name\" '{shown(name)}' must be one line of printable text, at most 200 characters")
    diff = inside(registry.parent, e["diff"], f"({name}) diff")
    if not diff.is_file():
        raise Failure(f"({name}) diff file '{shown(e['diff'])}' does not exist next to the registry")
    skip = e.get("skip_in_overlay", False)
    if not isinstance(skip, bool):
        raise Failure(f'({name}) "skip_in_overlay" must be true or false, not {shown(jsonlib.dumps(skip))}')
    fb = e.get("fallback")
    if fb is not None and (
        not isinstance(fb, dict)
        or fb.get("type") != "regex_replace"
        or not all(isinstance(fb.get(k), str) for k in ("file", "pattern", "replacement"))
    ):
        raise Failure(f'({name}) a fallback is {{"type": "regex_replace", "file", "pattern", "replacement"}}')
    data = diff.read_bytes().replace(b"\r\n", b"\n")
    paths = {m["path"].decode("utf-8", "surrogateescape") for m in DIFF_PATH.finditer(data)} - {"/dev/null"}
    checked = {relative(p, f"({name}) the diff's path") for p in paths}
    if fb is not None:
        checked.add(relative(fb["file"], f"({name}) the fallback file"))
    return Patch(name, data, skip, fb, frozenset(checked))


class Stage:
    """A scratch copy of the touched files (symlinks as links), where `git apply` runs outside any repository.
    Everything is read and checked before the scratch directory exists; `close` (or the with block) removes it."""

    def __init__(self, target: Path, paths: set[str], run: Runner) -> None:
        self.run = run
        self.target = target
        self.original: dict[str, Entry | None] = {}
        for rel in sorted(paths):
            try:
                self.original[rel] = read(under(target, rel, "patched path"))
            except Failure as exc:
                raise Failure(f"{exc} (patched path '{shown(rel)}')") from None
        sweep(purpose="patches")  # what a killed run (kill -9) left
        self.tmp = Path(tempfile.mkdtemp(prefix=f"forkdev-patches-{os.getpid()}-"))
        try:
            self.root = self.tmp / "tree"
            self.root.mkdir()
            for rel, entry in self.original.items():
                if entry is not None:
                    (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                    put(self.root / rel, entry)
        except BaseException:
            self.close()
            raise
        # GIT_CEILING_DIRECTORIES keeps git from finding a repository above the scratch tree.
        self.env = {"GIT_CEILING_DIRECTORIES": str(self.tmp)}

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def git_apply(self, patch: Patch, *flags: str, root: Path | None = None):
        diff = self.tmp / "current.diff"
        diff.write_bytes(patch.diff)
        return self.run(
            ["git", "apply", *flags, "--", str(diff)], cwd=root or self.root, env=self.env, mutates=False, check=False
        )

    def _scratch(self, name: str) -> Path:
        scratch = self.tmp / name
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(self.root, scratch, symlinks=True)
        return scratch

    def series_applies(self, patches: list[Patch], *flags: str) -> bool:
        """Whether the patches apply one after another, tried on a scratch copy."""
        scratch = self._scratch("series")
        return all(self.git_apply(p, *flags, root=scratch).ok for p in patches)

    def rejected(self, patch: Patch) -> str:
        """The hunks that do not apply, as `git apply --reject` writes them."""
        scratch = self._scratch("reject")
        res = self.git_apply(patch, "--reject", root=scratch)
        rej = [
            entry[0].decode("utf-8", "replace")
            for rel, path, st in walk(scratch)
            if rel.endswith(".rej") and isinstance(entry := read(path, st), tuple)
        ]
        return "\n".join(rej) or res.err

    def fallback(self, patch: Patch) -> str | None:
        """Apply a regex_replace fallback; None on success, else why it failed."""
        fb = patch.fallback
        try:
            entry = read(under(self.root, fb["file"], "fallback file"))
        except Failure as exc:
            return str(exc)
        if not isinstance(entry, tuple):
            return f"fallback file {shown(fb['file'])} " + ("is a symlink" if entry else "does not exist")
        try:
            text = entry[0].decode("utf-8")
        except UnicodeDecodeError:
            return f"fallback file {shown(fb['file'])} is not UTF-8 text"
        try:
            new, count = re.subn(fb["pattern"], fb["replacement"], text, flags=re.M)
        except (re.error, RecursionError, OverflowError, MemoryError) as exc:
            why = "it nests too deeply" if isinstance(exc, RecursionError) else shown(exc)
            return f"fallback pattern is not a valid regex ({why})"
        if count == 0:
            return f"fallback pattern does not match {shown(fb['file'])}"
        if fb["file"].endswith(".py"):
            try:
                compile(new, fb["file"], "exec")
            except SyntaxError as exc:
                return f"after the fallback, {shown(fb['file'])} does not compile (line {exc.lineno}: {shown(exc.msg)})"
            except (ValueError, RecursionError, MemoryError, OverflowError):
                return f"after the fallback, {shown(fb['file'])} does not compile (nested too deeply)"
        path = self.root / relative(fb["file"], "fallback file")
        path.unlink()
        put(path, (new.encode("utf-8", "surrogatepass"), entry[1]))
        return None

    def changes(self) -> dict[str, Entry | None]:
        """What differs from the target, by path: the new entry, or None for a deletion. A symlink a patch made
        is refused unless it stays inside the target."""
        now = {rel: read(path, st) for rel, path, st in walk(self.root)}
        out: dict[str, Entry | None] = {}
        for rel in sorted(set(now) | set(self.original)):
            before, after = self.original.get(rel), now.get(rel)
            if before == after:
                continue
            if isinstance(after, Symlink) and not self._stays_inside(rel, after.target):
                raise Failure(
                    f"a patch makes '{shown(rel)}' a symlink to '{shown(after.target)}', outside {self.target}; "
                    "symlinks must point inside the target: fix the patch"
                )
            out[rel] = after
        return out

    def _stays_inside(self, rel: str, target: str) -> bool:
        real = os.path.realpath(self.target)
        return link_stays_inside(rel, target) and within(os.path.realpath(os.path.join(real, rel)), real)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def apply_all(patches: list[Patch], stage: Stage, reverse: bool) -> list[tuple[str, str, str]]:
    """(name, status, detail) per patch, in the order they were tried."""
    ordered = list(reversed(patches)) if reverse else patches
    # A series already in place: later patches may change earlier ones' context, so undo it as a whole.
    if patches and stage.series_applies(list(reversed(ordered)), *(() if reverse else ("-R",))):
        return [(p.name, "not applied" if reverse else "already applied", "") for p in ordered]
    report = []
    for p in ordered:
        forward, backward = ("-R",) if reverse else (), () if reverse else ("-R",)
        if stage.git_apply(p, "--check", *forward).ok:
            stage.git_apply(p, *forward)
            report.append((p.name, "reverted" if reverse else "applied", ""))
        elif stage.git_apply(p, "--check", *backward).ok:
            report.append((p.name, "not applied" if reverse else "already applied", ""))
        elif p.fallback and not reverse:
            why = stage.fallback(p)
            report.append(
                (p.name, "failed", f"{why}\n{stage.rejected(p)}")
                if why
                else (p.name, "applied by fallback", p.fallback["file"])
            )
        else:
            report.append((p.name, "failed", stage.rejected(p)))
    return report
