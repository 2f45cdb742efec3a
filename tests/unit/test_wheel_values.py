"""The wheel pipeline's pure parts as data: checksums, SBOM, provenance, the stamp, --out rules, the build argv."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import zipfile

import pytest
from support import make_wheel, record_hash

from forkdev.core import assets, attest, builder, config, outdir, validate, wheelfile
from forkdev.core.engine import Engine
from forkdev.core.errors import Failure
from forkdev.core.wheelbuild import recipe_check

DOCKER = Engine("docker", "/usr/bin/docker", "20.10", "20.10", "host")


# ---- the stamp ------------------------------------------------------------------------------------------------
def test_the_stamp_is_listed_in_record_with_its_true_hash_and_every_other_entry_is_kept(tmp_path):
    path = make_wheel(tmp_path / "pkg-1.0-cp311-cp311-linux_x86_64.whl")
    before = {i.filename: zipfile.ZipFile(path).read(i) for i in zipfile.ZipFile(path).infolist()}
    wheelfile.stamp(path, {"commit": "a" * 40, "dirty": False})
    wheelfile.stamp(path, {"commit": "b" * 40, "dirty": True})  # stamping again replaces, never duplicates
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        stamp = zf.read("pkg-1.0.dist-info/forkdev-build.json")
        record = zf.read("pkg-1.0.dist-info/RECORD").decode().splitlines()
        for name, data in before.items():
            if not name.endswith("RECORD"):
                assert zf.read(name) == data
    assert json.loads(stamp) == {"commit": "b" * 40, "dirty": True}
    ours = [line for line in record if line.startswith("pkg-1.0.dist-info/forkdev-build.json,")]
    assert ours == [f"pkg-1.0.dist-info/forkdev-build.json,{record_hash(stamp)},{len(stamp)}"]
    assert record[-1] == "pkg-1.0.dist-info/RECORD,,"
    assert wheelfile.read(path).stamp == {"commit": "b" * 40, "dirty": True}


def test_a_pure_tag_with_native_files_is_flagged_and_a_platform_tag_is_not(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    pure = wheelfile.read(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", tag="py3-none-any"))
    assert pure.pure and pure.natives == ("pkg/libpkg.so",) and pure.pure_with_native
    plain = wheelfile.read(make_wheel(tmp_path / "a" / "pkg-1.0-py3-none-any.whl", tag="py3-none-any", so=False))
    assert plain.pure and not plain.pure_with_native
    platform = wheelfile.read(make_wheel(tmp_path / "b" / "pkg-1.0-cp311-cp311-linux_x86_64.whl"))
    assert not platform.pure and not platform.pure_with_native


def test_a_file_that_is_not_a_wheel_is_one_sentence(tmp_path):
    bad = tmp_path / "x-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(Failure, match="is not a readable wheel .*; rebuild it with 'invoke wheel'"):
        wheelfile.read(bad)


def encrypt(path):
    """Set the 'encrypted' flag of every member, in the local headers and the central directory, as `zip -e`
    would (the bytes stay readable; a reader that honours the flag refuses them)."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            data[at + offset] |= 0x1
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def test_an_encrypted_wheel_is_one_sentence_not_a_traceback(tmp_path):
    path = encrypt(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", tag="py3-none-any"))
    with zipfile.ZipFile(path) as zf, pytest.raises(RuntimeError, match="encrypted"):
        zf.read(zf.namelist()[-1])  # the fault is real: zipfile alone raises
    with pytest.raises(Failure, match=r"holds \d+ encrypted member\(s\), .* first: not a wheel\); rebuild it"):
        wheelfile.read(path)


# ---- SHA256SUMS -----------------------------------------------------------------------------------------------
def test_sums_replace_entries_of_the_same_name_keep_others_present_and_drop_vanished_ones():
    old = f"{'1' * 64}  a.whl\n{'2' * 64}  b.whl\n{'3' * 64} *gone.whl\n"
    merged = attest.merge_sums(old, {"a.whl": "f" * 64, "c.whl": "e" * 64}, present={"a.whl", "b.whl", "c.whl"})
    assert merged == f"{'f' * 64}  a.whl\n{'2' * 64}  b.whl\n{'e' * 64}  c.whl\n"


@pytest.mark.parametrize("text", ["hello\n", f"{'1' * 63}  short.whl\n", f"{'1' * 64}\tname\n"])
def test_a_sums_file_we_did_not_write_is_refused(text):
    with pytest.raises(ValueError, match="line 1 is not"):
        attest.parse_sums(text)


# ---- SBOM -----------------------------------------------------------------------------------------------------
def test_the_sbom_is_valid_cyclonedx_and_lists_requirements_and_linked_libraries(tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    reqs = ("numpy>=1.26", "Torch==2.5.1; platform_system == 'Linux'", "pytest; extra == 'test'")
    wheel = wheelfile.read(make_wheel(tmp_path / "pkg-1.0-cp311-cp311-linux_x86_64.whl", requires=reqs))
    needs = [("pkg/libpkg.so", "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")]
    doc = attest.sbom(wheel, "ab" * 32, "2026-11-25T00:00:00Z", needs)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc))
    assert error is None, error
    by_name = {c["name"]: c for c in doc["components"]}
    assert by_name["numpy"]["scope"] == "required" and by_name["numpy"]["purl"] == "pkg:pypi/numpy"
    assert by_name["torch"]["properties"] == [{"name": "forkdev:requirement", "value": reqs[1]}]
    assert by_name["pytest"]["scope"] == "optional"
    assert by_name["libc.so.6"]["properties"][0] == {"name": "forkdev:needed-by", "value": "pkg/libpkg.so"}
    assert doc["metadata"]["component"]["purl"] == "pkg:pypi/pkg@1.0"
    assert doc["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert doc["dependencies"][0]["dependsOn"] == [c["bom-ref"] for c in doc["components"]]


def test_the_schema_check_can_fail():
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    broken = {"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [{"name": "no type"}]}
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(broken)) is not None


# ---- provenance -----------------------------------------------------------------------------------------------
def test_provenance_is_an_in_toto_statement_naming_source_builder_image_and_parameters():
    doc = attest.provenance(
        "pkg-1.0-cp311-cp311-linux_x86_64.whl",
        "cd" * 32,
        source={"uri": "https://example.org/fork.git", "commit": "a" * 40, "dirty": True, "tree_sha256": "e" * 64},
        builder={"id": "urn:forkdev:builder:docker-image", "image": "x/builder:1", "digest": "sha256:" + "f" * 64},
        parameters={"target": "mlc-llm", "cmake_args": ["-DUSE_CUDA=OFF"]},
        internal={"generator": "Ninja"},
        started="2026-11-25T00:00:00Z",
        finished="2026-11-25T00:01:00Z",
        log="/tmp/build.log",
    )
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": "pkg-1.0-cp311-cp311-linux_x86_64.whl", "digest": {"sha256": "cd" * 32}}]
    source, image = doc["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert source["digest"] == {"gitCommit": "a" * 40} and source["annotations"]["dirty"] is True
    assert image["uri"] == "oci:x/builder:1" and image["digest"] == {"sha256": "f" * 64}
    assert doc["predicate"]["buildDefinition"]["externalParameters"]["cmake_args"] == ["-DUSE_CUDA=OFF"]
    assert doc["predicate"]["runDetails"]["byproducts"] == [{"name": "build-log", "uri": "file:///tmp/build.log"}]


def test_secret_looking_build_environment_values_are_not_recorded():
    assert attest.redact({"CFLAGS": "-O2", "HF_TOKEN": "hf_x", "AWS_SECRET_ACCESS_KEY": "k", "API_KEY": "k"}) == {
        "API_KEY": "<redacted>",
        "AWS_SECRET_ACCESS_KEY": "<redacted>",
        "CFLAGS": "-O2",
        "HF_TOKEN": "<redacted>",
    }


# ---- --out ----------------------------------------------------------------------------------------------------
def test_out_refuses_a_file_an_escaping_symlink_the_checkout_and_its_git_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkout = tmp_path / "repo"
    (checkout / ".git").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    os.symlink("/etc", tmp_path / "escape")
    (tmp_path / "inside").mkdir()
    os.symlink("inside", tmp_path / "near")
    with pytest.raises(Failure, match="is a file, not a directory"):
        outdir.resolve("afile", checkout)
    with pytest.raises(Failure, match="is a symlink to /etc, outside"):
        outdir.resolve("escape", checkout)
    with pytest.raises(Failure, match="is the checkout itself"):
        outdir.resolve("repo", checkout)
    with pytest.raises(Failure, match="inside the checkout's .git"):
        outdir.resolve("repo/.git/dist", checkout)
    assert outdir.resolve("near", checkout) == tmp_path / "inside"  # a link that stays beside it is fine
    assert outdir.resolve("repo/dist", checkout) == checkout / "dist"  # dist/ in the checkout, as usual


def test_publish_writes_whole_files_and_never_touches_what_it_did_not_make(tmp_path):
    out, staged = tmp_path / "out", tmp_path / "staged"
    out.mkdir()
    staged.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "old-1.0-py3-none-any.whl").write_bytes(b"an older wheel")
    (staged / "new-1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    sums = {"new-1.0-py3-none-any.whl": hashlib.sha256(b"wheel bytes").hexdigest()}
    outdir.publish(out, [staged / "new-1.0-py3-none-any.whl"], sums, "")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "old-1.0-py3-none-any.whl").read_bytes() == b"an older wheel"
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS",
        "new-1.0-py3-none-any.whl",
        "notes.txt",
        "old-1.0-py3-none-any.whl",
    ]
    assert attest.parse_sums((out / "SHA256SUMS").read_text()) == sums


