"""Assembles the task collection (forkdev/cli.py; the `forkdev` console script runs the same one)."""

from forkdev.cli import namespace

ns = namespace()
