"""The task collection, for `invoke` in this directory (tasks.py) and the `forkdev` console script alike."""

from __future__ import annotations

from invoke import Collection, Program

from . import __version__, build, cron, dev, fork_sync, nightly, overlay, patches, smoke, verify, wheel
from .core import config


def namespace() -> Collection:
    """Every task at the top (a verb per module); every config default declared once."""
    ns = Collection()
    tasks = (dev.dev, build.build, verify.verify, fork_sync.fork_sync, overlay.overlay, patches.patches, smoke.smoke)
    for t in tasks:
        ns.add_task(t)
    ns.add_collection(nightly.nightly)
    ns.add_collection(cron.cron)
    ns.add_collection(wheel.wheel)
    ns.configure(config.DEFAULTS)
    return ns


program = Program(namespace=namespace(), name="forkdev", binary="forkdev", version=__version__)
