"""invoke batch DATASET: an image per commit, one compile per native state.

The commits of a dataset are grouped by native state (nightly's hash: the target's native paths, the Dockerfile,
its stage, the build args). Each group gets ONE full build of its first commit (its Dockerfile: the row's own text,
else the commit's); every commit of the group, the first included, is then that build plus one thin layer (the
`invoke dev` writer: files changed, added and deleted between the two commits, and the proof file), tagged
`<repository>:<full sha>`. The plan is printed first and is all that --dry-run does; a re-run reuses what exists.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import asdict
from pathlib import Path

from .core import config, ui, validate
from .core.errors import Failure
from .core.tasking import runner, task, toggle

# The machinery (core.batching, the dataset reader, full builds, the registry) is imported when the task runs:
# see cli.py.


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
        "precompiled": "vLLM: full builds use the upstream's precompiled kernels (VLLM_USE_PRECOMPILED=1)",
        "no_precompiled": "compile the kernels, whatever config nightly.precompiled says",
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
    precompiled=False,
    no_precompiled=False,
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
    from .core import dataset as datasets
    from .core import state as statefile
    from .core.batching import Item, Job, build_group, describe, emit_plan, plan, table
    from .core.gitrepo import mirror
    from .core.registry import Registry
    from .core.scratch import sweep
    from .nightly import build_args

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
    prebuilt = toggle("precompiled", precompiled, no_precompiled, c.config.nightly.precompiled)
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
    shaping, parallel = build_args(profile, c.config.nightly, prebuilt)
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
