"""invoke cron.install / cron.remove / cron.status: one crontab line that runs `invoke nightly`.

The crontab is the user's text. It is read with `crontab -l`, exactly one line changes (ours, found by the marker
comment that ends it: `# forkdev nightly (<target>)`), and it is written back whole with `crontab -`: every other
byte (comments, variable lines, spacing, tabs, order, even bytes that are not UTF-8) stays as it was.

The line runs a script the install writes beside the nightly's state (`<cache>/nightly/<target>.cron.sh`: cron
takes at most 999 characters of command, and PATH alone can be more) that carries what the job needs, since cron
starts jobs with almost nothing: the working directory, the config file this run loaded (-f), every INVOKE_*
variable in effect, PATH, and the engine's, registry's and proxy's variables; every path is absolute. It pushes
only where nightly.repository names a registry.

Every value written into the line or the script is checked first: a line break or NUL would end the line and
start another (a job of its own), so it is refused, naming the value; cron turns an unescaped `%` into a line
break and feeds what follows to the command's stdin, so each `%` in the line is written `\\%` outside the
shell's quotes, which cron reads back as a plain `%`.

Before anything is written, the script is run once as cron would run it (as the crontab's user, `env -i` with
cron's PATH, HOME, SHELL and LOGNAME, by /bin/sh) with INVOKE_RUN_DRY=1: a nightly dry run, whose failure fails
the install with its own last line.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke import Collection

from .core import cache as store
from .core import config, ui, validate
from .core.errors import Failure
from .core.proc import Runner
from .core.tasking import runner, task

CRON_PATH = "/usr/bin:/bin"  # what Debian's cron gives a job (and Vixie cron's _PATH_DEFPATH)
# Variables besides INVOKE_* that the job needs as the installing shell had them: which engine and how to reach
# it, the logins of registries, proxies and CA bundles for git and the registry, the temporary directory.
CARRIED = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINERS_CONF",
    "REGISTRY_AUTH_FILE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "TMPDIR",
)
# INVOKE_* variables the line sets itself (the cache, resolved; the target of the marker; the config file as -f),
# and the dry run of the installing command, which must not make every night's run a dry run. (INVOKE_CRON_*, the
# install's own settings, are not the nightly's either.)
NOT_CARRIED = {"INVOKE_CACHE_DIR", "INVOKE_TARGET", "INVOKE_RUNTIME_CONFIG", "INVOKE_RUN_DRY"}
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def marker(target: str) -> str:
    if not TARGET_NAME.match(target):
        raise Failure(
            f"target '{target[:80]!r}' cannot name a crontab entry; use a target name of letters, digits, '.', '_', '-'"
        )
    return f"forkdev nightly ({target})"


# ---- the schedule ------------------------------------------------------------------------------------------
SPECIALS = {"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_MONTHS = {
    m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
FIELDS = (  # (name, lowest, highest, names) as cron(8) reads them
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(?:(?P<star>\*)|(?P<low>\w+)(?:-(?P<high>\w+))?)(?:/(?P<step>\d+))?$")


def valid_schedule(value: object) -> str:
    """Five crontab fields (each a list of *, N or N-M, with an optional /STEP after * or a range; months and days
    also by name), or one of cron's @ names. Stricter than cron where cron takes nonsense quietly (5-1, */0)."""
    text = validate.plain(value, "--schedule", "write five crontab fields, e.g. '0 2 * * *'")
    fields = text.split()
    if len(fields) == 1 and fields[0] in SPECIALS:
        return text
    if len(fields) == 1 and fields[0].startswith("@"):
        raise _bad(text, f"cron's @ names are {', '.join(sorted(SPECIALS))}")
    if len(fields) != 5:
        raise _bad(text, f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}, not 5")
    for field, (name, low, high, names) in zip(fields, FIELDS, strict=True):
        for item in field.split(","):
            m = _ITEM.match(item)
            if not m:
                raise _bad(text, f"the {name} field has '{item}'")
            if m["step"] is not None and (int(m["step"]) < 1 or not (m["star"] or m["high"])):
                raise _bad(text, f"the {name} field has '{item}' (a step of 1 or more, after '*' or a range A-B)")
            if m["star"]:
                continue
            first = _number(m["low"], low, high, names)
            last = _number(m["high"], low, high, names) if m["high"] else first
            if first is None or last is None or last < first:
                raise _bad(text, f"the {name} field has '{item}' (from {low} to {high}, the lower first)")
    return text


