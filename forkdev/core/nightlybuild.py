"""What `invoke nightly` does once its flags and config are resolved: a base image of an upstream commit, compiled
once per native state, and the pruning of old nightly-<sha> tags.

`build` resolves the upstream commit, and does nothing when `<image>:nightly-<sha>` exists (locally, or in the
registry with --push). Otherwise, if the commit's native state (native paths, Dockerfile, stage, build args) is
the one the last full nightly compiled, `nightly-<sha>` is that image plus one thin layer of the Python changes,
in seconds; else the target's Dockerfile builds it fully. `nightly` then points at it, only ever forward. The
state (last full build, last build) is written only after success; the task holds the lock.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import base as bases
from . import cache as store
from . import config, fullbuild, native, secrets, ui, validate
from . import labels as L
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo, mirror_unless_dry
from .image import instant, prune_tags, rfc3339
from .proc import Runner
from .registry import Policy, Ref, Registry
from .secrets import public_url
from .ship import Request, publish, ship


def resolve_commit(run: Runner, url: str, ref: str, commit: str | None) -> str:
    """The upstream commit to build: --commit as given (checked later in the mirror), else `ref`'s tip."""
    if commit:
        return validate.git_ref(commit, "--commit")
    validate.git_ref(ref, "--ref")
    res = run(["git", "ls-remote", "--", url, f"refs/heads/{ref}", f"refs/tags/{ref}"], mutates=False, check=False)
    if not res.ok:
        raise Failure(f"cannot reach upstream '{url}' ({res.reason}); check upstream.url and your network")
    found = [line.split("\t")[0] for line in res.out.splitlines() if line.strip()]
    if not found:
        raise Failure(f"upstream '{url}' has no branch or tag '{ref}'; pass --ref with one it has")
    return found[0]


@dataclass(frozen=True)
class Order:
    """What one nightly run is asked for: flags over config, resolved and checked once, before the lock is taken."""

    profile: config.Target
    url: str  # the upstream
    ref: str  # its branch or tag whose tip is built (unless commit)
    commit: str | None
    repository: str  # <repository>:nightly and :nightly-<sha>
    full: bool
    force: bool
    push: bool
    cache: Path
    shaping: dict[str, str]  # build args hashed into the native state
    parallel: dict[str, str]  # build args that only set parallelism
    policy: Policy
    secret_paths: secrets.Paths
    secret_values: tuple[secrets.Known, ...]


