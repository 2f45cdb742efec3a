"""`invoke gpu-check`: what GPUs the host offers and what a container of an image sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core import config, ui, validate
from .core.errors import Failure
from .core.tasking import runner, task

if TYPE_CHECKING:
    from .core import gpu as gpus


@task(help={"image": "also check what a container of this image sees", "gpu": "what to ask for (default: all)"})
def gpu_check(c, image=None, gpu="all", json=False, quiet=False):
    """What GPUs the host offers and a container sees; fails, naming the missing piece, when there is none."""
    from .core import container as ctr
    from .core import gpu as gpus
    from .core import owners

    proc = runner(c, False, quiet)
    settings = config.load(c)
    found = gpus.host(settings.container.gpu_root)
    result: dict[str, Any] = {
        "host": found.describe(),
        "driver": found.driver,
        "cdi": list(found.cdi_specs),
        "wsl": found.wsl,
        "container": None,
    }
    ui.info(f"host: {found.describe()}")
    engine = settings.engine(proc)
    try:
        gpu_args, picked = _gpu_args(engine.kind, found, gpu)
    except Failure as exc:
        if json:
            ui.emit_json({**result, "ok": False, "problem": str(exc)})
        raise
    ui.info(f"engine: {picked}")
    if image:
        ref = validate.image_ref(image, "--image")
        probe = "nvidia-smi -L" if not found.wsl else "ls /dev/dxg && ls /usr/lib/wsl/lib/libcuda.so*"
        own = owners.claim(settings.cache_dir(proc), engine, proc)
        name, labels = own.container("gpu-check")
        argv = engine.cmd("run", "--rm", "--name", name, *ctr.label_args(labels))
        argv += ["--network", "none", *gpu_args, "--entrypoint", "/bin/sh", "--", ref, "-c", probe]
        with ctr.running(proc, engine, own, name) as box:
            res = proc(argv, check=False, mutates=False)
            box.ended(res.returncode)
        result["container"] = res.out
        if not res.ok:
            if json:
                ui.emit_json({**result, "ok": False, "problem": res.reason})
            raise Failure(f"a container of '{ref}' sees no GPU ({res.reason}); check the image's CUDA and the toolkit")
    if json:
        ui.emit_json({**result, "ok": True})
    (ui.ok if json else ui.result)(f"GPU available: {picked}")


def _gpu_args(kind: str, found: gpus.Host, request: str) -> tuple[list[str], str]:
    from .core import gpu as gpus

    parsed = gpus.parse_request(request)
    if parsed == "none":
        raise Failure("gpu-check --gpu none checks nothing; ask for all or a number")
    args, picked = gpus.args(kind, found, parsed)
    if not args:
        raise Failure(f"no GPU is visible: {picked}; install the NVIDIA driver and container toolkit")
    return args, picked