def _number(word: str, low: int, high: int, names: dict[str, int]) -> int | None:
    value = int(word) if word.isdigit() else names.get(word.lower())
    return value if value is not None and low <= value <= high else None


def _bad(text: str, why: str) -> Failure:
    return Failure(
        f"--schedule '{text}' is not a crontab schedule ({why}); write five fields, e.g. '0 2 * * *', or @daily"
    )


# ---- one crontab line, as text -----------------------------------------------------------------------------
def one_line(value: str, what: str) -> str:
    """`value`, refused when it holds a line break or NUL (in the crontab, a second line: a job of its own)."""
    if any(ch in value for ch in "\0\n\r"):
        shown = repr(value)[1:-1][:120]
        raise Failure(f"{what} '{shown}' holds a line break or NUL, which would start another crontab line; remove it")
    return value


def word(value: str, what: str) -> str:
    """`value` as one shell word in a crontab line: refused when it holds a line break or NUL; each `%` written
    `\\%` outside the shell's quotes (cron would otherwise end the command there)."""
    if "%" not in one_line(value, what):
        return shlex.quote(value)
    return "\\%".join(shlex.quote(part) if part else "" for part in value.split("%"))


def as_cron_runs_it(text: str) -> str:
    """What cron hands /bin/sh for a command written `text`: `\\%` becomes `%`, and an unescaped `%` ends the
    command (the rest is its stdin); Vixie cron's do_command.c, line for line."""
    out, escaped = [], False
    for ch in text:
        if escaped:
            escaped = False
            if ch == "%":
                out[-1] = "%"
                continue
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            break
        out.append(ch)
    return "".join(out)


def _ours(line: str, target: str) -> bool:
    return line.endswith(f" # {marker(target)}")


def edit(text: str, target: str, new: str | None) -> tuple[str, int]:
    """The crontab `text` with our line of `target` replaced by `new` where the first one was (or appended), or
    removed (`new` None); every other line as it was. Returns the text and how many lines of ours it had."""
    lines = text.split("\n")
    found = [i for i, line in enumerate(lines) if _ours(line, target)]
    if found and new is not None:
        lines[found[0]] = new
        found = found[1:]
    for i in reversed(found):
        del lines[i]
    result = "\n".join(lines)
    if new is not None and not any(_ours(line, target) for line in lines):
        result += ("" if not result or result.endswith("\n") else "\n") + new + "\n"
    return result, len([line for line in text.split("\n") if _ours(line, target)])


def _crontab(user: str) -> list[str]:
    return ["crontab", *(["-u", validate.plain(user, "cron.user")] if user else [])]


def read(run: Runner, user: str) -> str:
    """The crontab's text exactly as it is ("" when there is none); bytes that are not UTF-8 survive the edit."""
    res = run([*_crontab(user), "-l"], mutates=False, check=False)
    if not res.ok and "no crontab" not in res.err:
        raise Failure(f"cannot read the crontab{f' of {user}' if user else ''} ({res.reason}); is cron installed?")
    return res.stdout.decode("utf-8", "surrogateescape") if res.ok else ""


def write(run: Runner, user: str, text: str) -> None:
    run([*_crontab(user), "-"], input=text.encode("utf-8", "surrogateescape"))


