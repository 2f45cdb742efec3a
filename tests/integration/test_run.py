"""`invoke run`, `shell`, `gpu-check`, `devcontainer` and live sync on the real engines, with real secrets files.

The secrets scan: no secret value may appear in the tasks' stdout or stderr, in a running container's `inspect`
output, or in any image the run leaves (it builds none)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path

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


@pytest.fixture
def mine(engine, cache_dir):
    """The names of the containers this test session's runs started: their owner's lock lies in its cache. Other
    sessions on this machine (and other users of the engine) start containers of their own at any time."""
    cache = f"{cache_dir.resolve()}/"

    def names() -> list[str]:
        listed = support.sh(engine.exe, "ps", "-a", "--filter", "label=dev.forkdev.owner", "--format", "{{.Names}}")
        if not listed.split():
            return []
        fmt = '{{.Name}} {{index .Config.Labels "dev.forkdev.owner"}}'
        # one may be gone between the two calls: inspect says so on stderr and names the others
        res = subprocess.run([engine.exe, "inspect", "--format", fmt, *listed.split()], capture_output=True, text=True)
        pairs = [line.split(" ", 1) for line in res.stdout.splitlines() if " " in line]
        return sorted(name.lstrip("/") for name, owner in pairs if owner.startswith(cache))

    return names


wait_for = support.wait_for


READY = "Ctrl-C to leave"  # the sync says so once its watcher is up and the container runs


def test_run_passes_secrets_explicit_variables_win_and_the_exit_code_comes_back(engine, world, checkout, tool, mine):
    args = ("run", "--repo", str(checkout), "--image", world.editable)
    res = tool(*args, "--", "python3", "-c", PRINT)
    assert res.code == 0, res.err
    assert res.out.split() == [digest(SECRET), "from-file"], "the file's values, never the example's"
    assert SECRET not in res.out + res.err
    override = tool(*args, "--env", "MODE=explicit", "--", "python3", "-c", PRINT)
    assert override.out.split() == [digest(SECRET), "explicit"]
    failed = tool(*args, "--", "sh", "-c", "exit 7")
    assert failed.code == 7 and "Traceback" not in failed.err
    assert mine() == [], "no container left behind"


@pytest.mark.parametrize("task", ["run", "shell"])
def test_a_dry_run_shows_the_container_and_makes_nothing_not_even_the_cache(
    engine, world, checkout, tool, task, tmp_path
):
    """Its `docker run` is echoed as not run, with the private folder a real run would mount; no container, no
    claim or lock in the cache (not even the cache itself), so the secrets file a real run puts there is not
    written."""
    cache = tmp_path / "cache"
    res = tool(task, "--repo", str(checkout), "--image", world.user, "--dry-run", env={"INVOKE_CACHE_DIR": str(cache)})
    assert res.code == 0, res.err
    echoed = next(line for line in res.err.splitlines() if f" run --name forkdev-{task}-" in line)
    assert echoed.endswith("[dry-run: not run]") and f"source={cache}/run/owners/" in echoed
    assert not cache.exists()
    assert SECRET not in res.out + res.err
    listed = support.sh(engine.exe, "ps", "-a", "--filter", f"label=dev.forkdev.run={task}", "--format", "{{.Labels}}")
    assert str(cache) not in listed


def test_the_start_up_scripts_own_state_cannot_be_set_from_outside(engine, world, checkout, tool, mine):
    """`into` and `mode` were the prologue's variables: `into` copied an overlay that is not there (exit 1),
    `mode=loop` restarted the command for ever."""
    args = ("run", "--repo", str(checkout), "--image", world.editable, "--env", "into=/tmp", "--env", "mode=loop")
    res = tool(*args, "--", "sh", "-c", 'echo "$into $mode"; exit 3')
    assert (res.code, res.out.strip()) == (3, "/tmp loop"), res.err
    assert mine() == []


def test_a_running_containers_inspect_output_holds_no_secret(engine, world, checkout, start, mine):
    run = start("run", "--repo", str(checkout), "--image", world.editable, "--", "sleep", "600")
    name = wait_for(lambda: run.name("run") in mine() and run.name("run"), "the container")
    inspected = support.sh(engine.exe, "inspect", name)
    assert SECRET not in inspected and "HF_TOKEN" not in inspected
    assert "/run/forkdev" in inspected
    run.finish(signal.SIGTERM)
    assert SECRET not in run.out + run.err


def test_a_run_stopped_by_sigterm_or_sighup_removes_its_container(engine, world, checkout, start, mine):
    """The engine's client was left to itself: its container ran on (`sleep` as PID 1 ignores SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        run = start("run", "--repo", str(checkout), "--image", world.editable, "--", "sleep", "600")
        name = wait_for(lambda run=run: run.name("run") in mine() and run.name("run"), "the container")
        assert run.finish(sig) != 0
        assert name not in mine(), f"a run stopped by {sig.name} leaves no container"
        assert f"rm --force -- {name}" in run.err


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
        ("malformed", [], "hf.env:2: not a NAME=value line"),
        (None, ["--image", "forkdev-test/no-such:image"], "no image 'forkdev-test/no-such:image'"),
        (None, ["--gpu", "all"], "no NVIDIA driver"),
        (None, ["--gpu", "seven"], "--gpu 'seven'"),
        (None, ["--env", "1BAD=x"], "not a variable name"),
        (None, ["--port", "99999"], "not a port number"),
        (None, ["--port", "²"], "--port '²' is not a port number"),  # '²'.isdigit(), and int('²') fails
        (None, ["--gpu", "²"], "--gpu '²'"),
        (None, ["--restart", "server"], "use it with --sync"),
        (None, ["--keep"], "use it with --sync"),
        ("network", [], "container.network '--privileged' starts with '-'"),
        ("network", ["--sync"], "container.network '--privileged' starts with '-'"),
        ("no-such-network", ["--sync"], "forkdev-test-no-such-network"),  # the engine made the container, then failed
    ],
)
def test_bad_input_is_one_line_and_leaves_no_container(engine, world, checkout, tool, mine, setup, args, words):
    env = {}
    if setup == "tracked":
        support.git(checkout, "add", "-f", "extras/secrets/hf.env")
    if setup == "malformed":
        (checkout / "extras" / "secrets" / "hf.env").write_text("HF_TOKEN=x\nthis is not a variable\n")
    if setup == "network":
        env["INVOKE_CONTAINER_NETWORK"] = "--privileged"
    if setup == "no-such-network":
        env["INVOKE_CONTAINER_NETWORK"] = "forkdev-test-no-such-network"
    image = [] if "--image" in args else ["--image", world.editable]
    res = tool("run", "--repo", str(checkout), *image, *args, "--", "true", env=env)
    assert res.code != 0 and "Traceback" not in res.err
    assert words in res.err.splitlines()[-1], res.err.splitlines()[-1]
    assert mine() == []