def build(engine: Engine, run: Runner, order: Order) -> dict[str, Any]:
    """The nightly of `order`: nothing when it exists, else a thin layer or a full build; the result as `--json`
    prints it."""
    profile, url, repository, cache, shaping = order.profile, order.url, order.repository, order.cache, order.shaping
    if not run.dry_run:
        fullbuild.sweep(engine, run)  # what a killed full build left, even if this run builds nothing
    registry = Registry(validate.registry_host(repository) or "docker.io", order.policy, run)
    registry = registry if order.push else None
    sha = resolve_commit(run, url, order.ref, order.commit)
    where = _points_at(engine, run, repository, registry)
    at = set(where.values())
    found = None if order.force or not _full_sha(sha) else _found(engine, run, repository, sha, registry)
    if found is not None and at <= {sha}:  # built, and `nightly` is there or nowhere yet: no mirror needed
        return _existing(engine, run, repository, sha, registry, found, True, where)

    mirror_path = store.mirror(cache, url)
    with ui.step(f"mirror {url}"):
        repo = mirror_unless_dry(mirror_path, url, run)
    resolved = repo.rev(f"{sha}^{{commit}}") if repo is not None else None
    if resolved is None and run.dry_run:  # the plan needs the commit's tree, which only a fetch would bring
        why = "no mirror of the upstream yet" if repo is None else f"the mirror does not have {sha} yet"
        ui.info(f"dry run: {why}; a real run fetches {url} into {mirror_path} first, then plans")
        tag = f"{repository}:nightly-{sha}" if _full_sha(sha) else None
        plan = {"image": tag, "commit": sha, "built": "unknown", "reason": why, "build_args": shaping}
        return {**plan, "dry_run": True, "summary": "dry run"}
    if resolved is None:
        raise Failure(f"unknown commit '{sha}' in upstream {url}; check --commit / --ref")
    if resolved != sha:  # an abbreviated --commit: now that it is known, it may already be built
        sha = resolved
        found = None if order.force else _found(engine, run, repository, sha, registry)
    moves = _forward(repo, at, sha)
    if found is not None:
        return _existing(engine, run, repository, sha, registry, found, moves, where)
    tag = f"{repository}:nightly-{sha}"

    native_state = native.native_hash(repo, sha, profile, shaping)
    state = recorded(store.nightly(cache, profile.name))
    last_full = state.get("last_full") or {}
    full_image = f"{repository}:nightly-{last_full.get('commit', '')}"
    why = (
        "--full"
        if order.full
        else "no full nightly yet"
        if not last_full
        else bases.why_compile(engine, run, repo, full_image, native_state, sha, url, profile)
    )
    kind = "full" if why else "thin"
    version = fullbuild.version_of(repo, sha)
    labels = {L.REVISION: sha, L.VERSION: version, L.NATIVE_HASH: native_state, L.BUILD: kind}
    if "://" in url:
        labels[L.SOURCE] = public_url(url)  # never a credential in a label
    ui.info(f"full build: {why}" if why else f"thin layer: the native state is the last full nightly's ({full_image})")
    if run.dry_run:
        return {
            "image": tag,
            "commit": sha,
            "built": kind,
            "reason": why,
            "build_args": shaping,
            "moves_nightly": moves,
            "dry_run": True,
            "summary": "dry run",
        }

    if why:
        with ui.step(f"full build of {sha[:12]}"):
            spec = fullbuild.Spec(
                commit=sha,
                tag=tag,
                labels={**labels, L.CREATED: rfc3339(time.time())},
                build_args={**shaping, **order.parallel},
                version=version,
                hidden=order.secret_paths,
            )
            built = fullbuild.build(engine, run, repo, profile, spec, log=ui.current_log())
            image_id = built.image_id
    else:
        request = Request.layer_on(
            full_image,
            repo=repo,
            commit=sha,
            target=profile,
            image=tag,
            repository=repository,
            upstream=url,
            source=labels.get(L.SOURCE),
            cache=cache,
            registry=order.policy,
            labels=labels,
            secret_paths=order.secret_paths,
            secret_values=order.secret_values,
        )
        with ui.step(f"thin layer on {full_image}"):
            image_id = ship(engine, run, request)["image_id"]
    _publish(engine, run, tag, repository, registry, push_tag=True, move=moves, pushed_at=where.get("there"))
    entry = {"commit": sha, "image_id": image_id, "native_hash": native_state, "version": version}
    entry["at"] = rfc3339(time.time())
    new_state = {**state, "last": {**entry, "build": kind}}
    if why:
        new_state["last_full"] = entry
    store.write_json(store.nightly(cache, profile.name), new_state)
    summary = f"{'full build' if why else 'thin layer'}: {tag}" + ("" if moves else " (nightly stays)")
    ui.ok(summary)
    return {
        "image": tag,
        "commit": sha,
        "built": kind,
        "reason": why,
        "image_id": image_id,
        "native_hash": native_state,
        "pushed": registry is not None,
        "moves_nightly": moves,
        "summary": summary,
        "dry_run": False,
    }


NIGHTLY_TAG = re.compile(r"^nightly-[0-9a-f]{40}$")  # what nightly tags and prune removes; nothing else


def _full_sha(sha: str) -> bool:
    return len(sha) == 40 and all(ch in "0123456789abcdef" for ch in sha)


