"""The image writer: one layer tar and an image config derived from the base's, handed to the engine in one call.

A layer is a tar and an image is a JSON config plus a list of layers, so the tool writes both itself and gives
the engine only what is new (as `crane append` and `ko` do): docker loads a docker-archive holding the config
and the new layer while naming the base's layers it already has; podman loads an oci-archive whose manifest
names them by digest. Everything is deterministic (sorted entries, root-owned, fixed modes and mtime, PAX, the
config's JSON canonical), so the same base and the same files give the same image id on any machine.

If an engine refuses the archive, `write` builds the same content with the engine's own builder (`FROM base`,
`COPY`, `RUN rm` for deletions): slower and with a second layer when files are deleted, but the base's
entrypoint, command, user, environment and workdir stay exactly as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ui
from .base import Base
from .engine import Engine
from .errors import Failure
from .proc import Runner
from .scratch import scratch

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer tar; its diff_id is what an image config names it by."""

    tar: bytes = field(repr=False)

    @property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def rfc3339(epoch: float) -> str:
    """The time as images, state files and build records write it: UTC, to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_WHEN = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?")


def instant(text: str) -> float:
    """Seconds since the epoch of an image's creation time as an engine or a registry gives it: RFC 3339 with any
    number of fractional digits and any offset ("...T10:00:00.123456789Z", "...+01:00"), or Go's default form
    ("2026-11-25 10:00:00.12 +0000 UTC"). Comparing these as strings orders them wrongly; -inf when unreadable."""
    m = _WHEN.match(text.strip())
    if not m:
        return float("-inf")
    day, clock, frac, zone = m.groups()
    zone = "+0000" if zone in (None, "Z") else zone.replace(":", "")
    when = dt.datetime.strptime(f"{day}T{clock}{zone}", "%Y-%m-%dT%H:%M:%S%z")
    return when.timestamp() + (float("0." + frac) if frac else 0.0)


def layer(files: list[tuple[str, int, bytes]], whiteouts: list[str], dirs: list[str], epoch: int) -> Layer:
    """A deterministic layer: new directories, whiteouts (`.wh.<name>`: the file is gone in the image) and files
    (symlinks as symlinks), sorted by path, owned by root, modes 0644/0755, every mtime `epoch`."""
    items: dict[str, tuple[str, int, bytes]] = {}
    for d in dirs:
        items[d.strip("/")] = ("dir", 0o755, b"")
    for path in whiteouts:
        folder, name = posixpath.split(path.strip("/"))
        items[posixpath.join(folder, f".wh.{name}")] = ("file", 0o644, b"")
    for path, mode, data in files:
        kind = "link" if mode == 0o120000 else "file"
        items[path.strip("/")] = (kind, 0o755 if mode & 0o111 and kind == "file" else 0o644, data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for name in sorted(items):
            kind, mode, data = items[name]
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            info.mode = 0o777 if kind == "link" else mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode("utf-8", "surrogateescape")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return Layer(buf.getvalue())


def config(
    base: Base, history: list[dict[str, Any]], new: Layer, labels: dict[str, str], epoch: int, created_by: str
) -> bytes:
    """The base's image config with our labels added, one history entry and one diff_id more, `created` fixed."""
    cfg = dict(base.config)
    cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}
    created = rfc3339(epoch)
    doc = {
        **base.platform,
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [*base.diff_ids, new.diff_id]},
        "history": [*history, {"created": created, "created_by": created_by, "comment": "forkdev"}],
    }
    return canonical(doc)


