"""invoke verify IMAGE: prove which commit is inside an image made by `invoke dev` or `invoke build`."""

from __future__ import annotations

import hashlib
import json as jsonlib
import os
from pathlib import Path

from .core import config, ui, validate
from .core import labels as L
from .core.base import COMPARED, image_config
from .core.engine import Engine
from .core.errors import Failure
from .core.gitrepo import Repo
from .core.proc import Runner
from .core.tasking import task

# Runs in the image with its own python3 (the entrypoint is overridden, so an ENTRYPOINT does not interfere).
_CHECK = """
import hashlib, json, os, sys
proof = json.load(open(sys.argv[1]))
files = {}
for f in proof["files"] + (proof.get("native") or {}).get("files", []):
    p = f["image_path"]
    if os.path.islink(p):
        files[p] = hashlib.sha256(os.readlink(p).encode()).hexdigest()
    elif os.path.isfile(p):
        files[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    else:
        files[p] = None
present = [p for p in proof["deleted"] if os.path.lexists(p)]
print(json.dumps({"proof": proof, "files": files, "present": present}))
"""


def check(engine: Engine, run: Runner, image: str, commit: str | None, repo: Repo | None) -> dict:
    info = engine.inspect_image(run, image)
    if info is None:
        raise Failure(f"no image '{image}'; build it with 'invoke dev' or 'invoke build', or pull it first")
    labels = engine.labels(info)
    found = engine.python(
        run,
        image,
        _CHECK,
        L.PROOF_PATH,
        failure=f"image '{image}' has no readable proof at {L.PROOF_PATH} ({{why}}); it was not made by "
        "'invoke dev' or 'invoke build'",
    )
    proof = found["proof"]
    problems = []
    revision = labels.get(L.REVISION)
    if revision != proof["commit"]:
        problems.append(f"label revision {revision} != proof commit {proof['commit']}")
    if commit and not proof["commit"].startswith(commit.lower()):
        problems.append(f"image holds commit {proof['commit'][:12]}, not {commit}")
    if labels.get(L.BASE_REVISION) != proof["base"]["revision"]:
        problems.append("label base revision differs from the proof's")
    for f in proof["files"]:
        if found["files"].get(f["image_path"]) != f["sha256"]:
            problems.append(f"{f['image_path']} differs from what was shipped")
    problems += [f"{p} should have been deleted" for p in found["present"]]
    native = proof.get("native")
    if native is not None:
        for f in native["files"]:
            if found["files"].get(f["image_path"]) != f["sha256"]:
                problems.append(f"{f['image_path']} differs from what the native build made")
        if labels.get(L.NATIVE_ENV, "") != native["env"]["id"]:
            problems.append(f"label build environment {labels.get(L.NATIVE_ENV)} != proof's {native['env']['id']}")
    problems += _against_base(engine, run, info, proof)
    if repo is not None:
        problems += _against_checkout(repo, proof) if proof["dirty"] else _against_commit(repo, proof)
    return {
        "image": image,
        "commit": proof["commit"],
        "dirty": proof["dirty"],
        "base": proof["base"],
        "files": len(proof["files"]),
        "deleted": len(proof["deleted"]),
        "native": native,
        "ok": not problems,
        "problems": problems,
    }


def _against_base(engine: Engine, run: Runner, info: dict, proof: dict) -> list[str]:
    """How the image runs (entrypoint, cmd, user, env, workdir) must be exactly the base's, key by key: [] and ""
    are values, not null. A key the engine leaves out is null (podman omits unset keys where docker says null or
    ""; each engine reports an image and its base the same way)."""
    base = engine.inspect_image(run, proof["base"]["id"])
    if base is None:
        return [f"base {proof['base']['id'][:19]} ({proof['base']['ref']}) is not here to compare with; pull it"]
    mine, theirs = image_config(info), image_config(base)
    return [
        f"{key} is {mine.get(key)!r}, the base's is {theirs.get(key)!r}"
        for key in COMPARED
        if mine.get(key) != theirs.get(key)
    ]


