"""What smoke imports comes from the wheel itself (issue 19, item 1): top_level.txt, else its RECORD; a profile's
smoke command and import name belong to that profile's distribution only."""

from __future__ import annotations

import zipfile

import pytest
from support import make_wheel, record_hash

from forkdev.core import assets, config, wheelfile


def test_import_names_come_from_packages_modules_and_extension_modules_never_metadata():
    paths = [
        "greeter/__init__.py",
        "greeter/_core.cpython-311-x86_64-linux-gnu.so",
        "_greeter_native.abi3.so",
        "helper.py",
        "greeter.libs/libgomp-a34b3233.so.1.0.0",  # auditwheel's vendored libraries
        "greeter-1.0.dist-info/METADATA",
        "greeter-1.0.data/scripts/greet",
        "distutils-precedence.pth",
        "not-a-module.py",
    ]
    assert assets.probe().import_names(paths) == ["_greeter_native", "greeter", "helper"]


def test_a_wheel_without_top_level_txt_is_read_from_its_record(tmp_path):
    """scikit-build-core, meson-python and maturin write no top_level.txt."""
    files = {
        "greeter/__init__.py": b"from ._core import add\n",
        "greeter/_core.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
        "greeter-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: greeter\nVersion: 1.0\n",
        "greeter-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nTag: cp311-cp311-linux_x86_64\n",
    }
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files.items())
    files["greeter-1.0.dist-info/RECORD"] = (record + "greeter-1.0.dist-info/RECORD,,\n").encode()
    path = tmp_path / "greeter-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    assert wheelfile.read(path).top_level == ("greeter",)


def test_top_level_txt_wins_when_the_wheel_has_one(tmp_path):
    assert wheelfile.read(make_wheel(tmp_path / "pkg-1.0-cp311-cp311-linux_x86_64.whl")).top_level == ("pkg",)


@pytest.mark.parametrize(
    ("target", "dist", "owned"),
    [
        ("vllm", "vllm", True),
        ("vllm", "greeter", False),  # a third-party package built under the default profile
        ("mlc-llm", "mlc-llm", True),
        ("mlc-llm", "mlc_llm", True),  # PEP 503: one name
        ("mlc-llm", "mlc-chat", False),
        ("sglang", "SGLang", True),
    ],
)
def test_a_profile_owns_only_its_own_distribution(target, dist, owned):
    assert config.owns(config.TARGETS[target], dist) is owned


def test_a_fork_can_name_its_distribution():
    fork = config.target("mlc-llm", {"mlc-llm": {"distribution": "mlc-ai-nightly"}})
    assert config.owns(fork, "mlc_ai_nightly") and not config.owns(fork, "mlc-llm")
