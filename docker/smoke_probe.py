"""Smoke-test wheels, each in a FRESH environment, from a working directory outside any source tree.

Standard library only: the same file runs on the host (`invoke smoke`, `nox -s smoke`), inside any image with
python3 (`invoke smoke IMAGE`) and in the build image's `test` mode.

  run [options] WHEEL ...   per wheel: a new venv (uv when given one, else venv + pip), install the wheel (never
                            editable, never into a reused env), then `check` with the env's python, then the
                            smoke command with the env first on PATH. One JSON line per wheel on stdout.
  check ...                 inside the env: the distribution is installed at the wheel's version, every top-level
                            package the wheel holds imports from the env itself, its __version__ agrees, the commit
                            recorded in the wheel is the expected one, every native library the wheel installed
                            loads, and every native module in it (a .so exporting PyInit_<name>) imports.

What is imported comes from the wheel itself: its top_level.txt, else the top-level names in its RECORD (wheels
made by scikit-build-core, meson-python or maturin have no top_level.txt).

Exit status 1 when any wheel fails; its line's "problem" says why in one sentence.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

STAMP = "forkdev-build.json"  # the build record `invoke wheel` adds to the wheel's .dist-info
NATIVE = re.compile(r"\.so(\.[0-9]+)*$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- reading a wheel (no install) ------------------------------------------------------------------------------
def read_wheel(path: Path) -> dict:
    """Name, version, tag, import names, native files and the build record of a wheel file."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        # zipfile would stop at the first read with a RuntimeError; no installer takes an encrypted member either.
        locked = [i.filename for i in zf.infolist() if i.flag_bits & 0x1]
        if locked:
            raise ValueError(f"{path.name} holds {len(locked)} encrypted member(s), {locked[0]} first: not a wheel")
        infos = sorted({n.split("/", 1)[0] for n in names if re.match(r"^[^/]+\.dist-info/METADATA$", n)})
        if len(infos) != 1:
            raise ValueError(f"{path.name} has {len(infos)} .dist-info/METADATA files, not one: not a wheel")
        info = infos[0]
        meta = _headers(zf.read(f"{info}/METADATA").decode("utf-8", "replace"))
        wheel = _headers(zf.read(f"{info}/WHEEL").decode("utf-8", "replace")) if f"{info}/WHEEL" in names else {}
        stamp = json.loads(zf.read(f"{info}/{STAMP}")) if f"{info}/{STAMP}" in names else None
        top = f"{info}/top_level.txt"
        if top in names:
            top_level = [n for n in zf.read(top).decode().split() if IDENTIFIER.match(n)]
        else:
            record = f"{info}/RECORD"
            listed = zf.read(record).decode("utf-8", "replace") if record in names else ""
            top_level = import_names([row[0] for row in csv.reader(io.StringIO(listed)) if row] or names)
    natives = sorted(n for n in names if NATIVE.search(n))
    tags = wheel.get("Tag", [])
    pure = bool(tags) and all(t.endswith("-none-any") for t in tags)
    return {
        "name": meta["Name"][0],
        "version": meta["Version"][0],
        "requires": meta.get("Requires-Dist", []),
        "tags": tags,
        "pure": pure,
        "natives": natives,
        "top_level": top_level,
        "stamp": stamp,
    }


def import_names(paths: list[str]) -> list[str]:
    """The top-level import names of the files a wheel installs: a package directory (`pkg/...`), a module
    (`mod.py`) or an extension module (`_mod.cpython-311-x86_64-linux-gnu.so`, `_mod.abi3.so`). Metadata
    (`*.dist-info/`, `*.data/`), auditwheel's `pkg.libs/`, `.pth` files and names that are not identifiers are
    not imports."""
    found = set()
    for path in paths:
        head, sep, _ = path.partition("/")
        if sep:
            if head.endswith((".dist-info", ".data")) or not IDENTIFIER.match(head) or head == "__pycache__":
                continue
            found.add(head)
        elif head.endswith(".py") or NATIVE.search(head):
            name = head.split(".", 1)[0]
            if IDENTIFIER.match(name):
                found.add(name)
    return sorted(found)


