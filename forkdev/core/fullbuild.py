"""A full build of one upstream commit with its own Dockerfile: the exact commit exported as a clean context
(`git archive`, no .git; no secret path, even a tracked one), the version passed in rather than guessed, BuildKit
where the Dockerfile needs it. The context is scanned for the secret values this task knows before it is built.

A build that fails, is interrupted or is killed leaves nothing it made: no step container, no untagged image.
While it runs, the build holds a lock file ($TMPDIR/forkdev-build-<pid>-<random>.lock; the kernel releases it
when its holder dies, kill -9 included) whose path labels what it makes (buildah labels every step's image; the
legacy builder only the last, so the ids it prints go into the lock file instead). A failure removes what the
build made at once; a later build, or nightly at its start, takes the lock of every build that is over and
removes what it left: its untagged images and their step containers, never a tagged image, one in use or one
another build made. (BuildKit keeps nothing in the engine's image store. A killed podman leaves buildah's working
container of each stage; the one on a stage's base, or on a step taken from the cache, stands on an image this
build did not make, so nothing proves it ours, and it stays: `podman ps --external` lists it.)

`invoke nightly` and `invoke batch` call `build`; everything here takes values, not the invoke context.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import fixes, secrets, ui
from . import labels as L
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo, z_paths
from .proc import Runner
from .scratch import scratch

STAGE = re.compile(r"^\s*FROM\s+\S+(?:\s+--\S+)*\s+AS\s+(\S+)\s*$", re.I | re.M)
NEEDS_BUILDKIT = re.compile(r"^\s*(RUN|COPY|ADD)\s+.*--mount=|^#\s*syntax=", re.I | re.M)
OWNER_FILE = re.compile(r"^forkdev-build-\d+-[a-z0-9_]+\.lock$")
# The legacy builder names what each step makes: ' ---> Running in <container>', then ' ---> <image>' (after
# ' ---> Using cache' that image is an earlier build's, and after 'Step N/M : FROM ...' it is the base: not ours).
LEGACY_FROM = re.compile(r"^Step \d+/\d+ : FROM ", re.I)
LEGACY_CONTAINER = re.compile(r"^\s*---> Running in ([0-9a-f]{12,64})\s*$")
LEGACY_IMAGE = re.compile(r"^\s*---> ([0-9a-f]{12,64})\s*$")


@dataclass(frozen=True)
class Spec:
    commit: str
    tag: str
    labels: Mapping[str, str]
    build_args: Mapping[str, str]
    version: str  # the commit's version, for the fixes that pass it in (see fixes.py)
    dockerfile_text: str | None = None  # a Dockerfile of its own (a batch row's); None: the commit's
    hidden: secrets.Paths = secrets.DEFAULT  # secret paths: left out of the context (config container.secrets, ...)
    network: str | None = None  # of its RUN steps; None: the engine's (a batch row's Dockerfile: none by default)


@dataclass(frozen=True)
class Built:
    image_id: str
    fixes: list[str]  # what the fixes registry did to the context, one line each


def version_of(repo: Repo, commit: str) -> str:
    """A PEP 440 version for `commit` from the nearest tag (v0.11.0-12-gabc -> 0.11.0.dev12+gabc), so a build
    without .git does not have to guess it (setuptools-scm reads it from SETUPTOOLS_SCM_PRETEND_VERSION)."""
    res = repo.git("describe", "--tags", "--long", "--match", "v[0-9]*", "--end-of-options", commit, check=False)
    m = re.match(r"^v?(\d+(?:\.\d+)*)(?:[.-]?(?:rc|a|b)\d+)?-(\d+)-g([0-9a-f]+)$", res.out) if res.ok else None
    if not m:
        return f"0.0.0+g{commit[:12]}"
    base, distance, sha = m.groups()
    return base if distance == "0" else f"{base}.dev{distance}+g{sha}"


def _excluded(repo: Repo, spec: Spec) -> list[str]:
    """The pathspecs that keep the commit's secret paths (tracked ones, whatever else holds) out of its context."""
    args = ["ls-tree", "-r", "-z", "--name-only", "--end-of-options", spec.commit, "--", *spec.hidden.roots]
    listing = repo.git(*args, env={"GIT_LITERAL_PATHSPECS": "1"})
    hidden = [p for p in z_paths(listing.stdout) if spec.hidden.hidden(p)]
    return [".", *(f":(exclude,literal){p}" for p in hidden)] if hidden else []


def stages(text: str) -> list[str]:
    return [m.lower() for m in STAGE.findall(text)]


