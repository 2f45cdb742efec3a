"""Real components for tests and benchmarks: a Debian image made from nothing, a vLLM-shaped repository made
from the manifest of the real tree, base images built on the real engine, and a real registry on loopback. What
`invoke demo` makes too (the tree, the buildable upstream, the cmake package, the debootstrap image) is the
product's own code, forkdev/core/sandbox.py, used here as it is.

Nothing here is a double: the engine, git, debootstrap and the registry are the real programs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import posixpath
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from forkdev.core import sandbox
from forkdev.core.engine import Engine
from forkdev.core.proc import Runner

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data"  # copied from shared/data: facts about real vLLM commits
CACHE = Path(os.path.expanduser(os.environ.get("FORKDEV_TEST_CACHE", "~/.cache/forkdev-tests")))
OS_IMAGE = "forkdev-test/debian:bookworm"

# This test session's own mark on the images it builds from its own repositories: sessions on one machine share
# the engines, and a base tagged by a name another session builds too would move under the tests using it.
SESSION = os.urandom(3).hex()


def own(ref: str) -> str:
    """`ref` as this session's own tag: forkdev-test/NAME:TAG-SESSION (still swept with forkdev-test/)."""
    return f"{ref}-{SESSION}"


SITE = sandbox.SITE


def sh(
    *argv: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a fixture command; its failure fails the test with the command's stderr."""
    res = subprocess.run(
        [str(a) for a in argv], cwd=cwd, input=input, capture_output=True, env={**os.environ, **(env or {})}
    )
    if res.returncode != 0:
        raise RuntimeError(f"{argv!r} failed ({res.returncode}): {res.stderr.decode(errors='replace')[-2000:]}")
    return res.stdout.decode(errors="replace").strip()


def assert_one_line_error(res, *words: str) -> None:
    """A refused task (conftest.Invoked): non-zero, no traceback, its last line one error holding every word."""
    assert res.code != 0
    assert "Traceback" not in res.err
    assert res.last_error.startswith("error: "), res.err
    for w in words:
        assert w in res.last_error, (w, res.last_error)


def wait_for(check, what: str, timeout: float = 30.0):
    """The first true value of `check()`, asked every 50 ms; a failed assertion naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def invoke_argv(*args: str) -> list[str]:
    """`invoke ARGS` run from the project, as a user runs it (the interpreter of the tests)."""
    return [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]


# ---- git ---------------------------------------------------------------------------------------------------
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    return sh(
        "git",
        "-C",
        repo,
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
        *args,
        input=input,
        env=GIT_ENV,
    )


def write_files(root: Path, files: dict[str, str | None]) -> None:
    """Write each file (parents made); None deletes it."""
    for path, text in files.items():
        f = root / path
        if text is None:
            f.unlink()
        else:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


manifest, content, write_tree = sandbox.manifest, sandbox.content, sandbox.write_tree


def make_upstream(root: Path, limit_bytes: int | None = 2048) -> str:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    write_tree(root, limit_bytes)
    return commit_all(root, "upstream: the tree")


# ---- images --------------------------------------------------------------------------------------------------
def rootfs_tar() -> Path:
    """A minbase Debian bookworm with python3 and git (debootstrap, the product's own code), cached in CACHE."""
    return sandbox.rootfs_tar(CACHE, Runner(echo=False))


def ensure_os_image(engine: Engine) -> str:
    sandbox.os_image(engine, Runner(echo=False), OS_IMAGE, CACHE)
    return OS_IMAGE


def build_image(engine: Engine, context: Path, dockerfile: str, tag: str) -> str:
    (context / "Dockerfile").write_text(dockerfile)
    sh(engine.exe, "build", "--network", "host", "-q", "-t", tag, context, env=engine.build_env(buildkit=False))
    return tag


def remove_test_images(engine: Engine, namespaces: tuple[str, ...] = ("forkdev-test",), loopback: bool = True) -> None:
    """Remove every image made under `namespaces` (forkdev-test/ for the tests, forkdev-bench/ for the benchmarks)
    and, with `loopback`, every image tagged for a loopback registry (the tests' own registries)."""
    listing = sh(engine.exe, "images", "--format", "{{.Repository}}:{{.Tag}}")
    mine = [
        ref
        for ref in listing.splitlines()
        if ref.removeprefix("localhost/").split("/", 1)[0] in namespaces or (loopback and ref.startswith("127.0.0.1:"))
    ]
    if mine:
        subprocess.run([engine.exe, "image", "rm", "-f", *mine], capture_output=True)
    subprocess.run([engine.exe, "image", "prune", "-f"], capture_output=True)


def settle_checkout(checkout: Path) -> None:
    """A fresh checkout made as a user's (or a base image's) is: its files older than its index (a benchmark's git
    baseline otherwise looks slower than it is: a fork-sync merge 0.31 s, not 0.12 s)."""
    sandbox.age(checkout, [p for p in git(checkout, "ls-files", "-z").split("\0") if p])
    git(checkout, "update-index", "-q", "--refresh")


def build_base(
    engine: Engine,
    repo: Path,
    commit: str,
    tag: str,
    *,
    kind: str = "editable",
    entrypoint: str | None = None,
    label: str = "org.opencontainers.image.revision",
    with_git: bool = False,
    compile_bytecode: bool = False,
) -> str:
    """A base image holding `repo` at `commit` the way vLLM images do:
    kind="editable": the whole source tree at /opt/vllm-source, found through a .pth file;
    kind="site": only the package, in site-packages (like the official vllm-openai image).
    Both get a fake compiled extension vllm/_C.abi3.so, as a real build would leave. Files keep the commit's
    time as their mtime (git archive sets it, COPY keeps it); compile_bytecode=True byte-compiles the package
    as an image build does, so its .pyc files record those mtimes."""
    ensure_os_image(engine)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        src = ctx / "src"
        if with_git:  # the naive way needs a .git inside the base
            sh("git", "clone", "-q", "--no-checkout", repo, src)
            sh("git", "-C", src, "checkout", "-q", "--detach", commit)
            settle_checkout(src)  # as a real base's: its build ran git (setuptools-scm) long after the checkout
        else:
            src.mkdir()
            sh(
                "tar",
                "-x",
                "-C",
                src,
                input=subprocess.run(
                    ["git", "-C", str(repo), "archive", commit], capture_output=True, check=True
                ).stdout,
            )
        so = os.urandom(64 * 1024)
        if kind == "editable":
            (src / "vllm" / "_C.abi3.so").write_bytes(so)
            steps = [
                "COPY src /opt/vllm-source",
                f"RUN mkdir -p {SITE} && echo /opt/vllm-source > {SITE}/vllm-editable.pth",
            ]
            package = "/opt/vllm-source/vllm"
        else:
            pkg = ctx / "pkg"
            shutil.copytree(src / "vllm", pkg)
            (pkg / "_C.abi3.so").write_bytes(so)
            shutil.rmtree(src)
            steps = [f"COPY pkg {SITE}/vllm"]
            package = f"{SITE}/vllm"
        if with_git:  # the index as git in the image sees the files (COPY gave them new ctimes and inodes)
            steps.append("RUN git -C /opt/vllm-source update-index -q --refresh")
        if compile_bytecode:
            steps.append(f"RUN python3 -m compileall -q {package}/envs.py {package}/sampling_params.py")
        lines = [f"FROM {OS_IMAGE}", *steps]
        if label:
            lines.append(f'LABEL {label}="{commit}"')
        if entrypoint:
            lines.append(f"ENTRYPOINT {entrypoint}")
        return build_image(engine, ctx, "\n".join(lines) + "\n", tag)


def derive_image(engine: Engine, parent: str, tag: str, *lines: str) -> str:
    """A metadata-only image on top of `parent` (USER, ENTRYPOINT, ...): cheap, no copy of the tree."""
    with tempfile.TemporaryDirectory() as tmp:
        return build_image(engine, Path(tmp), "\n".join([f"FROM {parent}", *lines]) + "\n", tag)


def image_file(engine: Engine, image: str, path: str) -> bytes | None:
    """The bytes of a file inside an image, or None when it is absent."""
    res = subprocess.run(
        [engine.exe, "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "cat", image, path],
        capture_output=True,
    )
    return res.stdout if res.returncode == 0 else None


def in_image(engine: Engine, image: str, *argv: str, entrypoint: str | None = None) -> str:
    """Run a command in a container of `image` (its own entrypoint unless one is given); its stdout."""
    override = ["--entrypoint", entrypoint] if entrypoint else []
    return sh(engine.exe, "run", "--rm", "--network", "none", *override, image, *argv)


def inspect(engine: Engine, ref: str) -> dict:
    import json

    return json.loads(sh(engine.exe, "image", "inspect", ref))[0]


# ---- registry ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, seconds: float = 20) -> bool:
    """Whether a server started on 127.0.0.1:`port` accepts connections within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


class Registry:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, storing into a temporary directory; with `users`
    ({name: password}) it asks for HTTP basic auth (htpasswd, bcrypt) as a private registry does."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        conf = workdir / "registry.yml"
        auth = ""
        if users:
            import bcrypt

            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(
                "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}\n" for u, p in users.items())
            )
            auth = f"auth:\n  htpasswd:\n    realm: forkdev-test\n    path: {htpasswd}\n"
        conf.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
        )
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([exe, "serve", str(conf)], stdout=self.log, stderr=self.log)
        if not listening(self.port):
            self.stop()
            raise RuntimeError(f"docker-registry did not listen on {self.host}")

    def tags(self, repository: str) -> list[str]:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://{self.host}/v2/{repository}/tags/list", timeout=10) as r:
            return sorted(json.load(r).get("tags") or [])

    def retag(self, repository: str, source: str, tag: str) -> str:
        """Put the manifest `source` names under `tag` too, as `crane tag` does: one manifest, two tags. Returns
        the manifest's digest."""
        import urllib.request

        url = f"http://{self.host}/v2/{repository}/manifests/"
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        with urllib.request.urlopen(urllib.request.Request(url + source, headers={"Accept": accept}), timeout=10) as r:
            body, kind, digest = r.read(), r.headers["Content-Type"], r.headers["Docker-Content-Digest"]
        put = urllib.request.Request(url + tag, data=body, method="PUT", headers={"Content-Type": kind})
        urllib.request.urlopen(put, timeout=10).close()
        return digest

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class GitDaemon:
    """`git daemon` on 127.0.0.1 serving the repositories under `root` read-only at git://HOST:PORT/NAME: an
    upstream that a BuildKit git context can fetch (it cannot fetch a commit of a local path)."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}", "--listen=127.0.0.1",
             f"--port={self.port}", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not listening(self.port):
            self.stop()
            raise RuntimeError(f"git daemon did not listen on 127.0.0.1:{self.port}")

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class FaultyRegistry:
    """A loopback HTTP server that answers every request with one status, for the faults a real registry will not
    produce on demand (429, 500, a 401 that no login fixes, a registry that accepts and never answers). It counts
    the requests it got."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, hang: bool = False) -> None:
        import http.server
        import threading

        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests += 1
                if hang:
                    time.sleep(60)
                    return
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                body = b'{"errors":[{"code":"FAULT","message":"injected by the test"}]}'
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> FaultyRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- a buildable upstream, for the full builds of nightly and batch ------------------------------------------
def make_buildable_upstream(root: Path, os_image: str | None = None, limit_bytes: int = 512) -> str:
    """A vLLM-shaped upstream whose docker/Dockerfile builds in seconds from the debootstrap image. (docker's
    BuildKit resolves FROM images in a registry even when they are local, so docker tests name the image as
    pushed to the loopback registry.)"""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    sandbox.write_buildable(root, os_image or OS_IMAGE, limit_bytes)
    return commit_all(root, "upstream: a buildable tree")


def wheel_env(engine: Engine) -> dict[str, str]:
    """Config for `invoke wheel` in tests: the build image FROM the debootstrap image, under the tests' name."""
    # FORKDEV_TEST_WHEEL_IMAGE (a name with {engine} in it) keeps two checkouts' sessions on one machine, whose
    # recipes differ, from rebuilding each other's image under one name.
    name = os.environ.get("FORKDEV_TEST_WHEEL_IMAGE", "forkdev-test/wheel-builder:{engine}")
    return {"INVOKE_WHEEL_BASE": OS_IMAGE, "INVOKE_WHEEL_IMAGE": name.replace("{engine}", engine.kind)}


# ---- a small cmake-backed Python package, laid out as MLC-LLM is ---------------------------------------------
def make_cmake_package(root: Path, **package) -> str:
    """A git checkout of sandbox.write_cmake_package's package (laid out as MLC-LLM is; its keywords say which
    variant: version, pure, ship_lib, import_error, name, module). Returns the commit."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    sandbox.write_cmake_package(root, **package)
    return commit_all(root, "a cmake-backed package laid out as MLC-LLM")


# ---- a vLLM-shaped native extension and a base compiled from it ------------------------------------------------
NATIVE_BUILD = ("python3", "setup.py", "build_ext", "--inplace", "--build-temp", "{build}")  # the vllm profile's


def make_native_upstream(root: Path, units: int = 16, moe_units: int = 3) -> str:
    """A git repository of sandbox.write_native_extension's tree (a CPU-only extension of vLLM's shape); its commit."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    sandbox.write_native_extension(root, units, moe_units)
    return commit_all(root, "upstream: a vLLM-shaped native extension")


def build_native_base(
    engine: Engine,
    env_image: str,
    repo: Path,
    commit: str,
    tag: str,
    ccache: Path,
    command: tuple[str, ...] = NATIVE_BUILD,
    source: str = "/opt/vllm-source",
    python: str = "",
) -> str:
    """A base as vLLM's image is made: the tree at `commit` compiled in the build environment `env_image` by
    `command` (by the product's own container argv, so at the paths and with the compiler cache a native build
    uses), then the tree with its compiled files at `source`, its `python` folder found through a .pth file, in an
    image FROM the build environment (its python3 and libstdc++ load them)."""
    from forkdev.core import nativebuild

    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        src, build = ctx / "src", ctx / "build"
        src.mkdir()
        build.mkdir()
        ccache.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit], capture_output=True, check=True).stdout
        sh("tar", "-x", "-C", src, input=archive)
        argv = nativebuild.run_argv(
            engine, env_image, name=f"forkdev-test-native-{os.getpid()}", src=src, build=build, ccache=ccache,
            command=command, jobs=os.cpu_count() or 1, env={},
        )  # fmt: skip
        sh(*argv)
        shutil.rmtree(src / "build", ignore_errors=True)  # setuptools' build/lib copies: no part of an image
        lines = [
            f"FROM {env_image}",
            "USER 0",
            "ENTRYPOINT []",
            f"COPY src {source}",
            f"RUN mkdir -p {SITE} && echo {posixpath.join(source, python).rstrip('/')} > {SITE}/forkdev-editable.pth",
            f'LABEL org.opencontainers.image.revision="{commit}"',
        ]
        return build_image(engine, ctx, "\n".join(lines) + "\n", tag)


