"""Secrets files (`extras/secrets/*.env`) and explicit variables, validated and assembled for a container.

A file holds `KEY=VALUE` lines, `#` comments and blank lines; anything else is an error naming file:line. A
file git tracks is refused (a secret in history is a leaked secret); `*.env.example` files are templates and never
read. Values never reach a command line: they are written, shell-quoted, to one private file that the container
reads at start (see container.py), so neither the echoed command, nor `inspect`, nor a log holds them.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure
from .gitrepo import Repo

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Var:
    key: str
    value: str
    origin: str  # file:line, or "--env"


def parse(text: str, origin: str) -> list[Var]:
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()  # as docker's --env-file: leading blanks go, the value is kept as written
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{origin}:{number}"
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not KEY.match(key):
            raise Failure(f"{where}: not a KEY=VALUE line; write NAME=value (letters, digits, _), or # a comment")
        if "\0" in value:
            raise Failure(f"{where}: the value of {key} holds a NUL byte; remove it")
        found.append(Var(key, value, where))
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
    return found


def secrets_files(repo: Repo, folder: str) -> list[Path]:
    """The checkout's secrets files (never *.env.example), refused when git tracks one."""
    base = repo.path / folder
    if not base.is_dir():
        return []
    files = sorted(p for p in base.glob("*.env") if p.is_file() and not p.name.endswith(".env.example"))
    if files:
        rel = [str(p.relative_to(repo.path)) for p in files]
        tracked = repo.git("ls-files", "-z", "--", *rel).stdout.decode("utf-8", "surrogateescape").split("\0")
        tracked = [t for t in tracked if t]
        if tracked:
            raise Failure(
                f"{tracked[0]} is tracked by git, so its secrets are in the repository's history; remove it with "
                f"'git rm --cached {tracked[0]}', add it to .gitignore, and rotate those secrets"
            )
    return files


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
    return found


def script(variables: list[Var]) -> str:
    """The variables as `export KEY='value'` lines, later ones winning (explicit after files)."""
    merged: dict[str, str] = {}
    for var in variables:
        merged[var.key] = var.value
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in merged.items())
