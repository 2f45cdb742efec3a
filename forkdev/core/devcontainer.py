"""`invoke devcontainer`: our entries merged into the user's .devcontainer/devcontainer.json, as values.

Secrets reach a devcontainer as they reach `invoke run`'s container, never through its configuration: the
secrets directory is mounted read-only at /run/forkdev-secrets, and a profile script (PROFILE, mounted
read-only into /etc/profile.d) exports its `*.env` files' variables in every login shell, VS Code's environment
probe included. No value is in runArgs, containerEnv or an env file docker reads, so `inspect` shows none.

The user's file is merged into, never replaced: the user's keys stay; our list entries (runArgs, mounts,
forwardPorts) and containerEnv keys are added, and those a previous run added (recorded under
customizations.forkdev) are taken out first, so a re-run updates rather than duplicates them; `name`,
`workspaceMount`, `workspaceFolder` and `overrideCommand` are set only where the user has none of their own.
"""

from __future__ import annotations

from typing import Any

from .errors import Failure

SECRETS_IN = "/run/forkdev-secrets"
SCRIPT = "forkdev-secrets.sh"  # beside devcontainer.json; it holds no secret
SCRIPT_IN = f"/etc/profile.d/{SCRIPT}"
LISTS = ("runArgs", "mounts", "forwardPorts")
SCALARS = ("name", "workspaceMount", "workspaceFolder", "overrideCommand")
LONG = {"-v": "--volume", "-e": "--env"}

# POSIX sh, sourced by /etc/profile: each KEY=VALUE line as core/secrets.py `lines` reads it (a line feed ends a
# line and a CR before it goes, leading blanks and an `export ` prefix go, the value stays as written); any other
# line is skipped. `export "$key=$value"` expands the value once and runs nothing in it.
PROFILE = r"""# Written by `invoke devcontainer` (forkdev); it holds no secret. The *.env files of the secrets
# directory, mounted read-only at /run/forkdev-secrets, become variables of every login shell (VS Code's
# environment probe included), as `invoke run` passes them: never through docker's configuration, so
# `inspect` shows none.
__forkdev_ws=$(printf ' \t\r\v\f')
__forkdev_cr=$(printf '\r')
for __forkdev_file in /run/forkdev-secrets/*.env; do
  case $__forkdev_file in *.env.example) continue ;; esac
  [ -f "$__forkdev_file" ] && [ -r "$__forkdev_file" ] || continue
  while IFS= read -r __forkdev_line || [ -n "$__forkdev_line" ]; do
    __forkdev_line=${__forkdev_line%"$__forkdev_cr"}
    __forkdev_line=${__forkdev_line#"${__forkdev_line%%[!$__forkdev_ws]*}"}
    case $__forkdev_line in '' | '#'*) continue ;; esac
    case $__forkdev_line in
      'export '*)
        __forkdev_line=${__forkdev_line#export }
        __forkdev_line=${__forkdev_line#"${__forkdev_line%%[!$__forkdev_ws]*}"}
        ;;
    esac
    case $__forkdev_line in *=*) ;; *) continue ;; esac
    __forkdev_key=${__forkdev_line%%=*}
    case $__forkdev_key in
      '' | [0123456789]* | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_]*) continue ;;
    esac
    export "$__forkdev_key=${__forkdev_line#*=}"
  done <"$__forkdev_file"
done
unset __forkdev_ws __forkdev_cr __forkdev_file __forkdev_line __forkdev_key
"""


def joined(args: list[str]) -> list[str]:
    """Engine arguments as `--option=value` items ('--gpus', 'all' -> '--gpus=all'), each one entry of runArgs."""
    out = []
    pairs = iter(args)
    for option in pairs:
        out.append(f"{LONG.get(option, option)}={next(pairs)}")
    return out