def test_a_checkout_whose_path_holds_a_colon_and_a_comma_is_mounted(engine, world, tool, tmp_path, mine):
    """docker and podman split --volume on ':' (docker said 'invalid mode'); --mount takes any path."""
    odd = tmp_path / "vllm:v2,b"
    support.sh("git", "clone", "-q", world.upstream, odd)
    res = tool(
        "shell", "--repo", str(odd), "--image", world.editable, "--command", "head -c 14 /workspace/vllm/envs.py"
    )
    assert (res.code, res.out.strip()) == (0, "# vllm/envs.py"), res.err
    assert mine() == []


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
    env = {"INVOKE_ENGINE_NAME": engine.kind, "INVOKE_CONTAINER_GPU_ROOT": str(fake)}
    seen = invoke("gpu-check", "--json", env=env)
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
    assert "--env-file" not in doc["runArgs"], "docker would copy the values into the container's inspect"
    mount = "source=${localWorkspaceFolder}/extras/secrets,target=/run/forkdev-secrets,type=bind,readonly"
    assert mount in doc["mounts"], "the secrets reach it read-only, through its login shells"
    assert SECRET not in target.read_text()


def in_container(engine, name: str, path: str) -> bytes | None:
    res = subprocess.run([engine.exe, "exec", name, "cat", "/opt/vllm-source/" + path], capture_output=True)
    return res.stdout if res.returncode == 0 else None


def kind_in(engine, name: str, path: str) -> str:
    """What a path is in the container, asked without following a link: link, dir, file or none."""
    probe = '[ -L "$1" ] && echo link || { [ -d "$1" ] && echo dir; } || { [ -f "$1" ] && echo file; } || echo none'
    argv = [engine.exe, "exec", name, "sh", "-c", probe, "kind", "/opt/vllm-source/" + path]
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


