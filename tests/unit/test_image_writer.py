"""The image writer as data: a deterministic layer, a config derived from the base's, archives for each engine."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from forkdev.core import image
from forkdev.core.base import Base, Facts, Location

BASE = Base(
    ref="me/base:1",
    id="sha256:" + "b" * 64,
    revision="r" * 40,
    config={"Entrypoint": None, "Cmd": ["bash"], "User": "1000", "Env": ["A=1"], "Labels": {"x": "1"}},
    diff_ids=("sha256:" + "1" * 64, "sha256:" + "2" * 64),
    platform={"architecture": "amd64", "os": "linux"},
    image={},
    facts=Facts(Location("/opt/s/vllm", "/opt/s"), "cpython-311"),
)
FILES = [
    ("/opt/s/vllm/a.py", 0o100644, b"A = 1\n"),
    ("/opt/s/tools/run.sh", 0o100755, b"#!/bin/sh\n"),
    ("/opt/s/vllm/link.py", 0o120000, b"a.py"),
    ("/opt/s/vllm/with space/ü.py", 0o100644, b"U = 1\n"),
]


def members(layer: image.Layer) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_layer_is_sorted_root_owned_with_fixed_modes_and_mtime_and_whiteouts_for_deletions():
    layer = image.layer(FILES, ["/opt/s/vllm/gone.py"], ["/opt/s/vllm/with space"], epoch=1700000000)
    got = members(layer)
    assert list(got) == sorted(got)
    assert set(got) == {
        "opt/s/vllm/a.py",
        "opt/s/tools/run.sh",
        "opt/s/vllm/link.py",
        "opt/s/vllm/with space",
        "opt/s/vllm/with space/ü.py",
        "opt/s/vllm/.wh.gone.py",
    }
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 1700000000 for m in got.values())
    assert got["opt/s/tools/run.sh"].mode == 0o755 and got["opt/s/vllm/a.py"].mode == 0o644
    assert got["opt/s/vllm/link.py"].issym() and got["opt/s/vllm/link.py"].linkname == "a.py"
    assert got["opt/s/vllm/with space"].isdir() and got["opt/s/vllm/with space"].mode == 0o755


def test_the_same_content_gives_the_same_bytes_and_any_change_other_bytes():
    one = image.layer(FILES, ["/x"], [], 1)
    assert one.tar == image.layer(list(reversed(FILES)), ["/x"], [], 1).tar
    assert one.diff_id == "sha256:" + hashlib.sha256(one.tar).hexdigest()
    assert one.tar != image.layer(FILES, ["/x"], [], 2).tar
    assert one.tar != image.layer(FILES[:1], ["/x"], [], 1).tar


def test_the_config_keeps_the_bases_run_settings_and_adds_labels_history_and_one_layer():
    new = image.layer(FILES, [], [], 1700000000)
    history = [{"created": "2020-01-01T00:00:00Z", "created_by": "FROM scratch"}]
    doc = json.loads(image.config(BASE, history, new, {"y": "2"}, 1700000000, "forkdev test"))
    assert doc["config"]["Entrypoint"] is None and doc["config"]["Cmd"] == ["bash"]
    assert doc["config"]["User"] == "1000" and doc["config"]["Env"] == ["A=1"]
    assert doc["config"]["Labels"] == {"x": "1", "y": "2"}
    assert doc["rootfs"]["diff_ids"] == [*BASE.diff_ids, new.diff_id]
    assert doc["history"][:-1] == history and doc["history"][-1]["created_by"] == "forkdev test"
    assert doc["created"] == "2023-11-14T22:13:20Z" and doc["architecture"] == "amd64" and doc["os"] == "linux"
    again = image.config(BASE, history, new, {"y": "2"}, 1700000000, "forkdev test")
    assert again == image.config(BASE, history, new, {"y": "2"}, 1700000000, "forkdev test")


def test_the_docker_archive_holds_only_the_config_and_the_new_layer_but_names_every_layer():
    new = image.layer(FILES, [], [], 1)
    cfg = image.config(BASE, [], new, {}, 1, "t")
    with tarfile.open(fileobj=io.BytesIO(image.archive("docker-archive", cfg, new, BASE.diff_ids, "me/x:1"))) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))[0]
    assert len(names) == 3
    assert manifest["RepoTags"] == ["me/x:1"]
    assert len(manifest["Layers"]) == 3 and manifest["Layers"][-1] in names
    assert not set(manifest["Layers"][:2]) & set(names)
    assert manifest["Config"] == hashlib.sha256(cfg).hexdigest() + ".json"


def test_the_oci_archive_names_the_image_and_the_base_layers_by_digest():
    new = image.layer(FILES, [], [], 1)
    cfg = image.config(BASE, [], new, {}, 1, "t")
    with tarfile.open(fileobj=io.BytesIO(image.archive("oci-archive", cfg, new, BASE.diff_ids, "me/x:1"))) as tar:
        index = json.load(tar.extractfile("index.json"))
        entry = index["manifests"][0]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{entry['digest'].split(':')[1]}"))
        blobs = [n for n in tar.getnames() if n.startswith("blobs/")]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "me/x:1"
    assert [layer["digest"] for layer in manifest["layers"]] == [*BASE.diff_ids, new.diff_id]
    assert manifest["config"]["digest"] == "sha256:" + hashlib.sha256(cfg).hexdigest()
    assert len(blobs) == 3, "config, manifest and the new layer: no base layer travels"


def test_creation_times_compare_as_instants_whatever_their_form():
    """Engines and registries write creation times with 0-9 fractional digits, Z or an offset, or in Go's form;
    as strings "...:00.5Z" sorts after "...:00.51Z" and "+01:00" is not UTC. Prune orders by these."""
    base = image.instant("2026-11-25T10:00:00Z")
    assert base == 1795600800.0
    assert image.instant("2026-11-25T10:00:00.5Z") < image.instant("2026-11-25T10:00:00.51Z")
    assert image.instant("2026-11-25T11:00:00+01:00") == base
    assert image.instant("2026-11-25 10:00:00.25 +0000 UTC") == base + 0.25
    assert image.instant("2026-11-25T10:00:00.123456789Z") > base
    assert image.instant("") == float("-inf") and image.instant("yesterday") == float("-inf")
    assert image.instant(image.rfc3339(1795600800)) == base


def test_a_history_time_is_the_same_in_every_time_zone_and_go_s_zero_time_is_kept_valid():
    from forkdev.core.engine import _utc

    assert _utc("2026-11-25T11:00:00+01:00") == _utc("2026-11-25T10:00:00Z") == "2026-11-25T10:00:00Z"
    assert _utc("2026-11-25T04:30:00-05:30") == "2026-11-25T10:00:00Z"
    # no time recorded: docker shows Go's zero time, in a zone west of UTC as year 0 with a local-mean-time offset
    assert _utc("0001-01-01T00:00:00Z") == _utc("0000-12-31T19:03:58-04:56") == "0001-01-01T00:00:00Z"
    assert _utc("0999-01-01T00:00:00Z") == "0999-01-01T00:00:00Z"
    assert _utc("") == "" and _utc("yesterday") == "yesterday"
