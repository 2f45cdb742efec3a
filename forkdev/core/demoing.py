"""What `invoke demo` keeps and removes: where its sandbox lives, the sandbox itself (an upstream with history, a
fork holding extras/, a small native package, made once with fixed dates so that every machine gets the same
commits), and the sweep of what a killed demo or `--clean` leaves. The tour of the tasks is core/tour.py;
forkdev/demo.py holds the task.

Everything the demo makes is under one directory (`<cache_dir>/demo`) and one image prefix (`demo.prefix`):
nothing of the user's (their images, containers, crontab, the rest of the cache) is read or touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import cache as store
from . import sandbox, ui
from .engine import Engine
from .errors import Failure
from .proc import Runner
from .scratch import alive, scratch, sweep

MARK = "FORKDEV_DEMO"  # in every step's environment: "<home>:<pid of the demo>", so a killed demo's steps are found
RECIPE = 1  # the sandbox's recipe; a sandbox made by another recipe is made again
WHEN = 1775001600  # 2026-04-01T00:00:00Z: the sandbox's first commit; fixed dates give the same SHAs everywhere
IDENTITY = {
    "GIT_AUTHOR_NAME": "forkdev demo",
    "GIT_AUTHOR_EMAIL": "demo@forkdev.invalid",
    "GIT_COMMITTER_NAME": "forkdev demo",
    "GIT_COMMITTER_EMAIL": "demo@forkdev.invalid",
}
# The files the tour edits and what the fork and the upstream change in them (line 2 of a generated .py file is
# its `VALUE = N` line).
ENVS = "vllm/envs.py"  # the fork's default, kept by fork-sync --protect against upstream's
EDITED = "vllm/sampling_params.py"  # the developer's edit, shipped by dev, run, synced live
PATCHED = "vllm/entrypoints/openai/api_server.py"  # what the fork's patch changes
NATIVE = "csrc/activation_kernels.cu"  # upstream's native commit, and the edit dev refuses
LATER = "vllm/config/__init__.py"  # upstream's last, Python-only commit
OVERLAY = """\
# The fork's overlay (invoke overlay): files of the checkout copied, transformed, into the overlay directory.
vllm/version.py :: transform=header:# built by the acme fork
vllm/envs.py -> vllm/envs_fork.py :: transform=replace:VALUE =>FORK_VALUE =
"""
SECRETS_EXAMPLE = """\
# Copy to hf.env (git ignores it: it never ships) and fill in; `invoke run` hands it to the container privately.
HF_TOKEN=hf_your_token_here
"""
EXTRAS_README = "The fork's own files. `invoke fork-sync` keeps extras/ as the fork has it, whatever upstream does.\n"


@dataclass(frozen=True)
class Layout:
    """Where everything of the demo lives, under one directory."""

    home: Path  # <cache_dir>/demo

    @property
    def sandbox(self) -> Path:  # kept between runs: the repositories
        return self.home / "sandbox"

    @property
    def upstream(self) -> Path:
        return self.sandbox / "upstream"

    @property
    def fork_origin(self) -> Path:  # the fork as its hosting has it (bare); each run clones it
        return self.sandbox / "fork.git"

    @property
    def package(self) -> Path:
        return self.sandbox / "mlc-llm"

    @property
    def stamp(self) -> Path:
        return self.sandbox / "sandbox.json"

    @property
    def work(self) -> Path:  # one run's: the developer's checkout, wheels, the batch dataset
        return self.home / "work"

    @property
    def fork(self) -> Path:
        return self.work / "fork"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def config(self) -> Path:  # the steps' config (INVOKE_RUNTIME_CONFIG)
        return self.home / "invoke.json"

    @property
    def rootfs(self) -> Path:
        return self.home / "rootfs"

    def cache(self, engine: str) -> Path:  # the steps' cache_dir: nightly state, mirrors, dev records, ccache
        return self.home / f"cache-{engine}"


@dataclass(frozen=True)
class Sandbox:
    upstream: list[str]  # the upstream's commits, oldest first: the tree, python-only, native, python-only
    fork: str  # the fork's tip
    package: str  # the native package's commit
    made: bool  # made by this run (False: as an earlier run left it)


def recipe(os_image: str, file_bytes: int) -> dict:
    return {"recipe": RECIPE, "os_image": os_image, "file_bytes": file_bytes, "manifest": len(sandbox.manifest())}


def ensure(run: Runner, layout: Layout, os_image: str, file_bytes: int) -> Sandbox:
    """The sandbox's repositories as an earlier run made them, or made now (in a scratch directory that replaces
    the old sandbox whole, so a killed run leaves none half made)."""
    wanted = recipe(os_image, file_bytes)
    found = store.read_json(layout.stamp)
    if found.get("recipe") == wanted and all(p.is_dir() for p in (layout.upstream, layout.fork_origin, layout.package)):
        return Sandbox(found["upstream"], found["fork"], found["package"], made=False)
    if run.dry_run:
        ui.info(f"would make the sandbox in {layout.sandbox}: a vLLM-shaped upstream, a fork, a native package")
        return Sandbox([], "", "", made=True)
    layout.home.mkdir(parents=True, exist_ok=True)
    with scratch("sandbox", layout.home) as tmp:
        upstream = _upstream(run, tmp / "upstream", os_image, file_bytes or None)
        fork = _fork(run, tmp, upstream[0])
        package = _package(run, tmp / "mlc-llm")
        store.write_json(
            tmp / "sandbox.json", {"recipe": wanted, "upstream": upstream, "fork": fork, "package": package}
        )
        for old in (layout.sandbox, layout.cache("docker"), layout.cache("podman")):  # and what steps kept of it
            remove_path(old)
        os.replace(tmp, layout.sandbox)
    return Sandbox(upstream, fork, package, made=True)


def step_config(layout: Layout, engine: Engine, prefix: str, client: str) -> dict:
    """The steps' config (their INVOKE_RUNTIME_CONFIG): the sandbox's upstream, cache and image names, set whatever
    the user's own config says."""
    return {
        "cache_dir": str(layout.cache(engine.kind)),
        "target": "vllm",
        "targets": {"vllm": {"published_base": None}},  # no pull from Docker Hub: the base is the sandbox's nightly
        "engine": {"name": engine.kind, "network": engine.network, "client": client},
        "upstream": {"url": str(layout.upstream), "branch": "main", "remote": "upstream"},
        "dev": {"base": "", "repository": f"{prefix}/{{target}}-dev", "push": False, "force": False},
        "nightly": {
            "repository": f"{prefix}/{{target}}",
            "push": False,
            "precompiled": False,
            "cuda_arch": "",
            "build_args": {},
            "log": "",
        },
        "batch": {"repository": f"{prefix}/{{target}}-batch", "push": False},
        # No GPU asked for (the sandbox's image has no CUDA), and never the user's Hugging Face cache.
        "container": {"gpu": "none", "hf_cache": str(layout.home / "no-hf-cache"), "env": {}, "network": ""},
        "wheel": {"native": False, "python": "", "ccache": "", "isolation": False},
        "smoke": {"installer": "auto", "python": ""},
        "fork_sync": {"into": "", "push": False, "autostash": False},
        "overlay": {"dest": "", "definitions": "extras/overlay.txt"},
        "patches": {"registry": "extras/patches/patches.json", "into": "worktree"},
    }


