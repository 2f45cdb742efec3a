"""How containers are started, as data: GPU arguments per engine and host, the run argv, secrets files."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from forkdev.core import container, envfiles, gpu
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


@pytest.mark.parametrize("value", ["two", "-1", "0", "all gpus", ""])
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
        selinux=True,
        loop=True,
    )
    argv = container.argv("docker", spec)
    assert argv[:2] == ["docker", "run"] and "--rm" in argv and "--ipc=host" in argv
    assert argv[argv.index("--publish") : argv.index("--publish") + 2] == ["--publish", "8000:8000"]
    assert f"{tmp_path}:/run/forkdev:ro,z" in argv and "/src:/workspace:rw,z" in argv
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


def test_secrets_files_are_key_value_lines_and_a_bad_line_is_named(tmp_path):
    good = envfiles.parse("# tokens\n\nHF_TOKEN=abc=def\n  export OTHER= x y \nEMPTY=\n", "s.env")
    assert [(v.key, v.value) for v in good] == [("HF_TOKEN", "abc=def"), ("OTHER", " x y "), ("EMPTY", "")]
    for text, line in [("HF TOKEN=x\n", 1), ("\nnot a line\n", 2), ("1KEY=x\n", 1), ("=x\n", 1), ("K =x\n", 1)]:
        with pytest.raises(Failure, match=rf"s.env:{line}: not a KEY=VALUE line"):
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


def test_only_forkdev_containers_of_dead_processes_are_orphans():
    names = ["forkdev-sync-100", "forkdev-run-200", "forkdev-shell-x", "mine-300", "forkdev-sync-", "forkdev-run-400"]
    assert container.orphans(names, lambda pid: pid == 200) == ["forkdev-sync-100", "forkdev-run-400"]
