"""Base images: which one, which commit it holds, where the target's package lives inside it, and the parts of
its config a thin image copies."""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cache as store
from . import labels as L
from . import ui
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner

# The image config fields a derived image keeps exactly as the base has them (docker's inspect also shows
# container-only fields such as Hostname or AttachStdin; those are not part of an image).
CONFIG_FIELDS = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
    "ArgsEscaped",
)
COMPARED = ("Entrypoint", "Cmd", "User", "Env", "WorkingDir")  # what `invoke verify` holds equal to the base's


@dataclass(frozen=True)
class Location:
    """Where repository paths land inside the image."""

    package_dir: str  # the package directory in the image
    root: str | None  # an editable source tree holding the whole repository, or None for site-packages

    @classmethod
    def of(cls, package_dir: str, package_path: str) -> Location:
        """An editable source tree when the package directory ends with its repository path somewhere other
        than site-packages (e.g. /sgl-workspace/sglang/python/sglang); else a site-packages install."""
        suffix = "/" + package_path
        if package_dir.endswith(suffix):
            root = package_dir[: -len(suffix)] or "/"
            if posixpath.basename(root) not in ("site-packages", "dist-packages"):
                return cls(package_dir, root)
        return cls(package_dir, None)

    def image_path(self, repo_path: str, package_path: str) -> str | None:
        if self.root is not None:
            return posixpath.join(self.root, repo_path)
        if repo_path == package_path:
            return self.package_dir
        if repo_path.startswith(package_path + "/"):
            return posixpath.join(self.package_dir, repo_path[len(package_path) + 1 :])
        return None  # e.g. tests/ in a site-packages install: nothing to map it to

    def mapped_root(self, package_path: str) -> str:
        """The repository path whose directory exists in the image whatever the change (the tree, or the package)."""
        return "" if self.root is not None else package_path


@dataclass(frozen=True)
class Facts:
    """What a base's own Python says (asked once per image id and cached: an image never changes)."""

    location: Location
    cache_tag: str | None  # sys.implementation.cache_tag, e.g. cpython-311: names the base's bytecode files
    bytecode: frozenset[str] = frozenset()  # the .pyc files the base has where a thin layer can change sources


@dataclass(frozen=True)
class Base:
    """A base image as the thin images use it: its reference, id, the upstream commit inside and its config."""

    ref: str
    id: str  # sha256:<hex>
    revision: str
    config: dict[str, Any]  # CONFIG_FIELDS as the base has them
    diff_ids: tuple[str, ...]
    platform: dict[str, str]  # architecture, os, variant
    image: dict[str, Any]  # the whole inspect output (history for docker is asked when an image is written)
    facts: Facts
    history: tuple[dict[str, Any], ...] | None = None  # the stored config's, when it could be read

    @property
    def location(self) -> Location:
        return self.facts.location


def revision_of(image: dict[str, Any]) -> str | None:
    labels = Engine.labels(image)
    for key in L.REVISION_LABELS:
        if labels.get(key):
            return labels[key]
    env = Engine.env(image)
    for key in L.REVISION_ENV:
        if env.get(key):
            return env[key]
    return None


def why_compile(
    engine: Engine, run: Runner, repo: Repo, image: str, state: str, commit: str, upstream: str, target: Target
) -> str:
    """The one answer to "can the compile in `image` be reused for `commit`, of native state `state`": "" when
    it can (the image is here, of that native hash, built from a commit `repo` has, which a thin layer is a diff
    from), else why not, as a phrase naming what changed. nightly and batch both ask it."""
    from .native import native_paths_changed

    existing = engine.inspect_image(run, image)
    if existing is None:
        return f"{image} is not here"
    built_from = revision_of(existing) or ""
    known = bool(built_from) and repo.has_commit(built_from)
    if Engine.labels(existing).get(L.NATIVE_HASH) != state:
        changed = native_paths_changed(repo, built_from, commit, target) if known else []
        listed = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        return f"native state changed since {built_from[:12] or image}" + (f" ({listed})" if listed else "")
    if not built_from:
        return f"{image} has no revision label"
    if not known:
        return f"{image} was built from {built_from[:12]}, which {upstream} lacks"
    return ""


