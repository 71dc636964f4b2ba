"""Data minimisation at ingest, for uploads that reach the object store before this code sees
them (the folder sensor's drops and the S3 `ObjectCreated` path of browser uploads).

`minimise_stored_upload` reads the raw object once, strips its identifying metadata
(`models.metadata_strip`, lossless) and, when anything was removed, **re-stores it under the
same key before the sensor requests a run** - so the `photo` step, and everything after it,
only ever reads the minimised bytes. On a versioned S3 bucket the version as uploaded is then
deleted, so no old version keeps the GPS position. The re-store is recorded
in the audit log (`raw_minimised`: what was removed, the new sha256 - the ledger's record of the
stored raw). Idempotent: an already minimised object is left alone (a second delivery of the
event, or the event of the re-store itself, finds nothing to do).

Paths that hold the bytes before storing them (`avatarpipe run`/`ingest`, the HTTP upload
function `orchestration.app.ingest_photo`) strip before the first write instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.metadata_strip import StrippedImage, strip_metadata
from storage.metadata_store import MetadataStore
from storage.object_store import ObjectStore, parse_raw_upload_key, sha256_hex

MINIMISED_EVENT = "raw_minimised"


@dataclass(frozen=True)
class Minimisation:
    key: str
    action: str  # "restored" (metadata removed, object replaced), "clean", "unparsed" or "missing"
    removed: tuple[str, ...] = ()
    sha256: str | None = None  # of the object now stored


def minimise_upload_bytes(data: bytes) -> StrippedImage:
    """What every ingestion path stores instead of ``data`` (one function, one policy)."""
    return strip_metadata(data)


def minimise_stored_upload(
    store: ObjectStore, key: str, metadata: MetadataStore | None = None
) -> Minimisation:
    """Strip the raw upload at ``key`` in place (see the module docstring)."""
    if not store.exists(key):
        return Minimisation(key, "missing")
    data = store.get_bytes(key)
    result = minimise_upload_bytes(data)
    if not result.changed:
        return Minimisation(key, "clean" if result.stripped else "unparsed", sha256=sha256_hex(data))
    store.put_bytes(key, result.data)
    _delete_older_s3_versions(store, key)
    digest = sha256_hex(result.data)
    ref = parse_raw_upload_key(key)
    if metadata is not None and ref is not None:
        metadata.append_audit(
            MINIMISED_EVENT,
            ref.subject_id,
            ref.upload_id,
            {
                "removed": list(result.removed),
                "sha256": digest,
                "bytes_before": len(data),
                "bytes": len(result.data),
            },
        )
    return Minimisation(key, "restored", result.removed, digest)


def _delete_older_s3_versions(store: Any, key: str) -> int:
    """On a versioned S3 bucket, remove every version of ``key`` but the one just written (the
    upload as received included); 0 elsewhere. Returns how many were removed."""
    inner = getattr(store, "inner", store)  # unwrap the retry layer
    client = getattr(inner, "client", None)
    if client is None or not hasattr(inner, "bucket_for"):
        return 0  # the local store replaced the file
    bucket = inner.bucket_for(key)
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    older = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])
        if v["Key"] == key and not v.get("IsLatest") and v.get("VersionId") not in (None, "null")
    ]
    if older:
        client.delete_objects(Bucket=bucket, Delete={"Objects": older, "Quiet": True})
    return len(older)
