"""`invoke run`, `shell`, `gpu-check`, `devcontainer` and live sync on the real engines, with real secrets files.

The secrets scan: no secret value may appear in the tasks' stdout or stderr, in a running container's `inspect`
output, or in any image the run leaves (it builds none)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import support

pytestmark = pytest.mark.engine
SECRET = "s3cr3t-hf-7c1d5e"  # never to be seen outside the container
PRINT = (
    'import hashlib, os; print(hashlib.sha256(os.environ["HF_TOKEN"].encode()).hexdigest()[:12], os.environ["MODE"])'
)


def digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.fixture
def checkout(fork):
    secrets = fork / "extras" / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "hf.env").write_text(f"# the token\nHF_TOKEN={SECRET}\nMODE=from-file\n")
    (secrets / "hf.env.example").write_text("HF_TOKEN=example\nMODE=example\n")
    (fork / ".git" / "info" / "exclude").write_text("extras/secrets/*.env\n")
    return fork


def running(engine) -> list[str]:
    out = support.sh(engine.exe, "ps", "-a", "--filter", "label=dev.forkdev.run", "--format", "{{.Names}}")
    return [n for n in out.split() if n]


def test_run_passes_secrets_explicit_variables_win_and_the_exit_code_comes_back(engine, world, checkout, tool):
    args = ("run", "--repo", str(checkout), "--image", world.editable)
    res = tool(*args, "--", "python3", "-c", PRINT)
    assert res.code == 0, res.err
    assert res.out.split() == [digest(SECRET), "from-file"], "the file's values, never the example's"
    assert SECRET not in res.out + res.err
    override = tool(*args, "--env", "MODE=explicit", "--", "python3", "-c", PRINT)
    assert override.out.split() == [digest(SECRET), "explicit"]
    failed = tool(*args, "--", "sh", "-c", "exit 7")
    assert failed.code == 7 and "Traceback" not in failed.err
    assert running(engine) == [], "no container left behind"


def test_a_running_containers_inspect_output_holds_no_secret(engine, world, checkout, invoke):
    proc = subprocess.Popen(
        support.invoke_argv("run", "--repo", str(checkout), "--image", world.editable, "--", "sleep", "30"),
        env={**os.environ, "INVOKE_ENGINE_NAME": engine.kind},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=support.ROOT,
    )
    try:
        for _ in range(100):
            names = running(engine)
            if names:
                break
            time.sleep(0.1)
        assert names, "the container started"
        inspected = support.sh(engine.exe, "inspect", names[0])
        assert SECRET not in inspected and "HF_TOKEN" not in inspected
        assert "/run/forkdev" in inspected
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        subprocess.run([engine.exe, "rm", "-f", *running(engine)], capture_output=True)
    assert SECRET not in out + err


def test_shell_runs_a_command_with_the_checkout_at_workspace(engine, world, checkout, tool):
    res = tool(
        "shell",
        "--repo",
        str(checkout),
        "--image",
        world.user,
        "--command",
        'cat /workspace/vllm/envs.py | head -c 14; echo; echo "$MODE"; id -u',
    )
    assert res.code == 0, res.err
    assert res.out.splitlines() == ["# vllm/envs.py", "from-file", "1000"], "the image's own user, the secrets"


def test_the_overlay_goes_in_before_the_command(engine, world, checkout, tool, tmp_path):
    defs = tmp_path / "overlay.txt"
    defs.write_text("vllm/envs.py :: transform=header:OVERLAID = 'yes'\n")
    dest = tmp_path / "ov"
    made = tool("overlay", "--repo", str(checkout), "--definitions", str(defs), "--dest", str(dest))
    assert made.code == 0, made.err
    res = tool(
        "run",
        "--repo",
        str(checkout),
        "--image",
        world.editable,
        "--overlay",
        "--",
        "python3",
        "-c",
        "import vllm.envs as e; print(e.OVERLAID)",
        env={"INVOKE_OVERLAY_DEST": str(dest)},
    )
    assert res.code == 0, res.err
    assert res.out.strip() == "yes"
    plain = tool(
        "run",
        "--repo",
        str(checkout),
        "--image",
        world.editable,
        "--",
        "python3",
        "-c",
        "import vllm.envs as e; print(hasattr(e, 'OVERLAID'))",
    )
    assert plain.out.strip() == "False", "without --overlay the image is as it was"


def test_the_image_defaults_to_the_last_dev_image_of_the_checkout(engine, world, checkout, tool):
    (checkout / "vllm" / "envs.py").write_text("WHICH = 'the last dev image'\n")
    built = tool("dev", str(checkout), "--base", world.editable, "--quiet")
    assert built.code == 0, built.err
    res = tool("run", "--repo", str(checkout), "--", "python3", "-c", "import vllm.envs as e; print(e.WHICH)")
    assert res.code == 0 and res.out.strip() == "the last dev image", res.err


@pytest.mark.parametrize(
    ("setup", "args", "words"),
    [
        ("tracked", [], "is tracked by git"),
        ("malformed", [], "hf.env:2: not a KEY=VALUE line"),
        (None, ["--image", "forkdev-test/no-such:image"], "no image 'forkdev-test/no-such:image'"),
        (None, ["--gpu", "all"], "no NVIDIA driver"),
        (None, ["--gpu", "seven"], "--gpu 'seven'"),
        (None, ["--env", "1BAD=x"], "not a variable name"),
        (None, ["--port", "99999"], "not a port number"),
        (None, ["--restart", "server"], "use it with --sync"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_container(engine, world, checkout, tool, setup, args, words):
    if setup == "tracked":
        support.git(checkout, "add", "-f", "extras/secrets/hf.env")
    if setup == "malformed":
        (checkout / "extras" / "secrets" / "hf.env").write_text("HF_TOKEN=x\nthis is not a variable\n")
    image = [] if "--image" in args else ["--image", world.editable]
    res = tool("run", "--repo", str(checkout), *image, *args, "--", "true")
    assert res.code != 0 and "Traceback" not in res.err
    assert words in res.err.splitlines()[-1], res.err.splitlines()[-1]
    assert running(engine) == []


def test_a_port_in_use_is_named(world, checkout, tool):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        res = tool("run", "--repo", str(checkout), "--image", world.editable, "--port", str(port), "--", "true")
    assert res.code != 0 and f"port {port} is in use" in res.err.splitlines()[-1]


def test_gpu_check_fails_here_naming_the_missing_driver(invoke, engine, tmp_path):
    res = invoke("gpu-check", env={"INVOKE_ENGINE_NAME": engine.kind})
    assert res.code != 0 and "no NVIDIA driver" in res.err.splitlines()[-1]
    fake = tmp_path / "host"
    (fake / "proc/driver/nvidia").mkdir(parents=True)
    (fake / "proc/driver/nvidia/version").write_text("NVRM version: 550.54\n")
    (fake / "etc/cdi").mkdir(parents=True)
    (fake / "etc/cdi/nvidia.yaml").write_text("kind: nvidia.com/gpu\n")
    seen = invoke("gpu-check", "--json", env={"INVOKE_ENGINE_NAME": engine.kind, "INVOKE_RUN_GPU_ROOT": str(fake)})
    assert seen.code == 0, seen.err
    assert json.loads(seen.out)["driver"] == "NVRM version: 550.54"


def test_devcontainer_names_the_image_and_updates_in_place(engine, world, checkout, tool):
    target = checkout / ".devcontainer" / "devcontainer.json"
    target.parent.mkdir()
    target.write_text(json.dumps({"customizations": {"vscode": {"extensions": ["ms-python.python"]}}}))
    for _ in range(2):
        res = tool("devcontainer", "--repo", str(checkout), "--image", world.editable, "--port", "8000")
        assert res.code == 0, res.err
    doc = json.loads(target.read_text())
    assert doc["image"] == world.editable and doc["forwardPorts"] == [8000]
    assert doc["customizations"]["vscode"]["extensions"] == ["ms-python.python"], "the user's keys stay"
    assert "--env-file" in doc["runArgs"] and "${localWorkspaceFolder}/extras/secrets/hf.env" in doc["runArgs"]
    assert SECRET not in target.read_text()


def wait_for(check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_live_sync_brings_edits_additions_and_deletions_in_and_restarts_the_server(engine, world, checkout, tool):
    server = "import time, vllm.envs; print('started', flush=True); time.sleep(600)"
    proc = subprocess.Popen(
        support.invoke_argv(
            "run",
            "--repo",
            str(checkout),
            "--image",
            world.editable,
            "--sync",
            "--restart",
            "time.sleep(600)",
            "--",
            "python3",
            "-c",
            server,
        ),
        env={**os.environ, "INVOKE_ENGINE_NAME": engine.kind},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=support.ROOT,
        # A suite started in the background by a shell without job control ignores SIGINT, and children inherit
        # that: give the tool the Ctrl-C a user's terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Read its output all along: a test that reads only at the end stalls the tool once a pipe is full.
    drained = {"out": [], "err": []}
    readers = [
        threading.Thread(target=lambda k=k, f=f: drained[k].extend(f), daemon=True)
        for k, f in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for r in readers:
        r.start()
    name = f"forkdev-sync-{proc.pid}"
    try:
        wait_for(lambda: name in running(engine), "the container")
        src = "/opt/vllm-source/"

        def in_container(path: str) -> bytes | None:
            res = subprocess.run([engine.exe, "exec", name, "cat", src + path], capture_output=True)
            return res.stdout if res.returncode == 0 else None

        time.sleep(1.0)  # the watcher is up
        (checkout / "vllm" / "envs.py").write_text("ENVS = 'synced'\n")
        wait_for(lambda: in_container("vllm/envs.py") == b"ENVS = 'synced'\n", "the edit")
        (checkout / "vllm" / "fresh.py").write_text("FRESH = 1\n")
        wait_for(lambda: in_container("vllm/fresh.py") == b"FRESH = 1\n", "the new file")
        (checkout / "vllm" / "logger.py").unlink()
        wait_for(lambda: in_container("vllm/logger.py") is None, "the deletion")
        (checkout / "vllm" / "stale.so").write_bytes(b"ignored by git")  # *.so is in .gitignore
        (checkout / "csrc").mkdir(exist_ok=True)
        (checkout / "csrc" / "k.cu").write_text("// native\n")
        time.sleep(1.0)
        assert in_container("vllm/stale.so") is None and in_container("csrc/k.cu") is None
        logs = lambda: subprocess.run([engine.exe, "logs", name], capture_output=True, text=True).stdout  # noqa: E731
        wait_for(lambda: logs().count("started") >= 2, "the server's restart")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            if name in running(engine):
                subprocess.run([engine.exe, "rm", "-f", name], capture_output=True)
        for r in readers:
            r.join(10)
    out, err = "".join(drained["out"]), "".join(drained["err"])
    assert proc.returncode == 0, err[-2000:]
    assert "not synced: native sources changed (csrc/k.cu)" in err
    assert name not in running(engine), "leaving the sync stops and removes the container"
    assert SECRET not in out + err


def test_a_live_sync_that_is_killed_with_sigterm_removes_its_container(engine, world, checkout):
    proc = subprocess.Popen(
        support.invoke_argv("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--", "sleep", "600"),
        env={**os.environ, "INVOKE_ENGINE_NAME": engine.kind},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=support.ROOT,
    )
    name = f"forkdev-sync-{proc.pid}"
    try:
        wait_for(lambda: name in running(engine), "the container")
        time.sleep(1.0)  # the watcher is up
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        leftover = name in running(engine)
        if leftover:
            subprocess.run([engine.exe, "rm", "-f", name], capture_output=True)
    assert not leftover, "a SIGTERM leaves the sync as Ctrl-C does, container removed"
    assert f"+ {engine.exe} rm --force {name}" in err


def test_a_container_left_by_a_kill_9_is_removed_by_the_next_run(engine, world, checkout, tool):
    proc = subprocess.Popen(
        support.invoke_argv("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--", "sleep", "600"),
        env={**os.environ, "INVOKE_ENGINE_NAME": engine.kind},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=support.ROOT,
    )
    name = f"forkdev-sync-{proc.pid}"
    try:
        wait_for(lambda: name in running(engine), "the container")
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(30)
        assert name in running(engine), "a kill -9 leaves the container (nothing can run then)"
        res = tool("run", "--repo", str(checkout), "--image", world.editable, "--", "true")
        assert res.code == 0, res.err
        assert f"removing {name}, left by a run that was killed" in res.err
        assert name not in running(engine)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([engine.exe, "rm", "-f", name], capture_output=True)
