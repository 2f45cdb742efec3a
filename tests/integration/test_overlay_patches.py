"""`invoke overlay` and `invoke patches` on real repositories: strict parsing, loud failures, all or nothing,
and a checkout whose `git status` is the same after as before."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
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


MARKER = ".forkdev-overlay"  # what `invoke overlay` writes inside every overlay directory it makes
SECRET = b"bytes of a file outside the repository\n"


def tree(root: Path) -> dict[str, tuple]:
    """Everything under root, no link followed: a file's bytes and mode, a link's target, a directory."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode & 0o777)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mode & 0o777)
    return out


def refused(res, *words: str) -> None:
    """A user mistake: non-zero exit, no traceback, exactly one `error:` line (the last), naming `words`."""
    assert res.code != 0, res.err
    assert "Traceback" not in res.err, res.err
    errors = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert errors == [res.last_error], res.err
    for w in words:
        assert w in res.last_error, (w, res.last_error)


@pytest.fixture
def sandbox(tmp_path, repo) -> dict[str, str]:
    """Around the checkout: a home with a file in it, the user's notes, and a secret outside the repository.
    Returns the environment every run gets (HOME is the sandbox's: no test can touch the real one)."""
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("# the user's\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("the user's notes\n")
    (tmp_path / "notes.txt").write_text("a file of the user's\n")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return {"HOME": str(tmp_path / "home")}


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
        # An empty OLD matches between every two characters: X everywhere (a .py then fails to compile, a script
        # does not).
        ("\ntools/run.sh :: transform=replace:=>X", ["overlay.txt:2", "nothing to replace before '=>'"]),
        ("tools/run.sh :: transform=regex:=>X", ["overlay.txt:1", "transform 'regex' has nothing to replace"]),
        (".git/config -> git-config", ["overlay.txt:1", "src '.git/config' is under .git"]),
        (".git -> repo-git", ["overlay.txt:1", "src '.git' is under .git"]),
        ("vllm/config.py -> .git/hooks/post-checkout", ["overlay.txt:1", "dest '.git/hooks/post-checkout'"]),
        ("vllm/config.py -> pkg/./.git/config", ["overlay.txt:1", "under .git"]),
    ],
)
def test_bad_definitions_are_one_line_naming_file_and_line_and_write_nothing(invoke, repo, tmp_path, defs, words):
    dest = tmp_path / "ov"
    assert overlay(invoke, repo, "tools/run.sh -> previous.sh", "--dest", str(dest)).code == 0  # the last good run
    before = tree(dest)
    res = overlay(invoke, repo, defs, "--dest", str(dest))
    refused(res, *words)
    assert tree(dest) == before, "the last good overlay is intact"


def test_an_overlay_dir_inside_the_checkout_must_be_ignored(invoke, repo):
    refused = overlay(invoke, repo, "vllm/config.py", "--dest", str(repo / "ov"))
    assert refused.code != 0 and "not ignored" in refused.last_error
    before = status(repo)
    ok = overlay(invoke, repo, "vllm/config.py", "--dest", str(repo / "build" / "ov"))
    assert ok.code == 0, ok.err
    assert status(repo) == before


# ---- overlay: where it writes ---------------------------------------------------------------------------------
def _link(t: Path, target: Path) -> Path:
    (t / "link").symlink_to(target)
    return t / "link"


def _previous_overlay(t: Path) -> Path:
    (t / "old-ov").mkdir()
    (t / "old-ov" / MARKER).write_text("")
    return t / "old-ov"


def _marked(d: Path) -> Path:
    (d / MARKER).write_text("")
    return d


