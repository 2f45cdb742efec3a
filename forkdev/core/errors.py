"""Expected failures: one sentence naming the input and the remedy, a non-zero exit, no traceback.

`Failure` is an `invoke.Exit`, so invoke prints the message to stderr and exits with its code; code that
runs outside invoke (tests, benchmarks) catches it like any exception. The sentence is masked as every line is
(ui.mask): a command's error output quoted in it may hold a credential.
"""

from __future__ import annotations

from invoke.exceptions import Exit

from . import ui


class Failure(Exit):
    def __init__(self, message: str, code: int = 1) -> None:
        message = ui.mask(message)
        super().__init__(message=f"error: {message}", code=code)
        self.sentence = message

    def __str__(self) -> str:
        return self.sentence
