"""Presentation only. Logs go to stderr (stdout is kept for --json); CI changes how things look, never what runs.

On GitHub Actions a step is folded with ::group::; on a TTY rich colours it; elsewhere (cron logs) plain lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator

from rich.console import Console

_console = Console(stderr=True, highlight=False, soft_wrap=True)
_github = os.environ.get("GITHUB_ACTIONS") == "true"


def command(text: str, *, skipped: bool = False) -> None:
    """The echo of one external command, before it runs."""
    suffix = "   [dry-run: not run]" if skipped else ""
    _console.print(f"+ {text}{suffix}", style="dim" if not skipped else "yellow", markup=False)


def info(text: str) -> None:
    _console.print(text, markup=False)


def warn(text: str) -> None:
    _console.print(f"warning: {text}", style="yellow", markup=False)


def ok(text: str) -> None:
    _console.print(text, style="green", markup=False)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """A named step with its wall time; folded on GitHub."""
    start = time.monotonic()
    if _github:
        print(f"::group::{title}", file=sys.stderr, flush=True)
    else:
        _console.print(f"» {title}", style="bold", markup=False)
    try:
        yield
    finally:
        took = time.monotonic() - start
        if _github:
            print("::endgroup::", file=sys.stderr, flush=True)
        _console.print(f"  {title}: {took:.2f}s", style="dim", markup=False)


def emit_json(obj: object) -> None:
    """The one machine-readable object a task prints on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()
