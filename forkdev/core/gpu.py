"""GPUs: what the host offers, and the engine arguments that give a container its GPUs.

The host is read from a root directory (config `gpu.root`, normally "/"), so that every kind of host can be
checked against a prepared tree: the NVIDIA driver (/proc/driver/nvidia/version), a CDI spec (/etc/cdi or
/var/run/cdi, nvidia*.yaml|json, made by `nvidia-ctk cdi generate`), WSL2 (/dev/dxg and /usr/lib/wsl/lib).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import Failure

MODES = ("auto", "none", "all")


@dataclass(frozen=True)
class Host:
    driver: str | None  # the driver's version line
    cdi_specs: tuple[str, ...]
    wsl: bool
    gpus: int  # devices the driver lists (/proc/driver/nvidia/gpus/*), 0 when unknown

    def describe(self) -> str:
        parts = [f"driver: {self.driver}" if self.driver else "driver: none"]
        parts.append(f"CDI spec: {', '.join(self.cdi_specs)}" if self.cdi_specs else "CDI spec: none")
        parts.append("WSL2 GPU: /dev/dxg" if self.wsl else "WSL2 GPU: none")
        return "; ".join(parts)


def host(root: Path) -> Host:
    version = root / "proc/driver/nvidia/version"
    try:
        driver = version.read_text(errors="replace").splitlines()[0].strip() or "present"
    except (OSError, IndexError):
        driver = None
    specs = []
    for folder in ("etc/cdi", "var/run/cdi"):
        d = root / folder
        if d.is_dir():
            specs += sorted(
                str(p) for p in d.iterdir() if p.name.startswith("nvidia") and p.suffix in (".yaml", ".json")
            )
    gpus_dir = root / "proc/driver/nvidia/gpus"
    gpus = len(list(gpus_dir.iterdir())) if gpus_dir.is_dir() else 0
    wsl = (root / "dev/dxg").exists() and (root / "usr/lib/wsl/lib").is_dir()
    return Host(driver, tuple(specs), wsl, gpus)


def parse_request(value: str) -> str | int:
    """--gpu auto|none|all|N."""
    text = str(value).strip().lower()
    if text in MODES:
        return text
    if re.fullmatch(r"[0-9]{1,4}", text) and int(text) > 0:  # not isdigit(): '²' is a digit to it
        return int(text)
    raise Failure(f"--gpu '{value}' is not auto, none, all or a number of GPUs; pick one")


def args(kind: str, found: Host, request: str | int) -> tuple[list[str], str]:
    """(engine arguments, what was picked and why). `auto` takes what the host has; asking for GPUs the host
    cannot give is an error naming the missing piece."""
    if request == "none":
        return [], "no GPU (--gpu none)"
    if found.wsl:
        return (
            ["--device", "/dev/dxg", "-v", "/usr/lib/wsl:/usr/lib/wsl:ro", "-e", "LD_LIBRARY_PATH=/usr/lib/wsl/lib"],
            "WSL2: /dev/dxg and /usr/lib/wsl",
        )
    if not found.driver:
        if request == "auto":
            return [], "no GPU: no NVIDIA driver on this host (/proc/driver/nvidia/version)"
        raise Failure(
            f"--gpu {request}: this host has no NVIDIA driver (no /proc/driver/nvidia/version) and no WSL2 GPU "
            "(/dev/dxg); install the driver, or run with --gpu none"
        )
    if isinstance(request, int) and found.gpus and request > found.gpus:
        raise Failure(f"--gpu {request}: this host has {found.gpus} GPU(s); ask for at most that many")
    if kind == "docker":
        # docker hands GPUs over through the NVIDIA container toolkit's --gpus.
        value = "all" if request in ("auto", "all") else str(request)
        return ["--gpus", value], f"docker --gpus {value} ({found.driver})"
    # podman ignores --gpus before 5.0; GPUs go through CDI, whose spec nvidia-ctk generates.
    if not found.cdi_specs:
        raise Failure(
            "podman needs a CDI spec for the GPU and there is none (/etc/cdi, /var/run/cdi); create it with "
            "'sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml'"
        )
    if request in ("auto", "all"):
        return ["--device", "nvidia.com/gpu=all"], f"CDI nvidia.com/gpu=all ({found.cdi_specs[0]})"
    devices = [arg for i in range(int(request)) for arg in ("--device", f"nvidia.com/gpu={i}")]
    return devices, f"CDI nvidia.com/gpu=0..{int(request) - 1} ({found.cdi_specs[0]})"
