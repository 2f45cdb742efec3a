"""The commits a batch builds: a JSONL dataset (or a plain list of SHAs) and a blacklist, parsed strictly.

JSONL rows: {"commit_hash" | "commit": SHA, "parent_commit": SHA?, "dockerfile_content": TEXT?}. A row with a
parent builds both. Blank lines and `#` comments are allowed in both forms. Any input at all gives rows or a
one-line error naming file:line; nothing is built before the whole file has been read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure

SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Row:
    where: str  # file:line
    commit: str
    dockerfile: str | None = None  # the row's own Dockerfile text
    parent_of: str | None = None  # set on the parent half of a row with parent_commit


def read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
    except OSError as exc:
        raise Failure(f"cannot read {what} '{path}' ({exc.strerror}); check the path") from None
    if data is None:
        raise Failure(f"{what} '{path}' is over {MAX_BYTES // 2**20} MiB; split it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise Failure(f"{path}:{line}: not UTF-8 text; save the {what} as UTF-8") from None


def _sha(value: object, where: str, key: str) -> str:
    if not isinstance(value, str) or not SHA.match(value):
        shown = repr(value)[:60]
        raise Failure(f"{where}: {key} {shown} is not a commit SHA (7 to 64 hex digits); fix the row")
    return value.lower()


def parse(text: str, origin: str) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{origin}:{number}"
        if "\0" in line:
            raise Failure(f"{where}: a NUL byte; the dataset is JSON lines or one SHA a line")
        if not line.startswith("{"):
            rows.append(Row(where, _sha(line, where, "line")))
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise Failure(f"{where}: not a JSON object ({str(exc)[:80]}); write one object per line") from None
        if not isinstance(item, dict):
            raise Failure(f'{where}: not a JSON object; write {{"commit_hash": SHA}} per line')
        unknown = sorted(set(item) - {"commit_hash", "commit", "parent_commit", "dockerfile_content"})
        key = "commit_hash" if "commit_hash" in item else "commit"
        if key not in item:
            raise Failure(f'{where}: no "commit_hash" (or "commit"); every row names its commit')
        dockerfile = item.get("dockerfile_content")
        if dockerfile is not None and (not isinstance(dockerfile, str) or not dockerfile.strip()):
            raise Failure(f'{where}: "dockerfile_content" must be the Dockerfile\'s text; fix the row')
        if unknown:
            raise Failure(
                f"{where}: unknown keys {', '.join(map(repr, unknown))[:120]}; known: commit_hash, "
                "parent_commit, dockerfile_content"
            )
        commit = _sha(item[key], where, key)
        rows.append(Row(where, commit, dockerfile))
        if item.get("parent_commit") is not None:
            rows.append(Row(where, _sha(item["parent_commit"], where, "parent_commit"), dockerfile, parent_of=commit))
    return rows


def blacklist(text: str, origin: str) -> set[str]:
    """SHAs (one a line, # comments) never to build; a prefix matches the commits it abbreviates."""
    found = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            found.add(_sha(line, f"{origin}:{number}", "entry"))
    return found


def blacklisted(commit: str, entries: set[str]) -> bool:
    return any(commit.startswith(e) or e.startswith(commit) for e in entries)
