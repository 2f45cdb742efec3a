"""cron.install / cron.remove / cron.status with Debian's cron and a crontab of a user of the tests' own.

The tool edits only its own line, as text; nothing written into it can start another line; the line carries the
config it was installed with, pushes only where there is a registry, and is proven at install time by a dry run of
the exact command as cron runs it. The tests run the installed line as cron does (its `%` rule, `env -i` with
cron's variables, /bin/sh -c) and it builds and pushes the nightly.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import support
from test_nightly import build_os_image  # noqa: F401 - the session fixture: the FROM image for builds

from forkdev import cron

pytestmark = pytest.mark.engine  # the install's dry run asks the engine

MARK = "# forkdev nightly (vllm)"
NEVER = "0 0 31 2 *"  # valid, and never due (February 31st): this machine's cron never runs a test's line


@pytest.fixture
def cron_user(tmp_path):
    """A user of its own, so the tests never touch a real crontab; removed after. It shares root's uid (the tests
    run as root; their interpreter lives under /root here), so its job runs the tests' interpreter and engines,
    with a name, a home and a crontab of its own."""
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    name = f"fdcron{os.getpid() % 100000}"
    home = tmp_path / "home"
    home.mkdir()
    support.sh("useradd", "--non-unique", "--uid", "0", "--gid", "0", "--no-create-home", "--home-dir", home, name)
    try:
        yield name
    finally:
        subprocess.run(["crontab", "-u", name, "-r"], capture_output=True)
        subprocess.run(["userdel", "--force", name], capture_output=True)  # --force: its uid (0) is in use


@pytest.fixture
def plain_user():
    """A user of its own that is not root: its job runs as it (runuser), with its own rights."""
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    name = f"fdplain{os.getpid() % 100000}"
    support.sh("useradd", "--no-create-home", name)
    try:
        yield name
    finally:
        subprocess.run(["crontab", "-u", name, "-r"], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def planned(tmp_path) -> dict[str, str]:
    """Config whose nightly dry run works: a local upstream (only planned: its FROM image is never needed)."""
    up = tmp_path / "upstream"
    support.make_buildable_upstream(up)
    return {"INVOKE_CACHE_DIR": str(tmp_path / "cache"), "INVOKE_UPSTREAM_URL": str(up)}


def crontab_of(user: str) -> bytes:
    res = subprocess.run(["crontab", "-u", user, "-l"], capture_output=True)
    return res.stdout if res.returncode == 0 else b""


def set_crontab(user: str, raw: bytes) -> None:
    subprocess.run(["crontab", "-u", user, "-"], input=raw, check=True)


def ours(user: str) -> list[str]:
    return [line for line in crontab_of(user).decode(errors="replace").split("\n") if line.endswith(MARK)]


def as_cron_runs(line: str, user: str, home: Path, env: dict[str, str] | None = None):
    """Run a crontab line's command as Debian's cron does: the five time fields off; `\\%` read as `%` and a bare
    `%` ending the command (support.crond, a port of cron's loop); /bin/sh -c under `env -i` with cron's variables;
    as `user`."""
    command = support.crond(line.split(None, 5)[5])
    cron_env = ["PATH=/usr/bin:/bin", f"HOME={home}", "SHELL=/bin/sh", f"LOGNAME={user}"]
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(["env", "-i", *cron_env, *extra, "/bin/sh", "-c", command], capture_output=True, text=True)


def test_install_changes_only_its_own_line_and_remove_only_removes_it(invoke, cron_user, planned):
    theirs = (
        b'FOO = "spaced value"\n'
        b"# a comment with a byte that is not UTF-8: \xff\n"
        b"0 0 * * 7\t/bin/true  two  spaces  \n"
        b"\n"
        b"0 1 * * * /an/old/entry " + MARK.encode() + b"\n"
        b"@weekly /bin/true\n"
        b"0 3 * * * /a/duplicate " + MARK.encode() + b"\n"
        b'MAILTO="someone@example.com"\n'
    )
    set_crontab(cron_user, theirs)
    res = invoke("cron.install", "--user", cron_user, "--schedule", NEVER, env=planned)
    assert res.code == 0, res.err
    lines = theirs.split(b"\n")
    after = crontab_of(cron_user).split(b"\n")
    assert len(after) == len(lines) - 1, "the duplicate of ours went, nothing else"
    assert after[4].startswith(NEVER.encode() + b" /bin/sh ") and after[4].endswith(MARK.encode())
    assert after[:4] + after[5:] == lines[:4] + [lines[5], *lines[7:]], "every other byte where it was"

    removed = invoke("cron.remove", "--user", cron_user, env=planned)
    assert removed.code == 0 and "removed 1 entry" in removed.out
    assert crontab_of(cron_user) == b"\n".join(lines[:4] + [lines[5], *lines[7:]])
    assert b'MAILTO="someone@example.com"\n' in crontab_of(cron_user), "a line after ours is not ours"


def test_install_twice_is_one_entry_and_status_shows_it(invoke, cron_user, planned):
    set_crontab(cron_user, b'MAILTO=""\n5 4 * * * /bin/true # theirs\n')
    for _ in range(2):
        res = invoke("cron.install", "--user", cron_user, "--schedule", NEVER, env=planned)
        assert res.code == 0, res.err
    [line] = ours(cron_user)
    script = Path(planned["INVOKE_CACHE_DIR"]) / "nightly" / "vllm.cron.sh"
    assert line == f"{NEVER} /bin/sh {script} >> {script.parent}/vllm.log 2>&1 {MARK}"
    assert script.read_text().endswith(" -m forkdev nightly\n"), "nightly-absent names no registry: no --push"
    status = invoke("cron.status", "--user", cron_user, env=planned)
    assert status.code == 0 and MARK[2:] in status.out and "last run: none recorded" in status.err
    assert crontab_of(cron_user).startswith(b'MAILTO=""\n5 4 * * * /bin/true # theirs\n')
    assert invoke("cron.remove", "--user", cron_user, env=planned).code == 0
    assert crontab_of(cron_user) == b'MAILTO=""\n5 4 * * * /bin/true # theirs\n' and not script.exists()


def test_nothing_written_into_the_line_can_start_another(invoke, cron_user, planned, tmp_path):
    theirs = b"5 4 * * * /bin/true # theirs\n"
    set_crontab(cron_user, theirs)
    pwned = tmp_path / "pwned"
    injected = f"\n* * * * * touch {pwned}\n"
    conf = tmp_path / "nul.yaml"
    conf.write_text('cron:\n  args: "--full\\0--force"\n')
    cases = [
        ({"INVOKE_CRON_ARGS": f"'--ref=main{injected}'"}, (), "cron.args"),
        ({"INVOKE_CACHE_DIR": f"{tmp_path}/cache{injected}#"}, (), "INVOKE_CACHE_DIR"),
        ({"INVOKE_NIGHTLY_CUDA_ARCH": f"9.0{injected}"}, (), "INVOKE_NIGHTLY_CUDA_ARCH"),
        ({"INVOKE_NIGHTLY_CUDA_ARCH": "9.0\r* * * * * true"}, (), "INVOKE_NIGHTLY_CUDA_ARCH"),
        ({}, ("-f", str(conf)), "cron.args"),
    ]
    for env, flags, named in cases:
        res = invoke(*flags, "cron.install", "--user", cron_user, "--schedule", NEVER, env={**planned, **env})
        assert res.code != 0 and "Traceback" not in res.err, (env, res.err[-2000:])
        assert named in res.last_error and "holds a line break or NUL" in res.last_error, res.last_error
        assert crontab_of(cron_user) == theirs
    res = invoke("cron.install", "--user", cron_user, "--schedule", f"{NEVER}{injected}", env=planned)
    assert res.code != 0 and "--schedule" in res.last_error and crontab_of(cron_user) == theirs
    assert not pwned.exists()


def test_the_entry_carries_its_config_and_runs_nightly_as_cron_runs_it(
    tool, engine, registry, cron_user, tmp_path, request
):
    up = tmp_path / "upstream"
    first = support.make_buildable_upstream(up, request.getfixturevalue("build_os_image"))
    cache = tmp_path / "cache%1"  # cron reads a bare % as the end of the command
    name = f"cron-{engine.kind}"
    env = {
        "INVOKE_CACHE_DIR": str(cache),
        "INVOKE_UPSTREAM_URL": str(up),
        "INVOKE_NIGHTLY_REPOSITORY": f"{registry.host}/{name}",
    }
    if engine.kind == "docker":
        env["INVOKE_ENGINE_CLIENT"] = "/usr/bin/docker"  # the 20.10 client: BuildKit built in
    res = tool("cron.install", "--user", cron_user, "--schedule", NEVER, env=env)
    assert res.code == 0, res.err
    assert "the entry's dry run, as cron would run it: ok" in res.err
    [line] = ours(cron_user)
    assert line.startswith(f"{NEVER} /bin/sh {cron.word(str(cache), 'x')}/nightly/vllm.cron.sh >> ")
    script = (cache / "nightly" / "vllm.cron.sh").read_text()
    assert script.endswith(" nightly --push\n"), "nightly.repository names a registry: the job pushes there"
    for key, value in {**env, "INVOKE_ENGINE_NAME": engine.kind}.items():
        assert f" {key}={shlex.quote(value)} " in script, key

    ran = as_cron_runs(line, cron_user, tmp_path / "home")
    log = (cache / "nightly" / "vllm.log").read_text()
    assert ran.returncode == 0, log[-3000:]
    assert ran.stdout == ran.stderr == "", "everything went to the log"
    assert registry.tags(name) == ["nightly", f"nightly-{first}"]
    assert log.count("full build: no full nightly yet") == 1, "each line once in the log"
    status = tool("cron.status", "--user", cron_user, "--lines", "3", "--json", env=env)
    assert status.code == 0 and status.json["last_run"]["ok"] is True and len(status.json["log_tail"]) == 3


def test_install_is_refused_when_the_entry_would_fail(invoke, cron_user, plain_user, planned, tmp_path):
    theirs = b"5 4 * * * /bin/true # theirs\n"
    set_crontab(cron_user, theirs)
    res = invoke("cron.install", "--user", cron_user, env={**planned, "INVOKE_CRON_ARGS": "--push"})
    assert res.code != 0 and "Traceback" not in res.err
    assert res.last_error == (
        "error: cron.args passes --push, but nightly.repository 'forkdev-test/nightly-absent' names no registry, "
        "so the job would fail every night; set nightly.repository to REGISTRY/NAME or drop --push"
    )
    conf = tmp_path / "branch.yaml"
    conf.write_text("upstream:\n  branch: no-such-branch\n")
    res = invoke("-f", str(conf), "cron.install", "--user", cron_user, env=planned)
    assert res.code != 0 and "Traceback" not in res.err
    assert res.last_error.startswith("error: the entry's dry run, as cron would run it, failed: upstream ")
    assert "has no branch or tag 'no-such-branch'" in res.last_error
    assert crontab_of(cron_user) == theirs

    # Another user's job runs with that user's rights: the tests' cache (under a 0700 folder) is not writable.
    res = invoke("cron.install", "--user", plain_user, env=planned)
    assert res.code != 0 and "Traceback" not in res.err
    assert f"{plain_user} cannot write" in res.last_error and "where the nightly log goes" in res.last_error
    assert crontab_of(plain_user) == b""


def test_status_and_args_mistakes_are_one_line(invoke, cron_user, planned, tmp_path):
    log = tmp_path / "cache" / "nightly" / "vllm.log"
    log.parent.mkdir(parents=True)
    log.write_text("first\nsecond\nthird\n")
    for lines, shown in (("0", []), ("2", ["second", "third"]), ("9", ["first", "second", "third"])):
        res = invoke("cron.status", "--user", cron_user, f"--lines={lines}", "--json", env=planned)
        assert res.code == 0 and res.json["log_tail"] == shown, (lines, res.err[-500:])
    for lines in ("abc", "-1"):
        res = invoke("cron.status", "--user", cron_user, f"--lines={lines}", env=planned)
        assert res.code != 0 and "Traceback" not in res.err
        assert res.last_error == f"error: --lines '{lines}' is not a number of lines; pass 0 or more"
    res = invoke("cron.install", "--user", cron_user, env={**planned, "INVOKE_CRON_ARGS": "--ref 'unclosed"})
    assert res.code != 0 and "Traceback" not in res.err
    assert res.last_error.startswith("error: cron.args '--ref 'unclosed' cannot be split into words (")


def test_a_bad_schedule_is_refused_and_what_we_accept_debians_cron_accepts(invoke, cron_user):
    res = invoke("cron.install", "--user", cron_user, "--schedule", "every night")
    assert res.code != 0 and "--schedule 'every night' is not a crontab schedule" in res.last_error
    assert crontab_of(cron_user) == b""
    accepted = ["0 2 * * *", "@weekly", "*/15 0-6 * * 1-5", "0 0 * * 7", "5,10-20/3 * 1 jan-MAR mon-fri", NEVER]
    refused = ["60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *", "5/10 * * * *"]
    refused += ["mon * * * *", "1, * * * *", "@nightly", "* * *"]
    stricter = ["5-1 * * * *"]  # cron takes it quietly; we name it
    for schedule in accepted + refused + stricter:
        try:
            cron.valid_schedule(schedule)
            ok = True
        except Exception:
            ok = False
        took = subprocess.run(["crontab", "-u", cron_user, "-"], input=f"{schedule} /bin/true\n".encode())
        assert ok == (schedule in accepted), schedule
        assert (took.returncode == 0) == (schedule in accepted + stricter), f"Debian's cron on {schedule!r}"
