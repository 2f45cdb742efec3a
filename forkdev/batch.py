"""invoke batch DATASET: an image per commit, one compile per native state.

The commits of a dataset are grouped by native state (nightly's hash: the target's native paths, the Dockerfile,
its stage, the build args). Each group gets ONE full build of its first commit (its Dockerfile: the row's own text,
else the commit's); every commit of the group, the first included, is then that build plus one thin layer (the
`invoke dev` writer: files changed, added and deleted between the two commits, and the proof file), tagged
`<repository>:<full sha>`. The plan is printed first and is all that --dry-run does; a re-run reuses what exists.
With --skip-pushed the registry is asked first, so a native state whose commits are all pushed is not compiled.
A row's own Dockerfile is the dataset's, not the upstream's: its RUN steps have no network unless --network host.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .core import cache as store
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
        "skip_pushed": "ask the registry first; build only commits whose image it lacks (an error fails that commit)",
        "network": "network of the RUN steps of a row's own Dockerfile: none (the default) or host",
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
    network=None,
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
    from .core import bakefile
    from .core import dataset as datasets
    from .core.batching import Emit, Job, ask_registry, build_all, describe, emit_plan, plan, resolve, table
    from .core.gitrepo import mirror
    from .core.native import build_args
    from .core.paths import output_file, stdout_apart
    from .core.registry import Registry
    from .core.scratch import sweep

    run = runner(c, dry_run, quiet)
    if not run.dry_run:
        sweep()  # what a killed run left in $TMPDIR (its build context), even if this one builds thin
    settings = config.load(c, target, upstream)
    profile = settings.target
    path = Path(validate.plain(dataset, "DATASET")).expanduser()
    rows = datasets.parse(datasets.read_text(path, "dataset"), str(path))
    denied: set[str] = set()
    if blacklist:
        listed = Path(validate.plain(blacklist, "--blacklist")).expanduser()
        denied = datasets.blacklist(datasets.read_text(listed, "blacklist"), str(listed))
    inputs = {"the dataset": path, **({"the blacklist": listed} if blacklist else {})}
    stdout_apart(inputs)  # `--emit bake >> DATASET`
    cache = settings.cache_dir(run)
    out = output_file(results or str(store.batch(cache, "results.json")), "--results", inputs)
    skipped = [r.commit for r in rows if datasets.blacklisted(r.commit, denied)]
    rows = [r for r in rows if not datasets.blacklisted(r.commit, denied)]
    if not rows:
        raise Failure(f"no commit to build in '{path}'" + (" after the blacklist" if skipped else "") + "; add rows")
    cfg = settings.batch
    repo_name = config.image_repository(repository, profile, "--repository") if repository else cfg.repository
    pushing = toggle("push", push, no_push, cfg.push)
    prebuilt = toggle("precompiled", precompiled, no_precompiled, settings.native.precompiled)
    if (pushing or skip_pushed) and not validate.registry_host(repo_name):
        raise Failure(
            f"--push/--skip-pushed: repository '{repo_name}' names no registry; pass --repository REGISTRY/NAME"
        )
    build_network = validate.plain(network or "none", "--network")
    if build_network not in ("none", "host"):
        raise Failure(f"--network '{build_network}': a dataset's Dockerfile builds with none (the default) or host")
    workers = config.batch_jobs(jobs, "--jobs") if jobs is not None else cfg.jobs

    url = settings.upstream
    if emit not in (None, "github-matrix", "bake"):
        raise Failure(f"--emit '{emit}' is not known; use github-matrix or bake")
    if emit == "bake":
        bakefile.context(url, "")  # before the mirror is fetched: can BuildKit fetch this upstream at all?
    with ui.step(f"mirror {url}"):
        repo = mirror(store.mirror(cache, url), url, run)
    native = settings.native  # full builds as nightly makes them: the same args, so the same native states
    shaping, parallel = build_args(profile, native.build_args, native.cuda_arch, prebuilt)
    policy = settings.registry
    host = validate.registry_host(repo_name)
    registry = Registry(host, policy, run) if host and (pushing or skip_pushed) else None
    commits = resolve(repo, rows, url)
    if skip_pushed and registry is not None:  # a read-only question, asked under --dry-run and --emit too
        with ui.step(f"ask {host} which of the {len(commits)} commits are pushed already"):
            ask_registry(registry, repo_name, commits)
    groups = plan(repo, commits, profile, shaping)
    if state:
        prefix = validate.plain(state, "--state").lower()
        commits = [i for i in commits if i.state.startswith(prefix)]
        groups = [g for g in groups if g.state.startswith(prefix)]
        if not commits:
            raise Failure(f"--state '{state}' matches no native state of this dataset; see the plan (--dry-run)")
    settled = [i for i in commits if i.status != "planned"]
    describe(groups, skipped, settled)
    if emit:
        unanswered = [i for i in settled if i.status == "failed"]
        if unanswered:  # a plan without them would leave them out of every job
            raise Failure(f"{len(unanswered)} commits could not be asked about: {unanswered[0].error}")
        again = ["invoke", "batch", str(path), "--upstream", url, "--repository", repo_name]
        again += ["--precompiled" if prebuilt else "--no-precompiled", "--target", profile.name]
        again += ["--blacklist", str(listed)] if blacklist else []
        again += ["--network", build_network] if build_network != "none" else []
        ui.emit_json(
            emit_plan(
                emit,
                groups,
                Emit(repo, url, profile, repo_name, shaping, build_network, settings.engine_network, again),
            )
        )
        return
    if run.dry_run:
        if json:
            plan_ = {"groups": [[asdict(i) for i in g.items] for g in groups], "settled": [asdict(i) for i in settled]}
            ui.emit_json(plan_ | {"dry_run": True})
        return

    engine = settings.engine(run)
    job = Job(
        engine=engine,
        run=run,
        repo=repo,
        target=profile,
        repository=repo_name,
        shaping=shaping,
        parallel=parallel,
        cache=cache,
        logs=store.batch(cache, "logs"),
        registry=registry,
        push=pushing,
        network=build_network,
        source=url if "://" in url else "",
        upstream=url,
        policy=policy,
        hidden=settings.secret_paths,
        secret_values=settings.secret_values,
    )
    items, summary = build_all(job, settled, groups, workers)
    store.write_json(out, summary)
    table(items)
    if json:
        ui.emit_json(summary | {"results": str(out)})
    else:
        ui.result(str(out))
    if summary["failed"]:
        raise Failure(
            f"{summary['failed']} of {len(items)} commits failed (see above and their logs); re-run to resume"
        )
