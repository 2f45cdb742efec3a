"""What never leaves the checkout: its secret paths, and the values they hold.

Secret paths are every file under the secrets directory (config `container.secrets`, default `extras/secrets`) and
under the paths config `container.secret_paths` adds, whatever git says of them (tracked, untracked, ignored or not),
except `*.env.example` templates. No task ships one: not an image layer (dev, build, the thin layers of nightly
and batch), a full build's context, a wheel's source tree, a live sync or an overlay. `Paths.hidden` is the one
predicate they all ask. The paths are relative to the checkout and stay in it (`paths` refuses the rest).

Secret values are the values of the `*.env` files under those paths, of our environment's variables whose name
looks secret (ui.secret_name: HF_TOKEN, GITHUB_TOKEN, ...) and whatever the task adds. Before an image is loaded
or pushed its new layer is scanned for every one of 8 characters or more (`scan`), and a hit is refused naming
the file that holds it and the secret's name and origin, never the value. The values read here are masked in
what ui shows too (`conceal`). Nothing is read through a symlink that leads out of the checkout.

Loaded by every task (ship uses it): standard library only.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import ui
from .errors import Failure

EXAMPLE = ".env.example"  # a template: ships, and is never read
SCAN_MIN = 8  # a shorter value would be found by chance in ordinary files
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: a trailing line break is no part of a name


@dataclass(frozen=True)
class Paths:
    """The checkout's secret paths, relative to it and normalised ('extras/secrets')."""

    roots: tuple[str, ...]

    def hidden(self, path: str) -> bool:
        """Whether the repository path `path` is secret (never shipped): at or under a root, not a template."""
        if path.endswith(EXAMPLE):
            return False
        return any(path == root or path.startswith(root + "/") for root in self.roots)

    def keep(self, paths: Iterable[str]) -> list[str]:
        return [p for p in paths if not self.hidden(p)]


DEFAULT = Paths(("extras/secrets",))


def relative(value: object, what: str) -> str:
    """A configured secret path: relative to the checkout and inside it by its text, normalised."""
    example = "e.g. extras/secrets"
    if not isinstance(value, str) or not value.strip():
        raise Failure(f"{what} must be a path inside the checkout ({example}), not {value!r}; fix invoke.yaml")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise Failure(f"{what} {value!r} holds a control character; name a path inside the checkout ({example})")
    try:
        value.encode("utf-8")  # an undecodable byte (INVOKE_CONTAINER_SECRETS=$'\xff') names no path git lists
    except UnicodeEncodeError:
        raise Failure(f"{what} {value!r} is not valid UTF-8; name a path inside the checkout ({example})") from None
    if os.path.isabs(value) or value.startswith("~"):
        raise Failure(
            f"{what} '{value}' is absolute; it names a path inside the checkout, relative to it ({example}): "
            "keep the secrets files there (git-ignored), or pass a value with --env NAME"
        )
    norm = os.path.normpath(value)
    if norm == ".":
        raise Failure(f"{what} '{value}' is the whole checkout; name the directory that holds the secrets ({example})")
    if norm == ".." or norm.startswith("../"):
        raise Failure(f"{what} '{value}' leads out of the checkout by '..'; name a path inside it ({example})")
    return norm


def paths(folder: object, extra: object = ()) -> Paths:
    """The secret paths from config: container.secrets (the secrets directory) and the list container.secret_paths."""
    if extra is None:
        extra = ()
    if isinstance(extra, str) or not isinstance(extra, Iterable):
        raise Failure(f"config container.secret_paths must be a list of paths inside the checkout, not {extra!r}")
    roots = [relative(folder, "container.secrets")]
    roots += [relative(p, "container.secret_paths") for p in extra]
    return Paths(tuple(dict.fromkeys(roots)))


def located(checkout: Path, rel: str, what: str) -> Path | None:
    """checkout/rel when it stays inside the checkout through every symlink (None when nothing is there);
    a symlink that leads out is refused, naming `what`, and never read through."""
    path = checkout / rel
    if not os.path.lexists(path):
        return None
    real = os.path.realpath(path)
    if os.path.commonpath([real, os.path.realpath(checkout)]) != os.path.realpath(checkout):
        raise Failure(
            f"{what} '{rel}' leads out of the checkout through a symlink (to {real}); forkdev does not read "
            "through it: put the files themselves there (git-ignored)"
        )
    return path


BLANKS = " \t\r\v\f"  # what leads a line and is dropped, as POSIX sh's [:space:] (devcontainer.py reads alike)


def lines(text: str) -> Iterator[tuple[int, str, str] | tuple[int, None, str]]:
    """The `KEY=VALUE` lines of a secrets file as (line number, key, value); (number, None, why) for a line that
    is none (blank lines and `#` comments are skipped). As docker's --env-file reads them: lines end at a line
    feed (a CR before it goes too), leading blanks go, an `export ` prefix is allowed, the value is kept as
    written."""
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r").lstrip(BLANKS)
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip(BLANKS)
        key, sep, value = line.partition("=")
        if not sep or not KEY.match(key):
            yield number, None, "not a NAME=value line; write NAME=value (letters, digits, _), or # a comment"
        elif "\0" in value:
            yield number, None, f"the value of {key} holds a NUL byte; remove it"
        else:
            yield number, key, value


