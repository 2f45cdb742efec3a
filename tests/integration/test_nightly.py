"""`invoke nightly` and `nightly.prune` on the real engines and a real registry (cron: test_cron.py).

The upstream is synthetic but real: a vLLM-shaped git repository whose docker/Dockerfile builds in seconds from
the debootstrap image, uses RUN --mount=type=cache, and "compiles" its csrc/ into vllm/_C.abi3.so.
"""

from __future__ import annotations

import json
import os
import re
import signal
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
        # Unique to this run: tmp_path's name repeats across sessions, and a tag an earlier session left there
        # would change what prune sees.
        self.repository = (
            f"forkdev-test/nightly-{engine.kind}-{tmp_path.name[-12:].lower().strip('_')}-{os.urandom(3).hex()}"
        )
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


def nightly_commit(engine, ref: str) -> str | None:
    """The commit an image's revision label names."""
    return (support.inspect(engine, ref)["Config"]["Labels"] or {}).get("org.opencontainers.image.revision")


def test_nightly_only_moves_forward_and_an_older_commit_gets_its_own_tag_only(nightly):
    first = support.git(nightly.up, "rev-parse", "HEAD")
    assert nightly().code == 0
    second = commit(nightly.up, {"vllm/sampling_params.py": "S = 2\n"}, "python 2")
    assert nightly().code == 0 and nightly_commit(nightly.engine, f"{nightly.repository}:nightly") == second

    back = nightly("--commit", first, "--json")
    assert back.code == 0 and back.json["built"] == "nothing" and back.json["moves_nightly"] is False, back.err
    assert f"nightly stays at {second[:12]}: {first[:12]} does not descend from it" in back.err
    assert nightly_commit(nightly.engine, f"{nightly.repository}:nightly") == second

    third = commit(nightly.up, {"vllm/sampling_params.py": "S = 3\n"}, "python 3")
    fourth = commit(nightly.up, {"vllm/sampling_params.py": "S = 4\n"}, "python 4")
    assert nightly().code == 0 and nightly_commit(nightly.engine, f"{nightly.repository}:nightly") == fourth
    older = nightly("--commit", third, "--json")
    assert older.code == 0 and older.json["built"] == "thin" and older.json["moves_nightly"] is False, older.err
    assert nightly_commit(nightly.engine, f"{nightly.repository}:nightly-{third}") == third
    assert nightly_commit(nightly.engine, f"{nightly.repository}:nightly") == fourth


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time: what a run that writes nothing leaves as is."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_a_dry_run_writes_nothing_the_cache_included(nightly):
    head = support.git(nightly.up, "rev-parse", "HEAD")
    res = nightly("--dry-run", "--json")
    assert res.code == 0, res.err
    assert res.json["image"] == f"{nightly.repository}:nightly-{head}" and res.json["built"] == "unknown"
    assert re.search(r"\+ git clone --mirror .*\[dry-run: not run\]", res.err)
    built = nightly.tool("build", head, "--upstream", str(nightly.up), "--dry-run", "--json", env=nightly.env)
    assert built.code == 0 and built.json["image"] is None and "a real run fetches" in built.err, built.err
    assert not nightly.cache.exists(), "no mirror, no lock file, no state, not even the cache folder"

    assert nightly().code == 0
    new = commit(nightly.up, {"vllm/sampling_params.py": "S = 'new'\n"}, "python, after the mirror")
    # Taken after the commit: the mirror of a local upstream hardlinks its objects, and git freshens (touches) an
    # object it writes again, so a commit in the upstream moves the mtimes of the mirror's files too.
    before = tree(nightly.cache)
    dry = nightly("--dry-run", "--json")
    assert dry.code == 0 and dry.json["commit"] == new and dry.json["built"] == "unknown", dry.err
    assert f"the mirror does not have {new} yet" in dry.json["reason"]
    assert re.search(r"\+ git -C \S+ fetch .*\[dry-run: not run\]", dry.err)
    assert tree(nightly.cache) == before