def image_config(image: dict[str, Any]) -> dict[str, Any]:
    raw = image.get("Config") or {}
    return {k: raw[k] for k in CONFIG_FIELDS if k in raw}


def candidates(target: Target, nightly: str, repo: Repo, ref: str | None, upstream_url: str, branch: str) -> list[str]:
    """The default bases, best first: the upstream's published image of the merge-base, then our nightly."""
    found = []
    fork_point = merge_base(repo, ref, upstream_url, branch) if target.published_base else None
    if fork_point:
        found.append(target.published_base.format(sha=fork_point[0]))
    found.append(f"{nightly}:nightly")
    return found


def merge_base(repo: Repo, ref: str | None, upstream_url: str, branch: str) -> tuple[str, str] | None:
    """(the merge-base of `ref` (else HEAD) with the upstream's branch as this repository knows it, that branch's
    name), git only; None when it has no such branch. The upstream's image of a commit is built from it."""
    remotes = [r for r in (repo.remote_for(upstream_url), "upstream", "origin") if r]
    tips = [f"refs/remotes/{r}/{branch}" for r in remotes]
    if repo.is_bare():
        tips.append(f"refs/heads/{branch}")  # a mirror: the upstream's branches are its own
    tip = next((t for t in tips if repo.rev(t)), None)
    if tip is None:
        return None
    res = repo.git("merge-base", "--end-of-options", ref or "HEAD", tip, check=False)
    return (res.out, tip.removeprefix("refs/remotes/").removeprefix("refs/heads/")) if res.ok and res.out else None


def resolve(engine: Engine, run: Runner, refs: list[str], *, explicit: bool, cache: Path, target: Target) -> Base:
    image = None
    for ref in refs:
        image = engine.inspect_image(run, ref)
        if image is None and not run.dry_run:
            if engine.other_has(run, ref):
                raise Failure(
                    f"base '{ref}' is in {engine.other}'s image store, not {engine.kind}'s; move it with "
                    f"'{engine.other} save {ref} | {engine.kind} load', or set engine.name={engine.other}"
                )
            ui.info(f"base '{ref}' is not present locally; pulling it")
            if engine.pull(run, ref):
                image = engine.inspect_image(run, ref)
        if image is not None:
            break
    if image is None:
        tried = ", ".join(f"'{r}'" for r in refs)
        if run.dry_run:
            raise Failure(f"dry run stops here: base {tried} is not present and a real run would pull it")
        hint = "pass --base IMAGE" if explicit else "run 'invoke nightly' or pass --base IMAGE"
        raise Failure(f"no base image {tried} could be found or pulled; {hint}")
    revision = revision_of(image)
    if not revision:
        raise Failure(
            f"base image '{ref}' has no revision label ({L.REVISION}); rebuild it with "
            "'invoke nightly' or pass --base with an image that has one"
        )
    image_id = Engine.image_id(image)
    stored = stored_config(engine, run, image, cache)
    if stored is not None:  # the config itself: one rendering of it for both engines (see stored_config)
        return Base(
            ref=ref,
            id=image_id,
            revision=revision,
            config={k: v for k, v in (stored.get("config") or {}).items() if k in CONFIG_FIELDS},
            diff_ids=tuple((stored.get("rootfs") or {}).get("diff_ids") or ()),
            platform={k: str(stored[k]) for k in ("architecture", "os", "variant") if stored.get(k)},
            image=image,
            facts=facts(engine, run, ref, image_id, target, cache),
            history=tuple(stored.get("history") or ()),
        )
    return Base(
        ref=ref,
        id=image_id,
        revision=revision,
        config=image_config(image),
        diff_ids=tuple((image.get("RootFS") or {}).get("Layers") or ()),
        platform={
            k: str(image[key])
            for k, key in (("architecture", "Architecture"), ("os", "Os"), ("variant", "Variant"))
            if image.get(key)
        },
        image=image,
        facts=facts(engine, run, ref, image_id, target, cache),
    )


