"""Secrets never leave the checkout, end to end on the real engines, git and a registry.

A user's fork holds `extras/secrets/hf.env` with an access token (on the real vLLM tree it was untracked and not
ignored). Whatever git says of it, no file of the secrets directory reaches an image (dev, a full build's
context, nightly's thin layer), a wheel's source tree, a live-synced container or an overlay; a secret value
smuggled into another file is refused by the layer scan before anything is loaded, tagged or pushed; a
devcontainer gets the secrets in its login shells and never in `inspect`; and a misconfigured secrets path is
one line, never a traceback or a read through a symlink out of the checkout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
import support
from test_nightly import build_os_image  # noqa: F401 - the session fixture: the FROM image for builds

TOKEN = "hf_q7XwT2mZk9LpV4nRb8Yc"  # the user's token: never to be seen outside the container
SRC = "/opt/vllm-source/"
LOADED = re.compile(r"^\S* ?\+ \S+ (load|build|tag|push) ", re.M)  # an echoed command that makes or moves an image


def saved_image_holds(engine, image: str, needle: str) -> bool:
    """Whether `needle`'s bytes are anywhere in `<engine> save IMAGE` (every layer, the config, the history),
    read as a stream."""
    want = needle.encode()
    proc = subprocess.Popen([engine.exe, "save", image], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    found, tail = False, b""
    for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
        if want in tail + chunk:
            found = True
        tail = chunk[-len(want) :]
    assert proc.wait() == 0, f"{engine.exe} save {image} failed"
    return found


def user_secrets(checkout: Path, ignore: bool = True) -> Path:
    folder = checkout / "extras" / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hf.env").write_text(f"# the token\nHF_TOKEN={TOKEN}\nMODE=a 'b' $HOME\n")
    (folder / "hf.env.example").write_text("HF_TOKEN=hf_your_token_here\n")
    if ignore:
        (checkout / ".git" / "info" / "exclude").write_text("extras/secrets/*.env\n")
    return folder


def registry_tags(registry, repository: str) -> list[str]:
    try:
        return registry.tags(repository)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return []


# ---- images ----------------------------------------------------------------------------------------------------
@pytest.mark.engine
@pytest.mark.parametrize("how", ["untracked, not ignored", "ignored", "tracked"])
def test_dev_never_ships_a_file_of_the_secrets_directory(engine, world, fork, tool, how):
    (fork / "vllm" / "envs.py").write_text("ENVS = 'shipped'\n")
    folder = user_secrets(fork, ignore=how == "ignored")
    (folder / "notes.txt").write_text(f"the token again: {TOKEN}\n")  # any file there, not only *.env
    if how == "tracked":
        support.git(fork, "add", "-f", "extras/secrets")
    support.commit_all(fork, "fork: an edit" + (" and, by mistake, the secrets" if how == "tracked" else ""))
    res = tool("dev", str(fork), "--base", world.editable, "--json")
    assert res.code == 0, res.err
    image = res.json["image"]
    assert support.image_file(engine, image, SRC + "vllm/envs.py") == b"ENVS = 'shipped'\n"
    assert support.image_file(engine, image, SRC + "extras/secrets/hf.env.example") == b"HF_TOKEN=hf_your_token_here\n"
    assert support.image_file(engine, image, SRC + "extras/secrets/hf.env") is None
    assert support.image_file(engine, image, SRC + "extras/secrets/notes.txt") is None
    assert res.json["dirty"] is False, "a secrets file is no uncommitted work: the image is the commit's"
    assert "not shipped: extras/secrets/" in res.err
    assert TOKEN not in res.out + res.err
    assert not saved_image_holds(engine, image, TOKEN), "the token's bytes are nowhere in the image"


@pytest.mark.engine
def test_a_secret_value_in_a_shipped_file_is_refused_and_nothing_is_loaded_tagged_or_pushed(
    engine, world, fork, tool, registry
):
    user_secrets(fork)
    (fork / "vllm" / "leak.py").write_text(f"TOKEN = '{TOKEN}'  # pasted while debugging\n")
    name = f"secrets-{engine.kind}"
    tag = f"{registry.host}/{name}:leak"
    res = tool("dev", str(fork), "--base", world.editable, "--push", "--tag", tag)
    assert res.code != 0 and "Traceback" not in res.err
    assert res.last_error.startswith("error: vllm/leak.py in the layer of forkdev-test/vllm-dev:local-")
    assert "holds the value of HF_TOKEN from extras/secrets/hf.env:2" in res.last_error
    assert TOKEN not in res.out + res.err, "the refusal names the file and the secret, never the value"
    assert not LOADED.search(res.err) and registry_tags(registry, name) == []

    # A value learned after its image was made: the image is reused, and still not pushed.
    (fork / "vllm" / "leak.py").write_text("VALUE = 'later-a-secret-Kq27xw'\n")
    made = tool("dev", str(fork), "--base", world.editable, "--json")
    assert made.code == 0, made.err
    with (fork / "extras" / "secrets" / "hf.env").open("a") as fh:
        fh.write("OTHER_TOKEN=later-a-secret-Kq27xw\n")
    again = tool("dev", str(fork), "--base", world.editable, "--push", "--tag", tag)
    assert again.code != 0 and "holds the value of OTHER_TOKEN from extras/secrets/hf.env:4" in again.last_error
    assert not re.search(r"^\S* ?\+ \S+ (tag|push) ", again.err, re.M) and registry_tags(registry, name) == []

    # Our environment's secret-looking variables are known too (a CI job's token).
    (fork / "vllm" / "leak.py").write_text("CI = 'glpat-env-9Vx3Qm2Lk'\n")
    env = tool("dev", str(fork), "--base", world.editable, env={"CI_JOB_TOKEN": "glpat-env-9Vx3Qm2Lk"})
    assert env.code != 0 and "holds the value of CI_JOB_TOKEN from the environment" in env.last_error
    assert "glpat-env-9Vx3Qm2Lk" not in env.err


@pytest.mark.engine
def test_credentials_in_the_origin_url_reach_no_label_and_no_log(engine, world, fork, tool):
    support.git(fork, "remote", "set-url", "origin", f"https://me:{TOKEN}@github.com/me/vllm.git")
    (fork / "vllm" / "envs.py").write_text("ENVS = 'labelled'\n")
    res = tool("dev", str(fork), "--base", world.editable, "--json")
    assert res.code == 0, res.err
    inspected = support.inspect(engine, res.json["image"])
    assert inspected["Config"]["Labels"]["org.opencontainers.image.source"] == "https://github.com/me/vllm.git"
    assert TOKEN not in json.dumps(inspected) + res.err + res.out


def test_an_upstream_url_with_credentials_is_masked_in_every_echo_and_error(invoke, tmp_path):
    url = f"https://me:{TOKEN}@127.0.0.1:9/vllm.git"
    env = {"INVOKE_CACHE_DIR": str(tmp_path)}
    planned = invoke("build", "0123456", "--upstream", url, "--dry-run", env=env)  # says the clone, makes none
    assert planned.code == 0, planned.err
    assert "+ git clone --mirror" in planned.err and "https://me:***@127.0.0.1:9/vllm.git" in planned.err
    failed = invoke("build", "0123456", "--upstream", url, env=env)  # nothing listens on port 9
    assert failed.code != 0 and "Traceback" not in failed.err
    assert "https://me:***@127.0.0.1:9/vllm.git" in failed.err
    assert TOKEN not in planned.err + planned.out + failed.err + failed.out


@pytest.mark.engine
def test_a_full_builds_context_and_nightlys_thin_layer_leave_out_a_tracked_secret(
    engine,
    tool,
    tmp_path,
    build_os_image,  # noqa: F811
):
    up = tmp_path / "upstream"
    support.make_buildable_upstream(up, build_os_image)
    user_secrets(up, ignore=False)
    support.git(up, "add", "-f", "extras/secrets")
    support.commit_all(up, "a fork that committed its secrets")
    repository = f"forkdev-test/secrets-nightly-{engine.kind}"
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache"), "INVOKE_NIGHTLY_REPOSITORY": repository}
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"  # the 20.10 client: BuildKit built in
    full = tool("nightly", "--upstream", str(up), "--json", env=env)
    assert full.code == 0, full.err
    assert full.json["built"] == "full"
    image = full.json["image"]
    assert support.image_file(engine, image, SRC + "extras/secrets/hf.env") is None
    assert support.image_file(engine, image, SRC + "extras/secrets/hf.env.example") == b"HF_TOKEN=hf_your_token_here\n"
    assert support.image_file(engine, image, SRC + "vllm/envs.py") is not None, "the rest of the context is there"
    assert not saved_image_holds(engine, image, TOKEN)

    (up / "extras" / "secrets" / "hf.env").write_text("HF_TOKEN=hf_rotatedTokenAfterTheLeak\n")
    (up / "vllm" / "envs.py").write_text("ENVS = 'nightly 2'\n")
    support.commit_all(up, "python only, and the secret rotated")
    thin = tool("nightly", "--upstream", str(up), "--json", env=env)
    assert thin.code == 0, thin.err
    assert thin.json["built"] == "thin"
    assert support.image_file(engine, thin.json["image"], SRC + "vllm/envs.py") == b"ENVS = 'nightly 2'\n"
    assert support.image_file(engine, thin.json["image"], SRC + "extras/secrets/hf.env") is None
    assert not saved_image_holds(engine, thin.json["image"], "hf_rotatedTokenAfterTheLeak")


# ---- wheel tree, overlay ---------------------------------------------------------------------------------------
def plain_checkout(path: Path) -> Path:
    path.mkdir(parents=True)
    support.git(path, "init", "-q")
    support.write_files(path, {"pkg/a.py": "A = 1\n", "extras/other.txt": "other\n"})
    support.commit_all(path, "a package")
    return path


def test_the_wheels_source_tree_holds_no_secret_path_whatever_git_says(tmp_path):
    from forkdev.core import secrets, source
    from forkdev.core.gitrepo import Repo
    from forkdev.core.proc import Runner

    checkout = plain_checkout(tmp_path / "repo")
    folder = user_secrets(checkout, ignore=False)
    (folder / "tracked.env").write_text(f"T={TOKEN}\n")
    support.git(checkout, "add", "-f", "extras/secrets/tracked.env", "extras/secrets/hf.env.example")
    support.commit_all(checkout, "a tracked secret, by mistake")
    (folder / "loose.txt").write_text(f"{TOKEN}\n")
    src = source.describe(Repo.open(checkout, Runner(echo=False)), secrets.DEFAULT)
    assert src.files == ("extras/other.txt", "extras/secrets/hf.env.example", "pkg/a.py")
    assert src.dirty is False, "untracked secrets are no uncommitted work"
    dest = tmp_path / "scratch"
    source.export(Repo.open(checkout, Runner(echo=False)), src, dest)
    copied = [p for p in dest.rglob("*") if p.is_file()]
    assert all(TOKEN.encode() not in p.read_bytes() for p in copied)
    assert not (dest / "extras" / "secrets" / "hf.env").exists()


def test_an_overlay_never_carries_a_secret(invoke, tmp_path):
    checkout = plain_checkout(tmp_path / "repo")
    user_secrets(checkout)
    (checkout / "conf").symlink_to("extras/secrets")
    defs = tmp_path / "overlay.txt"
    for line in ("extras/secrets/hf.env -> hf.env", "conf/hf.env -> hf.env"):
        defs.write_text(line + "\n")
        res = invoke("overlay", "--repo", str(checkout), "--definitions", str(defs), "--dest", str(tmp_path / "ov"))
        assert res.code != 0 and "Traceback" not in res.err
        assert "is a secret path" in res.last_error and "overlay.txt:1" in res.last_error
        assert not (tmp_path / "ov").exists()
    defs.write_text("extras\n")
    res = invoke("overlay", "--repo", str(checkout), "--definitions", str(defs), "--dest", str(tmp_path / "ov"))
    assert res.code == 0, res.err
    assert (tmp_path / "ov" / "extras" / "other.txt").read_text() == "other\n"
    assert (tmp_path / "ov" / "extras" / "secrets" / "hf.env.example").exists(), "templates go where they went"
    assert not (tmp_path / "ov" / "extras" / "secrets" / "hf.env").exists()


# ---- run's secrets path, refused as one line ---------------------------------------------------------------
PATH_CASES = [
    ("not ignored", None, "extras/secrets/hf.env is not ignored by git, so 'git add -A' would put"),
    (None, "/etc", "container.secrets '/etc' is absolute"),
    (None, "../outside", "container.secrets '../outside' leads out of the checkout by '..'"),
    ("dir link out", None, "container.secrets 'extras/secrets' leads out of the checkout through a symlink"),
    ("file link out", None, "the secrets file 'extras/secrets/hf.env' leads out of the checkout through a"),
    ("a file", "extras/other.txt", "container.secrets 'extras/other.txt' is a file"),
]


@pytest.mark.parametrize(
    ("task", "setup", "secrets_dir", "words"),
    [(task, *case) for task in ("run", "shell", "devcontainer") for case in PATH_CASES]
    # dev reads no secret for a container: only the configured path is checked (a file there is kept out too)
    + [("dev", *case) for case in PATH_CASES if case[1] in ("/etc", "../outside")],
)
def test_a_secrets_path_run_cannot_use_is_one_line_naming_it(invoke, tmp_path, task, setup, secrets_dir, words):
    checkout = plain_checkout(tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hf.env").write_text(f"HF_TOKEN={TOKEN}\n")
    folder = user_secrets(checkout, ignore=setup != "not ignored")
    if setup == "dir link out":
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
        folder.symlink_to(outside)
    if setup == "file link out":
        (folder / "hf.env").unlink()
        (folder / "hf.env").symlink_to(outside / "hf.env")
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    if secrets_dir:
        env["INVOKE_CONTAINER_SECRETS"] = secrets_dir
    args = {
        "run": ["run", "--repo", str(checkout), "--image", "forkdev-test/none:x", "--", "true"],
        "shell": ["shell", "--repo", str(checkout), "--image", "forkdev-test/none:x", "--command", "true"],
        "devcontainer": ["devcontainer", "--repo", str(checkout), "--image", "forkdev-test/none:x"],
        "dev": ["dev", str(checkout), "--base", "forkdev-test/none:x"],
    }[task]
    res = invoke(*args, env=env)
    assert res.code != 0 and "Traceback" not in res.err, res.err
    assert words in res.last_error, res.last_error
    assert TOKEN not in res.err + res.out
    assert not (checkout / ".devcontainer").exists()


# ---- live sync -------------------------------------------------------------------------------------------------
@pytest.mark.engine
def test_live_sync_never_copies_a_secret_in(engine, world, fork, tool, tmp_path):
    folder = user_secrets(fork)
    log = tmp_path / "sync.log"  # its output, all of it: a file never fills up as an unread pipe does
    with log.open("w") as out:
        proc = subprocess.Popen(
            support.invoke_argv("run", "--repo", str(fork), "--image", world.editable, "--sync", "--", "sleep", "600"),
            env={**os.environ, "INVOKE_ENGINE_NAME": engine.kind, "INVOKE_CACHE_DIR": str(tmp_path / "cache")},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=support.ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C ends it, as a user's would
        )
    prefix = f"forkdev-sync-{proc.pid}-"  # and a random tail: the echoed run line names it

    def started() -> str | None:
        found = re.search(rf"--name ({re.escape(prefix)}[0-9a-f]+) ", log.read_text())
        return found.group(1) if found else None

    def in_container(path: str) -> bytes | None:
        name = started()
        if name is None:
            return None
        res = subprocess.run([engine.exe, "exec", name, "cat", SRC + path], capture_output=True)
        return res.stdout if res.returncode == 0 else None

    def wait(path: str, want: bytes) -> None:
        deadline = time.monotonic() + 60
        while in_container(path) != want:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)

    try:
        wait("vllm/envs.py", (fork / "vllm" / "envs.py").read_bytes())
        time.sleep(1.0)  # the watcher is up
        (folder / "notes.txt").write_text(f"{TOKEN}\n")  # not ignored by git: only the secret path keeps it out
        (folder / "hf.env").write_text(f"HF_TOKEN={TOKEN}\nMORE=1\n")
        (fork / "vllm" / "after.py").write_text("AFTER = 1\n")
        wait("vllm/after.py", b"AFTER = 1\n")
        assert in_container("extras/secrets/notes.txt") is None
        assert in_container("extras/secrets/hf.env") is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        name = started()
        if name is not None:
            subprocess.run([engine.exe, "rm", "-f", name], capture_output=True)
    assert TOKEN not in log.read_text()


# ---- devcontainer ----------------------------------------------------------------------------------------------
@pytest.fixture
def hf_cache(tmp_path) -> Path:
    path = tmp_path / "hf-cache"
    path.mkdir()
    return path


@pytest.mark.engine
def test_a_devcontainer_gets_the_secrets_in_its_login_shell_and_never_in_inspect(engine, world, fork, tool, hf_cache):
    user_secrets(fork)
    res = tool(
        "devcontainer", "--repo", str(fork), "--image", world.editable, env={"INVOKE_CONTAINER_HF_CACHE": str(hf_cache)}
    )
    assert res.code == 0, res.err
    text = (fork / ".devcontainer" / "devcontainer.json").read_text()
    assert TOKEN not in text and "--env-file" not in text
    doc = json.loads(text)

    # As the devcontainer CLI starts it: the workspace mount, mounts, containerEnv, runArgs, then the image.
    def here(value: str) -> str:
        return value.replace("${localWorkspaceFolder}", str(fork))

    name = f"forkdev-test-devcontainer-{os.getpid()}"
    argv = [engine.exe, "run", "--detach", "--name", name, "--network", "none"]
    argv += ["--mount", here(doc["workspaceMount"])]
    for mount in doc["mounts"]:
        argv += ["--mount", here(mount)]
    for key, value in doc["containerEnv"].items():
        argv += ["--env", f"{key}={value}"]
    argv += [here(a) for a in doc["runArgs"]]
    argv += ["--entrypoint", "/bin/sh", doc["image"], "-c", "sleep 300"]  # overrideCommand: the CLI's own sleep
    try:
        support.sh(*argv)
        inspected = support.sh(engine.exe, "inspect", name)
        assert TOKEN not in inspected and "HF_TOKEN" not in inspected
        login = support.sh(engine.exe, "exec", name, "sh", "-lc", 'printf "%s|%s|%s" "$HF_TOKEN" "$MODE" "$HF_HOME"')
        assert login == f"{TOKEN}|a 'b' $HOME|/run/forkdev-hf", "the values exactly as the file holds them"
        probe = support.sh(engine.exe, "exec", name, "bash", "-lic", "env")  # VS Code's userEnvProbe
        assert f"HF_TOKEN={TOKEN}" in probe.splitlines()
        plain = support.sh(engine.exe, "exec", name, "sh", "-c", 'printf "%s" "${HF_TOKEN-unset}"')
        assert plain == "unset", "only shells that read the profile get them, as run's prologue gives them"
        denied = subprocess.run(
            [engine.exe, "exec", name, "sh", "-c", "echo x >> /run/forkdev-secrets/hf.env"], capture_output=True
        )
        assert denied.returncode != 0, "the secrets are mounted read-only"
    finally:
        subprocess.run([engine.exe, "rm", "--force", name], capture_output=True)


@pytest.mark.engine
def test_devcontainer_merges_into_the_users_file_keeps_a_backup_and_updates_its_own_entries(
    engine, world, fork, tool, hf_cache
):
    user_secrets(fork)
    target = fork / ".devcontainer" / "devcontainer.json"
    target.parent.mkdir()
    users = {
        "name": "my box",
        "runArgs": ["--cap-add=SYS_PTRACE"],
        "mounts": ["source=/tmp,target=/host-tmp,type=bind"],
        "containerEnv": {"MY_VAR": "1"},
        "forwardPorts": [3000],
        "customizations": {"vscode": {"extensions": ["ms-python.python"]}},
        # What an older forkdev wrote: docker copied the file's values into the container's configuration.
        "image": "old",
    }
    users["runArgs"] += ["--env-file", "${localWorkspaceFolder}/extras/secrets/hf.env"]
    original = json.dumps(users, indent=4)
    target.write_text(original)
    env = {"INVOKE_CONTAINER_HF_CACHE": str(hf_cache)}
    for port in ("8000", "8001"):
        res = tool("devcontainer", "--repo", str(fork), "--image", world.editable, "--port", port, env=env)
        assert res.code == 0, res.err
    doc = json.loads(target.read_text())
    assert doc["name"] == "my box", "the user's name stays"
    assert doc["image"] == world.editable
    assert doc["runArgs"] == ["--cap-add=SYS_PTRACE", "--ipc=host"], "ours once, the old --env-file gone"
    assert doc["mounts"][0] == "source=/tmp,target=/host-tmp,type=bind" and len(doc["mounts"]) == 4
    assert sorted(m.split("target=")[1].split(",")[0] for m in doc["mounts"][1:]) == [
        "/etc/profile.d/forkdev-secrets.sh",
        "/run/forkdev-hf",
        "/run/forkdev-secrets",
    ]
    assert doc["containerEnv"] == {"MY_VAR": "1", "HF_HOME": "/run/forkdev-hf"}
    assert doc["forwardPorts"] == [3000, 8001], "the port of the first run was ours: replaced, not added to"
    assert doc["customizations"]["vscode"] == {"extensions": ["ms-python.python"]}
    backup = target.with_name("devcontainer.json.bak")
    assert json.loads(backup.read_text())["forwardPorts"] == [3000, 8000], "the file before the last change"
    first = tool("devcontainer", "--repo", str(fork), "--image", world.editable, "--port", "8001", env=env)
    assert first.code == 0 and json.loads(target.read_text()) == doc, "an unchanged re-run changes nothing"
    assert json.loads(backup.read_text())["forwardPorts"] == [3000, 8000], "and keeps the backup it had"


@pytest.mark.engine
@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", '{"runArgs": "--gpus all"}'])
def test_a_devcontainer_json_forkdev_cannot_merge_into_is_one_line_and_untouched(engine, world, fork, tool, content):
    target = fork / ".devcontainer" / "devcontainer.json"
    target.parent.mkdir()
    target.write_text(content)
    res = tool("devcontainer", "--repo", str(fork), "--image", world.editable)
    assert res.code != 0 and "Traceback" not in res.err
    assert str(target) in res.last_error and ("not a JSON object" in res.last_error or "not a list" in res.last_error)
    assert target.read_text() == content and sorted(p.name for p in target.parent.iterdir()) == ["devcontainer.json"]
