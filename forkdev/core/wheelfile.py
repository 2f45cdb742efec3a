"""A built wheel, read and stamped: the build record (commit, dirtiness, target, native libraries, smoke command)
goes into its .dist-info as `forkdev-build.json`, listed in RECORD with its hash as the wheel spec requires, so
the installed package can say which commit it came from. Reading uses the smoke probe's reader (one parser)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import assets
from .errors import Failure

STAMP = "forkdev-build.json"


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    tags: tuple[str, ...]
    pure: bool  # every tag is *-none-any
    natives: tuple[str, ...]  # .so files inside
    requires: tuple[str, ...]  # Requires-Dist lines
    top_level: tuple[str, ...]
    stamp: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def pure_with_native(self) -> bool:
        """Tagged for any platform, yet carrying native code: pip will install it where it cannot load."""
        return self.pure and bool(self.natives)


def read(path: Path) -> Wheel:
    try:
        info = assets.probe().read_wheel(path)
    # NotImplementedError: a compression method zipfile lacks (zstd, lzma variants); RuntimeError: what else
    # zipfile refuses to read.
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        raise Failure(f"'{path}' is not a readable wheel ({exc}); rebuild it with 'invoke wheel'") from None
    return Wheel(
        path=path,
        name=info["name"],
        version=info["version"],
        tags=tuple(info["tags"]),
        pure=info["pure"],
        natives=tuple(info["natives"]),
        requires=tuple(info["requires"]),
        top_level=tuple(info["top_level"]),
        stamp=info["stamp"],
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stamp(path: Path, record: dict[str, Any]) -> None:
    """Add (or replace) the build record in the wheel at `path`, rewriting its RECORD; the other entries are
    copied as they are (bytes, compression, permissions, times). The new wheel replaces the old in one rename."""
    data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = path.with_name(f".{path.name}.stamping")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        names = src.namelist()
        records = [n for n in names if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
        if len(records) != 1:
            raise Failure(f"{path.name} has {len(records)} .dist-info/RECORD files, not one; it is not a valid wheel")
        dist_info = records[0].split("/", 1)[0]
        ours = f"{dist_info}/{STAMP}"
        template = src.getinfo(f"{dist_info}/METADATA")
        for info in src.infolist():
            if info.filename == ours:
                continue
            if info.filename == records[0]:
                lines = [ln for ln in src.read(info).decode().splitlines() if ln and not ln.startswith(f"{ours},")]
                at = next((i for i, ln in enumerate(lines) if ln.startswith(f"{records[0]},")), len(lines))
                lines.insert(at, f"{ours},sha256={digest},{len(data)}")
                added = zipfile.ZipInfo(ours, date_time=template.date_time)
                added.external_attr = 0o644 << 16
                added.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(added, data)
                dst.writestr(info, ("\n".join(lines) + "\n").encode())
            else:
                dst.writestr(info, src.read(info))
    os.replace(tmp, path)
