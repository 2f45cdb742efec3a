"""`invoke dev --native`: the checkout's native part compiled incrementally in the target's build environment, and
the compiled files a thin layer ships.

One workspace per target, base image and build environment (cache.native_workspace) keeps what makes a recompile
incremental: src/, the checkout's files synced into it (only a file whose bytes changed is written, so the mtimes
ninja compares stay as they were for the rest), build/, the build directory, and a compiler cache per target. The
build runs in a container of the build environment as the user running the task, without network; its output
goes to build.log and its progress (ninja's [done/total]) to the console. What it leaves that matches the
profile's native_outputs and differs, byte for byte, from the base's file at the same place ships; the base's
other compiled files stay as they are.

Plan, then act: the native sources are hashed first; when they are what this workspace last built (and its
compiled files are still as built), nothing runs. A changed build system (the profile's native_configure paths:
CMakeLists.txt, cmake/, setup.py, requirements/) is a fresh configure of the build directory, said with its
reason. A failed build names the first compiler error and the log and changes no image; the build directory
stays for the next run. A dry run reads the workspace as it is and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import builder, lock, owners, source, ui
from . import cache as store
from . import container as ctr
from . import labels as L
from .base import Base
from .config import Target, matches
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo, z_paths
from .image import prune_tags
from .proc import Runner
from .secrets import Paths
from .thin import Entry
from .wheelfile import sha256

SRC, BUILD, CCACHE = "/work/src", "/work/build", "/ccache"  # where the build container sees the workspace
STATE_VERSION = 1
# The build environments stage_image made: <dev.repository>:native-<commit12>-<args hash12>. Each is a whole
# Dockerfile stage (vLLM's `base`: CUDA, torch, several GB) and a new base commit makes another, so only the
# newest few stay; an older one comes back, built again, if a base of its commit is used again.
STAGE_TAG = re.compile(r"^native-[0-9a-f]{12}-[0-9a-f]{12}$")
KEEP_STAGES = 2
# The compiler cache where the image has one, and ninja where cmake is left to choose; then the profile's command.
PROLOGUE = (
    "if command -v ccache >/dev/null 2>&1; then export CMAKE_C_COMPILER_LAUNCHER=ccache "
    "CMAKE_CXX_COMPILER_LAUNCHER=ccache CMAKE_CUDA_COMPILER_LAUNCHER=ccache; fi; "
    'if [ -z "${CMAKE_GENERATOR:-}" ] && command -v ninja >/dev/null 2>&1; then export CMAKE_GENERATOR=Ninja; fi; '
    'exec "$@"'
)


@dataclass(frozen=True)
class Spec:
    """How this run compiles: resolved by the task from the profile and config."""

    image: str  # the build environment
    wheel_args: Mapping[str, str] | None  # the wheel image's build args when `image` is it (built when missing)
    command: tuple[str, ...]  # {build}: the build directory, {src}: the tree, {jobs}: parallel jobs
    rebuild: tuple[str, ...]  # in a configured build directory whose build system is unchanged (() = `command`)
    outputs: tuple[str, ...]  # globs of repository paths: the compiled files the command leaves in the tree
    configure: tuple[str, ...]  # native paths whose change needs a fresh configure
    jobs: int
    env: Mapping[str, str] = field(default_factory=dict)  # the base's shaping build args (TORCH_CUDA_ARCH_LIST)
    kept: str = "no image was made"  # what stays as it was when a build fails (the last good image, a container)
    # The build environment as the target's Dockerfile makes it (`image` is ""): this stage, built at the base's
    # commit with the base's build args, tagged in `stage_repository`; built once per commit and build args.
    stage: str = ""
    stage_args: Mapping[str, str] = field(default_factory=dict)  # all of them; the shaping ones name the image
    stage_repository: str = ""


@dataclass(frozen=True)
class Outcome:
    entries: list[Entry]  # compiled files that differ from the base's: they ship
    env: dict[str, str]  # the build environment: {"image": ref, "id": image id ("" in a dry run that builds it)}
    built: bool  # a compile ran (False: the workspace's last build stood, or a dry run)
    compiled: int  # translation units compiled
    reconfigured: str | None  # why the build directory was configured afresh
    same: list[str]  # image paths of compiled files equal to the base's (not shipped)
    log: str | None
    workspace: str | None
    made: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # image path: (repository path, sha256, mode)

    def summary(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "built": self.built,
            "compiled": self.compiled,
            "reconfigured": self.reconfigured,
            "files": [{"path": e.path, "image_path": e.image_path, "sha256": e.sha256} for e in self.entries],
            "same_as_base": self.same,
            "log": self.log,
            "workspace": self.workspace,
        }


@dataclass(frozen=True)
class Workspace:
    root: Path
    ccache: Path
    src: Path  # the checkout's files, synced
    build: Path  # the build directory
    state: Path  # what was synced and built last
    log: Path  # the last build's output

    @classmethod
    def at(cls, root: Path, ccache: Path) -> Workspace:
        return cls(root, ccache, root / "src", root / "build", root / "state.json", root / "build.log")


KEEP_WORKSPACES = 2  # a target's workspaces (one per base image and build environment), newest by last build
WORKSPACE_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{16}")  # cache.native_workspace's names
REMOVING = re.compile(r"\.([0-9a-f]{16}-[0-9a-f]{16})\.removing-\d+")  # one a killed prune was removing


def prune_workspaces(current: Path, keep: int) -> list[Path]:
    """Remove the workspaces beside `current` beyond the `keep` newest (it among them; by their last build): a
    vLLM build tree is gigabytes, and each new nightly base starts one. Only directories named as the tool names
    them are looked at, never a link or what it points to; one whose lock a build holds stays. Each is renamed
    aside under its lock, then removed, so a kill leaves no half workspace that looks whole (the next prune
    finishes it). Returns what went."""
    found = []
    with os.scandir(current.parent) as entries:
        for entry in entries:
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False) or entry.path == str(current):
                continue
            if REMOVING.fullmatch(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif WORKSPACE_NAME.fullmatch(entry.name):
                state = Path(entry.path) / "state.json"
                found.append((state.stat().st_mtime if state.is_file() else entry.stat().st_mtime, Path(entry.path)))
    gone = []
    for _, old in sorted(found, reverse=True)[max(keep - 1, 0) :]:
        aside = old.with_name(f".{old.name}.removing-{os.getpid()}")
        try:
            with lock.exclusive(old / "lock", "native build in that workspace"):
                os.rename(old, aside)
        except (Failure, OSError):
            continue  # in use, or not ours to move: it stays
        shutil.rmtree(aside, onerror=lambda *_: None)
        if aside.exists():
            ui.warn(f"could not remove all of {aside} (files the build container made as another user?); remove it")
        gone.append(old)
    return gone


def check_globs(patterns: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Repository-relative globs that stay inside the tree (no absolute path, no '..')."""
    for pattern in patterns:
        parts = pattern.split("/")
        if not pattern or pattern.startswith("/") or ".." in parts or "\0" in pattern:
            raise Failure(f"{what} '{pattern}' is not a glob of repository paths; write it as vllm/**/*.so")
    return patterns


