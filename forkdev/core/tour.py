"""invoke demo's tour: what a fork developer does, each step the real task run as a user runs it (`forkdev ARGS`
in a child process, with the sandbox's config; its output in the step's log), its result read from what the task
printed and checked against the sandbox, the steps' table at the end. core/demoing.py makes the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ui
from .demoing import EDITED, ENVS, NATIVE, Layout, Sandbox
from .errors import Failure
from .proc import Result, Runner, concurrently

RUN_SCRIPT = (
    "import os, vllm.sampling_params as m; "
    'print("DEMO_EDIT =", repr(m.DEMO_EDIT), "| HF_TOKEN set:", bool(os.environ.get("HF_TOKEN")))'
)
# The server of the live sync: it runs the edited module, reloads it until a new edit arrives, says when (the
# host's clock: a container shares it), and ends, which ends `run --sync` too. It ends a second after its last
# line: podman removes a --rm container as it exits, and `logs --follow` then loses the lines not yet read.
SYNC_SCRIPT = """\
import importlib, sys, time
import vllm.sampling_params as m
first = m.DEMO_EDIT
print("serving DEMO_EDIT =", repr(first), flush=True)
for _ in range(900):
    time.sleep(0.1)
    try:
        importlib.reload(m)
    except Exception:
        continue  # caught mid-copy: the next reload sees it whole
    if m.DEMO_EDIT != first:
        print("reloaded DEMO_EDIT =", repr(m.DEMO_EDIT), "at %.3f" % time.time(), flush=True)
        time.sleep(1)
        sys.exit(0)
sys.exit("no edit arrived within 90 s")
"""
EDITS = ("edited once", "edited twice, synced live")
FIRST_EDIT, SECOND_EDIT = (f'DEMO_EDIT = "{text}"\n' for text in EDITS)
SECRETS = "HF_TOKEN=hf_demo_not_a_real_token\n"
RELOADED = re.compile(r"reloaded DEMO_EDIT = (.+) at ([\d.]+)")


@dataclass
class Step:
    name: str
    command: str  # as the user types it
    seconds: float
    result: str
    log: str
    detail: dict[str, Any] = field(default_factory=dict)


def commands(
    layout: Layout, *, image: str = "IMAGE", wheel: str = "WHEEL", isolation: bool = False
) -> dict[str, list[str]]:
    """Each step's task and arguments (IMAGE and WHEEL stand for what an earlier step made)."""
    fork, up = str(layout.fork), str(layout.upstream)
    build = ["wheel", str(layout.package), "--native", "--target", "mlc-llm", "--out", str(layout.work / "dist")]
    return {
        "nightly": ["nightly", "--upstream", up, "--json"],
        "fork-sync": ["fork-sync", "--repo", fork, "--protect", ENVS, "--json"],
        "overlay": ["overlay", "--repo", fork],
        "patches": ["patches", "--repo", fork, "--check", "--json"],
        "dev": ["dev", fork, "--json"],
        "edit + dev": ["dev", fork, "--json"],
        "verify": ["verify", image, "--repo", fork, "--json"],
        "run": ["run", "--repo", fork, "--", "python3", "-c", RUN_SCRIPT],
        "run --sync": ["run", "--repo", fork, "--sync", "--", "python3", "-c", SYNC_SCRIPT],
        "native edit": ["dev", fork],
        "wheel": [*build, *(["--isolation"] if isolation else []), "--json"],
        "smoke": ["smoke", "--wheel", wheel, "--no-index", "--json"],
        "batch": ["batch", str(layout.work / "commits.txt"), "--upstream", up, "--json"],
    }


def display(word: str, args: list[str]) -> str:
    """The command as a user types it: paths under the home directory as ~/..., a script as a placeholder."""
    home = os.path.expanduser("~").rstrip("/")
    parts = [word]
    for arg in args:
        if "\n" in arg:
            parts.append(f"<{len([line for line in arg.splitlines() if line.strip()])}-line script>")
        elif home and arg.startswith(home + "/") and shlex.quote(arg[len(home) + 1 :]) == arg[len(home) + 1 :]:
            parts.append("~/" + arg[len(home) + 1 :])
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


