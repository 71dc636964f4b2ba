"""Storage layer: blobs in an object store, metadata in MongoDB collections.

Pure Python (no Dagster imports): used by Dagster code and by the standalone worker.
"""

from storage.metadata_store import (
    COLLECTIONS,
    SUBJECT_STATUSES,
    UPLOAD_STATUSES,
    ArtifactRecord,
    InvalidTransition,
    MetadataStore,
    NotFound,
    artifact_id,
    open_metadata_store,
    utcnow,
)
from storage.object_store import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    StoredObject,
    artifact_key,
    sha256_hex,
    subject_prefix,
    upload_prefix,
    validate_key,
)

__all__ = [
    "COLLECTIONS",
    "SUBJECT_STATUSES",
    "UPLOAD_STATUSES",
    "ArtifactRecord",
    "InvalidTransition",
    "LocalObjectStore",
    "MetadataStore",
    "NotFound",
    "ObjectNotFound",
    "ObjectStore",
    "StoredObject",
    "artifact_id",
    "artifact_key",
    "open_metadata_store",
    "sha256_hex",
    "subject_prefix",
    "upload_prefix",
    "utcnow",
    "validate_key",
]
