"""Realistic material made from nothing, for `invoke demo` and for the tests' and benchmarks' fixtures alike: a
vLLM-shaped tree (every path, size and mode of the real tree, from the manifest in forkdev/data), the files of an
upstream whose docker/Dockerfile builds in seconds (a stand-in compile of csrc/ into vllm/_C.abi3.so), a small
cmake-backed package laid out as MLC-LLM, and a Debian + Python image made with debootstrap where no image can
be pulled.

Writers take a directory and only write files; what runs a program (debootstrap, tar, the engine) goes through
the Runner. Nothing here commits: the caller makes the repositories (the demo with its own git identity).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .engine import Engine
from .errors import Failure
from .proc import Runner
from .scratch import scratch

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "vllm-tree-manifest.tsv"
SITE = "/usr/local/lib/python3.11/dist-packages"  # Debian's python3 puts pip installs here
ROOTFS = "bookworm-python3-git.tar"  # debootstrap's minbase bookworm with python3 and git, as a tar
GITIGNORE = "*.so\n__pycache__/\nbuild/\n"


def manifest(limit_bytes: int | None = None) -> list[tuple[str, int, int]]:
    """(path, size, mode) of every file of the real vLLM tree; sizes capped at `limit_bytes` when given."""
    rows = []
    for line in MANIFEST.read_text().splitlines()[1:]:
        path, size, mode = line.split("\t")
        if not size.isdigit():
            continue  # the manifest has one row with size 'BAD'; nothing can invent its size
        rows.append((path, min(int(size), limit_bytes) if limit_bytes else int(size), int(mode, 8)))
    return rows


def content(path: str, size: int, salt: str = "") -> bytes:
    """Deterministic bytes of a given size; .py files stay valid Python (a header line, then comment lines)."""
    head = f"# {path} {salt}\nVALUE = {int(hashlib.sha256((path + salt).encode()).hexdigest()[:8], 16)}\n"
    if not path.endswith(".py"):
        head = f"{path} {salt}\n"
    body = head.encode()
    pad = b"# " + hashlib.sha256(path.encode()).hexdigest().encode() + b"\n"
    body += pad * max(0, -(-(size - len(body)) // len(pad)))  # whole pad lines up to at least `size`
    return body[: max(size, len(head.encode()))] if path.endswith(".py") else body[:size]


def write_tree(root: Path, limit_bytes: int | None = 2048) -> int:
    """A checkout shaped like vLLM (same paths and modes; sizes capped at limit_bytes). Returns its file count."""
    rows = manifest(limit_bytes)
    for path, size, mode in rows:
        f = root / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content(path, size))
        if mode == 0o100755:
            f.chmod(0o755)
    (root / ".gitignore").write_text(GITIGNORE)
    return len(rows)


def age(root: Path, paths: list[str], seconds: float = 3600) -> None:
    """Make a fresh checkout's files as a used one's are: older than its index. Straight after a clone they are
    racily clean (as new as the index), so the next git command re-reads them all and looks slower than it is;
    the caller then refreshes the index (`git update-index -q --refresh`)."""
    then = time.time() - seconds
    for path in paths:
        os.utime(root / path, (then, then), follow_symlinks=False)


# The upstream's own Dockerfile, as vLLM's: the source tree at /opt/vllm-source, found through a .pth file, and a
# "compile" whose output (vllm/_C.abi3.so) is a function of the native sources. {run} is the compile's RUN line:
# with a BuildKit cache mount that logs each compile (the tests count them), or plain (docker's legacy builder
# takes a FROM image that is only local; 20.10's BuildKit asks a registry for it).
BUILD_DOCKERFILE = """\
FROM {os_image} AS base
RUN mkdir -p {site} && echo /opt/vllm-source > {site}/vllm-editable.pth