class Tour:
    def __init__(self, run: Runner, layout: Layout, env: dict[str, str], word: str, echo: bool) -> None:
        self.run, self.layout, self.env, self.word, self.echo = run, layout, env, word, echo
        self.steps: list[Step] = []
        self.current: tuple[str, Path] | None = None  # the step under way and its log, for a failure to name

    def log(self, name: str) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        return self.layout.logs / f"{len(self.steps) + 1:02d}-{slug}.log"

    def fail(self, name: str, why: str, log: Path) -> Failure:
        return Failure(f"step '{name}' failed: {why}; its log: {log}")

    def task(self, name: str, args: list[str], *, fails: bool = False, stream: bool = False, timeout: float = 1800):
        """Run `forkdev ARGS` as the user would; (its result, seconds, its log). A step that should succeed and
        did not (or the other way round) fails the demo, naming the step and its log."""
        log = self.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.current = (name, log)
        if self.echo:
            ui.info(f"$ {display(self.word, args)}")
        argv = [sys.executable, "-m", "forkdev", *args]
        start = time.monotonic()
        with ui.log_to(log, console=False):
            ui.info(f"$ {display(self.word, args)}")
            try:
                res = self.run(argv, env=self.env, check=False, stream=stream, timeout=timeout)
            except Failure as exc:  # it ran past its time, or could not start
                raise self.fail(name, str(exc), log) from None
            if not stream:
                for line in (res.err + "\n" + res.out).splitlines():
                    ui.output(line)
            ui.info(f"exit {res.returncode} after {time.monotonic() - start:.2f}s")
        took = time.monotonic() - start
        if res.ok == fails:
            why = res.reason.removeprefix("error: ") if not res.ok else "it succeeded where it should have been refused"
            raise self.fail(name, why, log)
        return res, took, log

    def json(self, name: str, res: Result, log: Path) -> dict[str, Any]:
        try:
            return json.loads(res.out.splitlines()[-1])
        except (ValueError, IndexError):
            raise self.fail(name, "it printed no JSON object on stdout", log) from None

    def record(
        self,
        name: str,
        args: list[str] | None,
        seconds: float,
        result: str,
        log: Path | None,
        detail: dict | None = None,
    ) -> None:
        command = display(self.word, args) if args is not None else "(made by the demo)"
        self.steps.append(Step(name, command, seconds, result, str(log or ""), dict(detail or {})))
        ui.ok(f"  {name}: {result} ({seconds:.2f}s)")

    def probe(self, log: Path, argv: list[str]) -> Result:
        """A read-only command that checks a step's result; echoed into the step's log."""
        with ui.log_to(log, console=False):
            return self.run(argv, mutates=False, check=False)

    def check(self, ok: bool, name: str, why: str, log: Path) -> None:
        if not ok:
            raise self.fail(name, why, log)


def walk(tour: Tour, sb: Sandbox, isolation: bool) -> None:
    """The steps, in the order a fork developer takes them. A task whose output lacks what the step reads fails
    that step, naming it (tasks change; a traceback would say nothing of which)."""
    try:
        _steps(tour, sb, isolation)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        name, log = tour.current or ("sandbox", tour.layout.logs)
        raise tour.fail(name, f"its output lacks what the demo reads ({type(exc).__name__}: {exc})", log) from None