def _found(engine, run, repository, sha, registry) -> tuple[bool, bool | None] | None:
    """Where nightly-<sha> already is: (here, in the registry: None without --push), or None when nowhere. A
    registry that answers anything but yes or no is an error, never 'absent'."""
    tag = f"{repository}:nightly-{sha}"
    here = engine.inspect_image(run, tag) is not None
    there = registry.exists(Ref.parse(tag).repository, Ref.parse(tag).tag) if registry is not None else None
    return (here, there) if here or there else None


def _existing(engine, run, repository, sha, registry, found, moves, where) -> dict[str, Any]:
    """The result when nightly-<sha> needs no build: `nightly` follows it when that is forward; with --push, what
    the registry lacks is pushed."""
    here, there = found
    tag = f"{repository}:nightly-{sha}"
    if here:
        _publish(
            engine, run, tag, repository, registry, push_tag=there is False, move=moves, pushed_at=where.get("there")
        )
    where = "here" + (" and in the registry" if there else "") if here else "in the registry"
    ui.ok(f"{tag} exists {where}" + ("; pushed it" if here and there is False else "") + ": nothing to build")
    return {
        "image": tag,
        "commit": sha,
        "built": "nothing",
        "summary": f"{tag} exists",
        "dry_run": run.dry_run,
        "pushed": bool(here and there is False),
        "moves_nightly": moves if here else False,
    }


def _points_at(engine: Engine, run: Runner, repository: str, registry: Registry | None) -> dict[str, str]:
    """The commit `nightly` points at "here" and (with --push) "there", in the registry: no key where there is
    no `nightly`; "?" for an image that names no commit."""
    found = {}
    info = engine.inspect_image(run, f"{repository}:nightly")
    if info is not None:
        found["here"] = Engine.labels(info).get(L.REVISION) or "?"
    if registry is not None:
        labels = registry.labels(Ref.parse(repository + ":nightly").repository, "nightly")
        if labels is not None:
            found["there"] = labels.get(L.REVISION) or "?"
    return found


def _forward(repo: Repo | None, at: set[str], sha: str) -> bool:
    """Whether `nightly` may move to `sha`: only forward, to a commit that descends from every one it points at.
    An older or unrelated commit gets its nightly-<sha> tag only, and says so. A commit `nightly` points at that
    the upstream does not have (its history was rewritten) cannot be compared: then `nightly` moves, said so."""
    for current in sorted(at - {sha}):
        if repo is None:
            ui.info(f"dry run: whether nightly moves from {current[:12]} is known once the mirror exists")
            return True
        if not _full_sha(current) or not repo.has_commit(current):
            ui.warn(f"nightly points at {current[:12]!r}, which the upstream does not have; it moves to {sha[:12]}")
            continue
        if not repo.git("merge-base", "--is-ancestor", current, sha, check=False).ok:
            ui.warn(
                f"nightly stays at {current[:12]}: {sha[:12]} does not descend from it; only nightly-{sha} is tagged"
            )
            return False
    return True


def recorded(path: Path, strict: bool = False) -> dict[str, Any]:
    """The nightly's state (its last build and last full build). An entry that is not what nightly writes is
    dropped with a warning (the next build is then full, which writes it again), never a traceback; `strict`
    (prune, which must know the last full build) refuses it instead."""
    data = store.read_json(path)
    bad = [] if data or not path.is_file() or not path.stat().st_size else ["it is not a JSON object"]
    for key in ("last", "last_full"):
        entry = data.get(key)
        good = isinstance(entry, dict) and _full_sha(str(entry.get("commit", "")))
        if entry is not None and not (good and all(isinstance(entry.get(k, ""), str) for k in ENTRY_TEXT)):
            bad.append(f"its '{key}' entry is malformed")
            data.pop(key)
    if bad and strict:
        raise Failure(
            f"nightly state {path} is damaged ({'; '.join(bad)}), so the last full nightly, which later thin ones "
            "build on, is unknown; run 'invoke nightly --full' (it writes the state again) before pruning"
        )
    for why in bad:
        ui.warn(f"nightly state {path}: {why}; ignoring it (the next build is full)")
    return data


