"""Model artifacts: bytes stored once per content, behind one interface, verified on every read.

The store is the database (the default: one backup covers everything) or a directory
(`VIGIL_ARTIFACT_STORE=file:///var/lib/vigil/artifacts`, for large models or a shared volume).
Either way an artifact is addressed by the sha256 of its bytes, and `artifact_read` refuses
bytes whose hash does not match (ArtifactCorrupt) rather than serve a model nobody trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.db import IntegrityError, transaction

from mlops.models import ModelArtifact


class ArtifactCorrupt(Exception):
    """The stored bytes are missing or do not hash to the artifact's sha256."""


class ArtifactStore(Protocol):
    def write(self, artifact: ModelArtifact, data: bytes) -> None: ...
    def read(self, artifact: ModelArtifact) -> bytes: ...


class DatabaseStore:
    """The bytes live in the artifact's row."""

    def write(self, artifact: ModelArtifact, data: bytes) -> None:
        artifact.data = data

    def read(self, artifact: ModelArtifact) -> bytes:
        if artifact.data is None:
            raise ArtifactCorrupt(f"artifact {artifact.sha256} has no bytes in the database")
        return bytes(artifact.data)


class FileStore:
    """The bytes live in `root/<sha[:2]>/<sha>`, written atomically (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write(self, artifact: ModelArtifact, data: bytes) -> None:
        target = self.path(artifact.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(fh.name, target)

    def read(self, artifact: ModelArtifact) -> bytes:
        try:
            return self.path(artifact.sha256).read_bytes()
        except FileNotFoundError:
            raise ArtifactCorrupt(f"artifact {artifact.sha256} is missing from {self.root}") from None


def artifact_store() -> ArtifactStore:
    """The configured store (settings.VIGIL_ARTIFACT_STORE: "database" or "file://<directory>")."""
    where: str = settings.VIGIL_ARTIFACT_STORE
    if where == "database":
        return DatabaseStore()
    if where.startswith("file://"):
        return FileStore(Path(where.removeprefix("file://")))
    raise ValueError(f"VIGIL_ARTIFACT_STORE must be 'database' or 'file://<directory>', not {where!r}")


def state_dumps(state: Any) -> bytes:
    """A detector state as canonical JSON: equal states give equal bytes, hence one artifact."""
    return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def artifact_save(*, data: bytes, format: str = ModelArtifact.Format.JSON) -> ModelArtifact:
    """Store `data` once: an artifact with the same bytes is reused. Idempotent."""
    sha256 = hashlib.sha256(data).hexdigest()
    existing = ModelArtifact.objects.filter(sha256=sha256).first()
    if existing is not None:
        return existing
    artifact = ModelArtifact(sha256=sha256, format=format, size=len(data))
    artifact_store().write(artifact, data)  # same bytes, same place: safe to repeat
    try:
        with transaction.atomic():
            artifact.save(force_insert=True)
    except IntegrityError:  # saved meanwhile by a concurrent training of the same model
        return ModelArtifact.objects.get(sha256=sha256)
    return artifact


def artifact_read(artifact: ModelArtifact) -> bytes:
    """The artifact's bytes, verified against its sha256 (ArtifactCorrupt otherwise)."""
    data = artifact_store().read(artifact)
    actual = hashlib.sha256(data).hexdigest()
    if actual != artifact.sha256:
        raise ArtifactCorrupt(f"artifact {artifact.sha256} is corrupt: its bytes hash to {actual}")
    return data
