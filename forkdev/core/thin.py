"""The thin image: base + exactly one layer holding a checkout's changed files.

The layer is made by copying a tar of the changed files into a created container of the base (and, only
when files were deleted, starting it once to remove them), then committing that container: one layer,
deletions as whiteouts, the base's compiled files untouched, no BuildKit needed, so docker (legacy builder
or not) and podman take the same path. The plan is computed first and is all that --dry-run shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import time
from dataclasses import dataclass, field

from .. import __version__
from . import ui
from .base import Base
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Change, Repo
from .proc import Runner

PROOF_PATH = "/etc/forkdev/proof.json"
KEY_LABEL = "dev.forkdev.key"
BASE_REVISION_LABEL = "dev.forkdev.base.revision"


@dataclass(frozen=True)
class Entry:
    path: str  # in the repository
    image_path: str
    mode: int  # 0o100644, 0o100755 or 0o120000 (symlink)
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Plan:
    revision: str
    dirty: bool
    entries: list[Entry]
    deleted: list[str]  # image paths
    skipped: list[str]  # repo paths with no place in the image
    native: list[str]
    diff_hash: str

    def proof(self, base: Base, target: Target) -> dict:
        return {
            "tool": "forkdev",
            "version": __version__,
            "target": target.name,
            "commit": self.revision,
            "dirty": self.dirty,
            "diff_hash": self.diff_hash,
            "base": {"ref": base.ref, "id": base.id, "revision": base.revision},
            "files": [{"path": e.path, "image_path": e.image_path, "sha256": e.sha256} for e in self.entries],
            "deleted": self.deleted,
        }

    def key(self, base: Base) -> str:
        return hashlib.sha256(
            f"{__version__}\0{base.id}\0{self.revision}\0{self.dirty}\0{self.diff_hash}".encode()
        ).hexdigest()


def read_entries(repo: Repo, ref: str | None, changes: list[Change]) -> dict[str, tuple[int, bytes]]:
    """Mode and bytes of every non-deleted change: from the working tree, or from the commit `ref`."""
    wanted = [c.path for c in changes if c.status != "D"]
    found: dict[str, tuple[int, bytes]] = {}
    if ref is None:
        for path in wanted:
            full = repo.path / path
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found[path] = (0o120000, os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                found[path] = (0o100755 if st.st_mode & 0o111 else 0o100644, full.read_bytes())
        return found
    if not wanted:
        return found
    listing = repo.git("ls-tree", "-r", "-z", ref, "--", *wanted).stdout.decode("utf-8", "surrogateescape")
    blobs = []
    for item in filter(None, listing.split("\0")):
        meta, path = item.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob":
            blobs.append((path, int(mode, 8), sha))
    batch = repo.git("cat-file", "--batch", input="".join(f"{s}\n" for _, _, s in blobs).encode()).stdout
    pos = 0
    for path, mode, _ in blobs:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        found[path] = (mode, batch[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return found


def plan(repo: Repo, ref: str | None, base: Base, target: Target) -> Plan:
    if not repo.has_commit(base.revision):
        raise Failure(
            f"the base's commit {base.revision[:12]} (image '{base.ref}') is not in {repo.path}; fetch it: "
            f"git -C {repo.path} fetch {target.upstream} {base.revision}"
        )
    revision = repo.resolve(ref, "REF") if ref is not None else repo.resolve("HEAD", "HEAD")
    changes = repo.changes(base.revision, ref)
    contents = read_entries(repo, ref, changes)
    entries, deleted, skipped = [], [], []
    for change in changes:
        image_path = base.location.image_path(change.path, target.package_path)
        if image_path is None:
            skipped.append(change.path)
        elif change.status == "D" or change.path not in contents:
            deleted.append(image_path)
        else:
            mode, data = contents[change.path]
            entries.append(Entry(change.path, image_path, mode, data))
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.image_path}\0{e.mode:o}\0{e.sha256}\n".encode())
    for d in deleted:
        digest.update(f"-{d}\n".encode())
    return Plan(
        revision=revision,
        dirty=ref is None and repo.is_dirty(untracked=any(c.untracked for c in changes)),
        entries=entries,
        deleted=deleted,
        skipped=skipped,
        native=[c.path for c in changes if target.is_native(c.path)],
        diff_hash=digest.hexdigest(),
    )


def layer_tar(plan: Plan, proof: dict) -> bytes:
    """The layer's files, owned by root. mtime is now, so a base .pyc recorded for an older source is
    never taken as fresh."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        items = [(e.image_path, e.mode, e.data) for e in plan.entries]
        items.append((PROOF_PATH, 0o100644, json.dumps(proof, indent=1, sort_keys=True).encode()))
        for image_path, mode, data in items:
            info = tarfile.TarInfo(image_path.lstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = now, 0, 0, "root", "root"
            if mode == 0o120000:
                info.type, info.linkname = tarfile.SYMTYPE, data.decode("utf-8", "surrogateescape")
                tar.addfile(info)
            else:
                info.mode, info.size = mode & 0o7777, len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def commit_layer(
    engine: Engine, run: Runner, base: Base, plan: Plan, proof: dict, tag: str, labels: dict[str, str]
) -> str:
    """Copy the layer's files into a created (not started) container of the base, remove deleted files if
    any, and commit the container as `tag`. Returns the new image id."""
    name = f"forkdev-layer-{plan.key(base)[:12]}-{os.getpid()}"
    user = base.config.get("User") or ""
    other_user = user not in ("", "root", "0", "0:0")
    create = engine.cmd("create", "--name", name, "--network", "none", "--entrypoint", "/bin/sh")
    if other_user:
        create += ["--user", "0:0"]  # the base runs as someone else; the removals need root
    create += [base.id, "-c", 'rm -rf -- "$@"', "forkdev-layer", *plan.deleted]
    # The container's entrypoint, command (and user) are ours: commit puts the base's back.
    changes = [
        f"ENTRYPOINT {json.dumps(base.config.get('Entrypoint') or [])}",
        f"CMD {json.dumps(base.config.get('Cmd') or [])}",
    ]
    if other_user:
        changes.append(f"USER {user}")
    changes += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items())]
    try:
        run(create)
        # cp from a tar on stdin needs no running container: the engine unpacks into its filesystem, as root.
        run(engine.cmd("cp", "-", f"{name}:/"), input=layer_tar(plan, proof))
        if plan.deleted:
            run(engine.cmd("start", "--attach", name))
        return engine.commit(run, name, tag, changes)
    finally:
        engine.remove_container(run, name)


def describe(plan: Plan, base: Base) -> None:
    size = sum(len(e.data) for e in plan.entries)
    ui.info(
        f"base {base.ref} ({base.id[:19]}) at {base.revision[:12]}; package at {base.location.package_dir}"
        + (f", source tree {base.location.root}" if base.location.root else " (site-packages)")
    )
    ui.info(
        f"layer: {len(plan.entries)} files ({size} bytes), {len(plan.deleted)} deletions"
        + (f"; not shipped (no place in a site-packages base): {len(plan.skipped)}" if plan.skipped else "")
    )
    for e in plan.entries[:50]:
        ui.info(f"  + {e.image_path}")
    for d in plan.deleted[:50]:
        ui.info(f"  - {d}")
    if len(plan.entries) + len(plan.deleted) > 100:
        ui.info("  ...")