def git(run: Runner, repo: Path, *args: str, when: int | None = None, input: bytes | None = None) -> str:
    """git in a sandbox repository, with the demo's own identity and dates (none of the user's config needed)."""
    env = dict(IDENTITY)
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    argv = ["git", "-C", str(repo), "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args]
    return run(argv, env=env, input=input).out


def commit(run: Runner, repo: Path, message: str, when: int) -> str:
    git(run, repo, "add", "-A")
    git(run, repo, "commit", "-q", "-m", message, when=when)
    return git(run, repo, "rev-parse", "HEAD")


def set_line(path: Path, text: str, line: int = 1) -> None:
    """Replace line `line` (0-based) of a generated file."""
    lines = path.read_bytes().split(b"\n")
    lines[line] = text.encode()
    path.write_bytes(b"\n".join(lines))


def _upstream(run: Runner, root: Path, os_image: str, file_bytes: int | None) -> list[str]:
    root.mkdir(parents=True)
    git(run, root, "init", "-q", "-b", "main")
    count = sandbox.write_buildable(root, os_image, file_bytes, count_compiles=False)
    ui.info(f"  upstream: {count} files shaped as vLLM's tree")
    commits = [commit(run, root, "the tree", WHEN)]
    git(run, root, "tag", "v0.11.0")
    set_line(root / ENVS, "VALUE = 2  # upstream: a new default")
    commits.append(commit(run, root, "envs: a new default", WHEN + 3600))
    with open(root / NATIVE, "a") as fh:
        fh.write("// upstream: a faster activation\n")
    commits.append(commit(run, root, "kernels: a faster activation (native)", WHEN + 7200))
    set_line(root / LATER, "VALUE = 3  # upstream: a new option")
    commits.append(commit(run, root, "config: a new option", WHEN + 10800))
    return commits


def _fork(run: Runner, tmp: Path, base: str) -> str:
    """The fork: upstream's first commit, then extras/ (overlay, a patch, a secrets example) and a default of its
    own in vllm/envs.py, which upstream changes too. Kept bare, as its hosting keeps it."""
    work = tmp / "fork-work"
    run(["git", "clone", "-q", "--no-checkout", "--", str(tmp / "upstream"), str(work)])
    git(run, work, "checkout", "-q", "-B", "main", base)
    extras = work / "extras"
    (extras / "patches").mkdir(parents=True)
    (extras / "secrets").mkdir()
    (extras / "README.md").write_text(EXTRAS_README)
    (extras / "overlay.txt").write_text(OVERLAY)
    (extras / "secrets" / "hf.env.example").write_text(SECRETS_EXAMPLE)
    original = (work / PATCHED).read_bytes()
    set_line(work / PATCHED, original.split(b"\n")[1].decode() + "  # patched: the fork's banner")
    diff = run(["git", "-C", str(work), "diff", "--no-color", "--", PATCHED], mutates=False).stdout
    (work / PATCHED).write_bytes(original)
    (extras / "patches" / "0001-api-server-banner.diff").write_bytes(diff)
    registry = {"patches": [{"name": "api-server: the fork's banner", "diff": "0001-api-server-banner.diff"}]}
    (extras / "patches" / "patches.json").write_text(json.dumps(registry, indent=2) + "\n")
    with open(work / ".gitignore", "a") as fh:
        fh.write("extras/secrets/*.env\n")
    commit(run, work, "fork: extras/ (overlay definitions, a patch, a secrets example)", WHEN + 5400)
    set_line(work / ENVS, "VALUE = 7  # the fork's own default")
    tip = commit(run, work, "fork: our default in vllm/envs.py", WHEN + 5500)
    run(["git", "clone", "-q", "--bare", "--", str(work), str(tmp / "fork.git")])
    shutil.rmtree(work)
    return tip


def _package(run: Runner, root: Path) -> str:
    root.mkdir(parents=True)
    git(run, root, "init", "-q", "-b", "main")
    sandbox.write_cmake_package(root)
    return commit(run, root, "a cmake-backed package laid out as MLC-LLM", WHEN)


def checkout(run: Runner, layout: Layout) -> Path:
    """This run's developer checkout: a clone of the fork, with the upstream as its remote `upstream`, a local
    identity, and files older than its index, as a checkout one works in has them (a fresh clone's are as new
    as its index, so git would read every file again on the first command and the first step look slow)."""
    fork = layout.fork
    layout.work.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "-q", "--", str(layout.fork_origin), str(fork)])
    for key, value in (("user.name", "forkdev demo"), ("user.email", "demo@forkdev.invalid")):
        git(run, fork, "config", key, value)
    git(run, fork, "config", "commit.gpgsign", "false")
    git(run, fork, "remote", "add", "upstream", str(layout.upstream))
    sandbox.age(fork, [p for p in git(run, fork, "ls-files", "-z").split("\0") if p])
    git(run, fork, "update-index", "-q", "--refresh")
    return fork


# ---- what a killed demo, or all of them, left --------------------------------------------------------------
def orphans(home: Path) -> list[int]:
    """Processes a killed demo started (its steps and what they run), found by the MARK in their environment:
    only ours, only those whose demo is gone."""
    found = []
    me = os.getuid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if entry.stat().st_uid != me:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(f"{MARK}=".encode()):
                where, _, pid = item.decode(errors="replace").partition("=")[2].rpartition(":")
                if where == str(home) and pid.isdigit() and not alive(int(pid)):
                    found.append(int(entry.name))
    return found


def stop(pids: list[int]) -> None:
    """SIGTERM (a live sync removes its container then), and SIGKILL what is still there after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
        left = [p for p in pids if alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(alive(p) and not _zombie(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def ours(ref: str, prefix: str) -> bool:
    """Whether an image reference is under the demo's prefix (podman lists local names as localhost/NAME)."""
    return ref.removeprefix("localhost/").startswith(f"{prefix}/")


def images(engine: Engine, run: Runner, prefix: str, repositories: tuple[str, ...] = ()) -> list[str]:
    """The engine's image references under `prefix` (only those of `repositories` under it, when given)."""
    listing = run(engine.cmd("images", "--format", "{{.Repository}}:{{.Tag}}"), mutates=False).out.splitlines()
    mine = [ref for ref in listing if ours(ref, prefix) and not ref.endswith(":<none>")]
    if repositories:
        names = {f"{prefix}/{r}" for r in repositories}
        mine = [ref for ref in mine if ref.removeprefix("localhost/").rpartition(":")[0] in names]
    return sorted(set(mine))


def containers(engine: Engine, run: Runner, prefix: str) -> list[str]:
    """Containers of images under the prefix: only the demo makes those images, so only its steps run them."""
    listing = run(engine.cmd("ps", "-a", "--format", "{{.Names}}\t{{.Image}}"), mutates=False).out.splitlines()
    return sorted({name for name, _, image in (line.partition("\t") for line in listing) if ours(image, prefix)})


def remove(engine: Engine, run: Runner, found_containers: list[str], found_images: list[str]) -> None:
    if found_containers:
        run(engine.cmd("rm", "--force", "--", *found_containers), check=False)
    if found_images:
        run(engine.cmd("image", "rm", "--force", "--", *found_images), check=False)


def leftovers(engine: Engine, run: Runner, layout: Layout, prefix: str, per_run: tuple[str, ...]) -> list[str]:
    """Remove what an earlier run left that this one makes again: its steps still running, its containers, its
    per-run images (`per_run` repositories under the prefix), its checkout and logs, scratch directories.
    Returns what was removed, in words."""
    removed = []
    pids = orphans(layout.home)
    if pids and not run.dry_run:
        stop(pids)
        removed.append(f"{len(pids)} processes of a killed demo")
    boxes, refs = containers(engine, run, prefix), images(engine, run, prefix, per_run)
    if not run.dry_run:
        remove(engine, run, boxes, refs)
    removed += [f"container {b}" for b in boxes] + [f"image {r}" for r in refs]
    for path in (layout.work, layout.logs):
        if path.exists() or path.is_symlink():
            removed.append(str(path))
            if not run.dry_run:
                remove_path(path)
    if layout.home.is_dir() and not run.dry_run:
        removed += [str(p) for p in sweep(layout.home)]
    return removed


def clean(run: Runner, engines: list[Engine], layout: Layout, prefix: str) -> list[str]:
    """Everything the demo made: its processes, containers and images on every engine, its directory."""
    removed = []
    pids = orphans(layout.home)
    if pids and not run.dry_run:
        stop(pids)
    removed += [f"process {p}" for p in pids]
    for engine in engines:
        boxes, refs = containers(engine, run, prefix), images(engine, run, prefix)
        remove(engine, run, boxes, refs)
        removed += [f"{engine.kind} container {b}" for b in boxes] + [f"{engine.kind} image {r}" for r in refs]
    if layout.home.exists() or layout.home.is_symlink():
        if not _only_lock(layout.home):
            removed.append(str(layout.home))
        if not run.dry_run:
            remove_path(layout.home)
    return removed


def _only_lock(home: Path) -> bool:
    """Whether the directory holds nothing but the demo's lock (which a --clean makes to run at all)."""
    try:
        return home.is_dir() and not home.is_symlink() and all(p.name.startswith("demo.lock") for p in home.iterdir())
    except OSError:
        return False


def remove_path(path: Path) -> None:
    """A directory of ours, whole; a symlink or a file in its place is removed as it is, never followed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)  # rmtree itself never follows a link inside
    if path.exists() or path.is_symlink():
        raise Failure(f"could not remove all of {path} (a mount, or a file not ours?); remove it by hand")
