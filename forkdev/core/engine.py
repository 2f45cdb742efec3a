"""The container engine as a frozen value, probed once (after pypa/cibuildwheel's oci_container.py).

Every quirk of docker or podman is a comment next to the one line that handles it; nothing else in the
project branches on the engine's kind. Where docker's client would talk to its daemon's unix socket itself, the
version, an image's inspect and a load are asked there (`socket`), each echoed as the command it stands for.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import ui
from .errors import Failure
from .proc import Result, Runner, shown

Kind = Literal["docker", "podman"]
KINDS: tuple[Kind, ...] = ("docker", "podman")
HOST_ENV: dict[Kind, str] = {"docker": "DOCKER_HOST", "podman": "CONTAINER_HOST"}


@dataclass(frozen=True)
class Engine:
    """The container engine of this run, probed once: its kind, program, versions and quirks in one place."""

    kind: Kind
    exe: str
    client_version: str
    server_version: str
    network: str  # for steps that need the network
    # docker's unix socket where its client would talk to that daemon itself (see _daemon_socket): image inspect
    # and load are asked there, as the client would, without starting the client program; "" = ask the client.
    socket: str = ""
    _asked: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # answers asked once, when needed

    @property
    def name(self) -> str:
        return self.kind

    # ---- probing -------------------------------------------------------------------------------------
    @classmethod
    def detect(cls, run: Runner, preferred: str = "", network: str = "host", client: str = "") -> Engine:
        """The engine configured, else the one a DOCKER_HOST / CONTAINER_HOST names, else docker, then podman.
        An engine that is named (by config or by its host variable) and does not answer is an error, never a
        silent switch to the other one. `client`: the engine's command-line program, when not the one on PATH
        (e.g. a docker client with BuildKit beside a newer one without buildx)."""
        if preferred and preferred not in KINDS:
            raise Failure(f"unknown engine '{preferred}' in engine.name; use docker or podman")
        if client and not preferred:
            preferred = os.path.basename(client)
            if preferred not in KINDS:
                raise Failure(f"engine.client '{client}' is neither docker nor podman by name; set engine.name too")
        named = [k for k in KINDS if os.environ.get(HOST_ENV[k])]
        kinds: list[Kind] = [preferred] if preferred else named[:1] or list(KINDS)  # type: ignore[list-item]
        reasons = []
        for kind in kinds:
            exe = shutil.which(client) if client else shutil.which(kind)
            if not exe:
                reasons.append(f"{client or kind} is not installed" if client else f"{kind} is not installed")
                continue
            socket = _daemon_socket() if kind == "docker" and not client else None  # a client may go elsewhere
            daemon = _daemon_version(socket) if socket else None
            if daemon is not None:  # the client's version is asked only if a build needs it (`client`)
                info = {"Client": {"Version": ""}, "Server": daemon}
            else:
                probe = run([exe, "version", "--format", "{{json .}}"], mutates=False, check=False)
                info = _json(probe.out) if probe.ok else None
            if info is None:
                host = os.environ.get(HOST_ENV[kind])
                where = f" at {HOST_ENV[kind]}={host}" if host else ""
                reasons.append(f"'{kind} version'{where} failed: {probe.reason}")
                continue
            engine = cls._from_version(kind, exe, info, network, socket if daemon is not None else "")
            if not preferred:
                why = f"{HOST_ENV[kind]} is set" if named else "auto-detected"
                ui.info(f"engine: {kind} {engine.server_version} ({why}; set engine.name to choose)")
            return engine
        if named and not preferred:
            raise Failure(
                f"{HOST_ENV[kinds[0]]}={os.environ[HOST_ENV[kinds[0]]]} does not answer ({'; '.join(reasons)}); "
                f"start that engine, or unset {HOST_ENV[kinds[0]]}"
            )
        raise Failure(
            "no container engine answers (" + "; ".join(reasons) + "); start one (e.g. "
            "'dockerd --bridge=none --iptables=false', see README) or set engine.name"
        )

    @classmethod
    def _from_version(cls, kind: Kind, exe: str, info: dict[str, Any], network: str, socket: str = "") -> Engine:
        client = info.get("Client") or {}
        server = info.get("Server") or {}
        client_version = str(client.get("Version", "?"))
        server_version = str(server.get("Version", client_version) if server else client_version)
        return cls(kind, exe, client_version, server_version, network, socket)

    def client(self, run: Runner) -> str:
        """The version of the client program (asked once, when the daemon alone was probed)."""
        if self.client_version:
            return self.client_version
        if "client" not in self._asked:
            res = run([self.exe, "version", "--format", "{{.Client.Version}}"], mutates=False, check=False)
            self._asked["client"] = res.out if res.ok and res.out else "?"
        return self._asked["client"]

    def buildkit(self, run: Runner) -> bool:
        """Whether builds can use BuildKit features (`RUN --mount`); asked only when a build needs to know."""
        if self.kind == "podman":
            return True  # podman builds with buildah, which supports RUN --mount itself
        if "buildkit" not in self._asked:
            # A docker client >= 23 builds with BuildKit only through the buildx plugin (a 28.x client without
            # it falls back to the legacy builder). Older clients (20.10) have BuildKit built in, switched on
            # with DOCKER_BUILDKIT=1.
            has_buildx = run([self.exe, "buildx", "version"], mutates=False, check=False).ok
            head = self.client(run).split(".")[0]
            major = int(head) if head.isdigit() else 0
            self._asked["buildkit"] = has_buildx or 18 <= major < 23
        return self._asked["buildkit"]

    # ---- argv and small operations --------------------------------------------------------------------
    def cmd(self, *args: str) -> list[str]:
        return [self.exe, *args]

    def build_env(self, run: Runner | None = None, *, buildkit: bool | None = None) -> dict[str, str]:
        """The environment of a `build`: docker 20.10 needs DOCKER_BUILDKIT=1 to use its built-in BuildKit, and
        a client without buildx needs DOCKER_BUILDKIT=0 to use the legacy builder without failing."""
        if self.kind != "docker":
            return {}
        use = buildkit if buildkit is not None else (self.buildkit(run) if run else False)
        return {"DOCKER_BUILDKIT": "1" if use else "0"}

    def inspect_image(self, run: Runner, ref: str) -> dict[str, Any] | None:
        """The image's inspect output, or None when the engine has no such image. Any other failure (a client the
        daemon refuses, a daemon gone) is said as it is, not taken for an absent image."""
        path = self._api_path(f"/images/{ref}/json") if _PLAIN_REF.fullmatch(ref) and ".." not in ref else None
        answer = self._api(run, ("image", "inspect", "--", ref), "GET", path, mutates=False) if path else None
        if answer is not None:  # the same request the client sends; it prints the object in a list
            status, body = answer
            if status == 404:
                return None
            data = _json(body.decode("utf-8", "replace")) if status == 200 else None
            if isinstance(data, dict):
                return data
            reason = _api_error(status, body)
        else:
            res = run(self.cmd("image", "inspect", "--", ref), mutates=False, check=False)
            if res.ok:
                data = _json(res.out)
                return data[0] if data else None
            # docker: "No such image: REF" (20.10's client) or "no such image" (newer); podman: "image not known"
            if re.search(r"no such image|image not known", res.err, re.I):
                return None
            reason = res.reason
        raise Failure(
            f"'{self.kind} image inspect {ref}' failed ({reason}); check that '{self.exe} version' answers for both "
            "client and engine"
        )

    def history(self, run: Runner, image: dict[str, Any]) -> list[dict[str, Any]]:
        """The image's history as OCI config entries (created, created_by, comment, empty_layer), oldest first."""
        if self.kind == "podman":
            return list(image.get("History") or [])  # podman's inspect carries the config's history as is
        # docker's inspect has no history; `docker history` lists it newest first, with sizes in bytes.
        res = run(
            self.cmd("history", "--no-trunc", "--human=false", "--format", "{{json .}}", "--", image["Id"]),
            mutates=False,
        )
        rows = [json.loads(line) for line in res.out.splitlines() if line.strip()][::-1]
        layers = len((image.get("RootFS") or {}).get("Layers") or [])
        empty_needed = len(rows) - layers  # entries that made no layer; zero-size rows are the candidates
        entries = []
        for row in rows:
            entry = {"created": _utc(str(row.get("CreatedAt", ""))), "created_by": row.get("CreatedBy", "")}
            if row.get("Comment"):
                entry["comment"] = row["Comment"]
            if empty_needed > 0 and str(row.get("Size", "0")) == "0":
                entry["empty_layer"] = True
                empty_needed -= 1
            entries.append(entry)
        return entries

    def stored_config(self, run: Runner, image: dict[str, Any]) -> bytes | None:
        """The image's config as the engine stores it: the bytes whose sha256 is the image id, identical on both
        engines for one image (inspect shows each engine's own rendering of it, `docker history` less). None
        where it cannot be read; what is returned is checked against the id."""
        digest = str(image.get("Id", "")).split(":")[-1]
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            return None
        if self.kind == "podman":
            # containers/storage keeps it beside the image as the big-data item named after its digest; the
            # store is the user's own (rootless) or root's (rootful podman runs as root).
            where = "{{.Store.GraphRoot}}\t{{.Store.GraphDriverName}}"
            res = run(self.cmd("info", "--format", where), mutates=False, check=False)
            root, _, driver = res.out.partition("\t")
            if not res.ok or not root or not driver:
                return None
            item = "=" + base64.b64encode(f"sha256:{digest}".encode()).decode()
            try:
                data = (Path(root) / f"{driver}-images" / digest / item).read_bytes()
            except (OSError, ValueError):
                return None
        else:
            # docker keeps it in its image store, named by the id; a container of the image reads it from a
            # read-only bind mount, which the daemon resolves where it runs (a remote or rootless daemon too). The
            # containerd image store or a user-namespace remap leave it unreadable.
            res = run(self.cmd("info", "--format", "{{.DockerRootDir}}\t{{.Driver}}"), mutates=False, check=False)
            root, _, driver = res.out.partition("\t")
            stored = f"{root}/image/{driver}/imagedb/content/sha256/{digest}"
            if not res.ok or not root.startswith("/") or not driver or "," in stored:
                return None  # a mount's source is one field of --mount
            argv = self.cmd("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "python3")
            argv += ["--mount", f"type=bind,source={stored},target=/forkdev-config,readonly"]
            read = "import sys; sys.stdout.buffer.write(open('/forkdev-config', 'rb').read())"
            data = run([*argv, "--", image["Id"], "-c", read], mutates=False, check=False).stdout
        return data if hashlib.sha256(data).hexdigest() == digest else None

    @property
    def archive_format(self) -> str:
        # docker 20.10 loads a docker-archive that lists the base's layers without carrying them (it looks the
        # layer chain up and skips what it has); podman refuses that ("Some layer tarfiles are missing") but
        # loads an oci-archive whose manifest names the base's layers by their uncompressed digests, and names
        # the image after the index's org.opencontainers.image.ref.name annotation.
        return "docker-archive" if self.kind == "docker" else "oci-archive"

    def load(self, run: Runner, archive: bytes) -> Result:
        """Load an image archive from stdin (both engines read it there); not ok when the engine refuses it."""
        path = self._api_path("/images/load?quiet=1")
        answer = self._api(run, ("load", "--quiet"), "POST", path, archive, mutates=True) if path else None
        if answer is None:
            return run(self.cmd("load", "--quiet"), input=archive, check=False)
        status, body = answer
        argv = ("POST", path or "")
        if status == 0:  # a dry run
            return Result(argv, 0, b"", b"", dry=True)
        # 200 with a stream of JSON messages, of which one may be the error (a layer it could not apply)
        messages = [_json(line) for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
        failed = status != 200 or any(isinstance(m, dict) and m.get("error") for m in messages)
        if failed:
            return Result(argv, 1, b"", _api_error(status, body).encode())
        said = "".join(str(m.get("stream", "")) for m in messages if isinstance(m, dict))
        return Result(argv, 0, said.encode(), b"")

    def _api_path(self, path: str) -> str | None:
        """`path` as this engine's client would ask its socket (DOCKER_API_VERSION pins a version, as it does the
        client's); None when there is no socket to ask, or the client's own check of that variable should speak."""
        if not self.socket:
            return None
        pinned = os.environ.get("DOCKER_API_VERSION", "")
        if pinned and not re.fullmatch(r"\d{1,3}\.\d{1,3}", pinned):
            return None
        return f"/v{pinned}{path}" if pinned else path

    def _api(
        self, run: Runner, args: tuple[str, ...], method: str, path: str, body: bytes = b"", *, mutates: bool
    ) -> tuple[int, bytes] | None:
        """The request `docker ARGS` would send, sent to the daemon's socket: echoed as that command, with the
        request it is, and skipped by a dry run when it changes something ((0, b"") then); None when the socket
        does not answer, so that the client is asked instead and its error names the reason. 25 ms less than
        starting the client for it, twice in `invoke dev`."""
        if run.echo:
            asked = f"[{method} {path} on {self.socket}]"
            ui.command(f"{shown((self.kind, *args))}   {asked}", skipped=run.dry_run and mutates)
        if run.dry_run and mutates:
            return 0, b""
        return _exchange(self.socket, method, path, body)

    def pull(self, run: Runner, ref: str, timeout: float | None = None) -> bool:
        return run(self.cmd("pull", *self._tls(ref), "--", ref), check=False, capture=False, timeout=timeout).ok

    def tag(self, run: Runner, source: str, ref: str) -> None:
        run(self.cmd("tag", "--", source, ref))

    def push(self, run: Runner, ref: str, timeout: float | None = None) -> None:
        res = run(self.cmd("push", *self._tls(ref), "--", ref), check=False, timeout=timeout)
        if not res.ok:
            raise Failure(f"push of '{ref}' failed: {res.reason}; check that the registry is up and you are logged in")

    def remove_image(self, run: Runner, ref: str) -> Result:
        """Untag `ref` (the image goes with its last tag); not ok, with the engine's reason, when it refuses (an
        image a container uses)."""
        return run(self.cmd("image", "rm", "--", ref), check=False)

    def _tls(self, ref: str) -> list[str]:
        # podman insists on TLS unless told; docker trusts 127.0.0.0/8 registries over plain HTTP.
        return ["--tls-verify=false"] if self.kind == "podman" and loopback_registry(ref) else []

    def python(self, run: Runner, image: str, script: str, *args: str, failure: str) -> Any:
        """Run `script` with the image's own python3 (its entrypoint set aside, as root, no network) and return
        the JSON of its last line of output; when that fails or is null, raise `failure` with {why} filled in."""
        argv = self.cmd("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "python3")
        res = run([*argv, "--", image, "-c", script, *args], mutates=False, check=False)
        value = _json(res.out.splitlines()[-1]) if res.ok and res.out else None
        if value is None:
            raise Failure(failure.format(why=res.reason if res.err else "it found nothing"))
        return value

    @property
    def other(self) -> Kind:
        return "podman" if self.kind == "docker" else "docker"

    def other_has(self, run: Runner, ref: str) -> bool:
        """Whether the other engine on this machine has `ref` (to say how to move it across)."""
        exe = shutil.which(self.other)
        return bool(exe) and run([exe, "image", "inspect", "--", ref], mutates=False, check=False).ok

    @staticmethod
    def labels(image: dict[str, Any]) -> dict[str, str]:
        # podman keeps labels in Config.Labels like docker, but may leave them null.
        return dict((image.get("Config") or {}).get("Labels") or {})

    @staticmethod
    def env(image: dict[str, Any]) -> dict[str, str]:
        pairs = (image.get("Config") or {}).get("Env") or []
        return dict(p.split("=", 1) for p in pairs if "=" in p)

    @staticmethod
    def image_id(image: dict[str, Any]) -> str:
        # docker's Id is "sha256:<hex>"; podman's is the bare hex.
        raw = str(image.get("Id", ""))
        return raw if raw.startswith("sha256:") else f"sha256:{raw}"


def _utc(when: str) -> str:
    """A history time as UTC: the docker client prints `CreatedAt` in the local time zone of whoever runs it
    (11:00:00+01:00 in Paris is 10:00:00Z in London), and a derived image repeats it in its config, so without
    this the same base and the same checkout gave another image id in another time zone."""
    if when.startswith(("0000-", "0001-01-01")):  # Go's zero time (no time recorded), year 0 west of UTC
        return ZERO_TIME
    try:
        parsed = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    if parsed.tzinfo is None:
        return when
    utc = parsed.astimezone(dt.timezone.utc)
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}Z"  # strftime's %Y does not pad a year below 1000


ZERO_TIME = "0001-01-01T00:00:00Z"


def loopback_registry(ref: str) -> bool:
    host = ref.split("/", 1)[0].rsplit(":", 1)[0] if "/" in ref else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _daemon_socket() -> str | None:
    """docker's unix socket, where the client would talk to it itself: DOCKER_HOST unset or unix://, no context
    chosen; None otherwise (a remote daemon, an ssh:// host, a context: the client knows how to reach those)."""
    host = os.environ.get("DOCKER_HOST", "")
    if os.environ.get("DOCKER_CONTEXT") or (host and not host.startswith("unix://")):
        return None
    config = os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")
    try:
        with open(config, "rb") as fh:
            chosen = json.loads(fh.read() or b"{}").get("currentContext")
    except FileNotFoundError:
        chosen = None
    except (OSError, ValueError, AttributeError):
        return None
    if chosen not in (None, "", "default"):
        return None
    return host.removeprefix("unix://") or "/var/run/docker.sock"


def _daemon_version(socket: str) -> dict[str, Any] | None:
    """What `docker version` reports of the daemon, asked on its unix socket: the same GET /version the client
    sends, in 5 ms instead of the 25-30 ms the client program takes to start (a quarter of `invoke dev`'s own
    time). None when the socket does not answer, within 2 s, with a version: then the client is asked, and its
    error names the reason."""
    answer = _exchange(socket, "GET", "/version", timeout=2)
    if answer is None or answer[0] != 200:
        return None
    info = _json(answer[1].decode("utf-8", "replace"))
    return info if isinstance(info, dict) and info.get("Version") else None


def _exchange(
    path: str, method: str, target: str, body: bytes = b"", timeout: float | None = None
) -> tuple[int, bytes] | None:
    """One HTTP/1.0 request on the unix socket at `path`: (status, body) of the answer, read to its Content-Length
    or to the end; None when the socket cannot be reached, fails on the way or answers in a form other than
    plain HTTP. `timeout` bounds the whole exchange (a load of a big layer takes what it takes)."""
    import socket  # only here: the rest of a task has no use for it
    import time

    deadline = time.monotonic() + timeout if timeout is not None else None
    head = f"{method} {target} HTTP/1.0\r\nHost: docker\r\n"
    if method == "POST":
        head += f"Content-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(head.encode() + b"\r\n")
            # the body apart (a layer of compiled files is hundreds of MB, not to be copied again); a daemon that
            # refuses it from the head answers and closes before it is all sent: its answer is still to be read
            if body:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(body)
            data, length = b"", None
            while length is None or len(data) < length:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:  # its end closed with our request unread: what it said is all
                    chunk = b""
                if not chunk:
                    break
                data += chunk
                if length is None and b"\r\n\r\n" in data:  # the headers are in: how long is the body?
                    length = _whole_length(data)
    except OSError:
        return None
    top, _, rest = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", top)
    if not status or b"chunked" in top.lower() or (length is not None and len(data) < length):
        return None
    return int(status.group(1)), rest


def _api_error(status: int, body: bytes) -> str:
    """The daemon's own words for a refused request: its JSON message (or the error one of a stream carries)."""
    for line in body.decode("utf-8", "replace").splitlines():
        said = _json(line)
        if isinstance(said, dict) and (said.get("message") or said.get("error")):
            return str(said.get("message") or said.get("error")).strip()
    return f"HTTP {status}"


# a name or id as it can stand in the API's path as it is: ASCII, no empty or ".." segment
_PLAIN_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:[/:@][A-Za-z0-9_.-]+)*")


def _whole_length(data: bytes) -> int | None:
    """The length of a whole HTTP response whose headers `data` holds, when they give Content-Length."""
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(head) + 4 + int(value)
    return None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