@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(lambda t: t, ["contains the checkout"], id="the checkout's parent"),
        pytest.param(lambda t: t / "fork" / "..", ["contains the checkout"], id="the checkout's parent as fork/.."),
        pytest.param(lambda t: t / "fork", ["is the checkout"], id="the checkout itself"),
        pytest.param(lambda t: t / "notes", ["exists", "not made by invoke overlay"], id="a directory of the user's"),
        pytest.param(lambda t: "~", ["home directory"], id="the home directory"),
        pytest.param(lambda t: t / "notes.txt", ["is a file"], id="a file"),
        pytest.param(lambda t: _link(t, t / "notes"), ["is a symlink"], id="a symlink to a directory"),
        pytest.param(lambda t: _link(t, _previous_overlay(t)), ["is a symlink"], id="a symlink to a previous overlay"),
        pytest.param(lambda t: _link(t, t / "gone"), ["is a symlink"], id="a dangling symlink"),
        pytest.param(lambda t: _marked(t), ["contains the checkout"], id="a marked directory holding the checkout"),
        pytest.param(lambda t: _marked(t / "home"), ["home directory"], id="a marked home directory"),
        pytest.param(lambda t: "/", ["filesystem root"], id="the filesystem root"),
    ],
)
def test_an_overlay_destination_the_tool_did_not_make_is_refused_and_left_alone(
    invoke, repo, sandbox, tmp_path, make, words
):
    (tmp_path / "overlay.txt").write_text("vllm/config.py\n")
    dest = str(make(tmp_path))
    before = tree(tmp_path)
    res = invoke(
        "overlay", "--repo", str(repo), "--definitions", str(tmp_path / "overlay.txt"), "--dest", dest, env=sandbox
    )
    refused(res, *words)
    assert tree(tmp_path) == before


def test_a_relative_dest_is_taken_from_the_working_directory_and_dot_dot_is_no_way_around(
    invoke, repo, sandbox, tmp_path
):
    (tmp_path / "overlay.txt").write_text("vllm/config.py\n")
    before = tree(tmp_path)
    res = invoke("overlay", "--definitions", str(tmp_path / "overlay.txt"), "--dest", "..", env=sandbox, cwd=repo)
    refused(res, "contains the checkout")
    assert tree(tmp_path) == before
    ok = invoke("overlay", "--definitions", str(tmp_path / "overlay.txt"), "--dest", "../ov", env=sandbox, cwd=repo)
    assert ok.code == 0, ok.err
    assert (tmp_path / "ov" / "vllm" / "config.py").read_bytes() == (repo / "vllm" / "config.py").read_bytes()


def test_a_previous_overlay_is_replaced_whole_and_nothing_is_left_beside_it(invoke, repo, sandbox, tmp_path):
    dest = tmp_path / "ov"
    first = overlay(invoke, repo, "vllm/config.py\ntools/run.sh\n", "--dest", str(dest))
    assert first.code == 0, first.err
    assert (dest / MARKER).is_file()
    second = overlay(invoke, repo, "vllm/envs.py\n", "--dest", str(dest))
    assert second.code == 0, second.err
    assert sorted(tree(dest)) == [MARKER, "vllm", "vllm/envs.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fork",
        "home",
        "notes",
        "notes.txt",
        "ov",
        "overlay.txt",
        "secret.txt",
    ]


@pytest.mark.parametrize("added", ["notes.txt", "vllm/notes.txt", "link"])
def test_a_file_the_user_put_in_an_overlay_directory_stops_the_replacement(invoke, repo, tmp_path, added):
    dest = tmp_path / "ov"
    assert overlay(invoke, repo, "vllm/config.py", "--dest", str(dest)).code == 0
    if added == "link":
        (tmp_path / "elsewhere").mkdir()
        (dest / "link").symlink_to(tmp_path / "elsewhere")
    else:
        (dest / added).write_text("the user's\n")
    before = tree(dest)
    res = overlay(invoke, repo, "vllm/envs.py", "--dest", str(dest))
    refused(res, added, "did not write", "move it out")
    assert tree(dest) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ov.")] == []
    os.unlink(dest / added)
    assert overlay(invoke, repo, "vllm/envs.py", "--dest", str(dest)).code == 0


