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
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core import base as bases
from .core import config, state, ui, validate
from .core.engine import Engine
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.scratch import scratch
from .core.tasking import remainder, runner, task

if TYPE_CHECKING:
    from .core import container as ctr
    from .core import gpu as gpus

# What only these tasks use (containers, secrets files, GPUs, live sync) is imported where they run: see cli.py.

SHARED = {
    "image": "the image (default: the last 'invoke dev' image of --repo, else the target's nightly)",
    "repo": "the checkout (default: config run.repo, '.'): its secrets, its source for --mount-source and --sync",
    "gpu": "auto (what the host has), none, all, or a number of GPUs (default: config run.gpu)",
    "env": "KEY=VALUE (or KEY, from here) for the container; repeatable; wins over the secrets files",
    "target": "target profile (default: config target)",
}


def last_dev_image(cache: Path, repo: Repo) -> str | None:
    return state.read(config.cache_path(cache, "dev", str(repo.path)).with_suffix(".json")).get("image")


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
        if not str(value).isdigit() or not 0 < int(value) < 65536:
            raise Failure(f"--port '{value}' is not a port number (1-65535); pass e.g. --port 8000")
        ports.append(int(value))
    return ports


def prepare(
    c,
    run: Runner,
    repo: Repo,
    image_ref: str,
    *,
    gpu_request: str,
    env: list[str],
    ports: list[int],
    mount_source: bool,
    overlay: bool,
    tmp: Path,
    target: config.Target,
    purpose: str,
    command: list[str],
    interactive: bool,
    detach: bool = False,
    loop: bool = False,
) -> tuple[Engine, ctr.Spec, dict]:
    """Everything a container needs, validated before anything starts; the private variables file goes in `tmp`."""
    from .core import container as ctr
    from .core import envfiles
    from .core import gpu as gpus

    cfg = c.config.run
    variables = envfiles.load(envfiles.secrets_files(repo, cfg.secrets))
    configured = [f"{k}={v}" for k, v in dict(cfg.env or {}).items()]
    variables += envfiles.explicit(configured, "config run.env") + envfiles.explicit(list(env or []))
    check_ports(ports)
    engine = config.engine(c, run)
    ctr.sweep_orphans(engine, run)
    info = engine.inspect_image(run, image_ref)
    if info is None:
        raise Failure(f"no image '{image_ref}' here; build it with 'invoke dev' or 'invoke nightly', or pull it")
    full_command = ctr.command_of(info, command)
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

        where = bases.facts(engine, run, image_ref, Engine.image_id(info), target, config.cache_dir(c)).location
        source = resolve_dest(c, repo, None)
        source = source if where.root is not None else source / target.package_path
        if not source.is_dir():
            raise Failure(f"no overlay at {source}; run 'invoke overlay' (and 'invoke patches --into overlay') first")
        overlay_spec = (source, where.root or where.package_dir)
    private = ctr.prepare_private(tmp, envfiles.script(variables))
    rootless = engine.kind == "podman" and os.geteuid() != 0
    spec = ctr.Spec(
        image=image_ref,
        command=full_command,
        name=ctr.container_name(purpose),
        network=cfg.network or engine.network,
        interactive=interactive,
        detach=detach,
        gpu=gpu_args,
        ports=ports,
        mounts=mounts,
        private=private,
        overlay=overlay_spec,
        loop=loop,
        userns_keep_id=rootless and mount_source,
        selinux=ctr.selinux_enforcing(),
        labels=ctr.owner_labels(purpose),
    )
    report = {"image": image_ref, "gpu": picked, "variables": sorted({v.key for v in variables}), "name": spec.name}
    return engine, spec, report


