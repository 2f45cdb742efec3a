"""INVOKE_* variables of the wrong type: invoke casts each to its default's type while it loads a task's config
(int('abc'), any list: its traceback, on every task) and reads any boolean but 0 and the empty one as true. Every
task, under `invoke` and the `forkdev` console script alike, ends instead with one line naming the variable and
the remedy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forkdev import cli
from forkdev.core import config
from forkdev.core.errors import Failure


def typed(tree, path=()):
    """(variable, default) for every number, boolean and list among the defaults."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from typed(value, (*path, key))
        elif isinstance(value, (bool, int, list)):
            yield "INVOKE_" + "_".join((*path, key)).upper(), value


TYPED = dict(typed(config.DEFAULTS))
WRONG = {bool: "maybe", int: "abc", list: "a,b"}
FORKDEV = Path(sys.executable).parent / "forkdev"  # the console script of the interpreter running the tests


def test_every_typed_default_is_covered():
    kinds = {type(v) for v in TYPED.values()}
    assert kinds == {bool, int, list} and len(TYPED) >= 15
    assert {"INVOKE_BATCH_JOBS", "INVOKE_REGISTRY_RETRIES", "INVOKE_SMOKE_TIMEOUT"} <= set(TYPED)


@pytest.mark.parametrize("name", sorted(TYPED))
def test_a_wrong_type_in_any_typed_setting_is_refused_naming_it(monkeypatch, name):
    monkeypatch.setenv(name, WRONG[type(TYPED[name])])
    with pytest.raises(Failure) as exc:
        cli.check_environment()  # what both programs run before any task (and before invoke's cast)
    assert str(exc.value).startswith(name) and "\n" not in str(exc.value)


@pytest.mark.parametrize("args", [("verify", "forkdev-test/none:absent"), ("batch", "nothing.jsonl", "--dry-run")])
def test_every_task_ends_with_the_one_line_and_runs_nothing(invoke, args):
    res = invoke(*args, env={"INVOKE_BATCH_JOBS": "abc"})
    assert res.code == 1 and "Traceback" not in res.err, res.err
    assert res.err.strip().splitlines() == [res.last_error], "nothing ran before the error"
    assert res.last_error.startswith("error: INVOKE_BATCH_JOBS='abc' is not a whole number (batch.jobs)")


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("INVOKE_BATCH_JOBS", "abc", "is not a whole number (batch.jobs)"),
        ("INVOKE_REGISTRY_RETRIES", "x", "is not a whole number (registry.retries)"),
        ("INVOKE_SMOKE_TIMEOUT", "", "is not a whole number (smoke.timeout)"),
        ("INVOKE_REGISTRY_TIMEOUT", "2.5", "is not a whole number (registry.timeout)"),
        ("INVOKE_DEV_PUSH", "false", "would switch dev.push on"),
        ("INVOKE_NIGHTLY_PRECOMPILED", "Off", "set INVOKE_NIGHTLY_PRECOMPILED=0 to switch it off"),
        ("INVOKE_RUN_DRY", "maybe", "is not a boolean (run.dry)"),  # invoke's own settings too
        ("INVOKE_FORK_SYNC_PROTECT", "extras/", "set fork_sync.protect in invoke.yaml"),
    ],
)
def test_the_line_says_what_is_wrong_and_the_forkdev_script_says_the_same(invoke, tmp_path, name, value, words):
    res = invoke("verify", "forkdev-test/none:absent", env={name: value})
    assert res.code == 1 and words in res.last_error, res.err
    script = invoke("verify", "x", env={name: value}, cwd=tmp_path, argv=lambda *a: [str(FORKDEV), *a])
    assert script.code == 1 and "Traceback" not in script.err and script.last_error == res.last_error, script.err


@pytest.mark.parametrize(
    ("name", "value"),
    [("INVOKE_DEV_PUSH", "0"), ("INVOKE_DEV_PUSH", ""), ("INVOKE_DEV_PUSH", "true"), ("INVOKE_BATCH_JOBS", " 3")],
)
def test_values_invoke_reads_as_their_writer_means_pass(name, value):
    assert config.environment_problem({name: value}, config.DEFAULTS) is None


def test_list_and_help_name_the_variable_too_rather_than_list_tasks_that_cannot_run(invoke):
    res = invoke("--list", env={"INVOKE_BATCH_JOBS": "abc"})
    assert res.code == 1 and res.last_error.startswith("error: INVOKE_BATCH_JOBS='abc'")


# ---- the container's settings moved from run: (invoke's own section) to container: -----------------------------
@pytest.mark.parametrize("key", config.MOVED)
def test_a_variable_of_the_old_run_section_is_refused_with_its_new_name(monkeypatch, key):
    monkeypatch.setenv(f"INVOKE_RUN_{key.upper()}", "x")  # invoke would ignore it: no default has that key now
    with pytest.raises(Failure) as exc:
        cli.check_environment()
    assert str(exc.value) == (
        f"INVOKE_RUN_{key.upper()} is set, but run.{key} is now container.{key}; set INVOKE_CONTAINER_{key.upper()} "
        f"instead and unset INVOKE_RUN_{key.upper()}"
    )


def test_invokes_own_run_settings_are_not_taken_for_moved_ones():
    from invoke import Config

    assert config.moved_setting(Config.global_defaults()["run"]) is None  # run.env is invoke's, empty
    assert config.moved_setting({"env": {"HF_TOKEN": "x"}, "echo": True}).startswith("config run.env is now")
    assert "run" not in config.DEFAULTS and set(config.MOVED) <= set(config.DEFAULTS["container"])


@pytest.mark.parametrize(
    ("yaml", "key"),
    [("run:\n  secrets: my/secrets\n", "secrets"), ("run:\n  env:\n    HF_TOKEN: x\n", "env")],
)
@pytest.mark.parametrize("args", [("run", "--dry-run", "--", "true"), ("verify", "forkdev-test/none:absent")])
def test_an_invoke_yaml_with_the_old_run_section_stops_every_task_with_one_line(invoke, tmp_path, yaml, key, args):
    project = tmp_path / "project"
    project.mkdir()
    conf = project / "my.yaml"
    conf.write_text(yaml)
    res = invoke("-f", str(conf), *args)
    assert res.code == 1 and "Traceback" not in res.err, res.err
    assert res.err.strip().splitlines() == [res.last_error], "nothing ran before the error"
    assert res.last_error == (
        f"error: config run.{key} is now container.{key} (run: is invoke's own section); rename the key in your "
        f"invoke.yaml (or INVOKE_RUN_{key.upper()} to INVOKE_CONTAINER_{key.upper()})"
    )