@pytest.mark.parametrize("damage", ['{"last_full": "garbage", "last": {"commit": 5}}', '{"last_full": {"comm'])
def test_a_damaged_state_file_is_a_warning_for_nightly_and_a_refusal_for_prune(nightly, damage):
    from forkdev.core import cache as store

    mirror = store.mirror(nightly.cache, str(nightly.up))  # the plan reads the state after the mirror
    support.sh("git", "clone", "-q", "--mirror", nightly.up, mirror)
    state = nightly.cache / "nightly" / "vllm.json"
    state.parent.mkdir(parents=True)
    state.write_text(damage)
    res = nightly("--dry-run", "--json")
    assert res.code == 0 and "Traceback" not in res.err, res.err
    assert res.json["built"] == "full" and res.json["reason"] == "no full nightly yet"
    assert f"warning: nightly state {state}: " in res.err and "(the next build is full)" in res.err
    pruned = nightly("--keep", "1", task="nightly.prune")
    assert pruned.code != 0 and "Traceback" not in pruned.err
    assert pruned.last_error.startswith(f"error: nightly state {state} is damaged (")
    assert pruned.last_error.endswith("run 'invoke nightly --full' (it writes the state again) before pruning")


def test_prune_removes_only_nightly_sha_tags_never_a_manifest_a_kept_tag_shares_and_says_what_stayed(nightly, registry):
    exe, kind = nightly.engine.exe, nightly.engine.kind
    name = f"prune-{kind}"
    pushed = f"{registry.host}/{name}"
    env = {"INVOKE_NIGHTLY_REPOSITORY": pushed}
    full = support.git(nightly.up, "rev-parse", "HEAD")
    assert nightly("--push", env=env).code == 0
    hour = int(time.time()) + 3600
    shas = []
    for i in range(3):
        shas.append(commit(nightly.up, {"vllm/sampling_params.py": f"S = {i}\n"}, f"python {i}", when=hour + 600 * i))
        assert nightly("--push", env=env).code == 0
    old, middle, newest = shas
    # Yours: `stable-release` names the oldest's manifest in the registry; `nightly-my-custom` tags the middle's
    # image here; and a container uses the oldest's image.
    registry.retag(name, f"nightly-{old}", "stable-release")
    support.sh(exe, "tag", f"{pushed}:nightly-{middle}", f"{pushed}:nightly-my-custom")
    container = f"forkdev-test-prune-{kind}-{nightly.cache.parent.name[-12:]}"
    support.sh(exe, "create", "--name", container, f"{pushed}:nightly-{old}")
    try:
        res = nightly("--keep", "1", "--push", "--json", task="nightly.prune", env=env)
    finally:
        subprocess.run([exe, "rm", "--force", container], capture_output=True)
    assert res.code == 0, res.err
    # Newest first: newest (= nightly), middle, old; the full build is the last full one, which thin ones build on.
    assert res.json["removed"] == [f"{pushed}:nightly-{middle}"]
    [stayed] = res.json["not_removed"]
    assert stayed["ref"] == f"{pushed}:nightly-{old}" and f"{kind} refused to remove it" in stayed["reason"]
    assert res.json["removed_in_registry"] == [f"nightly-{middle}"]
    [skipped] = res.json["not_removed_in_registry"]
    assert skipped["ref"] == f"{pushed}:nightly-{old}" and "also tagged stable-release" in skipped["reason"]
    assert f"warning: kept {pushed}:nightly-{old}: " in res.err
    assert registry.tags(name) == sorted(
        ["nightly", f"nightly-{full}", f"nightly-{newest}", f"nightly-{old}", "stable-release"]
    )
    local = support.sh(exe, "images", "--format", "{{.Tag}}", pushed).split()
    assert sorted(local) == sorted(
        ["nightly", f"nightly-{full}", f"nightly-{newest}", f"nightly-{old}", "nightly-my-custom"]
    )


# ---- what a failed or killed full build leaves ---------------------------------------------------------------
PLAIN_DOCKERFILE = """\
FROM {os_image} AS base
RUN echo {unique} > /unique
FROM base AS vllm-openai
ARG nap=0
COPY . /opt/vllm-source
RUN echo step > /step && sleep "$nap" && {last}
"""


def plain_build(nightly: Nightly, os_image: str, last: str) -> str:
    """A commit whose Dockerfile needs no BuildKit, so docker builds it with its legacy builder (which leaves a
    failed step's container and names its step images as it goes), podman with buildah (which keeps an image per
    step); its first step is this test's own, so nothing it makes comes from another test's cache."""
    text = PLAIN_DOCKERFILE.format(os_image=os_image, unique=os.urandom(8).hex(), last=last)
    return commit(nightly.up, {"docker/Dockerfile": text}, "a Dockerfile without BuildKit")