def build(
    engine: Engine, run: Runner, spec: Spec, *, repo: Repo, base: Base, target: Target, cache: Path, hidden: Paths
) -> Outcome:
    """The compiled files of the checkout's native state that differ from the base's: built now when the workspace
    has not built this state yet (incrementally), else as the workspace last built them."""
    env_ref, env_id = environment(engine, run, spec, repo, base, target, hidden)
    env = {"image": env_ref, "id": env_id}
    if not env_id:  # a dry run whose wheel image is not there yet: nothing more can be known
        ui.info("dry run: the build environment would be built first, then the native part compiled in a new workspace")
        return Outcome([], env, False, 0, None, [], None, None)
    ws = Workspace.at(
        store.native_workspace(cache, target.name, base.id, env_id), store.native_ccache(cache, target.name)
    )
    state = store.read_json(ws.state)
    fingerprint, configure = native_state(repo, target, spec, hidden, env_id)
    outputs = state.get("outputs") if isinstance(state.get("outputs"), dict) else {}
    if state.get("status") == "built" and state.get("fingerprint") == fingerprint and _intact(ws.src, outputs):
        ui.info(f"native sources as last built in {ws.root}: its compiled files stand, nothing to compile")
        return _outcome(engine, run, spec, base, target, cache, ws, env, outputs, False, 0, None)
    if run.dry_run:
        files = source.describe(repo, hidden).files
        changed = _sync(repo.path, files, ws.src, _synced(state), dry=True)
        reason, command = _how(state, configure, ws, spec)
        ui.info(
            f"dry run: would write {changed} changed files into {ws.src}"
            + (f", configure {ws.build} afresh ({reason})" if reason else "")
            + f" and compile there in {env_ref}"
        )
        dry = _argv(engine, spec, ws, env_id, "forkdev-native-dry-run", _version(repo, target), command)
        run(dry)  # echoed, not run
        return Outcome([], env, False, 0, reason, [], str(ws.log), str(ws.root))
    owners.sweep(engine, run, cache)  # the build containers of a run that was killed (kill -9 leaves them)
    own = owners.claim(cache, engine, run)
    with lock.exclusive(ws.root / "lock", f"native build of {target.name} on this base"):
        version = _version(repo, target)
        outputs, compiled, reason = _compile(
            engine, run, spec, repo, hidden, ws, state, fingerprint, configure, env, version, own
        )
    for gone in prune_workspaces(ws.root, KEEP_WORKSPACES):
        ui.info(f"removed the native workspace {gone}: older than this target's newest {KEEP_WORKSPACES}")
    return _outcome(engine, run, spec, base, target, cache, ws, env, outputs, True, compiled, reason)