def test_a_failure_while_writing_leaves_no_staging_directory_and_the_last_overlay_intact(invoke, repo, tmp_path):
    dest = tmp_path / "ov"
    assert overlay(invoke, repo, "vllm/config.py", "--dest", str(dest)).code == 0
    before = tree(dest)
    deep = "/".join(["d" * 200] * 20) + "/config.py"  # a valid relative path; too long once under the overlay
    res = overlay(invoke, repo, f"vllm/config.py -> {deep}", "--dest", str(dest))
    refused(res, "too long")
    assert tree(dest) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ov.")] == []


def test_a_killed_overlay_run_leaves_staging_that_the_next_run_removes(invoke, repo, cache_dir, tmp_path):
    big = repo / "build" / "big"  # ignored by git: the checkout's status is not the point here
    for i in range(400):
        (big / f"d{i % 20}").mkdir(parents=True, exist_ok=True)
        (big / f"d{i % 20}" / f"f{i}.bin").write_bytes(os.urandom(256 * 1024))
    (tmp_path / "overlay.txt").write_text("vllm/config.py\nbuild/big -> big\n")
    dest = tmp_path / "ov"
    argv = support.invoke_argv(
        "overlay", "--repo", str(repo), "--definitions", str(tmp_path / "overlay.txt"), "--dest", str(dest)
    )
    env = {**os.environ, "INVOKE_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    staging: list[Path] = []
    while not staging and time.monotonic() < deadline and proc.poll() is None:
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".ov.new-")]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging, "the run was killed while it wrote its staging directory"
    assert staging[0].exists() and not dest.exists()
    res = overlay(invoke, repo, "vllm/config.py\nbuild/big -> big\n", "--dest", str(dest))
    assert res.code == 0, res.err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ov.")] == []
    assert (dest / "big" / "d3" / "f3.bin").read_bytes() == (big / "d3" / "f3.bin").read_bytes()
    assert len(list((dest / "big").rglob("*.bin"))) == 400


# ---- overlay: what it reads -----------------------------------------------------------------------------------
@pytest.fixture
def links(repo, tmp_path) -> Path:
    """Symlinks in the checkout: one inside it, and three kinds that lead out of it."""
    d = repo / "links"
    d.mkdir()
    (d / "inside").symlink_to("../vllm/config.py")
    (d / "outside-abs").symlink_to(tmp_path / "secret.txt")
    (d / "outside-rel").symlink_to("../../secret.txt")
    (d / "outside-dir").symlink_to(tmp_path)
    (repo / "vllm" / "alias.py").symlink_to("config.py")
    return d


@pytest.mark.parametrize(
    ("defs", "link"),
    [
        ("links", "links/outside-abs"),
        ("links -> l", "links/outside-abs"),
        ("links/outside-abs", "links/outside-abs"),
        ("links/outside-rel -> x.txt", "links/outside-rel"),
        ("links/outside-dir/secret.txt", "links/outside-dir"),
        ("links/outside-dir -> d", "links/outside-dir"),
    ],
)
def test_a_symlink_leading_out_of_the_repository_is_refused_naming_line_and_link(
    invoke, repo, sandbox, links, tmp_path, defs, link
):
    dest = tmp_path / "ov"
    res = overlay(invoke, repo, f"vllm/config.py\n{defs}\n", "--dest", str(dest))
    refused(res, "overlay.txt:2", link, "outside the repository")
    assert not dest.exists()


def test_a_symlink_inside_the_repository_is_copied_as_a_link(invoke, repo, sandbox, links, tmp_path):
    dest = tmp_path / "ov"
    res = overlay(invoke, repo, "vllm\nlinks/inside\n", "--dest", str(dest))
    assert res.code == 0, res.err
    assert os.readlink(dest / "vllm" / "alias.py") == "config.py"
    assert os.readlink(dest / "links" / "inside") == "../vllm/config.py"
    assert (dest / "links" / "inside").read_bytes() == (repo / "vllm" / "config.py").read_bytes()


