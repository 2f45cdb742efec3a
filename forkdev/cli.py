"""The task collection, for `invoke` in this directory (tasks.py) and the `forkdev` console script alike.

invoke builds the whole collection on every run, so every task module is imported to run any one task. A task
module therefore imports at its top only what declaring its tasks needs, and the machinery of a task that
others do not share (fork-sync's merge, the wheel and smoke builders, batch's and nightly's full builds) inside
the task, where it runs: `invoke dev`, whose whole budget is a few tenths of a second, does not pay for them.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import select
import sys
from typing import Any

from invoke import Collection, Program
from invoke.parser import Parser, ParserContext

from . import (
    __version__,
    batch,
    build,
    cron,
    demo,
    dev,
    devcontainer,
    fork_sync,
    gpu_check,
    nightly,
    overlay,
    patches,
    run,
    smoke,
    verify,
    wheel,
)
from .core import config
from .core.errors import Failure

# At exit the interpreter runs a full collection over every object invoke, the task and its imports made before
# it frees them: 20-30 ms of every task (measured with strace, from the last line to exit_group), on a dev loop
# whose whole budget is a few tenths of a second. Frozen, they are freed without it. Whatever must be closed or
# removed (files, child processes, the owners' claims, temporary folders) is by then, by the code that made it.
atexit.register(gc.freeze)


def namespace() -> Collection:
    """Every task at the top (a verb per module); every config default declared once. The INVOKE_* variables are
    checked first (see check_environment)."""
    check_environment()
    ns = Collection()
    images = (dev.dev, build.build, batch.batch, verify.verify)
    inside = (run.run, run.shell, gpu_check.gpu_check, devcontainer.devcontainer, smoke.smoke)
    for t in (*images, *inside, fork_sync.fork_sync, overlay.overlay, patches.patches, demo.demo):
        ns.add_task(t)
    ns.add_collection(nightly.nightly)
    ns.add_collection(cron.cron)
    ns.add_collection(wheel.wheel)
    ns.configure(config.DEFAULTS)
    for name in ns.task_names:
        _answer_help(ns, name)
    return ns


def _answer_help(ns: Collection, name: str) -> None:
    """invoke's parser hands `--help` (or `-h`) after a task that takes a positional argument to that argument:
    `invoke dev --help` ran dev on a checkout named '--help', which was refused. Such a task prints what
    `invoke --help TASK` prints instead."""
    task = ns[name]
    if not task.positional or hasattr(task.body, "answers_help"):  # (namespace() may be built more than once)
        return
    body = task.body

    @functools.wraps(body)
    def answering(c: Any, *args: Any, **kwargs: Any) -> Any:
        given = [*args, *(kwargs.get(p) for p in task.positional)]
        if not any(value in ("-h", "--help") for value in given):
            return body(c, *args, **kwargs)
        program = Program(namespace=ns, binary="forkdev" if "program" in globals() else "inv[oke]")
        program.collection = ns
        program.parser = Parser([ParserContext(name, args=task.get_arguments())])
        try:
            program.print_task_help(name)
        except BrokenPipeError:  # `invoke dev --help | head`
            _end_if_reader_left()
        return None

    answering.answers_help = True  # type: ignore[attr-defined]
    task.body = answering


def check_environment() -> None:
    """Refuse, in one line naming it, an INVOKE_* variable that invoke would fail to cast to its default's type
    (int('abc'), any list) or would read against its writer's meaning (INVOKE_DEV_PUSH=false is true to invoke).
    invoke casts them while it loads a task's config, after anything of ours could catch its traceback, and on
    every task; the collection is built by both programs (`invoke`, through tasks.py, whose Program is invoke's
    own, and `forkdev`) before that, inside their error handling, so the check stands here."""
    from invoke import Config
    from invoke.config import merge_dicts

    problem = config.environment_problem(os.environ, merge_dicts(Config.global_defaults(), config.DEFAULTS))
    if problem:
        raise Failure(problem)


class Forkdev(Program):
    def run(self, argv: list[str] | str | None = None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)
        except BrokenPipeError:
            if not exit:
                raise
            _end_if_reader_left()


def _end_if_reader_left() -> None:
    """After a BrokenPipeError: when the reader of our stdout left (`forkdev --list | head`), stop quietly, as a
    shell tool does (exit 141); else raise it again."""
    if not _reader_left(sys.stdout.fileno()):
        raise  # noqa: PLE0704 - called only from an except block
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail too
    sys.exit(141)


def _reader_left(fd: int) -> bool:
    """Whether `fd` is a pipe whose reading end is closed (poll reports an error on it)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))


def __getattr__(name: str) -> Program:
    """`program` (the console script's `forkdev.cli:program.run`), made on first use: importing this module for
    tasks.py builds the collection once, not twice."""
    if name == "program":
        try:
            tasks = namespace()
        except Failure as exc:  # the console script asks for `program` before it runs it: end as run() would
            print(exc.message, file=sys.stderr)
            sys.exit(exc.code)
        made = globals()["program"] = Forkdev(namespace=tasks, name="forkdev", binary="forkdev", version=__version__)
        return made
    raise AttributeError(name)
