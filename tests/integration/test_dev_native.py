"""`invoke dev --native`, end to end on both engines: a CPU-only extension of vLLM's shape (tens of translation
units, built through cmake by setup.py) compiled in the wheel image, on a base compiled the same way.

One upstream and one base per engine serve every test (the module's fixture); each test clones its own checkout.
The build workspace is the session's (one per base and build environment, as a user's is), so each test first
builds its own starting state and then measures what one more change recompiles."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import support

from forkdev.core import cache as store
from forkdev.core import config, sandbox
from forkdev.core.engine import Engine

pytestmark = pytest.mark.engine

SRC = "/opt/vllm-source/"
C, MOE = SRC + "vllm/_C.abi3.so", SRC + "vllm/_moe_C.abi3.so"
VALUE = "import vllm._C as c; print(c.value())"
MOE_VALUE = "import vllm._moe_C as c; print(c.value())"
COMPILED = re.compile(r"Building CXX object \S+?/csrc/(\S+)\.cpp\.o")


@dataclass
class Native:
    upstream: Path
    commit: str
    base: str
    env: str  # the build environment: the wheel image
    value: int  # _C.value() in the base
    moe_value: int  # _moe_C.value()


@pytest.fixture(scope="module")
def native(engine, wheel_image, cache_dir, tmp_path_factory) -> Native:
    up = tmp_path_factory.mktemp("native-upstream") / "vllm"
    support.make_native_upstream(up)
    # Its Dockerfile's `base` stage is the build environment, as vLLM's is: here the wheel image and a mark.
    (up / "docker").mkdir()
    (up / "docker" / "Dockerfile").write_text(
        f'FROM {wheel_image} AS base\nARG max_jobs\nRUN echo "base stage, max_jobs=$max_jobs" > /tmp/stage\n'
        "FROM base AS build\nRUN exit 1\n"
    )
    commit = support.commit_all(up, "upstream: its Dockerfile, whose base stage is the build environment")
    tag = support.own(f"forkdev-test/vllm-native-base:{engine.kind}")
    # Compiled with the compiler cache the tasks use: their first build of this tree costs cache hits only.
    support.build_native_base(engine, wheel_image, up, commit, tag, store.native_ccache(cache_dir, "vllm"))
    return Native(up, commit, tag, wheel_image, value(engine, tag), value(engine, tag, MOE_VALUE))


@pytest.fixture
def checkout(native, tmp_path) -> Path:
    path = tmp_path / "vllm"
    support.sh("git", "clone", "-q", native.upstream, path)
    return path


@pytest.fixture
def dev(tool, native, checkout):
    """`invoke dev CHECKOUT --native --base BASE ARGS` with the wheel image as the build environment."""

    def run(*args: str, env: dict[str, str] | None = None):
        more = {"INVOKE_DEV_NATIVE_IMAGE": native.env, **(env or {})}
        return tool("dev", str(checkout), "--base", native.base, "--native", *args, env=more)

    return run


def edit_unit(checkout: Path, n: int, delta: int) -> None:
    """Add `delta` to what unit `n` returns (its line `+ N * x + VLLM_BIAS`)."""
    f = checkout / "csrc" / f"unit_{n:02d}.cpp"
    f.write_text(f.read_text().replace(f"+ {n} * x + VLLM_BIAS", f"+ {n} * x + VLLM_BIAS + {delta}"))


def compiled(out: dict) -> list[str]:
    """The units the build logged compiling (its log, the native.log path of --json)."""
    return COMPILED.findall(Path(out["native"]["log"]).read_text())


def value(engine, image: str, script: str = VALUE) -> int:
    return int(support.in_image(engine, image, "python3", "-c", script))


def sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def test_one_changed_cpp_recompiles_one_unit_and_ships_only_the_extension_it_changed(
    engine, native, checkout, dev, tool
):
    edit_unit(checkout, 5, 1000)
    first = dev("--json")
    assert first.code == 0, first.err
    out = first.json
    assert out["native"]["built"] is True and out["native"]["env"]["image"] == native.env
    assert value(engine, out["image"]) == native.value + 1000
    got, was = support.inspect(engine, out["image"]), support.inspect(engine, native.base)
    assert got["RootFS"]["Layers"][:-1] == was["RootFS"]["Layers"], "one layer on the base"
    # Exactly the compiled file that differs ships; the other extension stays the base's, byte for byte.
    assert [f["image_path"] for f in out["native"]["files"]] == [C]
    assert out["native"]["same_as_base"] == [MOE]
    assert sha(support.image_file(engine, out["image"], MOE)) == sha(support.image_file(engine, native.base, MOE))
    proof = json.loads(support.image_file(engine, out["image"], "/etc/forkdev/proof.json"))
    assert proof["native"]["env"]["id"] == Engine.image_id(support.inspect(engine, native.env))
    assert proof["native"]["files"] == [
        {"path": "vllm/_C.abi3.so", "image_path": C, "sha256": sha(support.image_file(engine, out["image"], C))}
    ]
    assert [f["path"] for f in proof["files"]] == ["csrc/unit_05.cpp"], "the source ships as in any thin image"

    edit_unit(checkout, 7, 10)
    second = dev("--json")
    assert second.code == 0, second.err
    assert compiled(second.json) == ["unit_07"], "one changed .cpp: one compile"
    assert "native build: 1 compiled" in second.err, "the progress line"
    assert value(engine, second.json["image"]) == native.value + 1010

    ok = tool("verify", second.json["image"], "--repo", str(checkout))
    assert ok.code == 0, ok.err
    assert "1 compiled files as built in" in ok.out

    (checkout / "vllm" / "envs.py").write_text("ENVS = 'a python edit'\n")
    python_only = dev("--json")
    assert python_only.code == 0, python_only.err
    assert python_only.json["native"]["built"] is False and "nothing to compile" in python_only.err
    assert not re.search(r"^\+ \S+ run .*forkdev-native", python_only.err, re.M), "no build container"
    assert value(engine, python_only.json["image"]) == native.value + 1010, "the compiled file ships still"


def test_a_header_change_recompiles_exactly_the_units_that_include_it(engine, native, checkout, dev):
    edit_unit(checkout, 10, 1)
    assert dev().code == 0
    header = checkout / "csrc" / "quant.h"
    header.write_text(header.read_text().replace("return 1;", "return 5;"))
    res = dev("--json")
    assert res.code == 0, res.err
    quant = [f"unit_{n:02d}" for n in range(sandbox.QUANT_UNITS)]
    assert sorted(compiled(res.json)) == quant
    assert value(engine, res.json["image"]) == native.value + 1 + 4 * sandbox.QUANT_UNITS


def test_a_changed_cmakelists_configures_the_build_directory_afresh_and_says_why(engine, native, checkout, dev):
    edit_unit(checkout, 5, 1)
    assert dev().code == 0
    cmake = checkout / "CMakeLists.txt"
    cmake.write_text(cmake.read_text() + "target_compile_definitions(_moe_C PRIVATE VLLM_BIAS=100)\n")
    res = dev("--json")
    assert res.code == 0, res.err
    assert "reconfigure: CMakeLists.txt changed since the last build" in res.err
    assert res.json["native"]["reconfigured"] == "CMakeLists.txt changed"
    log = Path(res.json["native"]["log"]).read_text()
    assert "-- The CXX compiler identification" in log, "a fresh configure detects the compiler again"
    moe = sorted(p.stem for p in (checkout / "csrc" / "moe").glob("*.cpp"))
    assert sorted(compiled(res.json)) == [f"moe/{name}" for name in moe], "_moe_C's units, under the new definition"
    assert {f["image_path"] for f in res.json["native"]["files"]} == {C, MOE}
    assert value(engine, res.json["image"], MOE_VALUE) == native.moe_value + 100 * (len(moe) - 1)


def test_a_compile_error_is_named_with_the_log_and_the_last_good_image_stays(
    engine, native, checkout, dev, tool, cache_dir
):
    edit_unit(checkout, 5, 1000)
    good = dev("--json")
    assert good.code == 0, good.err
    image, image_id, log = good.json["image"], good.json["image_id"], good.json["native"]["log"]
    broken = checkout / "csrc" / "unit_06.cpp"
    broken.write_text(broken.read_text().replace("return static_cast", "return undefined_kernel + static_cast"))
    res = dev()
    support.assert_one_line_error(res, "csrc/unit_06.cpp:22:", "undefined_kernel", "was not declared", log, image)
    assert res.out == ""
    assert support.inspect(engine, image)["Id"].split(":")[-1] == image_id.split(":")[-1], "the last good image"
    assert store.read_json(store.dev_record(cache_dir, checkout.resolve()))["image"] == image, "run's default"
    build = Path(good.json["native"]["workspace"]) / "build"
    assert (build / "CMakeCache.txt").is_file(), "the build directory is kept"

    broken.write_text(broken.read_text().replace("undefined_kernel + ", ""))
    fixed = dev("--json")
    assert fixed.code == 0, fixed.err
    assert compiled(fixed.json) == ["unit_06"], "the kept build directory recompiles the one broken unit"
    assert fixed.json["image"] == image and value(engine, image) == native.value + 1000
    assert tool("verify", image).code == 0


def test_dry_run_changes_nothing_the_cache_included_and_json_is_one_object(engine, checkout, dev, cache_dir):
    edit_unit(checkout, 12, 3)

    def snapshot():
        return sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in cache_dir.rglob("*") if not p.is_symlink()
        )

    before = snapshot()
    res = dev("--dry-run", "--json")
    assert res.code == 0, res.err
    assert res.json["dry_run"] is True and res.json["native"]["built"] is False
    assert len(res.out.splitlines()) == 1
    assert re.search(r"^\+ \S+ run .*forkdev-native.*\[dry-run: not run\]$", res.err, re.M)
    assert snapshot() == before
    # Nothing reaches the engine that would change it (asked by the echo, not by listing the engine's images: other
    # sessions on this machine make images meanwhile).
    changing = re.findall(
        r"^\+ \S+(?:docker|podman) (?:build|load|tag|run|rm|rmi|push|create|image rm)\b.*$", res.err, re.M
    )
    assert changing and all(line.endswith("[dry-run: not run]") for line in changing), changing


def test_a_build_stopped_by_sigterm_or_killed_leaves_no_build_container(engine, native, checkout, dev, start):
    """The build container lives in the one lifecycle (core/container.running): SIGTERM removes it as Ctrl-C does;
    after a kill -9, which no process survives to clean up, the next native build sweeps it by its owner."""
    cmake = checkout / "CMakeLists.txt"
    original = cmake.read_text()
    cmake.write_text(original + "execute_process(COMMAND sleep 600)\n")  # the configure waits: mid-build
    args = ("dev", str(checkout), "--base", native.base, "--native")
    env = {"INVOKE_DEV_NATIVE_IMAGE": native.env}

    def ours(pid: int, *only: str) -> list[str]:
        native_runs = ("--filter", "label=dev.forkdev.run=native", *only)
        listed = support.sh(engine.exe, "ps", "-a", "--format", "{{.Names}}", *native_runs)
        return [n for n in listed.split() if n.startswith(f"forkdev-native-{pid}-")]

    def running(one) -> list[str]:
        return ours(one.proc.pid, "--filter", "status=running")  # started, not only created

    stopped = start(*args, env=env, session=True)
    (name,) = support.wait_for(lambda: running(stopped), "the build container", timeout=180)
    assert stopped.finish(signal.SIGTERM, timeout=120) != 0
    assert ours(stopped.proc.pid) == [], stopped.err[-2000:]
    assert f"rm --force -- {name}" in stopped.err and "Traceback" not in stopped.err

    killed = start(*args, env=env, session=True)
    (orphan,) = support.wait_for(lambda: running(killed), "the build container", timeout=180)
    killed.kill_group()
    assert ours(killed.proc.pid) == [orphan], "a build killed with -9 leaves its container running"
    cmake.write_text(original)
    edit_unit(checkout, 5, 2)  # a native change: the next run compiles, and sweeps first
    res = dev("--json")
    assert res.code == 0, res.err
    assert f"removing {orphan}, left by a run that was killed" in res.err, res.err
    assert ours(killed.proc.pid) == []
    assert value(engine, res.json["image"]) == native.value + 2


def test_with_no_native_image_the_targets_build_stage_at_the_bases_commit_is_built_once_and_compiles(
    engine, native, checkout, dev, tmp_path
):
    """vLLM's profile compiles in its Dockerfile's `base` stage: with no dev.native_image that stage is built from
    the base's commit with the base's build args, once, and found again by name. Each stage is GBs in vLLM's
    case, so building one leaves only the newest two of them; no other tag is touched."""
    no_image = {"INVOKE_DEV_NATIVE_IMAGE": ""}
    planted = [f"forkdev-test/vllm-dev:native-{i:012x}-{i:012x}" for i in (1, 2, 3)]  # older stages, oldest first
    context = tmp_path / "planted"
    context.mkdir()
    for i, ref in enumerate([*planted, "forkdev-test/vllm-dev:native-mine"]):
        (context / "Dockerfile").write_text(f"FROM {native.env}\nLABEL planted={i}\n")
        support.sh(engine.exe, "build", "-q", "-t", ref, context)
    edit_unit(checkout, 3, 7)
    first = dev("--json", env=no_image)
    assert first.code == 0, first.err
    env = first.json["native"]["env"]
    for gone in planted[:2]:
        assert f"removed the build environment {gone}: older than the newest 2" in first.err
        assert engine_has(engine, gone) is False
    assert engine_has(engine, planted[2]) and engine_has(engine, "forkdev-test/vllm-dev:native-mine")
    support.sh(engine.exe, "image", "rm", planted[2], "forkdev-test/vllm-dev:native-mine")
    assert env["image"].startswith(f"forkdev-test/vllm-dev:native-{native.commit[:12]}-"), env
    assert "building the build environment: the 'base' stage of docker/Dockerfile at the base's commit" in first.err
    assert re.search(r"^\+ \S+ build .*--target base .*--build-arg max_jobs=\d+", first.err, re.M)
    stage = support.inspect(engine, env["image"])
    assert Engine.labels(stage)["org.opencontainers.image.revision"] == native.commit
    assert Engine.image_id(stage) == env["id"]
    assert support.in_image(engine, env["image"], "cat", "/tmp/stage").startswith("base stage, max_jobs=")
    assert value(engine, first.json["image"]) == native.value + 7

    edit_unit(checkout, 4, 1)
    again = dev("--json", env=no_image)
    assert again.code == 0, again.err
    assert "building the build environment" not in again.err and again.json["native"]["env"] == env
    assert compiled(again.json) == ["unit_04"] and value(engine, again.json["image"]) == native.value + 8


def test_config_dev_native_build_compiles_without_the_flag_and_no_native_refuses(engine, native, checkout, tool):
    edit_unit(checkout, 2, 5)
    env = {"INVOKE_DEV_NATIVE": "build", "INVOKE_DEV_NATIVE_IMAGE": native.env}
    built = tool("dev", str(checkout), "--base", native.base, "--json", env=env)
    assert built.code == 0, built.err
    assert built.json["native"] is not None and value(engine, built.json["image"]) == native.value + 5
    refused = tool("dev", str(checkout), "--base", native.base, "--no-native", env=env)
    support.assert_one_line_error(refused, "native sources changed", "csrc/unit_02.cpp", "pass --native")


def test_mlc_llms_cmake_build_compiles_a_cpp_edit_into_the_library_its_package_loads(
    engine, wheel_image, cache_dir, tool, tmp_path
):
    """MLC-LLM's profile compiles with cmake (its root CMakeLists.txt; libmlc_llm*.so copied into python/mlc_llm/),
    in the wheel image, as it names no Dockerfile stage."""
    greet = "import mlc_llm; print(mlc_llm.greet())"
    library = "/opt/mlc-source/python/mlc_llm/libmlc_llm.so"
    up = tmp_path / "mlc-upstream"
    commit = support.make_cmake_package(up)
    base = support.build_native_base(
        engine, wheel_image, up, commit, support.own(f"forkdev-test/mlc-native-base:{engine.kind}"),
        store.native_ccache(cache_dir, "mlc-llm"), command=config.TARGETS["mlc-llm"].native_build,
        source="/opt/mlc-source", python="python",
    )  # fmt: skip
    assert support.in_image(engine, base, "python3", "-c", greet).strip() == "hello"
    checkout = tmp_path / "mlc"
    support.sh("git", "clone", "-q", up, checkout)
    c = checkout / "cpp" / "greet.c"
    c.write_text(c.read_text().replace("override : GREETING;", 'override : "edited";'))
    res = tool(
        "dev", str(checkout), "--target", "mlc-llm", "--base", base, "--native", "--json", env=support.wheel_env(engine)
    )
    assert res.code == 0, res.err
    assert res.json["native"]["env"]["image"] == wheel_image
    assert [f["image_path"] for f in res.json["native"]["files"]] == [library]
    assert support.in_image(engine, res.json["image"], "python3", "-c", greet).strip() == "edited"
    verified = tool("verify", res.json["image"], "--repo", str(checkout))
    assert verified.code == 0, verified.err


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--native", "--force"], {}, ["--native and --force contradict"]),
        (["--native", "--ref", "HEAD"], {}, ["--native builds the working tree", "--ref HEAD"]),
        ([], {"INVOKE_DEV_NATIVE": "sometimes"}, ["dev.native (INVOKE_DEV_NATIVE) is 'sometimes'", "refuse", "build"]),
        (["--native", "--target", "sglang"], {}, ["target sglang says nothing of how", "native_build"]),
    ],
)
def test_bad_native_requests_are_one_line_before_the_engine_is_asked(invoke, tmp_path, args, env, words):
    repo = tmp_path / "vllm"
    support.make_native_upstream(repo, units=1, moe_units=1)
    res = invoke("dev", str(repo), *args, env=env)
    support.assert_one_line_error(res, *words)
    assert not re.search(r"^\+ \S*(docker|podman) ", res.err, re.M)


def test_a_live_sync_with_native_rebuilds_a_saved_kernel_and_restarts_the_server(engine, native, checkout, start):
    server = "import time, vllm._C as c; print('value', c.value(), flush=True); time.sleep(600)"
    args = ("run", "--repo", str(checkout), "--image", native.base, "--sync", "--native", "--restart", "time.sleep")
    sync = start(*args, "--", "python3", "-c", server, env={"INVOKE_DEV_NATIVE_IMAGE": native.env})
    support.wait_for(lambda: "Ctrl-C to leave" in sync.err, "the sync to be ready", timeout=120)
    name = sync.name("sync")

    def logs() -> str:
        return subprocess.run([engine.exe, "logs", name], capture_output=True, text=True).stdout

    assert f"value {native.value}" in support.wait_for(logs, "the server")
    edit_unit(checkout, 5, 1000)
    support.wait_for(lambda: f"value {native.value + 1000}" in logs(), "the rebuilt kernel, restarted", timeout=120)
    broken = checkout / "csrc" / "unit_06.cpp"
    broken.write_text(broken.read_text().replace("return static_cast", "return undefined_kernel + static_cast"))
    support.wait_for(lambda: "not synced: native build failed: csrc/unit_06.cpp:" in sync.err, "the error", 120)
    assert f"{name} runs on with what it had" in sync.err
    assert sync.finish() == 0, sync.err[-2000:]


def engine_has(engine, ref: str) -> bool:
    return subprocess.run([engine.exe, "image", "inspect", ref], capture_output=True).returncode == 0