def ours(
    *,
    name: str,
    image: str,
    run_args: list[str],
    hf_cache: str | None,
    hf_in: str,
    secrets_dir: str | None,
    ports: list[int],
) -> dict[str, Any]:
    """What forkdev puts in a devcontainer.json (`secrets_dir`: the secrets directory relative to the checkout,
    when it exists)."""
    mounts = []
    env = {}
    if hf_cache:
        mounts.append(f"source={hf_cache},target={hf_in},type=bind")
        env["HF_HOME"] = hf_in
    if secrets_dir:
        folder = "${localWorkspaceFolder}"
        mounts.append(f"source={folder}/{secrets_dir},target={SECRETS_IN},type=bind,readonly")
        mounts.append(f"source={folder}/.devcontainer/{SCRIPT},target={SCRIPT_IN},type=bind,readonly")
    return {
        "name": name,
        "image": image,
        "workspaceMount": "source=${localWorkspaceFolder},target=/workspace,type=bind",
        "workspaceFolder": "/workspace",
        "runArgs": ["--ipc=host", *joined(run_args)],
        "mounts": mounts,
        "containerEnv": env,
        "forwardPorts": ports,
        "overrideCommand": True,
    }


def merge(current: object, mine: dict[str, Any], where: str, secrets_dir: str) -> tuple[dict[str, Any], list[str]]:
    """(the user's document with our entries merged in, notes on what was kept or dropped). A document that is
    not an object, or a key of ours holding another type, is refused naming it."""
    if not isinstance(current, dict):
        raise Failure(f"{where} holds {type(current).__name__}, not a JSON object; fix it or move it away, then re-run")
    doc = dict(current)
    custom = doc.get("customizations", {})
    if not isinstance(custom, dict):
        raise Failure(f"{where}: customizations is not an object; fix it, then re-run")
    recorded = custom.get("forkdev", {}).get("wrote") if isinstance(custom.get("forkdev"), dict) else None
    before: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    notes = []
    doc["image"] = mine["image"]
    for key in SCALARS:
        if key not in doc or doc[key] == before.get(key):
            doc[key] = mine[key]
        elif doc[key] != mine[key]:
            notes.append(f"kept your {key} ({doc[key]!r})")
    for key in LISTS:
        have = doc.get(key, [])
        if not isinstance(have, list):
            raise Failure(f"{where}: {key} is not a list; fix it, then re-run")
        left = list(have)
        for item in before.get(key, []) if isinstance(before.get(key), list) else []:
            if item in left:
                left.remove(item)
        if key == "runArgs":
            left, dropped = _without_env_files(left, secrets_dir)
            notes += [f"removed '--env-file {d}' (it put the secrets in docker inspect)" for d in dropped]
        doc[key] = left + [item for item in mine[key] if item not in left]
    env = doc.get("containerEnv", {})
    if not isinstance(env, dict):
        raise Failure(f"{where}: containerEnv is not an object; fix it, then re-run")
    env = dict(env)
    previous_env = before.get("containerEnv") if isinstance(before.get("containerEnv"), dict) else {}
    for key, value in previous_env.items():
        if env.get(key) == value and key not in mine["containerEnv"]:
            del env[key]
    for key, value in mine["containerEnv"].items():
        if key in env and env[key] != value and env[key] != previous_env.get(key):
            notes.append(f"kept your containerEnv {key}")
        else:
            env[key] = value
    doc["containerEnv"] = env
    doc["customizations"] = {**custom, "forkdev": {"wrote": {k: mine[k] for k in (*SCALARS, *LISTS, "containerEnv")}}}
    return doc, notes


def _without_env_files(args: list[Any], secrets_dir: str) -> tuple[list[Any], list[str]]:
    """runArgs without the `--env-file <secrets file>` entries an older forkdev wrote (docker copies an env
    file's values into the container's configuration, where `inspect` shows them)."""
    prefix = f"${{localWorkspaceFolder}}/{secrets_dir}/"
    out, dropped = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if arg == "--env-file" and i + 1 < len(args) else None
        if isinstance(value, str) and value.startswith(prefix):
            dropped.append(value)
            i += 2
            continue
        if isinstance(arg, str) and arg.startswith("--env-file=" + prefix):
            dropped.append(arg.partition("=")[2])
            i += 1
            continue
        out.append(arg)
        i += 1
    return out, dropped
