"""The one process seam: every external command the tool runs goes through `Runner.__call__`.

It echoes `+ argv` (quoted once, with shlex.join; an argument that is a multi-line script shows as one short
placeholder) before running, skips commands that change something when dry-run is on (read-only probes still
run, so a dry run can show a real plan), and turns a missing executable, a failed command or one that ran past
its timeout into a `Failure` sentence. Values that must never be shown (secrets) travel in `secret_env`: the
child gets them in its environment, the echo never contains them, and ui masks them in every later line (the
command's own output too). Whatever else looks secret in an argument (`X_TOKEN=...`, `https://user:pw@`,
`--password X`) is masked in the echo as well (ui.mask_argv). The rest of the code hands argv lists to this
runner. It is the standard library's subprocess on purpose: it runs on every `invoke dev`, whose whole budget is
a few tenths of a second, and importing plumbum cost 40-50 ms of it (measured with `python -X importtime`).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import ui
from .errors import Failure


@dataclass(frozen=True)
class Result:
    """What a command did: its argv, exit status and output (dry: not run)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    dry: bool = False

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace").strip()

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()

    @property
    def reason(self) -> str:
        """The line that says why it failed: git's first 'fatal:'/'error:' line, else the last line of stderr,
        else of stdout (some git commands report there), else the exit status."""
        for text in (self.err, self.out):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1])
        return f"exit status {self.returncode}, no output"

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def shown(argv: Sequence[str]) -> str:
    """argv as echoed: shell-quoted, secrets masked (ui.mask_argv), a multi-line script argument shortened to one
    placeholder."""
    parts = []
    for arg in ui.mask_argv([str(a) for a in argv]):
        if "\n" in arg:
            lines = [line for line in arg.splitlines() if line.strip()]
            arg = f"<{len(lines)}-line script>"
        parts.append(arg)
    return shlex.join(parts)


class CommandFailed(Failure):
    def __init__(self, result: Result) -> None:
        super().__init__(f"'{shown(result.argv)}' failed with exit {result.returncode}: {result.reason}")
        self.result = result


class TimedOut(Failure):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(
            f"'{shown(argv)}' did not finish within {timeout:g}s and was stopped; check that what it talks to "
            "answers, or raise the timeout (config registry.timeout for registry calls, smoke.timeout for smoke)"
        )


@dataclass(frozen=True)
class Runner:
    """The one process seam: echoes every command, honours the dry run, and runs it."""

    dry_run: bool = False
    echo: bool = True
    shielded: bool = False  # children in their own session: a Ctrl-C to our process group does not reach them

    def __call__(
        self,
        argv: Sequence[str],
        *,
        mutates: bool = True,
        check: bool = True,
        capture: bool = True,
        input: bytes | BinaryIO | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        secret_env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        interactive: bool = False,
        stream: bool = False,
        lines: Callable[[str], None] | None = None,
    ) -> Result:
        """Run argv. `mutates=False` marks a read-only probe, which runs even under dry-run.

        capture=False: the command's output goes to our stderr (stdout stays clean for --json).
        stream=True: its output (stdout and stderr) is passed on line by line through ui, so it also reaches the
        log file of an unattended run; the last lines are kept for the failure's reason. `lines` sees each of
        them too, as it comes (a full build notes what its builder made, for a later run to remove).
        interactive=True: the command gets our terminal (stdin, stdout, stderr and their TTY) and its exit code
        is returned as is; nothing is captured.
        input: bytes, or an open file (a pipe) the command reads as its stdin, in pieces (a big tar stream).
        """
        argv = tuple(str(a) for a in argv)
        source = None if input is None or isinstance(input, bytes) else input
        if source is not None:
            input = None
        skipped = self.dry_run and mutates
        if secret_env:
            ui.conceal(secret_env.values())
        if self.echo:
            text = shown(argv)
            ui.command(text if cwd is None else f"(cd {shlex.quote(str(cwd))}) {text}", skipped=skipped)
        if skipped:
            return Result(argv, 0, b"", b"", dry=True)
        exe = shutil.which(argv[0]) if "/" not in argv[0] else argv[0]
        if exe is None:
            raise Failure(f"'{argv[0]}' is not installed or not on PATH; install it and retry")
        full_env = {**os.environ, **(env or {}), **(secret_env or {})}
        if interactive:
            stdin, stdout, stderr = None, None, None
        elif stream:
            stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
            stdout, stderr = subprocess.PIPE, subprocess.STDOUT
        else:
            stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
            stdout = subprocess.PIPE if capture else 2
            stderr = subprocess.PIPE if capture else None
        try:
            proc = subprocess.Popen(
                [str(exe), *argv[1:]],
                stdin=source if source is not None else stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=str(cwd) if cwd is not None else None,
                env=full_env,
                start_new_session=self.shielded,
            )
        except OSError as exc:
            raise Failure(
                f"cannot start '{argv[0]}' ({exc.strerror}); check that it is installed and runnable"
            ) from None
        # An interactive child owns the terminal: Ctrl-C is its to handle (docker/podman forward it to the
        # container), so we wait it out instead of dying first and leaving it behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if interactive else None
        _track(proc, True)
        try:
            if stream:
                out, err = b"", _pass_through(proc, input, timeout, lines)
            else:
                out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise TimedOut(argv, timeout or 0) from None
        except BaseException:
            _stop(proc)
            raise
        finally:
            _track(proc, False)
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        result = Result(argv, proc.returncode, out or b"", err or b"")
        if check and not result.ok:
            raise CommandFailed(result)
        return result


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent calls at once and return their results in order. Each one mostly waits on its own child
    process (git, the engine), so threads suffice; the first call runs in this thread. The first failure in call
    order is raised once every call has ended. An interrupt (Ctrl-C, or SIGINT to this process alone, which only
    this thread sees) stops the other calls' commands first, so none is left running. A helper thread's lines
    go where this thread's go (its log file too)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)
    ctx = ui.context()

    def work(i: int) -> None:
        ui.adopt(ctx)
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            errors[i] = exc

    helpers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(1, len(calls))]
    for t in helpers:
        t.start()
    try:
        try:
            results[0] = calls[0]()
        except Exception as exc:  # an ordinary failure: the others finish what they started
            errors[0] = exc
        for t in helpers:
            t.join()
    except BaseException:  # interrupted: stop what the others run, then let them end
        _terminate({t.ident for t in helpers})
        for t in helpers:
            t.join()
        raise
    for exc in errors:
        if exc is not None:
            raise exc
    return results


