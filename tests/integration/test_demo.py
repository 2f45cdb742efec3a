"""`invoke demo` end to end on each engine: every step's result checked against what it made (not only the exit
code), a killed demo's leftovers removed by the next run, and `--clean` leaving nothing of the demo's.

To keep the suite's cost low the demo starts FROM the fixtures' debootstrap image (demo.os_image) instead of
making its own, and caps the tree's files at 2 KiB (demo.file_bytes); its images go under a prefix of this
session's own (forkdev-test/..., which the sessions sweep should a test be killed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.engine

STEPS = [
    "sandbox",
    "nightly",
    "fork-sync",
    "overlay",
    "patches",
    "dev",
    "edit + dev",
    "verify",
    "run",
    "run --sync",
    "native edit",
    "wheel",
    "smoke",
    "batch",
]


class Demo:
    def __init__(self, tool, engine, tmp: Path) -> None:
        self.tool, self.engine = tool, engine
        self.prefix = f"forkdev-test/demo-{uuid.uuid4().hex[:8]}"
        self.home = tmp / "cache" / "demo"
        self.env = {
            "INVOKE_CACHE_DIR": str(tmp / "cache"),
            "INVOKE_DEMO_PREFIX": self.prefix,
            "INVOKE_DEMO_OS_IMAGE": support.ensure_os_image(engine),
            "INVOKE_DEMO_FILE_BYTES": "2048",
        }

    def __call__(self, *args: str):
        return self.tool("demo", *args, env=self.env)

    def images(self) -> list[str]:
        out = support.sh(self.engine.exe, "images", "--format", "{{.Repository}}:{{.Tag}}")
        return sorted(r for r in out.split() if r.removeprefix("localhost/").startswith(self.prefix + "/"))

    def containers(self, name: str = "") -> list[str]:
        out = support.sh(self.engine.exe, "ps", "-a", "--format", "{{.Names}} {{.Image}}")
        return [line for line in out.splitlines() if self.prefix in line and line.startswith(name)]

    def file(self, image: str, path: str) -> bytes | None:
        return support.image_file(self.engine, image, path)


@pytest.fixture
def demo(tool, engine, tmp_path):
    d = Demo(tool, engine, tmp_path)
    yield d
    d("--clean")  # whatever the test left


def steps(res) -> dict[str, dict]:
    return {s["name"]: s for s in res.json["steps"]}


def test_the_demo_runs_the_whole_loop_then_a_killed_run_is_swept_and_clean_leaves_nothing(demo, engine):
    first = demo("--keep", "--json")
    assert first.code == 0, first.err[-3000:]
    assert [s["name"] for s in first.json["steps"]] == STEPS and first.json["ok"] is True
    s = steps(first)
    fork = Path(first.json["kept"]) / "fork"
    assert s["sandbox"]["detail"]["made"] is True
    for name, step in s.items():
        assert step["command"].startswith("invoke ") or name == "sandbox", step
        assert Path(step["log"]).is_file(), f"{name} names its log"

    nightly = s["nightly"]["detail"]
    assert nightly["built"] == "full" and nightly["image"].startswith(f"{demo.prefix}/vllm:nightly-")
    assert demo.file(nightly["image"], "/opt/vllm-source/vllm/_C.abi3.so"), "the compiled stand-in is in the base"

    synced = s["fork-sync"]["detail"]
    assert synced["restored"] == ["vllm/envs.py"] and s["fork-sync"]["command"].endswith(
        "--protect vllm/envs.py --json"
    )
    assert (fork / "vllm/envs.py").read_text().splitlines()[1] == "VALUE = 7  # the fork's own default"
    assert support.git(fork, "merge-base", "--is-ancestor", synced["upstream"], "HEAD") == ""
    assert (fork / "extras/overlay.txt").is_file() and (fork / "extras/patches/patches.json").is_file()

    assert s["overlay"]["result"].startswith("2 files from 2 definitions")
    assert s["patches"]["detail"]["patches"] == [{"name": "api-server: the fork's banner", "status": "applied"}]
    assert s["patches"]["detail"]["check"] is True and "patched" not in (fork / PATCHED).read_text()

    dev, edited = s["dev"]["detail"], s["edit + dev"]["detail"]
    assert dev["dirty"] is False and edited["dirty"] is True and edited["image"] != dev["image"]
    assert b"the fork's own default" in demo.file(dev["image"], "/opt/vllm-source/vllm/envs.py")
    assert b'DEMO_EDIT = "edited once"' in demo.file(edited["image"], "/opt/vllm-source/vllm/sampling_params.py")
    assert s["edit + dev"]["seconds"] < 10, "the edit loop takes about a second"
    assert s["verify"]["detail"]["ok"] is True and s["verify"]["detail"]["image"] == edited["image"]

    assert "DEMO_EDIT = 'edited once' | HF_TOKEN set: True" in s["run"]["detail"]["printed"]
    assert "hf_demo_not_a_real_token" not in first.out + first.err, "the secret's value is never shown"
    assert "reloaded 'edited twice, synced live'" in s["run --sync"]["result"]
    assert 0 <= s["run --sync"]["detail"]["latency"] < 5
    assert "csrc/activation_kernels.cu" in s["native edit"]["result"]
    assert b"// a kernel change" not in (fork / "csrc/activation_kernels.cu").read_bytes(), "the native edit is undone"

    wheel = Path(s["wheel"]["detail"]["wheel"])
    assert wheel.is_file() and s["wheel"]["detail"]["native_libraries"] == ["mlc_llm/libmlc_llm.so"]
    assert s["smoke"]["detail"]["ok"] is True and s["smoke"]["detail"]["wheels"][0]["ok"] is True

    batch = s["batch"]["detail"]
    built = {c["commit"]: c for c in batch["commits"]}
    assert len(built) == 3 and batch["full_builds"] == 2 and batch["failed"] == 0
    assert sum(c["role"] == "full" and c["status"] == "built" for c in built.values()) == 2
    kernels = {sha: demo.file(c["image"], "/opt/vllm-source/vllm/_C.abi3.so") for sha, c in built.items()}
    python_only, native, later = support.git(fork, "rev-list", "--reverse", "upstream/main").split()[1:]
    assert kernels[native] == kernels[later] != kernels[python_only], "one compile per native state"

    # A demo killed (kill -9) while its live sync runs: its step, the step's container and images stay behind.
    killed = subprocess.Popen(
        support.invoke_argv("demo"),
        env={**os.environ, "INVOKE_ENGINE_NAME": engine.kind, **demo.env},
        cwd=support.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not demo.containers("forkdev-sync-") and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.2)
        assert demo.containers("forkdev-sync-"), "the killed run got to its live sync"
        killed.kill()
        killed.wait(30)
    finally:
        if killed.poll() is None:
            killed.kill()

    again = demo("--json")
    assert again.code == 0, again.err[-3000:]
    swept = next((line for line in again.err.splitlines() if "what an earlier run left" in line), again.err[:3000])
    assert "removed what an earlier run left: " in swept and "-dev:" in swept and "container forkdev-sync-" in swept
    s = steps(again)
    assert s["sandbox"]["detail"]["made"] is False and s["nightly"]["detail"]["built"] == "nothing"
    assert all(c["status"] == "reused" for c in s["batch"]["detail"]["commits"])
    assert again.json["seconds"] < 60, "a second run takes under a minute"
    assert again.json["kept"] is None and not (demo.home / "work").exists()
    assert not [r for r in demo.images() if "-dev:" in r], "a run leaves none of its dev images"

    # --clean: every directory, image and container of the demo's, and nothing else.
    neighbour = f"{demo.prefix}x/other:1"  # a name that merely starts like the prefix
    support.sh(engine.exe, "tag", demo.env["INVOKE_DEMO_OS_IMAGE"], neighbour)
    try:
        cleaned = demo("--clean", "--json")
        assert cleaned.code == 0, cleaned.err
        assert any(r.endswith(":nightly") for r in cleaned.json["removed"])
        assert demo.images() == [] and demo.containers() == [] and not demo.home.exists()
        assert support.inspect(engine, neighbour) and support.inspect(engine, demo.env["INVOKE_DEMO_OS_IMAGE"])
        assert not [p for p in _marked(demo.home)], "no process of the demo's is left"
    finally:
        subprocess.run([engine.exe, "image", "rm", neighbour], capture_output=True)


PATCHED = "vllm/entrypoints/openai/api_server.py"


def _marked(home: Path) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"FORKDEV_DEMO={home}:".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_dry_run_shows_the_steps_and_makes_nothing(invoke, tmp_path):
    res = invoke("demo", "--dry-run", "--json", env={"INVOKE_CACHE_DIR": str(tmp_path / "cache")})
    assert res.code == 0, res.err
    assert res.json["dry_run"] is True and [s["name"] for s in res.json["steps"]] == STEPS[1:]
    assert res.json["steps"][1]["command"].startswith("invoke fork-sync --repo ")
    assert not (tmp_path / "cache").exists(), "not even the cache"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--keep", "--clean"), {}, "--keep and --clean contradict each other"),
        ((), {"INVOKE_DEMO_PREFIX": "docker.io/someone"}, "demo.prefix 'docker.io/someone' names a registry"),
        ((), {"INVOKE_DEMO_PREFIX": "-rm"}, "demo.prefix"),
        ((), {"INVOKE_DEMO_FILE_BYTES": "-5"}, "demo.file_bytes '-5' is not a size"),
    ],
)
def test_bad_values_are_one_line_and_make_nothing(invoke, tmp_path, args, env, message):
    res = invoke("demo", *args, env={"INVOKE_CACHE_DIR": str(tmp_path / "cache"), **env})
    assert res.code == 1 and message in res.last_error and "Traceback" not in res.err
    assert not (tmp_path / "cache" / "demo" / "sandbox").exists()


def test_two_demos_at_once_the_second_fails_at_once_naming_the_first(invoke, tmp_path):
    home = tmp_path / "cache" / "demo"
    home.mkdir(parents=True)
    hold = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(["python3", "-c", hold, str(home / "demo.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = invoke("demo", env={"INVOKE_CACHE_DIR": str(tmp_path / "cache")})
        assert res.code == 1 and "another invoke demo is running" in res.last_error
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_demo_directory_that_is_a_link_is_never_written_through_and_clean_removes_only_the_link(invoke, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "demo").symlink_to(mine)
    env = {
        "INVOKE_CACHE_DIR": str(tmp_path / "cache"),
        "INVOKE_DEMO_PREFIX": f"forkdev-test/demo-{uuid.uuid4().hex[:8]}",
    }
    res = invoke("demo", env=env)
    assert res.code == 1 and "is not a directory of the demo's" in res.last_error
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"], "no lock, no sandbox written through the link"
    cleaned = invoke("demo", "--clean", env={**env, "INVOKE_ENGINE_NAME": "docker"})
    assert cleaned.code == 0, cleaned.err
    assert not (tmp_path / "cache" / "demo").is_symlink() and (mine / "notes.txt").read_text() == "keep me"