def stored_config(engine: Engine, run: Runner, image: dict[str, Any], cache: Path) -> dict[str, Any] | None:
    """The base's config as stored, the bytes its id is the hash of, cached per id (checked against it when read
    back). A derived image copies its run settings and history from these, never from an inspect: docker's
    shows absent fields as null or "", podman's leaves them out, and `docker history` has times to the second, no
    author, and cannot tell an entry that made no layer (ENV) from a layer of no file bytes (RUN mkdir); so one
    base gave another thin image id on each engine. None where the engine cannot give it (then: inspect)."""
    digest = Engine.image_id(image).split(":")[-1]
    cached = store.base_file(cache, f"{digest}-config.json")
    try:
        data = cached.read_bytes()
    except OSError:
        data = b""
    if hashlib.sha256(data).hexdigest() != digest:
        unreadable = store.base_file(cache, f"{digest}-config-{engine.kind}.unreadable")  # not asked again each run
        if unreadable.exists():
            return None
        data = engine.stored_config(run, image) or b""
        if not run.dry_run:
            store.write_bytes(cached if data else unreadable, data)
        if not data:
            return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def history(engine: Engine, run: Runner, base: Base, cache: Path) -> list[dict[str, Any]]:
    """The base's history entries (what a derived image's config repeats): its stored config's, else what the
    engine shows of it, cached per image id and engine (docker's rendering is not podman's; see stored_config)."""
    if base.history is not None:
        return list(base.history)
    cached = store.base_file(cache, f"{base.id.split(':')[-1]}-history-{engine.kind}.json")
    try:
        return list(json.loads(cached.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    entries = engine.history(run, base.image)
    if not run.dry_run:
        store.write_json(cached, entries)
    return entries


# Where the package is, its bytecode tag, and which .pyc files exist under what a thin layer can change (the
# source tree of an editable install, else the package; the same rule as Location.of).
_FIND_SPEC = """
import importlib.util, json, os, sys
spec = importlib.util.find_spec(sys.argv[1])
locs = list(spec.submodule_search_locations or []) if spec else []
where = locs[0] if locs else (os.path.dirname(spec.origin) if spec and spec.origin else None)
if where is None:
    print("null"); sys.exit()
where = os.path.realpath(where)
top, suffix = where, "/" + sys.argv[2]
if where.endswith(suffix) and os.path.basename(where[: -len(suffix)]) not in ("site-packages", "dist-packages"):
    top = where[: -len(suffix)] or "/"
top = where if top == "/" else top
pyc = [os.path.join(d, f) for d, _, fs in os.walk(top) if os.path.basename(d) == "__pycache__" for f in fs]
print(json.dumps({"package_dir": where, "cache_tag": sys.implementation.cache_tag, "bytecode": sorted(pyc)}))
"""
FACTS_VERSION = 2  # what the cached facts hold; older caches are asked again


def facts(engine: Engine, run: Runner, ref: str, image_id: str, target: Target, cache: Path) -> Facts:
    """Ask the image's own Python where the package is, without importing it (its imports want a GPU), and
    which bytecode tag it uses. Cached per image id."""
    cached = store.base_file(cache, f"{image_id.split(':')[-1]}-{target.package}.json")
    try:
        data = json.loads(cached.read_text())
        if data.get("version") == FACTS_VERSION:
            location = Location(data["package_dir"], data["root"])
            return Facts(location, data.get("cache_tag"), frozenset(data["bytecode"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = engine.python(
        run,
        ref,
        _FIND_SPEC,
        target.package,
        target.package_path,
        failure=f"cannot locate package '{target.package}' in base '{ref}' ({{why}}); pass --base with an image "
        "that has it installed",
    )
    location = Location.of(found["package_dir"], target.package_path)
    if not run.dry_run:
        store.write_json(
            cached, {"version": FACTS_VERSION, "package_dir": location.package_dir, "root": location.root, **found}
        )
    return Facts(location, found.get("cache_tag"), frozenset(found.get("bytecode") or ()))
