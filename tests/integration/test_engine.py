"""How the engine is found: docker's daemon is asked on its socket, its client program only when that cannot
serve (another host, a context, a socket that does not answer) or when a build needs the client's version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import support
from conftest import _engine

from forkdev.core.engine import Engine
from forkdev.core.errors import Failure
from forkdev.core.proc import Runner


class Recording(Runner):
    """The real runner, keeping each argv it ran."""

    def __init__(self) -> None:
        super().__init__(echo=False)
        object.__setattr__(self, "ran", [])

    def __call__(self, argv, **kw):
        self.ran.append(list(argv))
        return super().__call__(argv, **kw)


def versions(run: Recording) -> list[list[str]]:
    return [a for a in run.ran if a[1:2] == ["version"]]


@pytest.fixture
def docker(sessions):
    if "docker" not in os.environ.get("FORKDEV_TEST_ENGINES", "docker,podman").split(","):
        pytest.skip("docker is not among FORKDEV_TEST_ENGINES")
    return _engine("docker")


def client_says(docker: Engine, field: str, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(
        [docker.exe, "version", "--format", f"{{{{.{field}.Version}}}}"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return res.stdout.strip()


def test_the_daemon_is_asked_on_its_socket_and_the_client_only_when_its_version_is_needed(docker, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    run = Recording()
    found = Engine.detect(run, "docker", "host")
    assert versions(run) == [], "the client program was started just to find the daemon"
    assert found.server_version == client_says(docker, "Server")
    assert found.client(run) == client_says(docker, "Client") and found.client(run) == client_says(docker, "Client")
    assert len(versions(run)) == 1, "the client's version is asked once"


def test_a_chosen_context_is_left_to_the_client(docker, monkeypatch, tmp_path):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    made = subprocess.run(
        [docker.exe, "context", "create", "forkdev-test-ctx", "--docker", "host=unix:///var/run/docker.sock"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "forkdev-test-ctx"}))
    run = Recording()
    found = Engine.detect(run, "docker", "host")
    assert [a[1:] for a in versions(run)] == [["version", "--format", "{{json .}}"]]
    assert found.server_version == client_says(docker, "Server")


def test_a_socket_that_answers_an_error_is_left_to_the_client_which_names_it(docker, monkeypatch, tmp_path):
    path = tmp_path / "docker.sock"
    server = support.serve_unix(
        path, lambda conn: conn.sendall(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nboom\n")
    )
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    run = Recording()
    try:
        with pytest.raises(Failure, match=f"DOCKER_HOST=unix://{path}"):
            Engine.detect(run, "docker", "host")
    finally:
        server.close()
    assert len(versions(run)) == 1, "the client was not asked after the socket answered an error"


def test_a_configured_client_program_is_asked_itself(docker, monkeypatch):
    """engine.client may be a wrapper that talks to another daemon: the socket is not asked for it."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    run = Recording()
    found = Engine.detect(run, "docker", "host", docker.exe)
    assert [a[1:] for a in versions(run)] == [["version", "--format", "{{json .}}"]]
    assert found.client_version == client_says(docker, "Client")


class Asked(Runner):
    """A real runner that keeps what it echoed and each argv it started."""

    def __init__(self, dry_run: bool = False) -> None:
        super().__init__(dry_run=dry_run)
        object.__setattr__(self, "ran", [])

    def __call__(self, argv, **kw):
        self.ran.append(list(argv))
        return super().__call__(argv, **kw)


