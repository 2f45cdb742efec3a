"""invoke run / shell: working inside the image, with secrets, GPU and live sync.

The image defaults to the last `invoke dev` image of the checkout, else the target's nightly. Secrets
(`extras/secrets/*.env`) and explicit variables reach the container through one private file it reads at start:
never through argv, `inspect`, a log or a layer. `run --sync` keeps the running container in step with the
checkout (core/livesync.py).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .core import base as bases
from .core import cache as store
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


def last_dev_image(cache: Path, repo: Repo) -> str | None:
    return store.read_json(store.dev_record(cache, repo.path)).get("image")


def pick_image(settings: config.Settings, repo: Repo, image: str | None) -> str:
    if image:
        return validate.image_ref(image, "--image")
    return last_dev_image(settings.cache_dir(), repo) or f"{settings.nightly_repository}:nightly"


def check_ports(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise Failure(
                        f"port {port} is in use on this host; stop what uses it or pick another --port"
                    ) from None
                raise Failure(f"port {port} cannot be used here ({exc.strerror}); pick another --port") from None


def parse_ports(values: list[str] | None) -> list[int]:
    ports = []
    for value in values or []:
        if not re.fullmatch(r"[0-9]{1,5}", str(value)) or not 0 < int(value) < 65536:  # not isdigit(): '²' is one
            raise Failure(f"--port '{value}' is not a port number (1-65535); pass e.g. --port 8000")
        ports.append(int(value))
    return ports


def prepare(
    c,
    settings: config.Settings,
    run: Runner,
    repo: Repo,
    image: str | None,
    gpu: str | None,
    env: list[str] | None,
    *,
    purpose: str,
    ports: list[int] | None = None,
    mount_source: bool = False,
    overlay: bool = False,
    command: list[str] | None = None,
    interactive: bool = False,
    detach: bool = False,
    loop: bool = False,
    keep: bool = False,
) -> tuple[Engine, ctr.Spec, owners.Claim]:
    """Everything a container needs, validated before anything starts; its private files go in this process's
    claim (core/owners.py), which a later run sweeps only once this process is gone."""
    from .core import container as ctr
    from .core import envfiles, owners
    from .core import gpu as gpus

    cfg, target = settings.container, settings.target
    image_ref = pick_image(settings, repo, image)
    gpu_request = gpu or cfg.gpu
    ports = list(ports or [])
    variables = envfiles.load(envfiles.secrets_files(repo, cfg.secrets))
    configured = [f"{k}={v}" for k, v in cfg.env.items()]
    variables += envfiles.explicit(configured, "config container.env") + envfiles.explicit(list(env or []))
    check_ports(ports)
    engine = settings.engine(run)
    network = validate.network(cfg.network or engine.network, "container.network" if cfg.network else "engine.network")
    cache = settings.cache_dir()
    owners.sweep(engine, run, cache)
    info = engine.inspect_image(run, image_ref)
    if info is None:
        raise Failure(f"no image '{image_ref}' here; build it with 'invoke dev' or 'invoke nightly', or pull it")
    full_command = ctr.command_of(info, list(command or []))
    if not full_command:
        raise Failure(f"image '{image_ref}' has no entrypoint or command; pass one after --")
    found = gpus.host(cfg.gpu_root)
    gpu_args, picked = gpus.args(engine.kind, found, gpus.parse_request(gpu_request))
    ui.info(f"GPU: {picked}")
    mounts = []
    hf = cfg.hf_cache
    if hf.is_dir():
        mounts.append((str(hf.resolve()), ctr.HF_IN, "rw"))
        variables.append(envfiles.Var("HF_HOME", ctr.HF_IN, "the Hugging Face cache"))
    if mount_source:
        mounts.append((str(repo.path), "/workspace", "rw"))
    overlay_spec = None
    if overlay:
        from .overlay import resolve_dest

        where = bases.facts(engine, run, image_ref, Engine.image_id(info), target, cache).location
        source = resolve_dest(c, repo, None)
        source = source if where.root is not None else source / target.package_path
        if not source.is_dir():
            raise Failure(f"no overlay at {source}; run 'invoke overlay' (and 'invoke patches --into overlay') first")
        overlay_spec = (source, where.root or where.package_dir)
    own = owners.claim(cache, engine, run)
    name, labels = own.container(purpose, keep=keep)
    rootless = engine.kind == "podman" and os.geteuid() != 0
    spec = ctr.Spec(
        image=image_ref,
        command=full_command,
        name=name,
        network=network,
        interactive=interactive,
        detach=detach,
        remove=not detach,  # a detached (live-synced) one is removed by us, after its exit code is read
        gpu=gpu_args,
        ports=ports,
        mounts=mounts,
        private=None,
        overlay=overlay_spec,
        loop=loop,
        userns_keep_id=rootless and mount_source,
        selinux=ctr.selinux_enforcing(),
        labels=labels,
    )
    # A path no mount can hold fails here, before the private files are written.
    ctr.argv(engine.exe, dataclasses.replace(spec, private=own.folder / name), engine.kind)
    spec = dataclasses.replace(spec, private=ctr.prepare_private(own.private(name), envfiles.script(variables)))
    return engine, spec, own


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
    target=None,
    dry_run=False,
    quiet=False,
):
    """Run the image (its own command, or the one after --) with secrets, GPU, ports and the checkout."""
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
    engine, spec, own = prepare(
        c,
        settings,
        proc,
        checkout,
        image,
        gpu,
        env,
        purpose="sync" if sync else "run",
        ports=parse_ports(port),
        mount_source=mount_source,
        overlay=overlay,
        command=command,
        interactive=not sync and _tty(),
        detach=sync,
        loop=bool(restart),
        keep=keep,
    )
    if not sync:
        _attached(proc, engine, spec, own)
        return
    code = _live(settings, proc, engine, spec, own, checkout, restart, keep)
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
            where = bases.facts(engine, proc, spec.image, Engine.image_id(info), target, settings.cache_dir()).location
            livesync.follow_logs(engine, proc, spec.name, stop)
            mirror = livesync.Mirror(engine, proc, repo, spec.name, where, target, restart, settings.secret_paths)
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
    proc = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    checkout = Repo.open(validate.plain(repo or settings.container.repo, "--repo"), proc)
    script = command if command is not None else "if command -v bash >/dev/null; then exec bash; fi; exec sh"
    interactive = command is None and _tty()
    engine, spec, own = prepare(
        c, settings, proc, checkout, image, gpu, env, purpose="shell", mount_source=True, interactive=interactive
    )
    _attached(proc, engine, _replace_command(spec, ["/bin/sh", "-c", script]), own)


def _replace_command(spec: ctr.Spec, command: list[str]) -> ctr.Spec:
    return dataclasses.replace(spec, command=command)


def _tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()
