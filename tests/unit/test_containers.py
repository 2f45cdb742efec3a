"""How containers are started, as data: GPU arguments per engine and host, the run argv, secrets files."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forkdev.core import container, envfiles, gpu, owners
from forkdev.core.errors import Failure


def host_tree(root: Path, *, driver=False, cdi=False, wsl=False, gpus=0) -> Path:
    """A prepared host: the files the GPU detection reads, and nothing else."""
    if driver:
        (root / "proc/driver/nvidia/gpus").mkdir(parents=True)
        (root / "proc/driver/nvidia/version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54\n")
        for i in range(gpus):
            (root / f"proc/driver/nvidia/gpus/0000:0{i}:00.0").mkdir()
    if cdi:
        (root / "etc/cdi").mkdir(parents=True)
        (root / "etc/cdi/nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    if wsl:
        (root / "dev").mkdir(parents=True)
        (root / "dev/dxg").write_text("")
        (root / "usr/lib/wsl/lib").mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize(
    ("kind", "host", "request_", "argv"),
    [
        ("docker", {"driver": True, "gpus": 2}, "auto", ["--gpus", "all"]),
        ("docker", {"driver": True, "gpus": 2}, 1, ["--gpus", "1"]),
        ("podman", {"driver": True, "cdi": True, "gpus": 2}, "all", ["--device", "nvidia.com/gpu=all"]),
        (
            "podman",
            {"driver": True, "cdi": True, "gpus": 2},
            2,
            ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"],
        ),
        (
            "podman",
            {"wsl": True},
            "auto",
            ["--device", "/dev/dxg", "-v", "/usr/lib/wsl:/usr/lib/wsl:ro", "-e", "LD_LIBRARY_PATH=/usr/lib/wsl/lib"],
        ),
        ("docker", {}, "auto", []),
        ("docker", {"driver": True}, "none", []),
    ],
)
def test_gpu_arguments_per_engine_and_host_kind(tmp_path, kind, host, request_, argv):
    found = gpu.host(host_tree(tmp_path / "root", **host))
    assert gpu.args(kind, found, request_)[0] == argv


@pytest.mark.parametrize(
    ("kind", "host", "request_", "words"),
    [
        ("docker", {}, "all", "no NVIDIA driver"),
        ("podman", {}, 1, "no NVIDIA driver"),
        ("podman", {"driver": True}, "all", "nvidia-ctk cdi generate"),
        ("docker", {"driver": True, "gpus": 1}, 4, "has 1 GPU"),
    ],
)
def test_asking_for_gpus_the_host_cannot_give_names_the_missing_piece(tmp_path, kind, host, request_, words):
    found = gpu.host(host_tree(tmp_path / "root", **host))
    with pytest.raises(Failure, match=words):
        gpu.args(kind, found, request_)


@pytest.mark.parametrize("value", ["two", "-1", "0", "all gpus", "", "²", "٣"])
def test_a_gpu_request_is_auto_none_all_or_a_count(value):
    with pytest.raises(Failure, match="--gpu"):
        gpu.parse_request(value)


def test_the_run_argv_mounts_the_private_directory_and_runs_the_images_command_after_the_prologue(tmp_path):
    spec = container.Spec(
        image="me/img:1",
        command=["python3", "-m", "server", "--port", "8000"],
        name="forkdev-run-1",
        network="none",
        ports=[8000],
        mounts=[("/src", "/workspace", "rw")],
        private=tmp_path,
        loop=True,
    )
    argv = container.argv("docker", spec)
    assert argv[:2] == ["docker", "run"] and "--rm" in argv and "--ipc=host" in argv
    assert argv[argv.index("--publish") : argv.index("--publish") + 2] == ["--publish", "8000:8000"]
    assert f"type=bind,source={tmp_path},target=/run/forkdev,readonly" in argv
    assert "type=bind,source=/src,target=/workspace" in argv
    tail = argv[argv.index("--entrypoint") :]
    assert tail == [
        "--entrypoint",
        "/bin/sh",
        "--",
        "me/img:1",
        "/run/forkdev/init",
        "",
        "loop",
        "python3",
        "-m",
        "server",
        "--port",
        "8000",
    ]
    host = container.argv("docker", container.Spec(image="i", command=["x"], name="n", network="host", ports=[80]))
    assert "--publish" not in host, "host networking binds the host's ports: nothing to publish"


@pytest.mark.parametrize(
    ("kind", "selinux", "path", "expected"),
    [
        ("docker", False, "/home/me/vllm:v2", ["--mount", "type=bind,source=/home/me/vllm:v2,target=/w,readonly"]),
        ("podman", False, '/a,b"c', ["--mount", 'type=bind,"source=/a,b""c",target=/w,readonly']),
        ("podman", True, "/a:b", ["--mount", "type=bind,source=/a:b,target=/w,readonly,relabel=shared"]),
        ("docker", True, "/src", ["--volume", "/src:/w:ro,z"]),  # docker's --mount cannot relabel
    ],
)
def test_a_mount_is_one_field_per_value_whatever_the_path_holds(kind, selinux, path, expected):
    assert container.mount(path, "/w", read_only=True, kind=kind, selinux=selinux) == expected


@pytest.mark.parametrize(
    ("kind", "selinux", "path", "words"),
    [
        ("docker", True, "/home/me/vllm:v2", "cannot mount '/home/me/vllm:v2' with docker on SELinux"),
        ("podman", False, "/a\nb", "cannot mount '/a\\nb': the path holds a line break or NUL"),
    ],
)
def test_a_path_no_mount_can_hold_is_named(kind, selinux, path, words):
    with pytest.raises(Failure, match=re.escape(words)):
        container.mount(path, "/w", read_only=False, kind=kind, selinux=selinux)


def test_the_prologue_has_no_variable_a_users_variable_could_change(tmp_path):
    """The variables file may set into, mode, PATH, IFS: the prologue neither copies an overlay nor loops for it,
    and the command gets them, with its own exit code."""
    script = container.PROLOGUE.replace(container.ENV_IN, str(tmp_path / "env"))
    (tmp_path / "env").write_text(envfiles.script(envfiles.explicit(["into=/tmp", "mode=loop", "PATH=/nowhere"])))
    probe = 'echo "$into $mode $PATH"; exit 3'
    argv = ["sh", "-c", script, "init", "", "exec", "/bin/sh", "-c", probe]
    res = subprocess.run(argv, capture_output=True, timeout=10)
    assert (res.returncode, res.stdout) == (3, b"/tmp loop /nowhere\n"), res.stderr
    # and in loop mode it restarts the command (with `sleep` found before the user's PATH replaced it)
    count = tmp_path / "count"
    loop = subprocess.Popen(["sh", "-c", script, "init", "", "loop", "/bin/sh", "-c", f"echo >> {count}"])
    time.sleep(1.0)
    loop.terminate()
    assert loop.wait(10) == 0 and count.read_text().count("\n") >= 2


def test_secrets_files_are_key_value_lines_and_a_bad_line_is_named(tmp_path):
    good = envfiles.parse("# tokens\n\nHF_TOKEN=abc=def\n  export OTHER= x y \nEMPTY=\n", "s.env")
    assert [(v.key, v.value) for v in good] == [("HF_TOKEN", "abc=def"), ("OTHER", " x y "), ("EMPTY", "")]
    for text, line in [("HF TOKEN=x\n", 1), ("\nnot a line\n", 2), ("1KEY=x\n", 1), ("=x\n", 1), ("K =x\n", 1)]:
        with pytest.raises(Failure, match=rf"s.env:{line}: not a NAME=value line"):
            envfiles.parse(text, "s.env")


def test_the_variables_script_is_literal_in_the_shell_and_later_values_win(tmp_path):
    tricky = "$(touch /tmp/forkdev-pwned) `id` 'q' \"d\" $HOME \\"
    text = envfiles.script(
        [envfiles.Var("A", "file", "f:1"), envfiles.Var("B", tricky, "f:2"), envfiles.Var("A", "flag", "--env")]
    )
    out = subprocess.run(["sh", "-c", f'{text}\nprintf \'%s|%s\' "$A" "$B"'], capture_output=True, text=True)
    assert out.stdout == f"flag|{tricky}"
    assert not Path("/tmp/forkdev-pwned").exists()
    assert shlex.split(text.splitlines()[0]) == ["export", "A=flag"]


HOLD = """
import sys, time
from pathlib import Path
from forkdev.core import owners
claim = owners.Claim(Path(sys.argv[1]), None, None)
print(claim.folder, flush=True)
time.sleep(600)
"""


def test_a_claim_is_swept_only_once_no_process_holds_its_lock(tmp_path):
    """Not a pid guess (tests/integration/test_run.py has an owner in another PID namespace): a live owner holds
    its flock, and kill -9 drops it."""
    cache = tmp_path / "cache"
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(cache)], stdout=subprocess.PIPE, text=True)
    try:
        held = Path(owner.stdout.readline().strip())
        assert held.parent == owners.folder(cache)
        (owners.folder(cache) / "half-made").mkdir()  # a claim killed before it locked
        with owners.unheld(cache) as dead:
            assert dead == [owners.folder(cache) / "half-made"], "the live owner's claim is not among them"
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with owners.unheld(cache) as dead:
            if held in dead:
                break
        time.sleep(0.05)
    assert held in dead, "a killed owner's lock is free"
