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
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

_github = os.environ.get("GITHUB_ACTIONS") == "true"
_log = threading.local()  # per thread: .file (an open log file), .path, .stamp (timestamp stderr), .console
_LOG_FIELDS = ("file", "path", "stamp", "console")
_writing = threading.Lock()  # a line is written whole, whichever thread writes it


def _get(name: str, default: object = None) -> object:
    return getattr(_log, name, default)


@contextlib.contextmanager
def log_to(path: Path | None, *, console: bool = True) -> Iterator[None]:
    """Also append every line of this thread (timestamped) to `path` for the block; None: no log file.
    console=False: the lines go to the file only (a batch job's commands, while the console shows progress)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    before = context()  # what the block ends with: a log around this one, or none
    with open(path, "a", encoding="utf-8", errors="replace") as fh:
        _log.file, _log.path, _log.stamp, _log.console = fh, path, not sys.stderr.isatty(), console
        try:
            yield
        finally:
            for name in _LOG_FIELDS:
                if name in before:
                    setattr(_log, name, before[name])
                elif hasattr(_log, name):
                    delattr(_log, name)


def current_log() -> Path | None:
    return _get("path")  # type: ignore[return-value]


def context() -> dict[str, object]:
    """This thread's log settings, for a helper thread to `adopt` (its lines then go where the caller's go)."""
    return {name: getattr(_log, name) for name in _LOG_FIELDS if hasattr(_log, name)}


def adopt(ctx: dict[str, object]) -> None:
    for name, value in ctx.items():
        setattr(_log, name, value)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z ")


@cache
def _console():
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _line(text: str, style: str | None = None) -> None:
    with _writing:
        _write(text, style)


def _write(text: str, style: str | None) -> None:
    fh = _get("file")
    if fh is not None:
        fh.write(_stamp() + text + "\n")  # type: ignore[attr-defined]
        fh.flush()  # type: ignore[attr-defined]
    if not _get("console", True):
        return
    console = _console()
    if console is None:
        print((_stamp() if _get("stamp") else "") + text, file=sys.stderr, flush=True)
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


@contextlib.contextmanager
def progress(total: int, title: str) -> Iterator:
    """advance(line, failed=False) once per finished unit: a rich progress bar above the lines on a TTY, plain
    numbered lines otherwise. Callable from worker threads."""
    lock = threading.Lock()
    done = [0]
    console = _console()
    if console is None:

        def plain(line: str, failed: bool = False) -> None:
            with lock:
                done[0] += 1
                (warn if failed else info)(f"[{done[0]:>{len(str(total))}}/{total}] {line}")

        yield plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task_id = bar.add_task(title, total=total)

        def fancy(line: str, failed: bool = False) -> None:
            with lock:
                bar.console.print(line, style="yellow" if failed else None, markup=False)
                bar.advance(task_id)

        yield fancy


def table(header: list[str], rows: list[list[str]]) -> None:
    """A table on stderr: rich on a TTY, tab-separated lines otherwise."""
    console = _console()
    if console is None:
        for row in [header, *rows]:
            _line("\t".join(row))
        return
    from rich.table import Table

    t = Table(*header)
    for row in rows:
        t.add_row(*row)
    console.print(t)