FROM base AS vllm-openai
ARG max_jobs=1
ARG SETUPTOOLS_SCM_PRETEND_VERSION=unknown
ARG compile_seconds=0
COPY . /opt/vllm-source
# The "compile": the kernels' bytes are a function of the native sources.
{run}
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
"""
COMPILE = (
    'cd /opt/vllm-source && sleep "$compile_seconds" && \\\n'
    "    find csrc -type f | sort | xargs cat | sha256sum > vllm/_C.abi3.so && \\\n"
    '    echo "$SETUPTOOLS_SCM_PRETEND_VERSION" > vllm/BUILD_VERSION'
)


def dockerfile(os_image: str, *, count_compiles: bool = True) -> str:
    """The upstream's docker/Dockerfile, FROM `os_image`. count_compiles: each compile is logged in a BuildKit
    cache mount (RUN --mount=type=cache), as vLLM's Dockerfile uses one; without it any builder can build it."""
    run = f"RUN {COMPILE}"
    if count_compiles:
        run = f"RUN --mount=type=cache,target=/root/.cache/forkdev-compile \\\n    {COMPILE} && \\\n"
        run += "    date >> /root/.cache/forkdev-compile/runs"
    return BUILD_DOCKERFILE.format(os_image=os_image, site=SITE, run=run)


def write_buildable(root: Path, os_image: str, limit_bytes: int | None = 512, *, count_compiles: bool = True) -> int:
    """The files of a vLLM-shaped upstream whose docker/Dockerfile builds in seconds from `os_image`; file count."""
    count = write_tree(root, limit_bytes=limit_bytes)
    (root / "docker" / "Dockerfile").write_text(dockerfile(os_image, count_compiles=count_compiles))
    (root / "pyproject.toml").write_text(  # as vLLM's: the version comes from git through setuptools-scm
        '[build-system]\nrequires = ["setuptools", "setuptools-scm"]\n\n[tool.setuptools_scm]\n'
    )
    (root / ".dockerignore").write_text(".git\n")
    return count


# ---- a small cmake-backed Python package, laid out as MLC-LLM is ---------------------------------------------
PACKAGE_CMAKE = """\
cmake_minimum_required(VERSION 3.18)
project(mlc_llm C)
# A cache variable: a -DGREETING=... on the command line must win (no plain set() overriding it).
set(GREETING "hello" CACHE STRING "the greeting compiled into the library")
add_library(mlc_llm SHARED cpp/greet.c)
target_compile_definitions(mlc_llm PRIVATE "GREETING=\\"${GREETING}\\"")
"""

PACKAGE_C = """\
#include <stdlib.h>

/* getenv keeps libc.so.6 among the library's needs, as any real library has it. */
const char *mlc_greet(void) {
  const char *override = getenv("MLC_GREETING");
  return override ? override : GREETING;
}
int mlc_add(int a, int b) { return a + b; }
"""

PACKAGE_SETUP = """\
import os
import shutil

from setuptools import setup
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


# As MLC-LLM's setup.py: the libraries cmake built in ../build are copied into the package.
if {ship_lib}:
    shutil.copy(os.path.join(HERE, "..", "build", "libmlc_llm.so"), os.path.join(HERE, "{module}"))
setup(
    name="{name}",
    version="{version}",
    packages=["{module}"],
    package_data={{"{module}": ["*.so"]}},
    entry_points={{"console_scripts": ["{module} = {module}.__main__:main"]}},
    {distclass}
)
"""

PACKAGE_INIT = """\
import ctypes
import os

{extra_import}
__version__ = "{version}"
_LIB = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmlc_llm.so"))
_LIB.mlc_greet.restype = ctypes.c_char_p


def greet() -> str:
    return _LIB.mlc_greet().decode()


def add(a: int, b: int) -> int:
    return _LIB.mlc_add(a, b)
"""

PACKAGE_MAIN = """\
import sys

from . import add, greet


def main() -> int:
    if "--help" in sys.argv[1:]:
        print("usage: mlc_llm [--help]")
    print(greet(), add(2, 3))
    return 0 if add(2, 3) == 5 else 1


if __name__ == "__main__":
    sys.exit(main())
"""