def test_a_foreign_sums_file_or_a_directory_in_the_way_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("release notes, not checksums\n")
    with pytest.raises(Failure, match="is not a SHA256SUMS this tool can update"):
        outdir.check_writable(tmp_path, ["a.whl"])
    (tmp_path / "SHA256SUMS").unlink()
    (tmp_path / "a.whl").mkdir()
    with pytest.raises(Failure, match="a.whl is a directory"):
        outdir.check_writable(tmp_path, ["a.whl"])


# ---- the build image and its container ------------------------------------------------------------------------
def test_the_build_container_gets_no_network_only_the_d_options_and_values_quoted_once(tmp_path):
    argv = builder.run_argv(
        DOCKER,
        "forkdev/wheel-builder:abc",
        name="forkdev-wheel-1-aa",
        src=tmp_path / "src",
        out=tmp_path / "out",
        ccache=tmp_path / "cache dir",
        env={"TORCH_CUDA_ARCH_LIST": "9.0 10.0", "FORKDEV_CMAKE_DIR": "."},
        cmake_args=["-DUSE_CUDA=OFF", "-DNAME=two words"],
        user=None,
        network="none",
        ca_cert=None,
    )
    assert argv[:7] == ["/usr/bin/docker", "run", "--rm", "--name", "forkdev-wheel-1-aa", "--network", "none"]
    assert f"type=bind,source={tmp_path / 'cache dir'},target=/ccache" in argv
    assert "TORCH_CUDA_ARCH_LIST=9.0 10.0" in argv
    assert argv[-5:] == ["--", "forkdev/wheel-builder:abc", "build", "-DUSE_CUDA=OFF", "-DNAME=two words"]