def test_live_sync_brings_edits_additions_and_deletions_in_and_restarts_the_server(
    engine, world, checkout, start, mine
):
    server = "import time, vllm.envs; print('started', flush=True); time.sleep(600)"
    args = ("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--restart", "time.sleep(600)")
    sync = start(*args, "--", "python3", "-c", server)
    # Not a fixed sleep: the tool says when its watcher is up (before, edits were lost while it started).
    wait_for(lambda: READY in sync.err, "the sync to be ready", timeout=60)
    name = sync.name("sync")
    (checkout / "vllm" / "envs.py").write_text("ENVS = 'synced'\n")
    wait_for(lambda: in_container(engine, name, "vllm/envs.py") == b"ENVS = 'synced'\n", "the edit")
    (checkout / "vllm" / "fresh.py").write_text("FRESH = 1\n")
    wait_for(lambda: in_container(engine, name, "vllm/fresh.py") == b"FRESH = 1\n", "the new file")
    (checkout / "vllm" / "logger.py").unlink()
    wait_for(lambda: in_container(engine, name, "vllm/logger.py") is None, "the deletion")
    (checkout / "vllm" / "stale.so").write_bytes(b"ignored by git")  # *.so is in .gitignore
    (checkout / "csrc").mkdir(exist_ok=True)
    (checkout / "csrc" / "k.cu").write_text("// native\n")
    wait_for(lambda: "not synced: native sources changed (csrc/k.cu)" in sync.err, "the refusal")
    assert in_container(engine, name, "vllm/stale.so") is None and in_container(engine, name, "csrc/k.cu") is None
    logs = lambda: subprocess.run([engine.exe, "logs", name], capture_output=True, text=True).stdout  # noqa: E731
    wait_for(lambda: logs().count("started") >= 2, "the server's restart")
    assert sync.finish(signal.SIGINT) == 0, sync.err[-2000:]
    assert name not in mine(), "leaving the sync stops and removes the container"
    assert SECRET not in sync.out + sync.err


def test_live_sync_survives_folder_deletions_and_kind_changes_and_writes_through_no_link(
    engine, world, checkout, start, mine
):
    """A deleted folder ended the sync (`rm -f` of a folder failed) and removed the server; a link replaced by a
    folder was written through in the container (a file landed in /etc)."""
    (checkout / "vllm" / "gone").mkdir()
    (checkout / "vllm" / "gone" / "a.py").write_text("A = 1\n")
    sync = start("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--", "sleep", "600")
    wait_for(lambda: READY in sync.err, "the sync to be ready", timeout=60)
    name = sync.name("sync")
    (checkout / "vllm" / "etc").symlink_to("/etc")
    # a folder made with files in it at once (the watcher sees only the folder), and an edit that lands
    (checkout / "vllm" / "new" / "deep").mkdir(parents=True)
    (checkout / "vllm" / "new" / "deep" / "n.py").write_text("N = 1\n")
    wait_for(lambda: in_container(engine, name, "vllm/new/deep/n.py") == b"N = 1\n", "the new folder's file")
    (checkout / "vllm" / "gone" / "a.py").write_text("A = 2\n")
    wait_for(lambda: in_container(engine, name, "vllm/gone/a.py") == b"A = 2\n", "the folder's file")
    wait_for(lambda: kind_in(engine, name, "vllm/etc") == "link", "the link")
    # the folder goes; the link becomes a folder with a file in it; a folder becomes a file
    for child in (checkout / "vllm" / "gone").iterdir():
        child.unlink()
    (checkout / "vllm" / "gone").rmdir()
    (checkout / "vllm" / "etc").unlink()
    (checkout / "vllm" / "etc").mkdir()
    (checkout / "vllm" / "etc" / "forkdev-landed").write_text("inside the tree\n")
    for child in (checkout / "vllm" / "new" / "deep").iterdir():
        child.unlink()
    (checkout / "vllm" / "new" / "deep").rmdir()
    (checkout / "vllm" / "new" / "deep").write_text("# a file now\n")
    wait_for(lambda: kind_in(engine, name, "vllm/gone") == "none", "the folder's deletion")
    wait_for(lambda: in_container(engine, name, "vllm/etc/forkdev-landed") == b"inside the tree\n", "the file")
    wait_for(lambda: kind_in(engine, name, "vllm/new/deep") == "file", "the folder that became a file")
    assert kind_in(engine, name, "vllm/etc") == "dir"
    landed = subprocess.run([engine.exe, "exec", name, "ls", "/etc/forkdev-landed"], capture_output=True)
    assert landed.returncode != 0, "nothing was written through the old link"
    (checkout / "vllm" / "envs.py").write_text("ENVS = 'still syncing'\n")
    wait_for(lambda: in_container(engine, name, "vllm/envs.py") == b"ENVS = 'still syncing'\n", "a later edit")
    assert name in mine() and sync.proc.poll() is None, "the sync and its server are still there"
    assert sync.finish(signal.SIGINT) == 0, sync.err[-2000:]
    assert "Traceback" not in sync.err and "not synced" not in sync.err, sync.err[-2000:]


