"""What `invoke batch` does once its flags are values: plan the dataset's commits by native state, then build
each group (one full build, then a thin layer per commit), reporting each commit as it ends. forkdev/batch.py
holds the task."""

from __future__ import annotations

import concurrent.futures
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import bakefile, config, fullbuild, native, secrets, ui
from . import base as bases
from . import dataset as datasets
from . import labels as L
from .engine import Engine
from .errors import Failure
from .gitrepo import Repo
from .proc import Runner
from .registry import Ref, Registry
from .ship import Request, publish, ship


@dataclass
class Item:
    commit: str
    where: str  # the first dataset line naming it
    dockerfile: str | None
    state: str = ""
    role: str = "thin"  # "full": the commit the group's compile is made of
    status: str = "planned"  # built, reused, pushed-already, failed
    image: str = ""
    seconds: float = 0.0
    log: str = ""
    fixes: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class Group:
    state: str
    items: list[Item]

    @property
    def full(self) -> Item:
        return self.items[0]


def resolve(repo: Repo, rows: list[datasets.Row], url: str) -> list[Item]:
    """The dataset's commits, resolved in the upstream (all unknown ones reported at once, with their lines)."""
    items: dict[str, Item] = {}
    unknown = []
    for row in rows:
        sha = repo.rev(f"{row.commit}^{{commit}}")
        if sha is None:
            unknown.append(f"{row.where}: unknown commit '{row.commit}'")
            continue
        known = items.get(sha)
        if known is None:
            items[sha] = Item(sha, row.where, row.dockerfile)
        elif row.dockerfile != known.dockerfile and row.dockerfile is not None:
            raise Failure(f"{row.where}: commit {sha[:12]} comes with another Dockerfile than at {known.where}")
    if unknown:
        for line in unknown[:50]:
            ui.warn(line)
        raise Failure(f"{unknown[0]} in upstream {url} (and {len(unknown) - 1} more above); fix or remove those rows")
    return list(items.values())


def ask_registry(registry: Registry, repository: str, items: list[Item]) -> None:
    """--skip-pushed, before anything is planned or compiled: each commit whose image the registry has is
    settled as pushed-already; one the registry cannot answer for fails (never taken as absent)."""

    def ask(item: Item) -> None:
        item.image = f"{repository}:{item.commit}"
        ref = Ref.parse(item.image)
        try:
            if registry.exists(ref.repository, ref.tag):
                item.status = "pushed-already"
        except Failure as exc:
            item.status, item.error = "failed", str(exc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=ASKED_AT_ONCE) as pool:
        list(pool.map(ask, items))


ASKED_AT_ONCE = 8  # registry questions in flight (one HEAD per commit)


def plan(repo: Repo, items: list[Item], target: config.Target, shaping: dict[str, str]) -> list[Group]:
    """The commits still to build, grouped by native state; every commit gets its state (a settled one too, so a
    matrix job's --state names it)."""
    groups: dict[str, Group] = {}
    for item in items:
        item.state = native.native_hash(repo, item.commit, target, shaping, item.dockerfile or "")
        if item.status == "planned":
            groups.setdefault(item.state, Group(item.state, [])).items.append(item)
    for group in groups.values():
        group.full.role = "full"
    return list(groups.values())


def describe(groups: list[Group], skipped: list[str], settled: list[Item]) -> None:
    total = sum(len(g.items) for g in groups)
    pushed = sum(i.status == "pushed-already" for i in settled)
    unanswered = sum(i.status == "failed" for i in settled)
    ui.info(
        f"plan: {total} commits in {len(groups)} native states: {len(groups)} full builds, {total - len(groups)} "
        f"thin layers"
        + (f"; {pushed} pushed already" if pushed else "")
        + (f"; {unanswered} the registry could not answer for" if unanswered else "")
        + (f"; {len(skipped)} blacklisted" if skipped else "")
    )
    for g in groups:
        ui.info(f"  state {g.state[:12]}: full build of {g.full.commit[:12]}, then {len(g.items)} thin layers")


def emit_plan(kind: str, groups: list[Group], job: Emit) -> Any:
    """What another engine runs instead: a GitHub Actions matrix (a job per native state) or a bake file."""
    if kind == "github-matrix":
        return {"include": [{"state": g.state[:12], "full": g.full.commit, "commits": len(g.items)} for g in groups]}
    if kind == "bake":
        targets = {}
        for g in groups:
            args = {**job.shaping, job.target.version_env: fullbuild.version_of(job.repo, g.full.commit)}
            again = shlex.join([*job.again, "--state", g.state[:12]])
            targets[f"native-{g.state[:12]}"] = bakefile.target(
                url=job.upstream, commit=g.full.commit, state=g.state, dockerfile=g.full.dockerfile,
                path=job.target.dockerfile, stage=job.target.stage, args=args,
                tag=f"{job.repository}:native-{g.state[:12]}",
                network=job.network if g.full.dockerfile is not None else job.engine_network,
                commits=[i.commit for i in g.items], thin=f"'{again}'",
            )  # fmt: skip
        return {
            "//": "invoke batch --emit bake: one target a native state (its compile); see each target's comment "
            "for the commits it serves and how their thin layers are made",
            "group": {"default": {"targets": sorted(targets)}},
            "target": targets,
        }
    raise Failure(f"--emit '{kind}' is not known; use github-matrix or bake")