_running: dict[int, set[subprocess.Popen]] = {}  # by thread: the children a Runner call is waiting on
_running_lock = threading.Lock()


def _track(proc: subprocess.Popen, running: bool) -> None:
    with _running_lock:
        mine = _running.setdefault(threading.get_ident(), set())
        (mine.add if running else mine.discard)(proc)
        if not mine:
            del _running[threading.get_ident()]


def _terminate(threads: set[int | None]) -> None:
    with _running_lock:
        procs = [p for t in threads for p in _running.get(t or 0, ())]
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)  # its whole session, when it leads one (see _stop)
    for proc in procs:  # and reaped here: a join interrupted once may not wait for its thread again
        _stop(proc)


def _pass_through(
    proc: subprocess.Popen, input: bytes | None, timeout: float | None, seen: Callable[[str], None] | None = None
) -> bytes:
    """Hand each output line to ui as it comes; return the last 64 KiB (a failure's reason is near the end).
    Past `timeout` seconds, whether the child is writing, silent, or has closed its output but not exited, this
    raises subprocess.TimeoutExpired, as communicate() does, for the caller to stop the child."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        if deadline is None:
            return None
        if deadline <= time.monotonic():
            raise subprocess.TimeoutExpired(proc.args, timeout or 0)
        return deadline - time.monotonic()

    assert proc.stdout is not None
    out, pending = proc.stdout, input or b""
    tail = line = b""
    reading = True
    try:
        with out, selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            if proc.stdin is not None:  # the input goes in as the child takes it, so the deadline holds then too
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            while reading:
                for key, _ in sel.select(left()):
                    if key.fileobj is out:
                        chunk = os.read(out.fileno(), 65536)
                        if not chunk:
                            reading = False
                            break
                        tail = (tail + chunk)[-65536:]
                        *lines, line = (line + chunk).split(b"\n")
                        if len(line) > 65536:  # a line without end (a progress bar): shown in pieces, kept short
                            lines, line = [*lines, line], b""
                        for whole in lines:
                            _show(whole, seen)
                        continue
                    try:
                        pending = pending[os.write(key.fd, pending[: select.PIPE_BUF]) :]
                    except BrokenPipeError:  # the child stopped reading; what it did not take is not wanted
                        pending = b""
                    if not pending:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
    finally:  # output ended, or the deadline passed, before the child took all its input
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
    if line:
        _show(line, seen)
    if proc.poll() is None:  # it may have closed its output and still run
        proc.wait(left())
    return tail


def _show(raw: bytes, seen: Callable[[str], None] | None) -> None:
    text = raw.decode("utf-8", "replace")
    ui.output(text)
    if seen is not None:
        seen(text)


def _stop(proc: subprocess.Popen) -> None:
    """End a child we no longer wait for: politely, then for sure. A shielded child leads its own session, and
    what it started (git's hooks, a shell's commands) is stopped with it."""
    if proc.poll() is not None:
        return
    _signal(proc, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        proc.wait()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal a child that has not been reaped (so its pid is still its own), and its session when it leads one."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