def archive(kind: str, config_json: bytes, new: Layer, base_diff_ids: tuple[str, ...], tag: str) -> bytes:
    """The image as the engine loads it: only the config and the new layer are in it (see the module doc)."""
    config_digest = "sha256:" + hashlib.sha256(config_json).hexdigest()
    members: list[tuple[str, bytes]] = []
    if kind == "docker-archive":
        layer_name = f"{new.diff_id.split(':')[1]}/layer.tar"
        manifest = [
            {
                "Config": f"{config_digest.split(':')[1]}.json",
                "RepoTags": [tag],
                # The base's layers by names this archive does not hold: docker finds their chain and skips them.
                "Layers": [f"{d.split(':')[1]}/layer.tar" for d in base_diff_ids] + [layer_name],
            }
        ]
        members = [(f"{config_digest.split(':')[1]}.json", config_json), (layer_name, new.tar)]
        members.append(("manifest.json", canonical(manifest)))
    else:
        layers = [{"mediaType": LAYER_MEDIA, "digest": d, "size": 0} for d in base_diff_ids]
        layers.append({"mediaType": LAYER_MEDIA, "digest": new.diff_id, "size": len(new.tar)})
        manifest_json = canonical(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA,
                "config": {"mediaType": CONFIG_MEDIA, "digest": config_digest, "size": len(config_json)},
                "layers": layers,
            }
        )
        manifest_digest = "sha256:" + hashlib.sha256(manifest_json).hexdigest()
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA,
                    "digest": manifest_digest,
                    "size": len(manifest_json),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        members = [
            ("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
            ("index.json", canonical(index)),
            (f"blobs/sha256/{config_digest.split(':')[1]}", config_json),
            (f"blobs/sha256/{manifest_digest.split(':')[1]}", manifest_json),
            (f"blobs/sha256/{new.diff_id.split(':')[1]}", new.tar),
        ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Content:
    """What a thin image adds to its base."""

    files: list[tuple[str, int, bytes]]  # (image path, mode, bytes)
    deleted: list[str]  # image paths whose files are gone
    dirs: list[str]  # image paths of directories to create
    labels: dict[str, str]
    epoch: int
    created_by: str


def write(engine: Engine, run: Runner, base: Base, history: list[dict[str, Any]], content: Content, tag: str) -> str:
    """Tag `tag` = base + one layer of `content` (`history`: the base's); returns the image id ("" under dry-run)."""
    new = layer(content.files, content.deleted, content.dirs, content.epoch)
    config_json = config(base, history, new, content.labels, content.epoch, content.created_by)
    image_id = "sha256:" + hashlib.sha256(config_json).hexdigest()
    loaded = engine.load(run, archive(engine.archive_format, config_json, new, base.diff_ids, tag))
    if loaded.ok:
        return "" if loaded.dry else image_id
    ui.warn(
        f"{engine.kind} refused the image archive ({loaded.reason}); building the same content with "
        f"'{engine.kind} build' instead (slower; a second layer if files are deleted)"
    )
    return build_instead(engine, run, base, content, tag)


def build_instead(engine: Engine, run: Runner, base: Base, content: Content, tag: str) -> str:
    """The fallback: the engine's own builder, which keeps the base's config as it is (null stays null)."""
    with scratch("build") as ctx:
        root = ctx / "layer"
        root.mkdir()
        for d in content.dirs:
            (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path, mode, data in content.files:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == 0o120000:
                target.symlink_to(data.decode("utf-8", "surrogateescape"))
            else:
                target.write_bytes(data)
                target.chmod(0o755 if mode & 0o111 else 0o644)
        lines = [f"FROM {base.id}", "COPY layer/ /"]
        user = (base.config.get("User") or "").strip()
        if content.deleted:
            if user and user not in ("root", "0", "0:0"):
                lines.append("USER 0")  # the removals need root; the base's user is put back below
            lines.append("RUN " + json.dumps(["rm", "-rf", "--", *content.deleted]))
            if user and user not in ("root", "0", "0:0"):
                lines.append(f"USER {user}")
        lines += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in sorted(content.labels.items())]
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        res = run(
            engine.cmd("build", "--quiet", "--network", "none", "--tag", tag, "--file", str(ctx / "Dockerfile"), "--")
            + [str(ctx)],
            env=engine.build_env(buildkit=False),
            check=False,
        )
        if not res.ok:
            raise Failure(f"'{engine.kind} build' of the thin image failed too ({res.reason}); see the output above")
        if res.dry:
            return ""
        info = engine.inspect_image(run, tag)
        return Engine.image_id(info) if info else ""


def prune_tags(
    engine: Engine, run: Runner, repository: str, pattern: re.Pattern[str], keep: int, spare: Callable[[str, str], bool]
) -> tuple[list[str], list[dict[str, str]]]:
    """Untag the oldest local tags of `repository` whose tag `pattern` matches, beyond the `keep` newest (by
    creation time, never by name), except those `spare(ref, image id)` keeps; no other tag is looked at. Returns
    what went, and what the engine refused (an image a container uses) with its reason."""
    listing = run(engine.cmd("images", "--format", "{{.Repository}}:{{.Tag}}", "--", repository), mutates=False)
    # Only this repository's tags, exactly: podman matches a name given to `images` loosely, and names local
    # images localhost/NAME.
    names = {r.removeprefix("localhost/") for r in listing.out.split()}
    mine = repository.removeprefix("localhost/")
    refs = sorted(r for r in names if r.rpartition(":")[0] == mine and pattern.match(r.rpartition(":")[2]))
    created = {}
    for ref in refs:
        info = engine.inspect_image(run, ref)
        if info is not None:
            created[ref] = (instant(str(info.get("Created", ""))), Engine.image_id(info))
    newest_first = sorted(created, key=lambda r: created[r][0], reverse=True)
    removed, stayed = [], []
    for ref in newest_first[keep:]:
        if spare(ref, created[ref][1]):
            continue
        res = engine.remove_image(run, ref)
        if res.ok:
            removed.append(ref)
        else:
            stayed.append({"ref": ref, "reason": f"{engine.name} refused to remove it ({res.reason})"})
    return removed, stayed