@dataclass(frozen=True)
class Emit:
    """What an emitted plan names besides the groups."""

    repo: Repo
    upstream: str
    target: config.Target
    repository: str
    shaping: dict[str, str]
    network: str  # of a row's own Dockerfile
    engine_network: str  # of the upstream's (engine.network, as nightly and batch build it)
    again: list[str]  # the batch command line that builds the thin layers (--state is added)


@dataclass(frozen=True)
class Job:
    engine: Engine
    run: Runner
    repo: Repo
    target: config.Target
    repository: str
    shaping: dict[str, str]
    parallel: dict[str, str]
    cache: Path
    logs: Path
    registry: Registry | None  # for --push
    push: bool
    network: str  # of the builds of a dataset row's own Dockerfile (none unless --network)
    source: str
    upstream: str
    policy: Any
    hidden: secrets.Paths = secrets.DEFAULT  # secret paths: never in a context or a layer
    secret_values: tuple[secrets.Known, ...] = ()  # config's secret values (container.env): scanned for in layers


def build_group(job: Job, group: Group, report) -> None:
    """The group's one compile, then every commit as a thin layer on it; a failure stays with its commits."""
    native_tag = f"{job.repository}:native-{group.state[:12]}"
    full = group.full
    try:
        why = bases.why_compile(
            job.engine, job.run, job.repo, native_tag, group.state, full.commit, job.upstream, job.target
        )
        if why:
            ui.info(f"full build of {full.commit[:12]}: {why}")
            with ui.log_to(job.logs / f"{full.commit}.log", console=False):
                spec = fullbuild.Spec(
                    commit=full.commit,
                    tag=native_tag,
                    labels={L.REVISION: full.commit, L.NATIVE_HASH: group.state, L.BUILD: "full"},
                    build_args={**job.shaping, **job.parallel},
                    version=fullbuild.version_of(job.repo, full.commit),
                    dockerfile_text=full.dockerfile,
                    hidden=job.hidden,
                    network=job.network if full.dockerfile is not None else None,
                )
                full.fixes = fullbuild.build(job.engine, job.run, job.repo, job.target, spec).fixes
    except (Failure, OSError) as exc:  # one group's failure (a full disk included) stays with its commits
        for item in group.items:
            item.status, item.error = "failed", f"the full build of its native state failed: {exc}"
            item.log = str(job.logs / f"{full.commit}.log")
            report(item)
        return
    for item in group.items:
        build_item(job, item, native_tag)
        report(item)


def build_all(job: Job, settled: list[Item], groups: list[Group], workers: int) -> tuple[list[Item], dict[str, Any]]:
    """Every group built, `workers` native states at once, each commit reported as it ends (the settled ones
    first: pushed already, or failed to be asked about); (every commit, the results as the results file holds
    them)."""
    items = [*settled, *(i for g in groups for i in g.items)]
    done: list[Item] = []

    def report(item: Item) -> None:
        done.append(item)
        line = f"[{len(done):>{len(str(len(items)))}}/{len(items)}] {item.commit[:12]} {item.role:<4} {item.status}"
        line += f" {item.seconds:.1f}s" if item.seconds else ""
        (ui.warn if item.status == "failed" else ui.info)(
            line + (f": {item.error} (log: {item.log})" if item.error else "")
        )

    for item in settled:
        report(item)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(build_group, job, g, report) for g in groups]:
            future.result()
    return items, {
        "commits": [asdict(i) for i in items],
        "repository": job.repository,
        "upstream": job.upstream,
        "full_builds": len(groups),
        "thin": len(items) - len(settled) - len(groups),
        "failed": sum(i.status == "failed" for i in items),
    }


def build_item(job: Job, item: Item, native_tag: str) -> None:
    start = time.monotonic()
    item.image = f"{job.repository}:{item.commit}"
    item.log = str(job.logs / f"{item.commit}.log")
    try:
        with ui.log_to(Path(item.log), console=False):
            result = ship(
                job.engine,
                job.run,
                Request.layer_on(
                    native_tag,
                    repo=job.repo,
                    commit=item.commit,
                    target=job.target,
                    image=item.image,
                    repository=job.repository,
                    upstream=job.upstream,
                    source=job.source or None,
                    cache=job.cache,
                    registry=job.policy,
                    labels={L.NATIVE_HASH: item.state, L.BUILD: item.role},
                    secret_paths=job.hidden,
                    secret_values=job.secret_values,
                ),
            )
            item.status = "reused" if result["reused"] else "built"
            if job.push and job.registry is not None:
                publish(job.engine, job.run, job.registry, [item.image])
    except (Failure, OSError) as exc:
        item.status, item.error = "failed", str(exc)
    finally:
        item.seconds = time.monotonic() - start


def table(items: list[Item]) -> None:
    """The summary: one row a commit (a rich table on a TTY, plain lines otherwise), then the counts."""
    ui.table(
        ["commit", "role", "status", "seconds", "image"],
        [[i.commit[:12], i.role, i.status, f"{i.seconds:.1f}", i.image] for i in items],
    )
    counts: dict[str, int] = {}
    for i in items:
        counts[i.status] = counts.get(i.status, 0) + 1
    ui.info("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
