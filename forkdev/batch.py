"""invoke batch DATASET: an image per commit, one compile per native state.

The commits of a dataset are grouped by native state (nightly's hash: the target's native paths, the Dockerfile,
its stage, the build args). Each group gets ONE full build of its first commit (its Dockerfile: the row's own text,
else the commit's); every commit of the group, the first included, is then that build plus one thin layer (the
`invoke dev` writer: files changed, added and deleted between the two commits, and the proof file), tagged
`<repository>:<full sha>`. The plan is printed first and is all that --dry-run does; a re-run reuses what exists.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core import base as bases
from .core import config, fullbuild, native, ui, validate
from .core import dataset as datasets
from .core import labels as L
from .core import state as statefile
from .core.engine import Engine
from .core.errors import Failure
from .core.gitrepo import Repo, mirror
from .core.proc import Runner
from .core.registry import Ref, Registry
from .core.scratch import sweep
from .core.ship import Request, ship
from .core.tasking import runner, task, toggle
from .nightly import build_args


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


def plan(repo: Repo, rows: list[datasets.Row], url: str, target: config.Target, shaping: dict[str, str]) -> list[Group]:
    """Commits resolved (all unknown ones reported at once, with their lines), then grouped by native state."""
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
    groups: dict[str, Group] = {}
    for item in items.values():
        item.state = native.native_hash(repo, item.commit, target, shaping, item.dockerfile or "")
        groups.setdefault(item.state, Group(item.state, [])).items.append(item)
    for group in groups.values():
        group.full.role = "full"
    return list(groups.values())


def describe(groups: list[Group], skipped: list[str]) -> None:
    total = sum(len(g.items) for g in groups)
    ui.info(
        f"plan: {total} commits in {len(groups)} native states: {len(groups)} full builds, {total - len(groups)} "
        f"thin layers" + (f"; {len(skipped)} blacklisted" if skipped else "")
    )
    for g in groups:
        ui.info(f"  state {g.state[:12]}: full build of {g.full.commit[:12]}, then {len(g.items)} thin layers")


def emit_plan(kind: str, groups: list[Group], url: str, target: config.Target, repository: str, shaping: dict) -> Any:
    """What another engine runs instead: a GitHub Actions matrix (a job per native state) or a bake file."""
    if kind == "github-matrix":
        return {"include": [{"state": g.state[:12], "full": g.full.commit, "commits": len(g.items)} for g in groups]}
    if kind == "bake":
        targets = {}
        for g in groups:
            entry: dict[str, Any] = {
                "context": f"{url}#{g.full.commit}",
                "args": dict(shaping),
                "tags": [f"{repository}:native-{g.state[:12]}"],
                "labels": {L.REVISION: g.full.commit, L.NATIVE_HASH: g.state},
            }
            if g.full.dockerfile:
                entry["dockerfile-inline"] = g.full.dockerfile
            else:
                entry["dockerfile"] = target.dockerfile
            if target.stage:
                entry["target"] = target.stage
            targets[f"native-{g.state[:12]}"] = entry
        return {"group": {"default": {"targets": sorted(targets)}}, "target": targets}
    raise Failure(f"--emit '{kind}' is not known; use github-matrix or bake")


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
    registry: Registry | None  # for --skip-pushed and --push
    push: bool
    skip_pushed: bool
    source: str
    upstream: str
    policy: Any


def build_group(job: Job, group: Group, report) -> None:
    """The group's one compile, then every commit as a thin layer on it; a failure stays with its commits."""
    native_tag = f"{job.repository}:native-{group.state[:12]}"
    full = group.full
    try:
        why = _why_full(job, native_tag, group.state)
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


def _why_full(job: Job, native_tag: str, state: str) -> str:
    """Why the native state must be compiled, or "" when its image from an earlier run serves: the same native
    hash, built from a commit this upstream has (its thin layers are diffs from that commit)."""
    existing = job.engine.inspect_image(job.run, native_tag)
    if existing is None:
        return "no image of its native state yet"
    if Engine.labels(existing).get(L.NATIVE_HASH) != state:
        return f"{native_tag} is of another native state"
    built_from = bases.revision_of(existing)
    if not built_from:
        return f"{native_tag} has no revision label"
    if not job.repo.has_commit(built_from):
        return f"{native_tag} was built from {built_from[:12]}, which {job.upstream} lacks"
    return ""


def build_item(job: Job, item: Item, native_tag: str) -> None:
    start = time.monotonic()
    item.image = f"{job.repository}:{item.commit}"
    item.log = str(job.logs / f"{item.commit}.log")
    try:
        with ui.log_to(Path(item.log), console=False):
            if job.skip_pushed and job.registry is not None:
                ref = Ref.parse(item.image)
                if job.registry.exists(ref.repository, ref.tag):
                    item.status = "pushed-already"
                    return
            result = ship(
                job.engine,
                job.run,
                Request(
                    repo=job.repo,
                    ref=item.commit,
                    target=job.target,
                    source=job.source or None,
                    upstream=job.upstream,
                    bases=(native_tag,),
                    explicit_base=True,
                    repository=job.repository,
                    tags=(),
                    push=False,
                    force=False,
                    cache=job.cache,
                    registry=job.policy,
                    primary=item.image,
                    labels={L.NATIVE_HASH: item.state, L.BUILD: item.role},
                ),
            )
            item.status = "reused" if result["reused"] else "built"
            if job.push and job.registry is not None:
                job.registry.check()
                job.engine.push(job.run, item.image, timeout=job.policy.timeout)
    except (Failure, OSError) as exc:
        item.status, item.error = "failed", str(exc)
    finally:
        item.seconds = time.monotonic() - start