# ---- the job ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """The job's script (what runs: its directory, environment and command) and where it and its log go. cron
    takes a command of at most 999 characters, which PATH and the INVOKE_* variables alone can pass, so the crontab
    line runs the script: `/bin/sh SCRIPT >> LOG 2>&1`."""

    script: str
    path: Path
    log: Path

    def line(self, when: str, target: str) -> str:
        run = f"/bin/sh {word(str(self.path), 'the job script (cache_dir)')}"
        return f"{when} {run} >> {word(str(self.log), 'the nightly log (nightly.log)')} 2>&1 # {marker(target)}"


def job(c: Any, settings: config.Settings, args: list[str]) -> Job:
    """The job: `python -m forkdev [-f CONFIG] nightly ARGS` in this directory, with its environment."""
    env = {"PATH": os.environ.get("PATH", CRON_PATH)}
    carried = (k for k in os.environ if k.startswith("INVOKE_") and not k.startswith("INVOKE_CRON_"))
    env.update((k, os.environ[k]) for k in carried if k not in NOT_CARRIED)
    env.update((k, os.environ[k]) for k in CARRIED if os.environ.get(k))
    target = settings.target
    cache = settings.cache.resolve()
    env["INVOKE_CACHE_DIR"] = str(cache)
    env["INVOKE_TARGET"] = target.name
    # The config file this run loaded (-f, else the project's invoke.yaml), so the job reads the same settings.
    # (invoke reports a project invoke.py as found even when there is none: the file itself must exist.)
    found = [getattr(c.config, f"_{kind}_path", None) for kind in ("runtime", "project")]
    found = [p for p in found if p and Path(p).is_file()]
    conf = ["-f", str(Path(found[0]).resolve())] if found else []
    command = [
        "exec",
        "env",
        *(f"{k}={quote(v, k)}" for k, v in sorted(env.items())),
        quote(sys.executable, "the Python interpreter's path"),
        "-m",
        "forkdev",
        *(quote(p, "the config file's path") for p in conf),
        "nightly",
        *(quote(a, "cron.args") for a in args),
    ]
    script = (
        f"# {marker(target.name)}: written by 'invoke cron.install', which the crontab line runs; install again to "
        "change it\n"
        f"cd -- {quote(os.getcwd(), 'the working directory')} || exit 1\n" + " ".join(command) + "\n"
    )
    return Job(script, store.nightly(cache, target.name, ".cron.sh"), settings.nightly.log.resolve())


def quote(value: str, what: str) -> str:
    """`value` as one word of the job's script: one line, like everything the crontab's job is made of."""
    return shlex.quote(one_line(value, what))


def nightly_args(settings: config.Settings) -> list[str]:
    """cron.args (split into words by config.load), plus --push when nightly.repository names a registry and
    cron.args says neither --push nor --no-push: the job pushes where there is a registry to push to. --push
    without one is refused."""
    args = list(settings.cron.args)
    registry = validate.registry_host(settings.nightly.repository)
    if "--push" in args and not registry:
        raise Failure(
            f"cron.args passes --push, but nightly.repository '{settings.nightly.repository}' names no "
            "registry, so the job would fail every night; set nightly.repository to REGISTRY/NAME or drop --push"
        )
    if registry and not {"--push", "--no-push"} & set(args):
        args.append("--push")
    return args


def _as(user: str) -> tuple[list[str], pwd.struct_passwd]:
    """The prefix that runs a command as the crontab's user (runuser, when that is another user than us)."""
    try:
        entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        raise Failure(f"--user '{user}': no such user here; pass the user whose crontab it is") from None
    if entry.pw_uid == os.getuid():
        return [], entry
    if os.geteuid() != 0:
        raise Failure(f"--user '{user}': only root may install into another user's crontab; run as root")
    return ["runuser", "-u", entry.pw_name, "--"], entry


def prove(run: Runner, user: str, built: Job) -> None:
    """Run the job's script once as cron would (its user, `env -i` with cron's variables, /bin/sh) with
    INVOKE_RUN_DRY=1, after checking that this user can append to the log there. A read-only probe: it runs under
    --dry-run too, and so runs the script's text (not yet written). Its failure is the install's, with its own last
    line."""
    prefix, entry = _as(user)
    log = shlex.quote(str(built.log))
    # The log's file, else its nearest existing folder, must take the job's writes (sh opens it before the job).
    can_log = (
        f'p={log}; while [ ! -e "$p" ]; do p=${{p%/*}}; p=${{p:-/}}; done; '
        f'[ -w "$p" ] || {{ echo "error: {entry.pw_name} cannot write $p, where the nightly log goes; set nightly.log '
        'or cache_dir to a place this user may write" >&2; exit 1; }'
    )
    cron_env = [f"PATH={CRON_PATH}", f"HOME={entry.pw_dir}", "SHELL=/bin/sh", f"LOGNAME={entry.pw_name}"]
    argv = [*prefix, "env", "-i", *cron_env, "INVOKE_RUN_DRY=1", "/bin/sh", "-c", f"{can_log}\n{built.script}"]
    with ui.step("dry run of the entry as cron runs it"):
        res = run(argv, mutates=False, check=False, timeout=600)
    if not res.ok:
        why = res.reason.removeprefix("error: ")
        raise Failure(f"the entry's dry run, as cron would run it, failed: {why}")
    ui.info(f"  the entry's dry run, as cron would run it: ok ({res.reason})")