def _headers(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[0].isspace():
            found.setdefault(key.strip(), []).append(value.strip())
    return found


# ---- run: one fresh environment per wheel ---------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    failed = 0
    report = open(args.report, "a", encoding="utf-8") if args.report else sys.stdout  # noqa: SIM115
    try:
        for wheel in args.wheels:
            result = smoke_one(Path(wheel).resolve(), args)
            failed += not result["ok"]
            report.write(json.dumps(result, sort_keys=True) + "\n")
            report.flush()
            print(
                f"{'ok' if result['ok'] else 'FAILED'}: {wheel}: {result['problem'] or 'smoke passed'}", file=sys.stderr
            )
    finally:
        if report is not sys.stdout:
            report.close()
    return 1 if failed else 0


def smoke_one(wheel: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    result: dict = {"wheel": str(wheel), "ok": False, "problem": None}
    try:
        info = read_wheel(wheel)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        result["problem"] = f"{wheel.name} cannot be read as a wheel ({exc}); rebuild it"
        return result
    stamp = info["stamp"] or {}
    packages = args.package or info["top_level"] or [info["name"].replace("-", "_").replace(".", "_")]
    # A record written for another distribution (a build under a profile that is not this package's) names a
    # command that is not this wheel's to run.
    ours = _canonical(stamp.get("distribution") or info["name"]) == _canonical(info["name"])
    smoke_cmd = args.smoke if args.smoke is not None else (stamp.get("smoke", "") if ours else "")
    result.update(
        name=info["name"],
        version=info["version"],
        package=packages[0],
        packages=packages,
        commit=stamp.get("commit"),
        pure_with_native=info["pure"] and bool(info["natives"]),
    )
    installer = _installer(args)
    result["installer"] = "uv" if installer else "pip"
    with tempfile.TemporaryDirectory(prefix="forkdev-smoke-") as tmp:
        env_dir, cwd = Path(tmp) / "env", Path(tmp) / "cwd"
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["UV_PYTHON_DOWNLOADS"] = "never"
        python = env_dir / "bin" / "python"
        index = ["--no-index", "--find-links", str(wheel.parent)] if args.no_index else []
        site = ["--system-site-packages"] if args.system_site_packages else []
        if installer:
            steps = [
                [installer, "venv", "--quiet", "--python", sys.executable, *site, str(env_dir)],
                [installer, "pip", "install", "--quiet", "--python", str(python), *index, str(wheel)],
            ]
        else:
            steps = [
                [sys.executable, "-m", "venv", *site, str(env_dir)],
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
                + index
                + [str(wheel)],
            ]
        for argv in steps:
            problem = _step(argv, env, cwd, f"installing {wheel.name} failed")
            if problem:
                result["problem"] = problem
                return _timed(result, start)
        check = [str(python), "-I", str(Path(__file__).resolve()), "check", "--dist", info["name"]]
        check += ["--version", info["version"]]
        for package in packages:
            check += ["--package", package]
        if args.commit:
            check += ["--commit", args.commit]
        out = subprocess.run(check, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        sys.stderr.write(out.stderr)
        found = _last_json(out.stdout)
        if out.returncode != 0 or found is None:
            result["problem"] = f"{wheel.name}: " + (found or {}).get("problem", _last_line(out.stderr, out.returncode))
            return _timed(result, start)
        result.update(module=found["module"], modules=found["modules"], natives_loaded=found["natives"])
        result["extensions_imported"] = found["extensions"]
        if smoke_cmd:
            argv = shlex.split(smoke_cmd)
            env_path = {**env, "VIRTUAL_ENV": str(env_dir), "PATH": f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"}
            problem = _step(argv, env_path, cwd, f"{wheel.name}: the smoke command '{smoke_cmd}' failed")
            if problem:
                result["problem"] = problem
                return _timed(result, start)
    result["ok"] = True
    return _timed(result, start)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _installer(args: argparse.Namespace) -> str:
    """The uv to use, or "" for venv + pip."""
    if args.installer == "pip":
        return ""
    uv = args.uv or shutil.which("uv") or ""
    if args.installer == "uv" and not uv:
        raise SystemExit("error: --installer uv, and uv is not installed; pip install uv, or use --installer pip")
    return uv


def _step(argv: list[str], env: dict, cwd: Path, what: str) -> str | None:
    print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    try:
        out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"{what}: cannot start {argv[0]} ({exc.strerror})"
    sys.stderr.write(out.stdout + out.stderr)
    return None if out.returncode == 0 else f"{what}: {_last_line(out.stderr or out.stdout, out.returncode)}"


def _last_line(text: str, code: int) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {code}"


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _timed(result: dict, start: float) -> dict:
    result["seconds"] = round(time.perf_counter() - start, 4)
    return result


# ---- check: inside the fresh environment ----------------------------------------------------------------------
def check(args: argparse.Namespace) -> int:
    import ctypes
    import importlib
    import importlib.metadata as md

    problems: list[str] = []
    found: dict = {"module": None, "modules": {}, "natives": [], "extensions": []}
    try:
        dist = md.distribution(args.dist)
    except md.PackageNotFoundError:
        return _problem(f"{args.dist} is not installed in the fresh environment", found)
    if dist.version != args.version:
        problems.append(f"installed version {dist.version} is not the wheel's {args.version}")
    raw = dist.read_text(STAMP)
    stamp = json.loads(raw) if raw else {}
    prefix = os.path.realpath(sys.prefix) + os.sep
    for package in args.package:
        try:
            module = importlib.import_module(package)
        except BaseException as exc:  # an import may raise anything, SystemExit included
            return _problem(f"import {package} failed: {type(exc).__name__}: {exc}", found)
        where = os.path.realpath(getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), ""))
        found["modules"][package] = where
        found["module"] = found["module"] or where
        if not where.startswith(prefix):
            problems.append(f"{package} was imported from {where or 'nowhere'}, not from the fresh environment")
        declared = getattr(module, "__version__", None)
        if isinstance(declared, str) and declared != dist.version:
            problems.append(f"{package}.__version__ is {declared} but the installed version is {dist.version}")
    commit = stamp.get("commit")
    if args.commit and (not commit or not commit.startswith(args.commit.lower())):
        problems.append(f"the wheel records commit {commit or 'none'}, not {args.commit}")
    local = re.search(r"\+g?([0-9a-f]{7,40})(?:\.|$)", dist.version)
    if commit and local and not commit.startswith(local.group(1)):
        problems.append(f"version {dist.version} names commit {local.group(1)} but the wheel records {commit[:12]}")
    installed = [f for f in dist.files or () if NATIVE.search(str(f))]
    names = {Path(str(f)).name for f in installed}
    missing = [lib for lib in stamp.get("native", []) if lib not in names]
    if missing:
        problems.append(f"the native libraries {', '.join(missing)} that the build made are not installed")
    for f in installed:
        path = str(dist.locate_file(f))
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            problems.append(f"native library {f} does not load: {exc}")
            continue
        found["natives"].append(str(f))
        parts = Path(str(f)).parts
        name = parts[-1].split(".", 1)[0]
        dotted = ".".join([*parts[:-1], name])
        if not all(IDENTIFIER.match(p) for p in (*parts[:-1], name)) or not hasattr(lib, f"PyInit_{name}"):
            continue  # a plain shared library, not a Python extension module
        try:
            importlib.import_module(dotted)
        except BaseException as exc:
            problems.append(f"native module {dotted} does not import: {type(exc).__name__}: {exc}")
        else:
            found["extensions"].append(dotted)
    if problems:
        return _problem("; ".join(problems), found)
    print(json.dumps(found))
    return 0


def _problem(text: str, found: dict) -> int:
    print(json.dumps({**found, "problem": text}))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke_probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("wheels", nargs="+")
    r.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto")
    r.add_argument("--uv", default="", help="the uv program (default: uv on PATH)")
    r.add_argument("--system-site-packages", action="store_true", help="the env also sees the interpreter's packages")
    r.add_argument("--no-index", action="store_true", help="dependencies only from the wheels' directory")
    r.add_argument("--package", action="append", default=[], help="an import name; repeatable (default: the wheel's)")
    r.add_argument("--smoke", default=None, help="command run in the env (default: the wheel's record)")
    r.add_argument("--commit", default="", help="the commit the wheel must record")
    r.add_argument("--report", default="", help="append the JSON lines to this file instead of stdout")
    c = sub.add_parser("check")
    c.add_argument("--dist", required=True)
    c.add_argument("--version", required=True)
    c.add_argument("--package", action="append", default=[])
    c.add_argument("--commit", default="")
    args = parser.parse_args(argv)
    return run(args) if args.cmd == "run" else check(args)


if __name__ == "__main__":
    sys.exit(main())
