"""invoke demo: the whole loop of a fork on a sandbox made here, each step the real task, as a user runs it.

The sandbox (a vLLM-shaped upstream with a native commit, a fork holding extras/, a small native package, a
Debian + Python image made with debootstrap) is made once and kept under `<cache_dir>/demo`; every image is
under `demo.prefix`. A run removes first what an earlier, killed run left; `--clean` removes all of it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from .core import cache as store
from .core import config, ui
from .core.errors import Failure
from .core.tasking import runner, task

# The sandbox and the tour (core.demoing, core.tour, core.sandbox) are imported when the task runs: see cli.py.

LOCK = "demo.lock"  # in the demo's directory; --clean removes it last
PER_RUN = ("{target}-dev",)  # the image repositories (under the prefix) a run makes anew: removed before and after
OWN_CHECKOUT = """\
On your own checkout (vLLM's default base is the upstream's published image of your merge-base):
  {w} fork-sync --repo ~/vllm                       # upstream into your fork; extras/ kept
  {w} overlay --repo ~/vllm && {w} patches --repo ~/vllm --check
  {w} dev ~/vllm                                    # thin image of your work, in a second
  {w} verify IMAGE --repo ~/vllm
  {w} run --repo ~/vllm -- vllm serve facebook/opt-125m
  {w} run --repo ~/vllm --sync --restart "vllm serve" -- vllm serve facebook/opt-125m
  {w} nightly --precompiled                         # your own base, when you have no published one
  {w} wheel ~/vllm && {w} smoke; {w} batch commits.jsonl --upstream ~/vllm"""


def word() -> str:
    """How the user called us: `forkdev demo` (or python -m forkdev) or `invoke demo`; the steps say the same."""
    argv0 = Path(sys.argv[0])
    return "forkdev" if "forkdev" in (argv0.name, argv0.parent.name) else "invoke"


@task(
    help={
        "keep": "leave this run's checkout, logs and images to explore, and print where they are",
        "clean": "remove everything the demo made (directories, images, containers) and run nothing",
    }
)
def demo(c, keep=False, clean=False, dry_run=False, json=False, quiet=False):
    """The whole loop of a fork on a sandbox made here: sync, overlay, patches, dev, verify, run, wheel, batch."""
    from .core import demoing, lock

    run = runner(c, dry_run, quiet)
    if keep and clean:
        raise Failure("--keep and --clean contradict each other; pass one of them")
    settings = config.load(c)  # demo.prefix, demo.os_image and demo.file_bytes checked there
    prefix = settings.demo.prefix
    layout = demoing.Layout(store.demo(settings.cache_dir(run)))
    home = layout.home
    if home.is_symlink() or (home.exists() and not home.is_dir()):  # nothing is written through it, or into it
        if not clean:
            raise Failure(f"{home} is not a directory of the demo's; remove it ('{word()} demo --clean' does)")
        _clean(settings, run, layout, prefix, json)  # which removes it as it is, never what a link points to
        return
    # One demo at a time; a dry run changes nothing, not even the lock's file.
    with contextlib.nullcontext() if run.dry_run else lock.exclusive(home / LOCK, "invoke demo"):
        if clean:
            _clean(settings, run, layout, prefix, json)
            return
        try:
            _demo(settings, run, layout, prefix, keep, json, quiet)
        except KeyboardInterrupt:  # the steps got the Ctrl-C too, and stop as they do
            again = f"the next '{word()} demo' removes what this run left, '{word()} demo --clean' all of it"
            raise Failure(f"interrupted; {again}", code=130) from None


def _clean(settings: config.Settings, run, layout, prefix: str, json: bool) -> None:
    from .core import demoing
    from .core.engine import Engine

    engines = []
    for kind in ("docker", "podman"):  # the demo may have run on either
        try:
            engines.append(Engine.detect(run, kind, settings.engine_network))
        except Failure as exc:
            ui.info(f"{kind}: not checked ({exc})")
    removed = demoing.clean(run, engines, layout, prefix)
    for what in removed:
        ui.info(("would remove " if run.dry_run else "removed ") + what)
    things = f"{len(removed)} thing{'' if len(removed) == 1 else 's'}"
    summary = f"{'would remove' if run.dry_run else 'removed'} {things} the demo made"
    if json:
        ui.emit_json({"removed": removed, "dry_run": run.dry_run})
    else:
        ui.result(summary if removed else "nothing of the demo's here")


def _demo(settings: config.Settings, run, layout, prefix: str, keep: bool, json: bool, quiet: bool) -> None:
    from .core import demoing, tour
    from .core.proc import Runner

    started = time.monotonic()
    # Every program this run starts (debootstrap, git, the steps and what they run) carries the mark: should the
    # run be killed, the next one finds what it left running.
    os.environ[demoing.MARK] = f"{layout.home}:{os.getpid()}"
    profile = settings.target
    engine = settings.engine(run)
    per_run = tuple(r.replace("{target}", profile.name) for r in PER_RUN)
    os_image, file_bytes = settings.demo.os_image, settings.demo.file_bytes
    ui.info(f"demo on {engine.kind}: sandbox in {layout.home}, images under {prefix}/")
    removed = demoing.leftovers(engine, run, layout, prefix, per_run)
    if removed:
        ui.info(f"{'would remove' if run.dry_run else 'removed'} what an earlier run left: {', '.join(removed)}")
    if run.dry_run:
        _plan(run, engine, layout, os_image, file_bytes, not _can_build_wheels(run), json)
        return
    layout.logs.mkdir(parents=True, exist_ok=True)
    logged = Runner(echo=True)  # its echo goes to the logs only (ui.log_to(console=False))
    start = time.monotonic()
    log = layout.logs / "01-sandbox.log"
    try:
        with ui.log_to(log, console=False):
            isolation = not _can_build_wheels(logged)
            made_image = _os_image(engine, logged, os_image, settings.demo.os_image_configured, layout)
            sb = demoing.ensure(logged, layout, os_image, file_bytes)
            demoing.checkout(logged, layout)
    except Failure as exc:
        raise Failure(f"step 'sandbox' failed: {exc}; its log: {log}") from None
    what = "made: " if sb.made else "as an earlier run left it: "
    what += f"upstream ({len(sb.upstream)} commits, 1 native), a fork with extras/, a native package"
    what += f"; {os_image}" + (" (debootstrap)" if made_image else "")
    step_settings = demoing.step_config(layout, engine, prefix, settings.engine_client)
    store.write_json(layout.config, step_settings)
    env = {"INVOKE_RUNTIME_CONFIG": str(layout.config)}  # it wins over the user's INVOKE_* variables and files
    steps = tour.Tour(logged, layout, env, word(), echo=not quiet)
    steps.record("sandbox", None, time.monotonic() - start, what, log, {"made": sb.made})
    failure = None
    try:
        tour.walk(steps, sb, isolation)
    except Failure as exc:
        failure = exc
    tour.table(steps.steps)
    total = time.monotonic() - started
    result = {
        "ok": failure is None,
        "engine": engine.kind,
        "seconds": round(total, 2),
        "home": str(layout.home),
        "config": str(layout.config),
        "kept": str(layout.work) if keep or failure else None,
        "steps": [s.__dict__ for s in steps.steps],
    }
    if json:
        ui.emit_json(result)
    if failure is not None:
        raise failure
    ui.info(OWN_CHECKOUT.format(w=word()))
    if keep:
        ui.info(f"kept: {layout.work} (the checkout, its wheel), logs in {layout.logs}; a step again, by hand:")
        ui.info(f"  INVOKE_RUNTIME_CONFIG={layout.config} {word()} dev {layout.fork}")
    else:
        demoing.remove(engine, run, [], demoing.images(engine, run, prefix, per_run))
        demoing.remove_path(layout.work)
        ui.info(f"the sandbox stays in {layout.home} for the next run; '{word()} demo --clean' removes all of it")
    if not json:
        ui.result(str(layout.work) if keep else f"demo: {len(steps.steps)} steps passed in {total:.1f}s")


def _os_image(engine, run, ref: str, given: bool, layout) -> bool:
    """The image the sandbox's Dockerfile starts FROM: one the config names (pulled when absent), else the demo's
    own, made from a debootstrap rootfs. True when it was made now."""
    from .core import sandbox

    if not given:
        return sandbox.os_image(engine, run, ref, layout.rootfs)
    if engine.inspect_image(run, ref) is None and not engine.pull(run, ref):
        raise Failure(f"demo.os_image '{ref}' is not here and cannot be pulled; pull it, or unset demo.os_image")
    return False


def _can_build_wheels(run) -> bool:
    """Whether this interpreter can build a wheel without fetching anything (setuptools, and bdist_wheel from
    setuptools >= 70.1 or the wheel package); if not, the wheel step lets pip fetch them (--isolation)."""
    probe = (
        "import importlib.util as u, setuptools; "
        "raise SystemExit(0 if u.find_spec('wheel') or u.find_spec('setuptools.command.bdist_wheel') else 1)"
    )
    return run([sys.executable, "-c", probe], mutates=False, check=False).ok


def _plan(run, engine, layout, os_image: str, file_bytes: int, isolation: bool, json: bool) -> None:
    from .core import demoing, tour

    found = store.read_json(layout.stamp).get("recipe") == demoing.recipe(os_image, file_bytes)
    has_image = engine.inspect_image(run, os_image) is not None
    ui.info(f"sandbox: {'as an earlier run left it' if found else 'to make'} in {layout.sandbox}")
    ui.info(f"{os_image}: {'present' if has_image else 'to make (debootstrap)'}")
    cmds = tour.commands(layout, isolation=isolation)
    rows = [[name, tour.display(word(), args)] for name, args in cmds.items()]
    ui.table(["step", "command"], rows)
    if json:
        steps = [{"name": name, "command": command} for name, command in rows]
        ui.emit_json({"dry_run": True, "sandbox": found, "os_image": has_image, "steps": steps})
