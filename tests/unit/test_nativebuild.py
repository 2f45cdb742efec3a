"""`invoke dev --native`'s pure parts (forkdev/core/nativebuild.py): the workspace's sync, the fresh-configure
decision, what the build's output says, and the values a profile gives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkdev.core import cache as store
from forkdev.core import config, nativebuild
from forkdev.core.errors import Failure


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_sync_writes_only_what_changed_so_the_rest_keeps_the_mtime_ninja_compares(tmp_path):
    checkout, dest = tmp_path / "checkout", tmp_path / "src"
    write(checkout, {"csrc/a.cpp": "a", "csrc/b.cpp": "b", "setup.py": "s"})
    dest.mkdir()
    recorded: dict = {}
    files = ("csrc/a.cpp", "csrc/b.cpp", "setup.py")
    assert nativebuild._sync(checkout, files, dest, recorded) == 3
    (dest / "build.so").write_text("made by the build")  # not the checkout's: never touched
    old = 1_000_000_000
    for rel in files:
        os.utime(dest / rel, ns=(old, old))
    (checkout / "csrc" / "a.cpp").write_text("A")
    os.utime(checkout / "csrc" / "b.cpp")  # touched, same bytes: not written
    assert nativebuild._sync(checkout, files, dest, recorded) == 1
    assert (dest / "csrc" / "a.cpp").read_text() == "A" and (dest / "csrc" / "a.cpp").stat().st_mtime_ns > old
    assert (dest / "csrc" / "b.cpp").stat().st_mtime_ns == old
    (checkout / "setup.py").unlink()
    assert nativebuild._sync(checkout, files[:2], dest, recorded) == 1
    assert not (dest / "setup.py").exists() and (dest / "build.so").exists()
    assert set(recorded) == {"csrc/a.cpp", "csrc/b.cpp"}


def test_sync_never_writes_through_a_link_it_made_and_a_dry_run_writes_nothing(tmp_path):
    checkout, dest, outside = tmp_path / "checkout", tmp_path / "src", tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (checkout / "csrc").mkdir(parents=True)
    os.symlink(outside, checkout / "csrc" / "kernels")  # a link in the checkout: synced as a link
    recorded: dict = {}
    nativebuild._sync(checkout, ("csrc/kernels",), dest, recorded)
    assert os.readlink(dest / "csrc" / "kernels") == str(outside)
    (checkout / "csrc" / "kernels").unlink()
    write(checkout, {"csrc/kernels/k.cpp": "k"})  # now a directory of files where the link was
    assert nativebuild._sync(checkout, ("csrc/kernels/k.cpp",), dest, dict(recorded), dry=True) == 2
    assert os.path.islink(dest / "csrc" / "kernels"), "a dry run changed nothing"
    nativebuild._sync(checkout, ("csrc/kernels/k.cpp",), dest, recorded)
    assert (dest / "csrc" / "kernels" / "k.cpp").read_text() == "k" and list(outside.iterdir()) == []


def test_a_fresh_configure_is_asked_only_when_the_build_system_changed_since_a_configured_build(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    state = {"configure": {"CMakeLists.txt": "1", "cmake/x.cmake": "2"}}
    assert nativebuild._reconfigure(state, {"CMakeLists.txt": "9"}, build, []) is None, "nothing configured yet"
    (build / "CMakeCache.txt").write_text("")
    (build / "ext").mkdir()
    (build / "ext" / "CMakeCache.txt").write_text("")
    assert nativebuild._reconfigure(state, dict(state["configure"]), build, []) is None
    changed = {"CMakeLists.txt": "9", "requirements/cuda.txt": "3"}
    assert nativebuild._reconfigure(state, changed, build, []) == (
        "CMakeLists.txt, cmake/x.cmake, requirements/cuda.txt changed"
    )
    moved = {**state, "settings": [["python3", "setup.py"], [], {}]}
    assert nativebuild._reconfigure(moved, dict(state["configure"]), build, [["python3", "setup.py"], [], {"A": "1"}])
    assert nativebuild._fresh_configure(build) == 2 and not list(build.rglob("CMakeCache.txt"))


def test_the_rebuild_command_runs_only_in_a_directory_configured_as_this_build_is(tmp_path):
    spec = nativebuild.Spec("env", None, ("python3", "setup.py"), ("cmake", "--build", "{build}"), ("x/*.so",), (), 1)
    ws = nativebuild.Workspace.at(tmp_path / "ws", tmp_path / "ccache")
    ws.build.mkdir(parents=True)
    assert nativebuild._how({}, {}, ws, spec) == (None, spec.command), "a first build configures"
    built = {"status": "built", "configure": {"CMakeLists.txt": "1"}, "settings": nativebuild._settings(spec)}
    assert nativebuild._how(built, {"CMakeLists.txt": "1"}, ws, spec) == (None, spec.command), "no cache: configure"
    (ws.build / "CMakeCache.txt").write_text("")
    assert nativebuild._how(built, {"CMakeLists.txt": "1"}, ws, spec) == (None, spec.rebuild)
    assert nativebuild._how(built, {"CMakeLists.txt": "2"}, ws, spec) == ("CMakeLists.txt changed", spec.command)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("../src/csrc/unit_09.cpp:18:10: error: 'x' undeclared", "csrc/unit_09.cpp:18:10: error: 'x' undeclared"),
        ("/work/src/csrc/ops.h:3:1: fatal error: quant.h: missing", "csrc/ops.h:3:1: error: quant.h: missing"),
        ("/work/src/csrc/attention.cu(120): error: identifier y", "csrc/attention.cu:120: error: identifier y"),
        ("csrc/a.cpp:7: error: expected ';'", "csrc/a.cpp:7: error: expected ';'"),
        ("In file included from /work/src/csrc/ops.h:2:", None),
        ("ninja: build stopped: subcommand failed.", None),
    ],
)  # fmt: skip
def test_the_first_compiler_error_is_named_as_a_path_of_the_tree(line, error):
    assert nativebuild._compiler_error(line) == error


def test_progress_counts_compiles_from_ninjas_steps_and_keeps_the_first_error():
    progress = nativebuild.Progress()
    for line in [
        "-- Configuring done (0.1s)",
        "[1/3] Building CXX object CMakeFiles/_C.dir/csrc/unit_05.cpp.o",
        "FAILED: CMakeFiles/_C.dir/csrc/unit_06.cpp.o",
        "/work/src/csrc/unit_06.cpp:22:10: error: 'k' was not declared in this scope",
        "/work/src/csrc/unit_07.cpp:1:1: error: a later one",
        "[2/3] Building CUDA object CMakeFiles/_C.dir/csrc/attention.cu.o",
        "[3/3] Linking CXX shared module _C.abi3.so",
    ]:
        progress.see(line)
    assert progress.compiled == 2 and progress.step == "3/3"
    assert progress.first_error == "csrc/unit_06.cpp:22:10: error: 'k' was not declared in this scope"
    make = nativebuild.Progress()
    make.see("[ 50%] Building CXX object CMakeFiles/_C.dir/csrc/unit_05.cpp.o")
    make.see("[100%] Linking CXX shared module _C.abi3.so")
    assert (make.compiled, make.step) == (1, "100/100")
    cmake = nativebuild.Progress()
    cmake.see("CMake Error at CMakeLists.txt:7 (project):")
    assert cmake.first_error == "CMake Error at CMakeLists.txt:7 (project):"


@pytest.mark.parametrize("pattern", ["../x/*.so", "/usr/lib/*.so", "", "vllm/../../etc"])
def test_output_globs_stay_inside_the_tree(pattern):
    with pytest.raises(Failure, match="not a glob of repository paths"):
        nativebuild.check_globs((pattern,), "targets.x.native_outputs")
    assert nativebuild.check_globs(("vllm/**/*.so",), "x") == ("vllm/**/*.so",)


def test_profiles_say_how_their_native_part_is_built_and_a_fork_changes_it_from_config():
    vllm = config.target("vllm")
    assert vllm.native_build[:3] == ("python3", "setup.py", "build_ext") and "{build}" in vllm.native_build
    assert vllm.native_outputs == ("vllm/**/*.so",) and "requirements/" in vllm.native_configure
    assert vllm.native_stage == "base"
    assert config.target("sglang").native_build == ()
    fork = config.target("vllm", {"vllm": {"native_build": ["make", "-j", "{jobs}"], "native_image": "me/env:1"}})
    assert fork.native_build == ("make", "-j", "{jobs}") and fork.native_image == "me/env:1"
    with pytest.raises(Failure, match="native_outputs must be a list of strings"):
        config.target("vllm", {"vllm": {"native_outputs": "vllm/*.so"}})


def test_a_workspace_is_one_per_target_base_and_build_environment_and_stays_in_the_cache(tmp_path):
    one = store.native_workspace(tmp_path, "vllm", "sha256:" + "a" * 64, "sha256:" + "b" * 64)
    assert one == tmp_path / "native" / "vllm" / f"{'a' * 16}-{'b' * 16}"
    assert store.native_workspace(tmp_path, "vllm", "sha256:" + "a" * 64, "sha256:" + "c" * 64) != one
    assert store.native_ccache(tmp_path, "vllm") == tmp_path / "native" / "vllm" / "ccache"
    assert store.native_ccache(tmp_path, "..") == tmp_path / "native" / "target" / "ccache", "never above native/"


def test_compiled_files_reached_through_a_link_the_build_left_are_never_taken(tmp_path):
    """The build runs the checkout's own build system: a link it leaves (to a file, or a linked folder on the way)
    may point out of the workspace, and the host must never read what it points to into a layer."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "vllm" / "ops").mkdir(parents=True)
    outside.mkdir()
    (outside / "_secret.so").write_bytes(b"host bytes")
    (src / "vllm" / "_C.abi3.so").write_bytes(b"\x7fELF compiled")
    (src / "vllm" / "_link.so").symlink_to(outside / "_secret.so")
    (src / "vllm" / "ops" / "kernels").symlink_to(outside, target_is_directory=True)
    found = nativebuild._outputs(src, ("vllm/**/*.so", "vllm/ops/kernels/*.so"), set())
    assert sorted(found) == ["vllm/_C.abi3.so"]


