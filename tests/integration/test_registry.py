"""The registry client against a real registry (Debian's docker-registry on loopback, with and without auth), and
against a loopback server injecting the faults a real registry will not produce on demand: 401, 429, 500, and
one that accepts connections and never answers. A fault is always an error, never "absent", in bounded time."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
import support

from forkdev.core.errors import Failure
from forkdev.core.proc import Runner
from forkdev.core.registry import Policy, Registry

FAST = Policy(timeout=8, retries=2)


def tiny_image(engine, ref: str, tmp_path) -> str:
    """A one-file image (imported, so it needs no base) for push and tag tests."""
    root = tmp_path / "tiny"
    root.mkdir(exist_ok=True)
    (root / "hello.txt").write_text("hello\n")
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
    support.sh(engine.exe, "import", "-", ref, input=tar)
    return ref


@pytest.mark.engine
def test_a_tag_exists_only_once_pushed_and_delete_removes_it(engine, registry, tmp_path):
    ref = tiny_image(engine, f"{registry.host}/tiny-{engine.kind}:one", tmp_path)
    tls = ["--tls-verify=false"] if engine.kind == "podman" else []
    client = Registry(registry.host, FAST, Runner(echo=False))
    assert client.exists(f"tiny-{engine.kind}", "one") is False
    support.sh(engine.exe, "push", *tls, ref)
    assert client.exists(f"tiny-{engine.kind}", "one") is True
    assert client.tags(f"tiny-{engine.kind}") == ["one"]
    assert client.exists(f"tiny-{engine.kind}", "two") is False
    assert client.delete(f"tiny-{engine.kind}", "one") is True
    assert client.exists(f"tiny-{engine.kind}", "one") is False
    assert client.tags("never-pushed") == []


def test_a_registry_that_wants_a_login_is_an_error_until_there_is_one(tmp_path, monkeypatch):
    (tmp_path / "reg").mkdir()
    reg = support.Registry(tmp_path / "reg", users={"forkdev": "s3cret"})
    try:
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        with pytest.raises(Failure, match=rf"registry {reg.host} answered 401 .*docker login {reg.host}"):
            Registry(reg.host, FAST, Runner(echo=False)).exists("x", "y")
        (tmp_path / "docker").mkdir()
        auth = base64.b64encode(b"forkdev:s3cret").decode()
        (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        assert Registry(reg.host, FAST, Runner(echo=False)).exists("x", "y") is False
    finally:
        reg.stop()


@pytest.mark.parametrize(
    ("status", "headers", "words"),
    [
        (500, {}, ["answered 500", "after 3 attempts"]),
        (503, {}, ["answered 503", "after 3 attempts"]),
        (429, {"Retry-After": "1"}, ["answered 429", "after 3 attempts"]),
    ],
)
def test_busy_or_broken_registries_are_retried_a_bounded_number_of_times_then_an_error(status, headers, words, capfd):
    with support.FaultyRegistry(status, headers) as fault:
        start = time.monotonic()
        with pytest.raises(Failure) as exc:
            Registry(fault.host, FAST, Runner(echo=False)).exists("vllm", "nightly")
        took = time.monotonic() - start
        assert fault.requests == 3
    for w in words:
        assert w in str(exc.value)
    assert took < FAST.timeout + 2
    assert capfd.readouterr().err.count(f"registry {fault.host} answered {status}; retry") == 2


def test_a_401_that_no_login_fixes_is_an_error_at_once():
    with support.FaultyRegistry(401, {"WWW-Authenticate": 'Basic realm="x"'}) as fault:
        with pytest.raises(Failure, match="answered 401 .*not logged in"):
            Registry(fault.host, FAST, Runner(echo=False)).exists("vllm", "nightly")
        assert fault.requests <= 2, "one try, one with credentials if any: no retries"


def test_a_registry_that_never_answers_costs_at_most_the_configured_time():
    with support.FaultyRegistry(200, hang=True) as fault:
        start = time.monotonic()
        with pytest.raises(Failure, match="did not answer"):
            Registry(fault.host, Policy(timeout=3, retries=5), Runner(echo=False)).exists("vllm", "nightly")
        assert time.monotonic() - start < 6


@pytest.mark.engine
@pytest.mark.parametrize("status", [401, 429, 500])
def test_dev_push_to_a_failing_registry_says_what_it_answered_and_stops_in_bounded_time(world, fork, tool, status):
    (fork / "vllm" / "envs.py").write_text(f"ENVS = {status}\n")
    with support.FaultyRegistry(status, {"WWW-Authenticate": 'Basic realm="x"'} if status == 401 else {}) as fault:
        start = time.monotonic()
        res = tool(
            "dev",
            str(fork),
            "--base",
            world.editable,
            "--push",
            "--tag",
            f"{fault.host}/vllm-dev:x",
            env={"INVOKE_REGISTRY_RETRIES": "1", "INVOKE_REGISTRY_TIMEOUT": "6"},
        )
        took = time.monotonic() - start
    assert res.code != 0 and "Traceback" not in res.err
    assert f"registry {fault.host} answered {status}" in res.last_error
    assert took < 20
    if status != 401:
        assert f"answered {status}; retry 1/1" in res.err
