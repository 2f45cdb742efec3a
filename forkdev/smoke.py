"""invoke smoke [--image IMAGE]: each wheel installed into a FRESH environment (never reused, never editable),
from a working directory outside any source tree; the package imports from that environment, its version and
the commit recorded in the wheel agree, its native libraries load, and the profile's smoke command passes.

On the host the environment is made with uv when it is installed (venv + pip otherwise); with --image, inside
a container of it (the image's own packages visible, no network). IMAGE is a flag, not a positional argument:
invoke has no optional positional arguments, and `invoke smoke` alone (what `nox -s smoke` runs) must work.
The checks themselves are docker/smoke_probe.py, the same file the build image's `test` mode runs. Before any
install, a wheel is checked against the SHA256SUMS and the provenance beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json as jsonlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .core import cache as store
from .core import config, ui, validate
from .core.errors import Failure
from .core.proc import Runner
from .core.scratch import scratch
from .core.tasking import runner, task, toggle

# The wheel reader, the checksums and the probe (wheelfile, attest, assets, builder) load where they run: cli.py.

HELP = {
    "image": "smoke inside a container of this image instead of on the host",
    "wheel": "a wheel to smoke; repeatable (default: every *.whl in config wheel.out, dist/)",
    "commit": "the commit every wheel must record (default: the one its provenance names)",
    "target": "take the smoke command and import name from this profile (default: what the wheel recorded)",
    "installer": "on the host: uv, pip (venv + pip) or auto (uv when installed; config smoke.installer)",
    "python": "on the host: the interpreter of the fresh environments (default: the one running forkdev)",
    "no_index": "install dependencies only from the wheels' own directory (offline; config smoke.no_index)",
    "index": "let the installer fetch dependencies from the package index, whatever config smoke.no_index says",
}


@task(help=HELP, iterable=["wheel"])
def smoke(
    c,
    image=None,
    wheel=None,
    commit=None,
    target=None,
    installer=None,
    python=None,
    index=False,
    no_index=False,
    dry_run=False,
    json=False,
    quiet=False,
):
    """Install each wheel in a fresh environment and smoke it (on the host, or inside --image)."""
    from .core import container as ctr
    from .core import owners

    run = runner(c, dry_run, quiet)
    settings = config.load(c, target)
    cfg = settings.smoke
    wheels = _wheels(wheel, settings.wheel.out)
    profile = settings.target if target else None
    if commit is not None:
        validate.git_ref(commit, "--commit")
    chosen = str(installer or cfg.installer)
    if chosen not in ("auto", "uv", "pip"):
        raise Failure(f"--installer '{chosen}' is not auto, uv or pip; pass one of them")
    online = toggle("index", index, no_index, not cfg.no_index)
    if image and index:
        raise Failure("--index with --image: the smoke container has no network; drop --index, or smoke on the host")
    engine = settings.engine(run) if image else None
    cache = settings.cache_dir(run)
    if image:
        validate.image_ref(image, "IMAGE")
        if engine.inspect_image(run, image) is None:
            raise Failure(f"no image '{image}' here; build or pull it first (the wheel image: 'invoke wheel.image')")
        owners.sweep(engine, run, cache)  # what a smoke killed with -9 left running
    results = []
    for path in wheels:
        expected = _vouched(path, commit)
        argv_extra = _probe_args(profile, expected, not online or bool(image))
        log = store.log(cache, "smoke", path.name)
        with scratch("smoke") as tmp, ui.log_to(None if run.dry_run else log), ui.step(f"smoke {path.name}"):
            report = tmp / "report"
            report.mkdir()
            if image:
                own = owners.claim(cache, engine, run)  # a later smoke removes it once we are gone
                name, labels = own.container("wheel-smoke")
                report.chmod(0o777)  # the image's own user writes the report
                argv = _in_image(engine, image, path, report, argv_extra, name, labels)
            else:
                argv = _on_host(run, chosen, python or cfg.python or sys.executable, path, report, argv_extra)
            # Shielded: in a session of its own, so a timeout or a Ctrl-C stops the installer with its children.
            smoke_run = dataclasses.replace(run, shielded=True)
            # Stopping the client leaves its container running (python3 as PID 1 ignores SIGTERM): the lifecycle
            # removes it on every path.
            with ctr.running(run, engine, own, name) if image else contextlib.nullcontext() as box:
                res = smoke_run(argv, stream=True, check=False, timeout=cfg.timeout)
                if box is not None:
                    box.ended(res.returncode)
            found = _report(report / "results.jsonl")
        if run.dry_run:
            results.append({"wheel": str(path), "ok": None, "dry_run": True})
            continue
        if found is None:
            found = {"wheel": str(path), "ok": False, "problem": f"{path.name}: the smoke probe stopped: {res.reason}"}
        found.update(wheel=str(path), log=str(log), build_log=expected.get("log"))
        if found.get("pure_with_native"):
            ui.warn(f"{path.name} is tagged pure yet carries native libraries; rebuild it with a platform tag")
        results.append(found)
    failed = [r for r in results if r.get("ok") is False]
    if json:
        ui.emit_json({"ok": not failed, "wheels": results, "image": image, "dry_run": run.dry_run})
    else:
        for r in results:
            if r.get("ok"):
                ui.result(r["wheel"])
    if failed:
        first = failed[0]
        logs = f"smoke log: {first['log']}" + (f"; build log: {first['build_log']}" if first.get("build_log") else "")
        more = f" ({len(failed)} of {len(results)} wheels failed)" if len(failed) > 1 else ""
        raise Failure(f"{first['problem']}{more}; fix the package and rebuild it with 'invoke wheel' ({logs})")
    if not run.dry_run:
        seconds = ", ".join(
            f"{Path(r['wheel']).name} {r.get('seconds', 0):.2f}s ({r.get('installer')})" for r in results
        )
        ui.ok(f"smoke passed: {seconds}")


def _wheels(given: list[str] | None, out: str) -> list[Path]:
    if given:
        paths = [Path(os.path.expanduser(validate.plain(w, "--wheel"))).resolve() for w in given]
        for p in paths:
            if not p.is_file() or p.suffix != ".whl":
                raise Failure(f"--wheel '{p}' is not a .whl file; pass a wheel built by 'invoke wheel'")
        return paths
    folder = Path(os.path.expanduser(out)).resolve()
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not found:
        raise Failure(f"no wheels in {folder}; build one with 'invoke wheel PATH', or pass --wheel FILE")
    return found


def _vouched(path: Path, commit: str | None) -> dict[str, Any]:
    """Check the wheel against SHA256SUMS and its provenance when they are beside it; returns what the smoke
    expects (commit, build log)."""
    from .core import attest, wheelfile

    wheel = wheelfile.read(path)  # a file that is not a wheel stops here, before any environment is made
    digest = wheelfile.sha256(path)
    sums = path.parent / attest.SUMS
    if sums.is_file():
        try:
            listed = attest.parse_sums(sums.read_text()).get(path.name)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise Failure(f"{sums} is not a readable SHA256SUMS ({exc}); rebuild with 'invoke wheel'") from None
        if listed is not None and listed != digest:
            raise Failure(f"{path.name} does not match its line in {sums}: it changed after the build; rebuild it")
    expected: dict[str, Any] = {"commit": commit, "distribution": wheel.name}
    statement = path.parent / attest.provenance_name(path.name)
    if statement.is_file():
        try:
            data = jsonlib.loads(statement.read_text())
            subject = data["subject"][0]["digest"]["sha256"]
            source = data["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"]
            byproducts = data["predicate"]["runDetails"].get("byproducts") or []
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise Failure(
                f"{statement} is not a provenance statement forkdev wrote ({exc}); rebuild the wheel"
            ) from None
        if subject != digest:
            raise Failure(f"{path.name} is not the wheel {statement.name} describes (sha256 differs); rebuild it")
        expected["commit"] = commit or source
        logs = [b["uri"].removeprefix("file://") for b in byproducts if b.get("name") == "build-log"]
        expected["log"] = logs[0] if logs else None
    return expected


def _probe_args(profile: config.Target | None, expected: dict[str, Any], no_index: bool) -> list[str]:
    args = ["--no-index"] if no_index else []
    if profile is not None:
        # --target's command and import name are for the profile's own distribution; another wheel is smoked with
        # its own import names and no command.
        ours = config.owns(profile, expected["distribution"])
        args += ["--smoke", profile.smoke if ours else ""]
        if ours and profile.package:
            args += ["--package", profile.package]
    if expected.get("commit"):
        args += ["--commit", str(expected["commit"])]
    return args


def _on_host(run: Runner, installer: str, python: str, wheel: Path, report: Path, extra: list[str]) -> list[str]:
    from .core import assets

    uv = shutil.which("uv") if installer in ("auto", "uv") else None
    if installer == "uv" and not uv:
        raise Failure("--installer uv, and uv is not installed; pip install uv, or pass --installer pip")
    how = ["--installer", "uv", "--uv", uv] if uv else ["--installer", "pip"]
    probe = str(assets.probe_path())
    return [python, probe, "run", *how, *extra, "--report", str(report / "results.jsonl"), str(wheel)]


def _in_image(engine, image: str, wheel: Path, report: Path, extra: list[str], name: str, labels) -> list[str]:
    from .core import assets, builder
    from .core import container as ctr

    argv = engine.cmd("run", "--rm", "--name", name)
    argv += ctr.label_args(labels)
    argv += ["--network", "none", "--entrypoint", "python3"]
    argv += builder.mount(engine, wheel, f"/wheels/{wheel.name}", read_only=True)
    argv += builder.mount(engine, assets.probe_path(), "/forkdev/smoke_probe.py", read_only=True)
    argv += builder.mount(engine, report, "/report")
    probe = ["/forkdev/smoke_probe.py", "run", "--installer", "pip", "--system-site-packages", *extra]
    return [*argv, "--", image, *probe, "--report", "/report/results.jsonl", f"/wheels/{wheel.name}"]


def _report(path: Path) -> dict[str, Any] | None:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return jsonlib.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
