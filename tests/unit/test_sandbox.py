"""The sandbox's material (forkdev/core/sandbox.py), made by `invoke demo` and by the tests' fixtures alike."""

from __future__ import annotations

import time

from forkdev.core import sandbox


def test_the_manifest_ships_in_the_package_with_every_file_of_the_real_tree():
    rows = sandbox.manifest()
    assert sandbox.MANIFEST.is_relative_to(sandbox.MANIFEST.parents[2] / "forkdev")
    assert len(rows) == 4494 and sum(size for _, size, _ in rows) > 60_000_000  # the row sized 'BAD' is left out
    assert ("vllm/envs.py", 86129, 0o100755) in rows
    assert max(size for _, size, _ in sandbox.manifest(2048)) == 2048


def test_file_contents_have_their_exact_size_stay_python_and_do_not_change_between_runs():
    head = len(sandbox.content("vllm/x.py", 0))  # its two first lines: the least a .py file holds
    for size in (0, 1, 30, 65, 66, 67, 500, 2048):
        data = sandbox.content("vllm/x.py", size)
        assert len(data) == max(size, head)
        compile(data, "vllm/x.py", "exec")
        assert len(sandbox.content("docs/a.png", size)) == size
    assert sandbox.content("vllm/x.py", 900, salt="1") != sandbox.content("vllm/x.py", 900)
    assert sandbox.content("vllm/x.py", 900) == sandbox.content("vllm/x.py", 900)


def test_the_real_trees_largest_file_is_made_in_well_under_a_second():
    # The tree at its real sizes (62 MB) is the demo's: a file built by appending line after line took 71 s for
    # the 4 MB image of the docs.
    start = time.monotonic()
    data = sandbox.content("docs/assets/design/arch_overview/v1_process_architecture_tp4.png", 4010836)
    assert time.monotonic() - start < 1.0 and len(data) == 4010836


def test_the_upstreams_dockerfile_counts_compiles_only_where_a_cache_mount_can_be_used():
    counted = sandbox.dockerfile("forkdev-test/debian:bookworm")
    plain = sandbox.dockerfile("forkdev-demo/debian:bookworm", count_compiles=False)
    assert "RUN --mount=type=cache" in counted and "forkdev-compile/runs" in counted
    # docker's legacy builder takes a FROM image that is only local; 20.10's BuildKit would ask a registry for it
    assert "--mount" not in plain and plain.startswith("FROM forkdev-demo/debian:bookworm AS base\n")
    assert "sha256sum > vllm/_C.abi3.so" in plain and "vllm-openai" in plain
