"""Assembles the task collection and declares every config default (see forkdev/config.py); nothing else."""

from invoke import Collection

from forkdev import build, config, dev, verify

ns = Collection(dev, build, verify)
ns.configure(config.DEFAULTS)