# ---- a wheel made by hand --------------------------------------------------------------------------------------
def make_wheel(path: Path, *, tag: str = "cp311-cp311-linux_x86_64", so: bool = True, requires=()) -> Path:
    """A minimal valid wheel (no build needed): a package, maybe a .so, METADATA, WHEEL and a RECORD listing them."""
    files = {"pkg/__init__.py": b"__version__ = '1.0'\n"}
    if so:
        files["pkg/libpkg.so"] = b"\x7fELF not really"
    meta = "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files["pkg-1.0.dist-info/METADATA"] = meta.encode()
    files["pkg-1.0.dist-info/WHEEL"] = f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()
    files["pkg-1.0.dist-info/top_level.txt"] = b"pkg\n"
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files.items())
    files["pkg-1.0.dist-info/RECORD"] = (record + "pkg-1.0.dist-info/RECORD,,\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# ---- a unix socket that answers as a fault needs it -------------------------------------------------------------
def serve_unix(path: Path, reply) -> socket.socket:
    """A unix socket at `path` whose every connection gets `reply(conn)`: a daemon's socket as a fault needs it."""

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):
                reply(conn)

    return _listen_unix(path, serve)


def _listen_unix(path: Path, serve) -> socket.socket:
    """A unix socket at `path`, each connection served by `serve(conn)` in a thread of its own; close() ends it."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return server


def forward_unix(path: Path, to: str, before) -> socket.socket:
    """A unix socket at `path` that passes every connection on to the socket `to`, both ways, byte for byte.
    `before(data)` sees the first piece a client sends before it is passed on (to act in the middle of an
    exchange); when it returns bytes, those are the answer instead: the request is read to its end, not passed on."""

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve(conn: socket.socket) -> None:
        with conn:
            first = conn.recv(65536)
            answer = before(first)
            if answer is not None:
                head, _, body = first.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(v)
                        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                        if k.strip().lower() == b"content-length"
                    ),
                    0,
                )
                while len(body) < length and (more := conn.recv(65536)):
                    body += more
                conn.sendall(answer)
                return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                up.connect(to)
                up.sendall(first)
                back = threading.Thread(target=pipe, args=(up, conn), daemon=True)
                back.start()
                pipe(conn, up)
                back.join()

    return _listen_unix(path, serve)


# ---- cron ----------------------------------------------------------------------------------------------------
def crond(text: str) -> str:
    """What Debian's cron hands /bin/sh for a command: do_command.c's loop, ported line for line (not the module's
    own version of it). `\\%` becomes `%`; a bare `%` ends the command (what follows is its stdin)."""
    cmd = list(text)
    p = escaped = 0
    for i, ch in enumerate(text):
        if p != i:
            cmd[p] = ch
        if escaped:
            if ch == "%":
                p -= 1
                cmd[p] = ch
            escaped = 0
            p += 1
            continue
        if ch == "\\":
            escaped = 1
        if ch == "%":
            break
        p += 1
    return "".join(cmd[:p])
