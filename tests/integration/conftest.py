"""Fixtures the integration tests of one subject share across their files."""

from support.forksync import repos, wrapped  # noqa: F401  (fork-sync's, for test_fork_sync_*.py)
