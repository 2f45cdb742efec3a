"""Presentation only. Logs go to stderr (stdout is kept for --json); CI changes how things look, never what runs.

On a TTY rich colours the lines; elsewhere (cron logs, CI) they are plain, and rich is not even imported. On
GitHub Actions a step is folded with ::group::. A task that runs unattended (`invoke nightly` from cron) also
writes every line, timestamped, to a log file (`log_to`), and timestamps its stderr lines when not on a TTY.

No line shows a secret (`mask`): every value the task knows is secret (`conceal`: secrets files, stored logins,
our environment's variables whose name looks secret), credentials in URLs (`https://user:***@host`) and the
value of every `NAME=VALUE` whose name holds TOKEN, KEY, SECRET, PASSWORD, PASSWD, AUTH or CREDENTIAL are
shown as `***`. The echo of a command (proc.shown) masks each argument the same way. A result on stdout is
data and is left as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

_github = os.environ.get("GITHUB_ACTIONS") == "true"
_log = threading.local()  # per thread: .file (an open log file), .path, .stamp (timestamp stderr), .console, .output
_LOG_FIELDS = ("file", "path", "stamp", "console", "output")
_writing = threading.Lock()  # a line is written whole, whichever thread writes it


def _get(name: str, default: object = None) -> object:
    return getattr(_log, name, default)


@contextlib.contextmanager
def log_to(path: Path | None, *, console: bool = True, output: bool = True) -> Iterator[None]:
    """Also append every line of this thread (timestamped) to `path` for the block; None: no log file.
    console=False: the lines go to the file only (a batch job's commands, while the console shows progress).
    output=False: only the commands' own output goes to the file only (a compile's, while `status` shows its
    progress); the task's lines and the echo of each command still reach the console."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    before = context()  # what the block ends with: a log around this one, or none
    # cron's `>> LOG 2>&1`: stderr already goes to the log, so each line goes there once, timestamped
    same = _is_stderr(path)
    with contextlib.nullcontext() if same else open(path, "a", encoding="utf-8", errors="replace") as fh:
        if same:
            _log.path, _log.stamp = path, True
        else:
            _log.file, _log.path, _log.stamp, _log.console = fh, path, not sys.stderr.isatty(), console
            _log.output = output
        try:
            yield
        finally:
            for name in _LOG_FIELDS:
                if name in before:
                    setattr(_log, name, before[name])
                elif hasattr(_log, name):
                    delattr(_log, name)


def _is_stderr(path: Path) -> bool:
    try:
        ours, theirs = os.fstat(sys.stderr.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


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
    text = mask(text)
    with _writing:
        _write(text, style)


# ---- masking -----------------------------------------------------------------------------------------------
MASK = "***"
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "AUTH", "CREDENTIAL")
MASK_MIN = 4  # a known value shorter than this is no secret, and masking it would garble ordinary words
_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.I)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s/@:'\"]*)(?::([^\s/@'\"]*))?@")
# NAME=VALUE in free text (a value quoted, or up to a blank, quote or shell separator); not `a.b.key=` (a label).
_PAIR = re.compile(rf"(?<![\w.$/-])({_NAME})=('[^']*'|\"[^\"]*\"|[^\s'\";&|]+)")
# One whole argument: --secret-option=VALUE, or [--option=]NAME=VALUE (-e X_TOKEN=v, --build-arg=X_TOKEN=v).
_OPTION_ARG = re.compile(r"^(--?[A-Za-z][\w-]*)=(.*)$", re.S)
_PAIR_ARG = re.compile(rf"^(--?[\w-]*=)?({_NAME})=(.*)$", re.S)
# An option whose next argument is its secret value (--password X, --token X); not --password-stdin, --no-auth.
_VALUE_OPTION = re.compile(r"^--?(?!no-)[\w-]*(token|key|secret|password|passwd|auth|credentials?)$", re.I)
_known: frozenset[str] = frozenset()
_known_re: re.Pattern[str] | None = None
_environment_read = False


def secret_name(name: str) -> bool:
    """Whether a variable or option name says its value is secret (HF_TOKEN, api_key, --password)."""
    return _SECRET_NAME.search(name) is not None


def secret_variable(name: str, value: str) -> bool:
    """Whether an environment variable holds a secret: its name looks secret, and it is not forkdev's own config
    (INVOKE_CONTAINER_SECRETS names a folder) nor a path (SSH_AUTH_SOCK, a socket's)."""
    return secret_name(name) and not name.startswith("INVOKE_") and not value.startswith(("/", "~", "."))


def conceal(values) -> None:
    """Mask these values (secrets the task has read) in every line from now on."""
    global _known, _known_re
    new = _known | {v for v in values if isinstance(v, str) and len(v) >= MASK_MIN}
    if new != _known:
        _known = frozenset(new)
        _known_re = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))


def _environment() -> None:
    """Our own environment's secret-looking variables (HF_TOKEN, GITHUB_TOKEN, ...), read once."""
    global _environment_read
    if not _environment_read:
        _environment_read = True
        conceal(v for k, v in os.environ.items() if secret_variable(k, v))


def _url(m: re.Match[str]) -> str:
    scheme, user, password = m.groups()
    if password is not None:
        return f"{scheme}{user}:{MASK}@"
    return f"{scheme}{MASK}@" if scheme.lower() in ("http://", "https://") and user else m.group(0)


def _pair(m: re.Match[str]) -> str:
    return f"{m.group(1)}={MASK}" if secret_name(m.group(1)) else m.group(0)


def mask(text: str) -> str:
    """`text` with every secret (see the module's doc) shown as ***."""
    _environment()
    if _known_re is not None:
        text = _known_re.sub(MASK, text)
    if "://" in text:
        text = _URL.sub(_url, text)
    if "=" in text:
        text = _PAIR.sub(_pair, text)
    return text


def mask_argv(argv) -> list[str]:
    """Each argument of a command masked as `mask` does, a secret option's value (`--password X`, `--token=X`)
    and a `NAME=VALUE` argument's whole value (spaces and all) included."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        option, pair = _OPTION_ARG.match(arg), _PAIR_ARG.match(arg)
        if option and secret_name(option.group(1)):
            arg = f"{option.group(1)}={MASK}"
        elif pair and secret_name(pair.group(2)):
            arg = f"{pair.group(1) or ''}{pair.group(2)}={MASK}"
        else:
            hide_next = _VALUE_OPTION.match(arg) is not None
        out.append(mask(arg))
    return out


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
    """A line of a command's own output, passed through (a build's log); to the log file only inside
    `log_to(..., output=False)`."""
    fh = _get("file")
    if fh is None or _get("output", True):
        _line(text)
        return
    with _writing:
        fh.write(_stamp() + mask(text) + "\n")  # type: ignore[attr-defined]
        fh.flush()  # type: ignore[attr-defined]


def status(text: str, *, last: bool = False) -> None:
    """A progress line on the console only (never in a log file): on a TTY it overwrites itself until `last`;
    elsewhere it is a line of its own (the caller says how often)."""
    text = mask(text)
    with _writing:
        if sys.stderr.isatty():
            sys.stderr.write("\r" + text + "\x1b[K" + ("\n" if last else ""))
            sys.stderr.flush()
        else:
            print((_stamp() if _get("stamp") else "") + text, file=sys.stderr, flush=True)


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
                bar.console.print(mask(line), style="yellow" if failed else None, markup=False)
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
