"""The container engine as a frozen value, probed once (after pypa/cibuildwheel's oci_container.py).

Every quirk of docker or podman is a comment next to the one line that handles it; nothing else in the
project branches on the engine's name.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from dataclasses import dataclass
from typing import Any

from .errors import Failure
from .proc import Runner


@dataclass(frozen=True)
class Engine:
    name: str  # "docker" or "podman"
    exe: str
    client_version: str
    server_version: str
    buildkit: bool  # whether `RUN --mount` builds are available
    network: str  # for steps that need the network

    # ---- probing -------------------------------------------------------------------------------------
    @classmethod
    def detect(cls, run: Runner, preferred: str = "", network: str = "host") -> Engine:
        names = [preferred] if preferred else ["docker", "podman"]
        reasons = []
        for name in names:
            if name not in ("docker", "podman"):
                raise Failure(f"unknown engine '{name}' in engine.name; use docker or podman")
            exe = shutil.which(name)
            if not exe:
                reasons.append(f"{name} is not installed")
                continue
            probe = run([exe, "version", "--format", "{{json .}}"], mutates=False, check=False)
            if not probe.ok:
                reasons.append(f"'{name} version' failed: {probe.reason}")
                continue
            info = json.loads(probe.out)
            return cls._from_version(run, name, exe, info, network)
        raise Failure(
            "no container engine answers (" + "; ".join(reasons) + "); start one (e.g. "
            "'dockerd --bridge=none --iptables=false', see README) or set engine.name"
        )

    @classmethod
    def _from_version(cls, run: Runner, name: str, exe: str, info: dict[str, Any], network: str) -> Engine:
        client = info.get("Client") or {}
        server = info.get("Server") or {}
        client_version = str(client.get("Version", "?"))
        server_version = str(server.get("Version", client_version) if server else client_version)
        if name == "podman":
            # podman builds with buildah, which supports RUN --mount itself.
            buildkit = True
        else:
            # A docker client >= 23 builds with BuildKit only through the buildx plugin (the 28.x client in
            # /usr/local/bin here has none: it falls back to the legacy builder). Older clients (20.10)
            # have BuildKit built in, switched on with DOCKER_BUILDKIT=1.
            has_buildx = run([exe, "buildx", "version"], mutates=False, check=False).ok
            head = client_version.split(".")[0]
            major = int(head) if head.isdigit() else 0
            buildkit = has_buildx or 18 <= major < 23
        return cls(name, exe, client_version, server_version, buildkit, network)

    # ---- argv and small operations --------------------------------------------------------------------
    def cmd(self, *args: str) -> list[str]:
        return [self.exe, *args]

    def build_env(self) -> dict[str, str]:
        # docker 20.10 needs DOCKER_BUILDKIT=1 to use its built-in BuildKit; with buildx it is the default.
        return {"DOCKER_BUILDKIT": "1" if self.buildkit else "0"} if self.name == "docker" else {}

    def inspect_image(self, run: Runner, ref: str) -> dict[str, Any] | None:
        res = run(self.cmd("image", "inspect", ref), mutates=False, check=False)
        if not res.ok:
            return None
        data = json.loads(res.out)
        return data[0] if data else None

    def pull(self, run: Runner, ref: str) -> bool:
        return run(self.cmd("pull", ref), check=False, capture=False).ok

    def tag(self, run: Runner, source: str, ref: str) -> None:
        run(self.cmd("tag", source, ref))

    def push(self, run: Runner, ref: str) -> None:
        extra = []
        if self.name == "podman" and _loopback_registry(ref):
            # podman insists on TLS unless told; docker trusts 127.0.0.0/8 registries over plain HTTP.
            extra = ["--tls-verify=false"]
        res = run(self.cmd("push", *extra, ref), check=False)
        if not res.ok:
            raise Failure(f"push of '{ref}' failed: {res.reason}; check that the registry is up and you are logged in")

    def python(self, run: Runner, image: str, script: str, *args: str, failure: str) -> Any:
        """Run `script` with the image's own python3 (its entrypoint set aside, no network) and return the JSON
        of its last line of output; when that fails or is null, raise `failure` with {why} filled in."""
        argv = self.cmd("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", script, *args)
        res = run(argv, mutates=False, check=False)
        value = json.loads(res.out.splitlines()[-1]) if res.ok and res.out else None
        if value is None:
            raise Failure(failure.format(why=res.reason if res.err else "it found nothing"))
        return value

    def commit(self, run: Runner, container: str, tag: str, changes: list[str]) -> str:
        """Commit a container as `tag` with Dockerfile-style changes; returns the image id ("" under dry-run)."""
        argv = self.cmd("commit")
        for change in changes:
            argv += ["--change", change]
        res = run([*argv, container, tag])
        image_id = res.out.splitlines()[-1] if res.out else ""
        # docker prints sha256:<hex>; podman prints the bare hex (after progress lines on stderr).
        return image_id if not image_id or image_id.startswith("sha256:") else f"sha256:{image_id}"

    def remove_container(self, run: Runner, name: str) -> None:
        run(self.cmd("rm", "-f", name), check=False)

    @staticmethod
    def labels(image: dict[str, Any]) -> dict[str, str]:
        # podman keeps labels in Config.Labels like docker, but may leave them null.
        return dict((image.get("Config") or {}).get("Labels") or {})

    @staticmethod
    def env(image: dict[str, Any]) -> dict[str, str]:
        pairs = (image.get("Config") or {}).get("Env") or []
        return dict(p.split("=", 1) for p in pairs if "=" in p)


def _loopback_registry(ref: str) -> bool:
    host = ref.split("/", 1)[0].rsplit(":", 1)[0] if "/" in ref else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