def test_a_link_that_would_point_out_of_the_overlay_from_its_new_place_is_refused(invoke, repo, links, tmp_path):
    res = overlay(invoke, repo, "links/inside -> inside", "--dest", str(tmp_path / "ov"))
    refused(res, "overlay.txt:1", "links/inside", "outside the overlay")
    transformed = overlay(invoke, repo, "vllm/alias.py :: transform=header:# x", "--dest", str(tmp_path / "ov"))
    refused(transformed, "overlay.txt:1", "symlink")


def test_definitions_that_are_a_link_out_of_the_checkout_are_not_read(invoke, repo, sandbox, tmp_path):
    (repo / "extras").mkdir()
    (repo / "extras" / "overlay.txt").symlink_to(tmp_path / "secret.txt")
    res = invoke("overlay", "--repo", str(repo), "--dest", str(tmp_path / "ov"), env=sandbox)
    refused(res, "extras/overlay.txt", "outside")
    assert SECRET.decode().strip() not in res.err


# ---- overlay: any input ---------------------------------------------------------------------------------------
def _nul_py(repo: Path) -> None:
    (repo / "vllm" / "nul.py").write_bytes(b"X = 1\x00\n")


@pytest.mark.parametrize(
    ("defs", "words", "setup"),
    [
        (b"vllm/config.py\n\xff\xfe -> x\n", ["overlay.txt:2", "UTF-8"], None),
        (b"vllm/config.py\x00 -> x\n", ["overlay.txt:1", "control character"], None),
        (b"vllm/" + b"x" * 300 + b".py\n", ["overlay.txt:1", "255 bytes"], None),
        (b"vllm/config.py -> " + b"d/" * 2100 + b"x\n", ["overlay.txt:1", "too long"], None),
        (b"vllm/config.py -> .\n", ["overlay.txt:1", "the overlay directory itself"], None),
        (b"vllm/config.py -> x/..\n", ["overlay.txt:1", "the overlay directory itself"], None),
        (b"vllm/config.py -> a\nvllm/envs.py -> a/b\n", ["overlay.txt:2", "'a'", "overlay.txt:1"], None),
        (b"vllm/config.py -> a/b\nvllm/envs.py -> a\n", ["overlay.txt:2", "'a'", "overlay.txt:1"], None),
        (b"vllm/config.py -> .forkdev-overlay\n", ["overlay.txt:1", ".forkdev-overlay"], None),
        (b"vllm/config.py :: transform=regex:" + b"(" * 2000 + b"=>x\n", ["overlay.txt:1", "regex"], None),
        (b"vllm/nul.py :: transform=replace:X=>Y\n", ["overlay.txt:1", "does not compile"], _nul_py),
        (b"vllm/config.py :: transform=header:\x1b[2J\n", ["overlay.txt:1", "control character"], None),
    ],
)
def test_any_definition_is_a_result_or_one_line_naming_file_and_line(invoke, repo, tmp_path, defs, words, setup):
    if setup:
        setup(repo)
    (tmp_path / "overlay.txt").write_bytes(defs)
    res = invoke(
        "overlay", "--repo", str(repo), "--definitions", str(tmp_path / "overlay.txt"), "--dest", str(tmp_path / "ov")
    )
    refused(res, *words)
    assert not (tmp_path / "ov").exists()


def test_a_source_that_leads_into_git_by_a_symlink_is_refused_and_git_is_not_read(invoke, repo, tmp_path):
    (repo / "gitdir").symlink_to(".git")
    res = overlay(invoke, repo, "gitdir/config -> c\n", "--dest", str(tmp_path / "ov"))
    refused(res, "overlay.txt:1", "src 'gitdir/config' leads into .git")
    assert not (tmp_path / "ov").exists()


def test_a_directory_can_land_at_the_overlay_root(invoke, repo, tmp_path):
    res = overlay(invoke, repo, "vllm -> .", "--dest", str(tmp_path / "ov"))
    assert res.code == 0, res.err
    assert sorted(tree(tmp_path / "ov")) == [MARKER, "config.py", "envs.py"]


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


