"""Any input to overlay and patches: a one-line Failure or a valid result, never a traceback.

The two parsers get arbitrary bytes and grammar-shaped input. The two tasks run whole, in-process, against a small
real repository (real git, real files) next to a file outside it: whatever the definitions or the registry say,
nothing is written outside the destination, no output holds the outside file's bytes, and no temporary or
staging directory is left. Fixed example counts and derandomize=True keep CI reproducible.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import support
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from invoke import Config, Context

from forkdev import overlay, patches
from forkdev.core import config, overlaydir, overlaying, patching, paths
from forkdev.core.errors import Failure

SECRET = b"FORKDEV-FUZZ-SECRET: bytes of a file outside the repository\n"


def fuzz(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def one_line(exc: Failure, starts: str = "") -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text and len(text) < 2000, text
    assert text.startswith(starts), (starts, text)


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Everything under root, no link followed, but paths starting with one of `skip`."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if rel.startswith(skip):
                continue
            st_ = p.lstat()
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), st_.st_mode & 0o777)
    return out


def _reason(exc: Failure) -> str:
    """What kind of refusal, for hypothesis' statistics (-s --hypothesis-show-statistics)."""
    text = str(exc).split(": ", 1)[-1] if ".txt:" in str(exc) or " entry " in str(exc) else str(exc)
    return " ".join(w for w in text.split()[:6] if "/" not in w and "'" not in w)[:60]


def no_secret_through(root: Path) -> None:
    """No path under root, read as a program would (links followed), gives the outside file's bytes."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_file():
                assert SECRET not in p.read_bytes(), p


# ---- a small world: a repository, a file and a directory outside it, a home --------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("fuzz")
    (w / "secret.txt").write_bytes(SECRET)
    (w / "outside-dir").mkdir()
    (w / "outside-dir" / "x.py").write_bytes(SECRET)
    (w / "home").mkdir()
    (w / "runs").mkdir()
    (w / "tmp").mkdir()
    repo = w / "repo"
    repo.mkdir()
    support.git(repo, "init", "-q")
    files = {
        "vllm/config.py": b"MAX = 1\nNAME = 'vllm'\n",
        "vllm/envs.py": b"import os\nDEBUG = os.environ.get('DEBUG')\n",
        "tools/run.sh": b"#!/bin/sh\necho run\n",
        "docs/logo.bin": bytes(range(256)),
        ".gitignore": b"build/\n",
        "build/cache.txt": b"ignored\n",
    }
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    (repo / "tools/run.sh").chmod(0o755)
    links = {
        "vllm/alias.py": "config.py",
        "links/inside": "../vllm/config.py",
        "links/up": "../../repo/vllm/envs.py",
        "links/out-abs": str(w / "secret.txt"),
        "links/out-rel": "../../secret.txt",
        "links/out-dir": str(w / "outside-dir"),
    }
    for path, target in links.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).symlink_to(target)
    support.commit_all(repo, "fuzz world")
    (w / "diffs").mkdir()
    for name, data in _diffs(w, repo).items():
        (w / "diffs" / name).write_bytes(data)
    return w


def _git_diff(w: Path, change) -> bytes:
    """The diff git writes for `change` applied to a copy of a tiny tree."""
    scratch = Path(tempfile.mkdtemp(dir=w))
    try:
        support.git(scratch, "init", "-q")
        (scratch / "vllm").mkdir()
        (scratch / "vllm/config.py").write_bytes(b"MAX = 1\nNAME = 'vllm'\n")
        (scratch / "vllm/envs.py").write_bytes(b"import os\nDEBUG = os.environ.get('DEBUG')\n")
        (scratch / "tools").mkdir()
        (scratch / "tools/run.sh").write_bytes(b"#!/bin/sh\necho run\n")
        support.commit_all(scratch, "base")
        change(scratch)
        support.git(scratch, "add", "-A")
        return support.git(scratch, "diff", "--cached").encode() + b"\n"
    finally:
        shutil.rmtree(scratch)


def _diffs(w: Path, repo: Path) -> dict[str, bytes]:
    return {
        "modify.diff": _git_diff(w, lambda s: (s / "vllm/config.py").write_bytes(b"MAX = 2\nNAME = 'vllm'\n")),
        "create.diff": _git_diff(w, lambda s: (s / "vllm/new.py").write_bytes(b"NEW = 1\n")),
        "delete.diff": _git_diff(w, lambda s: (s / "vllm/envs.py").unlink()),
        "mode.diff": _git_diff(w, lambda s: (s / "tools/run.sh").chmod(0o755)),
        "link-in.diff": _git_diff(w, lambda s: (s / "vllm/alias").symlink_to("config.py")),
        "link-out.diff": _git_diff(w, lambda s: (s / "vllm/evil").symlink_to(w / "secret.txt")),
        "link-out-rel.diff": _git_diff(w, lambda s: (s / "vllm/evil").symlink_to("../../secret.txt")),
        "through-link.diff": _git_diff(
            w, lambda s: (s / "vllm/own-dir").mkdir() or (s / "vllm/own-dir/y.py").write_bytes(b"Y = 1\n")
        ),
        "escape.diff": b"--- a/../../outside.py\n+++ b/../../outside.py\n@@ -1 +1 @@\n-x\n+y\n",
        "empty.diff": b"",
    }


def _target(w: Path, where: Path) -> Path:
    """A directory to patch, with the user's own links: one to a file outside, one to a directory outside."""
    (where / "vllm").mkdir(parents=True)
    (where / "vllm/config.py").write_bytes(b"MAX = 1\nNAME = 'vllm'\n")
    (where / "vllm/envs.py").write_bytes(b"import os\nDEBUG = os.environ.get('DEBUG')\n")
    (where / "tools").mkdir()
    (where / "tools/run.sh").write_bytes(b"#!/bin/sh\necho run\n")
    (where / "vllm/own-link").symlink_to(w / "secret.txt")
    (where / "vllm/own-dir").symlink_to(w / "outside-dir")
    return where