@task(
    positional=["dataset"],
    help={
        "dataset": "JSONL of commits (commit_hash|commit, parent_commit, dockerfile_content) or a list of SHAs",
        "upstream": "upstream URL or path (default: config upstream.url, else the target's)",
        "blacklist": "a file of SHAs never to build (one a line, # comments)",
        "jobs": "how many native states to build at once (default: config batch.jobs)",
        "skip_pushed": "skip commits whose image is already in the registry (any registry error fails that commit)",
        "push": "push every image to --repository (it must name a registry)",
        "no_push": "do not push, whatever config batch.push says",
        "repository": "where images go, tagged with their full sha (default: config batch.repository)",
        "state": "build only the native state with this hash prefix (a matrix job)",
        "emit": "print github-matrix (a job per native state) or bake (a docker buildx bake file) and build nothing",
        "results": "where to write the results file (default: <cache>/batch/results.json)",
        "target": "target profile (default: config target)",
    },
)
def batch(
    c,
    dataset,
    upstream=None,
    blacklist=None,
    jobs=None,
    skip_pushed=False,
    push=False,
    no_push=False,
    repository=None,
    state=None,
    emit=None,
    results=None,
    target=None,
    dry_run=False,
    json=False,
    quiet=False,
):
    """Per-commit images from a dataset of commits, one compile per native state; a re-run resumes."""
    run = runner(c, dry_run, quiet)
    if not run.dry_run:
        sweep()  # what a killed run left in $TMPDIR (its build context), even if this one builds thin
    cfg = c.config.batch
    profile = config.of(c, target)
    path = Path(validate.plain(dataset, "DATASET")).expanduser()
    rows = datasets.parse(datasets.read_text(path, "dataset"), str(path))
    denied: set[str] = set()
    if blacklist:
        listed = Path(validate.plain(blacklist, "--blacklist")).expanduser()
        denied = datasets.blacklist(datasets.read_text(listed, "blacklist"), str(listed))
    skipped = [r.commit for r in rows if datasets.blacklisted(r.commit, denied)]
    rows = [r for r in rows if not datasets.blacklisted(r.commit, denied)]
    if not rows:
        raise Failure(f"no commit to build in '{path}'" + (" after the blacklist" if skipped else "") + "; add rows")
    repo_name = config.image_repository(repository or cfg.repository, profile, "--repository")
    pushing = toggle("push", push, no_push, cfg.push)
    if (pushing or skip_pushed) and not validate.registry_host(repo_name):
        raise Failure(
            f"--push/--skip-pushed: repository '{repo_name}' names no registry; pass --repository REGISTRY/NAME"
        )
    try:
        workers = int(jobs if jobs is not None else cfg.jobs)
    except (TypeError, ValueError):
        raise Failure(f"--jobs '{jobs}' is not a number; pass how many native states to build at once") from None
    if not 1 <= workers <= 64:
        raise Failure(f"--jobs {workers}: pass a number from 1 to 64")

    url = validate.source(upstream or c.config.upstream.url or profile.upstream, "--upstream")
    cache = config.cache_dir(c)
    with ui.step(f"mirror {url}"):
        repo = mirror(config.cache_path(cache, "mirrors", url), url, run)
    shaping, parallel = build_args(profile, c.config.nightly)
    groups = plan(repo, rows, url, profile, shaping)
    if state:
        groups = [g for g in groups if g.state.startswith(validate.plain(state, "--state").lower())]
        if not groups:
            raise Failure(f"--state '{state}' matches no native state of this dataset; see the plan (--dry-run)")
    describe(groups, skipped)
    if emit:
        ui.emit_json(emit_plan(emit, groups, url, profile, repo_name, shaping))
        return
    if run.dry_run:
        if json:
            ui.emit_json({"groups": [[asdict(i) for i in g.items] for g in groups], "dry_run": True})
        return

    engine = config.engine(c, run)
    policy = config.registry_policy(c)
    host = validate.registry_host(repo_name)
    job = Job(
        engine=engine,
        run=run,
        repo=repo,
        target=profile,
        repository=repo_name,
        shaping=shaping,
        parallel=parallel,
        cache=cache,
        logs=cache / "batch" / "logs",
        registry=Registry(host, policy, run) if host and (pushing or skip_pushed) else None,
        push=pushing,
        skip_pushed=skip_pushed,
        source=url if "://" in url else "",
        upstream=url,
        policy=policy,
    )
    items = [i for g in groups for i in g.items]
    done = []

    def report(item: Item) -> None:
        done.append(item)
        line = f"[{len(done):>{len(str(len(items)))}}/{len(items)}] {item.commit[:12]} {item.role:<4} {item.status}"
        line += f" {item.seconds:.1f}s" if item.seconds else ""
        (ui.warn if item.status == "failed" else ui.info)(
            line + (f": {item.error} (log: {item.log})" if item.error else "")
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(build_group, job, g, report) for g in groups]:
            future.result()
    out = Path(results).expanduser() if results else cache / "batch" / "results.json"
    summary = {
        "commits": [asdict(i) for i in items],
        "repository": repo_name,
        "upstream": url,
        "full_builds": len(groups),
        "thin": len(items) - len(groups),
        "failed": sum(i.status == "failed" for i in items),
    }
    statefile.write(out, summary)
    table(items)
    if json:
        ui.emit_json(summary | {"results": str(out)})
    else:
        ui.result(str(out))
    if summary["failed"]:
        raise Failure(
            f"{summary['failed']} of {len(items)} commits failed (see above and their logs); re-run to resume"
        )


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