def test_a_ca_bundle_is_mounted_read_only_and_named_to_pip(tmp_path):
    ca = tmp_path / "corp.pem"
    argv = builder.run_argv(
        DOCKER,
        "img",
        name="n",
        src=tmp_path,
        out=tmp_path,
        ccache=tmp_path,
        env={},
        cmake_args=[],
        user="1001:1001",
        network="host",
        ca_cert=ca,
    )
    assert f"type=bind,source={ca},target={builder.CA_BUNDLE},readonly" in argv
    assert f"PIP_CERT={builder.CA_BUNDLE}" in argv and "--user" in argv


def test_a_build_mount_carries_any_path_and_is_relabelled_on_selinux_as_runs_are(tmp_path, monkeypatch):
    import csv

    from forkdev.core import container

    odd = tmp_path / 'a:b,"c"'
    flag, value = builder.mount(DOCKER, odd, "/x")
    assert flag == "--mount" and next(csv.reader([value])) == ["type=bind", f"source={odd}", "target=/x"]
    # No SELinux host here: what the host says is the one thing faked
    monkeypatch.setattr(container, "selinux_enforcing", lambda: True)
    assert builder.mount(DOCKER, tmp_path, "/x", read_only=True) == ["--volume", f"{tmp_path}:/x:ro,z"]
    podman = Engine("podman", "/usr/bin/podman", "4.3", "4.3", "host")
    assert builder.mount(podman, tmp_path, "/x")[1].endswith(",relabel=shared")
    with pytest.raises(Failure, match="holds ':'"):  # docker relabels only through --volume, which splits on ':'
        builder.mount(DOCKER, odd, "/x")


