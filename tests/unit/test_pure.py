"""Pure pieces as data: profiles, path mapping, the layer tarball, registry hosts, engine capabilities."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from forkdev.core import config, engine, thin
from forkdev.core.base import Location, revision_of
from forkdev.core.errors import Failure
from forkdev.core.proc import Runner


@pytest.mark.parametrize(
    ("path", "native"),
    [
        ("csrc/attention/kernel.cu", True),
        ("CMakeLists.txt", True),
        ("cmake/utils.cmake", True),
        ("setup.py", True),
        ("requirements/cuda.txt", True),
        ("vllm/setup.py", False),
        ("vllm/engine/llm_engine.py", False),
        ("docs/csrc/readme.md", False),
        ("CMakeLists.txt.bak", False),
    ],
)
def test_vllm_native_paths(path, native):
    assert config.TARGETS["vllm"].is_native(path) is native


def test_every_target_has_an_upstream_and_a_package_path():
    for t in config.TARGETS.values():
        assert t.upstream.startswith("https://") and t.package_path.endswith(t.package)


def test_unknown_target_is_one_sentence_with_the_choices():
    with pytest.raises(Failure, match="unknown target 'tgi'; choose one of mlc-llm, sglang, vllm"):
        config.target("tgi")


def test_an_editable_tree_maps_every_path_and_site_packages_only_the_package():
    tree = Location("/opt/vllm-source/vllm", "/opt/vllm-source")
    site = Location("/usr/lib/python3/dist-packages/vllm", None)
    assert tree.image_path("tests/test_x.py", "vllm") == "/opt/vllm-source/tests/test_x.py"
    assert site.image_path("vllm/a/b.py", "vllm") == "/usr/lib/python3/dist-packages/vllm/a/b.py"
    assert site.image_path("tests/test_x.py", "vllm") is None
    assert site.image_path("vllm_other/x.py", "vllm") is None


@pytest.mark.parametrize(
    ("package_dir", "package_path", "root"),
    [
        ("/opt/vllm-source/vllm", "vllm", "/opt/vllm-source"),
        ("/usr/local/lib/python3.12/dist-packages/vllm", "vllm", None),
        ("/usr/lib/python3/site-packages/vllm", "vllm", None),
        ("/sgl-workspace/sglang/python/sglang", "python/sglang", "/sgl-workspace/sglang"),
        ("/usr/local/lib/python3.10/dist-packages/sglang", "python/sglang", None),
        ("/vllm", "vllm", "/"),
    ],
)
def test_where_the_repository_lands_is_read_from_the_package_directory(package_dir, package_path, root):
    assert Location.of(package_dir, package_path).root == root


def test_revision_comes_from_oci_label_then_vllm_label_then_env():
    assert revision_of({"Config": {"Labels": {"org.opencontainers.image.revision": "a"}}}) == "a"
    assert revision_of({"Config": {"Labels": {"ai.vllm.build.commit": "b"}}}) == "b"
    assert revision_of({"Config": {"Labels": None, "Env": ["VLLM_BUILD_COMMIT=c", "X=1"]}}) == "c"
    assert revision_of({"Config": {}}) is None


def test_the_layer_tar_is_root_owned_keeps_modes_and_symlinks_and_carries_the_proof():
    plan = thin.Plan(
        "r" * 40,
        False,
        [
            thin.Entry("vllm/a.py", "/opt/s/vllm/a.py", 0o100644, b"A = 1\n"),
            thin.Entry("tools/run.sh", "/opt/s/tools/run.sh", 0o100755, b"#!/bin/sh\n"),
            thin.Entry("vllm/link.py", "/opt/s/vllm/link.py", 0o120000, b"a.py"),
        ],
        ["/opt/s/vllm/gone.py"],
        [],
        [],
        "h",
    )
    with tarfile.open(fileobj=io.BytesIO(thin.layer_tar(plan, {"commit": "r"}))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "opt/s/vllm/a.py",
            "opt/s/tools/run.sh",
            "opt/s/vllm/link.py",
            thin.PROOF_PATH.lstrip("/"),
        }
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        assert members["opt/s/tools/run.sh"].mode == 0o755 and members["opt/s/vllm/a.py"].mode == 0o644
        assert members["opt/s/vllm/link.py"].issym() and members["opt/s/vllm/link.py"].linkname == "a.py"
        proof = json.load(tar.extractfile(thin.PROOF_PATH.lstrip("/")))
        assert proof == {"commit": "r"}


def test_the_image_key_changes_with_any_input():
    plan = thin.Plan("r" * 40, True, [], [], [], [], "hash1")
    base = type("B", (), {"id": "sha256:1"})()
    other = type("B", (), {"id": "sha256:2"})()
    keys = {plan.key(base), plan.key(other), thin.Plan("r" * 40, True, [], [], [], [], "hash2").key(base)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("ref", "loopback"),
    [
        ("127.0.0.1:5000/x:y", True),
        ("localhost:5000/x", True),
        ("[::1]:5000/x", False),
        ("ghcr.io/a/b:c", False),
        ("vllm/vllm-openai:nightly", False),
        ("plain", False),
    ],
)
def test_loopback_registries(ref, loopback):
    assert engine._loopback_registry(ref) is loopback


def test_docker_capabilities_follow_the_client_version():
    class NoBuildx(Runner):
        def __call__(self, argv, **kw):
            return type("R", (), {"ok": False})()

    info = {"Client": {"Version": "28.2.2"}, "Server": {"Version": "20.10.24"}}
    assert engine.Engine._from_version(NoBuildx(), "docker", "docker", info, "host").buildkit is False
    info["Client"]["Version"] = "20.10.24+dfsg1"
    assert engine.Engine._from_version(NoBuildx(), "docker", "docker", info, "host").buildkit is True
    assert engine.Engine._from_version(NoBuildx(), "podman", "podman", info, "host").buildkit is True


def test_dry_run_skips_commands_that_change_things_but_runs_probes(capsys):
    run = Runner(dry_run=True)
    assert run(["false"]).dry is True
    assert run(["echo", "probe"], mutates=False).out == "probe"
    err = capsys.readouterr().err
    assert "+ false   [dry-run: not run]" in err and "+ echo probe" in err


def test_a_missing_program_and_a_failed_command_are_one_sentence():
    with pytest.raises(Failure, match="'no-such-program-x' is not installed or not on PATH"):
        Runner(echo=False)(["no-such-program-x"])
    with pytest.raises(Failure, match=r"'sh -c 'echo boom >&2; exit 3'' failed with exit 3: boom"):
        Runner(echo=False)(["sh", "-c", "echo boom >&2; exit 3"])


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (
            b"fatal: 'x' does not appear to be a git repository\nfatal: Could not read\n\nand the repository exists.\n",
            "fatal: 'x' does not appear to be a git repository",
        ),
        (b"warning: a\nerror: pathspec 'y' did not match\n", "error: pathspec 'y' did not match"),
        (b"Cannot connect to the Docker daemon\n", "Cannot connect to the Docker daemon"),
        (b"", "exit status 1, no output"),
    ],
)
def test_the_reason_of_a_failure_is_the_line_that_says_why(stderr, reason):
    from forkdev.core.proc import Result

    assert Result(("git",), 1, b"", stderr).reason == reason