def test_a_targets_workspaces_beyond_the_newest_two_are_removed_but_never_one_in_use_or_a_link(tmp_path):
    target = tmp_path / "native" / "vllm"
    names = [f"{i:016x}-{'e' * 16}" for i in range(5)]
    for age, name in enumerate(names):  # names[0] was built last, names[4] first
        (target / name / "build").mkdir(parents=True)
        (target / name / "state.json").write_text("{}")
        os.utime(target / name / "state.json", (1e9 - age * 1000, 1e9 - age * 1000))
    current = target / f"{'c' * 16}-{'e' * 16}"
    (current / "build").mkdir(parents=True)
    victim = tmp_path / "theirs"
    victim.mkdir()
    (victim / "keep.txt").write_text("not the tool's\n")
    (target / f"{'a' * 16}-{'f' * 16}").symlink_to(victim)  # named as a workspace, but a link
    (target / "ccache").mkdir()
    (target / f".{'b' * 16}-{'e' * 16}.removing-1").mkdir()  # what a killed prune left
    holder = subprocess.Popen(  # another build holds the lock of the oldest workspace
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            str(target / names[4] / "lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        gone = nativebuild.prune_workspaces(current, 2)
    finally:
        holder.stdin.close()
        holder.wait()
    assert sorted(p.name for p in gone) == sorted(names[1:4])
    left = sorted(p.name for p in target.iterdir())
    assert left == sorted([current.name, names[0], names[4], f"{'a' * 16}-{'f' * 16}", "ccache"])
    assert (victim / "keep.txt").read_text() == "not the tool's\n"