def patches(invoke, repo, reg, *args, env=None, cwd=None):
    return invoke("patches", "--repo", str(repo), "--registry", str(reg), "--json", *args, env=env, cwd=cwd)


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
    for flag in ("--check", "--dry-run"):  # git apply's word, and every task's
        res = patches(invoke, repo, reg, flag, "--into", "checkout")
        assert res.code == 0, res.err
        assert res.json["check"] is True and res.json["changed"] == ["vllm/config.py"]
        assert (status(repo), (repo / "vllm/config.py").read_bytes()) == before
    ov = tmp_path / "ov"
    assert overlay(invoke, repo, "vllm/config.py", "--dest", str(ov)).code == 0
    res = patches(invoke, repo, reg, "--into", "overlay", env={"INVOKE_OVERLAY_DEST": str(ov)})
    assert res.code == 0, res.err
    assert res.json["skipped"] == ["env"] and [p["name"] for p in res.json["patches"]] == ["max"]
    assert (ov / "vllm/config.py").read_text() == "MAX = 5\nNAME = 'vllm'\n"
    again = overlay(invoke, repo, "vllm/config.py", "--dest", str(ov))
    assert again.code == 0, "what patches wrote into the overlay is the tool's: the next overlay replaces it"


def test_a_dry_run_makes_no_cache_either(invoke, repo, tmp_path):
    """--check / --dry-run change nothing, the cache included: neither task makes the cache directory (or the
    worktree of HEAD in it) to report what it would do."""
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 5\n")})
    cache = tmp_path / "fresh-cache"
    env = {"INVOKE_CACHE_DIR": str(cache)}
    for into in ("worktree", "overlay"):
        res = patches(invoke, repo, reg, "--check", "--into", into, env=env)
        assert res.code == 0 if into == "worktree" else "run 'invoke overlay' first" in res.last_error, res.err
        assert not cache.exists(), f"patches --check --into {into} made the cache"
    defs = repo.parent / "overlay.txt"
    defs.write_text("vllm/config.py\n")
    res = invoke("overlay", "--repo", str(repo), "--definitions", str(defs), "--dry-run", env=env)
    assert res.code == 0 and "would write 1 files" in res.err, res.err
    assert not cache.exists(), "overlay --dry-run made the cache"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_file_patches_create_in_the_overlay_is_the_tools_to_replace(invoke, repo, tmp_path):
    (repo / "vllm/new.py").write_text("NEW = 1\n")
    git(repo, "add", "-N", "vllm/new.py")
    created = git(repo, "diff", "--", "vllm/new.py").encode() + b"\n"
    git(repo, "rm", "-q", "--cached", "vllm/new.py")
    (repo / "vllm/new.py").unlink()
    reg = registry(repo, [{"name": "new", "diff": "n.diff"}], {"n.diff": created})
    ov = tmp_path / "ov"
    assert overlay(invoke, repo, "vllm/config.py", "--dest", str(ov)).code == 0
    res = patches(invoke, repo, reg, "--into", "overlay", env={"INVOKE_OVERLAY_DEST": str(ov)})
    assert res.code == 0, res.err
    assert (ov / "vllm/new.py").read_text() == "NEW = 1\n"
    again = overlay(invoke, repo, "vllm/config.py", "--dest", str(ov))
    assert again.code == 0, again.err
    assert sorted(tree(ov)) == [MARKER, "vllm", "vllm/config.py"]


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


# ---- patches: where they write --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(lambda t: t / "notes", ["exists", "not made by invoke overlay"], id="a directory of the user's"),
        pytest.param(lambda t: "~", ["home directory"], id="the home directory"),
        pytest.param(lambda t: t / "notes.txt", ["is a file"], id="a file"),
        pytest.param(lambda t: t / "fork", ["is the checkout"], id="the checkout"),
        pytest.param(lambda t: t / "none", ["no overlay", "invoke overlay"], id="no overlay yet"),
    ],
)
def test_patches_into_overlay_follow_the_overlay_destination_rules(invoke, repo, sandbox, tmp_path, make, words):
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 6\n")})
    before = tree(tmp_path)
    res = patches(invoke, repo, reg, "--into", "overlay", env={**sandbox, "INVOKE_OVERLAY_DEST": str(make(tmp_path))})
    refused(res, *words)
    assert tree(tmp_path) == before


