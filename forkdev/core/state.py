"""Small JSON state files (the nightly's last builds, a run's outcome), written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import Failure


def read(path: Path) -> dict[str, Any]:
    """The state at `path`, or {} when there is none (a torn or foreign file counts as none; so does a symlink,
    which is not followed: the tool reads only what it wrote)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` atomically: a reader sees the old state or the new one, never a mix. A place
    that cannot take it (a directory there, no permission) is one sentence naming it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise Failure(f"cannot write '{path}' ({why}); move away what is there, or use another cache") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
