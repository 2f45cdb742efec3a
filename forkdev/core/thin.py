"""The plan of a thin image: which files of a repository state differ from the base's commit, and where they go.

A plan is pure data: it is what --dry-run shows and what the image writer (image.py) turns into one layer. It
holds the changed files' bytes and modes, the deletions, the base's bytecode of every changed or deleted module
(deleted too, so a stale .pyc can never pass as fresh), and the directories the layer must create.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import __version__
from . import labels as L
from . import secrets, ui
from .base import Base
from .config import Target
from .errors import Failure
from .gitrepo import Change, Repo, with_untracked, z_paths
from .proc import CommandFailed, concurrently

# The proof's layout, hashed into every key: an image whose proof was written another way is made again, never
# reused. 2: the deletions' repository paths too (`invoke verify --repo` checks them against the checkout).
PROOF_FORMAT = 2


@dataclass(frozen=True)
class Entry:
    """One file of the layer: its path in the repository and in the image, mode and bytes."""

    path: str  # in the repository
    image_path: str
    mode: int  # 0o100644, 0o100755 or 0o120000 (symlink)
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a checkout's thin layer holds against its base: files, deletions, and the hash of uncommitted work."""

    revision: str
    dirty: bool
    entries: list[Entry]
    deleted: list[str]  # image paths
    deleted_paths: list[str]  # the same deletions, as repository paths
    bytecode: list[str]  # image paths of the base's .pyc files of changed or deleted modules (those it has)
    new_dirs: list[str]  # image paths of directories the base does not have
    skipped: list[str]  # repo paths with no place in the image
    nested: list[str]  # repo paths that are another repository's (a submodule, a nested clone): left as they are
    native: list[str]
    withheld: list[str]  # repo paths under the secret paths that changed: never shipped (core/secrets.py)
    diff_hash: str
    epoch: int  # the time every file and the image carry: SOURCE_DATE_EPOCH, else the commit's time
    # `invoke dev --native`: the compiled files that differ from the base's, and the build environment that made
    # them ({"image": ref, "id": image id}); None when nothing was compiled for this image.
    compiled: list[Entry] = field(default_factory=list)
    native_env: dict[str, str] | None = None

    def proof(self, base: Base, target: Target) -> dict:
        proof = {
            "tool": "forkdev",
            "version": __version__,
            "target": target.name,
            "commit": self.revision,
            "dirty": self.dirty,
            "diff_hash": self.diff_hash,
            "base": {"ref": base.ref, "id": base.id, "revision": base.revision},
            "files": [{"path": e.path, "image_path": e.image_path, "sha256": e.sha256} for e in self.entries],
            "deleted": self.deleted,
            "deleted_paths": self.deleted_paths,
        }
        if self.native_env is not None:  # `invoke verify` checks each compiled file's bytes in the image
            files = [{"path": e.path, "image_path": e.image_path, "sha256": e.sha256} for e in self.compiled]
            proof["native"] = {"env": dict(self.native_env), "files": files}
        return proof

    def key(self, base: Base, labels: Mapping[str, str] | None = None) -> str:
        """Everything that determines the image's content, hashed: an image with this key needs no rebuild."""
        extra = json.dumps(dict(sorted((labels or {}).items())))
        made_by = f"{__version__}\0{PROOF_FORMAT}"
        state = f"{base.id}\0{self.revision}\0{self.dirty}\0{self.diff_hash}\0{self.epoch}\0{extra}"
        if self.native_env is not None:  # an image without compiled files keeps the key it always had
            compiled = "".join(f"{e.image_path}\0{e.mode:o}\0{e.sha256}\n" for e in self.compiled)
            state += f"\0native\0{self.native_env.get('id', '')}\0{compiled}"
        return hashlib.sha256(f"{made_by}\0{state}".encode()).hexdigest()

    def files(self, base: Base, target: Target) -> list[tuple[str, int, bytes]]:
        """(image path, mode, bytes) of every file the layer holds: the changes, then the proof."""
        proof = json.dumps(self.proof(base, target), indent=1, sort_keys=True).encode()
        shipped = [*self.entries, *self.compiled]
        return [(e.image_path, e.mode, e.data) for e in shipped] + [(L.PROOF_PATH, 0o100644, proof)]