def made(output: str) -> tuple[list[str], list[str]]:
    """The (containers, images) a build's output says it made: the legacy builder's ' ---> Running in ID' and
    ' ---> ID' (not after 'Using cache' or a FROM step), buildah's '--> ID'."""
    containers, images, cached = [], [], False
    for line in output.splitlines():
        text = re.sub(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} ", "", line).strip()  # an unattended run's timestamp
        if m := re.fullmatch(r"---> Running in ([0-9a-f]{12,64})", text):
            containers.append(m[1])
        elif text.startswith(("---> Using cache", "--> Using cache")) or re.match(r"Step \d+/\d+ : FROM ", text):
            cached = True  # an earlier build's image, or the base
        elif m := re.fullmatch(r"-{2,3}> ([0-9a-f]{11,64})", text):
            if not cached:
                images.append(m[1])
            cached = False
    return containers, images


def left_behind(engine, containers: list[str], images: list[str]) -> list[str]:
    found = [
        c
        for c in containers
        if subprocess.run([engine.exe, "container", "inspect", c], capture_output=True).returncode == 0
    ]
    found += [
        i for i in images if subprocess.run([engine.exe, "image", "inspect", i], capture_output=True).returncode == 0
    ]
    if engine.kind == "podman":  # buildah's working containers
        listed = json.loads(support.sh(engine.exe, "ps", "--all", "--external", "--format", "json") or "[]")
        found += [c["Names"][0] for c in listed if any(c.get("ImageID", "").startswith(i) for i in images)]
    return found


def remove_base_stage_containers(engine, base: str, since: float) -> None:
    """buildah keeps a working container per stage until its build ends, and a killed podman leaves them. The one of
    a stage FROM the base stands on an image no build of ours made, so nothing proves it the killed build's and
    the tool leaves it (a known limit); the test removes what it caused: named after the base, made since."""
    base_id = support.inspect(engine, base)["Id"]
    for c in json.loads(support.sh(engine.exe, "ps", "--all", "--external", "--format", "json") or "[]"):
        name = c["Names"][0]
        mine = c.get("ImageID") == base_id and c.get("Created", 0) >= int(since) and "-working-container" in name
        if c.get("State") == "storage" and mine:
            subprocess.run([engine.exe, "rm", "--force", c["Id"]], capture_output=True)


def test_a_failed_full_build_leaves_no_container_and_no_image(nightly, build_os_image):
    broken = plain_build(nightly, build_os_image, "false")
    res = nightly()
    assert res.code != 0 and f"the build of {broken[:12]} failed" in res.last_error
    containers, images = made(res.err)
    assert images, "the build made step images: the test sees what it checks"
    assert left_behind(nightly.engine, containers, images) == []


def test_what_a_killed_nightly_left_is_removed_by_the_next_run(nightly, build_os_image, tmp_path):
    plain_build(nightly, build_os_image, "true")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    conf = tmp_path / "nap.yaml"
    conf.write_text("nightly:\n  build_args:\n    nap: '60'\n")
    out = tmp_path / "killed.log"
    env = {**os.environ, "INVOKE_ENGINE_NAME": nightly.engine.kind, "TMPDIR": str(scratch), **nightly.env}
    argv = support.invoke_argv("-f", str(conf), "nightly", "--upstream", str(nightly.up))
    started = time.time()
    with open(out, "w") as fh:
        killed = subprocess.Popen(argv, stdout=fh, stderr=fh, env=env, cwd=support.ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "RUN echo step" not in out.read_text() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # into the step
        assert killed.poll() is None, out.read_text()[-3000:]
        os.killpg(killed.pid, signal.SIGKILL)  # the task and its engine client, as a cron or CI kill does
        killed.wait()
        containers, images = made(out.read_text())
        assert images, "the killed build had made step images: the test sees what it checks"

        again = nightly(env={"TMPDIR": str(scratch)})
        assert again.code == 0, again.err[-3000:]
        assert left_behind(nightly.engine, containers, images) == []
    finally:
        if nightly.engine.kind == "podman":
            remove_base_stage_containers(nightly.engine, build_os_image, started)
    # Ours (the build's lock file, its context) are gone; a killed buildah's own buildahNNN stays in $TMPDIR.
    assert [p.name for p in scratch.iterdir() if p.name.startswith("forkdev-")] == []
