"""Sessions: lint, tests, infra, smoke, bench. They install the project and call its tools; they never import tasks."""

from __future__ import annotations

import subprocess

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def tracked(*patterns: str) -> list[str]:
    """Files git tracks (or would: untracked, not ignored) matching the pathspecs, e.g. every Dockerfile."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *patterns],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(set(out.split()))


def shell_scripts() -> list[str]:
    """Every *.sh, and every tracked file whose first line names bash or sh (.ci/provision, .ci/run)."""
    found = []
    for path in tracked("*"):
        if path.endswith(".sh"):
            found.append(path)
            continue
        try:
            with open(path, "rb") as fh:
                first = fh.readline(200)
        except OSError:
            continue
        if first.startswith(b"#!") and (first.rstrip().endswith((b"bash", b"/sh")) or b" bash" in first):
            found.append(path)
    return found


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, shellcheck, hadolint and the workflows (GitHub's schema and zizmor): every tool from PyPI, offline."""
    session.install(".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("shellcheck", *shell_scripts())
    dockerfiles = tracked("Dockerfile", "*/Dockerfile", "*Dockerfile*", "*.dockerfile")
    if dockerfiles:
        session.run("hadolint", *dockerfiles)
    workflows = tracked(".github/workflows/*.yml", ".github/workflows/*.yaml")
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    session.run("zizmor", "--offline", ".github/workflows")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit specs, then end-to-end runs on the real engine, git and a loopback registry."""
    session.install(".[test]")
    session.run("pytest", "-ra", *session.posargs)


@nox.session
def infra(session: nox.Session) -> None:
    """The Dockerfile, its entrypoint and the workflows, checked by tests that can fail: parsed, and each
    entrypoint mode run for real in the image."""
    session.install(".[test]")
    session.run("pytest", "-ra", "tests/infra", *session.posargs)


@nox.session(reuse_venv=False)
def smoke(session: nox.Session) -> None:
    """`nox -s smoke [-- WHEEL ...]`: each wheel (default: dist/*.whl) into a fresh environment of its own."""
    session.install(".", "uv")
    session.run("invoke", "smoke", *[f"--wheel={wheel}" for wheel in session.posargs])


@nox.session
def bench(session: nox.Session) -> None:
    """Figures on a vLLM-sized checkout and real wheels, each with its ratio against the naive way."""
    session.install(".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)
