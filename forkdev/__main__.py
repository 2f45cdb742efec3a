"""`python -m forkdev ...`: the same program as the `forkdev` console script (cron jobs use this form)."""

from .cli import program

program.run()
