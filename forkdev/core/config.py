"""Target profiles and every config default.

The collection hands DEFAULTS to invoke, so `invoke.yaml`, `INVOKE_*` variables and flags can override any key.
A task calls `load(c, ...)` once: the settings every task shares (target, upstream, cache, engine, registry,
image naming, secrets, container) and one section per task (dev, nightly, batch, wheel, overlay, patches, smoke,
demo, cron, fork_sync), resolved and validated in this one place, as a frozen `Settings` value; a task reads that
and its flags, never `c.config`, and shared layers take such plain values, never the context. A value a flag
overrides is kept as configured and checked with the flag (tasking.setting), so a good flag wins over a bad value;
what needs a heavy module to check (fork_sync's strategies: core.sync) is checked by its task.
A fork changes a profile from config: `targets: {vllm: {native: [...], build_args: {...}}}` is merged over the
built-in profile of that name, and a new name defines a new target.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cache as store
from . import secrets, validate
from .engine import Engine
from .errors import Failure
from .proc import Runner
from .registry import Policy
from .validate import repository as valid_repository


@dataclass(frozen=True)
class Target:
    """A target profile: the upstream, where its package lives, and how its images and native code are built."""

    name: str
    upstream: str
    package: str  # import name
    package_path: str  # where the package lives in the repository
    native: tuple[str, ...]  # a change under these means the base must be recompiled ("dir/" or a file)
    published_base: str | None  # an upstream image per commit; "{sha}" is the full commit
    nightly_image: str  # the repository `invoke nightly` tags (`:nightly`, `:nightly-<sha>`)
    dockerfile: str = "docker/Dockerfile"  # in the upstream repository, for full builds
    stage: str = ""  # the Dockerfile's target stage ("" = the last)
    build_args: Mapping[str, str] = field(default_factory=dict)
    version_env: str = "SETUPTOOLS_SCM_PRETEND_VERSION"  # how a build without .git learns its version
    # The build args its Dockerfile takes for what config and this machine decide ("" = it takes none): the GPU
    # architectures (config nightly.cuda_arch), the upstream's precompiled kernels (--precompiled), and the
    # parallelism of the compile (from this machine's CPUs and memory: about 8 GiB per job, as nvcc wants).
    arch_arg: str = ""
    precompiled_arg: str = ""
    jobs_arg: str = ""
    threads_arg: str = ""
    # How `invoke wheel` builds it: `wheel_cmake` names a directory configured with cmake and built into build/
    # first ("" = none: the package's own setup runs cmake); then `pip wheel` packages `wheel_python`.
    wheel_cmake: str = ""
    wheel_python: str = "."
    cmake_args: tuple[str, ...] = ()  # -DNAME=VALUE options for that configure step
    smoke: str = ""  # command run in the fresh environment after the import checks ("" = import checks only)
    # The distribution the profile builds ("" = `package`): its smoke command runs for that wheel only.
    distribution: str = ""
    # Why each native pattern is native ({pattern: reason}); a pattern without one reads "listed as native".
    why: Mapping[str, str] = field(default_factory=dict)
    # Paths under a native area that ship as they are (sources compiled at run time, e.g. JIT kernels).
    shipped: tuple[str, ...] = ()
    checked_against: str = ""  # the upstream commit this layout was checked against ("" = never checked)
    # How `invoke dev --native` compiles the native part in the build environment, in the source tree: the command
    # ({build}: the build directory kept between runs, {src}: the tree, {jobs}: the parallel jobs), and the one
    # that rebuilds a configured build directory whose build system did not change ("" = the first again), the
    # compiled files they leave in the tree (globs of repository paths), the paths whose change needs a fresh
    # configure of the build directory, and the image it runs in (config dev.native_image first; "" = the stage
    # `native_stage` of the target's Dockerfile, built at the base's commit with the base's build args, where it
    # names one, else the wheel image).
    native_build: tuple[str, ...] = ()
    native_rebuild: tuple[str, ...] = ()
    native_outputs: tuple[str, ...] = ()
    native_configure: tuple[str, ...] = ("CMakeLists.txt", "cmake/", "setup.py", "pyproject.toml")
    native_image: str = ""
    native_stage: str = ""

    def classify(self, path: str) -> tuple[bool, str, str]:
        """(native, the rule that decided, why): a shipped exception wins over the native area it sits in."""
        for rule in self.shipped:
            if matches(rule, path):
                return False, rule, "run-time compiled sources: they ship as they are"
        for rule in self.native:
            if matches(rule, path):
                return True, rule, self.why.get(rule, "listed as native")
        return False, "", "not under a native path: ships as Python"

    def is_native(self, path: str) -> bool:
        return self.classify(path)[0]


def matches(rule: str, path: str) -> bool:
    """Whether a profile's path rule takes `path`: "dir/" everything under it, anything else that one path."""
    return path.startswith(rule) if rule.endswith("/") else path == rule


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="vllm",
            upstream="https://github.com/vllm-project/vllm.git",
            package="vllm",
            package_path="vllm",
            native=("csrc/", "CMakeLists.txt", "cmake/", "setup.py", "pyproject.toml", "requirements/", "rust/"),
            why={
                "csrc/": "C++/CUDA kernel sources compiled into vllm/_C*.so by CMakeLists.txt",
                "CMakeLists.txt": "the CMake project that compiles csrc/",
                "cmake/": "CMake modules (external projects: FlashMLA, vllm-flash-attn, CUTLASS)",
                "setup.py": "drives the CMake build and decides which extensions are compiled",
                "pyproject.toml": "the build system's requirements (torch, cmake) the kernels are built against",
                "requirements/": "build and runtime pins (torch) the compiled kernels are ABI-bound to",
                "rust/": "Rust sources compiled into a native extension",
            },
            checked_against="f0d3ad9f3e080b51322fde6c20ea4889099819aa",
            # vLLM publishes an image per main commit: vllm/vllm-openai:nightly-<full sha>.
            published_base="vllm/vllm-openai:nightly-{sha}",
            nightly_image="forkdev/vllm",
            dockerfile="docker/Dockerfile",
            stage="vllm-openai",
            arch_arg="torch_cuda_arch_list",
            precompiled_arg="VLLM_USE_PRECOMPILED",
            jobs_arg="max_jobs",
            threads_arg="nvcc_threads",
            smoke="vllm --version",  # its console script: the entry points and the import of the CLI
            # docs/contributing/incremental_build.md: setup.py's cmake_build_ext configures cmake in build_temp and
            # installs each extension into the package; ninja then recompiles only what changed.
            native_build=("python3", "setup.py", "build_ext", "--inplace", "--build-temp", "{build}"),
            # Then, as incremental_build.md's `cmake --build --target install`: ninja in the configured directory
            # and cmake's install of every extension into the tree, without setup.py's configure and copies.
            native_rebuild=("sh", "-c", "cmake --build {build} -j {jobs} && cmake --install {build} --prefix {src}"),
            native_outputs=("vllm/**/*.so",),
            native_configure=("CMakeLists.txt", "cmake/", "setup.py", "pyproject.toml", "requirements/"),
            native_stage="base",  # docker/Dockerfile's stage with CUDA, the compilers and torch, before `build`
        ),
        Target(
            name="sglang",
            upstream="https://github.com/sgl-project/sglang.git",
            package="sglang",
            package_path="python/sglang",
            native=("sgl-kernel/", "python/sglang/kernels/aot/", "python/pyproject.toml", "docker/"),
            why={
                "sgl-kernel/": "the sgl-kernel wheel: CUDA/C++ kernels compiled by its own CMake build",
                "python/sglang/kernels/aot/": "ahead-of-time kernels: their own pyproject.toml, compiled at build",
                "python/pyproject.toml": "the package's build and runtime pins (torch, sgl-kernel)",
                "docker/": "the Dockerfile that builds and installs the compiled kernels",
            },
            shipped=("python/sglang/jit_kernel/",),
            # At this commit python/sglang/kernels/aot/pyproject.toml is the sglang-kernel package (scikit-build-core,
            # CMake): the kernels that were sgl-kernel/, now inside the Python package. sgl-kernel/ stays native for
            # forks of older trees.
            checked_against="c631da2ce36827710058eded3119037bd0eaa966",
            published_base=None,
            nightly_image="forkdev/sglang",
            dockerfile="docker/Dockerfile",
            wheel_python="python",  # python/pyproject.toml; the kernels are the separate sgl-kernel wheel
        ),
        Target(
            name="mlc-llm",
            upstream="https://github.com/mlc-ai/mlc-llm.git",
            package="mlc_llm",
            package_path="python/mlc_llm",
            native=(
                "cpp/",
                "3rdparty/",
                "CMakeLists.txt",
                "cmake/",
                "pyproject.toml",
                "python/setup.py",
                "python/requirements.txt",
                "rust/",
            ),
            why={
                "cpp/": "the C++ runtime compiled into libmlc_llm*.so",
                "3rdparty/": "submodules compiled with it (TVM, tokenizers-cpp and its Rust crate, xgrammar, ...)",
                "CMakeLists.txt": "the CMake project that builds libmlc_llm*.so",
                "cmake/": "CMake configuration (gen_cmake_config.py, the TVM location)",
                "pyproject.toml": "scikit-build-core's build of the root CMake project (its cmake.args, build type)",
                "python/setup.py": "packages the compiled libraries into the wheel (trees before the root pyproject)",
                "python/requirements.txt": "runtime pins the compiled libraries are built against",
                "rust/": "the Rust bindings crate of older trees (Cargo.toml, build.rs), compiled by cargo",
            },
            checked_against="79d603f085f50500e9509fa01785ffa7ecfaaa93",
            published_base=None,
            nightly_image="forkdev/mlc-llm",
            dockerfile="docker/Dockerfile",
            # MLC-LLM's layout: the root CMakeLists.txt builds libmlc_llm*.so into build/, python/ packages them.
            wheel_cmake=".",
            wheel_python="python",
            smoke="mlc_llm --help",
            # As its python/setup.py expects: libmlc_llm*.so built by the root CMakeLists.txt, copied into the package.
            native_build=(
                "sh",
                "-c",
                "cmake -S . -B {build} -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build {build} -j {jobs} && "
                "cp {build}/libmlc_llm*.so python/mlc_llm/",
            ),
            native_outputs=("python/mlc_llm/libmlc_llm*.so",),
            native_configure=("CMakeLists.txt", "cmake/", "3rdparty/"),
        ),
    )
}

