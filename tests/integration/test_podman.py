"""The same thin image on podman: the engine is a setting, not an assumption."""

from __future__ import annotations

import json

import pytest
import support

pytestmark = pytest.mark.engine


def test_dev_and_verify_on_podman_with_deletions_and_an_entrypoint(podman, world, fork, invoke):
    entry = '["python3", "-m", "vllm.entrypoints.openai.api_server"]'
    base = support.build_base(podman, world.upstream, world.first, "forkdev-test/vllm-base:podman", entrypoint=entry)
    (fork / "vllm" / "envs.py").write_text("ENVS = 'podman'\n")
    support.git(fork, "rm", "-q", "vllm/logger.py")
    env = {"INVOKE_ENGINE_NAME": "podman"}
    res = invoke("dev", str(fork), "--base", base, "--json", env=env)
    assert res.code == 0, res.err
    out = res.json
    assert support.image_file(podman, out["image"], "/opt/vllm-source/vllm/envs.py") == b"ENVS = 'podman'\n"
    assert support.image_file(podman, out["image"], "/opt/vllm-source/vllm/logger.py") is None
    got = json.loads(support.sh(podman.exe, "image", "inspect", out["image"]))[0]
    was = json.loads(support.sh(podman.exe, "image", "inspect", base))[0]
    assert got["RootFS"]["Layers"][:-1] == was["RootFS"]["Layers"]
    assert got["Config"]["Entrypoint"] == was["Config"]["Entrypoint"]
    assert out["image_id"] == got["Id"] or out["image_id"] == f"sha256:{got['Id']}"
    assert invoke("verify", out["image"], env=env).code == 0
    assert invoke("dev", str(fork), "--base", base, "--json", env=env).json["reused"] is True


def test_podman_push_to_a_loopback_registry(podman, world, fork, invoke, registry):
    base = support.build_base(podman, world.upstream, world.first, "forkdev-test/vllm-base:podman")
    (fork / "vllm" / "envs.py").write_text("ENVS = 'podman push'\n")
    res = invoke(
        "dev",
        str(fork),
        "--base",
        base,
        "--json",
        "--push",
        env={"INVOKE_ENGINE_NAME": "podman", "INVOKE_DEV_REPOSITORY": f"{registry.host}/podman-dev"},
    )
    assert res.code == 0, res.err
    assert registry.tags("podman-dev") == [res.json["image"].split(":")[-1]]
