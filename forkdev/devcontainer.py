"""`invoke devcontainer`: .devcontainer/devcontainer.json for the image, with run's secrets, GPU and ports."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from .core import config, ui, validate
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.tasking import runner, task
from .run import SHARED


@task(iterable=["port"], help={**{k: v for k, v in SHARED.items() if k != "env"}, "port": "a port to forward"})
def devcontainer(c, image=None, repo=None, gpu=None, port=None, target=None, dry_run=False, quiet=False):
    """Write .devcontainer/devcontainer.json (image, mounts, secrets, GPU run args, ports), merged into yours."""
    from .core import container as ctr
    from .core import devcontainer as dc
    from .core import envfiles, secrets
    from .core import gpu as gpus
    from .core.launch import parse_ports, pick_image
    from .core.paths import os_errors, replace_files

    proc = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    cfg, profile = settings.container, settings.target
    checkout = Repo.open(validate.plain(repo or cfg.repo, "--repo"), proc)
    ports = parse_ports(port)
    envfiles.load(envfiles.secrets_files(checkout, cfg.secrets))  # refused here as `run` refuses them
    folder = secrets.relative(cfg.secrets, "container.secrets")
    has_secrets = secrets.located(checkout.path, folder, "container.secrets") is not None
    ref = pick_image(settings, checkout, image)
    engine = settings.engine(proc)
    gpu_args, picked = gpus.args(engine.kind, gpus.host(cfg.gpu_root), gpus.parse_request(gpu or cfg.gpu))
    where = checkout.path / ".devcontainer"
    target_file, script, backup = where / "devcontainer.json", where / dc.SCRIPT, where / "devcontainer.json.bak"
    for path in (where, target_file, script, backup):
        if path.is_symlink():
            raise Failure(f"{path} is a symlink; forkdev does not write through links: replace it with a file")
    current: Any = {}
    with os_errors(f"read {where}"):  # a directory where a file belongs, no permission: one line
        before = target_file.read_bytes() if target_file.exists() else None
        foreign = script.exists() and not script.read_text(errors="replace").startswith(dc.PROFILE[:40])
    if before is not None:
        try:
            current = jsonlib.loads(before)
        except ValueError:
            raise Failure(f"{target_file} is not plain JSON (comments?); fix or remove it, then re-run") from None
    if foreign:
        raise Failure(f"{script} exists and forkdev did not write it; move it away, then re-run")
    hf = cfg.hf_cache
    mine = dc.ours(
        name=f"forkdev {profile.name}",
        image=ref,
        run_args=gpu_args,
        hf_cache=str(hf) if hf.is_dir() else None,
        hf_in=ctr.HF_IN,
        secrets_dir=folder if has_secrets else None,
        ports=ports,
    )
    merged, notes = dc.merge(current, mine, str(target_file), folder)
    ui.info(f"GPU: {picked}")
    for note in notes:
        ui.info(note)
    text = jsonlib.dumps(merged, indent=2) + "\n"
    if proc.dry_run:
        ui.info(text)
        return
    files = {f".devcontainer/{target_file.name}": (text.encode(), 0o644)}
    if has_secrets:
        files[f".devcontainer/{dc.SCRIPT}"] = (dc.PROFILE.encode(), 0o644)
    if before is not None and before != text.encode():
        files[f".devcontainer/{backup.name}"] = (before, 0o644)
        ui.info(f"the previous file is kept as {backup}")
    with os_errors(f"write {target_file}"):
        replace_files(checkout.path, files)  # each file by a rename; no parent that is a link is followed
    ui.result(str(target_file))
