"""`invoke batch` on the real engines: a synthetic upstream of about 20 commits across 3 native states, whose
Dockerfile "compiles" its csrc/ in seconds. One full build per native state, every other commit a thin layer,
every image's tree byte for byte the commit's, a broken commit failing alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import support
import yaml
from test_nightly import build_os_image  # noqa: F401 - the session fixture: the FROM image for builds

from forkdev.core import sandbox

pytestmark = pytest.mark.engine
SRC = "/opt/vllm-source"
COMPILED = {"vllm/_C.abi3.so", "vllm/BUILD_VERSION"}  # made by the build, not in git


def commit(up: Path, changes: dict[str, str | None], message: str) -> str:
    support.write_files(up, changes)
    return support.commit_all(up, message)


@pytest.fixture(scope="session")
def history(tmp_path_factory, build_os_image):  # noqa: F811
    """20 commits: python-only edits, additions and deletions, and two kernel changes (3 native states)."""
    up = tmp_path_factory.mktemp("batch") / "upstream"
    shas = [support.make_buildable_upstream(up, build_os_image)]
    py = sorted(p for p in support.git(up, "ls-files", "vllm").splitlines() if p.endswith(".py"))
    for i in range(19):
        if i in (6, 13):
            shas.append(commit(up, {f"csrc/kernel_{i}.cu": f"// kernel {i}\n"}, f"native {i}"))
        elif i % 4 == 3:
            shas.append(commit(up, {py[i]: None}, f"delete {py[i]}"))
        else:
            shas.append(commit(up, {py[i]: f"X = {i}\n", f"vllm/new_{i}/mod.py": f"Y = {i}\n"}, f"python {i}"))
    return up, shas


def tree_of_image(engine, image: str) -> dict[str, str]:
    """{path: sha256} of every file under the source tree of an image (symlinks by their target)."""
    raw = subprocess.run(
        [engine.exe, "run", "--rm", "--network", "none", "--entrypoint", "tar", image, "-C", SRC, "-c", "."],
        capture_output=True,
        check=True,
    ).stdout
    return _tree(raw)


def tree_of_commit(repo: Path, sha: str) -> dict[str, str]:
    return _tree(subprocess.run(["git", "-C", str(repo), "archive", sha], capture_output=True, check=True).stdout)


def _tree(raw: bytes) -> dict[str, str]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            if m.isfile():
                out[name] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
            elif m.issym():
                out[name] = "link:" + m.linkname
    return out


def test_one_full_build_per_native_state_and_every_image_is_its_commit(engine, tool, history, tmp_path, registry):
    up, shas = history
    broken = "FROM scratch\nRUN false\n"
    rows = [json.dumps({"commit_hash": s}) for s in shas[2:] if s != shas[4]]
    rows.append(json.dumps({"commit": shas[5], "parent_commit": shas[1]}))  # builds both
    rows.append(shas[0][:10])  # a plain SHA line works too, abbreviated
    rows.append(json.dumps({"commit_hash": shas[4], "dockerfile_content": broken}))  # its own state; fails alone
    data = tmp_path / "commits.jsonl"
    data.write_text("# the dataset\n" + "\n".join(rows) + "\n")
    blacklist = tmp_path / "blacklist"
    blacklist.write_text(f"{shas[9][:9]}  # known broken upstream\n")
    repository = f"forkdev-test/batch-{engine.kind}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(scratch)}
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"
    args = ("batch", str(data), "--upstream", str(up), "--repository", repository, "--blacklist", str(blacklist))

    dry = tool(*args, "--dry-run", env=env)
    assert dry.code == 0, dry.err
    assert "19 commits in 4 native states: 4 full builds, 15 thin layers; 1 blacklisted" in dry.err
    assert not re.search(r"^\+ \S+ (build|load) ", dry.err, re.M)

    res = tool(*args, "--jobs", "2", "--json", env=env)
    assert res.code != 0, "the broken row fails the run"
    out = json.loads(res.out)
    by_commit = {}
    for item in out["commits"]:
        by_commit.setdefault(item["commit"], []).append(item)
    failed = [i["commit"] for i in out["commits"] if i["status"] == "failed"]
    why = {i["commit"][:10]: i.get("error") for i in out["commits"] if i["status"] == "failed"}
    assert failed == [shas[4]], f"the broken commit fails alone: {why}\n{res.err[-2000:]}"
    assert out["full_builds"] == 4 and out["failed"] == 1
    assert shas[9] not in by_commit, "the blacklist is honoured"
    assert "1 of 19 commits failed" in res.err.splitlines()[-1]
    # buildah (podman's builder) keeps its own layer cache in $TMPDIR; everything else there would be ours.
    left = [p.name for p in scratch.iterdir() if p.name != "buildah-cache"]
    assert left == [], "no context or Dockerfile left behind, the failed build's included"

    results = Path(out["results"])
    built = [i for i in out["commits"] if i["status"] == "built"]
    assert len(built) == 18
    native_tags = set(support.sh(engine.exe, "images", "--format", "{{.Tag}}", repository).split())
    compiles = {f"native-{i['state'][:12]}" for i in out["commits"]}
    assert len(compiles) == 4 and len(compiles & native_tags) == 3, "one compile per state; the broken one failed"
    compiled_of_state = {}
    for item in built:
        image = item["image"]
        assert image == f"{repository}:{item['commit']}"
        got, want = tree_of_image(engine, image), tree_of_commit(up, item["commit"])
        compiled = {k: got.pop(k) for k in COMPILED}
        assert got == want, f"{item['commit'][:12]}: the image's tree is not the commit's"
        compiled_of_state.setdefault(item["state"], set()).add(compiled["vllm/_C.abi3.so"])
    assert all(len(v) == 1 for v in compiled_of_state.values()), "each commit has its group's compiled files"
    assert len(compiled_of_state) == 3

    verified = tool("verify", str(results), "--all", "--json", env=env)
    assert verified.code == 0, verified.err
    assert json.loads(verified.out)["ok"] is True and len(json.loads(verified.out)["images"]) == 18

    again = tool(*args, "--json", env=env)
    assert again.code != 0, "the broken row still fails"
    statuses = {i["status"] for i in json.loads(again.out)["commits"] if i["commit"] != shas[4]}
    assert statuses == {"reused"}, "a re-run resumes: built images are reused"
    assert not re.search(r"^\+ \S+ load ", again.err, re.M)


def test_a_native_image_built_from_a_commit_the_upstream_lacks_is_compiled_again(engine, tool, history, tmp_path):
    """Same native state, rewritten history (or an image left by another upstream): its thin layers would be diffs
    from a commit this upstream does not have, so the state is compiled again instead of every commit failing."""
    up, shas = history
    repository = f"forkdev-test/batch-rewritten-{engine.kind}"
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"
    (tmp_path / "before").write_text(shas[-1] + "\n")
    res = tool("batch", str(tmp_path / "before"), "--upstream", str(up), "--repository", repository, env=env)
    assert res.code == 0, res.err[-3000:]

    rewritten = tmp_path / "rewritten"
    support.git(tmp_path, "clone", "-q", str(up), str(rewritten))
    support.git(rewritten, "commit", "-q", "--amend", "-m", "the same tree, history rewritten")
    support.git(rewritten, "remote", "remove", "origin")  # no ref keeps the old commit, and no object of it is left
    support.git(rewritten, "reflog", "expire", "--expire=now", "--all")
    support.git(rewritten, "gc", "-q", "--prune=now")
    new = support.git(rewritten, "rev-parse", "HEAD")
    (tmp_path / "after").write_text(new + "\n")
    res = tool(
        "batch", str(tmp_path / "after"), "--upstream", str(rewritten), "--repository", repository, "--json", env=env
    )
    assert res.code == 0, res.err[-3000:]
    native_tag = f"{repository}:native-{res.json['commits'][0]['state'][:12]}"
    assert f"{native_tag} was built from {shas[-1][:12]}, which {rewritten} lacks" in res.err, res.err
    assert support.inspect(engine, native_tag)["Config"]["Labels"]["org.opencontainers.image.revision"] == new
    got = tree_of_image(engine, f"{repository}:{new}")
    assert {k: v for k, v in got.items() if k not in COMPILED} == tree_of_commit(rewritten, new)


def test_skip_pushed_skips_what_the_registry_has_and_fails_closed_when_it_cannot_say(
    engine, tool, history, tmp_path, registry
):
    up, shas = history
    data = tmp_path / "two.txt"
    data.write_text(f"{shas[1]}\n{shas[2]}\n")
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"
    repository = f"{registry.host}/batch-{engine.kind}"
    first = tool("batch", str(data), "--upstream", str(up), "--repository", repository, "--push", "--json", env=env)
    assert first.code == 0, first.err
    assert sorted(registry.tags(f"batch-{engine.kind}")) == sorted([shas[1], shas[2]])
    again = tool(
        "batch", str(data), "--upstream", str(up), "--repository", repository, "--skip-pushed", "--json", env=env
    )
    assert again.code == 0, again.err
    assert {i["status"] for i in json.loads(again.out)["commits"]} == {"pushed-already"}
    for status in (401, 429, 500):
        with support.FaultyRegistry(status, {"WWW-Authenticate": 'Basic realm="x"'} if status == 401 else {}) as f:
            res = tool(
                "batch",
                str(data),
                "--upstream",
                str(up),
                "--repository",
                f"{f.host}/x",
                "--skip-pushed",
                "--json",
                env={**env, "INVOKE_REGISTRY_RETRIES": "1", "INVOKE_REGISTRY_TIMEOUT": "4"},
            )
        assert res.code != 0
        items = json.loads(res.out)["commits"]
        assert {i["status"] for i in items} == {"failed"} and all(f"answered {status}" in i["error"] for i in items)


def test_emit_github_matrix_fits_the_workflow_and_bake_needs_an_upstream_buildkit_fetches(tool, history, tmp_path):
    up, shas = history
    data = tmp_path / "all.txt"
    data.write_text("\n".join(shas) + "\n")
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    res = tool("batch", str(data), "--upstream", str(up), "--emit", "github-matrix", env=env)
    assert res.code == 0, res.err
    matrix = json.loads(res.out)
    assert len(matrix["include"]) == 3 and sum(m["commits"] for m in matrix["include"]) == 20
    workflow = (support.ROOT / ".github" / "workflows" / "batch.yml").read_text()
    assert "${{ fromJSON(needs.plan.outputs.matrix) }}" in workflow
    filled = tmp_path / "batch-filled.yml"
    filled.write_text(workflow.replace("${{ fromJSON(needs.plan.outputs.matrix) }}", json.dumps(matrix)))
    support.sh(Path(sys.executable).parent / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", filled)
    # BuildKit fetches a git context itself: a local path is a directory to it, never a commit of it ('PATH#sha')
    local = tool("batch", str(data), "--upstream", str(up), "--emit", "bake", env=env)
    assert local.code == 1 and local.out == "" and "Traceback" not in local.err
    assert local.last_error.startswith(f"error: --emit bake: upstream '{up}' is no git URL BuildKit can fetch")


def test_no_precompiled_turns_off_what_config_switched_on_and_both_flags_are_one_line(invoke, tmp_path):
    up = tmp_path / "upstream"
    data = tmp_path / "one.txt"
    data.write_text(support.make_buildable_upstream(up) + "\n")  # only planned here: nothing is built
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache"), "INVOKE_NIGHTLY_PRECOMPILED": "true"}
    daemon = support.GitDaemon(tmp_path)
    try:

        def args_of(*flags: str) -> dict[str, str]:
            res = invoke("batch", str(data), "--upstream", daemon.url("upstream"), "--emit", "bake", *flags, env=env)
            assert res.code == 0, res.err
            (target,) = res.json["target"].values()
            return target["args"]

        assert args_of()["VLLM_USE_PRECOMPILED"] == "1"
        assert "VLLM_USE_PRECOMPILED" not in args_of("--no-precompiled")
    finally:
        daemon.stop()
    both = invoke("batch", str(data), "--precompiled", "--no-precompiled", "--dry-run", env=env)
    assert both.code == 1
    assert both.last_error == "error: --precompiled and --no-precompiled contradict each other; pass one of them"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"commit_hash": "xyz"}\n', ["data.jsonl:1", "is not a commit SHA"]),
        ('\n\n{"commit": "abcdef0", "colour": 1}\n', ["data.jsonl:3", "unknown keys 'colour'"]),
        ("{not json\n", ["data.jsonl:1", "not a JSON object"]),
        pytest.param("[" * 100000 + "\n", ["data.jsonl:1", "is not a commit SHA"], id="deep-brackets"),
        pytest.param('{"a":' * 50000 + "\n", ["data.jsonl:1", "not a JSON object"], id="deep-json"),
        (b"\xff\xfe\n".decode("latin-1"), ["data.jsonl:1", "not UTF-8"]),
        ('{"parent_commit": "abcdef0"}\n', ["data.jsonl:1", 'no "commit_hash"']),
        ("0123456789abcdef0123\n", ["data.jsonl:1", "unknown commit '0123456789abcdef0123'"]),
    ],
)
def test_malformed_rows_are_named_by_line_before_anything_is_built(tool, history, tmp_path, content, words):
    up, _ = history
    data = tmp_path / "data.jsonl"
    data.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    res = tool("batch", str(data), "--upstream", str(up), env={"INVOKE_CACHE_DIR": str(tmp_path / "cache")})
    assert res.code != 0 and "Traceback" not in res.err
    for w in words:
        assert w in res.err.splitlines()[-1], (w, res.err.splitlines()[-1])
    assert not re.search(r"^\+ \S+ (build|load) ", res.err, re.M)


def test_a_missing_dataset_or_blacklist_is_one_line(tool, history, tmp_path):
    up, shas = history
    res = tool("batch", str(tmp_path / "nope.jsonl"), "--upstream", str(up))
    assert res.code != 0 and "cannot read dataset" in res.err.splitlines()[-1]
    data = tmp_path / "d.txt"
    data.write_text(shas[0] + "\n")
    res = tool("batch", str(data), "--upstream", str(up), "--blacklist", str(tmp_path / "none"))
    assert res.code != 0 and "cannot read blacklist" in res.err.splitlines()[-1]


@pytest.mark.parametrize("repository", ["a/{", "a/{x}", "{target}/{"])
def test_a_repository_with_braces_is_one_line_not_a_traceback(invoke, tmp_path, repository):
    """`{target}` is filled in; any other brace is a bad repository, named, before anything runs."""
    data = tmp_path / "d.txt"
    data.write_text("0123456789abcdef0123456789abcdef01234567\n")
    res = invoke("batch", str(data), "--repository", repository, "--dry-run")
    assert res.code != 0 and "Traceback" not in res.err
    assert res.last_error.startswith(f"error: --repository '{repository.replace('{target}', 'vllm')}' is not a valid")
    env = {"INVOKE_DEV_REPOSITORY": repository}
    res = invoke("dev", str(support.ROOT), "--dry-run", env=env)
    assert res.code != 0 and "Traceback" not in res.err and "dev.repository" in res.last_error


def test_results_onto_the_dataset_is_refused_before_anything_is_built(engine, tool, history, tmp_path):
    """The results file replaced the dataset it was made from (the dataset read back was then JSON, not rows)."""
    up, shas = history
    data = tmp_path / "ds.jsonl"
    data.write_text(json.dumps({"commit_hash": shas[3]}) + "\n")
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"
    repository = f"forkdev-test/batch-results-{engine.kind}"
    res = tool("batch", str(data), "--upstream", str(up), "--repository", repository, "--results", str(data), env=env)
    assert res.code == 1 and "Traceback" not in res.err, res.err
    assert res.last_error == f"error: --results '{data}' is the dataset '{data}'; pass another path for the results"
    assert data.read_text() == json.dumps({"commit_hash": shas[3]}) + "\n"
    assert not re.search(r"^\+ ", res.err, re.M), "nothing ran"


def _spellings(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "work" / "ds.jsonl"
    data.parent.mkdir()
    data.write_text("0123456789abcdef0123456789abcdef01234567\n")
    (tmp_path / "link.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    (tmp_path / "sub").mkdir()
    (tmp_path / "elsewhere.json").symlink_to(tmp_path / "nowhere.json")
    return {"data": data}


@pytest.mark.parametrize(
    ("results", "words"),
    [
        ("work/ds.jsonl", "is the dataset"),
        ("link.jsonl", "is the dataset"),  # a symlink to it
        ("hard.jsonl", "is the dataset"),  # a hard link of it
        ("sub/../work/./ds.jsonl", "is the dataset"),
        ("block.txt", "is the blacklist"),
        ("sub", "is a directory"),
        ("elsewhere.json", "is a symlink"),  # replacing it would drop the user's link
    ],
)
def test_an_output_path_that_is_an_input_by_any_name_is_one_line(invoke, tmp_path, results, words):
    data = _spellings(tmp_path)["data"]
    (tmp_path / "block.txt").write_text("# none\n")
    before = {p.name: p.read_bytes() for p in (data, tmp_path / "block.txt")}
    res = invoke("batch", str(data), "--blacklist", "block.txt", "--results", results, "--dry-run", cwd=tmp_path)
    assert res.code == 1 and "Traceback" not in res.err and words in res.last_error, res.err
    assert {p.name: p.read_bytes() for p in (data, tmp_path / "block.txt")} == before


def test_stdout_into_the_dataset_is_refused_and_the_dataset_is_kept(tmp_path):
    data = _spellings(tmp_path)["data"]
    with open(tmp_path / "link.jsonl", "a") as out:  # `invoke batch ds.jsonl --emit bake >> ds.jsonl`
        res = subprocess.run(
            support.invoke_argv("batch", str(data), "--emit", "bake"),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
    assert res.returncode == 1 and res.stderr.splitlines()[-1].startswith("error: the output goes to the dataset")
    assert data.read_text() == "0123456789abcdef0123456789abcdef01234567\n"


def _env(engine, tmp_path: Path) -> dict[str, str]:
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache")}
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"  # the 20.10 client: BuildKit built in
    return env


def _plan_step(env: dict[str, str], tmp_path: Path) -> dict:
    """The batch workflow's plan step, run as GitHub runs it (bash -e), in a checkout of this repository."""
    workflow = yaml.safe_load((support.ROOT / ".github" / "workflows" / "batch.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["plan"]["steps"] if s.get("id") == "plan"]
    output = tmp_path / "github-output"
    output.write_text("")
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `invoke` as `pip install .` put it there
    res = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        env={**os.environ, **env, "GITHUB_OUTPUT": str(output), "PATH": path},
        cwd=support.ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (line,) = output.read_text().splitlines()
    return json.loads(line.removeprefix("matrix="))


def test_skip_pushed_asks_first_and_compiles_only_states_with_an_unpushed_commit(
    engine, tool, history, tmp_path, registry
):
    """State A (commits 1, 2) is pushed whole, state B (8, 9) in part: a re-run on a fresh machine compiles B only,
    and the workflow's plan holds B only. (It compiled every state, then found A's commits in the registry.)"""
    up, shas = history
    name = f"batch-first-{engine.kind}"
    repository = f"{registry.host}/{name}"
    env = _env(engine, tmp_path)
    pushed = tmp_path / "pushed.txt"
    pushed.write_text(f"{shas[1]}\n{shas[2]}\n{shas[8]}\n")
    first = tool("batch", str(pushed), "--upstream", str(up), "--repository", repository, "--push", env=env)
    assert first.code == 0, first.err[-3000:]
    assert sorted(registry.tags(name)) == sorted([shas[1], shas[2], shas[8]])
    local = support.sh(engine.exe, "images", "--format", "{{.Repository}}:{{.Tag}}").split()
    mine = [r for r in local if r.removeprefix("localhost/").startswith(repository + ":")]
    support.sh(engine.exe, "image", "rm", *mine)  # a fresh runner: no native image, no thin one

    data = tmp_path / "all.txt"
    data.write_text(f"{shas[1]}\n{shas[2]}\n{shas[8]}\n{shas[9]}\n")
    wf = {**env, "DATASET": str(data), "REPOSITORY": repository, "INVOKE_UPSTREAM_URL": str(up)}
    assert [m["commits"] for m in _plan_step(wf, tmp_path)["include"]] == [1], "the plan holds state B, 1 commit"
    assert _plan_step({**wf, "DATASET": str(pushed)}, tmp_path) == {"include": []}, "nothing left: no build job"

    res = tool(
        "batch", str(data), "--upstream", str(up), "--repository", repository, "--skip-pushed", "--push", "--json",
        env=env,
    )  # fmt: skip
    assert res.code == 0, res.err[-3000:]
    status = {i["commit"]: i["status"] for i in res.json["commits"]}
    assert status == {shas[1]: "pushed-already", shas[2]: "pushed-already", shas[8]: "pushed-already", shas[9]: "built"}
    builds = [m.start() for m in re.finditer(r"full build of (\w+): ", res.err)]  # the command is in its log
    assert re.findall(r"full build of (\w+): ", res.err) == [shas[9][:12]], "one compile: state B's"
    assert res.err.index("which of the 4 commits are pushed already") < builds[0], "the registry is asked first"
    assert shas[9] in registry.tags(name)


class Listener:
    """A TCP server on loopback that records what reaches it (a registry, a metadata service: anything a host has)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.heard: list[bytes] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                self.heard.append(conn.recv(100))

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


def test_a_rows_dockerfile_has_no_network_unless_network_host_is_given(
    engine,
    tool,
    history,
    tmp_path,
    build_os_image,  # noqa: F811
):
    up, shas = history
    listener = Listener()
    repository = f"forkdev-test/batch-network-{engine.kind}"
    env = _env(engine, tmp_path)
    try:
        for flags, nonce in (((), "no-flag"), (("--network", "host"), "flag-host")):
            probe = (
                "RUN python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', "
                f"{listener.port}), 5); s.sendall(b'{nonce}')\" || echo 'no network'\n"
            )
            dockerfile = sandbox.dockerfile(build_os_image) + probe
            data = tmp_path / f"{nonce}.jsonl"
            data.write_text(json.dumps({"commit_hash": shas[3], "dockerfile_content": dockerfile}) + "\n")
            args = ("batch", str(data), "--upstream", str(up), "--repository", repository, *flags)
            res = tool(*args, env=env)
            assert res.code == 0, res.err[-3000:]
            assert listener.heard == ([b"flag-host"] if flags else []), "only --network host reaches the host"
            log = (tmp_path / "cache" / "batch" / "logs" / f"{shas[3]}.log").read_text()  # the full build's
            assert re.search(rf"\+ \S+ build .*--network {'host' if flags else 'none'} ", log)
    finally:
        listener.close()
    bad = tool("batch", str(data), "--upstream", str(up), "--network", "bridge", "--dry-run", env=env)
    assert bad.code == 1 and bad.last_error.startswith("error: --network 'bridge': a dataset's Dockerfile builds")


# What `docker buildx bake` reads (docker/buildx bake/bake.go: Config, Group, Target and their json names;
# targetNamePattern), and the git contexts BuildKit fetches (dfgitutil.ParseGitRef). buildx is not installed on
# these machines, so the file is held to that here, and a target is built with `docker build` exactly as bake
# would pass it to BuildKit (context, dockerfile, stage, args, labels, tags).
BAKE_TARGET_KEYS = {
    "description", "inherits", "annotations", "attest", "context", "contexts", "dockerfile", "dockerfile-inline",
    "args", "labels", "tags", "cache-from", "cache-to", "target", "secret", "ssh", "platforms", "output", "pull",
    "no-cache", "network", "no-cache-filter", "shm-size", "ulimits", "resources", "call", "entitlements",
    "extra-hosts", "//",
}  # fmt: skip


def bake_problems(bake: dict) -> list[str]:
    """What bake would refuse in a bake file, or would read otherwise than written."""
    found = []
    found += [f"top-level key {k}" for k in set(bake) - {"group", "target", "variable", "function", "//"}]
    for name, target in bake["target"].items():
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", name):
            found.append(f"target name {name}")
        found += [f"{name}: key {k}" for k in set(target) - BAKE_TARGET_KEYS]
        context = target["context"]
        remote, _, commit = context.partition("#")
        scheme = remote.split("://")[0]
        if scheme not in ("git", "ssh", "http", "https") or (scheme.startswith("http") and not remote.endswith(".git")):
            found.append(f"{name}: context {context} is no git URL BuildKit fetches")
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            found.append(f"{name}: context {context} names no commit")
        for text in _strings({k: v for k, v in target.items() if k != "//"}):
            if re.search(r"(?<!\$)\$\{|(?<!%)%\{", text):
                found.append(f"{name}: {text[:40]!r} holds an unescaped HCL template")
    for group in bake["group"].values():
        found += [f"group names unknown target {t}" for t in group["targets"] if t not in bake["target"]]
    return found


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _hcl(text: str) -> str:
    """A bake string as bake hands it on (its template escapes undone)."""
    return text.replace("$${", "${").replace("%%{", "%{")


def test_bake_builds_each_native_state_and_its_comment_makes_every_commits_image(
    engine,
    tool,
    history,
    tmp_path,
    build_os_image,  # noqa: F811
):
    if engine.kind != "docker":
        pytest.skip("a bake file is BuildKit's (docker buildx bake); podman builds no git context at a commit")
    up, shas = history
    daemon = support.GitDaemon(up.parent)
    try:
        url = daemon.url(up.name)
        own = sandbox.dockerfile(build_os_image) + 'RUN echo "${max_jobs}"\n'
        data = tmp_path / "bake.jsonl"
        rows = [json.dumps({"commit_hash": s}) for s in shas[7:11]]  # one native state
        rows.append(json.dumps({"commit_hash": shas[15], "dockerfile_content": own}))  # a row's own Dockerfile
        data.write_text("\n".join(rows) + "\n")
        repository = f"forkdev-test/batch-bake-{engine.kind}"
        env = _env(engine, tmp_path)
        res = tool("batch", str(data), "--upstream", url, "--repository", repository, "--emit", "bake", env=env)
        assert res.code == 0, res.err[-3000:]
        bake = res.json
        assert bake_problems(bake) == []
        assert len(bake["target"]) == 2
        (inline,) = [t for t in bake["target"].values() if "dockerfile-inline" in t]
        assert _hcl(inline["dockerfile-inline"]) == own and inline["network"] == "none"
        (native,) = [t for t in bake["target"].values() if "dockerfile" in t]
        assert native["context"] == f"{url}#{shas[7]}" and native["dockerfile"] == "docker/Dockerfile"

        assert native["network"] == "host"  # engine.network: this machine's docker has no bridge
        argv = ["/usr/bin/docker", "build", "--file", native["dockerfile"], "--target", native["target"]]
        argv += ["--network", native["network"]]
        for key, value in native["args"].items():
            argv += ["--build-arg", f"{key}={_hcl(value)}"]
        for key, value in native["labels"].items():
            argv += ["--label", f"{key}={_hcl(value)}"]
        for tag in native["tags"]:
            argv += ["--tag", tag]
        support.sh(*argv, native["context"], env={"DOCKER_BUILDKIT": "1"})  # what bake hands to BuildKit

        comment = native["//"]
        assert all(s in comment for s in shas[7:11]), comment
        (command,) = re.findall(r"'(invoke batch [^']+)'", comment)
        words = shlex.split(command)
        assert words[:2] == ["invoke", "batch"]
        thin = tool(*words[1:], "--json", env=env)
        assert thin.code == 0, thin.err[-3000:]
        assert not re.search(r"full build of \w+: ", thin.err), "the image bake built serves: nothing is compiled"
        built = {i["commit"]: i for i in thin.json["commits"]}
        assert set(built) == set(shas[7:11]) and {i["status"] for i in built.values()} == {"built"}
        for sha in shas[7:11]:
            got = tree_of_image(engine, f"{repository}:{sha}")
            assert {k: v for k, v in got.items() if k not in COMPILED} == tree_of_commit(up, sha)
    finally:
        daemon.stop()
