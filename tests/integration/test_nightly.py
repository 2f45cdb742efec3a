"""`invoke nightly`, `nightly.prune` and `cron.*` on the real engines, a real registry and Debian's cron.

The upstream is synthetic but real: a vLLM-shaped git repository whose docker/Dockerfile builds in seconds from
the debootstrap image, uses RUN --mount=type=cache, and "compiles" its csrc/ into vllm/_C.abi3.so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.engine


@pytest.fixture(scope="session")
def build_os_image(engine, registry) -> str:
    """The image the test Dockerfile starts FROM. docker's BuildKit (20.10) asks a registry for FROM images even
    when they are local, so on docker it comes from the loopback registry."""
    support.ensure_os_image(engine)
    if engine.kind == "podman":
        return support.OS_IMAGE
    ref = f"{registry.host}/{support.OS_IMAGE}"
    support.sh(engine.exe, "tag", support.OS_IMAGE, ref)
    support.sh(engine.exe, "push", "-q", ref)
    return ref


@pytest.fixture
def upstream_repo(tmp_path, build_os_image) -> Path:
    up = tmp_path / "upstream"
    support.make_buildable_upstream(up, build_os_image)
    return up


class Nightly:
    def __init__(self, tool, engine, tmp_path: Path, up: Path) -> None:
        self.tool, self.engine, self.up = tool, engine, up
        self.cache = tmp_path / "cache"
        self.repository = f"forkdev-test/nightly-{engine.kind}-{tmp_path.name[-12:].lower().strip('_')}"
        self.env = {"INVOKE_CACHE_DIR": str(self.cache), "INVOKE_NIGHTLY_REPOSITORY": self.repository}
        if engine.kind == "docker":
            self.env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"  # the 20.10 client: BuildKit built in

    def __call__(self, *args: str, env: dict[str, str] | None = None, task: str = "nightly"):
        extra = ("--upstream", str(self.up)) if task == "nightly" and "--upstream" not in args else ()
        return self.tool(task, *extra, *args, env={**self.env, **(env or {})})

    def state(self) -> dict:
        return json.loads((self.cache / "nightly" / "vllm.json").read_text())

    def file(self, ref: str, path: str) -> bytes | None:
        return support.image_file(self.engine, ref, path)


@pytest.fixture
def nightly(tool, engine, tmp_path, upstream_repo) -> Nightly:
    return Nightly(tool, engine, tmp_path, upstream_repo)


def commit(up: Path, files: dict[str, str], message: str, when: int | None = None) -> str:
    for path, text in files.items():
        (up / path).parent.mkdir(parents=True, exist_ok=True)
        (up / path).write_text(text)
    support.git(up, "add", "-A")
    env = {"GIT_COMMITTER_DATE": f"@{when} +0000", "GIT_AUTHOR_DATE": f"@{when} +0000"} if when else {}
    support.sh("git", "-C", up, "commit", "-q", "-m", message, env={**support.GIT_ENV, **env})
    return support.git(up, "rev-parse", "HEAD")


def test_one_compile_per_native_state_a_thin_layer_otherwise_and_nothing_when_nothing_changed(nightly, registry):
    up = nightly.up
    first = support.git(up, "rev-parse", "HEAD")
    pushed_repo = f"{registry.host}/nightly-{nightly.engine.kind}"
    env = {"INVOKE_NIGHTLY_REPOSITORY": pushed_repo}
    res = nightly("--push", "--json", env=env)
    assert res.code == 0, res.err
    assert res.json["built"] == "full" and res.json["commit"] == first and "no full nightly yet" in res.err
    tag = f"{pushed_repo}:nightly-{first}"
    assert registry.tags(f"nightly-{nightly.engine.kind}") == ["nightly", f"nightly-{first}"]
    labels = support.inspect(nightly.engine, tag)["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == first
    assert labels["dev.forkdev.build"] == "full" and labels["dev.forkdev.native-hash"] == res.json["native_hash"]
    assert labels["org.opencontainers.image.version"] == f"0.0.0+g{first[:12]}"
    compiled = nightly.file(tag, "/opt/vllm-source/vllm/_C.abi3.so")
    assert compiled and nightly.file(tag, "/opt/vllm-source/vllm/BUILD_VERSION") == f"0.0.0+g{first[:12]}\n".encode()
    assert nightly.state()["last_full"]["commit"] == first

    start = time.monotonic()
    again = nightly("--push", "--json", env=env)
    took = time.monotonic() - start
    assert again.code == 0, again.err
    assert again.json["built"] == "nothing" and "nothing to build" in again.err
    assert not re.search(r"^\S* ?\+ \S+ (build|load|push) ", again.err, re.M)
    assert took < 5, f"an unchanged re-run takes about a second, not {took:.1f}s"

    python_only = commit(up, {"vllm/sampling_params.py": "SAMPLING = 'nightly 2'\n"}, "python only")
    thin = nightly("--push", "--json", env=env)
    assert thin.code == 0, thin.err
    assert thin.json["built"] == "thin" and "native state is the last full nightly's" in thin.err
    thin_tag = f"{pushed_repo}:nightly-{python_only}"
    assert nightly.file(thin_tag, "/opt/vllm-source/vllm/_C.abi3.so") == compiled, "the kernels of the one compile"
    assert nightly.file(thin_tag, "/opt/vllm-source/vllm/sampling_params.py") == b"SAMPLING = 'nightly 2'\n"
    thin_labels = support.inspect(nightly.engine, thin_tag)["Config"]["Labels"]
    assert (
        thin_labels["dev.forkdev.build"] == "thin" and thin_labels["org.opencontainers.image.revision"] == python_only
    )
    assert (
        support.inspect(nightly.engine, f"{pushed_repo}:nightly")["Id"]
        == support.inspect(nightly.engine, thin_tag)["Id"]
    )
    assert nightly.state()["last_full"]["commit"] == first and nightly.state()["last"]["commit"] == python_only
    assert nightly.tool("verify", thin_tag, "--commit", python_only, env=nightly.env).code == 0

    kernel = commit(up, {"csrc/attention/new_kernel.cu": "__global__ void k() {}\n"}, "a native change")
    rebuilt = nightly("--push", "--json", env=env)
    assert rebuilt.code == 0, rebuilt.err
    assert rebuilt.json["built"] == "full" and "csrc/attention/new_kernel.cu" in rebuilt.json["reason"]
    assert nightly.file(f"{pushed_repo}:nightly-{kernel}", "/opt/vllm-source/vllm/_C.abi3.so") != compiled
    assert nightly.state()["last_full"]["commit"] == kernel


def test_a_failing_build_leaves_tags_and_state_as_they_were(nightly):
    assert nightly().code == 0
    before_state = nightly.state()
    before_id = support.inspect(nightly.engine, f"{nightly.repository}:nightly")["Id"]
    dockerfile = (nightly.up / "docker" / "Dockerfile").read_text()
    broken = commit(
        nightly.up, {"docker/Dockerfile": dockerfile.replace("ENTRYPOINT", "RUN false\nENTRYPOINT")}, "breaks"
    )
    res = nightly()
    assert res.code != 0 and "Traceback" not in res.err
    assert f"the build of {broken[:12]} failed" in res.err.splitlines()[-1] and "vllm.log" in res.err.splitlines()[-1]
    assert nightly.state() == before_state
    assert support.inspect(nightly.engine, f"{nightly.repository}:nightly")["Id"] == before_id
    assert (
        subprocess.run(
            [nightly.engine.exe, "image", "inspect", f"{nightly.repository}:nightly-{broken}"], capture_output=True
        ).returncode
        != 0
    )
    last_run = json.loads((nightly.cache / "nightly" / "vllm.last-run.json").read_text())
    assert last_run["ok"] is False and broken[:12] in last_run["message"]


def test_a_second_run_is_refused_while_one_holds_the_lock(nightly):
    lock = nightly.cache / "nightly" / "vllm.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from forkdev.core.lock import exclusive\n"
            "with exclusive(Path(sys.argv[1]), 'invoke nightly'):\n    print('held', flush=True); time.sleep(30)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=support.ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = nightly()
        assert res.code != 0
        assert f"another invoke nightly is running (pid {holder.pid}" in res.err.splitlines()[-1]
    finally:
        holder.kill()
        holder.wait()
    assert nightly().code == 0, "the lock dies with its holder"


def test_prune_keeps_the_newest_by_creation_time_and_never_nightly_or_the_last_full(nightly):
    assert nightly().code == 0
    full = support.git(nightly.up, "rev-parse", "HEAD")
    hour = int(time.time()) + 3600
    shas = []
    # Named so that sorting by name would keep the wrong ones: creation time must decide.
    for i, when in enumerate([hour, hour + 7200, hour + 3600]):
        shas.append(commit(nightly.up, {"vllm/sampling_params.py": f"S = {i}\n"}, f"python {i}", when=when))
        assert nightly().code == 0
    res = nightly("--keep", "1", "--json", task="nightly.prune")
    assert res.code == 0, res.err
    # Newest first by creation: shas[1], shas[2] (what `nightly` is), shas[0], then the full build (now).
    assert res.json["removed"] == [f"{nightly.repository}:nightly-{shas[0]}"], (shas, full, res.err[-3000:])
    listing = support.sh(nightly.engine.exe, "images", "--format", "{{.Tag}}", nightly.repository).split()
    assert sorted(listing) == sorted(["nightly", f"nightly-{shas[1]}", f"nightly-{shas[2]}", f"nightly-{full}"])


@pytest.mark.parametrize("status", [401, 429, 500])
def test_a_registry_that_fails_the_tag_check_is_an_error_and_nothing_is_built(nightly, status):
    headers = {"WWW-Authenticate": 'Basic realm="x"'} if status == 401 else {}
    with support.FaultyRegistry(status, headers) as fault:
        res = nightly(
            "--push",
            env={
                "INVOKE_NIGHTLY_REPOSITORY": f"{fault.host}/vllm",
                "INVOKE_REGISTRY_RETRIES": "1",
                "INVOKE_REGISTRY_TIMEOUT": "5",
            },
        )
    assert res.code != 0 and f"answered {status}" in res.err.splitlines()[-1]
    assert not re.search(r"\+ \S+ build ", res.err), "an unanswered tag check is never 'absent'"


def test_bad_input_is_one_line_and_builds_nothing(nightly, tmp_path):
    cases = [
        (("--ref", "no-such-branch"), {}, "has no branch or tag 'no-such-branch'"),
        (("--upstream", str(tmp_path / "nowhere")), {}, "cannot reach upstream"),
        (("--ref=--upload-pack=touch /tmp/forkdev-pwned",), {}, "starts with '-'"),
        (("--push",), {}, "names no registry"),
        (("--commit", "0123456789abcdef"), {}, "unknown commit '0123456789abcdef'"),
    ]
    for args, env, words in cases:
        res = nightly(*args, env=env)
        assert res.code != 0 and "Traceback" not in res.err, (args, res.err)
        assert words in res.err.splitlines()[-1], (args, res.err.splitlines()[-1])
    assert not Path("/tmp/forkdev-pwned").exists()
    conf = tmp_path / "stage.yaml"
    conf.write_text("targets:\n  vllm:\n    stage: no-such-stage\n")
    res = nightly.tool("-f", str(conf), "nightly", "--upstream", str(nightly.up), env=nightly.env)
    assert res.code != 0 and "has no stage 'no-such-stage' (it has: base, vllm-openai)" in res.err.splitlines()[-1]
    conf.write_text("targets:\n  vllm:\n    dockerfile: docker/Dockerfile.missing\n")
    res = nightly.tool("-f", str(conf), "nightly", "--upstream", str(nightly.up), env=nightly.env)
    assert res.code != 0 and "no readable docker/Dockerfile.missing" in res.err.splitlines()[-1]


def test_no_precompiled_turns_off_what_config_switched_on_and_both_flags_are_one_line(tool, engine, tmp_path):
    up = tmp_path / "upstream"
    support.make_buildable_upstream(up)  # only planned here: its FROM image is never needed
    plan = Nightly(tool, engine, tmp_path, up)
    on = {"INVOKE_NIGHTLY_PRECOMPILED": "true"}
    configured = plan("--dry-run", "--json", env=on)
    assert configured.code == 0, configured.err
    assert configured.json["build_args"]["VLLM_USE_PRECOMPILED"] == "1"
    off = plan("--dry-run", "--json", "--no-precompiled", env=on)
    assert off.code == 0, off.err
    assert "VLLM_USE_PRECOMPILED" not in off.json["build_args"]
    assert plan("--dry-run", "--json", "--precompiled").json["build_args"]["VLLM_USE_PRECOMPILED"] == "1"
    both = plan("--dry-run", "--precompiled", "--no-precompiled")
    assert both.code == 1
    assert both.last_error == "error: --precompiled and --no-precompiled contradict each other; pass one of them"


def test_a_docker_client_without_buildkit_is_named_with_the_remedy(nightly):
    if nightly.engine.kind != "docker":
        pytest.skip("podman builds with buildah, which has RUN --mount")
    res = nightly(env={"INVOKE_ENGINE_CLIENT": "/usr/local/bin/docker"})
    if res.code == 0:
        pytest.skip("this docker client has buildx")
    assert "needs BuildKit" in res.err.splitlines()[-1] and "engine.client" in res.err.splitlines()[-1]


# ---- cron -------------------------------------------------------------------------------------------------
@pytest.fixture
def cron_user():
    """A user of its own, so the tests never touch a real crontab; removed after."""
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    name = f"fdcron{os.getpid() % 100000}"
    support.sh("useradd", "--no-create-home", name)
    try:
        yield name
    finally:
        subprocess.run(["crontab", "-u", name, "-r"], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)


def crontab_of(user: str) -> str:
    res = subprocess.run(["crontab", "-u", user, "-l"], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


def test_cron_install_twice_is_one_entry_status_shows_it_and_remove_leaves_other_entries(invoke, cron_user, tmp_path):
    subprocess.run(
        ["crontab", "-u", cron_user, "-"], input='MAILTO=""\n5 4 * * * /bin/true # theirs\n', text=True, check=True
    )
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        res = invoke("cron.install", "--user", cron_user, "--schedule", "15 3 * * *", env=env)
        assert res.code == 0, res.err
    tab = crontab_of(cron_user)
    ours = [line for line in tab.splitlines() if "forkdev nightly (vllm)" in line]
    assert len(ours) == 1 and ours[0].startswith("15 3 * * * env ")
    assert f"{sys.executable} -m forkdev nightly --push" in ours[0] and str(tmp_path / "cache") in ours[0]
    assert "/bin/true # theirs" in tab and 'MAILTO=""' in tab
    status = invoke("cron.status", "--user", cron_user, env=env)
    assert status.code == 0 and "forkdev nightly (vllm)" in status.out and "last run: none recorded" in status.err
    removed = invoke("cron.remove", "--user", cron_user, env=env)
    assert removed.code == 0 and "removed 1 entry" in removed.out
    assert "forkdev" not in crontab_of(cron_user) and "/bin/true # theirs" in crontab_of(cron_user)


def test_cron_refuses_a_bad_schedule(invoke, cron_user):
    res = invoke("cron.install", "--user", cron_user, "--schedule", "every night")
    assert res.code != 0 and "--schedule 'every night' is not a crontab schedule" in res.err.splitlines()[-1]
    assert crontab_of(cron_user) == ""
