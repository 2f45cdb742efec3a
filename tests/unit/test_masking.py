"""Every echoed command, log line and error masks what looks secret, and every value the task knows is secret."""

from __future__ import annotations

import pytest

from forkdev.core import ui
from forkdev.core.errors import Failure
from forkdev.core.proc import Runner, shown


@pytest.mark.parametrize(
    ("argv", "echo"),
    [
        (["docker", "build", "--build-arg", "HF_TOKEN=a b c"], "docker build --build-arg 'HF_TOKEN=***'"),
        (["docker", "build", "--build-arg=api_key=zzz"], "docker build '--build-arg=api_key=***'"),
        (["docker", "run", "-e", "DB_PASSWORD=hunter22", "-e", "MODE=x"], "docker run -e 'DB_PASSWORD=***' -e MODE=x"),
        (["x", "--password", "pw", "--password-stdin", "host"], "x --password '***' --password-stdin host"),
        (["x", "--token=abc"], "x '--token=***'"),
        (["git", "clone", "--", "https://u:tok@h/r.git"], "git clone -- 'https://u:***@h/r.git'"),
        (["git", "clone", "--", "https://ghp_tok@h/r.git"], "git clone -- 'https://***@h/r.git'"),
        (["git", "clone", "--", "ssh://git@h/r.git"], "git clone -- ssh://git@h/r.git"),
        (["x", "PIP_INDEX_URL=https://u:p4ss@idx/simple"], "x 'PIP_INDEX_URL=https://u:***@idx/simple'"),
        (["sh", "-c", "export GH_TOKEN=v; run"], "sh -c 'export GH_TOKEN=***; run'"),
        (["docker", "build", "--label", "dev.forkdev.key=abc"], "docker build --label dev.forkdev.key=abc"),
    ],
)
def test_every_echoed_command_masks_what_looks_secret(argv, echo):
    assert shown(argv) == echo


def test_values_the_task_knows_are_masked_in_echoes_log_lines_and_failures(capsys):
    ui.conceal(["known-unit-secret-77"])
    Runner(dry_run=True)(["tool", "--flag", "prefix-known-unit-secret-77-suffix"])
    ui.info("the server said known-unit-secret-77 and https://me:pw1234@host/x and X_AUTH='a b'")
    err = capsys.readouterr().err
    assert "known-unit-secret-77" not in err and "pw1234" not in err and "a b" not in err
    assert "prefix-***-suffix" in err and "https://me:***@host/x" in err and "X_AUTH=***" in err
    assert "known-unit-secret-77" not in str(Failure("cannot reach known-unit-secret-77"))
    Runner()(["true"], secret_env={"S": "secret-env-value-99"})
    ui.info("secret-env-value-99")
    assert "secret-env-value-99" not in capsys.readouterr().err


def test_a_secrets_files_short_value_of_a_plain_name_is_not_masked_a_secret_names_is(capsys):
    from forkdev.core import secrets

    secrets.conceal([("LEVEL", "DEBUG", "hf.env:1"), ("API_KEY", "k3y9", "hf.env:2"), ("URL", "long-value-x1", "")])
    ui.info("level DEBUG, key k3y9, long-value-x1")
    assert capsys.readouterr().err.strip() == "level DEBUG, key ***, ***"
