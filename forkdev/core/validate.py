"""Values from flags, config and the environment, checked before they reach a command line.

Every check returns the value or raises a `Failure` naming the input and the remedy. A value that starts with
'-' is refused everywhere: even where we also pass `--` / `--end-of-options`, such a value is never what a user
meant. Commands get user values only after those separators wherever the program accepts them.
"""

from __future__ import annotations

import re

from .errors import Failure

# The image reference grammar of distribution/reference (what docker and podman accept).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REF = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
REPOSITORY = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")


def plain(value: object, what: str, remedy: str = "") -> str:
    """A text value fit for a command line: a str, not empty, no NUL or line break, not starting with '-'."""
    if not isinstance(value, str):
        raise Failure(f"{what} must be text, not {type(value).__name__} ({value!r}){_then(remedy)}")
    shown = repr(value)[1:-1][:200]  # control characters, NUL and undecodable bytes escaped
    if not value:
        raise Failure(f"{what} is empty{_then(remedy)}")
    if value.startswith("-"):
        raise Failure(f"{what} '{shown}' starts with '-', which a command would take as an option{_then(remedy)}")
    if any(ch in value for ch in "\0\n\r"):
        raise Failure(f"{what} '{shown}' holds a line break or NUL{_then(remedy)}")
    return _utf8(value, f"{what} '{shown}'", remedy)


def argument(value: object, what: str, remedy: str = "") -> str:
    """A word of a command the user wrote as a list (a profile's build command): options and scripts are meant,
    so only what no argv can hold is refused: not text, a NUL, bytes that are not UTF-8."""
    if not isinstance(value, str) or "\0" in value:
        raise Failure(f"{what} holds {value!r}, which is no command-line word{_then(remedy)}")
    return _utf8(value, f"{what} {value!r}", remedy)


def _utf8(value: str, named: str, remedy: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Failure(f"{named} is not valid UTF-8{_then(remedy)}") from None
    return value


def image_ref(value: object, what: str = "image") -> str:
    """A docker/podman image reference (name[:tag][@digest]), at most 255 characters before the tag."""
    ref = plain(value, what, "pass an image reference such as registry:5000/name:tag")
    m = IMAGE_REF.match(ref)
    if not m or len(m["name"]) > 255:
        raise Failure(
            f"{what} '{ref[:200]}' is not a valid image reference; write [registry[:port]/]name[:tag] in lower case"
        )
    return ref


def repository(value: object, what: str = "repository") -> str:
    """An image repository without tag, e.g. 127.0.0.1:5000/vllm-dev or forkdev/vllm-dev."""
    repo = plain(value, what, "pass a repository such as registry:5000/name")
    if not REPOSITORY.match(repo) or len(repo) > 255:
        raise Failure(
            f"{what} '{repo[:200]}' is not a valid image repository; write [registry[:port]/]name in lower case"
        )
    return repo


_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def network(value: object, what: str = "network") -> str:
    """A container network: host, none, bridge, or the name of one made with `network create` (never an
    option, never a mode with arguments such as container:NAME)."""
    name = plain(value, what, "set host, none, bridge or the name of a network")
    if not _NETWORK.match(name):
        raise Failure(f"{what} '{name[:200]}' is not host, none, bridge or a network's name; set one of them")
    return name


def registry_host(ref: str) -> str | None:
    """The registry named in an image reference, or None when it has none (Docker Hub implied)."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first
    return None


def git_ref(value: object, what: str) -> str:
    """A branch, tag, sha or other revision expression handed to git."""
    return plain(value, what, "pass a branch, tag or commit")


def source(value: object, what: str) -> str:
    """A repository URL or local path handed to git fetch/clone/ls-remote."""
    return plain(value, what, "pass a URL (https://..., git@...:...) or a path (./x, /x)")


_CMAKE_DEFINE = re.compile(r"^-D[A-Za-z_][A-Za-z0-9_.+-]*(?::[A-Z]+)?=")


def cmake_define(value: object, what: str = "--cmake-arg") -> str:
    """A cmake cache entry, -DNAME[:TYPE]=VALUE: the one cmake option a build may be given (the others are fixed).
    It starts with '-' by nature; it is passed after the image name, where only the entrypoint reads it."""
    if not isinstance(value, str) or not _CMAKE_DEFINE.match(value) or any(ch in value for ch in "\0\n\r"):
        raise Failure(f"{what} {value!r} is not a -DNAME=VALUE option on one line; pass e.g. -DUSE_CUDA=OFF")
    return value


def _then(remedy: str) -> str:
    return f"; {remedy}" if remedy else ""