@task(
    iterable=["env", "port"],
    help={
        **SHARED,
        "port": "a port the server listens on; repeatable (published, or checked free with host networking)",
        "mount_source": "mount the checkout at /workspace",
        "overlay": "copy the overlay ('invoke overlay' / 'invoke patches --into overlay') in before the command",
        "sync": "keep the running container in step with the checkout until Ctrl-C (edits, new files, deletions)",
        "restart": "with --sync: restart the processes whose command line holds this text after each sync",
        "keep": "with --sync: leave the container running when you leave",
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
    from .core import container as ctr

    proc = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    checkout = Repo.open(validate.plain(repo or c.config.run.repo, "--repo"), proc)
    command = remainder(c)
    if restart is not None:
        validate.plain(restart, "--restart")
        if not sync:
            raise Failure("--restart restarts a process after a live sync; use it with --sync")
    with scratch("run", ctr.private_parent(config.cache_dir(c))) as tmp:
        engine, spec, _ = prepare(
            c,
            proc,
            checkout,
            pick_image(c, checkout, image, profile),
            gpu_request=gpu or c.config.run.gpu,
            env=env,
            ports=parse_ports(port),
            mount_source=mount_source,
            overlay=overlay,
            tmp=tmp,
            target=profile,
            purpose="sync" if sync else "run",
            command=command,
            interactive=not sync and _tty(),
            detach=sync,
            loop=bool(restart),
        )
        if not sync:
            res = proc(ctr.argv(engine.exe, spec), interactive=True, check=False)
            if res.returncode:
                raise SystemExit(res.returncode)  # the command's own exit code, as it is
            return
        _live(c, proc, engine, spec, checkout, profile, restart, keep)


def _live(c, proc: Runner, engine: Engine, spec: ctr.Spec, repo: Repo, target, restart: str | None, keep: bool):
    from .core import container as ctr
    from .core import livesync

    proc(ctr.argv(engine.exe, spec))
    if proc.dry_run:
        return
    stop = threading.Event()
    # A kill (SIGTERM) or a closed terminal (SIGHUP) leaves the sync as Ctrl-C does: the container goes too.
    previous = {sig: signal.signal(sig, _leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        info = engine.inspect_image(proc, spec.image) or {}
        where = bases.facts(engine, proc, spec.image, Engine.image_id(info), target, config.cache_dir(c)).location
        livesync.follow_logs(engine, proc, spec.name, stop)
        ui.info(f"syncing {repo.path} into {spec.name}; Ctrl-C to leave" + (" (it keeps running)" if keep else ""))
        livesync.watch(engine, proc, repo, spec.name, where, target, restart, stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            proc(engine.cmd("rm", "--force", spec.name), check=False)
    ui.result(spec.name)


def _leave(signum, frame) -> None:
    raise KeyboardInterrupt


@task(iterable=["env"], help={**SHARED, "command": "run this command in the shell instead of an interactive one"})
def shell(c, image=None, repo=None, gpu=None, env=None, command=None, target=None, dry_run=False, quiet=False):
    """An interactive shell in the image (bash if it has one), with the same secrets and GPU as run."""
    from .core import container as ctr

    proc = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    checkout = Repo.open(validate.plain(repo or c.config.run.repo, "--repo"), proc)
    script = command if command is not None else "if command -v bash >/dev/null; then exec bash; fi; exec sh"
    with scratch("shell", ctr.private_parent(config.cache_dir(c))) as tmp:
        engine, spec, _ = prepare(
            c,
            proc,
            checkout,
            pick_image(c, checkout, image, profile),
            gpu_request=gpu or c.config.run.gpu,
            env=env,
            ports=[],
            mount_source=True,
            overlay=False,
            tmp=tmp,
            target=profile,
            purpose="shell",
            command=[],
            interactive=command is None and _tty(),
        )
        spec = _replace_command(spec, ["/bin/sh", "-c", script])
        res = proc(ctr.argv(engine.exe, spec), interactive=True, check=False)
        if res.returncode:
            raise SystemExit(res.returncode)


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

    return gpus.host(Path(c.config.run.gpu_root))


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
    """Write .devcontainer/devcontainer.json (image, mounts, env files, GPU run args, ports); updates it in place."""
    from .core import container as ctr
    from .core import envfiles
    from .core import gpu as gpus

    proc = runner(c, dry_run, quiet)
    profile = config.of(c, target)
    checkout = Repo.open(validate.plain(repo or c.config.run.repo, "--repo"), proc)
    ref = pick_image(c, checkout, image, profile)
    engine = config.engine(c, proc)
    gpu_args, picked = gpus.args(engine.kind, _host(c), gpus.parse_request(gpu or c.config.run.gpu))
    secrets = [str(p.relative_to(checkout.path)) for p in envfiles.secrets_files(checkout, c.config.run.secrets)]
    target_file = checkout.path / ".devcontainer" / "devcontainer.json"
    if target_file.is_symlink() or target_file.parent.is_symlink():
        raise Failure(f"{target_file} is a symlink; forkdev does not write through links: replace it with a file")
    current: dict[str, Any] = {}
    if target_file.exists():
        try:
            current = jsonlib.loads(target_file.read_text())
        except ValueError:
            raise Failure(f"{target_file} is not plain JSON (comments?); fix or remove it, then re-run") from None
    hf = Path(os.path.expanduser(c.config.run.hf_cache))
    run_args = ["--ipc=host", *gpu_args] + [
        a for s in secrets for a in ("--env-file", f"${{localWorkspaceFolder}}/{s}")
    ]
    ours = {
        "name": f"forkdev {profile.name}",
        "image": ref,
        "workspaceMount": "source=${localWorkspaceFolder},target=/workspace,type=bind",
        "workspaceFolder": "/workspace",
        "runArgs": run_args,
        "mounts": [f"source={hf},target={ctr.HF_IN},type=bind"] if hf.is_dir() else [],
        "containerEnv": {"HF_HOME": ctr.HF_IN} if hf.is_dir() else {},
        "forwardPorts": parse_ports(port),
        "overrideCommand": True,
    }
    merged = {**current, **ours}
    ui.info(f"GPU: {picked}")
    if proc.dry_run:
        ui.info(jsonlib.dumps(merged, indent=2))
        return
    target_file.parent.mkdir(exist_ok=True)
    state.write(target_file, merged)
    ui.result(str(target_file))
