"""What `invoke run` and `shell` need before a container starts, from the Settings and one Ask: the image, its
command, the secrets and variables (into the container's private file), GPU, ports, mounts and the overlay; each
checked before anything starts."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from . import base as bases
from . import cache as store
from . import config, envfiles, owners, ui, validate
from . import container as ctr
from . import gpu as gpus
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner


def last_dev_image(cache: Path, repo: Repo) -> str | None:
    return store.read_json(store.dev_record(cache, repo.path)).get("image")


def pick_image(settings: config.Settings, repo: Repo, image: str | None) -> str:
    if image:
        return validate.image_ref(image, "--image")
    return last_dev_image(settings.cache, repo) or f"{settings.nightly.repository}:nightly"


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


@dataclass(frozen=True)
class Ask:
    """What the task's flags ask of the container."""

    purpose: str  # run, sync, shell: its name and label say it
    image: str | None = None
    gpu: str | None = None
    env: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    mount_source: bool = False
    overlay: Path | None = None  # the overlay directory to copy in before the command
    command: tuple[str, ...] = ()
    interactive: bool = False
    detach: bool = False
    loop: bool = False
    keep: bool = False


def prepare(settings: config.Settings, run: Runner, repo: Repo, ask: Ask) -> tuple[Engine, ctr.Spec, owners.Claim]:
    """Everything a container needs, validated before anything starts; its private files go in this process's
    claim (core/owners.py), which a later run sweeps only once this process is gone."""
    cfg, target = settings.container, settings.target
    image_ref = pick_image(settings, repo, ask.image)
    gpu_request = ask.gpu or cfg.gpu
    ports = list(ask.ports)
    variables = envfiles.load(envfiles.secrets_files(repo, cfg.secrets))
    configured = [f"{k}={v}" for k, v in cfg.env.items()]
    variables += envfiles.explicit(configured, "config container.env") + envfiles.explicit(list(ask.env))
    check_ports(ports)
    engine = settings.engine(run)
    network = validate.network(cfg.network or engine.network, "container.network" if cfg.network else "engine.network")
    cache = settings.cache_dir(run)
    owners.sweep(engine, run, cache)
    info = engine.inspect_image(run, image_ref)
    if info is None:
        raise Failure(f"no image '{image_ref}' here; build it with 'invoke dev' or 'invoke nightly', or pull it")
    full_command = ctr.command_of(info, list(ask.command))
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
    if ask.mount_source:
        mounts.append((str(repo.path), "/workspace", "rw"))
    overlay_spec = None
    if ask.overlay is not None:
        where = bases.facts(engine, run, image_ref, Engine.image_id(info), target, cache).location
        source = ask.overlay if where.root is not None else ask.overlay / target.package_path
        if not source.is_dir():
            raise Failure(f"no overlay at {source}; run 'invoke overlay' (and 'invoke patches --into overlay') first")
        overlay_spec = (source, where.root or where.package_dir)
    own = owners.claim(cache, engine, run)
    name, labels = own.container(ask.purpose, keep=ask.keep)
    rootless = engine.kind == "podman" and os.geteuid() != 0
    spec = ctr.Spec(
        image=image_ref,
        command=full_command,
        name=name,
        network=network,
        interactive=ask.interactive,
        detach=ask.detach,
        remove=not ask.detach,  # a detached (live-synced) one is removed by us, after its exit code is read
        gpu=gpu_args,
        ports=ports,
        mounts=mounts,
        private=None,
        overlay=overlay_spec,
        loop=ask.loop,
        userns_keep_id=rootless and ask.mount_source,
        selinux=ctr.selinux_enforcing(),
        labels=labels,
    )
    # A path no mount can hold fails here, before the private files are written.
    spec = dataclasses.replace(spec, private=own.folder / name)
    ctr.argv(engine.exe, spec, engine.kind)
    if not run.dry_run:  # a dry run shows where they would be, and writes no secret anywhere
        spec = dataclasses.replace(spec, private=ctr.prepare_private(own.private(name), envfiles.script(variables)))
    return engine, spec, own
