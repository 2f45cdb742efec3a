"""A full build of one upstream commit with its own Dockerfile: the exact commit exported as a clean context
(`git archive`, no .git), the version passed in rather than guessed, BuildKit where the Dockerfile needs it.

`invoke nightly` and `invoke batch` call `build`; everything here takes values, not the invoke context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import fixes, ui
from .config import Target
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner
from .scratch import scratch

STAGE = re.compile(r"^\s*FROM\s+\S+(?:\s+--\S+)*\s+AS\s+(\S+)\s*$", re.I | re.M)
NEEDS_BUILDKIT = re.compile(r"^\s*(RUN|COPY|ADD)\s+.*--mount=|^#\s*syntax=", re.I | re.M)


@dataclass(frozen=True)
class Spec:
    commit: str
    tag: str
    labels: Mapping[str, str]
    build_args: Mapping[str, str]
    version: str  # the commit's version, for the fixes that pass it in (see fixes.py)
    dockerfile_text: str | None = None  # a Dockerfile of its own (a batch row's); None: the commit's


@dataclass(frozen=True)
class Built:
    image_id: str
    fixes: list[str]  # what the fixes registry did to the context, one line each


def version_of(repo: Repo, commit: str) -> str:
    """A PEP 440 version for `commit` from the nearest tag (v0.11.0-12-gabc -> 0.11.0.dev12+gabc), so a build
    without .git does not have to guess it (setuptools-scm reads it from SETUPTOOLS_SCM_PRETEND_VERSION)."""
    res = repo.git("describe", "--tags", "--long", "--match", "v[0-9]*", "--end-of-options", commit, check=False)
    m = re.match(r"^v?(\d+(?:\.\d+)*)(?:[.-]?(?:rc|a|b)\d+)?-(\d+)-g([0-9a-f]+)$", res.out) if res.ok else None
    if not m:
        return f"0.0.0+g{commit[:12]}"
    base, distance, sha = m.groups()
    return base if distance == "0" else f"{base}.dev{distance}+g{sha}"


def stages(text: str) -> list[str]:
    return [m.lower() for m in STAGE.findall(text)]


def build(engine: Engine, run: Runner, repo: Repo, target: Target, spec: Spec, log: Path | None = None) -> Built:
    """Build `spec.commit` with the target's Dockerfile and stage, after the fixes that match its context; tag
    it. The build's own output streams to stderr (and to `log`). Nothing is tagged when it fails."""
    with scratch("context") as ctx, scratch("dockerfile") as own:
        archive = repo.git("archive", "--format=tar", "--end-of-options", spec.commit)
        run(["tar", "-x", "-C", str(ctx), "-f", "-"], input=archive.stdout, mutates=False)
        dockerfile = ctx / target.dockerfile
        if spec.dockerfile_text is not None:  # outside the context, which COPY . would otherwise pick up
            dockerfile = own / "Dockerfile"
            dockerfile.write_text(spec.dockerfile_text)
        try:
            text = dockerfile.read_text()
        except (OSError, UnicodeDecodeError):
            raise Failure(
                f"no readable {target.dockerfile} at commit {spec.commit[:12]}; set targets.{target.name}.dockerfile "
                "to the Dockerfile's path in the upstream repository"
            ) from None
        if target.stage and target.stage.lower() not in stages(text):
            raise Failure(
                f"{target.dockerfile} at {spec.commit[:12]} has no stage '{target.stage}' (it has: "
                f"{', '.join(stages(text)) or 'none'}); set targets.{target.name}.stage"
            )
        args = dict(spec.build_args)
        context = fixes.Context(ctx, text, spec.commit, spec.version, target.version_env, run)
        applied = fixes.apply(context, args)
        for note in applied:
            ui.info(f"fix {note}")
        buildkit = bool(NEEDS_BUILDKIT.search(text))
        if buildkit and not engine.buildkit(run):
            raise Failure(
                f"{target.dockerfile} needs BuildKit (RUN --mount), and '{engine.exe}' ({engine.client(run)}) has "
                "no buildx plugin; install buildx, set engine.client to a docker client with BuildKit built in "
                "(20.10: /usr/bin/docker from Debian's docker.io), or use podman (engine.name=podman)"
            )
        argv = engine.cmd("build", "--file", str(dockerfile), "--network", engine.network, "--tag", spec.tag)
        if target.stage:
            argv += ["--target", target.stage]
        for key, value in sorted(args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in sorted(spec.labels.items()):
            argv += ["--label", f"{key}={value}"]
        res = run([*argv, "--", str(ctx)], env=engine.build_env(run, buildkit=buildkit), stream=True, check=False)
        if not res.ok:
            raise Failure(
                f"the build of {spec.commit[:12]} failed (exit {res.returncode}); its log is above"
                + (f" and in {log}" if log else "")
                + ": fix the Dockerfile or the commit, or build another commit"
            )
    if run.dry_run:
        return Built("", applied)
    ui.info(f"built {spec.tag}")
    info = engine.inspect_image(run, spec.tag)
    return Built(Engine.image_id(info) if info else "", applied)
