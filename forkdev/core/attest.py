"""What vouches for a wheel beside it: SHA256SUMS lines, a CycloneDX SBOM of its dependencies and an in-toto
provenance statement (SLSA provenance v1 predicate). Pure functions of values: the wheel task gathers the values."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .. import __version__
from .wheelfile import Wheel

SUMS = "SHA256SUMS"
BUILD_TYPE = "urn:forkdev:build-type:wheel:v1"
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY$|^KEY$", re.I)


def sbom_name(wheel_name: str) -> str:
    return f"{wheel_name}.cdx.json"


def provenance_name(wheel_name: str) -> str:
    return f"{wheel_name}.intoto.json"


# ---- SHA256SUMS -----------------------------------------------------------------------------------------------
def parse_sums(text: str) -> dict[str, str]:
    """name -> sha256 of a `sha256sum` file; ValueError on a line that is not one (a file we did not write)."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.match(line)
        if not m:
            raise ValueError(f"line {number} is not '<sha256>  <name>'")
        found[m.group(2)] = m.group(1)
    return found


def merge_sums(existing: str, new: Mapping[str, str], present: Iterable[str]) -> str:
    """SHA256SUMS with `new` entries replacing those of the same name; entries of files no longer `present` in
    the directory are dropped (so `sha256sum -c` checks what is there). Sorted by name, for stable diffs."""
    keep = set(present)
    merged = {name: digest for name, digest in parse_sums(existing).items() if name in keep}
    merged.update(new)
    return "".join(f"{merged[name]}  {name}\n" for name in sorted(merged))


# ---- CycloneDX SBOM -------------------------------------------------------------------------------------------
def purl(name: str, version: str | None = None) -> str:
    from packaging.utils import canonicalize_name

    return f"pkg:pypi/{canonicalize_name(name)}" + (f"@{version}" if version else "")


def sbom(wheel: Wheel, digest: str, when: str, needs: Iterable[tuple[str, str, str]] = ()) -> dict[str, Any]:
    """A CycloneDX 1.6 document: the wheel as the subject, its declared Python requirements (required, or
    optional when only an extra asks for them) and the system libraries its .so files were linked against
    (`needs`: (file in the wheel, soname, where the build resolved it))."""
    import uuid  # only here: it imports platform, 2 ms of every task's start

    # packaging is imported here, not at the top: every `invoke` loads this module, and workflows that install
    # only invoke (fork-sync's) need not have it.
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    me = purl(wheel.name, wheel.version)
    components: dict[str, dict[str, Any]] = {}
    for line in wheel.requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            req = None
        name = canonicalize_name(req.name) if req else line.split(";")[0].strip()
        ref = purl(name)
        optional = bool(req and req.marker and "extra" in str(req.marker))
        entry = components.setdefault(
            ref, {"type": "library", "bom-ref": ref, "name": name, "purl": ref, "scope": "optional", "properties": []}
        )
        if not optional:
            entry["scope"] = "required"
        entry["properties"].append({"name": "forkdev:requirement", "value": line})
    for so, soname, resolved in needs:
        ref = f"system-library:{soname}"
        entry = components.setdefault(
            ref, {"type": "library", "bom-ref": ref, "name": soname, "scope": "required", "properties": []}
        )
        entry["properties"].append({"name": "forkdev:needed-by", "value": so})
        if {"name": "forkdev:resolved-at-build", "value": resolved} not in entry["properties"]:
            entry["properties"].append({"name": "forkdev:resolved-at-build", "value": resolved})
    listed = [components[ref] for ref in sorted(components)]
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'sha256:{digest}')}",
        "version": 1,
        "metadata": {
            "timestamp": when,
            "tools": {"components": [{"type": "application", "name": "forkdev", "version": __version__}]},
            "component": {
                "type": "library",
                "bom-ref": me,
                "name": wheel.name,
                "version": wheel.version,
                "purl": me,
                "hashes": [{"alg": "SHA-256", "content": digest}],
                "properties": [{"name": "forkdev:wheel-tag", "value": tag} for tag in wheel.tags],
            },
        },
        "components": listed,
        "dependencies": [{"ref": me, "dependsOn": [c["bom-ref"] for c in listed]}]
        + [{"ref": c["bom-ref"]} for c in listed],
    }


# ---- in-toto provenance ---------------------------------------------------------------------------------------
def redact(env: Mapping[str, str]) -> dict[str, str]:
    """Build environment as recorded: values of names that look like secrets are not."""
    return {k: ("<redacted>" if _SECRET.search(k) else str(v)) for k, v in sorted(env.items())}


def provenance(
    wheel_name: str,
    digest: str,
    *,
    source: Mapping[str, Any],
    builder: Mapping[str, Any],
    parameters: Mapping[str, Any],
    internal: Mapping[str, Any],
    started: str,
    finished: str,
    log: str | None = None,
) -> dict[str, Any]:
    """An in-toto Statement v1 about the wheel with a SLSA provenance v1 predicate. `source`: uri, commit, dirty,
    tree_sha256 (of the exact files built); `builder`: id, and image + digest when built in an image."""
    import uuid  # only here: it imports platform, 2 ms of every task's start

    dependencies = [
        {
            "uri": source["uri"],
            "digest": {"gitCommit": source["commit"]},
            "annotations": {"dirty": source["dirty"], "tree_sha256": source["tree_sha256"]},
        }
    ]
    if builder.get("image"):
        dependencies.append(
            {
                "name": "builder-image",
                "uri": f"oci:{builder['image']}",
                "digest": {"sha256": str(builder["digest"]).removeprefix("sha256:")},
                "annotations": {k: v for k, v in builder.items() if k not in ("id", "image", "digest")},
            }
        )
    run_details: dict[str, Any] = {
        "builder": {"id": builder["id"], "version": {"forkdev": __version__}},
        "metadata": {"invocationId": str(uuid.uuid4()), "startedOn": started, "finishedOn": finished},
    }
    if log:
        run_details["byproducts"] = [{"name": "build-log", "uri": f"file://{log}"}]
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": wheel_name, "digest": {"sha256": digest}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": dict(parameters),
                "internalParameters": dict(internal),
                "resolvedDependencies": dependencies,
            },
            "runDetails": run_details,
        },
    }