def target_dir(tmp_path: Path) -> Path:
    t = tmp_path / "target"
    (t / "vllm").mkdir(parents=True)
    (t / "vllm/config.py").write_text("MAX = 1\nNAME = 'vllm'\n")
    return t


def link_diff(tmp_path: Path, path: str, target: str) -> bytes:
    """The diff git writes for a commit that adds the symlink `path` -> `target`."""
    scratch = tmp_path / "link-diff"
    scratch.mkdir(exist_ok=True)
    git(scratch, "init", "-q")
    (scratch / path).parent.mkdir(parents=True, exist_ok=True)
    (scratch / path).symlink_to(target)
    git(scratch, "add", "-A")
    return git(scratch, "diff", "--cached").encode() + b"\n"


@pytest.mark.parametrize(
    "target", ["{secret}", "../../secret.txt", "../../../../../../../../../../etc/passwd", "/etc/passwd"]
)
def test_a_patch_that_creates_a_link_out_of_the_target_is_refused(invoke, repo, sandbox, tmp_path, target):
    t = target_dir(tmp_path)
    link = target.format(secret=tmp_path / "secret.txt")
    reg = registry(repo, [{"name": "evil", "diff": "l.diff"}], {"l.diff": link_diff(tmp_path, "vllm/evil", link)})
    before = tree(t)
    res = patches(invoke, repo, reg, "--into", str(t), env=sandbox)
    refused(res, "vllm/evil", "symlink", "outside")
    assert tree(t) == before


def test_a_patch_that_creates_a_link_inside_the_target_makes_that_link(invoke, repo, tmp_path):
    t = target_dir(tmp_path)
    reg = registry(
        repo, [{"name": "alias", "diff": "l.diff"}], {"l.diff": link_diff(tmp_path, "vllm/alias", "config.py")}
    )
    res = patches(invoke, repo, reg, "--into", str(t))
    assert res.code == 0, res.err
    assert os.readlink(t / "vllm/alias") == "config.py"
    back = patches(invoke, repo, reg, "--into", str(t), "--reverse")
    assert back.code == 0, back.err
    assert not os.path.lexists(t / "vllm/alias")


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_patched_path_under_a_symlinked_directory_is_refused(invoke, repo, sandbox, tmp_path, where):
    t = tmp_path / "target"
    real = tmp_path / "elsewhere" if where == "outside" else t / "real"
    real.mkdir(parents=True)
    (real / "config.py").write_text("MAX = 1\nNAME = 'vllm'\n")
    t.mkdir(exist_ok=True)
    (t / "vllm").symlink_to(real)
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 7\n")})
    before = tree(tmp_path / "elsewhere") if where == "outside" else tree(t)
    res = patches(invoke, repo, reg, "--into", str(t), env=sandbox)
    refused(res, "vllm/config.py", "symlink")
    assert (tree(tmp_path / "elsewhere") if where == "outside" else tree(t)) == before


def test_a_symlink_at_a_patched_path_is_never_written_through_nor_read(invoke, repo, sandbox, tmp_path):
    t = target_dir(tmp_path)
    outside = tmp_path / "outside-config.py"
    outside.write_text("MAX = 1\nNAME = 'vllm'\n")
    (t / "vllm/config.py").unlink()
    (t / "vllm/config.py").symlink_to(outside)
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 8\n")})
    res = patches(invoke, repo, reg, "--into", str(t), env=sandbox)
    assert res.code != 0 and "Traceback" not in res.err, res.err
    assert [p["status"] for p in res.json["patches"]] == ["failed"]
    assert os.readlink(t / "vllm/config.py") == str(outside)
    assert outside.read_text() == "MAX = 1\nNAME = 'vllm'\n"