DEFAULTS: dict[str, Any] = {
    "target": "vllm",
    "targets": {},  # per-target overrides of the profiles above (any field of Target)
    "cache_dir": "~/.cache/forkdev",
    "engine": {
        "name": "",  # docker | podman | "" (auto: DOCKER_HOST/CONTAINER_HOST if set, else docker, then podman)
        "network": "host",  # for steps that need the network; builds here have no bridge
        "client": "",  # the engine's program when not the one on PATH, e.g. /usr/bin/docker (20.10: BuildKit)
    },
    "registry": {
        "timeout": 300,  # seconds: the most one registry call or push may take, retries included
        "retries": 3,  # retries of a registry call answered 429/5xx or timed out
        "insecure": [],  # registries spoken to over plain HTTP besides loopback ones (host:port)
    },
    "upstream": {  # the one upstream every task works from
        "url": "",  # "" = the target's upstream; a local path works (offline, tests)
        "branch": "main",
        "remote": "upstream",  # fork-sync fetches from this remote of the fork when it has one, else from url
    },
    "dev": {
        "base": "",  # "" = the target's published image for the merge-base, else its nightly image
        "repository": "forkdev/{target}-dev",  # local-<sha12> tags go here; pushed only if it names a registry
        "push": False,
        "force": False,
        # What a native change gets: "refuse" (name it; --force ships it uncompiled) or "build" (as --native:
        # compile it incrementally in the build environment and ship the compiled files that changed).
        "native": "refuse",
        "native_image": "",  # the build environment of --native; "" = the target's native_image, else the wheel image
        "native_jobs": 0,  # parallel compile jobs of --native (MAX_JOBS); 0 = every CPU
    },
    "nightly": {
        # "" = the target's nightly_image (e.g. forkdev/vllm); {target} is its name; --push needs a registry in it
        "repository": "",
        "push": False,
        "keep": 14,  # nightly.prune keeps this many nightly-<sha> tags
        "cuda_arch": "",  # vLLM's torch_cuda_arch_list, e.g. "9.0 10.0"; "" = the Dockerfile's default
        "precompiled": False,  # vLLM: VLLM_USE_PRECOMPILED=1, the upstream's kernels (minutes, not hours)
        "build_args": {},  # more --build-arg values (part of the native state)
        "log": "",  # "" = <cache_dir>/nightly/<target>.log
    },
    "batch": {
        "repository": "forkdev/{target}-batch",  # images are tagged <repository>:<full sha>
        "jobs": 2,  # native states built at once
        "push": False,
    },
    # The container `run`, `shell`, `devcontainer` and `gpu-check` start. It was `run:` until that collided with
    # invoke's own `run:` section (run.env was both invoke's subprocess environment and the container's
    # variables); the old keys are refused by name (moved_setting), never silently ignored.
    "container": {
        "repo": ".",
        "gpu": "auto",  # auto | none | all | a number of GPUs
        "gpu_root": "/",  # where the host's GPU facts are read (/proc/driver/nvidia, /etc/cdi, /dev/dxg)
        "network": "",  # "" = engine.network; host networking publishes no ports (the server binds them)
        "secrets": "extras/secrets",  # *.env files there reach the container (never *.env.example); never shipped
        "secret_paths": [],  # more paths of the checkout (folders or files) that no image, wheel or sync carries
        "env": {},  # more variables for the container; a flag's --env wins
        "hf_cache": "~/.cache/huggingface",  # mounted when it exists
    },
    "cron": {
        "schedule": "0 2 * * *",
        "user": "",  # whose crontab ("" = the current user's)
        "args": "",  # what the entry passes to `invoke nightly` (--push added where nightly.repository has a registry)
    },
    "wheel": {
        "out": "dist",  # where wheels, SHA256SUMS, SBOMs and provenance land (relative to the current directory)
        "native": False,  # build on the host instead of in the image
        "image": "",  # the build image; "" = forkdev/wheel-builder:<hash of its recipe>, built when missing
        "base": "debian:bookworm-slim",  # the image's BASE_IMAGE build arg
        "build_args": {},  # more build args of the image: GCC_VERSION, CMAKE_VERSION, BUILDER_UID, ...
        "cmake_args": [],  # -D options added after the target's
        "env": {},  # environment of the build (CC, CFLAGS, MAX_JOBS, ...)
        "ccache": "",  # the compiler cache kept between builds; "" = <cache_dir>/ccache
        "ccache_size": "5G",
        "jobs": 0,  # parallel compile jobs; 0 = every CPU
        "isolation": False,  # pip's build isolation: fetches build dependencies, so it needs the network
        "repair": True,  # auditwheel repair of a Linux platform wheel to its manylinux tag (False: the raw linux_*)
        # The CA bundle the in-image pip trusts; "" = the host pip's (PIP_CERT, pip config, SSL_CERT_FILE,
        # REQUESTS_CA_BUNDLE) when the build reaches the index (isolation). Mounted read-only, never in a layer.
        "ca_cert": "",
        "python": "",  # --native: the interpreter to build for ("" = the one running forkdev)
    },
    "smoke": {
        "installer": "auto",  # uv when installed, else venv + pip; or "uv" / "pip"
        "python": "",  # the interpreter of each fresh environment ("" = the one running forkdev)
        "no_index": False,  # dependencies only from the wheels' directory (offline)
        "timeout": 1800,  # seconds for one wheel's environment, install and checks
    },
    "fork_sync": {
        "repo": ".",
        "into": "",  # "" = the current branch
        "protect": ["extras/", ".github/workflows/fork-sync.yml"],
        "strategies": {".gitignore": "union"},
        "push": False,
        "autostash": False,
    },
    "overlay": {
        "repo": ".",
        "definitions": "extras/overlay.txt",
        "dest": "",  # "" = a directory under cache_dir; inside the checkout it must be git-ignored
    },
    "demo": {
        # Every image the demo makes is <prefix>/... (a plain local name; `invoke demo --clean` removes all of them).
        "prefix": "forkdev-demo",
        "os_image": "",  # what the sandbox's Dockerfile starts FROM; "" = <prefix>/debian:bookworm, by debootstrap
        "file_bytes": 0,  # cap on each file of the vLLM-shaped tree (0: the real sizes, 62 MB in all)
    },
    "patches": {
        "repo": ".",
        "registry": "extras/patches/patches.json",
        "into": "worktree",  # worktree | overlay | checkout | a directory
    },
}