def read_entries(repo: Repo, ref: str | None, changes: list[Change]) -> tuple[dict[str, tuple[int, bytes]], set[str]]:
    """(mode and bytes of every non-deleted change, the changed paths that are not files: a submodule or a nested
    repository, which git lists as one path and a layer must neither copy nor delete): from the working tree, or
    from the commit `ref`."""
    wanted = [c.path for c in changes if c.status != "D"]
    found: dict[str, tuple[int, bytes]] = {}
    nested: set[str] = set()
    if ref is None:
        for path in wanted:
            full = repo.path / path
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    found[path] = (0o120000, os.readlink(full).encode("utf-8", "surrogateescape"))
                elif stat.S_ISREG(st.st_mode):
                    found[path] = (0o100755 if st.st_mode & 0o111 else 0o100644, full.read_bytes())
                else:
                    nested.add(path)
            except FileNotFoundError:
                continue  # deleted between git's listing and now: shipped as a deletion
        return found, nested
    if not wanted:
        return found, nested
    listing = repo.git("ls-tree", "-r", "-z", "--end-of-options", ref, "--", *wanted).stdout
    blobs = []
    for item in filter(None, listing.decode("utf-8", "surrogateescape").split("\0")):
        meta, path = item.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob":
            blobs.append((path, int(mode, 8), sha))
        else:
            nested.add(path)  # a submodule's commit
    batch = repo.git("cat-file", "--batch", input="".join(f"{s}\n" for _, _, s in blobs).encode()).stdout
    pos = 0
    for path, mode, _ in blobs:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        found[path] = (mode, batch[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return found, nested


def plan(
    repo: Repo,
    ref: str | None,
    base: Base,
    target: Target,
    epoch: int | None,
    upstream: str,  # the one upstream (config.load): where the error says to fetch a missing base commit from
    hidden: secrets.Paths,
) -> Plan:
    """The plan of `ref` (a commit), or of the working tree when ref is None. The working tree's reads (its
    commit, its diff from the base's commit, its untracked files, whether it differs from HEAD) run at once:
    they see the same moment as closely as reads one after the other would, in less time. A secret path
    (`hidden`) is no part of it, whatever git says of it: never shipped, never deleted, no dirtiness."""
    since = f"{base.revision}^{{commit}}"  # a label naming a tree or a range is no base commit

    def commit() -> tuple[str, int]:
        revision = repo.resolve(ref, "REF") if ref is not None else repo.resolve("HEAD", "HEAD")
        return revision, epoch if epoch is not None else repo.commit_time(revision)

    def diff(against: str | None) -> list[Change]:
        try:
            return repo.diff(since, against)
        except CommandFailed:
            if repo.has_commit(base.revision):
                raise
        raise Failure(
            f"the base's commit {base.revision[:12]} (image '{base.ref}') is not in {repo.path}; fetch it: "
            f"git -C {repo.path} fetch {upstream} {base.revision}"
        )

    if ref is not None:
        (revision, when), untracked, edited = commit(), [], False
        ref = revision  # the commit resolved, read from here on, whatever the name points to meanwhile
        changes = diff(revision)
    else:
        (revision, when), tracked, untracked, edited = concurrently(
            commit, lambda: diff(None), repo.untracked, repo.edited
        )
        changes = with_untracked(tracked, untracked)
        untracked = hidden.keep(untracked)
        if edited and any(hidden.hidden(c.path) for c in tracked):  # a tracked secret's edit is no shipped work
            edited = bool(hidden.keep(z_paths(repo.git("diff", "--name-only", "-z", "HEAD", "--").stdout)))
    withheld = [c.path for c in changes if hidden.hidden(c.path)]
    changes = [c for c in changes if not hidden.hidden(c.path)]
    contents, nested = read_entries(repo, ref, changes)
    location, package_path = base.location, target.package_path
    entries, deleted, deleted_paths, skipped, bytecode = [], [], [], [], []
    for change in changes:
        image_path = location.image_path(change.path, package_path)
        if image_path is None:
            skipped.append(change.path)
            continue
        if change.path in nested:
            continue
        if change.status == "D" or change.path not in contents:
            deleted.append(image_path)
            deleted_paths.append(change.path)
        else:
            mode, data = contents[change.path]
            entries.append(Entry(change.path, image_path, mode, data))
        if change.status != "A" and change.path.endswith(".py") and base.facts.cache_tag:
            bytecode += [p for p in _bytecode(image_path, base.facts.cache_tag) if p in base.facts.bytecode]
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.image_path}\0{e.mode:o}\0{e.sha256}\n".encode("utf-8", "surrogateescape"))
    for d in deleted:
        digest.update(f"-{d}\n".encode("utf-8", "surrogateescape"))
    return Plan(
        revision=revision,
        dirty=bool(untracked) or edited,
        entries=entries,
        deleted=deleted,
        deleted_paths=deleted_paths,
        bytecode=sorted(set(bytecode)),
        new_dirs=_new_dirs(repo, base, package_path, [c for c in changes if c.status == "A"]),
        skipped=skipped,
        nested=sorted(nested),
        native=[c.path for c in changes if target.is_native(c.path)],
        withheld=withheld,
        diff_hash=digest.hexdigest(),
        epoch=when,
    )


def _bytecode(image_path: str, cache_tag: str) -> list[str]:
    """Where Python caches the bytecode of the module at `image_path` (every optimization level)."""
    folder, name = posixpath.split(image_path)
    stem = name[: -len(".py")]
    return [f"{folder}/__pycache__/{stem}.{cache_tag}{opt}.pyc" for opt in ("", ".opt-1", ".opt-2")]


def _new_dirs(repo: Repo, base: Base, package_path: str, added: list[Change]) -> list[str]:
    """Image paths of the directories that added files need and the base's commit does not have: the layer
    creates them (root-owned, 0755) rather than leaving it to the engine, which would make them 0600."""
    top = base.location.mapped_root(package_path)
    wanted: set[str] = set()
    for change in added:
        parent = posixpath.dirname(change.path)
        while parent and parent != top and (not top or parent.startswith(top + "/")):
            wanted.add(parent)
            parent = posixpath.dirname(parent)
    have = repo.existing_dirs(base.revision, sorted(wanted))
    mapped = (base.location.image_path(d, package_path) for d in sorted(wanted - have))
    return [d for d in mapped if d]


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
    if plan.withheld:
        listed = ", ".join(plan.withheld[:10]) + (" ..." if len(plan.withheld) > 10 else "")
        ui.info(f"not shipped: {listed} (secret paths: container.secrets, container.secret_paths)")
    if plan.nested:
        listed = ", ".join(plan.nested[:10]) + (" ..." if len(plan.nested) > 10 else "")
        ui.warn(f"not shipped, nor deleted: {listed} (a submodule or a repository of its own; the base's stays)")
    for e in plan.entries[:50]:
        ui.info(f"  + {e.image_path}")
    for d in plan.deleted[:50]:
        ui.info(f"  - {d}")
    if len(plan.entries) + len(plan.deleted) > 100:
        ui.info("  ...")
