"""How a container starts and stops: a spec to an argv (`invoke run` / `shell`), bind mounts for every
container (SELinux relabel included), and the one lifecycle every task's container lives in (`running`).

The container starts through a small shell prologue (the image's own /bin/sh) that reads the private variables
file (secrets and explicit variables, mounted read-only; values never in argv or `inspect`), copies the overlay in
when asked, then execs the image's own entrypoint and command, so signals and the exit code are the command's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Failure

if TYPE_CHECKING:
    from .engine import Engine
    from .owners import Claim
    from .proc import Runner

RUN_IN = "/run/forkdev"  # the run's private directory, mounted read-only: the prologue and the variables
ENV_IN = f"{RUN_IN}/env"
INIT_IN = f"{RUN_IN}/init"
OVERLAY_IN = "/run/forkdev-overlay"
HF_IN = "/run/forkdev-hf"

# $1: where the overlay goes ("" for none), $2: "loop" to restart the command when it ends (live sync's
# --restart), then the command. The script keeps no variables of its own: its state is in positional parameters
# (which sourcing the variables file cannot change), the overlay is copied before that file is read, and `sleep`
# is found on the image's PATH before a user's PATH replaces it; so no user variable (into, mode, PATH, IFS)
# changes what it does. `set -a` exports what the variables file sets.
PROLOGUE = (
    "set -e; "
    f'if [ -n "$1" ]; then cp -a {OVERLAY_IN}/. "$1"/; fi; '
    'if [ "$2" = loop ]; then shift 2; set -- loop "$(command -v sleep)" "$@"; else shift 2; set -- exec "$@"; fi; '
    f"if [ -r {ENV_IN} ]; then set -a; . {ENV_IN}; set +a; fi; "
    'if [ "$1" = loop ]; then trap "exit 0" TERM INT; '
    'while :; do (shift 2; exec "$@") & wait $! || :; "$2" 0.2; done; fi; '
    'shift; exec "$@"'
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


def argv(exe: str, spec: Spec, kind: str = "docker") -> list[str]:
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
    mounts = list(spec.mounts)
    if spec.private is not None:
        mounts.append((str(spec.private), RUN_IN, "ro"))
    if spec.overlay is not None:
        mounts.append((str(spec.overlay[0]), OVERLAY_IN, "ro"))
    for host, inside, options in mounts:
        out += mount(host, inside, read_only=options == "ro", kind=kind, selinux=spec.selinux)
    out += label_args(spec.labels)
    if spec.workdir:
        out += ["--workdir", spec.workdir]
    into = spec.overlay[1] if spec.overlay else ""
    out += ["--entrypoint", "/bin/sh", "--", spec.image, INIT_IN, into, "loop" if spec.loop else "exec"]
    return out + spec.command


def mount(host: str, inside: str, *, read_only: bool, kind: str, selinux: bool) -> list[str]:
    """A bind mount as `--mount type=bind,source=...,target=...`: a path may hold ':' (which `--volume` splits
    on) or ',' and '"' (quoted as CSV fields, which both engines read)."""
    for path in (host, inside):
        if any(ch in path for ch in "\0\n\r"):
            raise Failure(f"cannot mount {path!r}: the path holds a line break or NUL; rename it")
    if selinux and kind == "docker":
        # docker's --mount cannot relabel for SELinux; only --volume's ',z' can, and it splits paths on ':'.
        for path in (host, inside):
            if ":" in path:
                raise Failure(f"cannot mount '{path}' with docker on SELinux: the path holds ':'; rename it")
        return ["--volume", f"{host}:{inside}:{'ro' if read_only else 'rw'},z"]
    fields = ["type=bind", f"source={host}", f"target={inside}"]
    if read_only:
        fields.append("readonly")
    if selinux:
        fields.append("relabel=shared")  # podman: let the container read what it mounts
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return ["--mount", line.getvalue()]


def prepare_private(folder: Path, variables: str) -> Path:
    """The container's private directory (`owners.Claim.private`): the prologue and the variables file."""
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


def label_args(labels: Mapping[str, str] | None) -> list[str]:
    """`--label KEY=VALUE` of each label, in order: how every container we start says what it is and whose."""
    return [arg for key, value in sorted((labels or {}).items()) for arg in ("--label", f"{key}={value}")]


def command_of(image: dict, given: list[str]) -> list[str]:
    """What the container runs: the command given after `--` as it is, else the image's entrypoint and command
    (`invoke run -- vllm serve MODEL` runs exactly that, whatever the image's entrypoint)."""
    if given:
        return list(given)
    config = image.get("Config") or {}
    return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]


class Started:
    """A container in its lifecycle: `ended(code)` says its attached client returned."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.removed = False

    def ended(self, returncode: int) -> None:
        """The attached client returned: with the command's own exit code, `--rm` removed the container before it
        did; 125 (the engine's own failure) or a signal (the client killed) may leave it behind."""
        self.removed = returncode >= 0 and returncode != 125


@contextlib.contextmanager
def running(run: Runner, engine: Engine, own: Claim | None, name: str, *, keep: bool = False) -> Iterator[Started]:
    """The one lifecycle of a container we start under the name `own.container()` gave it: inside the block it
    runs; after it, on every path (its end, a failure, Ctrl-C, a kill by SIGTERM or a closed terminal, which
    leave as Ctrl-C does), it is gone, unless `keep` and the block ended well or by the user leaving. A container
    whose removal fails stays in the claim, so a later run's sweep (core/owners.py) removes it. A dry run starts
    nothing, so it removes nothing and needs no claim."""
    box = Started(name)
    previous = _leave_on_signals()
    try:
        yield box
    except KeyboardInterrupt:
        if not keep:
            remove(run, engine, own, name)
        raise
    except BaseException:
        remove(run, engine, own, name)
        raise
    else:
        if box.removed and own is not None:
            own.gone(name)
        elif not keep:
            remove(run, engine, own, name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def remove(run: Runner, engine: Engine, own: Claim | None, name: str) -> None:
    if run.dry_run or own is None:
        return
    res = run(engine.cmd("rm", "--force", "--", name), check=False)
    # docker: "No such container"; podman: "no container with name or ID"
    if res.ok or re.search(r"no such container|no container with name", res.err, re.I):
        own.gone(name)


def _leave_on_signals() -> dict:
    """A kill (SIGTERM) or a closed terminal (SIGHUP) raises KeyboardInterrupt, as Ctrl-C does (main thread only:
    Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _leave) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _leave(signum, frame) -> None:
    raise KeyboardInterrupt
