"""`invoke dev --explain`: each changed path of a real checkout, native or shipped, and why; git only, no engine."""

from __future__ import annotations

import json

import support


def test_explain_names_the_rule_for_each_changed_path_and_builds_nothing(tmp_path, invoke):
    repo = tmp_path / "sglang"
    support.git(tmp_path, "init", "-q", str(repo))
    support.git(repo, "config", "user.email", "t@example.com")
    support.git(repo, "config", "user.name", "t")
    files = {
        "sgl-kernel/csrc/a.cu": "x",
        "python/sglang/kernels/aot/csrc/b.cu": "x",
        "python/sglang/jit_kernel/csrc/c.cuh": "x",
        "python/sglang/srt/d.py": "x",
    }
    support.write_files(repo, files)
    support.commit_all(repo, "upstream shape")
    support.write_files(repo, {path: "changed" for path in files})
    res = invoke("dev", str(repo), "--explain", "--json", "--target", "sglang", env={"INVOKE_ENGINE_NAME": "nope"})
    assert res.code == 0, res.err
    report = json.loads(res.out)
    decided = {p["path"]: (p["native"], p["rule"]) for p in report["paths"]}
    assert decided == {
        "sgl-kernel/csrc/a.cu": (True, "sgl-kernel/"),
        "python/sglang/kernels/aot/csrc/b.cu": (True, "python/sglang/kernels/aot/"),
        "python/sglang/jit_kernel/csrc/c.cuh": (False, "python/sglang/jit_kernel/"),
        "python/sglang/srt/d.py": (False, ""),
    }


def test_explain_compares_against_the_merge_base_with_upstream_as_dev_does_committed_work_included(tmp_path, invoke):
    """A fork's committed kernel edit is what makes `invoke dev` refuse: --explain must list it, not only what
    differs from HEAD."""
    up, fork = tmp_path / "upstream", tmp_path / "fork"
    support.git(tmp_path, "init", "-q", str(up))
    support.write_files(up, {"csrc/ops.cu": "kernel", "vllm/a.py": "A = 1\n"})
    fork_point = support.commit_all(up, "upstream")
    support.sh("git", "clone", "-q", "--origin", "upstream", str(up), str(fork))
    support.write_files(up, {"vllm/later.py": "upstream moved on\n"})
    support.commit_all(up, "upstream, later")
    support.git(fork, "fetch", "-q", "upstream")
    support.write_files(fork, {"csrc/ops.cu": "the fork's kernel"})
    support.commit_all(fork, "fork: a kernel edit")
    support.write_files(fork, {"vllm/a.py": "A = 2\n"})  # uncommitted work
    res = invoke("dev", str(fork), "--explain", "--json", "--target", "vllm", env={"INVOKE_ENGINE_NAME": "nope"})
    assert res.code == 0, res.err
    report = json.loads(res.out)
    assert report["against"] == fork_point and report["against_is"] == "the merge-base with upstream/main"
    decided = {p["path"]: p["native"] for p in report["paths"]}
    assert decided == {"csrc/ops.cu": True, "vllm/a.py": False}, "upstream's later file is no change of the fork's"
    shown = invoke("dev", str(fork), "--explain", "--target", "vllm", env={"INVOKE_ENGINE_NAME": "nope"})
    assert shown.code == 0 and f"changes since {fork_point[:12]} (the merge-base with upstream/main)" in shown.err
    assert "native  csrc/ops.cu" in shown.out
