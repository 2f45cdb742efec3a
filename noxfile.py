"""Sessions: lint, tests, bench. They install the project and call its tools; they never import tasks."""

from __future__ import annotations

import glob

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, shellcheck, hadolint and the workflow schema: all offline."""
    session.install(".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    shell = sorted(glob.glob(".ci/*") + glob.glob("docker/*.sh") + glob.glob("extras/**/*.sh", recursive=True))
    if shell:
        session.run("shellcheck", *shell)
    dockerfiles = sorted(glob.glob("docker/Dockerfile*"))
    if dockerfiles:
        session.run("hadolint", *dockerfiles)
    workflows = sorted(glob.glob(".github/workflows/*.yml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    session.run("zizmor", "--offline", ".github/workflows")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit specs, then end-to-end runs on the real engine, git and a loopback registry."""
    session.install(".[test]")
    session.run("pytest", "-ra", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Figures on a vLLM-sized checkout, each with its ratio against the naive way."""
    session.install(".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)