def environment(
    engine: Engine, run: Runner, spec: Spec, repo: Repo, base: Base, target: Target, hidden: Paths
) -> tuple[str, str]:
    """(reference, image id) of the build environment: the target's build stage at the base's commit (built when
    missing), or the wheel image (built when missing, as `invoke wheel` does); any other must be here."""
    if spec.stage:
        return stage_image(engine, run, spec, repo, base, target, hidden)
    if spec.wheel_args is not None:
        image = builder.ensure(engine, run, spec.image, spec.wheel_args)
        return image.ref, image.id
    info = engine.inspect_image(run, spec.image)
    if info is None:
        raise Failure(
            f"no build environment image '{spec.image}' (dev.native_image); build or pull it, or set dev.native_image "
            "to an image with the target's compilers, cmake and Python build requirements"
        )
    return spec.image, Engine.image_id(info)


def stage_image(
    engine: Engine, run: Runner, spec: Spec, repo: Repo, base: Base, target: Target, hidden: Paths
) -> tuple[str, str]:
    """The '{stage}' stage of the target's Dockerfile at the base's commit, built with the base's build args, as
    the base's own build made it before compiling: tagged `<dev.repository>:native-<commit12>-<args hash>`, so
    it is built once per base commit and build args and found again by name (a dry run builds nothing: its id
    is "")."""
    from . import fullbuild

    commit = base.revision
    if not commit:
        raise Failure(
            f"the base {base.ref} names no commit ({L.REVISION}), so the '{spec.stage}' stage it was built from "
            "cannot be built; set dev.native_image to its build environment"
        )
    shaping = json.dumps([target.dockerfile, spec.stage, dict(sorted(spec.env.items()))])
    tag = f"{spec.stage_repository}:native-{commit[:12]}-{hashlib.sha256(shaping.encode()).hexdigest()[:12]}"
    info = engine.inspect_image(run, tag)
    if info is not None:
        return tag, Engine.image_id(info)
    if not repo.has_commit(commit):
        raise Failure(
            f"the base's commit {commit[:12]} is not in {repo.path}, so its '{spec.stage}' stage cannot be built; "
            "fetch the upstream into it (invoke fork-sync), or set dev.native_image to a build environment"
        )
    ui.info(
        f"building the build environment: the '{spec.stage}' stage of {target.dockerfile} at the base's commit "
        f"{commit[:12]}, once for this commit and these build args"
    )
    built = fullbuild.build(
        engine,
        run,
        repo,
        dataclasses.replace(target, stage=spec.stage),
        fullbuild.Spec(
            commit=commit,
            tag=tag,
            labels={L.REVISION: commit, L.BUILD: "native-env"},
            build_args=dict(spec.stage_args),
            version=fullbuild.version_of(repo, commit),
            hidden=hidden,
        ),
    )
    if not run.dry_run:
        removed, _ = prune_tags(engine, run, spec.stage_repository, STAGE_TAG, KEEP_STAGES, lambda ref, _: ref == tag)
        for ref in removed:
            ui.info(f"removed the build environment {ref}: older than the newest {KEEP_STAGES}")
    return tag, built.image_id


