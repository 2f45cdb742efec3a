"""invoke verify IMAGE: prove which commit is inside an image made by `invoke dev` or `invoke build`."""

from __future__ import annotations

import hashlib

from .core import thin, ui
from .core.base import REVISION_LABELS
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
for f in proof["files"]:
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
        thin.PROOF_PATH,
        failure=f"image '{image}' has no readable proof at {thin.PROOF_PATH} ({{why}}); it was not made by "
        "'invoke dev' or 'invoke build'",
    )
    proof = found["proof"]
    problems = []
    revision = labels.get(REVISION_LABELS[0])
    if revision != proof["commit"]:
        problems.append(f"label revision {revision} != proof commit {proof['commit']}")
    if commit and not proof["commit"].startswith(commit.lower()):
        problems.append(f"image holds commit {proof['commit'][:12]}, not {commit}")
    if labels.get(thin.BASE_REVISION_LABEL) != proof["base"]["revision"]:
        problems.append("label base revision differs from the proof's")
    for f in proof["files"]:
        if found["files"].get(f["image_path"]) != f["sha256"]:
            problems.append(f"{f['image_path']} differs from what was shipped")
    problems += [f"{p} should have been deleted" for p in found["present"]]
    if repo is not None and not proof["dirty"]:
        problems += _against_commit(repo, proof)
    return {
        "image": image,
        "commit": proof["commit"],
        "dirty": proof["dirty"],
        "base": proof["base"],
        "files": len(proof["files"]),
        "deleted": len(proof["deleted"]),
        "ok": not problems,
        "problems": problems,
    }


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


@task(
    help={
        "image": "the image to check",
        "commit": "the commit it must hold (full or abbreviated sha)",
        "repo": "a checkout holding that commit: also compare the shipped bytes with it",
        "json": "print one JSON object on stdout",
    },
)
def verify(c, image, commit=None, repo=None, json=False):
    """Check that an image's labels, proof file and shipped files agree with its commit."""
    run = Runner(dry_run=False)  # verify only reads
    engine = Engine.detect(run, c.config.engine.name, c.config.engine.network)
    result = check(engine, run, image, commit, Repo.open(repo, run) if repo else None)
    if json:
        ui.emit_json(result)
    for p in result["problems"]:
        ui.warn(p)
    if not result["ok"]:
        raise Failure(f"image '{image}' does not match its proof ({len(result['problems'])} problems above)")
    ui.ok(
        f"{image}: commit {result['commit']}"
        + (" + uncommitted changes" if result["dirty"] else "")
        + f", {result['files']} files and {result['deleted']} deletions as shipped"
    )