def test_the_default_worktree_leaves_the_users_other_worktrees_alone(invoke, repo, tmp_path):
    other = tmp_path / "other-worktree"  # e.g. on a disk that is not mounted now
    git(repo, "worktree", "add", "-q", "--detach", str(other))
    support.sh("rm", "-rf", other)
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 9\n")})
    res = patches(invoke, repo, reg)
    assert res.code == 0, res.err
    again = patches(invoke, repo, reg)
    assert again.code == 0, again.err
    assert f"worktree {other}" in git(repo, "worktree", "list", "--porcelain").splitlines()


# ---- patches: any input, no temporary directory left ----------------------------------------------------------
STALE = b"--- a/vllm/config.py\n+++ b/vllm/config.py\n@@ -1 +1 @@\n-MAX = 99\n+MAX = 100\n"
ESCAPING = b"--- a/../../outside.py\n+++ b/../../outside.py\n@@ -1 +1 @@\n-x\n+y\n"
REGISTRIES = [
    pytest.param(b"[" * 100_000, ["patches.json", "nests too deeply"], id="deeply nested JSON"),
    pytest.param(b'\xff\xfe{"patches": []}', ["patches.json", "not valid JSON"], id="not UTF-8"),
    pytest.param(b"not json", ["not valid JSON"], id="not JSON"),
    pytest.param(b'{"patches": [{"name": "a\\nb", "diff": "1.diff"}]}', ["entry 1", '"name"'], id="name of 2 lines"),
    pytest.param(b'{"patches": [{"name": "x", "diff": "1.diff\\u0000"}]}', ["entry 1", "control character"], id="NUL"),
    pytest.param(b'{"patches": [{"name": "x", "diff": "' + b"d" * 300 + b'"}]}', ["entry 1", "255 bytes"], id="long"),
    pytest.param(
        b'{"patches": [{"name": "x", "diff": "1.diff", "skip_in_overlay": "no"}]}',
        ["entry 1", "true or false"],
        id="skip",
    ),
    pytest.param(
        b'{"patches": [{"name": "x", "diff": "s.diff", "fallback": {"type": "regex_replace", "file": "/etc/passwd", '
        b'"pattern": "x", "replacement": "y"}}]}',
        ["entry 1", "fallback", "relative"],
        id="absolute fallback file",
    ),
    pytest.param(
        b'{"patches": [{"name": "x", "diff": "e.diff"}]}',
        ["entry 1", "../../outside.py", "escapes"],
        id="escaping diff",
    ),
    pytest.param(
        b'{"patches": [{"name": "x", "diff": "s.diff", "fallback": {"type": "regex_replace", "file": "vllm/config.py", '
        b'"pattern": "' + b"(" * 2000 + b'", "replacement": "y"}}]}',
        ["1 of 1 patches do not apply"],
        id="fallback regex nested too deeply",
    ),
    pytest.param(b'{"patches": [{"name": "x", "diff": "s.diff"}]}', ["1 of 1 patches do not apply"], id="stale"),
]


@pytest.mark.parametrize(("content", "words"), REGISTRIES)
def test_any_registry_is_one_line_and_leaves_no_temporary_directory(invoke, repo, tmp_path, content, words):
    d = repo.parent / "patches"
    d.mkdir()
    (d / "1.diff").write_text("")
    (d / "s.diff").write_bytes(STALE)
    (d / "e.diff").write_bytes(ESCAPING)
    (d / "patches.json").write_bytes(content)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    t = target_dir(tmp_path)
    before = tree(t)
    res = patches(invoke, repo, d / "patches.json", "--into", str(t), env={"TMPDIR": str(tmpdir)})
    refused(res, *words)
    assert tree(t) == before
    assert list(tmpdir.iterdir()) == [], "no forkdev-patches-* directory is left behind"


