"""`invoke batch` on the real engines: a synthetic upstream of about 20 commits across 3 native states, whose
Dockerfile "compiles" its csrc/ in seconds. One full build per native state, every other commit a thin layer,
every image's tree byte for byte the commit's, a broken commit failing alone."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import support
from test_nightly import build_os_image  # noqa: F401 - the session fixture: the FROM image for builds

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


def test_emit_github_matrix_fits_the_workflow_and_bake_names_every_full_build(tool, history, tmp_path):
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
    bake = json.loads(tool("batch", str(data), "--upstream", str(up), "--emit", "bake", env=env).out)
    assert len(bake["target"]) == 3 and bake["group"]["default"]["targets"] == sorted(bake["target"])
    assert all(t["context"].startswith(f"{up}#") and t["target"] == "vllm-openai" for t in bake["target"].values())


def test_no_precompiled_turns_off_what_config_switched_on_and_both_flags_are_one_line(invoke, tmp_path):
    up = tmp_path / "upstream"
    data = tmp_path / "one.txt"
    data.write_text(support.make_buildable_upstream(up) + "\n")  # only planned here: nothing is built
    env = {"INVOKE_CACHE_DIR": str(tmp_path / "cache"), "INVOKE_NIGHTLY_PRECOMPILED": "true"}

    def args_of(*flags: str) -> dict[str, str]:
        res = invoke("batch", str(data), "--upstream", str(up), "--emit", "bake", *flags, env=env)
        assert res.code == 0, res.err
        (target,) = res.json["target"].values()
        return target["args"]

    assert args_of()["VLLM_USE_PRECOMPILED"] == "1"
    assert "VLLM_USE_PRECOMPILED" not in args_of("--no-precompiled")
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
