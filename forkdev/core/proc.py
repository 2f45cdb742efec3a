"""The one process seam: every external command the tool runs goes through `Runner.__call__`.

It echoes `+ argv` (quoted once, with shlex.join) before running, skips commands that change something when
dry-run is on (read-only probes still run, so a dry run can show a real plan), and turns a missing
executable or a failed command into a `Failure` sentence. plumbum is used here, and only here, to find and
spawn executables; the rest of the code hands argv lists to this runner.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from plumbum import local
from plumbum.commands.processes import CommandNotFound

from . import ui
from .errors import Failure


@dataclass(frozen=True)
class Result:
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


class CommandFailed(Failure):
    def __init__(self, result: Result) -> None:
        why = result.reason
        super().__init__(f"'{shlex.join(result.argv)}' failed with exit {result.returncode}: {why}")
        self.result = result


@dataclass(frozen=True)
class Runner:
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
        input: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run argv. `mutates=False` marks a read-only probe, which runs even under dry-run.

        With capture=False the command's output goes to our stderr (stdout stays clean for --json).
        """
        argv = tuple(str(a) for a in argv)
        skipped = self.dry_run and mutates
        if self.echo:
            ui.command(
                shlex.join(argv) if cwd is None else f"(cd {shlex.quote(str(cwd))}) {shlex.join(argv)}", skipped=skipped
            )
        if skipped:
            return Result(argv, 0, b"", b"", dry=True)
        try:
            program = local[argv[0]]
        except CommandNotFound:
            raise Failure(f"'{argv[0]}' is not installed or not on PATH; install it and retry") from None
        full_env = {**os.environ, **env} if env is not None else dict(os.environ)
        proc = program[argv[1:]].popen(
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else 2,
            stderr=subprocess.PIPE if capture else None,
            cwd=str(cwd) if cwd is not None else None,
            env=full_env,
            new_session=self.shielded,
        )
        out, err = proc.communicate(input)
        result = Result(argv, proc.returncode, out or b"", err or b"")
        if check and not result.ok:
            raise CommandFailed(result)
        return result
