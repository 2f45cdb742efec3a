"""Presentation only. Logs go to stderr (stdout is kept for --json); CI changes how things look, never what runs.

On a TTY rich colours the lines; elsewhere (cron logs, CI) they are plain, and rich is not even imported. On
GitHub Actions a step is folded with ::group::. A task that runs unattended (`invoke nightly` from cron) also
writes every line, timestamped, to a log file (`log_to`), and timestamps its stderr lines when not on a TTY.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

_github = os.environ.get("GITHUB_ACTIONS") == "true"
_log: dict[str, object] = {}  # "file": an open log file, "path": its path, "stamp": timestamp stderr lines


@contextlib.contextmanager
def log_to(path: Path | None) -> Iterator[None]:
    """Also append every line (timestamped) to `path` for the block; None: no log file."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", errors="replace") as fh:
        _log.update(file=fh, path=path, stamp=not sys.stderr.isatty())
        try:
            yield
        finally:
            _log.clear()


def current_log() -> Path | None:
    return _log.get("path")  # type: ignore[return-value]


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z ")


@cache
def _console():
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _line(text: str, style: str | None = None) -> None:
    fh = _log.get("file")
    if fh is not None:
        fh.write(_stamp() + text + "\n")  # type: ignore[attr-defined]
        fh.flush()  # type: ignore[attr-defined]
    console = _console()
    if console is None:
        print((_stamp() if _log.get("stamp") else "") + text, file=sys.stderr, flush=True)
    else:
        console.print(text, style=style, markup=False)


def output(text: str) -> None:
    """A line of a command's own output, passed through (a build's log)."""
    _line(text)


def command(text: str, *, skipped: bool = False) -> None:
    """The echo of one external command, before it runs."""
    _line(f"+ {text}" + ("   [dry-run: not run]" if skipped else ""), "yellow" if skipped else "dim")


def info(text: str) -> None:
    _line(text)


def warn(text: str) -> None:
    _line(f"warning: {text}", "yellow")


def ok(text: str) -> None:
    _line(text, "green")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """A named step with its wall time; folded on GitHub."""
    start = time.monotonic()
    _line(f"::group::{title}" if _github else f"» {title}", None if _github else "bold")
    try:
        yield
    finally:
        if _github:
            _line("::endgroup::")
        _line(f"  {title}: {time.monotonic() - start:.2f}s", "dim")


def result(text: str) -> None:
    """The task's result (an image reference, a path) on stdout, so that IMAGE=$(invoke dev ...) holds it."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def emit_json(obj: object) -> None:
    """The one machine-readable object a task prints on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()
