"""`invoke dev`, `invoke build` and `invoke verify`, end to end on the real engines (each test runs on docker and
on podman), real git and a real registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.engine

EDIT = "vllm/envs.py"  # exists in the vLLM tree
SRC = "/opt/vllm-source/"


def loaded(res) -> bool:
    """Whether the run handed the engine a new image (its echoed commands say so)."""
    return re.search(r"^\+ \S+ (load|build) ", res.err, re.M) is not None


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


def test_dev_ships_the_checkout_state_in_one_layer_over_an_editable_base(engine, world, fork, tool):
    user_work(fork)
    res = tool("dev", str(fork), "--base", world.editable, "--json")
    assert res.code == 0, res.err
    out = res.json
    assert out["reused"] is False and out["dirty"] is True
    assert out["revision"] == support.git(fork, "rev-parse", "HEAD")
    assert out["base_revision"] == world.first
    assert out["image"].startswith(f"forkdev-test/vllm-dev:local-{out['revision'][:12]}-dirty-")
    assert not re.search(r"^\+ \S+ (create|commit|start|cp) ", res.err, re.M), "no container on this path"
    runs = re.findall(r"^\+ \S+ run .*", res.err, re.M)
    assert all("--rm" in r and "--entrypoint python3" in r for r in runs), "only the base's one-time probe runs"

    image, base = out["image"], world.editable
    assert support.image_file(engine, image, SRC + "vllm/sampling_params.py") == b"SAMPLING = 'committed'\n"
    assert support.image_file(engine, image, SRC + EDIT) == b"ENVS = 'uncommitted'\n"
    assert support.image_file(engine, image, SRC + "vllm/brand_new.py") == b"NEW = 'untracked'\n"
    assert support.image_file(engine, image, SRC + "vllm/logger.py") is None
    so = SRC + "vllm/_C.abi3.so"
    assert sha(support.image_file(engine, image, so)) == sha(support.image_file(engine, base, so)) is not None

    got, was = support.inspect(engine, image), support.inspect(engine, base)
    assert got["RootFS"]["Layers"][:-1] == was["RootFS"]["Layers"], "exactly one layer on top of the base"
    assert out["image_id"].split(":")[-1] == got["Id"].split(":")[-1]
    for key in ("Entrypoint", "Cmd", "User", "Env", "WorkingDir"):
        assert got["Config"].get(key) == was["Config"].get(key), key
    labels = got["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == out["revision"]
    assert labels["org.opencontainers.image.base.name"] == base
    assert labels["org.opencontainers.image.created"]

    layer_bytes = got["Size"] - was["Size"]
    shipped = sum(
        len(p.read_bytes()) for p in [fork / "vllm/sampling_params.py", fork / EDIT, fork / "vllm/brand_new.py"]
    )
    assert layer_bytes <= shipped * 1.05 + 64 * 1024, "the layer holds only the changed files and the proof"

    ok = tool("verify", image, "--commit", out["revision"][:10], "--repo", str(fork))
    assert ok.code == 0, ok.err
    wrong = tool("verify", image, "--commit", world.later)
    assert wrong.code != 0 and "not match" in wrong.last_error
    (fork / EDIT).write_text("ENVS = 'edited after the image'\n")
    stale = tool("verify", image, "--repo", str(fork))
    assert stale.code != 0 and f"{EDIT} differs from the checkout's" in stale.err
    (fork / EDIT).write_text("ENVS = 'uncommitted'\n")
    (fork / "vllm" / "logger.py").write_text("# back again\n")
    restored = tool("verify", image, "--repo", str(fork))
    assert restored.code != 0
    assert "warning: vllm/logger.py was deleted in the image but is in the checkout" in restored.err.splitlines()
    assert f"{EDIT} differs" not in restored.err


def test_a_base_without_entrypoint_or_cmd_keeps_them_null_and_runs_any_command(engine, world, fork, tool):
    (fork / EDIT).write_text("ENVS = 'bare base'\n")
    res = tool("dev", str(fork), "--base", world.bare, "--json")
    assert res.code == 0, res.err
    got = support.inspect(engine, res.json["image"])["Config"]
    assert got.get("Entrypoint") is None and got.get("Cmd") is None
    printed = support.in_image(engine, res.json["image"], "python3", "-c", "import vllm.envs as e; print(e.ENVS)")
    assert printed == "bare base"


def test_a_non_root_base_keeps_its_user_workdir_and_entrypoint_and_deletions_still_apply(engine, world, fork, tool):
    (fork / EDIT).write_text("ENVS = 'as vllm'\n")
    support.git(fork, "rm", "-q", "vllm/logger.py")
    res = tool("dev", str(fork), "--base", world.user, "--json")
    assert res.code == 0, res.err
    image = res.json["image"]
    got, was = support.inspect(engine, image)["Config"], support.inspect(engine, world.user)["Config"]
    assert got["User"] == was["User"] == "vllm" and got["WorkingDir"] == "/opt/vllm-source"
    assert got["Entrypoint"] == was["Entrypoint"]
    whoami = support.in_image(
        engine, image, "-c", "import os, vllm.envs as e; print(os.getuid(), e.ENVS)", entrypoint="python3"
    )
    assert whoami == "1000 as vllm", "the base's user reads the shipped file"
    assert support.image_file(engine, image, SRC + "vllm/logger.py") is None
    assert tool("verify", image).code == 0


def test_special_files_ship_exactly(engine, world, fork, tool):
    """A symlink, an executable, names with spaces and non-ASCII characters, a new nested package."""
    (fork / "vllm" / "dir with space").mkdir()
    (fork / "vllm" / "dir with space" / "ünï cödé.py").write_text("X = 'ü'\n")
    (fork / "vllm" / "link.py").symlink_to("envs.py")
    tool_script = fork / "tools" / "forkdev-run.sh"
    tool_script.parent.mkdir(exist_ok=True)
    tool_script.write_text("#!/bin/sh\necho run\n")
    tool_script.chmod(0o755)
    res = tool("dev", str(fork), "--base", world.user, "--json")
    assert res.code == 0, res.err
    image = res.json["image"]
    script = (
        "import os, stat; p='/opt/vllm-source/';"
        "print(os.readlink(p+'vllm/link.py'), oct(os.stat(p+'tools/forkdev-run.sh').st_mode & 0o777),"
        "open(p+'vllm/dir with space/ünï cödé.py').read().strip(),"
        "oct(os.stat(p+'vllm/dir with space').st_mode & 0o777))"
    )
    assert support.in_image(engine, image, "-c", script, entrypoint="python3") == "envs.py 0o755 X = 'ü' 0o755"
    assert tool("verify", image).code == 0


def test_stale_bytecode_of_the_base_never_runs_for_a_changed_module(engine, world, fork, tool):
    """The base byte-compiled envs.py; the fork changes it without changing its size, and the layer's files carry
    the base's own mtime (SOURCE_DATE_EPOCH): without the layer's whiteouts Python would take the old .pyc."""
    old = (fork / EDIT).read_bytes()
    assert old.startswith(b"# vllm/")
    new = b"NEWS=1#" + old[len(b"# vllm/") :]  # the first line was a comment; now it also defines NEWS
    assert len(new) == len(old) and new != old
    (fork / EDIT).write_bytes(new)
    epoch = support.git(fork, "show", "-s", "--format=%ct", world.first)
    res = tool("dev", str(fork), "--base", world.bare, "--json", env={"SOURCE_DATE_EPOCH": epoch})
    assert res.code == 0, res.err
    image = res.json["image"]
    pyc = support.image_file(engine, world.bare, SRC + "vllm/__pycache__/envs.cpython-311.pyc")
    assert pyc is not None, "the base has bytecode for the module"
    recorded_mtime, recorded_size = struct.unpack("<II", pyc[8:16])
    stat = support.in_image(
        engine,
        image,
        "-c",
        f"import os; s=os.stat('{SRC}{EDIT}'); print(int(s.st_mtime), s.st_size)",
        entrypoint="python3",
    )
    assert stat == f"{recorded_mtime} {recorded_size}", "the old .pyc would pass as fresh"
    assert support.in_image(engine, image, "python3", "-c", "import vllm.envs as e; print(e.NEWS)") == "1"


def test_the_same_state_gives_the_same_image_id_twice_and_from_a_fresh_clone_elsewhere(
    engine, world, fork, tool, tmp_path
):
    (fork / "vllm" / "sampling_params.py").write_text("SAMPLING = 'reproducible'\n")
    support.commit_all(fork, "fork: one commit")
    first = tool("dev", str(fork), "--base", world.editable, "--json")
    assert first.code == 0, first.err
    subprocess.run([engine.exe, "image", "rm", first.json["image"]], capture_output=True, check=True)
    again = tool("dev", str(fork), "--base", world.editable, "--json")
    assert again.json["reused"] is False and again.json["image_id"] == first.json["image_id"]
    elsewhere = tmp_path / "elsewhere" / "checkout"
    support.sh("git", "clone", "-q", "--branch", "dev", fork, elsewhere)
    subprocess.run([engine.exe, "image", "rm", first.json["image"]], capture_output=True, check=True)
    # Another machine: its own cache (the base is asked afresh) and another time zone (the docker client shows
    # the base's history in local time, which the new image's config repeats).
    far = {"INVOKE_CACHE_DIR": str(tmp_path / "elsewhere" / "cache"), "TZ": "Asia/Kolkata"}
    clone = tool("dev", str(elsewhere), "--base", world.editable, "--json", cwd=tmp_path, env=far)
    assert clone.code == 0, clone.err
    assert clone.json["image_id"] == first.json["image_id"]


def test_a_base_pushed_meanwhile_gives_the_same_image_id(engine, world, fork, tool, registry):
    """A push (or a pull) gives the base a registry digest; how it reached the machine is no part of the state."""
    base = f"{registry.host}/{engine.kind}-base:digest"
    support.sh(engine.exe, "tag", world.editable, base)
    try:
        (fork / EDIT).write_text("ENVS = 'the same base, pushed'\n")
        before = tool("dev", str(fork), "--base", base, "--json")
        assert before.code == 0, before.err
        digests = support.inspect(engine, base).get("RepoDigests") or []
        support.sh(engine.exe, "push", *(["--tls-verify=false"] if engine.kind == "podman" else []), base)
        if engine.kind == "docker":
            assert not digests and support.inspect(engine, base).get("RepoDigests"), "the push gave it a digest"
        subprocess.run([engine.exe, "image", "rm", before.json["image"]], capture_output=True, check=True)
        after = tool("dev", str(fork), "--base", base, "--json")
        assert after.code == 0, after.err
        assert after.json["reused"] is False and after.json["image_id"] == before.json["image_id"]
        labels = support.inspect(engine, after.json["image"])["Config"]["Labels"]
        assert labels["dev.forkdev.base.id"] == after.json["base_id"]
        assert "org.opencontainers.image.base.digest" not in labels, "no registry digest the base may lack"
    finally:
        subprocess.run([engine.exe, "image", "rm", base], capture_output=True)


def test_an_engine_that_refuses_the_archive_gets_the_same_content_through_its_builder(
    engine, world, fork, tool, tmp_path
):
    said = "Error: this engine loads no partial archives"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / engine.kind).write_text(
        f'#!/bin/sh\nif [ "$1" = load ]; then echo "{said}" >&2; exit 1; fi\nexec {engine.exe} "$@"\n'
    )
    (shim / engine.kind).chmod(0o755)
    env, proxy = {"PATH": f"{shim}:{os.environ['PATH']}"}, None
    if engine.socket:  # docker's daemon is asked on its socket: there, it answers the load with its error

        def refuse(data: bytes) -> bytes | None:
            if not data.startswith(b"POST ") or b"/images/load" not in data.split(b"\r\n")[0]:
                return None
            error = json.dumps({"errorDetail": {"message": said}, "error": said}).encode()
            return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + error + b"\n"

        proxy = support.forward_unix(tmp_path / "d.sock", engine.socket, refuse)
        env["DOCKER_HOST"] = f"unix://{tmp_path / 'd.sock'}"
    (fork / EDIT).write_text("ENVS = 'fallback'\n")
    support.git(fork, "rm", "-q", "vllm/logger.py")
    try:
        res = tool("dev", str(fork), "--base", world.bare, "--json", env=env)
    finally:
        if proxy:
            proxy.close()
    assert res.code == 0, res.err
    assert res.err.count("refused the image archive (Error: this engine loads no partial archives)") == 1
    image = res.json["image"]
    got = support.inspect(engine, image)["Config"]
    assert got.get("Entrypoint") is None and got.get("Cmd") is None, "null stays null on the fallback too"
    assert support.in_image(engine, image, "python3", "-c", "import vllm.envs as e; print(e.ENVS)") == "fallback"
    assert support.image_file(engine, image, SRC + "vllm/logger.py") is None
    assert tool("verify", image).code == 0


def test_an_unchanged_rerun_reuses_the_image_without_building(world, fork, tool):
    user_work(fork)
    first = tool("dev", str(fork), "--base", world.editable, "--json")
    again = tool("dev", str(fork), "--base", world.editable, "--json")
    assert first.code == again.code == 0, again.err
    assert again.json["reused"] is True
    assert again.json["image_id"] == first.json["image_id"]
    assert not loaded(again) and loaded(first)
    (fork / EDIT).write_text("ENVS = 'edited again'\n")
    third = tool("dev", str(fork), "--base", world.editable, "--json")
    assert third.json["reused"] is False and third.json["image"] != first.json["image"]


def test_an_edit_is_written_without_asking_for_its_tag_and_going_back_reuses_the_image(world, fork, tool):
    (fork / EDIT).write_text("ENVS = 'state one'\n")
    one = tool("dev", str(fork), "--base", world.editable, "--json")
    (fork / EDIT).write_text("ENVS = 'state two'\n")
    two = tool("dev", str(fork), "--base", world.editable, "--json")
    assert one.code == two.code == 0, two.err
    asked = re.findall(r"^\+ \S+ image inspect -- (\S+)(?:   \[GET \S+ on \S+\])?$", two.err, re.M)
    assert asked == [world.editable], "a new state's tag is not asked for: only the base is inspected"
    (fork / EDIT).write_text("ENVS = 'state one'\n")
    back = tool("dev", str(fork), "--base", world.editable, "--json")
    assert back.code == 0, back.err
    assert back.json["image"] == one.json["image"] and back.json["image_id"] == one.json["image_id"]
    assert back.json["reused"] is True and not loaded(back), "a state this checkout made lately is reused"


@pytest.mark.parametrize("ref", [None, "dev"], ids=["working-tree", "ref"])
def test_work_done_while_the_base_is_looked_up_is_shipped_and_labelled_as_it_is(
    engine, world, fork, tool, tmp_path, ref
):
    """The checkout is read after the base is known, in one window: an edit (or a commit to --ref's branch) made
    while the engine answers is in the image and in its labels alike."""
    shim, once = tmp_path / "bin", tmp_path / "once"
    shim.mkdir()
    edit = f"printf \"ENVS = 'meanwhile'\\n\" > {fork / EDIT}"
    if ref:
        edit += f" && git -C {fork} -c user.name=t -c user.email=t@x commit -qam meanwhile"
    proxy = None
    if engine.socket:  # docker's daemon is asked on its socket: the edit is made as the request for the base passes

        def meanwhile(data: bytes) -> None:
            if data.startswith(b"GET ") and b"/images/" in data.split(b"\r\n")[0] and not once.exists():
                once.touch()
                subprocess.run(["sh", "-c", edit], check=True)
            return None

        proxy = support.forward_unix(tmp_path / "d.sock", engine.socket, meanwhile)
        env = {"DOCKER_HOST": f"unix://{tmp_path / 'd.sock'}"}
    else:  # the client program is asked: the edit is made as it starts
        (shim / engine.kind).write_text(
            f'#!/bin/sh\nif [ "$1 $2" = "image inspect" ] && [ ! -e {once} ]; then touch {once}; {edit}; fi\n'
            f'exec {engine.exe} "$@"\n'
        )
        (shim / engine.kind).chmod(0o755)
        env = {"PATH": f"{shim}:{os.environ['PATH']}"}
    args = ("--ref", ref) if ref else ()
    try:
        res = tool("dev", str(fork), *args, "--base", world.editable, "--json", env=env)
    finally:
        if proxy:
            proxy.close()
    assert res.code == 0, res.err
    assert once.exists(), "the edit was made while the base was looked up"
    image, out = res.json["image"], res.json
    shipped = support.in_image(engine, image, "-c", "import vllm.envs as e; print(e.ENVS)", entrypoint="python3")
    assert shipped == "meanwhile"
    if ref:
        assert out["revision"] == support.git(fork, "rev-parse", "HEAD") and out["dirty"] is False
    else:
        assert out["dirty"] is True and "-dirty-" in image
    assert support.inspect(engine, image)["Config"]["Labels"]["org.opencontainers.image.revision"] == out["revision"]


def test_the_image_reference_goes_to_stdout_and_forkdev_runs_from_any_directory(engine, world, fork, invoke, tmp_path):
    (fork / EDIT).write_text("ENVS = 'console script'\n")
    env = {"INVOKE_ENGINE_NAME": engine.kind}
    forkdev = Path(sys.executable).parent / "forkdev"  # the console script of the interpreter running the tests
    res = invoke(
        "dev", str(fork), "--base", world.editable, "--quiet", env=env, cwd=tmp_path, argv=lambda *a: [str(forkdev), *a]
    )
    assert res.code == 0, res.err
    image = res.out.strip()
    assert res.out == image + "\n" and image.startswith("forkdev-test/vllm-dev:local-")
    assert not re.search(r"^\+ ", res.err, re.M), "--quiet: no command echoed"
    assert support.image_file(engine, image, SRC + EDIT) == b"ENVS = 'console script'\n"


def test_a_site_packages_base_gets_package_files_only(engine, world, fork, tool):
    (fork / "vllm" / "sampling_params.py").write_text("SAMPLING = 'site'\n")
    (fork / "tests" / "test_mine.py").write_text("def test_mine():\n    pass\n")
    res = tool("dev", str(fork), "--base", world.site, "--json")
    assert res.code == 0, res.err
    out = res.json
    assert out["skipped"] == ["tests/test_mine.py"]
    path = f"{support.SITE}/vllm/sampling_params.py"
    assert support.image_file(engine, out["image"], path) == b"SAMPLING = 'site'\n"
    assert support.inspect(engine, out["image"])["Config"]["Entrypoint"][0] == "python3"
    assert tool("verify", out["image"]).code == 0


def test_native_changes_are_refused_unless_forced(world, fork, tool):
    (fork / "csrc" / "new_kernel.cu").parent.mkdir(exist_ok=True)
    (fork / "csrc" / "new_kernel.cu").write_text("__global__ void k() {}\n")
    (fork / "setup.py").write_text("# changed\n")
    refused = tool("dev", str(fork), "--base", world.editable, "--json")
    assert refused.code != 0
    assert "csrc/new_kernel.cu" in refused.last_error and "setup.py" in refused.last_error
    assert "invoke nightly" in refused.last_error and "--force" in refused.last_error
    assert refused.out == "" and "Traceback" not in refused.err
    assert not loaded(refused), "nothing was built"
    forced = tool("dev", str(fork), "--base", world.editable, "--force", "--json")
    assert forced.code == 0, forced.err
    config_forced = tool("dev", str(fork), "--base", world.editable, "--no-force", env={"INVOKE_DEV_FORCE": "1"})
    assert config_forced.code != 0 and "native sources changed" in config_forced.last_error


def test_dry_run_shows_the_plan_and_changes_nothing(engine, world, fork, tool):
    (fork / EDIT).write_text("ENVS = 'dry'\n")
    # Images of this fork's commit (unique to this session: the engine is shared with whoever else runs), which
    # any image the run made would be.
    revision = support.git(fork, "rev-parse", "HEAD")
    mine = f"label=org.opencontainers.image.revision={revision}"
    images = lambda: set(support.sh(engine.exe, "images", "-a", "-q", "--no-trunc", "--filter", mine).split())  # noqa: E731
    before = images()
    res = tool("dev", str(fork), "--base", world.editable, "--dry-run", "--json")
    assert res.code == 0, res.err
    assert res.json["dry_run"] is True and res.json["image_id"] is None and res.json["revision"] == revision
    assert "/opt/vllm-source/vllm/envs.py" in res.err and "[dry-run: not run]" in res.err
    assert images() == before
    absent = subprocess.run([engine.exe, "image", "inspect", "--", res.json["image"]], capture_output=True)
    assert absent.returncode != 0, f"{res.json['image']} was made"
    made = tool("dev", str(fork), "--base", world.editable, "--json")  # and the same run for real is seen so
    assert made.code == 0 and made.json["image"] == res.json["image"], made.err
    assert images() == before | {made.json["image_id"]}


def test_push_sends_exactly_the_tags_asked_for_to_a_real_registry(engine, world, fork, tool, registry):
    (fork / EDIT).write_text(f"ENVS = 'pushed by {engine.kind}'\n")
    repo = f"{engine.kind}-pushed"
    res = tool("dev", str(fork), "--base", world.editable, "--json", "--push", "--tag", f"{registry.host}/{repo}:mine")
    assert res.code == 0, res.err
    assert res.json["pushed"] == [f"{registry.host}/{repo}:mine"], "the local forkdev-test/... tag is not pushed"
    assert registry.tags(repo) == ["mine"]
    assert not re.search(r"^\+ \S+ push .*forkdev-test/", res.err, re.M)

    to_registry = tool(
        "dev",
        str(fork),
        "--base",
        world.editable,
        "--json",
        "--push",
        env={"INVOKE_DEV_REPOSITORY": f"{registry.host}/{repo}-primary"},
    )
    assert to_registry.code == 0, to_registry.err
    assert registry.tags(f"{repo}-primary") == [to_registry.json["image"].split(":")[-1]]


def test_build_makes_the_thin_image_of_an_upstream_commit(engine, world, tool):
    res = tool("build", world.later[:10], "--base", world.editable, "--upstream", str(world.upstream), "--json")
    assert res.code == 0, res.err
    out = res.json
    assert out["revision"] == world.later and out["dirty"] is False
    got = support.image_file(engine, out["image"], "/opt/vllm-source/vllm/sampling_params.py")
    assert got == b"SAMPLING = 'upstream later'\n"
    assert tool("verify", out["image"], "--commit", world.later, "--repo", str(world.upstream)).code == 0


def test_verify_catches_files_and_run_config_changed_after_the_fact(engine, world, fork, tool):
    (fork / EDIT).write_text("ENVS = 'honest'\n")
    image = tool("dev", str(fork), "--base", world.editable, "--json").json["image"]
    name = f"forkdev-test-tamper-{engine.kind}-{support.SESSION}"
    tampered = support.own("forkdev-test/tampered:1")
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
        support.sh(engine.exe, "commit", "--change", 'ENTRYPOINT ["sh"]', name, tampered)
    finally:
        support.sh(engine.exe, "rm", "-f", name)
    res = tool("verify", tampered)
    assert res.code != 0
    assert "/opt/vllm-source/vllm/envs.py differs" in res.err
    assert "Entrypoint is ['sh'], the base's is" in res.err

    def run_config_problems(name: str, line: str) -> list[str]:
        """What verify says of the thin image with one more line of run config, built by the engine itself."""
        derived = support.derive_image(engine, image, support.own(f"forkdev-test/tampered:{name}"), line)
        res = tool("verify", derived)
        problems = [p for p in res.err.splitlines() if "the base's is" in p]
        assert (res.code != 0) == bool(problems), res.err
        return problems

    unset = "''" if engine.kind == "docker" else "None"  # docker says "" for an unset User or WorkingDir
    path = "['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'"
    assert run_config_problems("cmd", 'CMD ["sh"]') == ["warning: Cmd is ['sh'], the base's is None"]
    assert run_config_problems("user", "USER nobody") == [f"warning: User is 'nobody', the base's is {unset}"]
    assert run_config_problems("env", "ENV FORKDEV_TAMPERED=1") == [
        f"warning: Env is {path}, 'FORKDEV_TAMPERED=1'], the base's is {path}]"
    ]
    assert run_config_problems("workdir", "WORKDIR /tmp") == [f"warning: WorkingDir is '/tmp', the base's is {unset}"]
    # An empty value is a value, not null: docker keeps CMD [] as []; podman stores it as no Cmd at all.
    expected = ["warning: Cmd is [], the base's is None"] if engine.kind == "docker" else []
    assert run_config_problems("empty-cmd", "CMD []") == expected


# ---- bad input: one line naming the input and the remedy, non-zero, no traceback, nothing built -------------
assert_one_line_error = support.assert_one_line_error


def test_a_path_that_is_not_a_checkout(invoke, tmp_path):
    assert_one_line_error(invoke("dev", str(tmp_path)), str(tmp_path), "not a git checkout")
    assert_one_line_error(invoke("dev", str(tmp_path / "nope")), "does not exist")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tag=Not A Tag"], ["--tag 'Not A Tag'", "not a valid image reference"]),
        (["--tag=-x"], ["--tag '-x'", "starts with '-'"]),
        (["--push"], ["--push has nothing to push", "--tag"]),
        (["--ref=--output=/tmp/x"], ["--ref", "starts with '-'"]),
        (["--base=--help"], ["--base", "starts with '-'"]),
    ],
)
def test_bad_flags_are_refused_before_the_engine_is_asked(fork, invoke, args, words):
    res = invoke("dev", str(fork), *args)
    assert_one_line_error(res, *words)
    assert not re.search(r"^\+ \S*(docker|podman) ", res.err, re.M), "refused before any engine command"


def test_an_unknown_ref(world, fork, tool):
    assert_one_line_error(tool("dev", str(fork), "--ref", "no-such-ref", "--base", world.editable), "'no-such-ref'")


def test_an_unknown_sha_for_build(world, tool):
    assert_one_line_error(tool("build", "0123456789abcdef", "--upstream", str(world.upstream)), "'0123456789abcdef'")


def test_a_missing_base_image(fork, tool):
    res = tool("dev", str(fork))
    # The default: the upstream's published image of the merge-base, then the nightly of nightly.repository.
    assert_one_line_error(res, "vllm/vllm-openai:nightly-", "forkdev-test/nightly-absent:nightly", "invoke nightly")
    assert "--base" in res.last_error


def test_a_repository_nested_in_the_checkout_is_neither_shipped_nor_deleted(engine, world, fork, tool):
    nested = fork / "vllm" / "vendored"  # a clone of something else inside the tree: git lists it as one path
    support.sh("git", "init", "-q", nested)
    (nested / "x.py").write_text("X = 1\n")
    (fork / EDIT).write_text("ENVS = 'beside a nested repository'\n")
    res = tool("dev", str(fork), "--base", world.editable, "--json")
    assert res.code == 0, res.err
    assert res.json["files"] == 1 and res.json["deleted"] == 0, "no whiteout of a folder the base may have"
    assert "not shipped, nor deleted: vllm/vendored/" in res.err
    assert support.image_file(engine, res.json["image"], SRC + "vllm/vendored/x.py") is None
    checked = tool("verify", res.json["image"], "--repo", str(fork))
    assert checked.code == 0, checked.err


def test_a_client_the_engine_refuses_is_named_not_taken_for_a_missing_base(engine, world, fork, tool):
    if engine.kind != "docker":
        pytest.skip("DOCKER_API_VERSION is docker's client's: podman has no such refusal to cause")
    # The engine itself answers (its version is asked on its socket), but it refuses this client's API version.
    res = tool("dev", str(fork), "--base", world.editable, env={"DOCKER_API_VERSION": "1.99"})
    assert_one_line_error(res, "image inspect", "client version 1.99 is too new", "version' answers")
    assert "no base image" not in res.err


def test_without_base_dev_starts_from_the_nightly_that_nightly_repository_names(engine, world, fork, tool):
    support.sh(engine.exe, "tag", world.editable, "forkdev-test/own-nightly:nightly")
    try:
        res = tool("dev", str(fork), "--json", env={"INVOKE_NIGHTLY_REPOSITORY": "forkdev-test/own-nightly"})
    finally:
        support.sh(engine.exe, "rmi", "forkdev-test/own-nightly:nightly")
    assert res.code == 0, res.err
    assert res.json["base"] == "forkdev-test/own-nightly:nightly"


def test_a_base_only_the_other_engine_has_is_named_with_the_command_that_moves_it(engine, world, fork, invoke):
    other = "podman" if engine.kind == "docker" else "docker"
    ref = support.own(f"forkdev-test/only-{engine.kind}:1")
    support.derive_image(engine, world.editable, ref, "LABEL only=here")
    res = invoke("dev", str(fork), "--base", ref, env={"INVOKE_ENGINE_NAME": other})
    assert_one_line_error(res, f"'{ref}' is in {engine.kind}'s image store", f"{engine.kind} save {ref} | {other} load")


def test_a_base_without_a_revision_label(engine, world, fork, tool):
    tag = support.own("forkdev-test/vllm-base:unlabelled")
    base = support.build_base(engine, world.upstream, world.first, tag, label="")
    assert_one_line_error(tool("dev", str(fork), "--base", base), base, "revision label")


def test_a_base_commit_missing_from_the_checkout(engine, world, tmp_path, tool):
    old = tmp_path / "old"
    support.sh("git", "clone", "-q", world.upstream, old)
    unseen_repo = tmp_path / "ahead"
    support.sh("git", "clone", "-q", world.upstream, unseen_repo)
    (unseen_repo / "vllm" / "unseen.py").write_text("UNSEEN = 1\n")
    unseen = support.commit_all(unseen_repo, "a commit the clone lacks")
    label = f'LABEL org.opencontainers.image.revision="{unseen}"'
    base = support.derive_image(engine, world.editable, support.own("forkdev-test/vllm-base:unseen"), label)
    res = tool("dev", str(old), "--base", base, env={"INVOKE_UPSTREAM_URL": str(unseen_repo)})
    assert_one_line_error(res, unseen[:12], f"git -C {old} fetch {unseen_repo} {unseen}")


@pytest.mark.parametrize("engine_name", ["", "docker"])
def test_a_docker_host_that_does_not_answer_is_named_and_never_swapped_for_podman(fork, invoke, engine_name):
    env = {"DOCKER_HOST": "unix:///nonexistent.sock", "INVOKE_ENGINE_NAME": engine_name}
    res = invoke("dev", str(fork), "--base", "forkdev-test/vllm-base:editable", env=env)
    assert_one_line_error(res, "unix:///nonexistent.sock")
    assert "podman" not in res.err


@pytest.fixture
def both_engines(sessions):
    """docker and podman at once (a test of what they share: the base cache, one id for one state)."""
    import conftest

    if not {"docker", "podman"} <= set(conftest.ENGINES):
        pytest.skip("FORKDEV_TEST_ENGINES names one engine; this test needs both")
    return conftest._engine("docker"), conftest._engine("podman")


def test_one_state_is_one_image_id_on_both_engines_whichever_filled_the_base_cache_first(
    both_engines, upstream, invoke, tmp_path
):
    """A base with entries docker's `history` cannot tell apart (ENV and a RUN that only made a directory both
    show 0 bytes; times to the second; no author) saved from docker and loaded into podman: the same id on both,
    and the same thin image id from either engine, in either order, through one shared cache."""
    docker, podman = both_engines
    up, first, _ = upstream
    tag = support.own("forkdev-test/vllm-base:both-engines")
    made: list[tuple[object, str]] = []
    try:
        bare = support.build_base(docker, up, first, support.own("forkdev-test/vllm-base:both-engines-bare"))
        made.append((docker, bare))
        support.derive_image(
            docker, bare, tag, "ENV FORKDEV_X=1", "RUN mkdir -p /opt/empty", "WORKDIR /opt", 'CMD ["python3"]'
        )
        made += [(docker, tag), (podman, tag)]
        subprocess.run(f"{docker.exe} save {tag} | {podman.exe} load -q", shell=True, check=True, capture_output=True)
        assert support.inspect(docker, tag)["Id"].split(":")[-1] == support.inspect(podman, tag)["Id"].split(":")[-1]
        fork = tmp_path / "vllm"
        support.sh("git", "clone", "-q", up, fork)
        support.git(fork, "checkout", "-q", "-B", "dev", first)
        (fork / EDIT).write_text("ENVS = 'one id'\n")
        support.commit_all(fork, "fork: one state")

        def image_id(engine, cache: str) -> str:
            env = {"INVOKE_ENGINE_NAME": engine.kind, "INVOKE_CACHE_DIR": str(tmp_path / cache)}
            res = invoke("dev", str(fork), "--base", tag, "--json", env=env)
            assert res.code == 0, res.err[-3000:]
            made.append((engine, res.json["image"]))
            subprocess.run([engine.exe, "image", "rm", res.json["image"]], capture_output=True, check=True)
            return res.json["image_id"].split(":")[-1]

        docker_first = [image_id(docker, "a"), image_id(podman, "a")]
        podman_first = [image_id(podman, "b"), image_id(docker, "b")]
        alone = [image_id(docker, "c"), image_id(podman, "d")]
        assert len(set(docker_first + podman_first + alone)) == 1, (docker_first, podman_first, alone)
    finally:
        for engine, ref in made:
            subprocess.run([engine.exe, "image", "rm", "-f", ref], capture_output=True)


def test_where_the_stored_config_cannot_be_read_the_inspect_serves_and_is_not_asked_again(
    engine, world, fork, tool, tmp_path
):
    """A docker with the containerd image store, a podman whose storage is elsewhere: the engine's `info` says
    nothing usable (here: it fails), the image is made from the inspect as before, and the next run does not try
    again."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / engine.kind).write_text(
        f'#!/bin/sh\nif [ "$1" = info ]; then echo "Error: no store here" >&2; exit 1; fi\nexec {engine.exe} "$@"\n'
    )
    (shim / engine.kind).chmod(0o755)
    env = {"PATH": f"{shim}:{os.environ['PATH']}", "INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    (fork / EDIT).write_text("ENVS = 'no stored config'\n")
    first = tool("dev", str(fork), "--base", world.editable, "--json", env=env)
    assert first.code == 0, first.err
    assert re.search(rf"^\+ \S*{engine.kind} info ", first.err, re.M)
    subprocess.run([engine.exe, "image", "rm", first.json["image"]], capture_output=True, check=True)
    again = tool("dev", str(fork), "--base", world.editable, "--json", env=env)
    assert again.code == 0 and again.json["image_id"] == first.json["image_id"], again.err
    assert not re.search(rf"^\+ \S*{engine.kind} info ", again.err, re.M), "asked once per base"
    assert tool("verify", again.json["image"]).code == 0