def write_cmake_package(
    root: Path,
    *,
    version: str = "0.1.0",
    pure: bool = False,
    ship_lib: bool = True,
    import_error: bool = False,
    name: str = "mlc_llm",
    module: str = "mlc_llm",
) -> None:
    """A checkout laid out as MLC-LLM is: a root CMakeLists.txt builds libmlc_llm.so (a C library) into build/,
    python/setup.py copies it into the package, whose __init__ loads it with ctypes.
    pure=True: no BinaryDistribution, so the wheel is tagged py3-none-any while carrying the .so.
    ship_lib=False: the package never gets the library (a broken wheel).
    import_error=True: the package's __init__ imports a module that does not exist.
    name, module: the distribution's name and its import name (a fork's package may differ from MLC-LLM's)."""
    (root / "cpp").mkdir(parents=True, exist_ok=True)
    (root / "python" / module).mkdir(parents=True, exist_ok=True)
    (root / "CMakeLists.txt").write_text(PACKAGE_CMAKE)
    (root / "cpp" / "greet.c").write_text(PACKAGE_C)
    distclass = "" if pure else "distclass=BinaryDistribution,"
    (root / "python" / "setup.py").write_text(
        PACKAGE_SETUP.format(version=version, ship_lib=ship_lib, distclass=distclass, name=name, module=module)
    )
    extra = "import mlc_llm_missing_dependency  # noqa: F401" if import_error else ""
    (root / "python" / module / "__init__.py").write_text(PACKAGE_INIT.format(version=version, extra_import=extra))
    (root / "python" / module / "__main__.py").write_text(PACKAGE_MAIN)
    (root / ".gitignore").write_text("build/\n*.so\n*.egg-info/\n__pycache__/\n")


