"""invoke patches: apply the fork's ordered .diff patches, all or nothing.

The registry is the fork's existing format, read as it is:

    {"patches": [{"name": "...", "diff": "0001-x.diff", "skip_in_overlay": false,
                  "fallback": {"type": "regex_replace", "file": "...", "pattern": "...", "replacement": "..."}}]}

Every patch is first applied, in order, to a staging copy of the files the patches touch; the target is written
only when all of them applied (each file replaced by a rename), so a failure leaves it as it was.
"""

from __future__ import annotations

import json as jsonlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .core import config, ui
from .core.errors import Failure
from .core.fsutil import (
    MARKER,
    Entry,
    Symlink,
    checkout_path,
    inside,
    link_stays_inside,
    os_errors,
    overlay_dir,
    put,
    read,
    record,
    relative,
    replace_files,
    shown,
    under,
    walk,
    within,
)
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.scratch import sweep
from .core.tasking import runner, setting, task

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


def resolve_into(c, repo: Repo, into: str, what: str, run: Runner) -> tuple[Path, bool]:
    """(directory, overlay?) for --into: worktree (default), overlay, checkout, or a directory."""
    if into == "checkout":
        return repo.path, False
    if into == "overlay":  # the overlay directory's own rules: one that invoke overlay made
        value = setting(None, c.config.overlay.dest, "", "overlay.dest", optional=True)
        path = overlay_dir(
            value or str(config.cache_path(config.cache_dir(c), "overlay", str(repo.path))),
            "overlay.dest" if value else "the overlay directory",
            checkout=repo.path,
            home=Path(os.path.expanduser("~")),
            ignored=repo.ignores,
            must_exist=True,
        )
        return path, True
    if into == "worktree" and run.dry_run:
        ui.info("--check: checking against the checkout's files (a worktree of HEAD is made only to apply)")
        return repo.path, False
    if into == "worktree":
        # Ours, in the cache: removed and made again. --force re-adds it where a run left it registered but gone;
        # no `worktree prune`, which would forget the user's own worktrees on a disk not mounted now.
        path = config.cache_path(config.cache_dir(c), "worktrees", str(repo.path)).absolute()
        if path.exists():
            repo.git("worktree", "remove", "--force", "--", str(path), mutates=True, check=False)
        repo.git("worktree", "add", "--quiet", "--force", "--detach", "--", str(path), "HEAD", mutates=True)
        return path, False
    path = Path(os.path.realpath(os.path.expanduser(into)))
    if not path.is_dir():
        raise Failure(f"{what} '{shown(into)}' is not a directory; use worktree, overlay, checkout or a directory")
    return path, False


@task(
    help={
        "repo": "the checkout (default: config patches.repo, '.')",
        "registry": "the registry JSON (default: config patches.registry, relative to the repo)",
        "into": "where to apply: worktree (a fresh worktree of HEAD, the default), overlay (one that invoke overlay "
        "made), checkout, or a directory",
        "check": "report what would happen; change nothing",
        "reverse": "revert the patches, last first",
        "json": "print one JSON object on stdout",
    },
)
def patches(c, repo=None, registry=None, into=None, check=False, reverse=False, json=False, quiet=False):
    """Apply the fork's ordered .diff patches, all or nothing; any failure exits non-zero."""
    run = runner(c, check, quiet)
    with os_errors("apply the patches"):
        setting(None, c.config.cache_dir, "", "cache_dir")  # where the tool keeps what it makes
        r = Repo.open(setting(repo, c.config.patches.repo, "--repo", "patches.repo"), run)
        given = setting(registry, c.config.patches.registry, "--registry", "patches.registry")
        found = load(checkout_path(r.path, given, "--registry" if registry else "patches.registry"))
        where = setting(into, c.config.patches.into, "--into", "patches.into")
        target, in_overlay = resolve_into(c, r, where, "--into" if into else "patches.into", run)
        chosen = [p for p in found if not (in_overlay and p.skip_in_overlay)]
        if in_overlay and (
            marker := next((p.name for p in chosen if MARKER in {q.split("/")[0] for q in p.paths}), None)
        ):
            raise Failure(f"patch '{marker}' touches the overlay's own marker {MARKER}; leave it out of the patch")
        if run.dry_run and not target.exists():
            raise Failure(f"dry run stops here: {target} does not exist yet")
        with Stage(target, set().union(*(p.paths for p in chosen)), run) as stage:
            report = apply_all(chosen, stage, reverse)
            changes = stage.changes()
        failed = [name for name, status, _ in report if status == "failed"]
        for name, status, detail in report:
            lines = "".join(f"\n    {line}" for line in detail.splitlines())
            (ui.warn if status == "failed" else ui.info)(f"{status:>20}  {name}{lines}")
        skipped = [p.name for p in found if p not in chosen]
        for name in skipped:
            ui.info(f"{'skipped in overlay':>20}  {name}")
        if json:
            ui.emit_json(
                {
                    "target": str(target),
                    "patches": [{"name": n, "status": s} for n, s, _ in report],
                    "skipped": skipped,
                    "changed": sorted(changes),
                    "check": run.dry_run,
                }
            )
        if failed:
            raise Failure(
                f"{len(failed)} of {len(report)} patches do not apply ({', '.join(failed)}); nothing was "
                f"written to {target}: refresh them against the new upstream"
            )
        if not run.dry_run:
            replace_files(target, changes)
            if in_overlay:
                record(target, changes)  # what patches wrote is the tool's: the next overlay run may replace it
    ui.ok(("would change" if run.dry_run else "changed") + f" {len(changes)} files in {target}")