def _against_checkout(repo: Repo, proof: dict) -> list[str]:
    """A dirty image holds uncommitted work: its bytes must still be the checkout's files, and what it deleted
    must still be gone from the checkout."""
    problems = []
    deleted = proof.get("deleted_paths")
    if deleted is None and proof["deleted"]:
        problems.append(
            f"the proof does not name the checkout paths of its {len(proof['deleted'])} deletions (an older "
            "forkdev wrote it); make the image again with 'invoke dev' to check them"
        )
    for path in deleted or ():
        if os.path.lexists(repo.path / path):
            problems.append(f"{path} was deleted in the image but is in the checkout")
    for f in proof["files"]:
        path = repo.path / f["path"]
        try:
            data = os.readlink(path).encode("utf-8", "surrogateescape") if path.is_symlink() else path.read_bytes()
        except OSError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != f["sha256"]:
            problems.append(f"{f['path']} differs from the checkout's (it changed after the image was built)")
    return problems


def _against_commit(repo: Repo, proof: dict) -> list[str]:
    """The shipped bytes are those of the commit (only for a clean image: a dirty one holds uncommitted work)."""
    commit = proof["commit"]
    if not repo.has_commit(commit):
        return [f"commit {commit[:12]} is not in {repo.path}; fetch it to compare"]
    problems = []
    for f in proof["files"]:
        blob = repo.git("cat-file", "blob", f"{commit}:{f['path']}", check=False)
        if not blob.ok or hashlib.sha256(blob.stdout).hexdigest() != f["sha256"]:
            problems.append(f"{f['path']} is not as in commit {commit[:12]}")
    return problems


def from_results(path: str) -> list[tuple[str, str]]:
    """(image, commit) of every image a batch results file lists as built or reused."""
    try:
        data = jsonlib.loads(Path(path).expanduser().read_text())
        commits = data["commits"]
        return [(i["image"], i["commit"]) for i in commits if i["status"] in ("built", "reused") and i["image"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise Failure(f"'{path}' is not a results file of 'invoke batch'; pass the path it printed") from None


@task(
    help={
        "image": "the image to check (with --all: a results file of 'invoke batch')",
        "commit": "the commit it must hold (full or abbreviated sha)",
        "repo": "the checkout: compare the shipped bytes with its commit (or, for an image of uncommitted work, "
        "with its files)",
        "all": "IMAGE is the results file of 'invoke batch': check every image it lists against its commit",
    },
)
def verify(c, image, commit=None, repo=None, all=False, json=False, quiet=False):
    """Check that an image's labels, proof, files and run config agree with its commit and its base."""
    moved = config.moved_setting(c.config.run)  # as tasking.runner refuses it for every other task
    if moved:
        raise Failure(moved)
    run = Runner(dry_run=False, echo=not quiet)  # verify only reads
    if commit is not None:
        validate.git_ref(commit, "--commit")
    checkout = Repo.open(validate.plain(repo, "--repo"), run) if repo else None
    targets = from_results(validate.plain(image, "IMAGE")) if all else [(validate.image_ref(image, "IMAGE"), commit)]
    if not targets:
        raise Failure(f"'{image}' lists no built image; nothing to verify")
    engine = config.load(c).engine(run)
    results = [check(engine, run, ref, want, checkout) for ref, want in targets]
    if json:
        ui.emit_json(results[0] if not all else {"images": results, "ok": all_ok(results)})
    bad = [r for r in results if not r["ok"]]
    for r in results:
        for p in r["problems"]:
            ui.warn(f"{r['image']}: {p}" if all else p)
    if bad:
        what = f"image '{bad[0]['image']}'" if not all else f"{len(bad)} of {len(results)} images"
        raise Failure(
            f"{what} do{'es' if not all else ''} not match {'its' if not all else 'their'} proof "
            f"({sum(len(r['problems']) for r in bad)} problems above)"
        )
    for r in results:
        summary = (
            f"{r['image']}: commit {r['commit']}"
            + (" + uncommitted changes" if r["dirty"] else "")
            + f", {r['files']} files and {r['deleted']} deletions as shipped"
            + (
                f", {len(r['native']['files'])} compiled files as built in {r['native']['env']['image']} "
                f"({r['native']['env']['id'][:19]})"
                if r["native"]
                else ""
            )
            + ", run config as the base's"
        )
        (ui.ok if json else ui.result)(summary)


def all_ok(results: list[dict]) -> bool:
    return all(r["ok"] for r in results)