def native_state(repo: Repo, target: Target, spec: Spec, hidden: Paths, env_id: str) -> tuple[str, dict[str, str]]:
    """(one hash of the working tree's native files and of how they are built; the hash of each configure input
    by path). Reads the native paths only: git for their list, then their bytes."""
    pathspecs = sorted({rule.rstrip("/") for rule in target.native})
    listed = repo.run(
        ["git", "--literal-pathspecs", "-C", str(repo.path), "ls-files", "-co", "--exclude-standard", "-z", "--"]
        + pathspecs,
        mutates=False,
    )
    digest = hashlib.sha256(json.dumps([STATE_VERSION, env_id, spec.command, spec.outputs, dict(spec.env)]).encode())
    configure: dict[str, str] = {}
    for path in sorted(set(z_paths(listed.stdout))):
        if hidden.hidden(path) or not target.is_native(path):
            continue
        full = repo.path / path
        try:
            st = os.lstat(full)
            data = os.readlink(full).encode("utf-8", "surrogateescape") if stat.S_ISLNK(st.st_mode) else None
            if data is None and stat.S_ISREG(st.st_mode):
                data = full.read_bytes()
        except FileNotFoundError:
            continue  # a tracked file deleted in the working tree: not part of it
        if data is None:
            continue  # a submodule's directory: its files are listed on their own when it is checked out
        sha = hashlib.sha256(data).hexdigest()
        digest.update(f"{path}\0{st.st_mode & 0o111:o}\0{sha}\n".encode("utf-8", "surrogateescape"))
        if any(matches(rule, path) for rule in spec.configure):
            configure[path] = sha
    return digest.hexdigest(), configure


def _compile(
    engine: Engine,
    run: Runner,
    spec: Spec,
    repo: Repo,
    hidden: Paths,
    ws: Workspace,
    state: dict[str, Any],
    fingerprint: str,
    configure: dict[str, str],
    env: dict[str, str],
    version: Mapping[str, str],
    own: owners.Claim,
) -> tuple[dict[str, list], int, str | None]:
    """Sync, configure afresh when the build system changed, compile; the compiled files as left in src/."""
    for place in (ws.src, ws.build, ws.ccache):
        place.mkdir(parents=True, exist_ok=True)
    files = source.describe(repo, hidden).files
    first = not state
    reason, command = _how(state, configure, ws, spec)
    recorded = _synced(state)
    written = _sync(repo.path, files, ws.src, recorded)
    # Until it succeeds, the workspace holds no build: a killed or failed one is never taken for the last good one.
    store.write_json(ws.state, {**state, "version": STATE_VERSION, "status": "building", "synced": recorded})
    if first:
        ui.info(f"first build in {ws.root}: a full configure and compile (later runs recompile only what changed)")
    elif reason:
        removed = _fresh_configure(ws.build)
        ui.info(
            f"reconfigure: {reason} since the last build; a fresh configure of {ws.build} ({removed} caches removed)"
        )
    ui.info(f"synced {written} changed files into {ws.src}")
    ws.log.write_text("")
    progress = Progress()
    name, labels = own.container("native")
    with ui.log_to(ws.log, output=False), ui.step(f"compile the native part in {env['image']}"):
        argv = _argv(engine, spec, ws, env["id"], name, version, command, labels)
        with ctr.running(run, engine, own, name) as box:  # gone on every path: a failure, Ctrl-C, SIGTERM
            res = run(argv, stream=True, check=False, lines=progress.see)
            box.ended(res.returncode)
        progress.done()
    if not res.ok:
        store.write_json(ws.state, {**state, "version": STATE_VERSION, "status": "failed", "synced": recorded})
        why = progress.first_error or f"the build stopped with exit {res.returncode}: {res.reason}"
        raise Failure(f"native build failed: {why}; the build log is {ws.log}; {spec.kept} and {ws.build} is kept")
    outputs = _outputs(ws.src, spec.outputs, set(files))
    if not outputs:
        raise Failure(
            f"the native build left no file matching {', '.join(spec.outputs)} in the tree; the build log is {ws.log}; "
            "check the target's native_build and native_outputs"
        )
    store.write_json(
        ws.state,
        {
            "version": STATE_VERSION,
            "status": "built",
            "fingerprint": fingerprint,
            "configure": configure,
            "settings": _settings(spec),
            "synced": recorded,
            "outputs": outputs,
            "env": env,
            "compiled": progress.compiled,
        },
    )
    return outputs, progress.compiled, reason


