"""The files forkdev ships beside its code: docker/ (the wheel build image's Dockerfile, its entrypoint and the
smoke probe). In a checkout they are the repository's docker/; an installed forkdev carries them as the package
data `forkdev/_docker` (pyproject.toml maps one onto the other), so both read the same files."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

from .errors import Failure

_PACKAGE = Path(__file__).resolve().parents[1]
WHEEL_FILES = ("Dockerfile", "entrypoint.sh", "smoke_probe.py")  # the build image's recipe, in this order


@cache
def docker_dir() -> Path:
    for candidate in (_PACKAGE.parent / "docker", _PACKAGE / "_docker"):
        if all((candidate / name).is_file() for name in WHEEL_FILES):
            return candidate
    raise Failure(f"forkdev's docker/ files ({', '.join(WHEEL_FILES)}) are missing; reinstall forkdev")


def entrypoint() -> Path:
    return docker_dir() / "entrypoint.sh"


def probe_path() -> Path:
    return docker_dir() / "smoke_probe.py"


@cache
def probe() -> ModuleType:
    """docker/smoke_probe.py as a module: its wheel reader is the one the host uses too (said once)."""
    spec = importlib.util.spec_from_file_location("forkdev_smoke_probe", probe_path())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