ENTRY_TEXT = ("native_hash", "image_id", "version", "at")


def _publish(
    engine: Engine,
    run: Runner,
    tag: str,
    repository: str,
    registry: Registry | None,
    *,
    push_tag: bool,
    move: bool,
    pushed_at: str | None,
) -> None:
    """`nightly` follows nightly-<sha> when `move` (forward); with --push, what is new goes to the registry: the
    tag when `push_tag`, `nightly` when it moved and the registry's (at `pushed_at`) is not there yet."""
    latest = f"{repository}:nightly"
    if move:
        engine.tag(run, tag, latest)
    there = move and pushed_at != tag.rpartition(":nightly-")[2]
    refs = [*([tag] if push_tag else []), *([latest] if there else [])]
    if registry is not None:
        publish(engine, run, registry, refs)


@dataclass(frozen=True)
class Pruned:
    removed: list[str]
    removed_in_registry: list[str]
    not_removed: list[dict[str, str]]
    not_removed_in_registry: list[dict[str, str]]


def prune(engine: Engine, run: Runner, repository: str, state: Path, keep: int, registry: Registry | None) -> Pruned:
    """Untag the oldest nightly-<sha> tags beyond `keep`, here and (with a registry) there; never `nightly`, nor
    the last full nightly that the state file names (later thin nightlies build on it)."""
    last_full = recorded(state, strict=True).get("last_full") or {}
    keep_too = {f"nightly-{last_full['commit']}"} if last_full.get("commit") else set()
    removed, stayed = _prune_local(engine, run, repository, keep, keep_too)
    remote: list[str] = []
    stayed_remote: list[dict[str, str]] = []
    if registry is not None:
        remote, stayed_remote = _prune_registry(registry, Ref.parse(repository + ":x"), keep, keep_too)
    return Pruned(removed, remote, stayed, stayed_remote)


def _prune_local(
    engine: Engine, run: Runner, repository: str, keep: int, keep_too: set[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """Untag the oldest local nightly-<40 hex> tags beyond `keep` (no other tag: nightly-my-custom is yours);
    never what `nightly` or `keep_too` name (the last full nightly, which later thin nightlies build on)."""
    latest = engine.inspect_image(run, f"{repository}:nightly")
    protected = Engine.image_id(latest) if latest else None

    def spare(ref: str, image_id: str) -> bool:
        return image_id == protected or ref.rpartition(":")[2] in keep_too

    return prune_tags(engine, run, repository, NIGHTLY_TAG, keep, spare)


def _prune_registry(
    registry: Registry, repo: Ref, keep: int, keep_too: set[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """The same in the registry, which deletes manifests, not tags: a nightly-<sha> whose manifest another kept
    tag (`nightly`, a `stable-release` you made) also names is skipped and said so, never deleted with it."""
    tags = registry.tags(repo.repository)
    nightlies = [t for t in tags if NIGHTLY_TAG.match(t)]
    created = {t: instant(registry.created(repo.repository, t)) for t in nightlies}
    newest_first = sorted(nightlies, key=lambda t: created[t], reverse=True)
    doomed = [t for t in newest_first[keep:] if t not in keep_too]
    digests = {t: registry.digest(repo.repository, t) for t in tags}
    kept_by: dict[str | None, list[str]] = {}
    for t in tags:
        if t not in doomed:
            kept_by.setdefault(digests[t], []).append(t)
    removed, stayed, deleted = [], [], set()
    for t in doomed:
        digest = digests[t]
        if digest in kept_by:
            also = ", ".join(kept_by[digest][:3])
            why = f"its manifest is also tagged {also}, which stays (a registry deletes a manifest with all its tags)"
            stayed.append({"ref": f"{repo.host}/{repo.repository}:{t}", "reason": why})
            continue
        if digest is not None and digest not in deleted:
            registry.delete_manifest(repo.repository, digest, t)
            deleted.add(digest)
        removed.append(t)
    return removed, stayed