# Written as the job's user (so its files are its own): the folders of the script and the log (sh opens the log
# before the job starts), then the script, whole (a temporary file renamed over it; a symlink there is replaced,
# never followed).
SETUP = (
    'umask 022; mkdir -p -- "${1%/*}" "$2" && rm -f -- "$1.tmp" && set -C && cat > "$1.tmp" && mv -f -- "$1.tmp" "$1"'
)
SCRIPT_NAME = re.compile(r"^/bin/sh (\S+) >> ")


def _script_of(line: str, target: str) -> Path | None:
    """The job script a line of ours runs, when it is one the tool wrote (<target>.cron.sh)."""
    fields = line.split(None, 5) if not line.startswith("@") else ["", "", "", "", "", line.split(None, 1)[-1]]
    m = SCRIPT_NAME.match(as_cron_runs_it(fields[-1])) if len(fields) == 6 else None
    words = shlex.split(m[1]) if m else []
    path = Path(words[0]) if len(words) == 1 else None
    return path if path is not None and path.is_absolute() and path.name == f"{target}.cron.sh" else None


def _remove_scripts(run: Runner, user: str, text: str, target: str, keep: Path | None = None) -> None:
    """Remove the job scripts that our lines in `text` ran (all but `keep`, the one the new line runs)."""
    scripts = {_script_of(line, target) for line in text.split("\n") if _ours(line, target)} - {None, keep}
    prefix, _ = _as(user)
    for path in sorted(p for p in scripts if p is not None):
        run([*prefix, "rm", "-f", "--", str(path)])


def _shown(line: str) -> str:
    """The line as printed: credentials in URLs (a proxy's, an upstream's) masked."""
    return re.sub(r"(://)[^/@\s']+@", r"\1***@", line)


@task(
    help={
        "schedule": "when, in crontab syntax (default: config cron.schedule, '0 2 * * *')",
        "user": "whose crontab (default: config cron.user, the current user's)",
        "target": "target profile (default: config target)",
    }
)
def install(c, schedule=None, user=None, target=None, dry_run=False, quiet=False):
    """Install (or update) the one crontab line that runs `invoke nightly`, proven by a dry run first."""
    run = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    profile = settings.target
    when = valid_schedule(schedule or settings.cron.schedule)
    who = user if user is not None else settings.cron.user
    built = job(c, settings, nightly_args(settings))
    line = built.line(when, profile.name)
    before = read(run, who)
    text, _ = edit(before, profile.name, line)
    prove(run, who, built)
    prefix, _ = _as(who)
    run([*prefix, "/bin/sh", "-c", SETUP, "sh", str(built.path), str(built.log.parent)], input=built.script.encode())
    write(run, who, text)
    _remove_scripts(run, who, before, profile.name, keep=built.path)
    ui.info(f"  {line}")
    ui.info(f"  {built.path}: " + _shown(built.script.splitlines()[-1]))
    ui.result(("would install: " if run.dry_run else "installed: ") + marker(profile.name) + f" at '{when}'")


@task(help={"user": "whose crontab (default: config cron.user)", "target": "target profile (default: config target)"})
def remove(c, user=None, target=None, dry_run=False, quiet=False):
    """Remove the crontab line of `invoke nightly` (no other line is touched)."""
    run = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    profile = settings.target
    who = user if user is not None else settings.cron.user
    before = read(run, who)
    text, found = edit(before, profile.name, None)
    if found:
        write(run, who, text)
        _remove_scripts(run, who, before, profile.name)
    ui.result(f"removed {found} entr{'y' if found == 1 else 'ies'}: {marker(profile.name)}")


@task(
    help={
        "user": "whose crontab (default: config cron.user)",
        "lines": "how many lines of the log to show (default 20; 0 for none)",
        "target": "target profile (default: config target)",
    }
)
def status(c, user=None, lines="20", target=None, json=False, quiet=False):
    """Show the crontab line, the last nightly run's result and the end of its log."""
    run = runner(c, False, quiet)
    settings = config.load(c, target)
    profile = settings.target
    count = str(lines).strip()
    if not count.isdigit():
        raise Failure(f"--lines '{lines}' is not a number of lines; pass 0 or more")
    who = user if user is not None else settings.cron.user
    jobs = [line for line in read(run, who).split("\n") if _ours(line, profile.name)]
    last = store.read_json(store.nightly(settings.cache, profile.name, ".last-run.json"))
    log = settings.nightly.log
    try:
        tail = log.read_text(errors="replace").splitlines()[-int(count) :] if int(count) else []
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
