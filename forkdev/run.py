"""invoke run / shell: working inside the image, with secrets, GPU and live sync.

The image defaults to the last `invoke dev` image of the checkout, else the target's nightly. Secrets
(`extras/secrets/*.env`) and explicit variables reach the container through one private file it reads at start:
never through argv, `inspect`, a log or a layer. `run --sync` keeps the running container in step with the
checkout (core/livesync.py).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import TYPE_CHECKING

from .core import base as bases
from .core import config, ui, validate
from .core.engine import Engine
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.tasking import remainder, runner, task

if TYPE_CHECKING:
    from .core import container as ctr
    from .core import owners

# What only these tasks use (containers, secrets files, live sync) is imported where they run: see cli.py.

SHARED = {
    "image": "the image (default: the last 'invoke dev' image of --repo, else the target's nightly)",
    "repo": "the checkout (default: config container.repo, '.'): its secrets, its source for --mount-source and --sync",
    "gpu": "auto (what the host has), none, all, or a number of GPUs (default: config container.gpu)",
    "env": "KEY=VALUE (or KEY, from here) for the container; repeatable; wins over the secrets files",
    "target": "target profile (default: config target)",
}


@task(
    iterable=["env", "port"],
    help={
        **SHARED,
        "port": "a port the server listens on; repeatable (published, or checked free with host networking)",
        "mount_source": "mount the checkout at /workspace",
        "overlay": "copy the overlay ('invoke overlay' / 'invoke patches --into overlay') in before the command",
        "sync": "keep the running container in step with the checkout until Ctrl-C (edits, new files, deletions)",
        "restart": "with --sync: restart the processes whose command line holds this text after each sync",
        "keep": "with --sync: leave the container running when you leave (no later run removes it)",
        "native": "with --sync: compile saved native sources incrementally (as 'invoke dev --native') and copy the "
        "compiled files that changed in (config dev.native: build)",
        "no_native": "with --sync: refuse native sources, whatever config dev.native says",
    },
)
def run(
    c,
    image=None,
    repo=None,
    gpu=None,
    env=None,
    port=None,
    mount_source=False,
    overlay=False,
    sync=False,
    restart=None,
    keep=False,
    native=False,
    no_native=False,
    target=None,
    dry_run=False,
    quiet=False,
):
    """Run the image (its own command, or the one after --) with secrets, GPU, ports and the checkout."""
    from .core import launch
    from .overlay import resolve_dest

    proc = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    checkout = Repo.open(validate.plain(repo or settings.container.repo, "--repo"), proc)
    command = remainder(c)
    if restart is not None:
        validate.plain(restart, "--restart")
        if not sync:
            raise Failure("--restart restarts a process after a live sync; use it with --sync")
    if keep and not sync:
        raise Failure("--keep keeps a live-synced container running after you leave; use it with --sync")
    if native and not sync:
        raise Failure("--native rebuilds native sources as a live sync copies them; use it with --sync")
    from .dev import native_spec

    compile_native = native_spec(settings, native, no_native, None, False) if sync else None
    ask = launch.Ask(
        purpose="sync" if sync else "run",
        image=image,
        gpu=gpu,
        env=tuple(env or ()),
        ports=tuple(launch.parse_ports(port)),
        mount_source=mount_source,
        overlay=resolve_dest(settings, checkout, None) if overlay else None,
        command=tuple(command),
        interactive=not sync and _tty(),
        detach=sync,
        loop=bool(restart),
        keep=keep,
    )
    engine, spec, own = launch.prepare(settings, proc, checkout, ask)
    if not sync:
        _attached(proc, engine, spec, own)
        return
    code = _live(settings, proc, engine, spec, own, checkout, restart, keep, compile_native)
    if code:
        raise SystemExit(code)  # the server's own exit code, as it is


def _attached(proc: Runner, engine: Engine, spec: ctr.Spec, own: owners.Claim) -> None:
    """Run the container attached, its exit code ours; whatever ends it (its command, a failure, a signal), it
    is gone afterwards."""
    from .core import container as ctr

    with ctr.running(proc, engine, own, spec.name) as box:
        res = proc(ctr.argv(engine.exe, spec, engine.kind), interactive=True, check=False)
        box.ended(res.returncode)
    if res.returncode:
        raise SystemExit(res.returncode)  # the command's own exit code, as it is


def _live(
    settings: config.Settings,
    proc: Runner,
    engine: Engine,
    spec: ctr.Spec,
    own: owners.Claim,
    repo: Repo,
    restart,
    keep,
    native,
):
    """Start the container, sync until it ends or the user leaves; returns its exit code when it ended."""
    from .core import container as ctr
    from .core import livesync

    stop = threading.Event()
    code = None
    try:
        with ctr.running(proc, engine, own, spec.name, keep=keep):
            # The watcher is up before the container starts: an edit made while it starts is synced too.
            batches = livesync.watching(repo.path, stop) if not proc.dry_run else iter(())
            pending = next(batches, (set(), set()))
            proc(ctr.argv(engine.exe, spec, engine.kind))
            if proc.dry_run:
                return None
            info = engine.inspect_image(proc, spec.image) or {}
            target = settings.target
            cache = settings.cache_dir(proc)
            where = bases.facts(engine, proc, spec.image, Engine.image_id(info), target, cache).location
            live = _native_live(settings, proc, engine, spec, repo, native) if native is not None else None
            livesync.follow_logs(engine, proc, spec.name, stop)
            hidden = settings.secret_paths
            mirror = livesync.Mirror(engine, proc, repo, spec.name, where, target, restart, hidden, live)
            livesync.follow(mirror, iter([pending]))
            ui.info(f"syncing {repo.path} into {spec.name}; Ctrl-C to leave" + (" (it keeps running)" if keep else ""))
            livesync.follow(mirror, batches)
            code = _exit_code(proc, engine, spec.name)
    except KeyboardInterrupt:
        pass  # the user left (Ctrl-C, SIGTERM, SIGHUP); the lifecycle removed the container unless --keep
    finally:
        stop.set()
    if code:
        ui.warn(f"the container's command exited with {code}")
    ui.result(spec.name)
    return code


def _native_live(settings: config.Settings, proc: Runner, engine: Engine, spec: ctr.Spec, repo: Repo, native):
    """What --native rebuilds against: the image's base (a thin image names it; the workspace of `dev --native`
    on it), and the compiled files the running image holds."""
    from .core import labels as L
    from .core import nativebuild

    cache, target, hidden = settings.cache_dir(proc), settings.target, settings.secret_paths
    image = bases.resolve(engine, proc, [spec.image], explicit=True, cache=cache, target=target)
    base_id = Engine.labels(image.image).get(L.BASE_ID)
    base = bases.resolve(engine, proc, [base_id], explicit=True, cache=cache, target=target) if base_id else image
    have = nativebuild.base_files(engine, proc, image, target, native.outputs, cache)
    native = dataclasses.replace(native, kept=f"{spec.name} runs on with what it had")
    return nativebuild.Live(
        engine, proc, native, repo=repo, base=base, target=target, cache=cache, hidden=hidden, have=have
    )


def _exit_code(proc: Runner, engine: Engine, name: str) -> int | None:
    """The exit code of a container that has ended; None while it runs (its output stream broke: we leave)."""
    res = proc(engine.cmd("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name), mutates=False)
    running, _, code = res.out.partition(" ")
    if running == "true":
        ui.warn(f"the output of {name} stopped while it runs; leaving the sync")
        return None
    return int(code) if code.strip().lstrip("-").isdigit() else 1


@task(iterable=["env"], help={**SHARED, "command": "run this command in the shell instead of an interactive one"})
def shell(c, image=None, repo=None, gpu=None, env=None, command=None, target=None, dry_run=False, quiet=False):
    """An interactive shell in the image (bash if it has one), with the same secrets and GPU as run."""
    from .core import launch

    proc = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    checkout = Repo.open(validate.plain(repo or settings.container.repo, "--repo"), proc)
    script = command if command is not None else "if command -v bash >/dev/null; then exec bash; fi; exec sh"
    interactive = command is None and _tty()
    ask = launch.Ask(
        purpose="shell",
        image=image,
        gpu=gpu,
        env=tuple(env or ()),
        mount_source=True,
        command=("/bin/sh", "-c", script),
        interactive=interactive,
    )
    _attached(proc, *launch.prepare(settings, proc, checkout, ask))


def _tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()