# ---- a Debian + Python image made from nothing ---------------------------------------------------------------
def rootfs_tar(cache: Path, run: Runner) -> Path:
    """A minbase Debian bookworm with python3 and git, made with debootstrap once and kept in `cache`. Made in a
    scratch directory beside it (a killed run's is removed by the next) and moved in whole."""
    tar = cache / ROOTFS
    if tar.exists():
        return tar
    if run.dry_run:
        raise Failure(f"dry run stops here: a real run makes {tar} with debootstrap (about a minute, as root)")
    if os.geteuid() != 0:
        raise Failure(
            "debootstrap needs root to make the Debian image; run as root, or set demo.os_image to an image with "
            "python3 that this machine has or can pull"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with scratch("rootfs", cache) as tmp:
        target = tmp / "root"
        debian = ("bookworm", str(target), "http://deb.debian.org/debian")
        run(["debootstrap", "--variant=minbase", "--include=python3,git", *debian], timeout=1800)
        run(["tar", "-C", str(target), "-cf", str(tmp / "rootfs.tar"), "."])
        os.replace(tmp / "rootfs.tar", tar)
    return tar


def os_image(engine: Engine, run: Runner, ref: str, cache: Path) -> bool:
    """Make `ref` from the cached rootfs when the engine does not have it; True when it was made now."""
    if engine.inspect_image(run, ref) is not None:
        return False
    tar = rootfs_tar(cache, run)
    run(engine.cmd("import", "--", str(tar), ref))
    return True


# ---- small pybind11 packages built by a pyproject backend that runs cmake itself ----------------------------
# Laid out as real third-party packages are (pybind11's scikit_build_example and cmake_example): the backend
# configures CMakeLists.txt, which builds the extension module greeter._core. GREETING is a cache variable, so a
# -DGREETING=... in CMAKE_ARGS must reach it.
PYBIND_CMAKE = """\
cmake_minimum_required(VERSION 3.15...3.31)
project(greeter LANGUAGES CXX)
set(GREETING "hello" CACHE STRING "the greeting compiled into the module")
find_package(Python REQUIRED COMPONENTS Interpreter Development.Module)
find_package(pybind11 CONFIG REQUIRED)
pybind11_add_module(_core src/core.cpp)
target_compile_definitions(_core PRIVATE "GREETING=\\"${{GREETING}}\\"")
{install}
"""

PYBIND_CPP = """\
#include <pybind11/pybind11.h>

static const char *greeting = GREETING;  // kept whole in .rodata, where a test finds it

PYBIND11_MODULE(_core, m) {
  m.attr("GREETING") = greeting;
  m.def("greet", []() { return std::string(greeting); });
  m.def("add", [](int a, int b) { return a + b; });
}
"""

PYBIND_INIT = """\
from ._core import add, greet

__version__ = "{version}"
__all__ = ["add", "greet"]
"""

PYBIND_MAIN = """\
from . import add, greet

print(greet(), add(2, 3))
"""

SKBUILD_PYPROJECT = """\
[build-system]
requires = ["scikit-build-core>=0.10", "pybind11>=3"]
build-backend = "scikit_build_core.build"

[project]
name = "{name}"
version = "{version}"

[tool.scikit-build]
wheel.packages = ["src/greeter"]
"""

SETUPTOOLS_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64", "pybind11>=3"]
build-backend = "setuptools.build_meta"
"""

# pybind11's cmake_example: a CMakeExtension whose build_ext runs cmake, taking CMAKE_ARGS from the environment.
SETUPTOOLS_SETUP = """\
import os
import subprocess
import sys
from pathlib import Path

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build = Path(self.build_temp) / ext.name
        build.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={{out}}{{os.sep}}",
            f"-DPython_EXECUTABLE={{sys.executable}}",
            f"-Dpybind11_DIR={{pybind11.get_cmake_dir()}}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        args += [item for item in os.environ.get("CMAKE_ARGS", "").split(" ") if item]
        here = Path(__file__).resolve().parent
        subprocess.run(["cmake", "-S", str(here), "-B", str(build), *args], check=True)
        subprocess.run(["cmake", "--build", str(build)], check=True)


setup(
    name="{name}",
    version="{version}",
    packages=["greeter"],
    package_dir={{"": "src"}},
    ext_modules=[CMakeExtension("greeter._core")],
    cmdclass={{"build_ext": CMakeBuild}},
)
"""


def write_pybind_package(
    root: Path, *, backend: str = "scikit-build-core", name: str = "greeter", version: str = "0.1.0"
) -> None:
    """A third-party C++ extension package (pybind11) whose pyproject backend runs cmake: scikit-build-core, or
    setuptools with a cmake build_ext. Its import name is greeter, its distribution `name`."""
    if backend not in ("scikit-build-core", "setuptools"):
        raise ValueError(f"backend {backend!r} is not scikit-build-core or setuptools")
    (root / "src" / "greeter").mkdir(parents=True, exist_ok=True)
    skbuild = backend == "scikit-build-core"
    install = "install(TARGETS _core DESTINATION greeter)" if skbuild else ""
    (root / "CMakeLists.txt").write_text(PYBIND_CMAKE.format(install=install))
    (root / "src" / "core.cpp").write_text(PYBIND_CPP)
    (root / "src" / "greeter" / "__init__.py").write_text(PYBIND_INIT.format(version=version))
    (root / "src" / "greeter" / "__main__.py").write_text(PYBIND_MAIN)
    if skbuild:
        (root / "pyproject.toml").write_text(SKBUILD_PYPROJECT.format(name=name, version=version))
    else:
        (root / "pyproject.toml").write_text(SETUPTOOLS_PYPROJECT)
        (root / "setup.py").write_text(SETUPTOOLS_SETUP.format(name=name, version=version))
    (root / ".gitignore").write_text("build/\n*.so\n*.egg-info/\n__pycache__/\n")


# ---- a CPU-only native extension shaped as vLLM's: tens of translation units, built through cmake by setup.py ----
# Two extension modules (vllm/_C.abi3.so and vllm/_moe_C.abi3.so) listed source by source in CMakeLists.txt, as
# vLLM's are, built by a setup.py whose build_ext configures cmake in its build_temp, builds the targets and
# installs each into the package (vLLM's cmake_build_ext, cut down). Every unit includes csrc/ops.h; the first
# QUANT_UNITS include csrc/quant.h too (a header change recompiles exactly those). _C.value() sums every unit's
# vllm_unit_NN(3) = len(str(sum(3 .. 18+NN))) + NN * 3 + VLLM_BIAS (0 unless CMakeLists.txt defines it), plus
# quant_bias() for the quant units: a test that edits one unit, the header or the build system sees the change
# in the image it runs.
NATIVE_UNIT = """\
#include "ops.h"
{quant_include}
#include <algorithm>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#ifndef VLLM_BIAS  // CMakeLists.txt may define it (a test's build-system change)
#define VLLM_BIAS 0
#endif

// unit {n}: a little of what a kernel's host code holds (containers, strings, algorithms), so it compiles as
// real code does, not in no time.
long vllm_unit_{n:02d}(long x) {{
  std::vector<long> v(16 + {n});
  std::iota(v.begin(), v.end(), x);
  std::sort(v.rbegin(), v.rend());
  std::map<std::string, long> seen;
  for (long item : v) seen[std::to_string(item)] += item;
  std::string s = std::to_string(std::accumulate(v.begin(), v.end(), 0L));
  return static_cast<long>(s.size()) + {n} * x + VLLM_BIAS{quant_term};
}}
"""

NATIVE_OPS_H = """\
#pragma once
// Every unit of _C: declared here, summed by torch_bindings.cpp.
{declarations}
long vllm_total(long x);
"""

NATIVE_QUANT_H = """\
#pragma once
// Included by the quantization units only: a change here recompiles exactly those.
inline long quant_bias() { return 1; }
"""

NATIVE_BINDINGS = """\
#define Py_LIMITED_API 0x03080000
#include <Python.h>

#include "ops.h"

long vllm_total(long x) {{
  long total = 0;
{calls}
  return total;
}}

static PyObject *value(PyObject *, PyObject *) {{ return PyLong_FromLong(vllm_total(3)); }}

static PyMethodDef methods[] = {{
    {{"value", value, METH_NOARGS, "every unit at 3, summed"}}, {{nullptr, nullptr, 0, nullptr}}}};
static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, "{name}", nullptr, -1, methods}};

PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&module); }}
"""

NATIVE_CMAKE = """\
cmake_minimum_required(VERSION 3.18)
project(vllm_cpu_extensions LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 17)
find_package(Python REQUIRED COMPONENTS Interpreter Development.Module)

# As vLLM's CMakeLists.txt: each extension's sources listed, each target installed into the package as its own
# component (setup.py installs them one by one).
function(define_extension name)
  Python_add_library(${{name}} MODULE ${{ARGN}})
  set_target_properties(${{name}} PROPERTIES PREFIX "" SUFFIX ".abi3.so")
  target_include_directories(${{name}} PRIVATE csrc)
  install(TARGETS ${{name}} LIBRARY DESTINATION vllm COMPONENT ${{name}})
endfunction()

set(VLLM_EXT_SRC
  "csrc/torch_bindings.cpp"
{c_sources})
define_extension(_C ${{VLLM_EXT_SRC}})

set(VLLM_MOE_EXT_SRC
  "csrc/moe/moe_bindings.cpp"
{moe_sources})
define_extension(_moe_C ${{VLLM_MOE_EXT_SRC}})
"""

NATIVE_SETUP = """\
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[], py_limited_api=True)


class cmake_build_ext(build_ext):
    # vLLM's, cut down: configure in build_temp (again each time: cmake's configure of a configured tree is
    # incremental), build every target, install each into the package.
    def build_extensions(self):
        build = Path(self.build_temp).resolve()
        build.mkdir(parents=True, exist_ok=True)
        args = ["-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *args], check=True)
        targets = [ext.name.split(".")[-1] for ext in self.extensions]
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build), "-j", jobs, "--target", *targets], check=True)
        for ext in self.extensions:
            prefix = Path(self.get_ext_fullpath(ext.name)).resolve().parent.parent
            target = ext.name.split(".")[-1]
            install = ["cmake", "--install", str(build), "--prefix", str(prefix), "--component", target]
            subprocess.run(install, check=True)


