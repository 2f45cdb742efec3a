"""Assembles the task collection (forkdev/cli.py; the `forkdev` console script runs the same one)."""

import sys

# invoke turns the writing of .pyc files off (its --write-pyc flag), so every task compiled all of forkdev from
# source first: a quarter of its start. Ours are cached like any package's, unless -B or PYTHONDONTWRITEBYTECODE.
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

from forkdev.cli import namespace  # noqa: E402

ns = namespace()