def test_live_sync_streams_a_big_file_instead_of_holding_it(engine, world, checkout, start):
    """A 400 MB file took 900 MB of memory: read whole, then a tar of it built in memory, then copied."""
    size = 300 * 1024 * 1024
    sync = start("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--", "sleep", "600")
    wait_for(lambda: READY in sync.err, "the sync to be ready", timeout=60)
    name = sync.name("sync")
    with open(checkout / "vllm" / "weights.py", "wb") as fh:
        fh.truncate(size)
    stat = [engine.exe, "exec", name, "stat", "-c", "%s", "/opt/vllm-source/vllm/weights.py"]
    probe = lambda: subprocess.run(stat, capture_output=True, text=True).stdout.strip()  # noqa: E731
    wait_for(lambda: probe() == str(size), "the big file", timeout=120)
    status = (Path("/proc") / str(sync.proc.pid) / "status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024
    assert peak < size / 2, f"the sync's memory peaked at {peak >> 20} MiB for a {size >> 20} MiB file"
    assert sync.finish(signal.SIGINT) == 0, sync.err[-2000:]


def test_a_live_sync_returns_the_servers_exit_code_and_removes_its_container(engine, world, checkout, start, mine):
    """It said 0 whatever the server said."""
    args = ("run", "--repo", str(checkout), "--image", world.editable, "--sync")
    sync = start(*args, "--", "sh", "-c", "while [ ! -e /opt/vllm-source/vllm/stop.py ]; do sleep 0.1; done; exit 7")
    wait_for(lambda: READY in sync.err, "the sync to be ready", timeout=60)
    name = sync.name("sync")
    (checkout / "vllm" / "stop.py").write_text("# synced in: the server exits 7\n")
    assert sync.finish(None) == 7, sync.err[-2000:]
    assert name not in mine()


def test_a_live_sync_that_is_killed_with_sigterm_removes_its_container(engine, world, checkout, start, mine):
    sync = start("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--", "sleep", "600")
    name = wait_for(lambda: sync.name("sync") in mine() and sync.name("sync"), "the container")
    # The moment a user may stop it: as soon as its container is there, before the sync is up.
    assert sync.finish(signal.SIGTERM) == 0
    assert name not in mine(), "a SIGTERM leaves the sync as Ctrl-C does, container removed"
    assert f"+ {engine.exe} rm --force -- {name}" in sync.err


def test_a_container_left_by_a_kill_9_is_removed_by_the_next_run(engine, world, checkout, tool, start, mine):
    sync = start("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--", "sleep", "600")
    name = wait_for(lambda: sync.name("sync") in mine() and sync.name("sync"), "the container")
    sync.finish(signal.SIGKILL)  # no cleanup runs
    assert name in mine(), "a kill -9 leaves the container (nothing can run then)"
    res = tool("run", "--repo", str(checkout), "--image", world.editable, "--", "true")
    assert res.code == 0, res.err
    assert f"removing {name}, left by a run that was killed" in res.err
    assert name not in mine()


def test_a_kept_container_outlives_its_sync_and_every_later_sweep(engine, world, checkout, tool, start):
    sync = start("run", "--repo", str(checkout), "--image", world.editable, "--sync", "--keep", "--", "sleep", "600")
    wait_for(lambda: READY in sync.err, "the sync to be ready", timeout=60)
    assert sync.finish(signal.SIGINT) == 0, sync.err[-2000:]
    name = sync.out.strip()
    try:
        assert name == sync.name("sync")
        res = tool("run", "--repo", str(checkout), "--image", world.editable, "--", "true")
        assert res.code == 0 and f"removing {name}" not in res.err, res.err
        state = support.sh(engine.exe, "inspect", "--format", "{{.State.Running}}", name)
        assert state == "true", "the next run's sweep left the kept container running"
    finally:
        subprocess.run([engine.exe, "rm", "--force", name], capture_output=True)


def test_a_run_in_another_pid_namespace_leaves_a_live_runs_container_alone(engine, world, checkout, start, mine):
    """A CI job's container (or --network host) has this machine's host name and pids of its own: the pid in a
    container's name proved nothing there, and the sweep removed the live run's container (it then exited 0)."""
    wait = "while [ ! -e /workspace/.release ]; do sleep 0.1; done; exit 3"
    first = start("run", "--repo", str(checkout), "--image", world.editable, "--mount-source", "--", "sh", "-c", wait)
    name = wait_for(lambda: first.name("run") in mine() and first.name("run"), "the first run's container")
    unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    args = ("run", "--repo", str(checkout), "--image", world.editable, "--", "true")
    second = start(*args, argv=lambda *a: [*unshare, *support.invoke_argv(*a)])
    assert second.finish(None, timeout=120) == 0, second.err[-2000:]
    assert re.search(r"--name forkdev-run-\d+-", second.err) and "removing" not in second.err
    assert name in mine(), "the live run's container is still there"
    (checkout / ".release").write_text("")
    assert first.finish(None) == 3, "the first run's exit code is its command's"
    assert mine() == []