def _how(state: dict[str, Any], configure: dict[str, str], ws: Workspace, spec: Spec) -> tuple[str | None, tuple]:
    """(why the build directory is configured afresh, or None; the command that builds): the profile's rebuild in
    a configured directory whose build system and settings are as last built, else its full command."""
    if not state:
        return None, spec.command
    reason = _reconfigure(state, configure, ws.build, _settings(spec))
    configured = state.get("settings") == _settings(spec) and bool(_caches(ws.build))
    return reason, spec.rebuild if spec.rebuild and reason is None and configured else spec.command


def _settings(spec: Spec) -> list:
    """What else a configured build directory holds: the commands and the variables it was configured with."""
    return [list(spec.command), list(spec.rebuild), dict(sorted(spec.env.items()))]


def _argv(
    engine: Engine,
    spec: Spec,
    ws: Workspace,
    image_id: str,
    name: str,
    version: Mapping[str, str],
    command: tuple,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    return run_argv(
        engine, image_id, name=name, src=ws.src, build=ws.build, ccache=ws.ccache, command=command, jobs=spec.jobs,
        env={**spec.env, **version}, labels=labels,
    )  # fmt: skip


def run_argv(
    engine: Engine,
    image: str,
    *,
    name: str,
    src: Path,
    build: Path,
    ccache: Path,
    command: tuple[str, ...],
    jobs: int,
    env: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """`<engine> run` of a native build command in the build environment `image`, over a source tree, a build
    directory and a compiler cache, as this user, without network: the same paths inside on every run (cmake's
    cache and ninja's dependencies hold them)."""
    uid, gid = os.geteuid(), os.getegid()
    argv = engine.cmd("run", "--rm", "--name", name, "--network", "none", "--user", f"{uid}:{gid}")
    argv += ctr.label_args(labels)  # its owner: core/owners.py
    if engine.kind == "podman" and uid != 0:
        argv += ["--userns", "keep-id"]  # rootless podman: what the build writes stays ours (as builder.run_argv)
    argv += (
        builder.mount(engine, src, SRC) + builder.mount(engine, build, BUILD) + builder.mount(engine, ccache, CCACHE)
    )
    variables = {
        "HOME": "/tmp",
        "CCACHE_DIR": CCACHE,
        "CCACHE_BASEDIR": "/work",
        "CCACHE_NOHASHDIR": "1",
        "MAX_JOBS": str(jobs),
        "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs),
        "FORKDEV_BUILD_DIR": BUILD,
        **env,
    }
    for key, value in sorted(variables.items()):
        argv += ["--env", f"{key}={value}"]
    words = [arg.replace("{build}", BUILD).replace("{src}", SRC).replace("{jobs}", str(jobs)) for arg in command]
    return [*argv, "--workdir", SRC, "--entrypoint", "/bin/sh", "--", image, "-c", PROLOGUE, "forkdev-native", *words]


def _version(repo: Repo, target: Target) -> dict[str, str]:
    """The version a build without .git cannot ask git for (setuptools-scm's SETUPTOOLS_SCM_PRETEND_VERSION), as
    `invoke wheel` gives it; not part of the native state: a new commit alone recompiles nothing."""
    if not target.version_env:
        return {}
    from .fullbuild import version_of

    return {target.version_env: version_of(repo, repo.resolve("HEAD", "HEAD"))}


# ---- the workspace's tree ---------------------------------------------------------------------------------------
def _synced(state: dict[str, Any]) -> dict[str, list]:
    synced = state.get("synced")
    return dict(synced) if isinstance(synced, dict) else {}


def _sync(checkout: Path, files: tuple[str, ...], dest: Path, recorded: dict[str, list], dry: bool = False) -> int:
    """Make `dest` hold `files` as the checkout has them; returns how many were written (or would be). A file whose
    bytes and mode are already there is not touched, so its mtime stays older than what the build made of it.
    Files synced before and gone from the checkout are removed; nothing else in `dest` (what the build made) is.
    `recorded` ({path: [size, mtime_ns, mode]} of the checkout's file when last synced) is updated in place."""
    written = 0
    for rel in sorted(set(recorded) - set(files)):  # first: a link or file gone may be where a directory comes
        del recorded[rel]
        written += 1
        if not dry:
            _remove(dest / rel, dest)
    for rel in files:
        src = checkout / rel
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue
        seen = [st.st_size, st.st_mtime_ns, st.st_mode]
        target = dest / rel
        if recorded.get(rel) == seen and os.path.lexists(target):
            continue
        if not _same(src, st, target):
            written += 1
            if not dry:
                _place(src, st, target, dest)
        recorded[rel] = seen
    return written


def _same(src: Path, st: os.stat_result, target: Path) -> bool:
    try:
        have = os.lstat(target)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or stat.S_ISLNK(have.st_mode):
        return stat.S_ISLNK(st.st_mode) and stat.S_ISLNK(have.st_mode) and os.readlink(src) == os.readlink(target)
    if not stat.S_ISREG(have.st_mode) or have.st_size != st.st_size or (have.st_mode ^ st.st_mode) & 0o111:
        return False
    with open(src, "rb") as a, open(target, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _inside(path: Path, root: Path) -> None:
    """Make every parent of `path` below `root` a real directory: a symlink or file there (ours: an earlier sync's)
    is replaced, so nothing is ever written through a link out of the workspace."""
    here = root
    for part in path.relative_to(root).parts[:-1]:
        here = here / part
        if os.path.islink(here) or (os.path.lexists(here) and not os.path.isdir(here)):
            os.unlink(here)
        if not os.path.lexists(here):
            os.mkdir(here)


def _place(src: Path, st: os.stat_result, target: Path, root: Path) -> None:
    _inside(target, root)
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)  # a directory of ours where the checkout now has a file
    tmp = target.with_name(f".{target.name[:200]}.forkdev-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copyfile(src, tmp, follow_symlinks=False)
        os.chmod(tmp, 0o755 if st.st_mode & 0o111 else 0o644)
    os.replace(tmp, target)


def _remove(target: Path, root: Path) -> None:
    """Remove a file or link an earlier sync wrote (never a directory, never through a link)."""
    if not target.is_relative_to(root) or any(os.path.islink(p) for p in target.parents if p.is_relative_to(root)):
        return
    if os.path.islink(target) or os.path.isfile(target):
        os.unlink(target)


def _reconfigure(state: dict[str, Any], configure: dict[str, str], build_dir: Path, settings: list) -> str | None:
    """Why the build directory needs a fresh configure: the build system's files, or the commands and variables it
    was configured with, changed since the last build (None when they did not, or nothing was configured yet)."""
    before = state.get("configure")
    if not isinstance(before, dict) or not _caches(build_dir):
        return None
    changed = sorted(p for p in set(before) | set(configure) if before.get(p) != configure.get(p))
    if not changed:
        if state.get("settings") not in (None, settings):
            return "the build's command or variables changed"
        return None
    named = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"{named} changed"


def _caches(build_dir: Path) -> list[Path]:
    """Every CMakeCache.txt of the build directory (setup.py may configure one per extension, a level down)."""
    found = []
    for folder, dirs, files in os.walk(build_dir):
        if "CMakeCache.txt" in files:
            found.append(Path(folder) / "CMakeCache.txt")
        depth = len(Path(folder).relative_to(build_dir).parts)
        dirs[:] = [] if depth >= 2 else [d for d in dirs if d != "CMakeFiles"]
    return found


def _fresh_configure(build_dir: Path) -> int:
    """cmake --fresh's effect, kept to the cache: the next configure starts over (compilers, options, found
    packages), while the objects stay and ninja recompiles only those whose command changed."""
    caches = _caches(build_dir)
    for cache in caches:
        cache.unlink()
    return len(caches)


def _outputs(src: Path, patterns: tuple[str, ...], sources: set[str]) -> dict[str, list]:
    """{repository path: [size, mtime_ns, sha256, mode]} of the compiled files the build left in the tree."""
    found: dict[str, list] = {}
    for pattern in patterns:
        for path in sorted(src.glob(pattern)):
            rel = path.relative_to(src).as_posix()
            if rel in sources or rel in found or not _unlinked(src, rel):
                continue
            st = path.stat()
            found[rel] = [st.st_size, st.st_mtime_ns, sha256(path), 0o100755 if st.st_mode & 0o111 else 0o100644]
    return found


def _unlinked(src: Path, rel: str) -> bool:
    """Whether `rel` is a file under `src` reached through no symbolic link: the build may leave one (a link, or a
    linked folder on the way) that points out of the workspace, and what it points to must never reach a layer."""
    path = src / rel
    return path.resolve() == src.resolve() / rel and path.is_file()


def _intact(src: Path, outputs: dict[str, list]) -> bool:
    """Whether the compiled files are still as the last build left them (their size and mtime)."""
    for rel, (size, mtime, *_) in outputs.items():
        try:
            st = os.lstat(src / rel)
        except OSError:
            return False
        if st.st_size != size or st.st_mtime_ns != mtime:
            return False
    return bool(outputs)


# ---- against the base ---------------------------------------------------------------------------------------
_BASE_FILES = """
import glob, hashlib, json, os, sys
found = {}
for pattern in json.loads(sys.argv[1]):
    for path in glob.glob(pattern, recursive=True):
        if os.path.isfile(path) and not os.path.islink(path):
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            found[path] = h.hexdigest()
print(json.dumps(found))
"""


def base_files(engine: Engine, run: Runner, base: Base, target: Target, patterns: tuple[str, ...], cache: Path):
    """{image path: sha256} of the base's compiled files at the outputs' places; asked once per base image and
    patterns (an image never changes), with the base's own python3."""
    wanted = sorted({p for p in (base.location.image_path(g, target.package_path) for g in patterns) if p})
    key = hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:12]
    cached = store.base_file(cache, f"{base.id.split(':')[-1]}-compiled-{key}.json")
    known = store.read_json(cached)
    if isinstance(known.get("files"), dict):
        return known["files"]
    found = engine.python(
        run,
        base.id,
        _BASE_FILES,
        json.dumps(wanted),
        failure=f"cannot read the compiled files of base '{base.ref}' ({{why}}); pass --base with an image that has "
        "python3",
    )
    if not run.dry_run:
        store.write_json(cached, {"files": found})
    return found


def _outcome(
    engine: Engine,
    run: Runner,
    spec: Spec,
    base: Base,
    target: Target,
    cache: Path,
    ws: Workspace,
    env: dict[str, str],
    outputs: dict[str, list],
    built: bool,
    compiled: int,
    reason: str | None,
) -> Outcome:
    """Each compiled file against the base's at its place in the image: those that differ ship."""
    theirs = base_files(engine, run, base, target, spec.outputs, cache)
    entries, same, made = [], [], {}
    for rel, (_, _, sha, mode) in sorted(outputs.items()):
        image_path = base.location.image_path(rel, target.package_path)
        if image_path is not None:
            made[image_path] = (rel, sha, mode)
        if image_path is None:
            ui.warn(f"{rel} has no place in a site-packages base; not shipped")
        elif theirs.get(image_path) == sha:
            same.append(image_path)
        else:
            if not _unlinked(ws.src, rel):
                raise Failure(f"{ws.src / rel} is now reached through a symbolic link; run 'invoke dev --native' again")
            data = (ws.src / rel).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                raise Failure(f"{ws.src / rel} changed while it was read; run 'invoke dev --native' again")
            entries.append(Entry(rel, image_path, mode, data))
    for e in entries:
        ui.info(f"  + {e.image_path} (compiled, {len(e.data)} bytes, sha256 {e.sha256[:12]})")
    if same:
        ui.info(f"  {len(same)} compiled files are byte-identical to the base's: not shipped")
    return Outcome(entries, env, built, compiled, reason, same, str(ws.log), str(ws.root), made)


class Live:
    """`invoke run --sync --native`: the running container's compiled files follow the checkout's native sources.
    Each native save builds incrementally in the workspace of the image's base (the one `dev --native` uses), and
    what differs from what the container holds is copied in."""

    def __init__(self, engine: Engine, run: Runner, spec: Spec, *, repo: Repo, base: Base, target: Target,
                 cache: Path, hidden: Paths, have: dict[str, str]) -> None:  # fmt: skip
        self.engine, self.run, self.spec, self.repo, self.base = engine, run, spec, repo, base
        self.target, self.cache, self.hidden = target, cache, hidden
        self.have = dict(have)  # image path: sha256 of the compiled files in the container

    def rebuild(self) -> tuple[Path, list[tuple[str, str, str]]]:
        """Build; (the workspace's tree, [(its path, image path, sha256)] of the compiled files the container does
        not hold yet). The caller copies them in, then marks them `held`."""
        outcome = build(
            self.engine, self.run, self.spec, repo=self.repo, base=self.base, target=self.target, cache=self.cache,
            hidden=self.hidden,
        )  # fmt: skip
        made = sorted(outcome.made.items())
        return Path(outcome.workspace or ".") / "src", [(r, p, h) for p, (r, h, _) in made if self.have.get(p) != h]

    def held(self, copied: list[tuple[str, str, str]]) -> None:
        self.have.update((path, sha) for _, path, sha in copied)


# ---- the build's output ---------------------------------------------------------------------------------------
STEP = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")  # ninja's status line
MAKE_STEP = re.compile(r"^\[\s*(\d+)%\] (.*)$")  # make's, where cmake generates Makefiles
COMPILE = re.compile(r"\bBuilding (?:C|CXX|CUDA|HIP) object ")
COMPILER_ERROR = re.compile(r"^(\S[^:]*):(\d+)(?::(\d+))?:\s+(?:fatal )?error:\s*(.*)$")  # gcc, clang
NVCC_ERROR = re.compile(r"^(\S+)\((\d+)\): (?:catastrophic )?error:\s*(.*)$")


class Progress:
    """What the build's output says as it comes: ninja's steps (shown on the console, at most every 2 s where it
    is not a TTY), the translation units compiled, the first compiler error."""

    def __init__(self) -> None:
        self.compiled = 0
        self.step = ""
        self.first_error: str | None = None
        self.shown = 0.0
        self.interval = 0.1 if sys.stderr.isatty() else 2.0

    def see(self, line: str) -> None:
        ninja, make = STEP.match(line), MAKE_STEP.match(line)
        if ninja or make:
            done, total, what = ninja.groups() if ninja else (make.group(1), "100", make.group(2))  # make: percent
            self.step = f"{done}/{total}"
            if COMPILE.search(what):
                self.compiled += 1
            now = time.monotonic()
            if now - self.shown >= self.interval or done == total:
                self.shown = now
                ui.status(f"native build [{self.step}] {self.compiled} compiled: {_short(what)}")
            return
        if self.first_error is None:
            self.first_error = _compiler_error(line)
        if self.first_error is None and line.startswith("CMake Error"):
            self.first_error = line.strip()

    def done(self) -> None:
        if self.step:
            ui.status(f"native build: {self.compiled} compiled ({self.step} steps)", last=True)


def _short(text: str) -> str:
    return text if len(text) <= 100 else text[:97] + "..."


def _compiler_error(line: str) -> str | None:
    """A compiler's error line as `path:line:col: error: message`, the path relative to the tree."""
    m = COMPILER_ERROR.match(line.strip())
    if m:
        path, row, col, message = m.groups()
        where = f"{_relative(path)}:{row}" + (f":{col}" if col else "")
        return f"{where}: error: {message}"
    m = NVCC_ERROR.match(line.strip())
    if m:
        path, row, message = m.groups()
        return f"{_relative(path)}:{row}: error: {message}"
    return None


def _relative(path: str) -> str:
    """A path of the build's output as one of the tree: compilers run in the build directory, and ccache hands them
    paths relative to it (../src/csrc/x.cpp)."""
    full = posixpath.normpath(posixpath.join(BUILD, path))
    return full.removeprefix(SRC + "/") if full.startswith(SRC + "/") else path
