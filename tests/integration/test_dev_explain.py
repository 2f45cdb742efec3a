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
