"""The process seam and the engine value: echo, dry-run, failures as sentences, timeouts, secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import support

from forkdev.core import engine, ui
from forkdev.core.errors import Failure
from forkdev.core.proc import Result, Runner, concurrently, shown


def test_dry_run_skips_commands_that_change_things_but_runs_probes(capsys):
    run = Runner(dry_run=True)
    assert run(["false"]).dry is True
    assert run(["echo", "probe"], mutates=False).out == "probe"
    err = capsys.readouterr().err
    assert "+ false   [dry-run: not run]" in err and "+ echo probe" in err


def test_quiet_echoes_nothing(capsys):
    Runner(echo=False)(["true"])
    assert capsys.readouterr().err == ""


def test_a_script_argument_is_echoed_as_one_short_placeholder():
    assert shown(["python3", "-c", "import a\nimport b\n\nprint(1)\n", "x y"]) == "python3 -c '<3-line script>' 'x y'"


def test_secrets_reach_the_child_but_never_the_echo(capsys):
    res = Runner()(["sh", "-c", 'printf %s "$TOKEN"'], secret_env={"TOKEN": "s3cr3t-value"})
    assert res.out == "s3cr3t-value"
    assert "s3cr3t-value" not in capsys.readouterr().err


def test_concurrent_calls_run_at_once_and_give_their_results_in_order():
    run = Runner(echo=False)
    start = time.monotonic()
    got = concurrently(*(lambda i=i: run(["sh", "-c", f"sleep 0.4; echo {i}"]).out for i in range(3)))
    assert got == ["0", "1", "2"]
    assert time.monotonic() - start < 1.0, "three 0.4 s commands took as long as running them one by one"


def test_a_concurrent_failure_is_raised_only_once_every_call_has_ended(tmp_path):
    run = Runner(echo=False)
    done = tmp_path / "done"

    def slow() -> None:
        run(["sh", "-c", f"sleep 0.3; touch {done}"])

    with pytest.raises(Failure, match="exit 3"):
        concurrently(lambda: run(["sh", "-c", "exit 3"]), slow)
    assert done.exists(), "the failure was raised while another call's command still ran"


INTERRUPTED = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a job started in the background inherits it ignored
from forkdev.core.proc import Runner, concurrently
run = Runner(echo=False)
first = ["sleep", "30"] if sys.argv[1] == "running" else ["true"]
helper = ["sh", "-c", f"echo $$ > {sys.argv[2]}; exec sleep 30"]
concurrently(lambda: run(first), lambda: run(helper))
"""


@pytest.mark.parametrize("first", ["running", "waiting"])
def test_an_interrupt_of_this_process_alone_stops_every_concurrent_command(tmp_path, first):
    """SIGINT to our process only (a stop button, `kill -INT`): its own command or its wait for the others is
    interrupted, and the other calls' commands are stopped too, at once."""
    pidfile = tmp_path / "helper.pid"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, first, str(pidfile)], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    helper = int(pidfile.read_text())
    time.sleep(0.2)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) != 0
    assert time.monotonic() - start < 3, "the interrupt waited for the other call's 30 s command"
    time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(helper, 0)


def test_lines_of_concurrent_calls_reach_the_callers_log_file_whole(tmp_path):
    log = tmp_path / "task.log"
    run = Runner()
    with ui.log_to(log, console=False):
        concurrently(*(lambda i=i: run(["true", f"call-{i}" * 50]) for i in range(8)))
    lines = log.read_text().splitlines()
    assert len(lines) == 8 and all(line.endswith(f"call-{line[-1]}" * 50) for line in lines)


