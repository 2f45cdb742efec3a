"""Target profiles, their config overrides, and where repository paths land in an image."""

from __future__ import annotations

import pytest

from forkdev.core import config
from forkdev.core.base import Location, revision_of
from forkdev.core.errors import Failure


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


def test_every_target_has_an_upstream_a_package_path_and_a_nightly_repository():
    for t in config.TARGETS.values():
        assert t.upstream.startswith("https://") and t.package_path.endswith(t.package)
        assert ":" not in t.nightly_image and t.dockerfile


def test_unknown_target_is_one_sentence_with_the_choices():
    with pytest.raises(Failure, match="unknown target 'tgi'; choose one of mlc-llm, sglang, vllm"):
        config.target("tgi")


def test_a_fork_changes_its_native_paths_and_build_args_from_config():
    t = config.target("vllm", {"vllm": {"native": ["csrc/", "kernels/"], "build_args": {"max_jobs": "4"}}})
    assert t.is_native("kernels/x.cu") and not t.is_native("setup.py")
    assert t.build_args == {"max_jobs": "4"} and t.package == "vllm"


def test_a_new_target_from_config_needs_every_field_and_unknown_keys_are_refused():
    with pytest.raises(Failure, match="targets.tgi defines a new target but lacks"):
        config.target("tgi", {"tgi": {"upstream": "https://x/tgi.git"}})
    with pytest.raises(Failure, match="unknown keys nativ"):
        config.target("vllm", {"vllm": {"nativ": []}})
    full = {
        "upstream": "https://x/tgi.git",
        "package": "tgi",
        "package_path": "tgi",
        "native": ["kernels/"],
        "published_base": None,
        "nightly_image": "me/tgi",
    }
    assert config.target("tgi", {"tgi": full}).nightly_image == "me/tgi"


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


def test_build_args_come_from_the_profiles_fields_not_its_name():
    from forkdev.core import native

    vllm = config.TARGETS["vllm"]
    shaping, parallel = native.build_args(vllm, {"nap": "1"}, "8.0 9.0", True)
    assert shaping == {"nap": "1", "torch_cuda_arch_list": "8.0 9.0", "VLLM_USE_PRECOMPILED": "1"}
    assert set(parallel) == {"max_jobs", "nvcc_threads"} and all(int(v) >= 1 for v in parallel.values())
    assert native.build_args(vllm, {}, "", False)[0] == {}, "no arch, no precompiled: nothing shapes the build"
    # A fork's own profile of another name, with vLLM's Dockerfile args, gets them too (it keyed on "vllm").
    mine = config.target("myvllm", {"myvllm": {**_fields(vllm), "nightly_image": "me/myvllm"}})
    assert native.build_args(mine, {}, "9.0", True) == native.build_args(vllm, {}, "9.0", True)
    # A profile whose Dockerfile takes none of them gets none, whatever config says.
    assert native.build_args(config.TARGETS["sglang"], {}, "9.0", True) == ({}, {})


def _fields(t):
    import dataclasses

    return {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name != "name"}


@pytest.mark.parametrize(
    ("name", "path", "native", "rule"),
    [
        # one path per native area, one run-time compiled kernel, one plain module, per upstream's shape
        ("vllm", "csrc/attention/attention_kernels.cu", True, "csrc/"),
        ("vllm", "cmake/external_projects/flashmla.cmake", True, "cmake/"),
        ("vllm", "requirements/cuda.txt", True, "requirements/"),
        ("vllm", "vllm/model_executor/layers/linear.py", False, ""),
        ("sglang", "sgl-kernel/csrc/allreduce/custom_all_reduce.cu", True, "sgl-kernel/"),
        ("sglang", "python/sglang/kernels/aot/pyproject.toml", True, "python/sglang/kernels/aot/"),
        ("sglang", "python/sglang/kernels/aot/csrc/gemm.cu", True, "python/sglang/kernels/aot/"),
        ("sglang", "python/sglang/jit_kernel/csrc/norm.cuh", False, "python/sglang/jit_kernel/"),
        ("sglang", "python/sglang/srt/managers/scheduler.py", False, ""),
        ("mlc-llm", "cpp/serve/engine.cc", True, "cpp/"),
        ("mlc-llm", "3rdparty/tvm/src/runtime/module.cc", True, "3rdparty/"),
        ("mlc-llm", "python/mlc_llm/serve/engine.py", False, ""),
        # MLC-LLM at 79d603f: the root pyproject.toml builds the CMake project with scikit-build-core
        ("mlc-llm", "pyproject.toml", True, "pyproject.toml"),
        ("mlc-llm", "3rdparty/tokenizers-cpp/rust/src/lib.rs", True, "3rdparty/"),
        ("mlc-llm", "cpp/json_ffi/json_ffi_engine.cc", True, "cpp/"),
        ("mlc-llm", "web/emcc/mlc_wasm_runtime.cc", False, ""),  # the web runtime: no part of the Python package
    ],
)
def test_profiles_classify_each_area_of_their_upstream_and_say_why(name, path, native, rule):
    decided, by, why = config.TARGETS[name].classify(path)
    assert (decided, by) == (native, rule) and why


def test_every_native_rule_of_a_profile_says_why():
    for t in config.TARGETS.values():
        assert set(t.native) <= set(t.why), t.name


def test_a_fork_may_still_list_native_paths_as_strings_and_shipped_exceptions():
    t = config.target("vllm", {"vllm": {"native": ["kernels/"], "shipped": ["kernels/jit/"]}})
    assert t.classify("kernels/a.cu") == (True, "kernels/", "listed as native")
    assert t.classify("kernels/jit/a.cu")[:2] == (False, "kernels/jit/")
    with pytest.raises(Failure, match="targets.vllm.native must be a list of strings"):
        config.target("vllm", {"vllm": {"native": "csrc/"}})
    with pytest.raises(Failure, match="targets.vllm.why must be a mapping"):
        config.target("vllm", {"vllm": {"why": "because"}})


def test_every_compiled_source_of_the_real_vllm_tree_is_native_and_every_module_ships():
    """The vLLM profile against the real tree (forkdev/data's manifest, at the commit it names): each C, C++ or
    CUDA source is under a native rule, and no module of the package is."""
    from forkdev.core import sandbox

    vllm = config.TARGETS["vllm"]
    paths = [path for path, _, _ in sandbox.manifest()]
    compiled = [p for p in paths if p.endswith((".cu", ".cuh", ".cpp", ".cc", ".c", ".h", ".hpp"))]
    assert len(compiled) > 200
    assert [p for p in compiled if not vllm.is_native(p) and not p.startswith(("tests/", "benchmarks/"))] == []
    modules = [p for p in paths if p.startswith("vllm/") and p.endswith(".py")]
    assert len(modules) > 1000 and [p for p in modules if vllm.is_native(p)] == []
