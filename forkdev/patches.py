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
from .core.fsutil import inside, replace_files
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.tasking import task
from .overlay import resolve_dest

DIFF_PATH = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(?P<path>\S+)", re.M)


@dataclass(frozen=True)
class Patch:
    name: str
    diff: bytes  # CRLF normalised
    skip_in_overlay: bool
    fallback: dict | None

    def paths(self) -> set[str]:
        found = {m["path"] for m in DIFF_PATH.finditer(self.diff.decode("utf-8", "replace"))}
        found.discard("/dev/null")
        if self.fallback:
            found.add(self.fallback["file"])
        return found


def load(registry: Path) -> list[Patch]:
    if not registry.is_file():
        raise Failure(f"no patch registry at '{registry}'; create it or pass --registry FILE")
    try:
        data = jsonlib.loads(registry.read_text())
    except ValueError as exc:
        raise Failure(f"{registry} is not valid JSON ({exc}); fix it") from None
    entries = data.get("patches") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise Failure(f'{registry} has no "patches" list; write {{"patches": [{{"name", "diff"}}, ...]}}')
    patches = []
    for i, e in enumerate(entries):
        where = f"{registry} entry {i + 1}"
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("diff"), str):
            raise Failure(f'{where} needs a "name" and a "diff" (a path next to the registry)')
        diff = inside(registry.parent, e["diff"], f"{where}: diff")
        if not diff.is_file():
            raise Failure(f"{where} ({e['name']}): diff file '{e['diff']}' does not exist next to the registry")
        fb = e.get("fallback")
        if fb is not None and (
            not isinstance(fb, dict)
            or fb.get("type") != "regex_replace"
            or not all(isinstance(fb.get(k), str) for k in ("file", "pattern", "replacement"))
        ):
            raise Failure(
                f'{where} ({e["name"]}): a fallback is {{"type": "regex_replace", "file", "pattern", "replacement"}}'
            )
        patches.append(Patch(e["name"], diff.read_bytes().replace(b"\r\n", b"\n"), bool(e.get("skip_in_overlay")), fb))
    return patches


class Stage:
    """A scratch copy of the touched files, where `git apply` runs outside any repository."""

    def __init__(self, target: Path, paths: set[str], run: Runner) -> None:
        self.run = run
        self.tmp = Path(tempfile.mkdtemp(prefix="forkdev-patches-"))
        self.root = self.tmp / "tree"
        self.root.mkdir()
        self.original: dict[str, bytes | None] = {}
        for rel in sorted(paths):
            src = inside(target, rel, "patched path")
            self.original[rel] = src.read_bytes() if src.is_file() else None
            if src.is_file():
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, self.root / rel)
        # GIT_CEILING_DIRECTORIES keeps git from finding a repository above the scratch tree.
        self.env = {"GIT_CEILING_DIRECTORIES": str(self.tmp)}

    def git_apply(self, patch: Patch, *flags: str, root: Path | None = None):
        diff = self.tmp / "current.diff"
        diff.write_bytes(patch.diff)
        return self.run(
            ["git", "apply", *flags, str(diff)], cwd=root or self.root, env=self.env, mutates=False, check=False
        )

    def series_applies(self, patches: list[Patch], *flags: str) -> bool:
        """Whether the patches apply one after another, tried on a scratch copy."""
        scratch = self.tmp / "series"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(self.root, scratch)
        return all(self.git_apply(p, *flags, root=scratch).ok for p in patches)

    def rejected(self, patch: Patch) -> str:
        """The hunks that do not apply, as `git apply --reject` writes them."""
        scratch = self.tmp / "reject"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(self.root, scratch)
        res = self.git_apply(patch, "--reject", root=scratch)
        rej = [p.read_text(errors="replace") for p in sorted(scratch.rglob("*.rej"))]
        return "\n".join(rej) or res.err

    def fallback(self, patch: Patch) -> str | None:
        """Apply a regex_replace fallback; None on success, else why it failed."""
        fb = patch.fallback
        path = self.root / fb["file"]
        if not path.is_file():
            return f"fallback file {fb['file']} does not exist"
        text = path.read_text()
        try:
            new, count = re.subn(fb["pattern"], fb["replacement"], text, flags=re.M)
        except re.error as exc:
            return f"fallback pattern is not a valid regex ({exc})"
        if count == 0:
            return f"fallback pattern does not match {fb['file']}"
        if fb["file"].endswith(".py"):
            try:
                compile(new, fb["file"], "exec")
            except SyntaxError as exc:
                return f"after the fallback, {fb['file']} does not compile (line {exc.lineno}: {exc.msg})"
        path.write_text(new)
        return None

    def changes(self) -> dict[str, tuple[bytes, int] | None]:
        out: dict[str, tuple[bytes, int] | None] = {}
        for rel, before in self.original.items():
            path = self.root / rel
            now = path.read_bytes() if path.is_file() else None
            if now != before:
                out[rel] = None if now is None else (now, path.stat().st_mode & 0o777)
        for path in self.root.rglob("*"):  # files a patch created outside the paths it names (rare)
            rel = str(path.relative_to(self.root))
            if path.is_file() and rel not in self.original:
                out[rel] = (path.read_bytes(), path.stat().st_mode & 0o777)
        return out

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


