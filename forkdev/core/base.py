"""Base images: which one, which commit it holds, and where the target's package lives inside it."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ui
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner

REVISION_LABELS = ("org.opencontainers.image.revision", "ai.vllm.build.commit")
REVISION_ENV = ("VLLM_BUILD_COMMIT",)


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
        if repo_path.startswith(package_path + "/"):
            return posixpath.join(self.package_dir, repo_path[len(package_path) + 1 :])
        return None  # e.g. tests/ in a site-packages install: nothing to map it to


@dataclass(frozen=True)
class Base:
    ref: str
    id: str
    revision: str
    digest: str
    config: dict[str, Any]
    location: Location


def revision_of(image: dict[str, Any]) -> str | None:
    labels = Engine.labels(image)
    for key in REVISION_LABELS:
        if labels.get(key):
            return labels[key]
    env = Engine.env(image)
    for key in REVISION_ENV:
        if env.get(key):
            return env[key]
    return None


def candidates(target: Target, repo: Repo, ref: str | None, upstream_url: str, branch: str) -> list[str]:
    """The default bases, best first: the upstream's published image of the merge-base, then our nightly."""
    found = []
    remotes = [r for r in (repo.remote_for(upstream_url), "upstream", "origin") if r]
    tips = [f"refs/remotes/{r}/{branch}" for r in remotes]
    if repo.is_bare():
        tips.append(f"refs/heads/{branch}")  # a mirror: the upstream's branches are its own
    tip = next((t for t in tips if repo.rev(t)), None)
    if target.published_base and tip:
        res = repo.git("merge-base", ref or "HEAD", tip, check=False)
        if res.ok and res.out:
            found.append(target.published_base.format(sha=res.out))
    found.append(target.nightly_image)
    return found


def resolve(engine: Engine, run: Runner, refs: list[str], *, explicit: bool, cache: Path, target: Target) -> Base:
    image = None
    for ref in refs:
        image = engine.inspect_image(run, ref)
        if image is None and not run.dry_run:
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
            f"base image '{ref}' has no revision label ({REVISION_LABELS[0]}); rebuild it with "
            "'invoke nightly' or pass --base with an image that has one"
        )
    digests = image.get("RepoDigests") or []
    return Base(
        ref=ref,
        id=image["Id"],
        revision=revision,
        digest=digests[0] if digests else image["Id"],
        config=image.get("Config") or {},
        location=locate(engine, run, ref, image["Id"], target, cache),
    )


_FIND_SPEC = """
import importlib.util, json, os, sys
spec = importlib.util.find_spec(sys.argv[1])
locs = list(spec.submodule_search_locations or []) if spec else []
where = locs[0] if locs else (os.path.dirname(spec.origin) if spec and spec.origin else None)
print(json.dumps(os.path.realpath(where) if where else None))
"""


def locate(engine: Engine, run: Runner, ref: str, image_id: str, target: Target, cache: Path) -> Location:
    """Ask the image's own Python where the package is, without importing it (its imports want a GPU).
    Cached per image id: an image never changes."""
    cached = cache / "locate" / f"{image_id.split(':')[-1]}-{target.package}.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        return Location(data["package_dir"], data["root"])
    package_dir = engine.python(
        run,
        ref,
        _FIND_SPEC,
        target.package,
        failure=f"cannot locate package '{target.package}' in base '{ref}' ({{why}}); pass --base with an image "
        "that has it installed",
    )
    location = Location.of(package_dir, target.package_path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"package_dir": location.package_dir, "root": location.root}))
    return location
