"""Secrets files (`extras/secrets/*.env`) and explicit variables, validated and assembled for a container.

A file holds `KEY=VALUE` lines, `#` comments and blank lines; anything else is an error naming file:line. A
file git tracks is refused (a secret in history is a leaked secret), and so is one git does not ignore (`git add
-A` would put it there; the tool refuses rather than warns, since fork-sync's --autostash also saves such files
as commits); `*.env.example` files are templates and never read. Nothing is read through a symlink that leads
out of the checkout (core/secrets.py says which paths are secret, and keeps them out of everything shipped).
Values never reach a command line: they are written, shell-quoted, to one private file that the container reads
at start (see container.py), so neither the echoed command, nor `inspect`, nor a log holds them.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import secrets, ui
from .errors import Failure
from .gitrepo import Repo, z_paths
from .proc import CommandFailed

KEY = secrets.KEY


@dataclass(frozen=True)
class Var:
    key: str
    value: str
    origin: str  # file:line, or "--env"


def parse(text: str, origin: str) -> list[Var]:
    found = []
    for number, key, value in secrets.lines(text):
        if key is None:
            raise Failure(f"{origin}:{number}: {value}")
        found.append(Var(key, value, f"{origin}:{number}"))
    return found


def explicit(items: list[str], origin: str = "--env") -> list[Var]:
    """`KEY=VALUE` (or `KEY`, taking our own environment's value) from flags or config."""
    found = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not KEY.match(key):
            raise Failure(f"{origin} '{key[:40]}' is not a variable name; write {origin} NAME=value")
        if not sep:
            if key not in os.environ:
                raise Failure(f"{origin} {key}: no value given and {key} is not set here; write {origin} {key}=value")
            value = os.environ[key]
        found.append(Var(key, value, origin))
    ui.conceal(v.value for v in found if ui.secret_name(v.key))
    return found


def secrets_files(repo: Repo, folder: object) -> list[Path]:
    """The checkout's secrets files: `*.env` in the secrets directory (config container.secrets), never `*.env.example`.
    Refused: a directory given as an absolute path, by '..' or through a symlink out of the checkout, one that is
    a file, a secrets file that is a symlink leading out of the checkout or not a regular file, one git tracks
    (its secrets are in the history) and one git does not ignore (a `git add -A` away from it)."""
    rel = secrets.relative(folder, "container.secrets")
    base = secrets.located(repo.path, rel, "container.secrets")
    if base is None:
        return []
    if not base.is_dir():
        raise Failure(f"container.secrets '{rel}' is a file; it names the directory that holds the *.env files")
    files, checked = [], []  # checked: the files and, for a link, what it leads to (inside the checkout)
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if not entry.name.endswith(".env") or entry.name.endswith(secrets.EXAMPLE):
            continue
        path = f"{rel}/{entry.name}"
        secrets.located(repo.path, path, "the secrets file")
        if not os.path.isfile(entry.path):
            raise Failure(f"secrets file {path} is not a regular file; make it one or rename it")
        files.append(path)
        checked += [path] + ([os.path.relpath(os.path.realpath(entry.path), repo.path)] if entry.is_symlink() else [])
    if files:
        listed = "".join(f"./{f}\0" for f in checked).encode("utf-8", "surrogateescape")  # './': never magic
        literal = {"GIT_LITERAL_PATHSPECS": "1"}  # a file named '*.env' or ':x.env' is that file, not a pattern
        tracked = z_paths(repo.git("ls-files", "-z", "--", *checked, env=literal).stdout)
        if tracked:
            raise Failure(
                f"{tracked[0]} is tracked by git, so its secrets are in the repository's history; remove it with "
                f"'git rm --cached {tracked[0]}', add it to .gitignore, and rotate those secrets"
            )
        res = repo.git("check-ignore", "-z", "--stdin", input=listed, check=False)
        if res.returncode not in (0, 1):  # 1: none of them is ignored
            raise CommandFailed(res)
        ignored = {p.removeprefix("./") for p in z_paths(res.stdout)}
        loose = [f for f in checked if f not in ignored]
        if loose:
            raise Failure(
                f"{loose[0]} is not ignored by git, so 'git add -A' would put its secrets in the history; add "
                f"'{rel}/*.env' to .gitignore (or .git/info/exclude), then run again"
            )
    return [repo.path / f for f in files]


def load(files: list[Path]) -> list[Var]:
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise Failure(f"{path}: not UTF-8 text; save it as UTF-8") from None
        except OSError as exc:
            raise Failure(f"cannot read secrets file {path} ({exc.strerror})") from None
        found += parse(text, str(path))
    secrets.conceal((v.key, v.value, v.origin) for v in found)
    return found


def script(variables: list[Var]) -> str:
    """The variables as `export KEY='value'` lines, later ones winning (explicit after files)."""
    merged: dict[str, str] = {}
    for var in variables:
        merged[var.key] = var.value
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in merged.items())
