"""`invoke overlay` and `invoke patches` on real repositories: strict parsing, loud failures, all or nothing,
and a checkout whose `git status` is the same after as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import support
from support import commit_all, git


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "fork"
    r.mkdir()
    git(r, "init", "-q")
    files = {
        "vllm/config.py": "MAX = 1\nNAME = 'vllm'\n",
        "vllm/envs.py": "import os\nDEBUG = os.environ.get('DEBUG')\n",
        "tools/run.sh": "#!/bin/sh\necho run\n",
        "docs/logo.bin": None,
        ".gitignore": "build/\n",
    }
    for path, text in files.items():
        f = r / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(bytes(range(256)) if text is None else text.encode())
    (r / "tools/run.sh").chmod(0o755)
    commit_all(r, "fork")
    (r / "vllm/envs.py").write_text("import os\nDEBUG = os.environ.get('DEBUG')\n# my uncommitted edit\n")
    return r


def status(r: Path) -> str:
    return git(r, "status", "--porcelain", "--untracked-files=all")


# ---- overlay --------------------------------------------------------------------------------------------------
def overlay(invoke, repo: Path, defs: str, *args: str):
    (repo.parent / "overlay.txt").write_text(defs)
    return invoke("overlay", "--repo", str(repo), "--definitions", str(repo.parent / "overlay.txt"), *args)


def test_overlay_copies_and_transforms_without_touching_the_checkout(invoke, repo, tmp_path):
    before = status(repo)
    dest = tmp_path / "ov"
    res = overlay(
        invoke,
        repo,
        """