_FIELDS = {f.name: f for f in dataclasses.fields(Target)}
LISTS = (
    "native",
    "cmake_args",
    "shipped",
    "native_build",
    "native_rebuild",
    "native_outputs",
    "native_configure",
)  # lists in config


def target(name: str, overrides: Mapping[str, Any] | None = None) -> Target:
    """The profile `name`, with config `targets.<name>` merged over it (a new name must give every field)."""
    if not isinstance(name, str) or not name:
        raise Failure(f"target {name!r} is not a name; choose one of {', '.join(sorted(TARGETS))}")
    extra = dict((overrides or {}).get(name) or {})
    unknown = sorted(set(extra) - set(_FIELDS))
    if unknown:
        raise Failure(f"config targets.{name} has unknown keys {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    if name not in TARGETS and not extra:
        raise Failure(f"unknown target '{name}'; choose one of {', '.join(sorted(TARGETS))} or define it in config")
    values = dataclasses.asdict(TARGETS[name]) if name in TARGETS else {"name": name}
    for key, value in extra.items():
        if key in LISTS and (isinstance(value, str) or not hasattr(value, "__iter__")):
            raise Failure(f"config targets.{name}.{key} must be a list of strings; fix invoke.yaml")
        if key in LISTS:
            value = tuple(str(v) for v in value)
        elif key in ("build_args", "why"):
            if not isinstance(value, Mapping):
                raise Failure(f"config targets.{name}.{key} must be a mapping; fix invoke.yaml")
            value = {str(k): str(v) for k, v in value.items()}
        values[key] = value
    missing = sorted(k for k, f in _FIELDS.items() if k not in values and f.default is dataclasses.MISSING)
    missing = [k for k in missing if _FIELDS[k].default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise Failure(f"config targets.{name} defines a new target but lacks {', '.join(missing)}")
    try:
        return Target(**values)
    except TypeError as exc:
        raise Failure(f"config targets.{name} is malformed ({exc})") from None


def owns(profile: Target, distribution: str) -> bool:
    """Whether `distribution` (a wheel's Name) is the one the profile builds, compared as PEP 503 names."""
    from packaging.utils import canonicalize_name

    return canonicalize_name(profile.distribution or profile.package) == canonicalize_name(distribution)


def of(c: Any, name: str | None) -> Target:
    """The target a task runs for: --target, else config `target`, with config overrides applied."""
    return target(name or c.config.target, c.config.get("targets") or {})


def upstream(c: Any, profile: Target, flag: str | None = None) -> str:
    """The one upstream a task works from: --upstream, else config upstream.url, else the target's own; checked
    as git will get it (never an option), naming where it came from when it is not."""
    if flag:
        return validate.source(flag, "--upstream")
    configured = c.config.upstream.url
    return validate.source(configured, named("upstream.url", configured)) if configured else profile.upstream


def image_repository(value: object, profile: Target, what: str) -> str:
    """A configured or given image repository with `{target}` filled in (a plain replace: any other brace is
    left for the validation to name, never a format error), validated (`what` names it in errors)."""
    return valid_repository(str(value).replace("{target}", profile.name), what)


def wheel_image(cfg: Wheel) -> tuple[str, dict[str, str]]:
    """The wheel build image's reference and build args (wheel.image, wheel.base, wheel.build_args): what
    `invoke wheel` builds in, and `invoke dev --native` where no other build environment is named."""
    from . import builder

    args = {"BASE_IMAGE": validate.image_ref(cfg.base, "wheel.base")}
    args.update({str(k): validate.plain(str(v), f"wheel.build_args.{k}") for k, v in cfg.build_args.items()})
    ref = cfg.image or f"{builder.REPOSITORY}:{builder.recipe(args)}"
    return validate.image_ref(ref, "wheel.image"), args


def nightly_repository(c: Any, profile: Target) -> str:
    """The repository `invoke nightly` tags, and so where `dev` and `run` look for `:nightly` by default."""
    return image_repository(c.config.nightly.repository or profile.nightly_image, profile, "nightly.repository")


def secret_paths(c: Any) -> secrets.Paths:
    """The checkout's secret paths (container.secrets and container.secret_paths): what no task ever ships."""
    return secrets.paths(c.config.container.secrets, c.config.container.get("secret_paths"))


def secret_values(c: Any) -> list[secrets.Known]:
    """The secret values config holds besides the secrets files: container.env's secret-looking entries."""
    try:
        configured = dict(c.config.container.get("env") or {})
    except (TypeError, ValueError):  # not a mapping: `invoke run` names it
        configured = {}
    return secrets.explicit(configured, "config container.env")


def registry_policy(c: Any) -> Policy:
    cfg = c.config.registry
    try:
        return Policy(float(cfg.timeout), int(cfg.retries), tuple(str(h) for h in cfg.insecure or ()))
    except (TypeError, ValueError):
        raise Failure("config registry.timeout / registry.retries must be numbers; fix invoke.yaml") from None


def epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), when set: the time every layer file and image carries."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise Failure(f"SOURCE_DATE_EPOCH '{raw[:40]}' is not a number of seconds; unset it or fix it")
    return int(raw)


def nightly_log(c: Any, cache: Path, target_name: str) -> Path:
    """Where an unattended `invoke nightly` writes its timestamped log."""
    configured = c.config.nightly.log
    return Path(os.path.expanduser(configured)) if configured else store.nightly(cache, target_name, ".log")


def dry_run(c: Any, flag: bool | None) -> bool:
    """--dry-run on the task, or invoke's own --dry."""
    return bool(flag) or bool(c.config.run.dry)


@dataclass(frozen=True)
class Container:
    """The container `run`, `shell`, `devcontainer` and `gpu-check` start (config `container:`)."""

    repo: str
    gpu: str
    gpu_root: Path
    network: str  # "" = the engine's
    secrets: str  # the checkout's secrets folder (relative)
    env: Mapping[str, Any]
    hf_cache: Path


@dataclass(frozen=True)
class Dev:
    """What `invoke dev` and `invoke build` make (config `dev:`)."""

    base: str  # "" = the upstream image of the merge-base, else the nightly
    repository: str  # where local-<sha12> tags go, {target} filled in and checked
    push: bool
    force: bool
    native: bool  # dev.native: build (compile a native change, as --native) rather than refuse it
    native_image: str  # the build environment of --native; "" = the target's native_image, else the wheel image
    native_jobs: int  # parallel compile jobs of --native; 0 = every CPU


NATIVE_MODES = ("refuse", "build")


@dataclass(frozen=True)
class Wheel:
    """How `invoke wheel` builds (config `wheel:`); each value as configured, checked where a build uses it."""

    out: str
    native: bool
    image: str  # "" = forkdev/wheel-builder:<hash of its recipe>
    base: str
    build_args: Mapping[str, Any]
    cmake_args: tuple[str, ...]
    env: Mapping[str, Any]
    ccache: Path  # the compiler cache kept between builds
    ccache_size: str
    jobs: int
    isolation: bool
    repair: bool
    ca_cert: str
    python: str  # "" = the interpreter running forkdev


@dataclass(frozen=True)
class Native:
    """How a full build compiles the native part (config `nightly:`): nightly, batch and build share it, so the
    same commit gets the same native state whichever task built it."""

    cuda_arch: str
    precompiled: bool
    build_args: Mapping[str, Any]


@dataclass(frozen=True)
class Nightly:
    """What `invoke nightly` makes and where (config `nightly:`; how it compiles is `Native`)."""

    repository: str  # <repository>:nightly and :nightly-<sha>; so where `dev` and `run` find `:nightly`
    push: bool
    keep: int  # nightly.prune keeps this many nightly-<sha> tags
    log: Path  # where an unattended nightly writes its log


def whole_number(
    value: Any, name: str, low: int | None, high: int | None, unit: str, remedy: str, outside: str = ""
) -> int:
    """`value` as a whole number from `low` to `high` (None: no bound). Refused as "NAME 'VALUE' is not a
    number{unit}; {remedy}", and one outside the range as "NAME N: {outside}" (the first again when "")."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is not None and (low is None or number >= low) and (high is None or number <= high):
        return number
    if number is None or not outside:
        raise Failure(f"{name} '{value}' is not a number{unit}; {remedy}")
    raise Failure(f"{name} {number}: {outside}")


def keep_count(value: Any, name: str) -> int:
    """How many nightly-<sha> tags nightly.prune keeps: a whole number, at least 1."""
    return whole_number(
        value,
        name,
        1,
        None,
        "",
        "pass how many nightly tags to keep",
        "keep at least 1 (the newest nightly-<sha> backs 'nightly')",
    )


@dataclass(frozen=True)
class Batch:
    """Where `invoke batch` tags its images and how many native states it builds at once (config `batch:`)."""

    repository: str  # <repository>:<full sha>, {target} filled in and checked
    push: bool
    jobs: int


def batch_jobs(value: Any, name: str) -> int:
    """How many native states `invoke batch` builds at once: a whole number from 1 to 64."""
    return whole_number(
        value, name, 1, 64, "", "pass how many native states to build at once", "pass a number from 1 to 64"
    )


@dataclass(frozen=True)
class Overlay:
    """Where `invoke overlay` reads and writes (config `overlay:`): each value as configured, since its flag wins
    over it; whichever is used is checked then (tasking.setting), so a good flag overrides a bad value."""

    repo: str
    definitions: str  # relative to the repo
    dest: str  # "" = a directory under the cache


@dataclass(frozen=True)
class Patches:
    """What `invoke patches` applies and where (config `patches:`); as configured, checked as `Overlay`'s."""

    repo: str
    registry: str  # relative to the repo
    into: str  # worktree | overlay | checkout | a directory


@dataclass(frozen=True)
class Smoke:
    """How `invoke smoke` makes each fresh environment (config `smoke:`)."""

    installer: str  # auto | uv | pip, as configured: --installer wins, and the one used is checked
    python: str  # "" = the interpreter running forkdev; --python wins
    no_index: bool
    timeout: float  # seconds for one wheel's environment, install and checks


@dataclass(frozen=True)
class Demo:
    """Where `invoke demo` puts its images and what its sandbox starts from (config `demo:`)."""

    prefix: str  # a plain local name: every image the demo makes is under it
    os_image: str  # what the sandbox's Dockerfile starts FROM (<prefix>/debian:bookworm when not configured)
    os_image_configured: bool  # whether that is the user's image (never built here) rather than the demo's own
    file_bytes: int  # cap on each file of the vLLM-shaped tree; 0 = the real sizes


@dataclass(frozen=True)
class Cron:
    """The crontab entry `invoke cron.install` writes (config `cron:`)."""

    schedule: str  # as configured: --schedule wins, and the one used is checked
    user: str  # whose crontab ("" = the current user's); --user wins
    args: tuple[str, ...]  # cron.args split into words: what the entry passes to `invoke nightly`


@dataclass(frozen=True)
class ForkSync:
    """How `invoke fork-sync` merges (config `fork_sync:`). The strategies stay as configured: core.sync parses
    them, with --strategy, when the task runs (importing it here would cost every task's start)."""

    repo: str  # as configured: --repo wins, and the one used is checked
    into: str  # "" = the current branch; --into wins
    protect: tuple[str, ...]  # checked paths of the repository
    strategies: Mapping[str, Any]  # PATH_OR_GLOB: ours | theirs | union
    push: bool
    autostash: bool


@dataclass(frozen=True)
class Settings:
    """What a task runs with: config and the shared flags, resolved and validated once (`load`)."""

    target: Target
    upstream: str  # the one upstream (url or path): --upstream, else upstream.url, else the target's
    branch: str  # upstream.branch
    remote: str  # upstream.remote: the fork's remote fork-sync fetches from when it has one
    cache: Path  # the cache root (created by `cache_dir`, never by a dry run); checked as a plain path
    registry: Policy
    secret_paths: secrets.Paths  # what no image, wheel or sync ever carries
    secret_values: tuple[secrets.Known, ...]  # container.env's secret-looking values, masked everywhere
    container: Container
    native: Native
    nightly: Nightly
    batch: Batch
    dev: Dev
    wheel: Wheel
    overlay: Overlay
    patches: Patches
    smoke: Smoke
    demo: Demo
    cron: Cron
    fork_sync: ForkSync
    engine_name: str
    engine_network: str
    engine_client: str

    def engine(self, run: Runner) -> Engine:
        """The container engine the config names (or the one found), probed once for this task."""
        return Engine.detect(run, self.engine_name, self.engine_network, self.engine_client)

    def cache_dir(self, run: Runner) -> Path:
        """The cache root, made unless `run` is a dry run (which changes nothing, the cache included; what it only
        reads there may then be missing). Every task asks for it here."""
        if not run.dry_run:
            self.cache.mkdir(parents=True, exist_ok=True)
        return self.cache


def mapping(value: Any, key: str) -> dict[str, Any]:
    """A config section of NAME: value entries, as a dict (invoke's own sections are no Mapping subclass)."""
    try:
        return dict(value or {})
    except (TypeError, ValueError):
        raise Failure(f"config {key} is not a mapping of NAME: value; fix it in invoke.yaml") from None


def _wheel(cfg: Any, cache: Path) -> Wheel:
    if not isinstance(cfg.cmake_args or [], (list, tuple)):
        raise Failure("config wheel.cmake_args is not a list of -DNAME=VALUE options; fix it in invoke.yaml")
    name = named("wheel.jobs", cfg.jobs)
    jobs = whole_number(cfg.jobs or 0, name, 0, MAX_JOBS, " of compile jobs", "fix it in invoke.yaml", JOBS_RANGE)
    return Wheel(
        out=cfg.out,
        native=bool(cfg.native),
        image=str(cfg.image or ""),
        base=cfg.base,
        build_args=mapping(cfg.build_args, "wheel.build_args"),
        cmake_args=tuple(cfg.cmake_args or ()),
        env=mapping(cfg.env, "wheel.env"),
        ccache=Path(os.path.expanduser(cfg.ccache)) if cfg.ccache else store.ccache(cache),
        ccache_size=str(cfg.ccache_size),
        jobs=jobs,
        isolation=bool(cfg.isolation),
        repair=bool(cfg.repair),
        ca_cert=str(cfg.ca_cert or ""),
        python=str(cfg.python or ""),
    )


def _dev_native(cfg: Any) -> dict[str, Any]:
    mode = str(cfg.native)
    if mode not in NATIVE_MODES:
        raise Failure(f"{named('dev.native', mode)} is '{mode}'; set it to refuse (the default) or build")
    jobs = whole_number(
        cfg.native_jobs or 0,
        named("dev.native_jobs", cfg.native_jobs),
        0,
        MAX_JOBS,
        " of compile jobs (0: every CPU)",
        "fix it in invoke.yaml",
        JOBS_RANGE,
    )
    image = str(cfg.native_image or "")
    return {
        "native": mode == "build",
        "native_image": validate.image_ref(image, "dev.native_image") if image else "",
        "native_jobs": jobs,
    }


MAX_JOBS = 1024  # compile jobs: ninja starts as many at once as it is told, a billion of them too
JOBS_RANGE = f"set 0 (every CPU) up to {MAX_JOBS} in invoke.yaml"


def _smoke(cfg: Any) -> Smoke:
    try:
        timeout = float(cfg.timeout)
    except (TypeError, ValueError):
        raise Failure(
            f"{named('smoke.timeout', cfg.timeout)} '{cfg.timeout}' is not a number of seconds; fix it in invoke.yaml"
        ) from None
    return Smoke(installer=cfg.installer, python=cfg.python, no_index=bool(cfg.no_index), timeout=timeout)


def demo_prefix(value: object) -> str:
    """demo.prefix: the first part of every image name the demo makes (`--clean` removes all under it), so it must
    be a plain local name, never a registry's."""
    prefix = validate.repository(str(value).strip("/"), "demo.prefix")
    if validate.registry_host(f"{prefix}/x"):
        raise Failure(
            f"demo.prefix '{prefix}' names a registry; the demo's images stay local: use a plain name like forkdev-demo"
        )
    return prefix


def demo_file_bytes(value: object) -> int:
    try:
        size = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        size = -1
    if size < 0:
        raise Failure(f"demo.file_bytes '{value}' is not a size in bytes; set 0 for the real tree's sizes")
    return size


def _demo(cfg: Any) -> Demo:
    prefix = demo_prefix(cfg.prefix)
    return Demo(
        prefix=prefix,
        os_image=validate.image_ref(cfg.os_image or f"{prefix}/debian:bookworm", "demo.os_image"),
        os_image_configured=bool(cfg.os_image),
        file_bytes=demo_file_bytes(cfg.file_bytes),
    )


def _cron(cfg: Any) -> Cron:
    raw = cfg.args
    if not isinstance(raw, str):
        raise Failure(f"cron.args must be text, not {type(raw).__name__}; write the nightly's flags, e.g. '--full'")
    try:
        args = shlex.split(raw)
    except ValueError as exc:
        raise Failure(f"cron.args '{raw}' cannot be split into words ({exc}); close its quotes") from None
    return Cron(schedule=cfg.schedule, user=cfg.user, args=tuple(args))


def _fork_sync(cfg: Any) -> ForkSync:
    pattern = "pass a path or glob of the repository"
    if not isinstance(cfg.protect, (list, tuple)):  # a string would protect each of its characters ("." = all)
        raise Failure(
            f"config fork_sync.protect is {type(cfg.protect).__name__} {cfg.protect!r:.60}, not a list; write it as "
            "a list of paths, e.g. [extras/, .github/workflows/fork-sync.yml]"
        )
    try:
        strategies = dict(cfg.strategies)
    except (TypeError, ValueError):
        raise Failure(
            f"config fork_sync.strategies is {type(cfg.strategies).__name__}, not a mapping; write PATH_OR_GLOB: "
            "ours|theirs|union entries, e.g. {.gitignore: union}"
        ) from None
    return ForkSync(
        repo=cfg.repo,
        into=cfg.into or "",
        protect=tuple(validate.plain(p, "config fork_sync.protect", pattern) for p in cfg.protect),
        strategies=strategies,
        push=bool(cfg.push),
        autostash=bool(cfg.autostash),
    )


def variable(key: str) -> str:
    """The INVOKE_* variable invoke reads config `key` from (its own mapping: the dotted path, dots as _)."""
    return "INVOKE_" + key.replace(".", "_").upper()


def named(key: str, value: object) -> str:
    """How a message names config `key` holding `value`: by its INVOKE_* variable when that is where the value
    came from (the environment is over invoke.yaml; cron's entry and CI set them), else as `config KEY`."""
    raw = os.environ.get(variable(key))
    return f"{key} ({variable(key)})" if raw is not None and _read_as(raw, value) else f"config {key}"


def _read_as(raw: str, value: object) -> bool:
    """Whether invoke reads the variable's text `raw` as `value` (it casts to the type of the key's default, which
    a value from the environment has: 099 is 99, any text but 0 and "" is True)."""
    if isinstance(value, bool):
        return (raw not in ("0", "")) == value
    if isinstance(value, str):
        return raw == value
    try:
        return type(value)(raw) == value
    except (TypeError, ValueError):
        return False


def _cache(value: Any) -> Path:
    """The cache root as configured, checked once for every task: its paths are handed to git and the engine (a
    leading '-' would be an option), written into cron's line (a line break would start another) and never
    empty (the current directory)."""
    return Path(os.path.expanduser(validate.plain(value, named("cache_dir", value), "set it to a directory path")))


def load(c: Any, target: str | None = None, upstream_flag: str | None = None) -> Settings:
    """The settings of this run: --target over config `target`, --upstream over `upstream.url` over the
    target's own; each value checked here, and named as the user set it when it is wrong."""
    profile = of(c, target)
    cfg = c.config.container
    cache = _cache(c.config.cache_dir)
    return Settings(
        target=profile,
        upstream=upstream(c, profile, upstream_flag),
        branch=c.config.upstream.branch,
        remote=c.config.upstream.remote,
        cache=cache,
        registry=registry_policy(c),
        secret_paths=secret_paths(c),
        secret_values=tuple(secret_values(c)),
        container=Container(
            repo=cfg.repo,
            gpu=cfg.gpu,
            gpu_root=Path(cfg.gpu_root),
            network=cfg.network,
            secrets=cfg.secrets,
            env=mapping(cfg.env, "container.env"),
            hf_cache=Path(os.path.expanduser(cfg.hf_cache)),
        ),
        wheel=_wheel(c.config.wheel, cache),
        dev=Dev(
            base=str(c.config.dev.base or ""),
            repository=image_repository(c.config.dev.repository, profile, "dev.repository"),
            push=bool(c.config.dev.push),
            force=bool(c.config.dev.force),
            **_dev_native(c.config.dev),
        ),
        native=Native(
            cuda_arch=str(c.config.nightly.cuda_arch or ""),
            precompiled=bool(c.config.nightly.precompiled),
            build_args=mapping(c.config.nightly.build_args, "nightly.build_args"),
        ),
        nightly=Nightly(
            repository=nightly_repository(c, profile),
            push=bool(c.config.nightly.push),
            keep=keep_count(c.config.nightly.keep, named("nightly.keep", c.config.nightly.keep)),
            log=nightly_log(c, cache, profile.name),
        ),
        batch=Batch(
            repository=image_repository(c.config.batch.repository, profile, "batch.repository"),
            push=bool(c.config.batch.push),
            jobs=batch_jobs(c.config.batch.jobs, named("batch.jobs", c.config.batch.jobs)),
        ),
        overlay=Overlay(
            repo=c.config.overlay.repo, definitions=c.config.overlay.definitions, dest=c.config.overlay.dest
        ),
        patches=Patches(repo=c.config.patches.repo, registry=c.config.patches.registry, into=c.config.patches.into),
        smoke=_smoke(c.config.smoke),
        demo=_demo(c.config.demo),
        cron=_cron(c.config.cron),
        fork_sync=_fork_sync(c.config.fork_sync),
        engine_name=c.config.engine.name,
        engine_network=c.config.engine.network,
        engine_client=c.config.engine.get("client") or "",
    )


def environment_problem(environ: Mapping[str, str], defaults: Mapping[str, Any]) -> str | None:
    """The first INVOKE_* variable that invoke would fail to cast, or read otherwise than its writer meant, as one
    sentence with the remedy; None when every one is fine. invoke casts a variable to its default's type while it
    loads a task's config (int('abc') or a list: its traceback, on every task), and reads any boolean but 0 and
    the empty string as true (INVOKE_DEV_PUSH=false would push). A variable of a moved key (INVOKE_RUN_SECRETS)
    would be ignored by invoke, as no default has that key any more: it is refused with its new name."""
    for key in MOVED:
        if f"INVOKE_RUN_{key.upper()}" in environ:
            old, new = f"INVOKE_RUN_{key.upper()}", f"INVOKE_CONTAINER_{key.upper()}"
            return f"{old} is set, but run.{key} is now container.{key}; set {new} instead and unset {old}"
    for path, default in _leaves(defaults, ()):
        name = variable(".".join(path))
        if name not in environ or isinstance(default, str) or default is None:
            continue
        raw, key = environ[name], ".".join(path)
        if isinstance(default, bool):
            if raw.strip().lower() in ("", "0", "1", "true", "yes", "on"):
                continue
            if raw.strip().lower() in ("false", "no", "off"):
                return (
                    f"{name}={raw!r} would switch {key} on (invoke reads every value but 0 and the empty one as "
                    f"true); set {name}=0 to switch it off, or 1 to switch it on"
                )
            return f"{name}={raw!r} is not a boolean ({key}); set {name}=1 (on) or {name}=0 (off)"
        if isinstance(default, int):
            try:
                int(raw)
            except ValueError:
                return f"{name}={raw!r} is not a whole number ({key}); set one (the default is {default}) or unset it"
        elif isinstance(default, (list, tuple)):
            return (
                f"{name} is set, but {key} is a list, which invoke cannot read from the environment; unset it and "
                f"set {key} in invoke.yaml"
            )
    return None


MOVED = ("repo", "gpu", "gpu_root", "network", "secrets", "secret_paths", "env", "hf_cache")  # run.X -> container.X


def moved_setting(run_settings: Mapping[str, Any]) -> str | None:
    """An old `run.X` setting of ours in the loaded config, as one sentence naming its new key; None when there is
    none. `run.env` is invoke's own too (empty by default, and nothing of forkdev's reads it): set, it is ours."""
    for key in MOVED:
        if key in run_settings and (key != "env" or run_settings[key]):
            return (
                f"config run.{key} is now container.{key} (run: is invoke's own section); rename the key in your "
                f"invoke.yaml (or INVOKE_RUN_{key.upper()} to INVOKE_CONTAINER_{key.upper()})"
            )
    return None


def _leaves(tree: Mapping[str, Any], path: tuple[str, ...]):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, (*path, str(key)))  # an empty mapping has no variable, as in invoke
        else:
            yield (*path, str(key)), value
