"""`invoke dev`, `invoke build` and `invoke verify`, end to end on the real engine, real git, a real registry."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import support

pytestmark = pytest.mark.engine

EDIT = "vllm/envs.py"  # exists in the vLLM tree


def committed(res) -> bool:
    """Whether the run committed a layer (its echoed commands say so)."""
    return re.search(r"^\+ \S+ commit ", res.err, re.M) is not None


def inspect(engine, ref: str) -> dict:
    return json.loads(support.sh(engine.exe, "image", "inspect", ref))[0]


def sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def user_work(fork):
    """A commit, an uncommitted edit, an untracked file, a deletion, and an ignored stale .so."""
    (fork / "vllm" / "sampling_params.py").write_text("SAMPLING = 'committed'\n")
    support.commit_all(fork, "fork: a committed change")
    (fork / EDIT).write_text("ENVS = 'uncommitted'\n")
    (fork / "vllm" / "brand_new.py").write_text("NEW = 'untracked'\n")
    support.git(fork, "rm", "-q", "vllm/logger.py")
    (fork / "vllm" / "_C.abi3.so").write_bytes(b"stale editable build")  # ignored: must never ship


def test_dev_ships_the_checkout_state_in_one_layer_over_an_editable_base(engine, world, fork, invoke):
    user_work(fork)
    res = invoke("dev", str(fork), "--base", world.editable, "--json")
    assert res.code == 0, res.err
    out = res.json
    assert out["reused"] is False and out["dirty"] is True
    assert out["revision"] == support.git(fork, "rev-parse", "HEAD")
    assert out["base_revision"] == world.first
    assert out["image"].startswith(f"forkdev/vllm-dev:local-{out['revision'][:12]}-dirty-")

    image, base = out["image"], world.editable
    src = "/opt/vllm-source/"
    assert support.image_file(engine, image, src + "vllm/sampling_params.py") == b"SAMPLING = 'committed'\n"
    assert support.image_file(engine, image, src + EDIT) == b"ENVS = 'uncommitted'\n"
    assert support.image_file(engine, image, src + "vllm/brand_new.py") == b"NEW = 'untracked'\n"
    assert support.image_file(engine, image, src + "vllm/logger.py") is None
    so = src + "vllm/_C.abi3.so"
    assert sha(support.image_file(engine, image, so)) == sha(support.image_file(engine, base, so)) is not None

    got, was = inspect(engine, image), inspect(engine, base)
    assert got["RootFS"]["Layers"][:-1] == was["RootFS"]["Layers"], "exactly one layer on top of the base"
    assert got["Config"]["Entrypoint"] == was["Config"]["Entrypoint"]
    labels = got["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == out["revision"]
    assert labels["org.opencontainers.image.base.name"] == base
    assert labels["org.opencontainers.image.base.digest"] == was["Id"]
    assert labels["org.opencontainers.image.created"]

    layer_bytes = got["Size"] - was["Size"]
    shipped = sum(
        len(p.read_bytes()) for p in [fork / "vllm/sampling_params.py", fork / EDIT, fork / "vllm/brand_new.py"]
    )
    assert layer_bytes <= shipped * 1.05 + 64 * 1024, "the layer holds only the changed files and the proof"

    ok = invoke("verify", image, "--commit", out["revision"][:10])
    assert ok.code == 0, ok.err
    wrong = invoke("verify", image, "--commit", world.later)
    assert wrong.code != 0 and "not match" in wrong.last_error


def test_an_unchanged_rerun_reuses_the_image_without_building(world, fork, invoke):
    user_work(fork)
    first = invoke("dev", str(fork), "--base", world.editable, "--json")
    again = invoke("dev", str(fork), "--base", world.editable, "--json")
    assert first.code == again.code == 0, again.err
    assert again.json["reused"] is True
    assert again.json["image_id"] == first.json["image_id"]
    assert not committed(again) and committed(first)
    (fork / EDIT).write_text("ENVS = 'edited again'\n")
    third = invoke("dev", str(fork), "--base", world.editable, "--json")
    assert third.json["reused"] is False and third.json["image"] != first.json["image"]


def test_a_site_packages_base_gets_package_files_only(engine, world, fork, invoke):
    (fork / "vllm" / "sampling_params.py").write_text("SAMPLING = 'site'\n")
    (fork / "tests" / "test_mine.py").write_text("def test_mine():\n    pass\n")
    res = invoke("dev", str(fork), "--base", world.site, "--json")
    assert res.code == 0, res.err
    out = res.json
    assert out["skipped"] == ["tests/test_mine.py"]
    path = f"{support.SITE}/vllm/sampling_params.py"
    assert support.image_file(engine, out["image"], path) == b"SAMPLING = 'site'\n"
    assert inspect(engine, out["image"])["Config"]["Entrypoint"][0] == "python3"
    assert invoke("verify", out["image"]).code == 0


def test_native_changes_are_refused_unless_forced(engine, world, fork, invoke):
    (fork / "csrc" / "new_kernel.cu").parent.mkdir(exist_ok=True)
    (fork / "csrc" / "new_kernel.cu").write_text("__global__ void k() {}\n")
    (fork / "setup.py").write_text("# changed\n")
    refused = invoke("dev", str(fork), "--base", world.editable, "--json")
    assert refused.code != 0
    assert "csrc/new_kernel.cu" in refused.last_error and "setup.py" in refused.last_error
    assert "invoke nightly" in refused.last_error and "--force" in refused.last_error
    assert refused.out == "" and "Traceback" not in refused.err
    assert not committed(refused), "nothing was built"
    forced = invoke("dev", str(fork), "--base", world.editable, "--force", "--json")
    assert forced.code == 0, forced.err


def test_dry_run_shows_the_plan_and_changes_nothing(engine, world, fork, invoke):
    (fork / EDIT).write_text("ENVS = 'dry'\n")
    images = lambda: set(support.sh(engine.exe, "images", "-a", "-q", "--no-trunc").split())  # noqa: E731
    before = images()
    res = invoke("dev", str(fork), "--base", world.editable, "--dry-run", "--json")
    assert res.code == 0, res.err
    assert res.json["dry_run"] is True and res.json["image_id"] is None
    assert "/opt/vllm-source/vllm/envs.py" in res.err and "[dry-run: not run]" in res.err
    assert images() == before


def test_push_and_extra_tags_reach_a_real_registry(engine, world, fork, invoke, registry):
    (fork / EDIT).write_text("ENVS = 'pushed'\n")
    repo = f"{registry.host}/vllm-dev"
    res = invoke(
        "dev",
        str(fork),
        "--base",
        world.editable,
        "--json",
        "--push",
        "--tag",
        f"{repo}:mine",
        env={"INVOKE_DEV_REPOSITORY": repo},
    )
    assert res.code == 0, res.err
    tag = res.json["image"].split(":")[-1]
    assert registry.tags("vllm-dev") == sorted(["mine", tag])


def test_build_makes_the_thin_image_of_an_upstream_commit(engine, world, invoke):
    res = invoke("build", world.later[:10], "--base", world.editable, "--upstream", str(world.upstream), "--json")
    assert res.code == 0, res.err
    out = res.json
    assert out["revision"] == world.later and out["dirty"] is False
    got = support.image_file(engine, out["image"], "/opt/vllm-source/vllm/sampling_params.py")
    assert got == b"SAMPLING = 'upstream later'\n"
    assert invoke("verify", out["image"], "--commit", world.later, "--repo", str(world.upstream)).code == 0


def test_verify_catches_an_image_whose_files_were_changed_after_the_fact(engine, world, fork, invoke):
    (fork / EDIT).write_text("ENVS = 'honest'\n")
    image = invoke("dev", str(fork), "--base", world.editable, "--json").json["image"]
    name = "forkdev-test-tamper"
    support.sh(
        engine.exe,
        "run",
        "--name",
        name,
        "--network",
        "none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "echo tampered >> /opt/vllm-source/vllm/envs.py",
    )
    try:
        support.sh(engine.exe, "commit", name, "forkdev-test/tampered:1")
    finally:
        support.sh(engine.exe, "rm", "-f", name)
    res = invoke("verify", "forkdev-test/tampered:1")
    assert res.code != 0
    assert "/opt/vllm-source/vllm/envs.py differs" in res.err


# ---- bad input: one line naming the input and the remedy, non-zero, no traceback, nothing built -------------
def assert_one_line_error(res, *words):
    assert res.code != 0
    assert "Traceback" not in res.err
    assert res.last_error.startswith("error: "), res.err
    for w in words:
        assert w in res.last_error, (w, res.last_error)


def test_a_path_that_is_not_a_checkout(invoke, tmp_path):
    assert_one_line_error(invoke("dev", str(tmp_path)), str(tmp_path), "not a git checkout")
    assert_one_line_error(invoke("dev", str(tmp_path / "nope")), "does not exist")


def test_an_unknown_ref(world, fork, invoke):
    assert_one_line_error(invoke("dev", str(fork), "--ref", "no-such-ref", "--base", world.editable), "'no-such-ref'")


def test_an_unknown_sha_for_build(world, invoke):
    assert_one_line_error(invoke("build", "0123456789abcdef", "--upstream", str(world.upstream)), "'0123456789abcdef'")


def test_a_missing_base_image(fork, invoke):
    res = invoke("dev", str(fork))
    # The default: the upstream's published image of the merge-base, then the local nightly.
    assert_one_line_error(res, "vllm/vllm-openai:nightly-", "forkdev/vllm:nightly", "invoke nightly", "--base")


def test_a_base_without_a_revision_label(engine, world, fork, invoke):
    support.build_base(engine, world.upstream, world.first, "forkdev-test/vllm-base:unlabelled", label="")
    assert_one_line_error(
        invoke("dev", str(fork), "--base", "forkdev-test/vllm-base:unlabelled"),
        "forkdev-test/vllm-base:unlabelled",
        "revision label",
    )


def test_a_base_commit_missing_from_the_checkout(engine, world, tmp_path, invoke):
    old = tmp_path / "old"
    support.sh("git", "clone", "-q", world.upstream, old)
    (world.upstream / "vllm" / "unseen.py").write_text("UNSEEN = 1\n")
    unseen = support.commit_all(world.upstream, "upstream: a commit the clone lacks")
    base = support.build_base(engine, world.upstream, unseen, "forkdev-test/vllm-base:unseen")
    res = invoke("dev", str(old), "--base", base)
    assert_one_line_error(res, unseen[:12], "git -C", "fetch")


def test_no_engine_running(fork, invoke):
    res = invoke("dev", str(fork), env={"INVOKE_ENGINE_NAME": "docker", "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert_one_line_error(res, "no container engine answers")
