from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import support  # noqa: E402
from support.forksync import repos, wrapped  # noqa: E402, F401  (fork-sync's fixtures, for test_fork_sync_*.py)

from forkdev.core.engine import Engine  # noqa: E402
from forkdev.core.errors import Failure  # noqa: E402
from forkdev.core.proc import Runner  # noqa: E402


@dataclass
class Invoked:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)

    @property
    def last_error(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("forkdev-cache")


@pytest.fixture(scope="session")
def invoke(cache_dir):
    """Run `invoke ARGS` from the project root, as a user would; returns code, stdout, stderr. Images the tasks
    make go to the tests' own repository (forkdev-test/...), which the session removes at its end."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, argv=None) -> Invoked:
        full_env = {
            **os.environ,
            "INVOKE_CACHE_DIR": str(cache_dir),
            "INVOKE_DEV_REPOSITORY": "forkdev-test/{target}-dev",
            # Never the user's forkdev/vllm:nightly: what a machine holds must not change what a test sees.
            "INVOKE_NIGHTLY_REPOSITORY": "forkdev-test/nightly-absent",
            **(env or {}),
        }
        full_env.pop("GITHUB_ACTIONS", None)
        res = subprocess.run(
            (argv or support.invoke_argv)(*args),
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or support.ROOT,
            stdin=subprocess.DEVNULL,
        )
        return Invoked(res.returncode, res.stdout, res.stderr)

    return run


def _engine(name: str) -> Engine:
    try:
        return Engine.detect(Runner(echo=False), name, "host")
    except Failure as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no {name or 'container'} engine could be used: {exc}")
        pytest.skip(f"no {name} engine: {exc}")


ENGINES = [e for e in os.environ.get("FORKDEV_TEST_ENGINES", "docker,podman").split(",") if e]
KEEP = os.environ.get("FORKDEV_TEST_KEEP") == "1"  # leave what the tests built, to look at


class Sessions:
    """Test sessions on one machine share its engines and the tests' image names (forkdev-test/...). A lock on one
    file says who else is running: the first session sweeps what a killed one left (a stale native image or
    nightly tag changes what a test sees) before anyone builds, and only the last one out removes the images,
    never one another session is using. POSIX record locks (lockf): a failed upgrade keeps the shared lock."""

    def __init__(self) -> None:
        self.fh = open(Path(tempfile.gettempdir()) / "forkdev-test-sessions.lock", "a+")  # noqa: SIM115
        with self.alone() as first:
            if first and not KEEP:
                for name in ENGINES:
                    with contextlib.suppress(Failure):
                        support.remove_test_images(Engine.detect(Runner(echo=False), name, "host"))

    @contextlib.contextmanager
    def alone(self):
        """Yields whether no other session holds the lock; if none does, the block runs holding it exclusively.
        Shared again afterwards."""
        try:
            fcntl.lockf(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        try:
            yield alone
        finally:
            fcntl.lockf(self.fh, fcntl.LOCK_SH)

    def close(self) -> None:
        self.fh.close()


@pytest.fixture(scope="session")
def sessions():
    s = Sessions()
    yield s
    s.close()


@pytest.fixture(scope="session", params=ENGINES)
def engine(request, sessions) -> Engine:
    """Each engine-backed test runs on docker and on podman; what the session built is removed at its end."""
    e = _engine(request.param)
    yield e
    with sessions.alone() as last:
        if last and not KEEP:
            support.remove_test_images(e)


@pytest.fixture
def tool(invoke, engine):
    """`invoke ARGS` with the engine under test chosen (engine.name), as a user of that engine would run it."""

    def run(*args: str, env: dict[str, str] | None = None, **kw) -> Invoked:
        return invoke(*args, env={"INVOKE_ENGINE_NAME": engine.kind, **(env or {})}, **kw)

    return run


@pytest.fixture(scope="session")
def wheel_image(engine, invoke) -> str:
    """The wheel build image of docker/Dockerfile, FROM the debootstrap image, built once per engine by the
    real task. (`invoke wheel` builds it again by itself should something remove it meanwhile.)"""
    support.ensure_os_image(engine)
    res = invoke("wheel.image", "--json", env={"INVOKE_ENGINE_NAME": engine.kind, **support.wheel_env(engine)})
    assert res.code == 0, res.err
    return res.json["image"]


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if not Path("/usr/bin/docker-registry").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and Debian's docker-registry is not installed (.ci/run installs it)")
        pytest.skip("docker-registry not installed")
    reg = support.Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@dataclass
class World:
    """An upstream repository with history and base images of its first commit, on one engine."""

    upstream: Path
    first: str  # the commit inside the bases
    later: str  # an upstream commit after it, Python-only
    bare: str  # source tree at /opt/vllm-source, byte-compiled, no ENTRYPOINT and no CMD
    editable: str  # the same with an ENTRYPOINT like vllm-openai's
    user: str  # the same run as a non-root USER with an ENTRYPOINT
    site: str  # package in site-packages only, ENTRYPOINT


@pytest.fixture(scope="session")
def upstream(tmp_path_factory) -> tuple[Path, str, str]:
    up = tmp_path_factory.mktemp("upstream") / "vllm"
    first = support.make_upstream(up)
    (up / "vllm" / "sampling_params.py").write_text("SAMPLING = 'upstream later'\n")
    (up / "tests" / "test_later.py").write_text("def test_later():\n    assert True\n")
    later = support.commit_all(up, "upstream: a python-only change")
    return up, first, later


@pytest.fixture(scope="session")
def world(engine, upstream) -> World:
    up, first, later = upstream
    entry = '["python3", "-m", "vllm.entrypoints.openai.api_server"]'
    bare = support.build_base(engine, up, first, support.own("forkdev-test/vllm-base:bare"), compile_bytecode=True)
    editable = support.derive_image(engine, bare, support.own("forkdev-test/vllm-base:editable"), f"ENTRYPOINT {entry}")
    user = support.derive_image(
        engine,
        bare,
        support.own("forkdev-test/vllm-base:user"),
        "RUN useradd --uid 1000 --create-home vllm && chown -R vllm /opt/vllm-source",
        "USER vllm",
        "WORKDIR /opt/vllm-source",
        f"ENTRYPOINT {entry}",
    )
    site_tag = support.own("forkdev-test/vllm-base:site")
    site = support.build_base(engine, up, first, site_tag, kind="site", entrypoint=entry)
    return World(up, first, later, bare, editable, user, site)


@pytest.fixture
def fork(world, tmp_path) -> Path:
    """A user's clone of the upstream, checked out at the bases' commit."""
    path = tmp_path / "vllm"
    support.sh("git", "clone", "-q", world.upstream, path)
    support.git(path, "checkout", "-q", "-B", "dev", world.first)
    return path


class Started:
    """A task started in the background as a user starts it (the session's cache and image names), its output read
    all along: a test that reads only at the end stalls the tool once a pipe is full."""

    def __init__(self, argv: list[str], env: dict[str, str], session: bool = False) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=support.ROOT,
            start_new_session=session,  # its own process group, which `kill_group` ends at once
            # A suite started in the background by a shell without job control ignores SIGINT, and children
            # inherit that: give the tool the Ctrl-C a user's terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self.readers = [
            threading.Thread(target=lambda k=k, f=f: self.lines[k].extend(f), daemon=True)
            for k, f in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for r in self.readers:
            r.start()

    @property
    def out(self) -> str:
        return "".join(self.lines["out"])

    @property
    def err(self) -> str:
        return "".join(self.lines["err"])

    def name(self, purpose: str) -> str:
        """The container's name, from the tool's own echo of its `run`."""
        found = re.search(rf"--name (forkdev-{purpose}-{self.proc.pid}-[0-9a-f]+)", self.err)
        return found[1] if found else ""

    def kill_group(self) -> int:
        """kill -9 to the task and every process it started (its engine client among them), as a closed terminal
        or the OOM killer ends them: nothing is left to clean up after it. Needs `session`."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        return self.finish(None)

    def finish(self, sig: int | None = signal.SIGINT, timeout: float = 60) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for r in self.readers:
                r.join(10)
        return self.proc.returncode


@pytest.fixture
def start(engine, cache_dir):
    """Start `invoke ARGS` in the background with the environment the `invoke` fixture gives; every one is ended
    (and whatever container it left, removed) at the end of the test."""
    started: list[Started] = []

    def launch(*args: str, argv=None, env: dict[str, str] | None = None, session: bool = False) -> Started:
        full_env = {
            **os.environ,
            "INVOKE_CACHE_DIR": str(cache_dir),
            "INVOKE_DEV_REPOSITORY": "forkdev-test/{target}-dev",
            "INVOKE_NIGHTLY_REPOSITORY": "forkdev-test/nightly-absent",
            "INVOKE_ENGINE_NAME": engine.kind,
            **(env or {}),
        }
        started.append(Started((argv or support.invoke_argv)(*args), full_env, session))
        return started[-1]

    yield launch
    for one in started:
        one.finish(signal.SIGKILL)
        names = re.findall(rf"--name (forkdev-[a-z]+-{one.proc.pid}-[0-9a-f]+)", one.err)
        if names:
            subprocess.run([engine.exe, "rm", "--force", *names], capture_output=True)