def _steps(tour: Tour, sb: Sandbox, isolation: bool) -> None:
    layout, fork = tour.layout, tour.layout.fork
    cmds = commands(layout, isolation=isolation)
    short = lambda sha: sha[:12]  # noqa: E731

    name = "nightly"
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    tour.check(out.get("commit") == sb.upstream[-1], name, f"it built {out.get('commit')}, not the upstream tip", log)
    what = {"full": "full build (csrc/ compiled)", "thin": "thin layer", "nothing": "exists: nothing to build"}
    tour.record(name, cmds[name], took, f"{out['image']}: {what.get(out['built'], out['built'])}", log, out)
    base = out["image"]

    name = "fork-sync"
    before = (fork / ENVS).read_bytes()
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    merged = tour.probe(log, ["git", "-C", str(fork), "merge-base", "--is-ancestor", sb.upstream[-1], "HEAD"])
    tour.check(merged.ok and not out.get("up_to_date"), name, "the upstream tip is not merged into main", log)
    tour.check((fork / ENVS).read_bytes() == before, name, f"{ENVS} is not the fork's any more", log)
    tour.check(ENVS in out.get("restored", []), name, f"fork-sync does not say it kept {ENVS}", log)
    kept = f"kept the fork's {ENVS} (--protect) and extras/"
    tour.record(name, cmds[name], took, f"merged upstream {short(out['upstream'])} into main; {kept}", log, out)

    name = "overlay"
    res, took, log = tour.task(name, cmds[name])
    m = re.search(r"(\d+) files from (\d+) definitions in (\S+)", res.err)
    tour.check(m is not None, name, "it did not say what it wrote", log)
    written = Path(m.group(3)) / "vllm" / "envs_fork.py"
    tour.check(
        written.is_file() and b"FORK_VALUE =" in written.read_bytes(), name, f"{written} was not transformed", log
    )
    tour.record(name, cmds[name], took, f"{m.group(1)} files from {m.group(2)} definitions, transformed", log)

    name = "patches"
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    statuses = [f"{p['name']}: {p['status']}" for p in out.get("patches", [])]
    tour.check(bool(statuses) and out.get("check") is True, name, "no patch was checked", log)
    tour.record(name, cmds[name], took, "; ".join(statuses) + " (checked, nothing written)", log, out)

    name = "dev"
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    tour.check(out.get("base_revision") == sb.upstream[-1], name, f"it is not built on {base}", log)
    first = out["image"]
    tour.record(name, cmds[name], took, f"{first}: {out['base']} + one layer of {out['files']} files", log, out)

    name = "edit + dev"
    original = (fork / EDITED).read_bytes()
    (fork / EDITED).write_bytes(original + b"\n" + FIRST_EDIT.encode())
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    tour.check(out.get("dirty") is True and out["image"] != first, name, "the edit did not make a new image", log)
    image = out["image"]
    result = f"{image}: your uncommitted edit shipped (the edit loop of `nox -s bench -- dev`)"
    tour.record(name, cmds[name], took, result, log, out)
    cmds = commands(layout, image=image, isolation=isolation)

    name = "verify"
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    tour.check(out.get("ok") is True, name, "; ".join(out.get("problems", [])) or "not ok", log)
    result = (
        f"commit {short(out['commit'])} + uncommitted edit: {out['files']} files as shipped, run config as the base's"
    )
    tour.record(name, cmds[name], took, result, log, out)

    name = "run"
    (fork / "extras" / "secrets" / "hf.env").write_text(SECRETS)  # as one does: from extras/secrets/hf.env.example
    res, took, log = tour.task(name, cmds[name])
    want = f"DEMO_EDIT = {EDITS[0]!r} | HF_TOKEN set: True"
    tour.check(want in res.out, name, f"the container did not print {want!r}", log)
    tour.check(SECRETS.split("=")[1].strip() not in res.out + res.err, name, "the secret's value was shown", log)
    tour.record(name, cmds[name], took, f"the container ran your edit: {want}", log, {"printed": res.out})

    _live_sync(tour, cmds)

    name = "native edit"
    native = (fork / NATIVE).read_bytes()
    (fork / NATIVE).write_bytes(native + b"// a kernel change\n")
    try:
        res, took, log = tour.task(name, cmds[name], fails=True)
    finally:
        (fork / NATIVE).write_bytes(native)
    tour.check(NATIVE in res.reason and "native" in res.reason, name, f"the refusal does not name {NATIVE}", log)
    tour.record(name, cmds[name], took, f"refused, naming {NATIVE}: a thin image would ship stale kernels", log)

    name = "wheel"
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    wheel = out["wheel"]
    tour.check(bool(out.get("native_libraries")), name, "the wheel carries no native library", log)
    libs = ", ".join(out["native_libraries"])
    tour.record(name, cmds[name], took, f"{Path(wheel).name} ({libs}), SHA256SUMS, SBOM, provenance", log, out)
    cmds = commands(layout, image=image, wheel=wheel, isolation=isolation)

    name = "smoke"
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    tour.check(out.get("ok") is True and len(out.get("wheels", [])) == 1, name, "the smoke did not pass", log)
    tour.record(name, cmds[name], took, "installed in a fresh environment, imported, its library loaded", log, out)

    name = "batch"
    (layout.work / "commits.txt").write_text("".join(f"{sha}\n" for sha in sb.upstream[1:]))
    res, took, log = tour.task(name, cmds[name])
    out = tour.json(name, res, log)
    items = out.get("commits", [])
    compiled = [i for i in items if i["role"] == "full" and i["status"] == "built"]
    reused = [i for i in items if i["status"] == "reused"]
    tour.check(len(items) == 3 and out.get("full_builds") == 2, name, "3 commits did not make 2 native states", log)
    tour.check(len(compiled) + len(reused) >= 2 and not out.get("failed"), name, "a commit failed", log)
    if reused and not compiled:
        result = f"{len(items)} images in 2 native states, all built by an earlier run (reused)"
    else:
        result = f"{len(items)} images: {len(compiled)} compiles (one per native state) + thin layers"
    tour.record(name, cmds[name], took, result, log, out)


def _live_sync(tour: Tour, cmds: dict[str, list[str]]) -> None:
    """`run --sync` with a server that reloads the edited module: one more edit, saved while it runs, reaches
    it; the server says when and ends, and the sync with it."""
    name, fork = "run --sync", tour.layout.fork
    log = tour.log(name)
    ended = threading.Event()
    writes: list[float] = []

    def step():
        try:
            return tour.task(name, cmds[name], stream=True, timeout=180)
        finally:
            ended.set()

    def edit() -> None:
        deadline = time.monotonic() + 120
        while not ended.is_set() and time.monotonic() < deadline:
            if log.exists() and "syncing " in log.read_text(errors="replace"):
                break
            time.sleep(0.1)
        else:
            return
        time.sleep(1.0)  # the watcher starts just after it says it syncs
        edited = (fork / EDITED).read_text().replace(FIRST_EDIT, SECOND_EDIT)
        while not ended.is_set():
            writes.append(time.time())
            (fork / EDITED).write_text(edited)  # again after 3 s, should the watcher have missed it
            ended.wait(3.0)

    (res, took, log), _ = concurrently(step, edit)
    text = log.read_text(errors="replace")
    m = RELOADED.search(text)
    tour.check(m is not None, name, "the edit did not reach the running container", log)
    tour.check(m.group(1) == repr(EDITS[1]), name, f"the server reloaded {m.group(1)}, not the edit", log)
    at = float(m.group(2))
    latency = at - max((w for w in writes if w <= at), default=at)
    result = f"one more saved edit reached the running server in {latency:.2f}s (it reloaded {m.group(1)})"
    tour.record(name, cmds[name], took, result, log, {"latency": latency})


def table(steps: list[Step]) -> None:
    ui.table(["step", "command", "time", "result"], [[s.name, s.command, f"{s.seconds:.2f}s", s.result] for s in steps])
