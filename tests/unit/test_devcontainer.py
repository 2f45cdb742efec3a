"""The devcontainer as data: the profile script reads a secrets file exactly as `invoke run` does, and forkdev's
entries merge into the user's devcontainer.json."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forkdev.core import devcontainer as dc
from forkdev.core import secrets
from forkdev.core.errors import Failure


def profile_reads(text: str, tmp_path: Path) -> dict[str, str]:
    """The variables a login shell gets from PROFILE for one secrets file, run by dash (Debian's sh)."""
    folder = tmp_path / "s"
    folder.mkdir(exist_ok=True)
    (folder / "hf.env").write_bytes(text.encode("utf-8", "surrogateescape"))
    script = dc.PROFILE.replace(dc.SECRETS_IN, str(folder))
    probe = f'{script}\nenv -0 > "{tmp_path}/env"'
    subprocess.run(["sh", "-c", probe], env={"PATH": os.environ["PATH"]}, check=True)
    found = dict(item.split("=", 1) for item in (tmp_path / "env").read_text().split("\0") if item)
    return {k: v for k, v in found.items() if k not in ("PATH", "PWD", "OLDPWD", "SHLVL", "_")}


def expected(text: str) -> dict[str, str]:
    return {k: v for _, k, v in secrets.lines(text) if k is not None}


def test_the_profile_script_reads_tricky_lines_literally(tmp_path):
    text = (
        "# c\n  \nHF_TOKEN=a=b c \n  export OTHER= x y \r\nQUOTE='q' \"d\" $HOME `id` $(touch pwned)\n"
        "1BAD=x\nnot a line\nEMPTY=\nLAST=no newline"
    )
    assert (
        profile_reads(text, tmp_path)
        == expected(text)
        == {
            "HF_TOKEN": "a=b c ",
            "OTHER": " x y ",
            "QUOTE": "'q' \"d\" $HOME `id` $(touch pwned)",
            "EMPTY": "",
            "LAST": "no newline",
        }
    )
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda k: not k.startswith("__forkdev"))
LINE = st.one_of(
    st.builds(
        lambda pre, k, v: f"{pre}{k}={v}",
        st.sampled_from(["", " ", "\t", "export ", " export  "]),
        KEYS,
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n"), max_size=20),
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n"), max_size=20),
)


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINE, max_size=6), st.booleans())
def test_the_profile_script_and_the_run_parser_agree_on_any_file(tmp_path, lines, crlf):
    text = ("\r\n" if crlf else "\n").join(lines)
    want = expected(text)
    if any(k in ("PATH", "PWD", "OLDPWD", "SHLVL", "_", "IFS", "PS1", "PS2", "PS4", "OPTIND") for k in want):
        return  # the shell's own variables: no test of ours
    assert profile_reads(text, tmp_path) == want


# ---- merging into the user's file ---------------------------------------------------------------------------
def ours(ports: list[int], gpu: list[str] | None = None) -> dict:
    return dc.ours(
        name="forkdev vllm",
        image="me/vllm-dev:1",
        run_args=gpu or [],
        hf_cache="/home/me/.cache/huggingface",
        hf_in="/run/forkdev-hf",
        secrets_dir="extras/secrets",
        ports=ports,
    )


def test_the_users_entries_stay_and_a_rerun_replaces_ours_instead_of_adding_them():
    users = {
        "name": "my box",
        "runArgs": ["--cap-add=SYS_PTRACE", "--ipc=host"],  # the user's own --ipc=host is theirs to keep
        "mounts": [{"source": "/data", "target": "/data", "type": "bind"}],
        "containerEnv": {"MY_VAR": "1", "HF_HOME": "/mine"},
        "forwardPorts": [3000],
        "features": {"ghcr.io/devcontainers/features/git:1": {}},
    }
    first, notes = dc.merge(users, ours([8000], ["--gpus", "all"]), "dc.json", "extras/secrets")
    assert first["name"] == "my box" and "kept your name ('my box')" in notes
    assert first["runArgs"] == ["--cap-add=SYS_PTRACE", "--ipc=host", "--gpus=all"]
    assert first["mounts"][0] == {"source": "/data", "target": "/data", "type": "bind"} and len(first["mounts"]) == 4
    assert first["containerEnv"] == {"MY_VAR": "1", "HF_HOME": "/mine"} and "kept your containerEnv HF_HOME" in notes
    assert first["forwardPorts"] == [3000, 8000] and first["features"] == users["features"]
    second, _ = dc.merge(first, ours([8001]), "dc.json", "extras/secrets")
    assert second["runArgs"] == ["--cap-add=SYS_PTRACE", "--ipc=host"], "our --gpus=all went with the GPU"
    assert second["forwardPorts"] == [3000, 8001]
    assert dc.merge(second, ours([8001]), "dc.json", "extras/secrets")[0] == second, "a re-run is a no-op"


def test_a_fresh_file_gets_all_of_ours_and_no_secret_value_anywhere():
    doc, notes = dc.merge({}, ours([]), "dc.json", "extras/secrets")
    assert notes == [] and doc["name"] == "forkdev vllm" and doc["overrideCommand"] is True
    assert doc["runArgs"] == ["--ipc=host"] and doc["containerEnv"] == {"HF_HOME": "/run/forkdev-hf"}
    assert (
        "source=${localWorkspaceFolder}/extras/secrets,target=/run/forkdev-secrets,type=bind,readonly" in doc["mounts"]
    )
    assert not any("env-file" in str(a) for a in doc["runArgs"])


def test_the_env_files_an_older_forkdev_wrote_are_taken_out():
    old = {"runArgs": ["--env-file", "${localWorkspaceFolder}/extras/secrets/hf.env", "--env-file", "/my/own.env"]}
    doc, notes = dc.merge(old, ours([]), "dc.json", "extras/secrets")
    assert doc["runArgs"] == ["--env-file", "/my/own.env", "--ipc=host"]
    assert notes == [
        "removed '--env-file ${localWorkspaceFolder}/extras/secrets/hf.env' (it put the secrets in docker inspect)"
    ]


def test_gpu_arguments_become_single_entries_with_long_options():
    wsl = ["--device", "/dev/dxg", "-v", "/usr/lib/wsl:/usr/lib/wsl:ro", "-e", "LD_LIBRARY_PATH=/usr/lib/wsl/lib"]
    assert dc.joined(wsl) == [
        "--device=/dev/dxg",
        "--volume=/usr/lib/wsl:/usr/lib/wsl:ro",
        "--env=LD_LIBRARY_PATH=/usr/lib/wsl/lib",
    ]


@pytest.mark.parametrize(
    ("current", "words"),
    [
        ([1, 2], "dc.json holds list, not a JSON object"),
        (None, "dc.json holds NoneType, not a JSON object"),
        ({"runArgs": "--gpus all"}, "dc.json: runArgs is not a list"),
        ({"containerEnv": ["A=1"]}, "dc.json: containerEnv is not an object"),
        ({"customizations": "x"}, "dc.json: customizations is not an object"),
    ],
)
def test_a_file_forkdev_cannot_merge_into_is_named(current, words):
    with pytest.raises(Failure, match=words):
        dc.merge(current, ours([]), "dc.json", "extras/secrets")
