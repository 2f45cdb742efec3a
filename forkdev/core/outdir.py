"""The output directory of a build (`--out`, default dist/): checked before anything is built, written last.

Only complete files land there: each is copied beside its destination under a hidden name, flushed, then
renamed over it. Nothing the tool did not make is removed or overwritten, except a file of the same name as one
it writes (a wheel of the same name and version is replaced). SHA256SUMS is merged, never truncated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from . import attest
from .errors import Failure


def resolve(value: str, checkout: Path | None) -> Path:
    """The directory `value` names (relative to the current directory), refused when it is a file, a symlink
    leading out of its own directory, the checkout itself, or inside the checkout's .git."""
    raw = Path(os.path.expanduser(value))
    path = raw if raw.is_absolute() else Path.cwd() / raw
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        parent = Path(os.path.realpath(path.parent))
        if parent != target and parent not in target.parents:
            raise Failure(
                f"--out '{value}' is a symlink to {target}, outside {parent}; pass that directory itself if you "
                "mean it, or another --out"
            )
    if path.exists() and not path.is_dir():
        raise Failure(f"--out '{value}' is a file, not a directory; pass a directory (default: dist/)")
    real = Path(os.path.realpath(path))
    if checkout is not None:
        top = Path(os.path.realpath(checkout))
        if real == top:
            raise Failure(f"--out '{value}' is the checkout itself; pass a directory for the results, e.g. dist/")
        if real == top / ".git" or (top / ".git") in real.parents:
            raise Failure(f"--out '{value}' is inside the checkout's .git; pass a directory such as dist/")
    return real


def check_writable(out: Path, names: Sequence[str]) -> str:
    """Refuse, before anything is written, what publish() could not finish: a directory in the way of a file,
    or a SHA256SUMS we did not write. Returns the current SHA256SUMS text ("" when none)."""
    for name in [*names, attest.SUMS]:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise Failure(f"{out / name} is a directory; move it away, or pass another --out")
    sums = out / attest.SUMS
    if not sums.exists():
        return ""
    try:
        text = sums.read_text()
        attest.parse_sums(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Failure(
            f"{sums} is not a SHA256SUMS this tool can update ({exc}); move it away, or pass another --out"
        ) from None
    return text


def publish(out: Path, staged: Sequence[Path], sums: dict[str, str], existing_sums: str) -> list[Path]:
    """Copy each staged file into `out` whole, then SHA256SUMS with `sums` merged into it; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in staged:
        with open(f, "rb") as src:
            written.append(_place(out, f.name, lambda fh, src=src: shutil.copyfileobj(src, fh, 1 << 20)))
    present = {p.name for p in out.iterdir() if p.is_file()}
    text = attest.merge_sums(existing_sums, sums, present).encode()
    written.append(_place(out, attest.SUMS, lambda fh: fh.write(text)))
    return written


def _place(out: Path, name: str, write: Callable[[BinaryIO], object]) -> Path:
    """`out/name` replaced in one rename by a file that `write` filled completely (owned by the caller)."""
    dest = out / name
    tmp = out / f".{name}.forkdev-{os.getpid()}.tmp"
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest
