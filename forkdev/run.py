"""invoke run / shell / gpu-check / devcontainer: working inside the image, with secrets, GPU and live sync.

The image defaults to the last `invoke dev` image of the checkout, else the target's nightly. Secrets
(`extras/secrets/*.env`) and explicit variables reach the container through one private file it reads at start:
never through argv, `inspect`, a log or a layer. `run --sync` keeps the running container in step with the
checkout (core/livesync.py).
"""

from __future__ import annotations

import dataclasses
import errno
import json as jsonlib
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from .core import gpu as gpus
    from .core import owners

# What only these tasks use (containers, secrets files, GPUs, live sync) is imported where they run: see cli.py.

SHARED = {
    "image": "the image (default: the last 'invoke dev' image of --repo, else the target's nightly)",
    "repo": "the checkout (default: config container.repo, '.'): its secrets, its source for --mount-source and --sync",
    "gpu": "auto (what the host has), none, all, or a number of GPUs (default: config container.gpu)",
    "env": "KEY=VALUE (or KEY, from here) for the container; repeatable; wins over the secrets files",
    "target": "target profile (default: config target)",
}


def last_dev_image(cache: Path, repo: Repo) -> str | None:
    return store.read_json(store.dev_record(cache, repo.path)).get("image")


def pick_image(c: Any, repo: Repo, image: str | None, target: config.Target) -> str:
    if image:
        return validate.image_ref(image, "--image")
    return last_dev_image(config.cache_dir(c), repo) or f"{config.nightly_repository(c, target)}:nightly"


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
    run: Runner,
    repo: Repo,
    target: config.Target,
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

    cfg = c.config.container
    image_ref = pick_image(c, repo, image, target)
    gpu_request = gpu or cfg.gpu
    ports = list(ports or [])
    variables = envfiles.load(envfiles.secrets_files(repo, cfg.secrets))
    configured = [f"{k}={v}" for k, v in dict(cfg.env or {}).items()]
    variables += envfiles.explicit(configured, "config container.env") + envfiles.explicit(list(env or []))
    check_ports(ports)
    engine = config.engine(c, run)
    network = validate.network(cfg.network or engine.network, "container.network" if cfg.network else "engine.network")
    cache = config.cache_dir(c)
    owners.sweep(engine, run, cache)
    info = engine.inspect_image(run, image_ref)
    if info is None:
        raise Failure(f"no image '{image_ref}' here; build it with 'invoke dev' or 'invoke nightly', or pull it")
    full_command = ctr.command_of(info, list(command or []))
    if not full_command:
        raise Failure(f"image '{image_ref}' has no entrypoint or command; pass one after --")
    found = gpus.host(Path(cfg.gpu_root))
    gpu_args, picked = gpus.args(engine.kind, found, gpus.parse_request(gpu_request))
    ui.info(f"GPU: {picked}")
    mounts = []
    hf = Path(os.path.expanduser(cfg.hf_cache))
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
    proc = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    checkout = Repo.open(validate.plain(repo or c.config.container.repo, "--repo"), proc)
    command = remainder(c)
    hidden = config.secret_paths(c)  # what --sync never copies in; checked before anything starts
    if restart is not None:
        validate.plain(restart, "--restart")
        if not sync:
            raise Failure("--restart restarts a process after a live sync; use it with --sync")
    if keep and not sync:
        raise Failure("--keep keeps a live-synced container running after you leave; use it with --sync")
    if native and not sync:
        raise Failure("--native rebuilds native sources as a live sync copies them; use it with --sync")
    from .dev import native_spec

    compile_native = native_spec(c, profile, native, no_native, None, False) if sync else None
    engine, spec, own = prepare(
        c,
        proc,
        checkout,
        profile,
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
    code = _live(c, proc, engine, spec, own, checkout, profile, restart, keep, hidden, compile_native)
    if code:
        raise SystemExit(code)  # the server's own exit code, as it is


def _attached(proc: Runner, engine: Engine, spec: ctr.Spec, own: owners.Claim) -> None:
    """Run the container attached, its exit code ours; whatever ends it (its command, a failure, a signal), it
    is gone afterwards."""
    from .core import container as ctr

    previous = _leave_on_signals()
    try:
        res = proc(ctr.argv(engine.exe, spec, engine.kind), interactive=True, check=False)
    except BaseException:
        _remove(proc, engine, own, spec.name)
        raise
    finally:
        _restore(previous)
    if res.returncode == 125 or res.returncode < 0:  # the engine's own failure, or its client killed: it may be left
        _remove(proc, engine, own, spec.name)
    else:
        own.gone(spec.name)  # --rm removed it before the client returned
    if res.returncode:
        raise SystemExit(res.returncode)  # the command's own exit code, as it is


def _live(
    c,
    proc: Runner,
    engine: Engine,
    spec: ctr.Spec,
    own: owners.Claim,
    repo: Repo,
    target,
    restart,
    keep,
    hidden,
    native,
):
    """Start the container, sync until it ends or the user leaves; returns its exit code when it ended."""
    from .core import container as ctr
    from .core import livesync

    stop = threading.Event()
    previous = _leave_on_signals()
    code, failed = None, True
    try:
        # The watcher is up before the container starts: an edit made while it starts is synced too.
        batches = livesync.watching(repo.path, stop) if not proc.dry_run else iter(())
        pending = next(batches, (set(), set()))
        proc(ctr.argv(engine.exe, spec, engine.kind))
        if proc.dry_run:
            failed = False
            return None
        info = engine.inspect_image(proc, spec.image) or {}
        where = bases.facts(engine, proc, spec.image, Engine.image_id(info), target, config.cache_dir(c)).location
        live = _native_live(c, proc, engine, spec, repo, target, hidden, native) if native is not None else None
        livesync.follow_logs(engine, proc, spec.name, stop)
        mirror = livesync.Mirror(engine, proc, repo, spec.name, where, target, restart, hidden, live)
        livesync.follow(mirror, iter([pending]))
        ui.info(f"syncing {repo.path} into {spec.name}; Ctrl-C to leave" + (" (it keeps running)" if keep else ""))
        livesync.follow(mirror, batches)
        code = _exit_code(proc, engine, spec.name)
        failed = False
    except KeyboardInterrupt:
        failed = False  # the user left (Ctrl-C, SIGTERM, SIGHUP)
    finally:
        stop.set()
        _restore(previous)
        if failed or not keep:
            _remove(proc, engine, own, spec.name)
    if code:
        ui.warn(f"the container's command exited with {code}")
    ui.result(spec.name)
    return code


def _native_live(c, proc: Runner, engine: Engine, spec: ctr.Spec, repo: Repo, target, hidden, native):
    """What --native rebuilds against: the image's base (a thin image names it; the workspace of `dev --native`
    on it), and the compiled files the running image holds."""
    from .core import labels as L
    from .core import nativebuild

    cache = config.cache_dir(c)
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


def _remove(proc: Runner, engine: Engine, own: owners.Claim, name: str) -> None:
    res = proc(engine.cmd("rm", "--force", name), check=False)
    # docker: "No such container"; podman: "no container with name or ID"
    if res.ok or re.search(r"no such container|no container with name", res.err, re.I):
        own.gone(name)


def _leave_on_signals() -> dict:
    """A kill (SIGTERM) or a closed terminal (SIGHUP) leaves as Ctrl-C does: the container goes too."""
    return {sig: signal.signal(sig, _leave) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _leave(signum, frame) -> None:
    raise KeyboardInterrupt


@task(iterable=["env"], help={**SHARED, "command": "run this command in the shell instead of an interactive one"})
def shell(c, image=None, repo=None, gpu=None, env=None, command=None, target=None, dry_run=False, quiet=False):
    """An interactive shell in the image (bash if it has one), with the same secrets and GPU as run."""
    proc = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    checkout = Repo.open(validate.plain(repo or c.config.container.repo, "--repo"), proc)
    script = command if command is not None else "if command -v bash >/dev/null; then exec bash; fi; exec sh"
    interactive = command is None and _tty()
    engine, spec, own = prepare(
        c, proc, checkout, profile, image, gpu, env, purpose="shell", mount_source=True, interactive=interactive
    )
    _attached(proc, engine, _replace_command(spec, ["/bin/sh", "-c", script]), own)


def _replace_command(spec: ctr.Spec, command: list[str]) -> ctr.Spec:
    return dataclasses.replace(spec, command=command)


def _tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


@task(help={"image": "also check what a container of this image sees", "gpu": "what to ask for (default: all)"})
def gpu_check(c, image=None, gpu="all", json=False, quiet=False):
    """What GPUs the host offers and a container sees; fails, naming the missing piece, when there is none."""
    proc = runner(c, False, quiet)
    found = _host(c)
    result: dict[str, Any] = {
        "host": found.describe(),
        "driver": found.driver,
        "cdi": list(found.cdi_specs),
        "wsl": found.wsl,
        "container": None,
    }
    ui.info(f"host: {found.describe()}")
    engine = config.engine(c, proc)
    try:
        gpu_args, picked = _gpu_args(engine.kind, found, gpu)
    except Failure as exc:
        if json:
            ui.emit_json({**result, "ok": False, "problem": str(exc)})
        raise
    ui.info(f"engine: {picked}")
    if image:
        ref = validate.image_ref(image, "--image")
        probe = "nvidia-smi -L" if not found.wsl else "ls /dev/dxg && ls /usr/lib/wsl/lib/libcuda.so*"
        argv = engine.cmd(
            "run", "--rm", "--network", "none", *gpu_args, "--entrypoint", "/bin/sh", "--", ref, "-c", probe
        )
        res = proc(argv, check=False, mutates=False)
        result["container"] = res.out
        if not res.ok:
            if json:
                ui.emit_json({**result, "ok": False, "problem": res.reason})
            raise Failure(f"a container of '{ref}' sees no GPU ({res.reason}); check the image's CUDA and the toolkit")
    if json:
        ui.emit_json({**result, "ok": True})
    (ui.ok if json else ui.result)(f"GPU available: {picked}")


def _host(c) -> gpus.Host:
    from .core import gpu as gpus

    return gpus.host(Path(c.config.container.gpu_root))


def _gpu_args(kind: str, found: gpus.Host, request: str) -> tuple[list[str], str]:
    from .core import gpu as gpus

    parsed = gpus.parse_request(request)
    if parsed == "none":
        raise Failure("gpu-check --gpu none checks nothing; ask for all or a number")
    args, picked = gpus.args(kind, found, parsed)
    if not args:
        raise Failure(f"no GPU is visible: {picked}; install the NVIDIA driver and container toolkit")
    return args, picked


@task(iterable=["port"], help={**{k: v for k, v in SHARED.items() if k != "env"}, "port": "a port to forward"})
def devcontainer(c, image=None, repo=None, gpu=None, port=None, target=None, dry_run=False, quiet=False):
    """Write .devcontainer/devcontainer.json (image, mounts, secrets, GPU run args, ports), merged into yours."""
    from .core import container as ctr
    from .core import devcontainer as dc
    from .core import envfiles, secrets
    from .core import gpu as gpus
    from .core.fsutil import os_errors, replace_files

    proc = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    checkout = Repo.open(validate.plain(repo or c.config.container.repo, "--repo"), proc)
    ports = parse_ports(port)
    envfiles.load(envfiles.secrets_files(checkout, c.config.container.secrets))  # refused here as `run` refuses them
    folder = secrets.relative(c.config.container.secrets, "container.secrets")
    has_secrets = secrets.located(checkout.path, folder, "container.secrets") is not None
    ref = pick_image(c, checkout, image, profile)
    engine = config.engine(c, proc)
    gpu_args, picked = gpus.args(engine.kind, _host(c), gpus.parse_request(gpu or c.config.container.gpu))
    where = checkout.path / ".devcontainer"
    target_file, script, backup = where / "devcontainer.json", where / dc.SCRIPT, where / "devcontainer.json.bak"
    for path in (where, target_file, script, backup):
        if path.is_symlink():
            raise Failure(f"{path} is a symlink; forkdev does not write through links: replace it with a file")
    current: Any = {}
    with os_errors(f"read {where}"):  # a directory where a file belongs, no permission: one line
        before = target_file.read_bytes() if target_file.exists() else None
        foreign = script.exists() and not script.read_text(errors="replace").startswith(dc.PROFILE[:40])
    if before is not None:
        try:
            current = jsonlib.loads(before)
        except ValueError:
            raise Failure(f"{target_file} is not plain JSON (comments?); fix or remove it, then re-run") from None
    if foreign:
        raise Failure(f"{script} exists and forkdev did not write it; move it away, then re-run")
    hf = Path(os.path.expanduser(c.config.container.hf_cache))
    mine = dc.ours(
        name=f"forkdev {profile.name}",
        image=ref,
        run_args=gpu_args,
        hf_cache=str(hf) if hf.is_dir() else None,
        hf_in=ctr.HF_IN,
        secrets_dir=folder if has_secrets else None,
        ports=ports,
    )
    merged, notes = dc.merge(current, mine, str(target_file), folder)
    ui.info(f"GPU: {picked}")
    for note in notes:
        ui.info(note)
    text = jsonlib.dumps(merged, indent=2) + "\n"
    if proc.dry_run:
        ui.info(text)
        return
    files = {f".devcontainer/{target_file.name}": (text.encode(), 0o644)}
    if has_secrets:
        files[f".devcontainer/{dc.SCRIPT}"] = (dc.PROFILE.encode(), 0o644)
    if before is not None and before != text.encode():
        files[f".devcontainer/{backup.name}"] = (before, 0o644)
        ui.info(f"the previous file is kept as {backup}")
    with os_errors(f"write {target_file}"):
        replace_files(checkout.path, files)  # each file by a rename; no parent that is a link is followed
    ui.result(str(target_file))