def resolve_into(c, repo: Repo, into: str, run: Runner) -> tuple[Path, bool]:
    """(directory, overlay?) for --into: worktree (default), overlay, checkout, or a path."""
    if into == "checkout":
        return repo.path, False
    if into == "overlay":
        return resolve_dest(c, repo, c.config.overlay.dest), True
    if into == "worktree" and run.dry_run:
        ui.info("--check: checking against the checkout's files (a worktree of HEAD is made only to apply)")
        return repo.path, False
    if into == "worktree":
        path = config.cache_path(config.cache_dir(c), "worktrees", str(repo.path))
        if path.exists():
            repo.git("worktree", "remove", "--force", str(path), mutates=True, check=False)
        repo.git("worktree", "prune", mutates=True)
        repo.git("worktree", "add", "--quiet", "--detach", str(path), "HEAD", mutates=True)
        return path, False
    path = Path(os.path.expanduser(into))
    if not path.is_dir():
        raise Failure(f"--into '{into}' is not a directory; use worktree, overlay, checkout or a directory")
    return path, False


@task(
    help={
        "repo": "the checkout (default: config patches.repo, '.')",
        "registry": "the registry JSON (default: config patches.registry, relative to the repo)",
        "into": "where to apply: worktree (a fresh worktree of HEAD, the default), overlay, checkout, or a path",
        "check": "report what would happen; change nothing",
        "reverse": "revert the patches, last first",
        "json": "print one JSON object on stdout",
    },
)
def patches(c, repo=None, registry=None, into=None, check=False, reverse=False, json=False):
    """Apply the fork's ordered .diff patches, all or nothing; any failure exits non-zero."""
    run = Runner(dry_run=config.dry_run(c, check))
    r = Repo.open(repo or c.config.patches.repo, run)
    reg = Path(os.path.expanduser(registry or c.config.patches.registry))
    reg = reg if reg.is_absolute() else r.path / reg
    found = load(reg)
    target, in_overlay = resolve_into(c, r, into or c.config.patches.into, run)
    chosen = [p for p in found if not (in_overlay and p.skip_in_overlay)]
    if run.dry_run and not target.exists():
        raise Failure(f"dry run stops here: {target} does not exist yet")
    stage = Stage(target, set().union(*(p.paths() for p in chosen)), run)
    try:
        report = apply_all(chosen, stage, reverse)
        changes = stage.changes()
    finally:
        stage.close()
    failed = [name for name, status, _ in report if status == "failed"]
    for name, status, detail in report:
        (ui.warn if status == "failed" else ui.info)(f"{status:>20}  {name}" + (f"\n{detail}" if detail else ""))
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
    ui.ok(("would change" if run.dry_run else "changed") + f" {len(changes)} files in {target}")