def build(engine: Engine, run: Runner, repo: Repo, target: Target, spec: Spec, log: Path | None = None) -> Built:
    """Build `spec.commit` with the target's Dockerfile and stage, after the fixes that match its context; tag
    it. The build's own output streams to stderr (and to `log`). Nothing is tagged when it fails, and nothing it
    made is left (see the module's docstring)."""
    if not run.dry_run:
        sweep(engine, run)
    with scratch("context") as ctx, scratch("dockerfile") as own, owned(run) as owner:
        # No `--` before the pathspecs: in a bare mirror git archive takes it for a path. They are '.' and
        # ':(exclude,...)' only, never an option.
        archive = repo.git("archive", "--format=tar", "--end-of-options", spec.commit, *_excluded(repo, spec))
        run(["tar", "-x", "-C", str(ctx), "-f", "-"], input=archive.stdout, mutates=False)
        secrets.scan_tree(ctx, secrets.known(None, spec.hidden), f"the build context of {spec.commit[:12]}")
        dockerfile = ctx / target.dockerfile
        if spec.dockerfile_text is not None:  # outside the context, which COPY . would otherwise pick up
            dockerfile = own / "Dockerfile"
            dockerfile.write_text(spec.dockerfile_text)
        try:
            text = dockerfile.read_text()
        except (OSError, UnicodeDecodeError):
            raise Failure(
                f"no readable {target.dockerfile} at commit {spec.commit[:12]}; set targets.{target.name}.dockerfile "
                "to the Dockerfile's path in the upstream repository"
            ) from None
        if target.stage and target.stage.lower() not in stages(text):
            raise Failure(
                f"{target.dockerfile} at {spec.commit[:12]} has no stage '{target.stage}' (it has: "
                f"{', '.join(stages(text)) or 'none'}); set targets.{target.name}.stage"
            )
        args = dict(spec.build_args)
        context = fixes.Context(ctx, text, spec.commit, spec.version, target.version_env, run)
        applied = fixes.apply(context, args)
        for note in applied:
            ui.info(f"fix {note}")
        buildkit = bool(NEEDS_BUILDKIT.search(text))
        if buildkit and not engine.buildkit(run):
            raise Failure(
                f"{target.dockerfile} needs BuildKit (RUN --mount), and '{engine.exe}' ({engine.client(run)}) has "
                "no buildx plugin; install buildx, set engine.client to a docker client with BuildKit built in "
                "(20.10: /usr/bin/docker from Debian's docker.io), or use podman (engine.name=podman)"
            )
        network = spec.network or engine.network
        argv = engine.cmd("build", "--file", str(dockerfile), "--network", network, "--tag", spec.tag)
        # The legacy builder keeps a failed step's container unless --force-rm (buildah removes it by default).
        argv.append("--force-rm")
        if target.stage:
            argv += ["--target", target.stage]
        for key, value in sorted(args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in sorted({**spec.labels, **owner.label}.items()):
            argv += ["--label", f"{key}={value}"]
        legacy = engine.kind == "docker" and not buildkit  # its step images carry no label: noted as they come
        env = engine.build_env(run, buildkit=buildkit)
        try:
            res = run([*argv, "--", str(ctx)], env=env, stream=True, check=False, lines=owner.note if legacy else None)
        except BaseException:  # interrupted, or past a timeout: the builder was stopped mid-step
            owner.remove_leftovers(engine, run)
            raise
        if not res.ok:
            owner.remove_leftovers(engine, run)
            raise Failure(
                f"the build of {spec.commit[:12]} failed (exit {res.returncode}); its log is above"
                + (f" and in {log}" if log else "")
                + ": fix the Dockerfile or the commit, or build another commit"
            )
    if run.dry_run:
        return Built("", applied)
    ui.info(f"built {spec.tag}")
    info = engine.inspect_image(run, spec.tag)
    return Built(Engine.image_id(info) if info else "", applied)


# ---- what a build makes, and what a killed one left ------------------------------------------------------------
@dataclass
class Owner:
    """A running build's lock file (held with flock) and what the legacy builder said it made."""

    path: Path
    fd: int
    _cached: bool = field(default=False, repr=False)

    @property
    def label(self) -> dict[str, str]:
        return {L.BUILD_OWNER: str(self.path)} if self.fd >= 0 else {}

    def note(self, line: str) -> None:
        """A line of the legacy builder's output: the ids of the containers and images this build makes."""
        if line.strip() == "---> Using cache" or LEGACY_FROM.match(line):
            self._cached = True
        elif m := LEGACY_CONTAINER.match(line):
            os.write(self.fd, f"container {m[1]}\n".encode())
        elif m := LEGACY_IMAGE.match(line):
            if not self._cached:
                os.write(self.fd, f"image {m[1]}\n".encode())
            self._cached = False

    def remove_leftovers(self, engine: Engine, run: Runner) -> None:
        """Remove the step containers and untagged images of this build: those its label names, those its
        lock file lists, and buildah's working containers on them. A tagged image, one another image is built
        on, and one a container of someone else's uses stay (rmi without --force refuses them). A working
        container on one of them may be another build's that took the image from the cache: those are removed
        only while no other build of ours runs."""
        if run.dry_run or self.fd < 0:
            return
        noted = os.pread(self.fd, 1 << 20, 0).decode("ascii", "replace").split()
        containers = [noted[i + 1] for i in range(0, len(noted) - 1, 2) if noted[i] == "container"]
        images = [noted[i + 1] for i in range(0, len(noted) - 1, 2) if noted[i] == "image"]
        found = _inspect(engine, run, _untagged(engine, run, f"{L.BUILD_OWNER}={self.path}") + images)
        untagged = [i for i in found if not i.get("RepoTags")]
        ids = {str(i.get("Id", "")).removeprefix("sha256:") for i in untagged}
        working = [] if _others_building(engine, run, self.path) else _working_containers(engine, run, ids)
        for name in [*containers, *working]:
            run(engine.cmd("rm", "--force", "--", name), check=False)
        pending = sorted(untagged, key=lambda i: str(i.get("Created", "")), reverse=True)  # steps after their parents
        for _ in range(3):  # podman removes only the image named; what it was built on goes in the next pass
            pending = [i for i in pending if not run(engine.cmd("image", "rm", "--", i["Id"]), check=False).ok]
            if not pending:
                break


@contextlib.contextmanager
def owned(run: Runner) -> Iterator[Owner]:
    """Hold a fresh lock file for the block, and remove it after (none under dry-run: nothing is built)."""
    if run.dry_run:
        yield Owner(Path(), -1)
        return
    fd, name = tempfile.mkstemp(prefix=f"forkdev-build-{os.getpid()}-", suffix=".lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield Owner(Path(name), fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
        os.close(fd)


def sweep(engine: Engine, run: Runner) -> None:
    """Remove what killed builds left: for each lock file named by an image's owner label or lying in $TMPDIR,
    that is ours and that no one holds any more (its build is over), what that build left; then the file."""
    for path in _lock_files(engine, run):
        fd = _take(path)
        if fd is None:
            continue
        try:
            ui.info(f"removing what a killed build left ({path.name})")
            Owner(path, fd).remove_leftovers(engine, run)
            with contextlib.suppress(OSError):
                path.unlink()
        finally:
            os.close(fd)


def _lock_files(engine: Engine, run: Runner) -> list[Path]:
    """The builds' lock files this machine knows of: named by owner labels, or lying in $TMPDIR."""
    paths = {Path(p) for p in _owners(engine, run)}
    return sorted(paths | set(Path(tempfile.gettempdir()).glob("forkdev-build-*-*.lock")))


def _others_building(engine: Engine, run: Runner, mine: Path) -> bool:
    """Whether a build other than `mine` holds its lock now."""
    for path in _lock_files(engine, run):
        if path == mine or not OWNER_FILE.match(path.name):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


def _take(path: Path) -> int | None:
    """An open, locked descriptor of `path` when it is a build's lock file of ours that no one holds; else None.
    The path comes from a label anyone may set: it must be named as ours, a plain file (no symlink) we own."""
    if not OWNER_FILE.match(path.name) or not path.is_absolute():
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise BlockingIOError
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _untagged(engine: Engine, run: Runner, label: str) -> list[str]:
    """The ids of the untagged images (intermediate ones included) that carry `label` (KEY or KEY=VALUE)."""
    argv = engine.cmd(
        "images", "--all", "--no-trunc", "--filter", f"label={label}", "--format", "{{.ID}} {{.Repository}}"
    )
    res = run(argv, mutates=False, check=False)
    return sorted({line.split()[0] for line in res.out.splitlines() if line.split()[1:] == ["<none>"]})


def _inspect(engine: Engine, run: Runner, ids: list[str]) -> list[dict]:
    """The inspect objects of those of `ids` that still exist: both engines print the ones they found, and fail
    the call for the rest."""
    if not ids:
        return []
    res = run(engine.cmd("image", "inspect", "--", *sorted(set(ids))), mutates=False, check=False)
    try:
        found = json.loads(res.out or "[]")
    except ValueError:
        return []
    return [i for i in found if isinstance(i, dict)] if isinstance(found, list) else []


def _owners(engine: Engine, run: Runner) -> set[str]:
    """The lock files that the owner labels of this engine's untagged images name."""
    found = _inspect(engine, run, _untagged(engine, run, L.BUILD_OWNER))
    return {str(Engine.labels(i).get(L.BUILD_OWNER, "")) for i in found} - {""}


def _working_containers(engine: Engine, run: Runner, image_ids: set[str]) -> list[str]:
    """buildah's working containers (podman lists them with --external) on any of `image_ids`: a killed podman
    build leaves the one of the step it was in."""
    if engine.kind != "podman" or not image_ids:
        return []
    res = run(engine.cmd("ps", "--all", "--external", "--format", "json"), mutates=False, check=False)
    try:
        listed = json.loads(res.out or "[]") if res.ok else []
    except ValueError:
        return []
    return [c["Id"] for c in listed if c.get("State") == "storage" and c.get("ImageID") in image_ids]
