"""invoke cron.install / cron.remove / cron.status: one crontab entry that runs `invoke nightly`.

The entry is found by its comment, so installing twice leaves one entry and other entries are never touched.
It names everything with absolute paths (the interpreter, the log, the config file) and carries the environment
the job needs (PATH, the engine, the cache), because cron starts jobs with almost none. The crontab is read and
written with `crontab -l` / `crontab -` through the process seam (echoed like every command); python-crontab
parses and renders it.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Collection

from .core import config, state, ui, validate
from .core.errors import Failure
from .core.proc import Runner
from .core.tasking import runner, task

if TYPE_CHECKING:
    from crontab import CronTab


def marker(target: str) -> str:
    return f"forkdev nightly ({target})"


def _crontab(user: str) -> list[str]:
    return ["crontab", *(["-u", validate.plain(user, "cron.user")] if user else [])]


def read(run: Runner, user: str) -> CronTab:
    res = run([*_crontab(user), "-l"], mutates=False, check=False)
    if not res.ok and "no crontab" not in res.err:
        raise Failure(f"cannot read the crontab{f' of {user}' if user else ''} ({res.reason}); is cron installed?")
    from crontab import CronTab  # loaded when a cron task runs (cli.py)

    return CronTab(tab=res.out + "\n" if res.ok else "")


def write(run: Runner, user: str, tab: CronTab) -> None:
    run([*_crontab(user), "-"], input=tab.render().encode())


def command(c: Any, target: str, args: str) -> str:
    """The job: `python -m forkdev nightly ...` with its environment and log, every path absolute."""
    cache = config.cache_dir(c).resolve()
    log = config.nightly_log(c, target)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "INVOKE_CACHE_DIR": str(cache), "INVOKE_TARGET": target}
    for key in ("name", "client"):
        if c.config.engine.get(key):
            env[f"INVOKE_ENGINE_{key.upper()}"] = str(c.config.engine[key])
    for key in ("DOCKER_HOST", "CONTAINER_HOST", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    # The config file this run loaded (-f, else the project's invoke.yaml), so the job reads the same settings.
    # (invoke reports a project invoke.py as found even when there is none: the file itself must exist.)
    found = [getattr(c.config, f"_{kind}_path", None) for kind in ("runtime", "project")]
    found = [p for p in found if p and Path(p).is_file()]
    conf = ["-f", str(Path(found[0]).resolve())] if found else []
    argv = [sys.executable, "-m", "forkdev", *conf, "nightly", *shlex.split(args)]
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return f"env {assigns} {shlex.join(argv)} >> {shlex.quote(str(log.resolve()))} 2>&1"


@task(
    help={
        "schedule": "when, in crontab syntax (default: config cron.schedule, '0 2 * * *')",
        "user": "whose crontab (default: config cron.user, the current user's)",
        "target": "target profile (default: config target)",
    }
)
def install(c, schedule=None, user=None, target=None, dry_run=False, quiet=False):
    """Install (or update) the one crontab entry that runs `invoke nightly`."""
    run = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    when = validate.plain(schedule or c.config.cron.schedule, "--schedule", "write five crontab fields")
    from crontab import CronSlices

    if not CronSlices.is_valid(when):
        raise Failure(f"--schedule '{when}' is not a crontab schedule; write five fields, e.g. '0 2 * * *'")
    who = user if user is not None else c.config.cron.user
    tab = read(run, who)
    tab.remove_all(comment=marker(profile.name))
    job = tab.new(command=command(c, profile.name, c.config.cron.args), comment=marker(profile.name))
    job.setall(when)
    write(run, who, tab)
    ui.info(f"  {job.render()}")
    ui.result(("would install: " if run.dry_run else "installed: ") + marker(profile.name) + f" at '{when}'")


@task(help={"user": "whose crontab (default: config cron.user)", "target": "target profile (default: config target)"})
def remove(c, user=None, target=None, dry_run=False, quiet=False):
    """Remove the crontab entry of `invoke nightly` (no other entry is touched)."""
    run = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    who = user if user is not None else c.config.cron.user
    tab = read(run, who)
    found = len(list(tab.find_comment(marker(profile.name))))
    if found:
        tab.remove_all(comment=marker(profile.name))
        write(run, who, tab)
    ui.result(f"removed {found} entr{'y' if found == 1 else 'ies'}: {marker(profile.name)}")


@task(
    help={
        "user": "whose crontab (default: config cron.user)",
        "lines": "how many lines of the log to show (default 20)",
        "target": "target profile (default: config target)",
    }
)
def status(c, user=None, lines=20, target=None, json=False, quiet=False):
    """Show the crontab entry, the last nightly run's result and the end of its log."""
    run = runner(c, False, quiet)
    profile = config.of(c, target)
    who = user if user is not None else c.config.cron.user
    jobs = [j.render() for j in read(run, who).find_comment(marker(profile.name))]
    home = config.cache_dir(c) / "nightly"
    last = state.read(home / f"{profile.name}.last-run.json")
    log = config.nightly_log(c, profile.name)
    try:
        tail = log.read_text(errors="replace").splitlines()[-int(lines) :]
    except OSError:
        tail = []
    if json:
        ui.emit_json({"entries": jobs, "last_run": last, "log": str(log), "log_tail": tail})
        return
    ui.result("\n".join(jobs) if jobs else f"no crontab entry '{marker(profile.name)}'; run 'invoke cron.install'")
    if last:
        outcome = "ok" if last.get("ok") else "FAILED"
        ui.info(f"last run: {outcome} at {last.get('finished', '?')}: {last.get('message', '')}")
    else:
        ui.info("last run: none recorded")
    for line in tail:
        ui.info(f"  {line}")


cron = Collection("cron")
for t in (install, remove, status):
    cron.add_task(t)
