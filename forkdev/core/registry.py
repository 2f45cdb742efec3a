"""A registry's HTTP API (distribution v2), for what an engine cannot answer quickly or honestly: is the registry
up and may I push, does a tag exist, which tags are there, delete a tag.

Every call has bounded retries (429, 5xx, timeouts, refused connections), each retry shown with its status, and a
bounded total time; 401/403 are errors at once. A tag is "absent" only on a 404: any other answer is an error,
never a silent "not there". Credentials are the engines' own: docker's config.json (auths, credHelpers,
credsStore) and podman's auth.json; loopback and configured insecure registries are spoken to over plain HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import ui, validate
from .engine import loopback_registry
from .errors import Failure
from .proc import Runner

if TYPE_CHECKING:
    from email.message import Message

MANIFESTS = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
RETRIED = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Policy:
    """How long and how often a registry is asked, and which hosts are spoken to without TLS."""

    timeout: float = 300.0  # seconds, all attempts of one call together
    retries: int = 3
    insecure: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ref:
    """An image reference split as a registry sees it: host, repository path and tag."""

    host: str  # as written in the reference ("docker.io" when none)
    repository: str  # path inside the registry, e.g. library/debian
    tag: str

    @classmethod
    def parse(cls, ref: str) -> Ref:
        validate.image_ref(ref)
        host = validate.registry_host(ref)
        rest = (ref[len(host) + 1 :] if host else ref).split("@", 1)[0]
        name, sep, tag = rest.rpartition(":")
        if not sep:
            name, tag = rest, "latest"
        if not host:
            host = "docker.io"
            name = name if "/" in name else f"library/{name}"
        return cls(host, name, tag or "latest")


@dataclass
class Registry:
    """One registry host, asked over its HTTP API within the policy (its token kept for the run)."""

    host: str
    policy: Policy = field(default_factory=Policy)
    run: Runner = field(default_factory=Runner)
    _auth: str | None = None

    @property
    def api(self) -> str:
        host = "registry-1.docker.io" if self.host == "docker.io" else self.host
        plain = loopback_registry(f"{host}/x") or host in self.policy.insecure
        return f"{'http' if plain else 'https'}://{host}/v2/"

    # ---- questions ----------------------------------------------------------------------------------------
    def check(self) -> None:
        """The registry answers and lets us in (push needs more, but this catches down, 401 and 5xx at once)."""
        self._request("GET", "")

    def exists(self, repository: str, tag: str) -> bool:
        status, _, _ = self._request("HEAD", f"{repository}/manifests/{tag}", accept=MANIFESTS, absent_ok=True)
        return status != 404

    def digest(self, repository: str, tag: str) -> str | None:
        status, headers, _ = self._request("HEAD", f"{repository}/manifests/{tag}", accept=MANIFESTS, absent_ok=True)
        return None if status == 404 else headers.get("Docker-Content-Digest")

    def created(self, repository: str, tag: str) -> str:
        """The image's creation time as its config records it (RFC 3339; "" when it has none)."""
        return str((self._config(repository, tag) or {}).get("created") or "")

    def labels(self, repository: str, tag: str) -> dict[str, str] | None:
        """The image's labels as its config records them; None when there is no such tag."""
        found = self._config(repository, tag, absent_ok=True)
        return None if found is None else dict((found.get("config") or {}).get("Labels") or {})

    def _config(self, repository: str, tag: str, absent_ok: bool = False) -> dict[str, Any] | None:
        """The image config `tag` names ({} when its manifest names none; None when absent and `absent_ok`)."""
        single = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        status, _, body = self._request("GET", f"{repository}/manifests/{tag}", accept=single, absent_ok=absent_ok)
        if status == 404:
            return None
        try:
            digest = (json.loads(body or b"{}").get("config") or {}).get("digest")
            if not digest:
                return {}
            _, _, blob = self._request("GET", f"{repository}/blobs/{digest}")
            found = json.loads(blob or b"{}")
        except (ValueError, AttributeError):
            raise Failure(
                f"registry {self.host} sent a manifest or config of {repository}:{tag} that is not JSON"
            ) from None
        return found if isinstance(found, dict) else {}

    def tags(self, repository: str) -> list[str]:
        status, _, body = self._request("GET", f"{repository}/tags/list", absent_ok=True)
        if status == 404:
            return []
        return sorted(json.loads(body or b"{}").get("tags") or [])

    def delete(self, repository: str, tag: str) -> bool:
        """Delete the manifest `tag` points at (every tag of that manifest goes with it); False if absent."""
        digest = self.digest(repository, tag)
        return digest is not None and self.delete_manifest(repository, digest, tag)

    def delete_manifest(self, repository: str, digest: str, tag: str) -> bool:
        """Delete the manifest `digest` (which `tag` names; the API deletes manifests, and every tag of one goes
        with it); False if absent."""
        if self.run.dry_run:
            ui.command(f"DELETE {self.api}{repository}/manifests/{digest}", skipped=True)
            return True
        ui.command(f"DELETE {self.api}{repository}/manifests/{digest}")
        status, _, _ = self._request("DELETE", f"{repository}/manifests/{digest}", absent_ok=True, refused_ok=True)
        if status == 405:
            raise Failure(
                f"registry {self.host} does not allow deleting ({repository}:{tag}); enable deletion there "
                "(distribution: storage.delete.enabled) or prune by hand"
            )
        return status != 404

    # ---- one call, with retries and auth -------------------------------------------------------------
    def _request(
        self, method: str, path: str, *, accept: str = "", absent_ok: bool = False, refused_ok: bool = False
    ) -> tuple[int, Message, bytes]:
        import urllib.request

        url = self.api + path
        deadline = time.monotonic() + self.policy.timeout
        attempt, authed = 0, False
        while True:
            headers = {"Accept": accept} if accept else {}
            if self._auth:
                headers["Authorization"] = self._auth
            remaining = deadline - time.monotonic()
            why = ""
            try:
                req = urllib.request.Request(url, method=method, headers=headers)
                with urllib.request.urlopen(req, timeout=max(1.0, min(30.0, remaining))) as resp:
                    return resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as exc:
                status, hdrs, body = exc.code, exc.headers, exc.read()  # headers: case-insensitive
                if status == 401 and not authed:
                    authed = True
                    self._auth = self._authorize(hdrs.get("WWW-Authenticate", ""), deadline)
                    if self._auth:
                        continue
                if status in (401, 403):
                    who = "not logged in" if status == 401 else "not allowed"
                    raise Failure(
                        f"registry {self.host} answered {status} to {method} /v2/{path} ({who}); log in with "
                        f"'docker login {self.host}' (or podman login) with an account that may do this"
                    ) from None
                if status == 404 and absent_ok or status == 405 and refused_ok:
                    return status, hdrs, body
                if status not in RETRIED:
                    raise Failure(
                        f"registry {self.host} answered {status} to {method} /v2/{path} ({_brief(body)}); "
                        "check the reference and the registry"
                    ) from None
                why = f"answered {status}"
                wait = _retry_after(hdrs.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                why, wait = f"did not answer ({reason})", None
            attempt += 1
            remaining = deadline - time.monotonic()
            delay = min(wait if wait is not None else 0.5 * 2 ** (attempt - 1), max(0.0, remaining))
            if attempt > self.policy.retries or remaining <= delay:
                raise Failure(
                    f"registry {self.host} {why} to {method} /v2/{path} after {attempt} attempts "
                    f"({self.policy.timeout:g}s at most); check that it is up, or raise registry.retries / "
                    "registry.timeout"
                )
            ui.warn(f"registry {self.host} {why}; retry {attempt}/{self.policy.retries} in {delay:.1f}s")
            time.sleep(delay)

    def _authorize(self, challenge: str, deadline: float) -> str | None:
        """The Authorization header for a 401's challenge: Basic with the stored credentials, or a Bearer token
        fetched with them (anonymous when there are none)."""
        scheme, _, params = challenge.partition(" ")
        user_pass = credentials(self.host, self.run)
        if user_pass:  # the password, and what carries it, are masked in every line from now on
            ui.conceal([user_pass.partition(":")[2], base64.b64encode(user_pass.encode()).decode()])
        basic = "Basic " + base64.b64encode(user_pass.encode()).decode() if user_pass else None
        if scheme.lower() == "basic":
            return basic
        if scheme.lower() != "bearer":
            return None
        import urllib.parse
        import urllib.request

        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", "")
        if not realm:
            return None
        url = realm + "?" + urllib.parse.urlencode(fields)
        req = urllib.request.Request(url, headers={"Authorization": basic} if basic else {})
        try:
            with urllib.request.urlopen(req, timeout=max(1.0, min(30.0, deadline - time.monotonic()))) as resp:
                data = json.loads(resp.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        token = data.get("token") or data.get("access_token")
        if token:
            ui.conceal([str(token)])
        return f"Bearer {token}" if token else None


def credentials(host: str, run: Runner) -> str | None:
    """'user:password' for `host` from docker's or podman's stored logins, or None."""
    docker_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    files = [docker_dir / "config.json"]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.insert(0, Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(Path.home() / ".config" / "containers" / "auth.json")
    keys = {host, f"https://{host}", f"http://{host}"}
    if host == "docker.io":
        keys |= {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}
    for path in files:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, entry in (data.get("auths") or {}).items():
            if key.rstrip("/") in keys and isinstance(entry, dict) and entry.get("auth"):
                try:
                    return base64.b64decode(entry["auth"]).decode()
                except ValueError:
                    continue
        helper = next((v for k, v in (data.get("credHelpers") or {}).items() if k in keys), None)
        helper = helper or data.get("credsStore")
        if helper:
            res = run([f"docker-credential-{helper}", "get"], input=host.encode(), mutates=False, check=False)
            try:
                found = json.loads(res.out) if res.ok else {}
                return f"{found['Username']}:{found['Secret']}"
            except (ValueError, KeyError, TypeError):
                continue
    return None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _brief(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:160] or "no body"