# the fork's overlay
vllm/config.py -> vllm/config.py :: transform=replace:MAX = 1=>MAX = 8
vllm/envs.py :: transform=header:# fork overlay
tools/run.sh -> bin/run.sh
vllm -> pkg
""",
        "--dest",
        str(dest),
    )
    assert res.code == 0, res.err
    assert (dest / "vllm/config.py").read_text() == "MAX = 8\nNAME = 'vllm'\n"
    assert (dest / "vllm/envs.py").read_text().startswith("# fork overlay\nimport os\n")
    assert (dest / "vllm/envs.py").read_text().endswith("# my uncommitted edit\n"), "the working tree is read"
    assert (dest / "bin/run.sh").stat().st_mode & 0o111
    assert (dest / "pkg/config.py").read_text() == "MAX = 1\nNAME = 'vllm'\n"
    assert status(repo) == before


@pytest.mark.parametrize(
    ("defs", "words"),
    [
        ("vllm/config.py => x", ["overlay.txt:1", "malformed"]),
        ("\n# c\nvllm/config.py :: transform=rot13", ["overlay.txt:3", "unknown transform 'rot13'", "replace"]),
        ("../outside.py", ["overlay.txt:1", "escapes"]),
        ("vllm/config.py -> /etc/passwd", ["overlay.txt:1", "must be a relative path"]),
        ("vllm/config.py -> ../../x.py", ["overlay.txt:1", "escapes"]),
        ("vllm/missing.py", ["overlay.txt:1", "does not exist"]),
        ("vllm/config.py :: transform=regex:NEVER_MATCHES=>X", ["overlay.txt:1", "changed nothing"]),
        ("vllm/config.py :: transform=replace:MAX = 1=>MAX = (", ["overlay.txt:1", "does not compile"]),
        ("docs/logo.bin :: transform=header:x", ["overlay.txt:1", "binary"]),
        ("vllm/config.py :: transform=replace:no-arrow", ["overlay.txt:1", "OLD=>NEW"]),
    ],
)
def test_bad_definitions_are_one_line_naming_file_and_line_and_write_nothing(invoke, repo, tmp_path, defs, words):
    dest = tmp_path / "ov"
    dest.mkdir()
    (dest / "previous.txt").write_text("from the last good run\n")
    res = overlay(invoke, repo, defs, "--dest", str(dest))
    assert res.code != 0 and "Traceback" not in res.err
    for w in words:
        assert w in res.last_error, (w, res.last_error)
    assert [p.name for p in dest.iterdir()] == ["previous.txt"], "the last good overlay is intact"


def test_a_dest_symlink_that_escapes_is_refused(invoke, repo, tmp_path):
    dest = tmp_path / "ov"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path / "elsewhere")
    res = overlay(invoke, repo, "vllm/config.py -> link/config.py", "--dest", str(dest))
    assert res.code != 0 and "escapes" in res.last_error


def test_an_overlay_dir_inside_the_checkout_must_be_ignored(invoke, repo):
    refused = overlay(invoke, repo, "vllm/config.py", "--dest", str(repo / "ov"))
    assert refused.code != 0 and "not ignored" in refused.last_error
    before = status(repo)
    ok = overlay(invoke, repo, "vllm/config.py", "--dest", str(repo / "build" / "ov"))
    assert ok.code == 0, ok.err
    assert status(repo) == before


# ---- patches --------------------------------------------------------------------------------------------------
def diff_of(repo: Path, path: str, new: str) -> bytes:
    """A real diff made by git for changing `path` to `new` (the repository is left as it was)."""
    f = repo / path
    old = f.read_bytes()
    f.write_text(new)
    try:
        return git(repo, "diff", "--", path).encode() + b"\n"
    finally:
        f.write_bytes(old)


def registry(repo: Path, entries: list[dict], diffs: dict[str, bytes]) -> Path:
    d = repo.parent / "patches"
    d.mkdir(exist_ok=True)
    for name, data in diffs.items():
        (d / name).write_bytes(data)
    reg = d / "patches.json"
    reg.write_text(json.dumps({"patches": entries}))
    return reg


def patches(invoke, repo, reg, *args, env=None):
    return invoke("patches", "--repo", str(repo), "--registry", str(reg), "--json", *args, env=env)


def test_ordered_patches_apply_with_crlf_and_report_each(invoke, repo, tmp_path):
    one = diff_of(repo, "vllm/config.py", "MAX = 2\nNAME = 'vllm'\n")
    (repo / "vllm/config.py").write_text("MAX = 2\nNAME = 'vllm'\n")
    support.commit_all(repo, "tmp")
    two = diff_of(repo, "vllm/config.py", "MAX = 2\nNAME = 'fork'\n")
    git(repo, "reset", "-q", "--keep", "HEAD~1")  # the fixture's own repository
    reg = registry(
        repo,
        [{"name": "max", "diff": "1.diff"}, {"name": "name", "diff": "2.diff"}],
        {"1.diff": one.replace(b"\n", b"\r\n"), "2.diff": two},
    )
    target = tmp_path / "target"
    target.mkdir()
    (target / "vllm").mkdir()
    (target / "vllm/config.py").write_text("MAX = 1\nNAME = 'vllm'\n")
    res = patches(invoke, repo, reg, "--into", str(target))
    assert res.code == 0, res.err
    assert [p["status"] for p in res.json["patches"]] == ["applied", "applied"]
    assert (target / "vllm/config.py").read_text() == "MAX = 2\nNAME = 'fork'\n"
    again = patches(invoke, repo, reg, "--into", str(target))
    assert [p["status"] for p in again.json["patches"]] == ["already applied", "already applied"]
    back = patches(invoke, repo, reg, "--into", str(target), "--reverse")
    assert [p["status"] for p in back.json["patches"]] == ["reverted", "reverted"]
    assert (target / "vllm/config.py").read_text() == "MAX = 1\nNAME = 'vllm'\n"


def test_the_default_applies_in_a_worktree_and_leaves_the_checkout_alone(invoke, repo):
    reg = registry(
        repo,
        [{"name": "max", "diff": "1.diff"}],
        {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 3\nNAME = 'vllm'\n")},
    )
    before = status(repo), (repo / "vllm/config.py").read_bytes()
    res = patches(invoke, repo, reg)
    assert res.code == 0, res.err
    assert Path(res.json["target"], "vllm/config.py").read_text() == "MAX = 3\nNAME = 'vllm'\n"
    assert (status(repo), (repo / "vllm/config.py").read_bytes()) == before


def test_one_failing_patch_fails_the_run_shows_the_hunk_and_writes_nothing(invoke, repo, tmp_path):
    good = diff_of(repo, "vllm/config.py", "MAX = 4\nNAME = 'vllm'\n")
    stale = diff_of(repo, "vllm/envs.py", "import os\nDEBUG = os.environ.get('VLLM_DEBUG')\n").replace(
        b"DEBUG = os.environ.get('DEBUG')", b"DEBUG = os.environ.get('OLD_NAME')"
    )
    reg = registry(
        repo,
        [{"name": "good", "diff": "g.diff"}, {"name": "stale", "diff": "s.diff"}],
        {"g.diff": good, "s.diff": stale},
    )
    before = status(repo), (repo / "vllm/config.py").read_bytes()
    res = patches(invoke, repo, reg, "--into", "checkout")
    assert res.code != 0 and "stale" in res.last_error and "nothing was written" in res.last_error
    assert "OLD_NAME" in res.err, "the rejected hunk is shown"
    assert [p["status"] for p in res.json["patches"]] == ["applied", "failed"]
    assert (status(repo), (repo / "vllm/config.py").read_bytes()) == before


def test_a_fallback_applies_when_the_diff_does_not_and_fails_when_it_does_not_match(invoke, repo, tmp_path):
    stale = b"--- a/vllm/config.py\n+++ b/vllm/config.py\n@@ -1 +1 @@\n-MAX = 99\n+MAX = 100\n"
    fb = {"type": "regex_replace", "file": "vllm/config.py", "pattern": r"^MAX = \d+", "replacement": "MAX = 100"}
    reg = registry(repo, [{"name": "max", "diff": "m.diff", "fallback": fb}], {"m.diff": stale})
    target = tmp_path / "t"
    (target / "vllm").mkdir(parents=True)
    (target / "vllm/config.py").write_text("MAX = 1\nNAME = 'vllm'\n")
    res = patches(invoke, repo, reg, "--into", str(target))
    assert res.code == 0, res.err
    assert res.json["patches"][0]["status"] == "applied by fallback"
    assert (target / "vllm/config.py").read_text() == "MAX = 100\nNAME = 'vllm'\n"

    fb["pattern"] = "^NEVER"
    reg = registry(repo, [{"name": "max", "diff": "m.diff", "fallback": fb}], {})
    res = patches(invoke, repo, reg, "--into", str(target))
    assert res.code != 0 and res.json["patches"][0]["status"] == "failed"
    fb.update(pattern="^MAX = 100", replacement="MAX = (")
    reg = registry(repo, [{"name": "max", "diff": "m.diff", "fallback": fb}], {})
    res = patches(invoke, repo, reg, "--into", str(target))
    assert res.code != 0 and "does not compile" in res.err
    assert (target / "vllm/config.py").read_text() == "MAX = 100\nNAME = 'vllm'\n"


def test_check_reports_and_changes_nothing_and_overlay_skips(invoke, repo, tmp_path):
    reg = registry(
        repo,
        [{"name": "max", "diff": "1.diff"}, {"name": "env", "diff": "1.diff", "skip_in_overlay": True}],
        {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 5\nNAME = 'vllm'\n")},
    )
    before = status(repo), (repo / "vllm/config.py").read_bytes()
    res = patches(invoke, repo, reg, "--check", "--into", "checkout")
    assert res.code == 0, res.err
    assert res.json["check"] is True and res.json["changed"] == ["vllm/config.py"]
    assert (status(repo), (repo / "vllm/config.py").read_bytes()) == before
    ov = tmp_path / "ov"
    (ov / "vllm").mkdir(parents=True)
    (ov / "vllm/config.py").write_text("MAX = 1\nNAME = 'vllm'\n")
    res = patches(invoke, repo, reg, "--into", "overlay", env={"INVOKE_OVERLAY_DEST": str(ov)})
    assert res.code == 0, res.err
    assert res.json["skipped"] == ["env"] and [p["name"] for p in res.json["patches"]] == ["max"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json", ["not valid JSON"]),
        ('{"items": []}', ['no "patches" list']),
        ('{"patches": [{"name": "x"}]}', ["entry 1", '"diff"']),
        ('{"patches": [{"name": "x", "diff": "missing.diff"}]}', ["missing.diff", "does not exist"]),
        ('{"patches": [{"name": "x", "diff": "../../etc/passwd"}]}', ["escapes"]),
        ('{"patches": [{"name": "x", "diff": "1.diff", "fallback": {"type": "sed"}}]}', ["regex_replace"]),
    ],
)
def test_a_malformed_registry_is_one_line(invoke, repo, content, words):
    d = repo.parent / "patches"
    d.mkdir(exist_ok=True)
    (d / "1.diff").write_text("")
    (d / "patches.json").write_text(content)
    res = patches(invoke, repo, d / "patches.json")
    assert res.code != 0 and "Traceback" not in res.err
    for w in words:
        assert w in res.last_error, (w, res.last_error)