setup(
    name="vllm",
    version="0.0.1",
    packages=["vllm"],
    ext_modules=[CMakeExtension("vllm._C"), CMakeExtension("vllm._moe_C")],
    cmdclass={"build_ext": cmake_build_ext},
)
"""

QUANT_UNITS = 4  # units 0..3 include csrc/quant.h


def native_unit(n: int) -> str:
    """The source of unit `n` of _C (csrc/unit_NN.cpp); a test edits its return line."""
    quant = n < QUANT_UNITS
    return NATIVE_UNIT.format(
        n=n, quant_include='#include "quant.h"' if quant else "", quant_term=" + quant_bias()" if quant else ""
    )


def write_native_extension(root: Path, units: int = 24, moe_units: int = 4) -> None:
    """A vLLM-shaped checkout whose native part is a CPU-only extension of `units` + `moe_units` translation units
    (and two bindings), built by `python3 setup.py build_ext --inplace` through cmake into vllm/_C.abi3.so and
    vllm/_moe_C.abi3.so; the Python package is vllm/ as in the real tree."""
    (root / "csrc" / "moe").mkdir(parents=True, exist_ok=True)
    (root / "vllm").mkdir(parents=True, exist_ok=True)
    for n in range(units):
        (root / "csrc" / f"unit_{n:02d}.cpp").write_text(native_unit(n))
    declarations = "\n".join(f"long vllm_unit_{n:02d}(long x);" for n in range(units))
    (root / "csrc" / "ops.h").write_text(NATIVE_OPS_H.format(declarations=declarations))
    (root / "csrc" / "quant.h").write_text(NATIVE_QUANT_H)
    calls = "\n".join(f"  total += vllm_unit_{n:02d}(x);" for n in range(units))
    (root / "csrc" / "torch_bindings.cpp").write_text(NATIVE_BINDINGS.format(calls=calls, name="_C"))
    for n in range(moe_units):
        (root / "csrc" / "moe" / f"moe_{n:02d}.cpp").write_text(
            native_unit(100 + n).replace(f"vllm_unit_{100 + n}", f"vllm_moe_{n:02d}").replace('"ops.h"', '"moe.h"')
        )
    (root / "csrc" / "moe" / "moe.h").write_text(
        "#pragma once\n"
        + "".join(f"long vllm_moe_{n:02d}(long x);\n" for n in range(moe_units))
        + "long vllm_total(long x);\n"
    )
    moe_calls = "\n".join(f"  total += vllm_moe_{n:02d}(x);" for n in range(moe_units))
    (root / "csrc" / "moe" / "moe_bindings.cpp").write_text(
        NATIVE_BINDINGS.format(calls=moe_calls, name="_moe_C").replace('"ops.h"', '"moe.h"')
    )
    c_sources = "".join(f'  "csrc/unit_{n:02d}.cpp"\n' for n in range(units))
    moe_sources = "".join(f'  "csrc/moe/moe_{n:02d}.cpp"\n' for n in range(moe_units))
    (root / "CMakeLists.txt").write_text(NATIVE_CMAKE.format(c_sources=c_sources, moe_sources=moe_sources))
    (root / "setup.py").write_text(NATIVE_SETUP)
    (root / "vllm" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    (root / "vllm" / "envs.py").write_text("ENVS = 'upstream'\n")
    (root / ".gitignore").write_text("*.so\nbuild/\n__pycache__/\n*.egg-info/\n")