def test_a_command_past_its_timeout_is_stopped_and_named():
    start = time.monotonic()
    with pytest.raises(Failure, match=r"'sleep 30' did not finish within 0.5s"):
        Runner(echo=False)(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("writes", ["nothing", "lines", "nothing, its output closed"])
def test_a_streamed_command_past_its_timeout_is_stopped_reaped_and_named(tmp_path, writes):
    pidfile = tmp_path / "child.pid"
    script = {
        "nothing": "exec sleep 4",
        "lines": "for i in $(seq 80); do echo tick; sleep 0.05; done",
        "nothing, its output closed": "exec sleep 4 >&-",
    }[writes]
    argv = ["sh", "-c", f"echo $$ > {pidfile}; {script}"]
    start = time.monotonic()
    with pytest.raises(Failure, match=r"did not finish within 0.5s and was stopped"):
        Runner(echo=False)(argv, stream=True, timeout=0.5)
    assert time.monotonic() - start < 3, "the streamed command ran on past its timeout"
    pid = int(pidfile.read_text())
    with pytest.raises(ChildProcessError):  # reaped: no zombie of it is left for us to wait on
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def running(pid: int) -> bool:
    """Whether pid is a live process (a zombie waiting for its parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("stream", [False, True])
def test_a_shielded_command_past_its_timeout_is_stopped_with_what_it_started(tmp_path, stream):
    pidfile = tmp_path / "started.pid"
    argv = ["sh", "-c", f"sleep 4 & echo $! > {pidfile}; wait"]
    with pytest.raises(Failure, match=r"did not finish within 0.5s"):
        Runner(echo=False, shielded=True)(argv, stream=stream, timeout=0.5)
    started = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while running(started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(started), "the command's own child was left running"


def test_a_streamed_command_within_its_timeout_passes_every_line_and_its_input(capsys):
    res = Runner(echo=False)(["sh", "-c", "cat; printf 'last, no newline'"], stream=True, input=b"a\nb\n", timeout=10)
    assert res.ok and res.err.endswith("last, no newline")
    *_, a, b, last = capsys.readouterr().err.splitlines()  # each may start with a timestamp (not on a TTY)
    assert a.endswith(" a") or a == "a"
    assert b.endswith(" b") or b == "b"
    assert last.endswith(" last, no newline") or last == "last, no newline"


def test_a_line_without_end_is_passed_on_in_pieces_and_every_byte_of_it_arrives(capsys):
    """A progress bar redrawn with carriage returns is one endless line: it is shown as it comes, not held."""
    script = "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush()"
    res = Runner(echo=False)([sys.executable, "-c", script], stream=True, timeout=30)
    assert res.ok and res.stderr == b"x" * 65536, "the tail holds the last 64 KiB"
    shown = [line.rsplit(" ", 1)[-1] for line in capsys.readouterr().err.splitlines()]
    assert len(shown) > 1 and all(len(piece) <= 2 * 65536 for piece in shown)
    assert "".join(shown) == "x" * 1_000_000


def test_a_missing_program_and_a_failed_command_are_one_sentence():
    with pytest.raises(Failure, match="'no-such-program-x' is not installed or not on PATH"):
        Runner(echo=False)(["no-such-program-x"])
    with pytest.raises(Failure, match=r"'sh -c 'echo boom >&2; exit 3'' failed with exit 3: boom"):
        Runner(echo=False)(["sh", "-c", "echo boom >&2; exit 3"])


@pytest.mark.parametrize(
    ("stdout", "stderr", "reason"),
    [
        (
            b"",
            b"fatal: 'x' does not appear to be a git repository\nfatal: Could not read\n\nand the repository exists.\n",
            "fatal: 'x' does not appear to be a git repository",
        ),
        (b"", b"warning: a\nerror: pathspec 'y' did not match\n", "error: pathspec 'y' did not match"),
        (b"", b"Cannot connect to the Docker daemon\n", "Cannot connect to the Docker daemon"),
        (b"error: Your local changes would be overwritten\n", b"", "error: Your local changes would be overwritten"),
        (b"", b"", "exit status 1, no output"),
    ],
)
def test_the_reason_of_a_failure_is_the_line_that_says_why(stdout, stderr, reason):
    assert Result(("git",), 1, stdout, stderr).reason == reason


@pytest.mark.parametrize(
    ("ref", "loopback"),
    [
        ("127.0.0.1:5000/x:y", True),
        ("localhost:5000/x", True),
        ("[::1]:5000/x", True),
        ("ghcr.io/a/b:c", False),
        ("vllm/vllm-openai:nightly", False),
        ("plain", False),
    ],
)
def test_loopback_registries(ref, loopback):
    assert engine.loopback_registry(ref) is loopback


def test_docker_buildkit_follows_the_client_version_and_is_asked_only_once():
    calls = []

    class NoBuildx(Runner):
        def __call__(self, argv, **kw):
            calls.append(argv)
            return Result(tuple(argv), 1, b"", b"unknown command")

    info = {"Client": {"Version": "28.2.2"}, "Server": {"Version": "20.10.24"}}
    new_client = engine.Engine._from_version("docker", "docker", info, "host")
    assert new_client.buildkit(NoBuildx()) is False and new_client.buildkit(NoBuildx()) is False
    assert len(calls) == 1
    info["Client"]["Version"] = "20.10.24+dfsg1"
    assert engine.Engine._from_version("docker", "docker", info, "host").buildkit(NoBuildx()) is True
    assert engine.Engine._from_version("podman", "podman", info, "host").buildkit(NoBuildx()) is True


def test_every_task_takes_quiet_and_dry_run():
    """The shared flags are the same on every task a user can run (patches names its dry run --check); a task
    that only reads (verify, gpu-check, cron.status) has nothing to dry-run."""
    from forkdev.cli import namespace

    def tasks(coll, prefix=""):
        for name, t in coll.tasks.items():
            yield prefix + name, t
        for name, sub in coll.collections.items():
            yield from tasks(sub, prefix + name + ".")

    missing = []
    for name, t in tasks(namespace()):
        args = {a.name for a in t.get_arguments()}
        reads_only = name in {"verify", "gpu-check", "cron.status"}
        if "quiet" not in args or not (reads_only or {"dry_run", "check"} & args):
            missing.append(name)
    assert missing == [], f"tasks without --quiet or --dry-run: {missing}"


def test_every_task_that_takes_a_checkout_names_it_repo():
    """`invoke dev PATH` or `invoke dev --repo PATH`: the same name in every task, positional where the checkout
    is required (dev, wheel) and a flag with a default where it is not (invoke has no optional positionals)."""
    from forkdev.cli import namespace

    def tasks(coll, prefix=""):
        for name, t in coll.tasks.items():
            yield prefix + name, t
        for name, sub in coll.collections.items():
            yield from tasks(sub, prefix + name + ".")

    found = {name: {a.name: a.positional for a in t.get_arguments()} for name, t in tasks(namespace())}
    assert [name for name, args in found.items() if {"path", "checkout"} & set(args)] == []
    assert found["dev"]["repo"] is True and found["wheel.build"]["repo"] is True


@pytest.mark.parametrize(
    "argv",
    [[sys.executable, "-m", "forkdev", "--list"], support.invoke_argv("dev", "--help")],
    ids=["forkdev --list", "invoke dev --help"],
)
def test_a_reader_that_leaves_early_gets_no_traceback(argv):
    """`forkdev --list | head`: the pipe closes under the program, which stops quietly with SIGPIPE's status. A
    task's help asked after it (`invoke dev --help`, which invoke hands to the task) stops the same way."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already left: the first write fails
    try:
        res = subprocess.run(
            argv,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],  # this checkout's forkdev, not an installed copy
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.returncode == 141


def keep_alive(conn) -> None:  # HTTP/1.1 with Content-Length, the connection left open
    body = b'{"Version": "99.1"}'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    time.sleep(10)


def silent(conn) -> None:
    time.sleep(10)


def trickle(conn) -> None:  # a header line a second: never done
    for _ in range(10):
        conn.sendall(b"X-Slow: 1\r\n")
        time.sleep(1)


@pytest.mark.parametrize(("reply", "version"), [(keep_alive, "99.1"), (silent, None), (trickle, None)])
def test_the_daemon_socket_probe_reads_one_answer_and_gives_up_within_two_seconds(
    tmp_path, monkeypatch, reply, version
):
    path = tmp_path / "d.sock"
    server = support.serve_unix(path, reply)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    start = time.monotonic()
    try:
        got = engine._daemon_version(engine._daemon_socket())
    finally:
        server.close()
    assert (got or {}).get("Version") == version
    assert time.monotonic() - start < 2.5


def test_a_log_block_leaves_the_lines_after_it_as_they_were_before_it(tmp_path, capsys):
    from forkdev.core import ui

    with ui.log_to(tmp_path / "outer.log"):
        with ui.log_to(tmp_path / "inner.log"):
            ui.info("inner")
        ui.info("outer again")
    ui.info("after")
    assert "inner" in (tmp_path / "inner.log").read_text()
    assert "outer again" in (tmp_path / "outer.log").read_text(), "the outer log is the one again"
    assert "outer again" not in (tmp_path / "inner.log").read_text()
    assert capsys.readouterr().err.splitlines()[-1] == "after", "no timestamp once no log is open"