def test_image_inspect_and_load_are_asked_on_the_socket_as_the_client_would_ask_them(docker, monkeypatch, capsys):
    """The answers are the client's own, without starting it: what `docker image inspect` prints (in its list),
    None for an absent image, and a loaded archive under its tag, each request echoed."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_API_VERSION", raising=False)
    os_image = support.ensure_os_image(docker)
    run = Asked()
    found = Engine.detect(run, "docker", "host")
    assert found.socket == "/var/run/docker.sock"
    client = json.loads(support.sh(docker.exe, "image", "inspect", "--", os_image))[0]
    assert found.inspect_image(run, os_image) == client
    assert found.inspect_image(run, "forkdev-test/no-such-image:none") is None
    tag = "forkdev-test/api-load:one"
    support.sh(docker.exe, "tag", os_image, tag)
    archive = subprocess.run([docker.exe, "save", tag], capture_output=True, check=True).stdout
    support.sh(docker.exe, "rmi", tag)
    try:
        loaded = found.load(run, archive)
        assert loaded.ok and tag in loaded.out, loaded.err
        assert json.loads(support.sh(docker.exe, "image", "inspect", "--", tag))[0]["Id"] == client["Id"]
    finally:
        subprocess.run([docker.exe, "rmi", tag], capture_output=True)
    assert run.ran == [], f"the client program was started: {run.ran}"
    echoed = capsys.readouterr().err
    sock = "/var/run/docker.sock"
    assert f"+ docker image inspect -- {os_image}   [GET /images/{os_image}/json on {sock}]\n" in echoed
    assert f"+ docker load --quiet   [POST /images/load?quiet=1 on {sock}]\n" in echoed


def test_an_archive_the_daemon_refuses_is_a_failed_load_with_its_reason(docker, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    found = Engine.detect(Runner(echo=False), "docker", "host")
    assert found.socket
    refused = found.load(Runner(echo=False), b"not a tar archive" * 100)
    assert not refused.ok and refused.reason and "HTTP" not in refused.reason, refused.reason


def test_a_daemon_that_answers_before_it_has_read_the_archive_is_heard(docker, tmp_path):
    """A daemon may refuse a load from its head alone and close the connection while the archive is still on its
    way: its answer is what the load says, not a broken pipe that sends the client program to ask again."""
    said = b'{"message":"archive refused from its head"}'
    answer = b"HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\n\r\n" + said
    path = tmp_path / "d.sock"
    server = support.serve_unix(path, lambda conn: conn.sendall(answer))
    run = Asked()
    try:
        refused = Engine("docker", docker.exe, "", "20.10", "host", str(path)).load(run, b"\0" * (16 << 20))
    finally:
        server.close()
    assert run.ran == [], f"the client program was started: {run.ran}"
    assert not refused.ok and refused.reason == "archive refused from its head", refused.reason


def test_a_dry_run_echoes_the_load_and_sends_nothing(docker, monkeypatch, tmp_path, capsys):
    path = tmp_path / "d.sock"
    seen = []
    server = support.serve_unix(path, lambda conn: seen.append(1))
    try:
        engine = Engine("docker", docker.exe, "", "20.10", "host", str(path))
        res = engine.load(Runner(dry_run=True), b"an archive")
    finally:
        server.close()
    assert res.dry and res.ok and seen == [], "the socket was asked"
    echoed = capsys.readouterr().err
    assert f"+ docker load --quiet   [POST /images/load?quiet=1 on {path}]   [dry-run: not run]" in echoed


def test_a_pinned_api_version_is_asked_for_as_the_client_would(docker, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    os_image = support.ensure_os_image(docker)
    found = Engine.detect(Runner(echo=False), "docker", "host")
    monkeypatch.setenv("DOCKER_API_VERSION", "1.40")
    client = json.loads(support.sh(docker.exe, "image", "inspect", "--", os_image))[0]
    assert found.inspect_image(Runner(echo=False), os_image)["Id"] == client["Id"]
    monkeypatch.setenv("DOCKER_API_VERSION", "1.99")
    with pytest.raises(Failure, match="client version 1.99 is too new"):
        found.inspect_image(Runner(echo=False), os_image)


def test_a_probe_container_goes_with_its_script_even_when_forkdev_is_killed(engine):
    """Engine.python's `run --rm` probes are not claimed for a later sweep (core/owners), and need not be: the
    engine removes each itself (docker's daemon, podman's conmon) when its script ends, even when the process that
    started it, and its client with it, were killed -9."""
    image = f"forkdev-test/probe-kill:{os.getpid()}"
    support.sh(engine.exe, "tag", support.ensure_os_image(engine), image)
    script = (
        "import sys; from forkdev.core.engine import Engine; from forkdev.core.proc import Runner; "
        "e = Engine.detect(Runner(echo=False), sys.argv[1], 'host'); "
        "e.python(Runner(echo=False), sys.argv[2], 'import time; time.sleep(3); print(1)', failure='{why}')"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, engine.kind, image], start_new_session=True)
    ident = support.inspect(engine, image)["Id"]  # podman's ancestor filter knows a local name only as localhost/...

    def listed() -> list[str]:
        return support.sh(engine.exe, "ps", "--all", "--filter", f"ancestor={ident}", "--format", "{{.ID}}").split()

    try:
        deadline = time.monotonic() + 60
        while not listed():
            assert proc.poll() is None and time.monotonic() < deadline, "the probe's container never started"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the probe and its engine client, as the OOM killer ends them
        proc.wait()
        deadline = time.monotonic() + 30
        while listed() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert listed() == [], "the probe's container stayed after its script ended"
    finally:
        for left in listed():
            subprocess.run([engine.exe, "rm", "--force", left], capture_output=True)
        subprocess.run([engine.exe, "rmi", image], capture_output=True)
