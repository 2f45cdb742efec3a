"""Every label and in-image path forkdev writes or reads, named once."""

from __future__ import annotations

import posixpath

# OCI annotations (https://github.com/opencontainers/image-spec/blob/main/annotations.md)
REVISION = "org.opencontainers.image.revision"
SOURCE = "org.opencontainers.image.source"
CREATED = "org.opencontainers.image.created"
VERSION = "org.opencontainers.image.version"
BASE_NAME = "org.opencontainers.image.base.name"
# Not org.opencontainers.image.base.digest: that names the base's manifest in a registry, which a base built or
# loaded here does not have and a pushed or pulled one does, so the image id would depend on how the base came.
BASE_ID = "dev.forkdev.base.id"  # the base's image id (its config's digest): the same wherever the base is

# forkdev's own
BASE_REVISION = "dev.forkdev.base.revision"  # the commit inside the base of a thin image
DIRTY = "dev.forkdev.dirty"  # "true" when uncommitted work was shipped
KEY = "dev.forkdev.key"  # hash of everything that determines a thin image's content: equal key, same image
NATIVE_HASH = "dev.forkdev.native-hash"  # hash of the native sources a full build compiled
NATIVE_ENV = "dev.forkdev.native.env"  # on a thin image with compiled files: the build environment's image id
BUILD = "dev.forkdev.build"  # "full" (compiled) or "thin" (a full image plus one layer)
RECIPE = "dev.forkdev.wheel.recipe"  # on the wheel build image: the hash of what built it
# On what a full build makes (buildah puts it on every step's image too): the lock file its run holds while it
# builds, so a later run that can take the lock knows the build is over and may remove what it left (fullbuild.py)
BUILD_OWNER = "dev.forkdev.build.owner"

# On the containers `invoke run`, `shell` and `smoke --image` start
RUN = "dev.forkdev.run"  # what the container is for (run, shell, ...)
HOST = "dev.forkdev.host"  # the machine that started it (for people: the sweep goes by OWNER)
OWNER = "dev.forkdev.owner"  # the lock file its owner holds while it lives (core/owners.py); never on --keep ones

# Where a base may say which commit it holds: our label, vLLM's own label and environment variable.
REVISION_LABELS = (REVISION, "ai.vllm.build.commit")
REVISION_ENV = ("VLLM_BUILD_COMMIT",)

PROOF_PATH = "/etc/forkdev/proof.json"  # inside every image forkdev writes: what was shipped, byte hashes
PROOF_DIR = posixpath.dirname(PROOF_PATH)  # a directory the layer creates