def test_the_image_recipe_changes_with_its_files_and_its_build_args(tmp_path, monkeypatch):
    args = {"BASE_IMAGE": "debian:bookworm-slim"}
    first = builder.recipe(args)
    assert builder.recipe(args) == first
    assert builder.recipe({**args, "GCC_VERSION": "13"}) != first
    copy = tmp_path / "docker"
    copy.mkdir()
    for name in assets.WHEEL_FILES:
        (copy / name).write_bytes((assets.docker_dir() / name).read_bytes())
    (copy / "entrypoint.sh").write_text((copy / "entrypoint.sh").read_text() + "\n# changed\n")
    assets.docker_dir.cache_clear()
    monkeypatch.setattr(assets, "_PACKAGE", copy.parent / "forkdev")
    try:
        assert builder.recipe(args) != first
    finally:
        assets.docker_dir.cache_clear()


def test_numeric_image_users_are_read_and_names_are_not_guessed():
    assert builder.numeric_user("1000:1000") == (1000, 1000)
    assert builder.numeric_user("1000") == (1000, 1000)
    assert builder.numeric_user("builder") is None


def test_the_build_report_is_parsed(tmp_path):
    report = tmp_path / "build-report.tsv"
    report.write_text(
        "generator\tNinja\nnative\tlibmlc_llm.so\n"
        "needs\tmlc_llm/libmlc_llm.so\tlibc.so.6\t/lib/libc.so.6\nccache\t3 1\n"
    )
    found = builder.report(report)
    assert found["generator"] == "Ninja" and found["native"] == ["libmlc_llm.so"]
    assert found["needs"] == [("mlc_llm/libmlc_llm.so", "libc.so.6", "/lib/libc.so.6")]
    assert found["ccache"] == {"hits": 3, "misses": 1}


# ---- profiles -------------------------------------------------------------------------------------------------
def test_profiles_say_how_each_target_builds_its_wheel():
    vllm, mlc = config.TARGETS["vllm"], config.TARGETS["mlc-llm"]
    assert (vllm.wheel_cmake, vllm.wheel_python) == ("", ".")  # vLLM's own setup.py runs cmake
    assert (mlc.wheel_cmake, mlc.wheel_python) == (".", "python")  # root CMakeLists.txt, then python/
    fork = config.target("mlc-llm", {"mlc-llm": {"cmake_args": ["-DUSE_CUDA=ON"], "smoke": "mlc_llm chat --help"}})
    assert fork.cmake_args == ("-DUSE_CUDA=ON",) and fork.smoke == "mlc_llm chat --help"


