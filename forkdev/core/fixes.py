"""Known build breakages of an exported upstream commit, fixed in its build context: one registry of named fixes,
each applied only when it matches, and every application reported for its commit (none is silent).

A fix sees the exported context (a scratch copy, never a user's checkout), the build arguments and the commit's
version; it changes the context or the arguments and returns one line saying what it did.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from .proc import Runner


@dataclass(frozen=True)
class Context:
    root: Path  # the exported tree
    dockerfile: str  # its Dockerfile's text
    commit: str
    version: str
    version_env: str  # the build argument setuptools-scm reads (SETUPTOOLS_SCM_PRETEND_VERSION)
    run: Runner


@dataclass(frozen=True)
class Fix:
    name: str
    why: str
    matches: Callable[[Context], bool]
    apply: Callable[[Context, MutableMapping[str, str]], str]


def _mentions(ctx: Context, words: tuple[str, ...], *files: str) -> bool:
    for name in files:
        try:
            text = (ctx.root / name).read_text(errors="replace")
        except OSError:
            continue
        if any(word in text for word in words):
            return True
    return False


def _pretend_version(ctx: Context, args: MutableMapping[str, str]) -> str:
    args[ctx.version_env] = ctx.version
    return f"--build-arg {ctx.version_env}={ctx.version}"


def _one_commit_git(ctx: Context, args: MutableMapping[str, str]) -> str:
    """A .git holding one commit of the exported tree, tagged with the version, for Dockerfiles that read it."""
    git = ["git", "-C", str(ctx.root), "-c", "user.name=forkdev", "-c", "user.email=forkdev@localhost"]
    ctx.run([*git, "init", "-q"], mutates=False)
    ctx.run([*git, "add", "-A"], mutates=False)
    ctx.run([*git, "commit", "-q", "--no-verify", "-m", f"upstream {ctx.commit}"], mutates=False)
    ctx.run([*git, "tag", f"v{ctx.version.split('+')[0]}"], mutates=False)
    return f"made a one-commit .git tagged v{ctx.version.split('+')[0]} (the Dockerfile reads .git)"


FIXES: tuple[Fix, ...] = (
    Fix(
        name="scm-version",
        why="setuptools-scm finds no .git in an exported context and would fail or guess 0.0.0",
        matches=lambda ctx: any(
            _mentions(ctx, word, "pyproject.toml", "setup.py", "setup.cfg")
            for word in ("setuptools_scm", "setuptools-scm")
        ),
        apply=_pretend_version,
    ),
    Fix(
        name="git-for-dockerfile",
        why="the Dockerfile copies or mounts .git, which an exported context does not have",
        matches=lambda ctx: (
            ".git" in ctx.dockerfile.replace(".gitignore", "").replace(".github", "")
            and not (ctx.root / ".git").exists()
        ),
        apply=_one_commit_git,
    ),
)


def apply(ctx: Context, args: MutableMapping[str, str]) -> list[str]:
    """Apply every matching fix; returns 'name: what it did' for each."""
    return [f"{fix.name}: {fix.apply(ctx, args)}" for fix in FIXES if fix.matches(ctx)]