@dataclass(frozen=True)
class Known:
    """A secret value and where it comes from (named in a refusal instead of the value)."""

    value: str
    origin: str  # "HF_TOKEN from extras/secrets/hf.env:2", "GITHUB_TOKEN from the environment"


def _env_files(checkout: Path, rel: str) -> Iterator[tuple[str, Path]]:
    """(repository path, path to read) of the `*.env` files at or under the secret path `rel`: regular files, and
    symlinks whose target is a regular file inside the checkout; nothing outside it is read or walked into."""
    try:
        top = located(checkout, rel, "a secret path")
    except Failure:
        return
    if top is None:
        return
    root = os.path.realpath(checkout)
    pending = [(rel, Path(os.path.realpath(top)))]  # a link to a folder inside: its files (shipped, they are found)
    while pending:
        rel_path, path = pending.pop()
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            pending += [(f"{rel_path}/{e.name}", Path(e.path)) for e in os.scandir(path)]
            continue
        if not rel_path.endswith(".env"):
            continue
        real = os.path.realpath(path)
        if os.path.commonpath([real, root]) == root and os.path.isfile(real):
            yield rel_path, Path(real)


def known(checkout: Path | None, hidden: Paths, explicit: Iterable[Known] = ()) -> tuple[Known, ...]:
    """Every secret value of 8 characters or more this task knows: the secrets files' (`checkout` None: there is
    no working tree, as in an upstream mirror), our environment's secret-looking variables (ui.secret_variable)
    and `explicit`. They are masked in what ui shows."""
    found: list[Known] = list(explicit)
    if checkout is not None:
        for root in hidden.roots:
            for rel, path in sorted(_env_files(checkout, root)):
                try:
                    text = path.read_bytes().decode("utf-8", "replace")
                except OSError:
                    continue
                pairs = [(k, v, f"{k} from {rel}:{n}") for n, k, v in lines(text) if k is not None]
                conceal(pairs)
                found += [Known(v, origin) for _, v, origin in pairs]
    found += environment(os.environ)
    ui.conceal(k.value for k in found if len(k.value) >= SCAN_MIN)
    seen: dict[str, Known] = {}
    for k in found:
        if len(k.value) >= SCAN_MIN:
            seen.setdefault(k.value, k)
    return tuple(seen.values())


def conceal(variables: Iterable[tuple[str, str, str]]) -> None:
    """Mask a secrets file's values in every line: those of secret-looking names, and any of 8 characters or more
    (a short value of another name, MODE=prod or LEVEL=DEBUG, would garble every log line it appears in)."""
    ui.conceal(v for k, v, _ in variables if ui.secret_name(k) or len(v) >= SCAN_MIN)


def environment(env: Mapping[str, str]) -> list[Known]:
    return [Known(v, f"{k} from the environment") for k, v in sorted(env.items()) if ui.secret_variable(k, v)]


def explicit(values: Mapping[str, object], origin: str) -> list[Known]:
    """The secret-looking entries of a mapping of variables from config (`container.env`, `wheel.env`)."""
    return [Known(str(v), f"{k} from {origin}") for k, v in values.items() if ui.secret_name(str(k)) and v]


def scan(files: Iterable[tuple[str, bytes]], found: tuple[Known, ...], what: str) -> None:
    """Refuse when a secret value is in any (name, bytes) of `files`, naming the file and where the secret comes
    from, never the value."""
    if not found:
        return
    # One `in` per value: a byte search runs at memory speed, where a regex alternation of the values took 20
    # times as long on a dev layer (0.5 ms against 10 ms for 500 KB).
    values = [(k.value.encode("utf-8", "surrogateescape"), k.origin) for k in found]
    for name, data in files:
        encoded = name.encode("utf-8", "surrogateescape")
        hit = next((origin for value, origin in values if value in encoded or value in data), None)
        if hit is not None:
            raise Failure(
                f"{name} in {what} holds the value of {hit}; nothing was loaded, tagged or pushed: "
                "remove the secret from that file (secrets belong in the secrets directory, which never ships), "
                "and rotate it if it was ever shared"
            )


def scan_tree(root: Path, found: tuple[Known, ...], what: str) -> None:
    """`scan` over every regular file below `root` (a build context the tool made; links are not followed)."""
    if not found:
        return

    def files() -> Iterator[tuple[str, bytes]]:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if stat.S_ISREG(os.lstat(path).st_mode):
                    yield str(path.relative_to(root)), path.read_bytes()

    scan(files(), found, what)


def public_url(url: str | None) -> str | None:
    """A URL fit for a label or a record: its credentials (`https://user:token@host`) removed."""
    if not url:
        return url
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)
