"""`invoke batch --emit bake`: the plan as a `docker buildx bake` file, in the form bake reads and BuildKit builds.

One target per native state builds its compile (the full commit with its Dockerfile, stage, build args and the
version forkdev passes in), tagged `<repository>:native-<state>` with the labels `invoke batch` looks for. A thin
layer is no Dockerfile step (it is forkdev's own writer), so each target says in a comment (`"//"`, which bake
ignores) which commits share it and the command that adds their layers on top of it: with that image present,
`invoke batch --state` builds every commit of the state and compiles nothing.

What bake needs (docker/buildx bake.go, BuildKit's gitutil): targets named [a-zA-Z0-9_-]+; a git context that
BuildKit fetches (http(s) ending in .git, ssh://, git://, user@host:path; `#commit` selects the commit; a local
path is a directory to bake, never a commit of it); and every string value is an HCL template, so `${` and `%{`
are written `$${` and `%%{` to stay literal (a Dockerfile's `${VAR}` included).
"""

from __future__ import annotations

import re
from typing import Any

from . import labels as L
from .errors import Failure

_SCP = re.compile(r"^[A-Za-z0-9_-]+@[A-Za-z0-9.-]+:")  # git@github.com:org/repo.git


def context(url: str, commit: str) -> str:
    """The upstream at `commit` as a context BuildKit fetches itself, or a Failure saying why it cannot."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    fetchable = (
        scheme in ("ssh", "git")
        or (scheme in ("http", "https") and url.split("?", 1)[0].endswith(".git"))
        or (not scheme and _SCP.match(url) is not None)
    )
    if not fetchable or "#" in url or "?" in url:
        raise Failure(
            f"--emit bake: upstream '{url}' is no git URL BuildKit can fetch a commit from (https://....git, "
            "ssh://, git://, git@host:path; a local path is only a directory to it); pass --upstream with one"
        )
    return f"{url}#{commit}"


def target(
    *, url: str, commit: str, state: str, dockerfile: str | None, path: str, stage: str, args: dict[str, str],
    tag: str, network: str, commits: list[str], thin: str,
) -> dict[str, Any]:  # fmt: skip
    """One native state's bake target (`dockerfile`: a row's own text, else `path` in the context)."""
    entry: dict[str, Any] = {
        "//": f"native state {state[:12]} of {len(commits)} commits: {', '.join(commits)}. Each commit's image is "
        f"this one plus a thin layer; with this image present (built here or pulled), {thin} makes them all",
        "context": context(url, commit),
        "args": dict(args),
        "tags": [tag],
        "labels": {L.REVISION: commit, L.NATIVE_HASH: state, L.BUILD: "full"},
    }
    if dockerfile is not None:
        entry["dockerfile-inline"] = dockerfile
    else:
        entry["dockerfile"] = path
    entry["network"] = network  # as `invoke batch` builds it: engine.network, or a row's Dockerfile's (none)
    if stage:
        entry["target"] = stage
    return literal(entry)


def literal(value: Any) -> Any:
    """`value` with every string escaped for HCL's templates (`${` -> `$${`, `%{` -> `%%{`); comments stay."""
    if isinstance(value, str):
        return value.replace("${", "$${").replace("%{", "%%{")
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k == "//" else literal(v) for k, v in value.items()}
    return value
