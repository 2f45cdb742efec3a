"""Issue 19, "how it is checked": real public packages from their sdists on the package index, each built with no
config in the wheel image (docker and podman) and on the host (--native), repaired to manylinux, and smoked.

The sdists are pinned by version and sha256, fetched once with the host's pip into a cache that outlives the
session (~/.cache/forkdev-tests/sdists, or $XDG_CACHE_HOME's), and checked against the pin on every use."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import support

# name, version, sha256, import name: small, and quick to build on two CPUs.
SDISTS = {
    # scikit-build-core + nanobind, through its pyproject.toml
    "nanoforte": ("0.0.1", "abc4dc208d2478d3febc3b73085e6fa297789d69d57146ec9a3bdf9676f9a0fb", "nanoforte"),
    # setuptools whose build_ext runs cmake itself (pybind11's cmake_example: a CMakeExtension and a CMakeBuild in
    # setup.py, an old pybind11 vendored); its pyproject.toml asks for unpinned cmake and ninja wheels. Its package
    # imports the extension module, pybind11_cubao_cmake_example, that cmake built.
    "cubao-cmake-example": (
        "0.0.3",
        "a66d90ebc5be0cf27182d638b88197e01a35d75bfe9b89cbbb710ec39bc92fec",
        "cubao_cmake_example",
    ),
}
MANYLINUX = r"cp311-cp311-manylinux[\w.]*_x86_64"


def sdist_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "forkdev-tests" / "sdists"


def fetch(name: str) -> Path:
    """The pinned sdist of `name`, from the cache when its sha256 matches, else from the index."""
    version, sha256, _ = SDISTS[name]
    cache = sdist_cache()
    cache.mkdir(parents=True, exist_ok=True)

    def cached() -> Path | None:
        names = {f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}.tar.gz"}
        return next((cache / n for n in sorted(names) if (cache / n).is_file()), None)

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    path = cached()
    if path is None or digest(path) != sha256:
        # The package's own sdist; the build requirements pip installs to read its metadata may be wheels (an sdist
        # of cmake would be compiled first).
        argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", name, "-d", str(cache)]
        subprocess.run([*argv, f"{name}=={version}"], check=True)
        path = cached()
    assert path, f"pip download wrote no sdist of {name}=={version} into {cache}"
    assert digest(path) == sha256, f"{path} has sha256 {digest(path)}, not the pinned {sha256}"
    return path


@pytest.fixture(scope="session")
def sdists() -> dict[str, Path]:
    return {name: fetch(name) for name in SDISTS}


@pytest.fixture(params=sorted(SDISTS))
def checkout(request, sdists, tmp_path) -> tuple[str, Path]:
    """The sdist unpacked into a git checkout (`invoke wheel` builds a checkout's commit)."""
    name = request.param
    with tarfile.open(sdists[name]) as tar:
        tar.extractall(tmp_path, filter="data")
    (root,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    support.git(root, "init", "-q")
    support.commit_all(root, f"{name} {SDISTS[name][0]} as published")
    return name, root


def check(built, smoke, name: str) -> None:
    version, _, module = SDISTS[name]
    assert built.code == 0, built.err
    wheel = Path(built.json["wheel"])
    assert re.fullmatch(rf"{name.replace('-', '_')}-{re.escape(version)}-{MANYLINUX}\.whl", wheel.name), wheel.name
    assert built.json["repaired_from"]
    smoked = smoke("smoke", "--wheel", str(wheel), "--installer", "pip", "--json")
    assert smoked.code == 0, smoked.err
    (result,) = smoked.json["wheels"]
    assert result["packages"] == [module] and result["extensions_imported"], result


def test_a_published_sdist_builds_on_the_host_is_repaired_and_smokes_with_no_config(invoke, checkout, tmp_path):
    name, root = checkout
    built = invoke("wheel", str(root), "--native", "--isolation", "--out", str(tmp_path / "dist"), "--json")
    check(built, invoke, name)


@pytest.mark.engine
def test_a_published_sdist_builds_in_the_image_is_repaired_and_smokes_with_no_config(
    tool, engine, wheel_image, checkout, tmp_path
):
    name, root = checkout
    env = {**support.wheel_env(engine), "INVOKE_WHEEL_CCACHE": str(tmp_path / "ccache")}
    built = tool("wheel", str(root), "--isolation", "--out", str(tmp_path / "dist"), "--json", env=env)
    check(built, tool, name)