def test_a_refused_patch_leaves_no_temporary_directory(invoke, repo, sandbox, tmp_path):
    t = target_dir(tmp_path)
    (t / "vllm" / "outside").symlink_to(tmp_path / "notes")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**sandbox, "TMPDIR": str(tmpdir)}
    cases = {
        "evil.diff": link_diff(tmp_path, "vllm/evil", "/etc/passwd"),
        "through.diff": diff_of(repo, "vllm/config.py", "MAX = 10\n").replace(b"vllm/config.py", b"vllm/outside/x.py"),
    }
    for name, diff in cases.items():
        reg = registry(repo, [{"name": name, "diff": name}], {name: diff})
        refused(patches(invoke, repo, reg, "--into", str(t), env=env))
    assert list(tmpdir.iterdir()) == []


# ---- hostile flags and config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--dest=-x"], {}, ["--dest", "starts with '-'"]),
        (["--definitions=-x"], {}, ["--definitions", "starts with '-'"]),
        (["--repo=-x"], {}, ["--repo", "starts with '-'"]),
        ([], {"INVOKE_OVERLAY_DEST": "-x"}, ["overlay.dest", "starts with '-'"]),
        ([], {"INVOKE_OVERLAY_REPO": "-x"}, ["overlay.repo", "starts with '-'"]),
        (["--dest", "o" * 5000], {}, ["too long"]),
        (["--dest", "/".join(["o" * 250] * 20)], {}, ["too long"]),
        (["--dest", os.fsdecode(b"ov-\xff")], {}, ["--dest", "UTF-8"]),
        (["--definitions", "../overlay.txt"], {}, ["--definitions", "outside the checkout", "absolute path"]),
        (["--definitions", os.fsdecode(b"\xff")], {}, ["--definitions", "UTF-8"]),
    ],
)
def test_hostile_overlay_flags_and_config_are_one_line(invoke, repo, sandbox, tmp_path, args, env, words):
    (tmp_path / "overlay.txt").write_text("vllm/config.py\n")
    defs = [] if any(a.startswith("--definitions") for a in args) else ["--definitions", str(tmp_path / "overlay.txt")]
    before = tree(tmp_path)
    res = invoke("overlay", *defs, *args, env={**sandbox, **env}, cwd=repo)  # the checkout is '.', the default
    refused(res, *words)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--into=-x"], {}, ["--into", "starts with '-'"]),
        (["--registry=-x"], {}, ["--registry", "starts with '-'"]),
        ([], {"INVOKE_PATCHES_INTO": ""}, ["patches.into", "empty"]),
        ([], {"INVOKE_PATCHES_INTO": "-x"}, ["patches.into", "starts with '-'"]),
        (["--into", "{tmp}/notes.txt"], {}, ["--into", "not a directory"]),
        (["--into", "{tmp}/missing"], {}, ["--into", "not a directory"]),
        (["--into", "o" * 5000], {}, ["too long"]),
        (["--registry", "../patches/patches.json"], {}, ["--registry", "outside the checkout", "absolute path"]),
        (["--registry", os.fsdecode(b"\xff.json")], {}, ["--registry", "UTF-8"]),
    ],
)
def test_hostile_patches_flags_and_config_are_one_line(invoke, repo, sandbox, tmp_path, args, env, words):
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 11\n")})
    reg_args = [] if any(a.startswith("--registry") for a in args) else ["--registry", str(reg)]
    before = tree(tmp_path)
    res = invoke(
        "patches",
        "--repo",
        str(repo),
        *reg_args,
        *(a.format(tmp=tmp_path) for a in args),
        env={**sandbox, **env},
        cwd=repo,
    )
    refused(res, *words)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("cache", "words"), [("-cache", ["cache_dir", "starts with '-'"]), ("", ["cache_dir", "empty"])]
)
def test_a_cache_dir_that_looks_like_an_option_is_refused(invoke, repo, tmp_path, cache, words):
    reg = registry(repo, [{"name": "max", "diff": "1.diff"}], {"1.diff": diff_of(repo, "vllm/config.py", "MAX = 12\n")})
    refused(patches(invoke, repo, reg, env={"INVOKE_CACHE_DIR": cache}, cwd=tmp_path), *words)
    refused(invoke("overlay", "--repo", str(repo), env={"INVOKE_CACHE_DIR": cache}, cwd=tmp_path), *words)
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fork", "patches"]
