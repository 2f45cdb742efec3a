"""The layers the tasks share. A new verb is a new module beside this package; an engine, git or registry
subtlety goes in here, and so does a verb's own machinery when other tasks need not load it at their start
(cli.py says why). Module map:

Running things
    proc        the one process seam: echo, dry-run, timeouts, secrets kept out of the echo, TTY pass-through
    engine      docker / podman as a frozen value; every quirk commented where it is handled
    gitrepo     git, read-only, and the cached bare mirror of an upstream
    registry    the distribution API: tag exists, tags, delete, bounded retries, stored logins
    sync        fork-sync: validation, lock, fetch, the merge in objects, tracking ref, push
    carry       moving a checked-out branch with the user's work (staged/unstaged split), and settling an
                interrupted move (roll back or finish)
    journal     fork-sync's state on disk: lock, journal written before the first change, scratch

Images
    thin        the plan of a thin image: changed files, deletions, stale bytecode, new directories
    base        which base, its commit, where the package lives in it (asked once per image id), and whether
                an image's compile can be reused for a commit (why_compile)
    image       the writer: layer tar, config, one archive loaded by the engine; the builder as fallback
    ship        plan -> write -> tag, and the one publish step (registry asked first, then each push)
    fullbuild   a full build of an exported commit with its own Dockerfile
    native      the native state of a commit (what a compile depends on)
    nativebuild dev --native: the workspace synced, the incremental compile, its compiled files against the base's
    nightlybuild  invoke nightly's body: existing, thin or full; `nightly` only forward; prune's tag choice
    fixes       the registry of build-context fixes
    batching    batch's plan by native state and its per-group builds
    bakefile    batch's plan as a docker buildx bake file BuildKit accepts
    labels      every label and in-image path, named once

Wheels
    wheelbuild  invoke wheel's body: recipe, build environment, the build in the image or on the host, landing
    builder     the wheel build image (named by a hash of its recipe) and the container that builds in it
    source      the exact tree a build sees: the working tree as git knows it, copied to scratch
    wheelfile   a built wheel, read and stamped with its build record
    attest      SHA256SUMS, the CycloneDX SBOM and the in-toto provenance of a wheel
    outdir      --out: checked first, written last, whole files only
    assets      docker/ (the image's Dockerfile, entrypoint, smoke probe) in a checkout or the installed package

Containers
    container   a container's one lifecycle (running: removed on every path), its bind mounts (SELinux
                relabel), the run argv and the prologue that reads secrets and applies overlays
    launch      what run and shell need before a container starts, from the Settings and one Ask
    envfiles    secrets files and explicit variables
    secrets     the secret paths nothing ships, the secret values a layer is scanned for
    devcontainer  our entries merged into a devcontainer.json; secrets through a profile script, never inspect
    gpu         host GPU detection and engine arguments
    livesync    watching the checkout and syncing it into a running container
    owners      which live process owns a container (an flock it holds), so a sweep removes only a dead one's

Overlays and patches
    overlaying  overlay definitions parsed, and the overlay built in memory
    patching    the patch registry parsed, staged and applied all or nothing

The demo
    sandbox     material made from nothing: the vLLM-shaped tree (forkdev/data's manifest), a buildable upstream,
                a small cmake package, a Debian + Python image by debootstrap (the tests' fixtures use it too)
    demoing     invoke demo's directory, its sandbox of repositories, and the sweep of what a run left
    tour        invoke demo's steps: each the real task in a child process, its result checked, the table

Values and files
    config      target profiles, every default, and load(): the Settings value a task runs with, resolved and
                validated once (target, upstream, cache, engine, registry, image naming, secrets, container,
                and a section per task: dev, nightly, batch, wheel, overlay, patches, smoke, demo, cron, fork_sync)
    tasking     the task decorator, shared flags, --X/--no-X, the words after --
    validate    values before they reach a command line
    dataset     batch datasets and blacklists
    paths       path safety: paths that stay inside their directory, no write through a link, results written
                whole, an output is no input
    overlaydir  the overlay directory: marked, replaced whole, only ever one the tool made
    lock        exclusive runs (flock + pid)
    scratch     temp directories a later run removes when their run was killed
    cache       every place under the cache directory, and the one atomic, fsynced writer of its files
    ui          stderr lines (rich on a TTY), the result on stdout, progress, tables
    errors      Failure: one sentence with the remedy
"""
