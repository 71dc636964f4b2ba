"""`avatarpipe fsck`: the object store and the metadata ledger agree.

The invariant: every object in the store is named by a document, and every document's objects
exist. Named means: the `key` or an `extra_files` value of an `artifacts` document (superseded
ones included), or the raw photo (`photo_key`) of an upload that is not erased. A run killed
between writing an object and recording its document leaves an *orphan object*; an object lost
or deleted behind the ledger's back leaves a *missing object*. Local writes that never reached
their rename leave hidden temp files (*incomplete writes*).

`repair` restores the invariant without inventing anything:

* orphan objects and incomplete writes are deleted (nothing refers to them);
* a document whose object (or one of its extra files) is missing is deleted, with those of its
  objects that no other document shares; if it was the upload's current artifact, the upload is
  marked failed with `ARTIFACT_MISSING` (`avatarpipe resume UPLOAD` rebuilds it from there);
* a missing raw photo cannot be repaired (the input is gone): it stays reported.

Each repaired upload gets one `fsck_repair` audit event (ids and counts only).

Work in flight must not be mistaken for damage: uploads whose lease is held by a live runner
are skipped, and orphans younger than ``grace_s`` (a step writes its objects a moment before
its document) are counted but not judged. `avatarpipe resume` runs a scoped check and repair
with no grace while it holds the upload's lease.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from models.errors import ErrorCode
from storage.lease import holder_is_dead_here
from storage.metadata_store import InvalidTransition, MetadataStore, NotFound, utcnow
from storage.object_store import ObjectStore, parse_raw_upload_key, upload_prefix

ORPHAN_OBJECT = "orphan_object"
MISSING_OBJECT = "missing_object"
MISSING_RAW = "missing_raw"
INCOMPLETE_WRITE = "incomplete_write"
KINDS = (ORPHAN_OBJECT, MISSING_OBJECT, MISSING_RAW, INCOMPLETE_WRITE)
DEFAULT_GRACE_S = 600.0


@dataclass(frozen=True)
class Finding:
    kind: str
    key: str  # object key (for incomplete writes: the temp file's path under the store root)
    upload_id: str | None = None
    asset_key: str | None = None
    artifact_id: str | None = None
    current: bool = False  # for missing objects: the document was the upload's current artifact

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class FsckReport:
    objects: int = 0
    documents: int = 0
    uploads: int = 0
    findings: list[Finding] = field(default_factory=list)
    skipped_busy_uploads: list[str] = field(default_factory=list)
    young_objects: int = 0  # unreferenced but younger than the grace period: not judged
    repairs: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        return {kind: sum(f.kind == kind for f in self.findings) for kind in KINDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "objects": self.objects,
            "documents": self.documents,
            "uploads": self.uploads,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "skipped_busy_uploads": self.skipped_busy_uploads,
            "young_objects": self.young_objects,
            **({"repairs": self.repairs} if self.repairs else {}),
        }


def _lease_is_live(lease: dict | None, now: datetime) -> bool:
    if not lease or not lease.get("expires_at"):
        return False
    expires = lease["expires_at"]
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires > now and not holder_is_dead_here(lease)


def _object_age_s(store: ObjectStore, key: str, now_ts: float) -> float | None:
    """Seconds since the object was written, where the store can tell (local mtime, S3 HEAD)."""
    path = store.local_path(key)
    if path is not None:
        try:
            return now_ts - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
    head = getattr(store, "head", None)
    if head is not None:
        modified = head(key).get("LastModified")
        if modified is not None:
            return now_ts - modified.timestamp()
    return None


def _upload_of_key(key: str) -> str | None:
    parts = key.split("/")
    return parts[2] if len(parts) >= 4 and parts[0] == "subjects" else None


def check(
    store: ObjectStore,
    metadata: MetadataStore,
    *,
    upload_id: str | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    respect_leases: bool = True,
) -> FsckReport:
    """Compare the store with the ledger (the whole home, or one upload)."""
    now = utcnow()
    now_ts = time.time()
    report = FsckReport()
    if upload_id is not None:
        upload = metadata.get_upload(upload_id)
        if upload is None:
            raise NotFound(upload_id)
        uploads = [upload]
        docs = metadata.artifacts_for_upload(upload_id, include_superseded=True)
        keys = list(store.list_keys(upload_prefix(upload["subject_id"], upload_id)))
    else:
        uploads = metadata.list_uploads()
        docs = metadata.all_artifacts()
        keys = list(store.list_keys(""))
    report.uploads, report.documents, report.objects = len(uploads), len(docs), len(keys)

    busy = {u["_id"] for u in uploads if respect_leases and _lease_is_live(u.get("lease"), now)}
    report.skipped_busy_uploads = sorted(busy)
    present = set(keys)
    named: set[str] = set()
    for doc in docs:
        named.add(doc["key"])
        named.update((doc.get("extra_files") or {}).values())
    for upload in uploads:
        if upload.get("status") != "erased" and upload.get("photo_key") and upload.get("raw_deleted_at") is None:
            named.add(upload["photo_key"])
            if upload["_id"] not in busy and upload["photo_key"] not in present:
                report.findings.append(Finding(MISSING_RAW, upload["photo_key"], upload["_id"], "raw"))

    for doc in docs:
        if doc["upload_id"] in busy:
            continue
        for key in [doc["key"], *(doc.get("extra_files") or {}).values()]:
            if key not in present:
                report.findings.append(
                    Finding(MISSING_OBJECT, key, doc["upload_id"], doc["asset_key"], doc["_id"],
                            current=doc.get("superseded_by") is None)
                )  # fmt: skip

    for key in keys:
        if key in named or _upload_of_key(key) in busy:
            continue
        age = _object_age_s(store, key, now_ts)
        if age is not None and age < grace_s:
            report.young_objects += 1
            continue
        raw = parse_raw_upload_key(key)
        report.findings.append(Finding(ORPHAN_OBJECT, key, _upload_of_key(key), "raw" if raw else _asset_of_key(key)))

    incomplete = getattr(store, "incomplete_writes", None)
    if incomplete is not None:
        for path, mtime in incomplete():
            upload = _upload_of_key(path)
            if (upload_id is not None and upload != upload_id) or upload in busy:
                continue
            if now_ts - mtime >= grace_s:
                report.findings.append(Finding(INCOMPLETE_WRITE, path, upload))
    return report


def _asset_of_key(key: str) -> str | None:
    parts = key.split("/")
    return parts[3] if len(parts) >= 5 and parts[0] == "subjects" else None


def repair(store: ObjectStore, metadata: MetadataStore, report: FsckReport) -> dict[str, int]:
    """Fix what `check` found (see the module docstring); returns counts of what was done."""
    done = {"objects_deleted": 0, "temp_files_deleted": 0, "documents_deleted": 0, "uploads_marked_failed": 0}
    per_upload: dict[str | None, dict[str, Any]] = defaultdict(lambda: {"objects": 0, "documents": []})

    for finding in report.findings:
        if finding.kind == ORPHAN_OBJECT and store.delete(finding.key):
            done["objects_deleted"] += 1
            per_upload[finding.upload_id]["objects"] += 1
        elif finding.kind == INCOMPLETE_WRITE and store.remove_incomplete_write(finding.key):  # type: ignore[attr-defined]
            done["temp_files_deleted"] += 1

    broken: dict[str, Finding] = {}
    for finding in report.findings:
        if finding.kind == MISSING_OBJECT and finding.artifact_id:
            broken.setdefault(finding.artifact_id, finding)
    if broken:
        doomed = {a: metadata.get_artifact(a) for a in broken}
        doomed = {a: d for a, d in doomed.items() if d is not None}
        kept_keys: set[str] = set()
        for doc in metadata.all_artifacts():
            if doc["_id"] not in doomed:
                kept_keys.add(doc["key"])
                kept_keys.update((doc.get("extra_files") or {}).values())
        for artifact_id, doc in doomed.items():
            for key in [doc["key"], *(doc.get("extra_files") or {}).values()]:
                if key not in kept_keys and store.delete(key):  # the artifact's surviving pieces
                    done["objects_deleted"] += 1
                    per_upload[doc["upload_id"]]["objects"] += 1
            done["documents_deleted"] += metadata.delete_artifacts([artifact_id])
            per_upload[doc["upload_id"]]["documents"].append(artifact_id)
        for finding in {f.upload_id: f for f in broken.values() if f.current and f.upload_id}.values():
            if _mark_missing(metadata, finding):
                done["uploads_marked_failed"] += 1

    for upload_id, what in per_upload.items():
        upload = metadata.get_upload(upload_id) if upload_id else None
        metadata.append_audit(
            "fsck_repair",
            upload["subject_id"] if upload else None,
            upload_id,
            {"objects_deleted": what["objects"], "artifacts_deleted": what["documents"]},
        )
    return done


def _mark_missing(metadata: MetadataStore, finding: Finding) -> bool:
    error = {
        "code": ErrorCode.ARTIFACT_MISSING.value,
        "message": f"the stored {finding.asset_key} artifact was missing and its record was removed; "
        f"`avatarpipe resume {finding.upload_id}` rebuilds it",
        "step": finding.asset_key,
    }
    try:
        metadata.set_upload_status(finding.upload_id, "failed", error=error)  # type: ignore[arg-type]
    except (InvalidTransition, NotFound):  # erased or gone: nothing to mark
        return False
    return True


def fsck(
    store: ObjectStore,
    metadata: MetadataStore,
    *,
    do_repair: bool = False,
    upload_id: str | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    respect_leases: bool = True,
) -> tuple[FsckReport, FsckReport | None]:
    """Check, and with ``do_repair`` repair and check again; returns (before, after or None)."""
    before = check(store, metadata, upload_id=upload_id, grace_s=grace_s, respect_leases=respect_leases)
    if not do_repair or before.clean:
        return before, None
    before.repairs = repair(store, metadata, before)
    after = check(store, metadata, upload_id=upload_id, grace_s=grace_s, respect_leases=respect_leases)
    return before, after
