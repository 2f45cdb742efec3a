"""Assembles the task collection and declares every config default (see forkdev/config.py); nothing else."""

from invoke import Collection

from forkdev import build, config, dev, fork_sync, overlay, patches, verify

ns = Collection(dev, build, verify, fork_sync, overlay, patches)
ns.configure(config.DEFAULTS)
