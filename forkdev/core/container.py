"""How `invoke run` / `shell` / `gpu-check` start a container: one pure function from a spec to an argv.

The container starts through a small shell prologue (the image's own /bin/sh) that reads the private variables
file (secrets and explicit variables, mounted read-only; values never in argv or `inspect`), copies the overlay in
when asked, then execs the image's own entrypoint and command, so signals and the exit code are the command's.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from . import labels as L
from . import ui
from .engine import Engine
from .proc import Runner

RUN_IN = "/run/forkdev"  # the run's private directory, mounted read-only: the prologue and the variables
ENV_IN = f"{RUN_IN}/env"
INIT_IN = f"{RUN_IN}/init"
OVERLAY_IN = "/run/forkdev-overlay"
HF_IN = "/run/forkdev-hf"

# $1: where the overlay goes ("" for none), $2: "loop" to restart the command when it ends (live sync's
# --restart), then the command. `set -a` exports what the variables file sets.
PROLOGUE = (
    "set -e; into=$1; mode=$2; shift 2; "
    f"if [ -r {ENV_IN} ]; then set -a; . {ENV_IN}; set +a; fi; "
    f'if [ -n "$into" ]; then cp -a {OVERLAY_IN}/. "$into"/; fi; '
    'if [ "$mode" = loop ]; then trap "exit 0" TERM INT; while :; do "$@" & wait $! || :; sleep 0.2; done; fi; '
    'exec "$@"'
)


@dataclass(frozen=True)
class Spec:
    image: str
    command: list[str]  # entrypoint + command, as the container must run them
    name: str
    network: str
    interactive: bool = False  # attach stdin and a TTY
    detach: bool = False
    remove: bool = True
    gpu: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    mounts: list[tuple[str, str, str]] = field(default_factory=list)  # (host, container, options)
    private: Path | None = None  # the run's private directory (prologue, variables), see `prepare_private`
    overlay: tuple[Path, str] | None = None  # (host overlay dir, where it goes in the image)
    loop: bool = False
    userns_keep_id: bool = False
    selinux: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None


def argv(exe: str, spec: Spec) -> list[str]:
    out = [exe, "run", "--name", spec.name, "--ipc=host", "--network", spec.network]
    if spec.remove:
        out.append("--rm")
    if spec.detach:
        out.append("--detach")
    if spec.interactive:
        out += ["--interactive", "--tty"]
    if spec.userns_keep_id:
        out.append("--userns=keep-id")  # rootless podman: files in /workspace stay the user's own
    out += spec.gpu
    if spec.network != "host":  # host networking binds the host's ports directly: nothing to publish
        for port in spec.ports:
            out += ["--publish", f"{port}:{port}"]
    relabel = ",z" if spec.selinux else ""  # SELinux: let the container read what it mounts
    mounts = list(spec.mounts)
    if spec.private is not None:
        mounts.append((str(spec.private), RUN_IN, "ro"))
    if spec.overlay is not None:
        mounts.append((str(spec.overlay[0]), OVERLAY_IN, "ro"))
    for host, inside, options in mounts:
        out += ["--volume", f"{host}:{inside}:{options}{relabel}"]
    for key, value in sorted(spec.labels.items()):
        out += ["--label", f"{key}={value}"]
    if spec.workdir:
        out += ["--workdir", spec.workdir]
    into = spec.overlay[1] if spec.overlay else ""
    out += ["--entrypoint", "/bin/sh", "--", spec.image, INIT_IN, into, "loop" if spec.loop else "exec"]
    return out + spec.command


def private_parent(cache: Path) -> Path:
    """Where runs keep their private directories: inside a directory only we can enter (0700), so the files in
    it can be readable by the container's own user (whoever the image runs as) and still by no one else here."""
    parent = cache / "run"
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o700)
    return parent


def prepare_private(folder: Path, variables: str) -> Path:
    """The run's private directory (under `private_parent`): the prologue and the variables file."""
    folder.chmod(0o755)
    (folder / "init").write_text(PROLOGUE + "\n")
    fd = os.open(folder / "env", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(variables)
    return folder


def selinux_enforcing(root: Path = Path("/")) -> bool:
    try:
        return (root / "sys/fs/selinux/enforce").read_text().strip() == "1"
    except OSError:
        return False


def command_of(image: dict, given: list[str]) -> list[str]:
    """What the container runs: the command given after `--` as it is, else the image's entrypoint and command
    (`invoke run -- vllm serve MODEL` runs exactly that, whatever the image's entrypoint)."""
    if given:
        return list(given)
    config = image.get("Config") or {}
    return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]


def container_name(purpose: str) -> str:
    return f"forkdev-{purpose}-{os.getpid()}"


def owner_labels(purpose: str) -> dict[str, str]:
    return {L.RUN: purpose, L.HOST: socket.gethostname()}


def sweep_orphans(engine: Engine, run: Runner) -> None:
    """Remove the containers a killed run of this machine left (its pid is in the name; the host in a label):
    run's, shell's and smoke's alike."""
    from .scratch import alive

    here = f"label={L.HOST}={socket.gethostname()}"
    listing = run(engine.cmd("ps", "-a", "--filter", here, "--format", "{{.Names}}"), mutates=False)
    for name in orphans(listing.out.split(), alive):
        ui.info(f"removing {name}, left by a run that was killed")
        run(engine.cmd("rm", "--force", name), check=False)


def orphans(names: list[str], alive) -> list[str]:
    """Of this machine's forkdev containers, those whose owning process is gone (a kill -9 skips its cleanup)."""
    found = []
    for name in names:
        _, _, pid = name.rpartition("-")
        if name.startswith("forkdev-") and pid.isdigit() and not alive(int(pid)):
            found.append(name)
    return found
