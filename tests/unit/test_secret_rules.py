"""What is secret, as data: the secret paths no task ships, the configured paths that are refused, and the values
a layer scan finds (naming the file, never the value)."""

from __future__ import annotations

import pytest

from forkdev.core import secrets
from forkdev.core.errors import Failure

TOKEN = "hf_unitTOKENa1b2c3d4e5"  # a value no other test uses: masking is process-wide


@pytest.mark.parametrize(
    ("path", "hidden"),
    [
        ("extras/secrets/hf.env", True),
        ("extras/secrets/nested/key.pem", True),
        ("extras/secrets", True),  # the directory itself (a symlink git lists as one path)
        ("extras/secrets/hf.env.example", False),  # templates ship
        ("extras/secretsX/hf.env", False),
        ("extras/secret", False),
        ("vllm/envs.py", False),
        ("config/.env", True),  # container.secret_paths below
    ],
)
def test_a_path_is_secret_under_the_secrets_directory_or_an_added_path_whatever_else(path, hidden):
    assert secrets.paths("extras/secrets", ["config/.env"]).hidden(path) is hidden


@pytest.mark.parametrize(
    ("folder", "extra", "words"),
    [
        ("/etc/secrets", [], "container.secrets '/etc/secrets' is absolute"),
        ("~/secrets", [], "is absolute"),
        ("../elsewhere", [], "leads out of the checkout by '..'"),
        ("a/../../b", [], "leads out of the checkout by '..'"),
        (".", [], "is the whole checkout"),
        ("", [], "must be a path inside the checkout"),
        (3, [], "must be a path inside the checkout"),
        ("ok\ndir", [], "holds a control character"),
        ("\udcff", [], "is not valid UTF-8"),  # a non-UTF-8 byte of INVOKE_CONTAINER_SECRETS, as Python decodes it
        ("extras/secrets", "config/.env", "container.secret_paths must be a list"),
        ("extras/secrets", ["/root/.env"], "container.secret_paths '/root/.env' is absolute"),
    ],
)
def test_configured_secret_paths_outside_the_checkout_are_one_line_errors(folder, extra, words):
    with pytest.raises(Failure) as exc:
        secrets.paths(folder, extra)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_the_scan_names_the_file_and_the_secrets_origin_never_the_value(tmp_path):
    (tmp_path / "extras" / "secrets").mkdir(parents=True)
    (tmp_path / "extras" / "secrets" / "hf.env").write_text(f"# hf\nHF_TOKEN={TOKEN}\nSHORT=abc\nbad line\n")
    known = secrets.known(tmp_path, secrets.DEFAULT)
    assert [(k.value, k.origin) for k in known if k.value == TOKEN] == [
        (TOKEN, "HF_TOKEN from extras/secrets/hf.env:2")
    ]
    assert "abc" not in {k.value for k in known}, "values under 8 characters are found by chance: not scanned"
    secrets.scan([("vllm/ok.py", b"nothing here")], known, "the layer")
    with pytest.raises(Failure) as exc:
        secrets.scan([("vllm/ok.py", b"x"), ("vllm/leak.py", f"T = '{TOKEN}'".encode())], known, "the layer")
    message = str(exc.value)
    assert "vllm/leak.py in the layer holds the value of HF_TOKEN from extras/secrets/hf.env:2" in message
    assert TOKEN not in message


def test_secret_looking_variables_of_the_environment_are_known_but_not_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("CI_JOB_TOKEN", "glcbt-unit-0123456789")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/user/1000/ssh-agent.socket")
    monkeypatch.setenv("PLAIN", "not-a-secret-value")
    values = {k.value: k.origin for k in secrets.known(tmp_path, secrets.DEFAULT)}
    assert values.get("glcbt-unit-0123456789") == "CI_JOB_TOKEN from the environment"
    assert "/run/user/1000/ssh-agent.socket" not in values and "not-a-secret-value" not in values


def test_a_secrets_directory_that_is_a_symlink_out_of_the_checkout_is_never_read(tmp_path):
    outside, checkout = tmp_path / "outside", tmp_path / "checkout"
    outside.mkdir()
    (outside / "hf.env").write_text("HF_TOKEN=outside-the-checkout-1234\n")
    (checkout / "extras").mkdir(parents=True)
    (checkout / "extras" / "secrets").symlink_to(outside)
    assert "outside-the-checkout-1234" not in {k.value for k in secrets.known(checkout, secrets.DEFAULT)}
    with pytest.raises(Failure, match="leads out of the checkout through a symlink"):
        secrets.located(checkout, "extras/secrets", "container.secrets")


def test_credentials_leave_a_url_before_it_becomes_a_label():
    assert secrets.public_url("https://user:tok@github.com/o/vllm.git") == "https://github.com/o/vllm.git"
    assert secrets.public_url("https://ghp_abc@github.com/o/vllm.git") == "https://github.com/o/vllm.git"
    assert secrets.public_url("https://github.com/o/vllm.git") == "https://github.com/o/vllm.git"