def test_a_checkout_without_the_targets_recipe_is_one_sentence(tmp_path):
    (tmp_path / "python").mkdir()
    with pytest.raises(Failure, match=r"no build recipe for target mlc-llm: no pyproject.toml or setup.py in python/"):
        recipe_check(tmp_path, config.TARGETS["mlc-llm"])
    (tmp_path / "python" / "setup.py").write_text("")
    with pytest.raises(Failure, match=r"no build recipe for target mlc-llm: no CMakeLists.txt in ./"):
        recipe_check(tmp_path, config.TARGETS["mlc-llm"])
    (tmp_path / "CMakeLists.txt").write_text("")
    recipe_check(tmp_path, config.TARGETS["mlc-llm"])


@pytest.mark.parametrize("arg", ["-DUSE_CUDA=OFF", "-DNAME:STRING=two words", "-DTVM_HOME=/opt/tvm", "-DX="])
def test_cmake_defines_pass(arg):
    assert validate.cmake_define(arg) == arg


@pytest.mark.parametrize("arg", ["-G", "--build", "-DNOVALUE", "DUSE=1", "-D=1", "-DA=1\n-DB=2", 3])
def test_anything_but_a_cmake_define_is_refused(arg):
    with pytest.raises(Failure, match="is not a -DNAME=VALUE option on one line"):
        validate.cmake_define(arg)


def test_cmake_args_reach_a_pyproject_backend_quoted_once_after_what_cmake_args_held():
    from forkdev.core.wheelbuild import cmake_env

    assert cmake_env("", ["-DUSE_CUDA=OFF"]) == "-DUSE_CUDA=OFF"
    assert cmake_env(" -GNinja ", ["-DNAME=two words", "-DX="]) == "-GNinja '-DNAME=two words' -DX="
    assert shlex.split(cmake_env("-GNinja", ["-DNAME=two words"])) == ["-GNinja", "-DNAME=two words"]


# ---- the host pip's CA bundle, for the in-image pip (issue 19, item 3) -------------------------------------------
def test_the_host_pips_ca_bundle_is_found_where_pip_finds_it(tmp_path):
    from forkdev.core.proc import Runner

    run = Runner(echo=False)
    corp, other = tmp_path / "corp.pem", tmp_path / "other.pem"
    corp.write_text("-----BEGIN CERTIFICATE-----\n")
    other.write_text("-----BEGIN CERTIFICATE-----\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\ncert = {corp}\n")
    nothing = {"PIP_CONFIG_FILE": os.devnull}  # pip reads no config file at all
    python = sys.executable
    assert builder.host_ca(run, python, {**nothing, "PIP_CERT": str(corp)}) == (corp, "PIP_CERT")
    assert builder.host_ca(run, python, {"PIP_CONFIG_FILE": str(conf), "SSL_CERT_FILE": str(other)}) == (
        corp,
        "pip config global.cert",
    )
    # The machine's own /etc/pip.conf may name a bundle too: the file PIP_CONFIG_FILE names overrides it, and
    # [download], what the host's `pip download` reads, overrides [global]
    both = tmp_path / "both.conf"
    both.write_text(f"[global]\ncert = {other}\n[download]\ncert = {corp}\n")
    assert builder.host_ca(run, python, {"PIP_CONFIG_FILE": str(both)}) == (corp, "pip config download.cert")
    assert builder.host_ca(run, python, {**nothing, "SSL_CERT_FILE": str(other)}) == (other, "SSL_CERT_FILE")
    assert builder.host_ca(run, python, {**nothing, "REQUESTS_CA_BUNDLE": str(other)}) == (other, "REQUESTS_CA_BUNDLE")
    assert builder.host_ca(run, python, nothing) is None


def test_a_host_ca_setting_that_names_no_file_is_one_sentence(tmp_path):
    from forkdev.core.proc import Runner

    with pytest.raises(
        Failure, match=r"^PIP_CERT names the CA bundle '/nowhere.pem', which is not a file; fix it, pass"
    ):
        builder.host_ca(Runner(echo=False), sys.executable, {"PIP_CERT": "/nowhere.pem"})