@pytest.fixture
def ctx(world, monkeypatch) -> Context:
    """An invoke context with the tool's config defaults; HOME, the cache and the temporary directory in the world."""
    monkeypatch.setenv("HOME", str(world / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(world / "tmp"))
    cfg = Config(overrides={"cache_dir": str(world / "cache")})
    cfg.load_collection(copy.deepcopy(config.DEFAULTS))
    return Context(cfg)


_runs = itertools.count()


def fresh_run(world: Path) -> Path:
    run = world / "runs" / f"run{next(_runs)}"
    run.mkdir()
    return run


# ---- strategies: mostly well-formed, so that runs get deep (links, transforms, git apply, writes) ----------------
def mostly(common, rare, times: int = 4):
    """`common` about `times` times as often as `rare` (one_of alone gives no weights)."""
    return st.sampled_from([True] * times + [False]).flatmap(lambda usual: common if usual else rare)


TEXT = st.text(max_size=24)
NAME = st.text("abcdefghijklmnop-_ 0123456789", min_size=1, max_size=12)
SRC = mostly(
    st.sampled_from(
        ["vllm/config.py", "vllm", "tools/run.sh", "docs/logo.bin", "links/inside", "links/up", "vllm/alias.py"]
        + ["build", "vllm/envs.py", "links", "links/out-abs", "links/out-rel", "links/out-dir", "links/out-dir/x.py"]
    ),
    st.sampled_from([".", "..", "../secret.txt", "/etc/passwd", ".git/config", "x" * 300, "vllm/../../secret.txt"])
    | TEXT.filter(lambda s: s.strip()),
)
DEST = mostly(
    st.none() | st.sampled_from(["x", "a", "a/b", "inside", "v/w/x.py", "deep/er/link"]),
    st.sampled_from([".", "..", "../x", "/abs", overlaydir.MARKER, "vllm/config.py/x", "d/" * 40 + "f", "x/.."])
    | TEXT.filter(lambda s: s.strip()),
)
ARG = mostly(
    st.sampled_from(["MAX = 1=>MAX = 2", "MAX=>(", r"^(\w+) =>\1=", "^=>#", "# x", "os=>sys", "run=>walk"]),
    st.sampled_from(["(" * 1200 + "=>x", "(=>x", "a=>\\9"]) | st.none() | TEXT,
)
TRANSFORM = mostly(st.none(), st.tuples(st.sampled_from(["replace", "regex", "header", "rot13"]), ARG))
TRANSFORM = st.one_of(st.none(), TRANSFORM)


def _line(src: str, dest: str | None, tf) -> bytes:
    line = src + (f" -> {dest}" if dest is not None else "")
    if tf:
        line += f" :: transform={tf[0]}" + (f":{tf[1]}" if tf[1] is not None else "")
    return line.encode("utf-8", "surrogatepass")


LINE = mostly(st.builds(_line, SRC, DEST, TRANSFORM), st.just(b"# a comment") | st.just(b""))
ANY_LINE = mostly(LINE, st.binary(max_size=40))
DEFINITIONS = mostly(
    st.lists(LINE, min_size=1, max_size=4).map(b"\n".join),
    st.binary(max_size=200) | st.lists(ANY_LINE, max_size=5).map(b"\r\n".join) | st.lists(ANY_LINE).map(b"\n".join),
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
DIFF_NAME = mostly(
    st.sampled_from(["modify.diff", "create.diff", "delete.diff", "mode.diff", "link-in.diff", "random.diff"])
    | st.sampled_from(["link-out.diff", "link-out-rel.diff", "through-link.diff", "escape.diff", "empty.diff"]),
    st.sampled_from(["missing.diff", "../secret.txt", "/etc/passwd"]) | TEXT,
    times=8,
)
FALLBACK = st.fixed_dictionaries(
    {
        "type": mostly(st.just("regex_replace"), TEXT),
        "file": mostly(
            st.sampled_from(["vllm/config.py", "vllm/envs.py", "tools/run.sh"]),
            st.sampled_from(["vllm/own-link", "vllm/own-dir/x.py", "../x", "/etc/passwd", "gone.py"]) | TEXT,
        ),
        "pattern": mostly(
            st.sampled_from([r"^MAX = \d+", "^", "DEBUG", "echo"]), st.sampled_from(["(", "(" * 1500, "NEVER"]) | TEXT
        ),
        "replacement": mostly(st.sampled_from(["MAX = 3", "# x", "TRACE"]), st.sampled_from([r"\9", "(", ""]) | TEXT),
    }
)
ENTRY = st.fixed_dictionaries(
    {"name": mostly(NAME, TEXT | JSON, 12), "diff": DIFF_NAME},
    optional={"skip_in_overlay": mostly(st.booleans(), JSON, 12), "fallback": mostly(FALLBACK, JSON, 12)},
)
REGISTRY = mostly(
    st.lists(ENTRY, min_size=1, max_size=3).map(lambda es: json.dumps({"patches": es}).encode()),
    JSON.map(lambda j: json.dumps(j).encode()) | st.binary(max_size=80),
    times=6,
)
RANDOM_DIFF = mostly(
    st.sampled_from(["modify.diff", "create.diff", "link-in.diff", "link-out-rel.diff"]), st.binary(max_size=120)
)


# ---- the parsers -----------------------------------------------------------------------------------------------
@fuzz(400)
@given(data=DEFINITIONS)
@example(data=b"vllm/config.py\n\xff\n")
@example(data=b"a\x00b")
@example(data=b"vllm/config.py -> .")
def test_any_definitions_parse_or_fail_in_one_line_naming_file_and_line(data):
    try:
        defs = overlaying.parse(data, "defs.txt")
    except Failure as exc:
        one_line(exc, "defs.txt:")
        return
    for d in defs:
        assert d.where.startswith("defs.txt:")
        assert paths.relative(d.src, "src") == d.src and paths.relative(d.dest, "dest") == d.dest
        assert d.transform is None or d.transform in overlaying.TRANSFORMS


@fuzz(300)
@given(data=REGISTRY)
@example(data=b"[" * 100_000)
@example(data=b'{"patches": [{"name": "x", "diff": "modify.diff\\u0000"}]}')
def test_any_registry_parses_or_fails_in_one_line_naming_it(world, data):
    registry = world / "diffs" / "patches.json"
    try:
        found = patching.parse(data, registry)
    except Failure as exc:
        one_line(exc, str(registry))
        return
    for p in found:
        assert p.name.isprintable() and isinstance(p.skip_in_overlay, bool)
        assert all(paths.relative(path, "path") == path for path in p.paths)


# ---- the tasks, whole ------------------------------------------------------------------------------------------
@fuzz(150)
@given(data=DEFINITIONS)
@example(data=b"links\n")
@example(data=b"vllm\nlinks/inside\nlinks/up\n")
@example(data=b"links/out-dir/x.py -> x.py\n")
def test_the_overlay_task_on_any_definitions(world, ctx, data):
    run = fresh_run(world)
    (run / "defs.txt").write_bytes(data)
    dest = run / "ov"
    around = tree(world, skip=("runs", "cache", "tmp"))
    try:
        overlay.overlay(ctx, repo=str(world / "repo"), definitions=str(run / "defs.txt"), dest=str(dest))
    except Failure as exc:
        one_line(exc)
        event(f"overlay refused: {_reason(exc)}")
        assert not dest.exists()
    else:
        event(f"overlay written: {'with links' if any(e[0] == 'link' for e in tree(dest).values()) else 'files'}")
        assert overlaydir.marked(dest)
        for rel, entry in tree(dest).items():
            if entry[0] == "link":
                assert paths.within(os.path.realpath(dest / rel), dest), (rel, entry)
        no_secret_through(dest)
    assert tree(world, skip=("runs", "cache", "tmp")) == around, "nothing outside the destination changed"
    assert sorted(p.name for p in run.iterdir()) in (["defs.txt"], ["defs.txt", "ov"]), "no staging is left"


@fuzz(60)
@given(data=REGISTRY, diff=RANDOM_DIFF, reverse=st.booleans())
@example(data=b'{"patches": [{"name": "x", "diff": "link-out.diff"}]}', diff="modify.diff", reverse=False)
@example(data=b'{"patches": [{"name": "x", "diff": "through-link.diff"}]}', diff="modify.diff", reverse=False)
@example(
    data=b'{"patches": [{"name": "x", "diff": "empty.diff", "fallback": {"type": "regex_replace", '
    b'"file": "vllm/own-link", "pattern": "F", "replacement": "G"}}]}',
    diff="modify.diff",
    reverse=False,
)
def test_the_patches_task_on_any_registry(world, ctx, data, diff, reverse):
    run = fresh_run(world)
    shutil.copytree(world / "diffs", run / "reg")
    random = (world / "diffs" / diff).read_bytes() if isinstance(diff, str) else diff
    (run / "reg" / "random.diff").write_bytes(random)
    (run / "reg" / "patches.json").write_bytes(data)
    target = _target(world, run / "target")
    before = tree(target)
    around = tree(world, skip=("runs", "cache"))
    registry_files = tree(run / "reg")
    try:
        patches.patches(
            ctx, repo=str(world / "repo"), registry=str(run / "reg/patches.json"), into=str(target), reverse=reverse
        )
    except Failure as exc:
        one_line(exc)
        event(f"patches refused: {_reason(exc)}")
        assert tree(target) == before, "a refused or failed run writes nothing"
    else:
        event(f"patches applied: {'changed' if tree(target) != before else 'unchanged'}")
    after = tree(target)
    for rel, entry in after.items():
        if entry[0] == "file":
            assert SECRET not in entry[1], rel
        if entry[0] == "link" and before.get(rel) != entry:
            assert paths.within(os.path.realpath(target / rel), target), (rel, entry)
    assert tree(world, skip=("runs", "cache")) == around, "nothing outside the target changed"
    assert tree(run / "reg") == registry_files
    assert os.listdir(world / "tmp") == [], "no forkdev-patches-* directory is left"


def test_the_world_is_what_the_properties_assume(world):
    """The fuzzed runs can only catch a leak if the world holds the ways to leak."""
    repo = world / "repo"
    assert (repo / "links/out-abs").resolve() == world / "secret.txt"
    assert subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True).stdout == b""
    for name in ("link-out.diff", "link-out-rel.diff"):
        assert b"new file mode 120000" in (world / "diffs" / name).read_bytes()
