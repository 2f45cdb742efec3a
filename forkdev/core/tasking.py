"""How every task is declared: one decorator, the flags all tasks share, and flags over config.

Short flags are off everywhere (invoke would otherwise give `-d` to --dry-run in one task and to --dest in
another). A boolean that config can switch on has a `--no-X` twin, so the command line always wins.
"""

from __future__ import annotations

import inspect
import shlex
import sys
from typing import Any

import invoke

from . import config, validate
from .errors import Failure
from .proc import Runner

SHARED_HELP = {
    "dry_run": "show the plan; change nothing (read-only probes still run)",
    "json": "print one JSON object on stdout (logs stay on stderr)",
    "quiet": "do not echo the commands that are run",
}


def task(help: dict[str, str] | None = None, **kwargs: Any):
    """invoke.task without automatic short flags; the shared flags' help is filled in where the task has them."""
    kwargs.setdefault("auto_shortflags", False)

    def declare(fn):
        params = inspect.signature(fn).parameters
        merged = {k: v for k, v in SHARED_HELP.items() if k in params} | dict(help or {})
        return invoke.task(help=merged, **kwargs)(fn)

    return declare


def toggle(name: str, on: bool, off: bool, configured: Any) -> bool:
    """--X / --no-X over the config value."""
    if on and off:
        raise Failure(f"--{name} and --no-{name} contradict each other; pass one of them")
    return True if on else False if off else bool(configured)


def runner(c: Any, dry_run: bool = False, quiet: bool = False) -> Runner:
    """The process seam for a task: dry-run from the flag or invoke's --dry; echo unless --quiet. Every task
    starts here, so a setting of the old `run:` section is refused here, before the task does anything."""
    moved = config.moved_setting(c.config.run)
    if moved:
        raise Failure(moved)
    return Runner(dry_run=config.dry_run(c, dry_run), echo=not quiet)


def remainder(c: Any) -> list[str]:
    """The words after a standalone `--`, exactly as given: invoke only keeps them joined by spaces (its
    `c.remainder`), which loses the quoting of `-- python3 -c "import a; print(1)"`."""
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1 :]
    return shlex.split(c.remainder) if getattr(c, "remainder", "") else []


def setting(flag: Any, configured: Any, flag_name: str, key: str, optional: bool = False) -> str | None:
    """The flag's value, else config `key`'s, checked by validate.plain (text, no NUL or line break, not starting
    with '-') and named as the user set it. With `optional`, an empty config value is None ("use the default")."""
    if flag not in (None, ""):
        return validate.plain(flag, flag_name, "pass a path")
    if optional and configured in (None, ""):
        return None
    return validate.plain(configured, config.named(key, configured), f"set {key} to a path")
