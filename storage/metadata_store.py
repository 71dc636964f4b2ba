"""Pipeline metadata (subjects, uploads, artifact lineage, audit log) in MongoDB collections.

Two backends behind the same pymongo API:

* a real MongoDB (``pymongo.MongoClient(uri)``) when a URI is given;
* otherwise an embedded montydb repository using its sqlite engine.

Only the API subset both support is used (``insert_one``, ``find``/``find_one`` with
``sort``, ``update_one``/``update_many`` with ``upsert``, ``$set``, ``$setOnInsert``,
``$addToSet``). montydb implements updates as read-modify-write in Python over
separate sqlite connections, which is neither thread-safe nor atomic across
processes, so every embedded operation runs under a per-store thread lock plus an
exclusive ``flock`` on a lock file in the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import pymongo
import pymongo.errors

from storage.retry import TransientStoreError, call_with_retry, retrying_database

SUBJECT_STATUSES = frozenset({"active", "erased"})
# "failed_quality": a blocking (ERROR) quality check failed, so nothing downstream of the failed
# artifact was built; the failed expectations are in `validations`.
UPLOAD_STATUSES = frozenset({"pending", "running", "ready", "failed", "failed_quality", "erased"})
COLLECTIONS = ("subjects", "uploads", "artifacts", "audit_log", "validations", "erasures", "api_keys")
VALIDATION_SEVERITIES = frozenset({"ERROR", "WARN"})

_LOCK_FILE = ".avatarpipe.lock"
# Written next to the repository when it is created: a repository that existed and is gone
# (its directory moved, unmounted, deleted) is an unavailable store, never a fresh empty one.
_CREATED_MARKER_SUFFIX = ".created"


class RepositoryUnavailable(TransientStoreError):
    """The embedded repository is not where it was (its directory or marker is missing).

    Transient: a remounted or restored directory cures it, so the retry layer waits for it and
    then reports STORE_UNAVAILABLE; reading on would answer "no such upload" for every upload.
    """


def _created_marker(repository: Path) -> Path:
    return repository.with_name(repository.name + _CREATED_MARKER_SUFFIX)


def _check_repository(repository: Path) -> None:
    if not (repository / _MONTY_STORAGE_FILE).is_file():
        raise RepositoryUnavailable("the embedded metadata repository is not reachable")
# montydb's marker file naming the repository's storage engine.
_MONTY_STORAGE_FILE = ".monty.storage"


class InvalidTransition(ValueError):
    """Raised when a status change is not allowed (nothing leaves "erased")."""


class NotFound(KeyError):
    """Raised when updating a subject or upload that does not exist."""


@dataclass(frozen=True)
class ArtifactRecord:
    upload_id: str
    subject_id: str
    asset_key: str
    uri: str
    key: str
    sha256: str
    bytes: int
    code_version: str
    run_id: str | None
    model_versions: dict[str, str] = field(default_factory=dict)
    parent_ids: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> object key
    compute_seconds: float | None = None
    # every model version in this artifact's lineage: its own `model_versions` plus its
    # parents' lineage ("which avatars were built with body_fitter 1" is one query)
    lineage_model_versions: dict[str, str] = field(default_factory=dict)

    @property
    def artifact_id(self) -> str:
        return artifact_id(self.upload_id, self.asset_key, self.sha256, self.code_version)


@dataclass(frozen=True)
class ValidationRecord:
    """One quality-check run on one artifact (one document in ``validations``).

    ``passed`` is False when any expectation failed; ``severity`` is then "ERROR" if a blocking
    expectation failed, else "WARN". ``results`` holds every expectation's outcome (name,
    severity, success, observed value) so pass rates can be aggregated without GX;
    ``gx_result_json`` is Great Expectations' own validation result, for Data Docs.
    """

    upload_id: str
    subject_id: str
    asset_key: str
    artifact_id: str | None
    check_name: str
    suite_name: str
    suite_sha: str
    run_id: str | None
    passed: bool
    severity: str | None
    blocking: bool = True
    failed_expectations: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    statistics: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    gx_result_json: str | None = None
    duration_s: float | None = None


def artifact_id(upload_id: str, asset_key: str, sha256: str, code_version: str) -> str:
    """Deterministic id so recording the same output twice is an upsert, not a duplicate."""
    raw = f"{upload_id}|{asset_key}|{sha256}|{code_version}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def utcnow() -> datetime:
    """Current UTC time truncated to milliseconds, the resolution BSON stores.

    Truncating up front means a stored timestamp reads back equal to the one written.
    """
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_seq_lock = threading.Lock()
_last_seq = 0


def _next_seq() -> int:
    """Strictly increasing (per process) nanosecond stamp used to order audit events within one ms."""
    global _last_seq
    with _seq_lock:
        _last_seq = max(time.time_ns(), _last_seq + 1)
        return _last_seq


class MetadataStore:
    """Typed access to the avatarpipe collections. Build it with :func:`open_metadata_store`."""

    def __init__(self, client: Any, db_name: str, lock_path: Path | None = None) -> None:
        self.client = client
        # every collection operation is retried on transient errors (storage/retry.py)
        self.db = retrying_database(client[db_name])
        self.db_name = db_name
        self.embedded = lock_path is not None
        self._lock_path = lock_path
        self._thread_lock = threading.RLock()
        # flock is not reentrant: only the outermost _locked() takes and releases it.
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._lock_pid = os.getpid()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "embedded" if self.embedded else "mongodb"
        return f"MetadataStore({kind}, db={self.db_name!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_path is None:  # real MongoDB does its own concurrency control
            yield
            return
        repository = self._lock_path.parent
        if self._lock_pid != os.getpid():
            # Forked child: the inherited fd shares its flock with the parent (so it would
            # not exclude it) and the thread lock may be held by a thread that no longer exists.
            self._thread_lock = threading.RLock()
            self._lock_depth = 0
            self._lock_fd = None
            self._lock_pid = os.getpid()
        with self._thread_lock:
            if self._lock_depth == 0:  # each outermost operation: the repository is still there
                call_with_retry("metadata.repository", lambda: _check_repository(repository))
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _find(self, collection: str, query: dict[str, Any], sort: list[tuple[str, int]]) -> list[dict]:
        with self._locked():
            return list(self.db[collection].find(query, sort=sort))

    def _find_one(self, collection: str, query: dict[str, Any]) -> dict | None:
        with self._locked():
            return self.db[collection].find_one(query)

    def _upsert(self, collection: str, _id: str, update: dict[str, Any]) -> dict:
        """:meth:`_upsert_no_read`, then return the resulting document."""
        with self._locked():
            self._upsert_no_read(collection, _id, update)
            doc = self.db[collection].find_one({"_id": _id})
        assert doc is not None
        return doc

    def _upsert_no_read(self, collection: str, _id: str, update: dict[str, Any]) -> None:
        """``update_one({"_id": _id}, update, upsert=True)`` that tolerates losing an insert race.

        Two writers upserting the same new ``_id`` can both miss the match and one gets
        DuplicateKeyError (real MongoDB documents this; montydb raises its own class);
        retrying once turns it into a plain update.
        """
        coll = self.db[collection]
        with self._locked():
            try:
                coll.update_one({"_id": _id}, update, upsert=True)
            except Exception as exc:
                if not _is_duplicate_key(exc):
                    raise
                coll.update_one({"_id": _id}, update, upsert=True)

    # -- indexes / lifecycle ---------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Create the indexes queries rely on. montydb has no indexes: its no-op is fine."""
        specs = {
            "artifacts": [[("upload_id", 1), ("asset_key", 1)], [("asset_key", 1), ("superseded_by", 1)],
                          [("superseded_at", 1)]],
            "uploads": [[("subject_id", 1)]],
            "audit_log": [[("subject_id", 1), ("at", 1)]],
            "validations": [[("upload_id", 1), ("created_at", 1)], [("asset_key", 1), ("created_at", 1)]],
        }
        with self._locked():
            for collection, indexes in specs.items():
                for keys in indexes:
                    try:
                        self.db[collection].create_index(keys)
                    except NotImplementedError:
                        return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- subjects ---------------------------------------------------------------------

    def ensure_subject(self, subject_id: str, consent: dict | None = None) -> dict:
        """Create the subject if missing; if ``consent`` is given it replaces the stored one.

        Never changes ``status``: an erased subject stays erased.
        """
        now = utcnow()
        on_insert: dict[str, Any] = {"status": "active", "created_at": now}
        update: dict[str, Any] = {"$setOnInsert": on_insert}
        if consent is None:
            on_insert.update(consent={}, updated_at=now)
        else:
            update["$set"] = {"consent": dict(consent), "updated_at": now}
        return self._upsert("subjects", subject_id, update)

    def get_subject(self, subject_id: str) -> dict | None:
        return self._find_one("subjects", {"_id": subject_id})

    def set_subject_status(self, subject_id: str, status: str) -> dict:
        if status not in SUBJECT_STATUSES:
            raise ValueError(f"unknown subject status {status!r}")
        subjects = self.db["subjects"]
        with self._locked():
            doc = subjects.find_one({"_id": subject_id})
            if doc is None:
                raise NotFound(subject_id)
            if doc["status"] == "erased" and status != "erased":
                raise InvalidTransition(f"subject {subject_id} is erased")
            subjects.update_one(
                {"_id": subject_id},
                {"$set": {"status": status, "updated_at": utcnow()}},
            )
            return subjects.find_one({"_id": subject_id})

    # -- uploads ----------------------------------------------------------------------

    def create_upload(self, upload_id: str, subject_id: str, photo_key: str, pipeline_version: str) -> dict:
        """Create an upload in status "pending"; calling again returns the existing doc untouched.

        Raises ValueError if the id already exists for a different subject or photo.
        """
        now = utcnow()
        doc = self._upsert(
            "uploads",
            upload_id,
            {
                "$setOnInsert": {
                    "subject_id": subject_id,
                    "photo_key": photo_key,
                    "status": "pending",
                    "error": None,
                    "pipeline_version": pipeline_version,
                    "created_at": now,
                    "updated_at": now,
                    "dagster_run_ids": [],
                }
            },
        )
        if doc["subject_id"] != subject_id or doc["photo_key"] != photo_key:
            raise ValueError(
                f"upload {upload_id} already exists for subject {doc['subject_id']!r}, photo {doc['photo_key']!r}"
            )
        return doc

    def set_upload_status(
        self,
        upload_id: str,
        status: str,
        error: dict | None = None,
        run_id: str | None = None,
    ) -> dict:
        """Set status and error (``None`` clears it); record ``run_id`` once in ``dagster_run_ids``.

        An erased upload cannot be moved to any other status, so a run that finishes
        after an erasure cannot resurrect it.
        """
        if status not in UPLOAD_STATUSES:
            raise ValueError(f"unknown upload status {status!r}; expected one of {sorted(UPLOAD_STATUSES)}")
        update: dict[str, Any] = {
            "$set": {
                "status": status,
                "error": _normalise_error(error),
                "updated_at": utcnow(),
            }
        }
        if run_id is not None:
            update["$addToSet"] = {"dagster_run_ids": run_id}
        with self._locked():
            uploads = self.db["uploads"]
            if status == "erased":
                result = uploads.update_one({"_id": upload_id}, update)
            else:
                result = uploads.update_one({"_id": upload_id, "status": {"$ne": "erased"}}, update)
            if result.matched_count == 0:
                if uploads.find_one({"_id": upload_id}) is None:
                    raise NotFound(upload_id)
                raise InvalidTransition(f"upload {upload_id} is erased; cannot set status {status!r}")
            return uploads.find_one({"_id": upload_id})

    def set_upload_body_hints(self, upload_id: str, hints: dict[str, Any]) -> None:
        """The uploader's body hints (build, height, age group) on the upload; the fit reads them."""
        self._upsert_no_read("uploads", upload_id, {"$set": {"body_hints": dict(hints)}})

    def set_upload_owner(self, upload_id: str, key_id: str) -> None:
        """The API key that created the upload (the service shows an upload only to its owner)."""
        self._upsert_no_read("uploads", upload_id, {"$set": {"created_by": key_id}})

    def get_upload(self, upload_id: str) -> dict | None:
        return self._find_one("uploads", {"_id": upload_id})

    def mark_raw_photo_deleted(self, upload_id: str, reason: str) -> dict:
        """Record that the raw upload bytes were removed (data minimisation); the key stays for audit."""
        now = utcnow()
        return self._upsert(
            "uploads", upload_id, {"$set": {"raw_deleted_at": now, "raw_deleted_reason": reason, "updated_at": now}}
        )

    def list_uploads(self, subject_id: str | None = None, status: str | None = None) -> list[dict]:
        """Uploads, oldest first."""
        query: dict[str, Any] = {}
        if subject_id is not None:
            query["subject_id"] = subject_id
        if status is not None:
            query["status"] = status
        return self._find("uploads", query, [("created_at", 1), ("_id", 1)])

    # -- API keys (the HTTP service's callers; no personal data) -------------------------

    def create_api_key(self, key_id: str, role: str, secret_hash: str, name: str | None) -> dict:
        """Record a key by the hash of its secret (the secret itself is never stored)."""
        doc = {"role": role, "secret_hash": secret_hash, "name": name, "created_at": utcnow(), "revoked_at": None}
        return self._upsert("api_keys", key_id, {"$setOnInsert": doc})

    def get_api_key(self, key_id: str) -> dict | None:
        return self._find_one("api_keys", {"_id": key_id})

    def list_api_keys(self) -> list[dict]:
        return self._find("api_keys", {}, [("created_at", 1), ("_id", 1)])

    def revoke_api_key(self, key_id: str) -> dict | None:
        if self.get_api_key(key_id) is None:
            return None
        return self._upsert("api_keys", key_id, {"$set": {"revoked_at": utcnow()}})

    # -- upload leases (one writer per upload; see storage/lease.py) --------------------

    def acquire_upload_lease(self, upload_id: str, holder: dict[str, Any], ttl_s: float) -> dict | None:
        """Take the upload's lease for ``holder`` (a dict with a unique ``token``) if it is free,
        expired, or already held by that token; return the lease, or None when another holder
        has it. One conditional ``update_one``: atomic on MongoDB, and under the store lock on
        the embedded store. Raises NotFound for an unknown upload."""
        if not holder.get("token"):
            raise ValueError("a lease holder needs a token")
        now = utcnow()
        lease = {**holder, "acquired_at": now, "expires_at": now + timedelta(seconds=ttl_s)}
        free = {"$or": [{"lease": None}, {"lease.expires_at": {"$lte": now}}, {"lease.token": holder["token"]}]}
        with self._locked():
            uploads = self.db["uploads"]
            result = uploads.update_one({"_id": upload_id, **free}, {"$set": {"lease": lease}})
            if result.matched_count:
                return lease
            if uploads.find_one({"_id": upload_id}) is None:
                raise NotFound(upload_id)
            return None

    def renew_upload_lease(self, upload_id: str, token: str, ttl_s: float) -> bool:
        """Push the lease's expiry ``ttl_s`` into the future; False if ``token`` no longer holds it."""
        expires = utcnow() + timedelta(seconds=ttl_s)
        with self._locked():
            result = self.db["uploads"].update_one(
                {"_id": upload_id, "lease.token": token}, {"$set": {"lease.expires_at": expires}}
            )
        return result.matched_count == 1

    def release_upload_lease(self, upload_id: str, token: str) -> bool:
        """Drop the lease if ``token`` holds it (also used to break a dead holder's lease)."""
        with self._locked():
            result = self.db["uploads"].update_one({"_id": upload_id, "lease.token": token}, {"$set": {"lease": None}})
        return result.matched_count == 1

    def upload_lease(self, upload_id: str) -> dict | None:
        """The current lease of an upload (possibly expired), or None."""
        doc = self.get_upload(upload_id)
        return (doc or {}).get("lease")

    # -- artifacts --------------------------------------------------------------------

    def record_artifact(self, rec: ArtifactRecord) -> str:
        """Upsert the artifact and make it the current one for (upload_id, asset_key).

        Recording an id that had been superseded makes it current again. The new doc
        is written before older ones are marked superseded, so a crash in between
        leaves two current docs (``current_artifact`` picks the newest) rather than none.
        """
        art_id = rec.artifact_id
        now = utcnow()
        fields = asdict(rec)
        fields.update(superseded_by=None, superseded_at=None, updated_at=now)
        with self._locked():
            self._upsert_no_read(
                "artifacts",
                art_id,
                {"$set": fields, "$setOnInsert": {"created_at": now}},
            )
            self.db["artifacts"].update_many(
                {
                    "upload_id": rec.upload_id,
                    "asset_key": rec.asset_key,
                    "superseded_by": None,
                    "_id": {"$ne": art_id},
                },
                {"$set": {"superseded_by": art_id, "superseded_at": now, "updated_at": now}},
            )
        return art_id

    def current_artifact(self, upload_id: str, asset_key: str) -> dict | None:
        docs = self._find(
            "artifacts",
            {"upload_id": upload_id, "asset_key": asset_key, "superseded_by": None},
            [("updated_at", -1), ("created_at", -1), ("_id", -1)],
        )
        return docs[0] if docs else None

    def artifacts_for_upload(self, upload_id: str, include_superseded: bool = False) -> list[dict]:
        """Artifacts of one upload, oldest first."""
        query: dict[str, Any] = {"upload_id": upload_id}
        if not include_superseded:
            query["superseded_by"] = None
        return self._find("artifacts", query, [("created_at", 1), ("_id", 1)])

    def all_artifacts(self) -> list[dict]:
        """Every artifact document, superseded ones too, by upload (for `avatarpipe fsck`)."""
        return self._find("artifacts", {}, [("upload_id", 1), ("created_at", 1), ("_id", 1)])

    def get_artifact(self, artifact_id: str) -> dict | None:
        return self._find_one("artifacts", {"_id": artifact_id})

    def outdated_artifacts(self, model: str, version: str, asset_keys: list[str]) -> list[dict]:
        """Current artifacts of ``asset_keys`` not recorded with ``model`` at ``version``: what
        promoting that version makes stale. Sorted by upload, then age."""
        query = {
            "superseded_by": None,
            "asset_key": {"$in": list(asset_keys)},
            f"model_versions.{model}": {"$ne": str(version)},
        }
        return self._find("artifacts", query, [("upload_id", 1), ("created_at", 1), ("_id", 1)])

    def superseded_artifacts(self, before: datetime) -> list[dict]:
        """Artifacts superseded before ``before`` (retention candidates), sorted by upload."""
        query = {"superseded_by": {"$ne": None}, "superseded_at": {"$lt": before}}
        return self._find("artifacts", query, [("upload_id", 1), ("superseded_at", 1), ("_id", 1)])

    def delete_artifacts(self, artifact_ids: list[str]) -> int:
        """Delete artifact documents (their objects are the caller's to delete first)."""
        if not artifact_ids:
            return 0
        with self._locked():
            return self.db["artifacts"].delete_many({"_id": {"$in": list(artifact_ids)}}).deleted_count

    # -- audit log --------------------------------------------------------------------

    def append_audit(
        self,
        event: str,
        subject_id: str | None,
        upload_id: str | None,
        details: dict | None = None,
    ) -> None:
        seq = _next_seq()
        at = _EPOCH + timedelta(milliseconds=seq // 1_000_000)
        doc = {
            "_id": uuid.uuid4().hex,
            "event": event,
            "subject_id": subject_id,
            "upload_id": upload_id,
            "details": dict(details or {}),
            "at": at,
            "seq": seq,
        }
        with self._locked():
            self.db["audit_log"].insert_one(doc)

    def audit_for(self, subject_id: str) -> list[dict]:
        """Audit events of one subject, oldest first."""
        return self._find("audit_log", {"subject_id": subject_id}, [("at", 1), ("seq", 1)])

    def audit_events(self, event: str) -> list[dict]:
        """Audit events of one kind (also those about no subject, e.g. model promotions), oldest first."""
        return self._find("audit_log", {"event": event}, [("at", 1), ("seq", 1)])


    # -- validations (quality checks) ---------------------------------------------------

    def record_validation(self, rec: ValidationRecord) -> str:
        """Insert one validation document (one per check run, never overwritten); returns its id."""
        if rec.passed != (rec.severity is None):
            raise ValueError("a passed validation has no severity; a failed one has ERROR or WARN")
        if rec.severity is not None and rec.severity not in VALIDATION_SEVERITIES:
            raise ValueError(f"unknown severity {rec.severity!r}; expected one of {sorted(VALIDATION_SEVERITIES)}")
        doc = {"_id": uuid.uuid4().hex, **asdict(rec), "created_at": utcnow(), "seq": _next_seq()}
        with self._locked():
            self.db["validations"].insert_one(doc)
        return doc["_id"]

    def find_validations(
        self,
        *,
        upload_id: str | None = None,
        subject_id: str | None = None,
        asset_key: str | None = None,
        check_name: str | None = None,
        artifact_id: str | None = None,
        run_id: str | None = None,
        passed: bool | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict]:
        """Validation documents matching every given filter, oldest first.

        ``since`` is inclusive, ``until`` exclusive (``created_at``). "All avatars whose GLB
        failed a blocking check last week" is
        ``find_validations(asset_key="rigged_glb", severity="ERROR", since=week_ago)``.
        """
        query: dict[str, Any] = {
            key: value
            for key, value in {
                "upload_id": upload_id,
                "subject_id": subject_id,
                "asset_key": asset_key,
                "check_name": check_name,
                "artifact_id": artifact_id,
                "run_id": run_id,
                "passed": passed,
                "severity": severity,
            }.items()
            if value is not None
        }
        window: dict[str, datetime] = {}
        if since is not None:
            window["$gte"] = since
        if until is not None:
            window["$lt"] = until
        if window:
            query["created_at"] = window
        return self._find("validations", query, [("created_at", 1), ("seq", 1)])

    def latest_validations(self, upload_id: str, run_id: str | None = None) -> dict[str, dict]:
        """The newest validation of each check of an upload (of one run if ``run_id`` is given)."""
        latest: dict[str, dict] = {}
        for doc in self.find_validations(upload_id=upload_id, run_id=run_id):
            latest[doc["check_name"]] = doc  # oldest first: the last one wins
        return latest

    # -- erasure (right to erasure; see ops/erasure.py) -----------------------------------

    def collection_names(self) -> list[str]:
        """Every collection of the database (also ones other code may add later)."""
        with self._locked():
            return sorted(self.db.list_collection_names())

    def iter_documents(self, collection: str) -> list[dict]:
        """Every document of one collection (for the erasure scan; not for hot paths)."""
        return self._find(collection, {}, [("_id", 1)])

    def delete_documents(self, collection: str, ids: list[Any]) -> int:
        """Delete documents of any collection by ``_id``."""
        if not ids:
            return 0
        with self._locked():
            return self.db[collection].delete_many({"_id": {"$in": list(ids)}}).deleted_count

    def delete_subject_documents(self, subject_id: str, upload_ids: list[str]) -> dict[str, int]:
        """Delete the subject, its uploads, artifacts and validations; returns counts per collection.

        Matches by subject id *or* upload id so documents written with only one of them go too.
        """
        by_owner: dict[str, Any] = {"$or": [{"subject_id": subject_id}, {"upload_id": {"$in": list(upload_ids)}}]}
        counts: dict[str, int] = {}
        with self._locked():
            for collection in ("artifacts", "validations"):
                counts[collection] = self.db[collection].delete_many(by_owner).deleted_count
            uploads = {"$or": [{"subject_id": subject_id}, {"_id": {"$in": list(upload_ids)}}]}
            counts["uploads"] = self.db["uploads"].delete_many(uploads).deleted_count
            counts["subjects"] = self.db["subjects"].delete_many({"_id": subject_id}).deleted_count
        return counts

    def pseudonymise_audit(self, doc_ids: list[str], subject_hash: str) -> int:
        """Rewrite audit events to carry only the salted subject hash: subject id, upload id and
        details are dropped; event name, time and order stay (the history's shape survives)."""
        if not doc_ids:
            return 0
        update = {"$set": {"subject_id": None, "upload_id": None, "details": {}, "subject_hash": subject_hash}}
        with self._locked():
            return self.db["audit_log"].update_many({"_id": {"$in": list(doc_ids)}}, update).modified_count

    def append_pseudonymous_audit(self, event: str, subject_hash: str, details: dict | None = None) -> None:
        """An audit event about an erased subject: only its salted hash, never its id."""
        seq = _next_seq()
        doc = {"_id": uuid.uuid4().hex, "event": event, "subject_id": None, "upload_id": None,
               "subject_hash": subject_hash, "details": dict(details or {}),
               "at": _EPOCH + timedelta(milliseconds=seq // 1_000_000), "seq": seq}  # fmt: skip
        with self._locked():
            self.db["audit_log"].insert_one(doc)

    def audit_for_hash(self, subject_hash: str) -> list[dict]:
        """Pseudonymised audit events of an erased subject, oldest first."""
        return self._find("audit_log", {"subject_hash": subject_hash}, [("at", 1), ("seq", 1)])

    def get_erasure(self, erasure_id: str) -> dict | None:
        return self._find_one("erasures", {"_id": erasure_id})

    def update_erasure(self, erasure_id: str, update: dict[str, Any]) -> dict:
        """Upsert the erasure document (``update`` is a MongoDB update document)."""
        return self._upsert("erasures", erasure_id, update)


def _normalise_error(error: dict | None) -> dict | None:
    if error is None:
        return None
    missing = {"code", "message"} - error.keys()
    if missing:
        raise ValueError(f"error dict needs keys code and message (missing {sorted(missing)})")
    return {
        "code": str(error["code"]),
        "message": str(error["message"]),
        "step": error.get("step"),
    }


def _is_duplicate_key(exc: Exception) -> bool:
    if isinstance(exc, pymongo.errors.DuplicateKeyError):
        return True
    try:
        from montydb.errors import DuplicateKeyError as MontyDuplicateKeyError
    except ImportError:  # pragma: no cover - montydb is a hard dependency today
        return False
    return isinstance(exc, MontyDuplicateKeyError)


def open_metadata_store(uri: str | None, embedded_dir: Path, db_name: str = "avatarpipe") -> MetadataStore:
    """Connect to MongoDB at ``uri``, or open/create the embedded montydb repository at ``embedded_dir``."""
    if uri:
        client: Any = pymongo.MongoClient(uri, tz_aware=True)
        return MetadataStore(client, db_name)
    repository = Path(embedded_dir).expanduser().resolve()
    if _created_marker(repository).is_file():  # it existed: wait for it, never start an empty one
        call_with_retry("metadata.open", lambda: _check_repository(repository))
    repository.mkdir(parents=True, exist_ok=True)
    lock_path = repository / _LOCK_FILE
    store: MetadataStore | None = None
    with _flock(lock_path):
        client = _open_monty(repository)
        try:
            store = MetadataStore(client, db_name, lock_path=lock_path)
            existing = set(store.db.list_collection_names())
            for name in COLLECTIONS:
                if name not in existing:
                    # montydb's sqlite engine issues CREATE TABLE without IF NOT EXISTS on
                    # first write, so two processes creating a collection at once can
                    # fail; creating them all here, under the lock, avoids that race.
                    store.db.create_collection(name)
        except BaseException:
            if store is not None:
                store.close()
            else:
                client.close()
            raise
    return store


def _open_monty(repository: Path) -> Any:
    """Open a montydb sqlite repository, configuring it on first use.

    montydb silently defaults a repository without its ``.monty.storage`` marker to the
    flatfile engine, so the marker must be written (via ``set_storage``) before the
    first ``MontyClient``. BSON is pinned on (pymongo ships ``bson``) so datetimes,
    ints and nested documents round-trip exactly as they do on real MongoDB.
    """
    from montydb import MontyClient, set_storage

    marker = repository / _MONTY_STORAGE_FILE
    if not marker.is_file():
        set_storage(str(repository), storage="sqlite", use_bson=True, mongo_version="4.2")
    engine = marker.read_text().strip()
    if engine != "sqlite":
        raise ValueError(f"{repository} is a montydb repository using {engine!r}, expected 'sqlite'")
    created = _created_marker(repository)
    if not created.is_file():  # also for repositories made before the marker existed
        created.write_text("an embedded montydb repository lives in the directory of this name\n")
    return MontyClient(str(repository), tz_aware=True)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


__all__ = [
    "COLLECTIONS",
    "SUBJECT_STATUSES",
    "UPLOAD_STATUSES",
    "VALIDATION_SEVERITIES",
    "ArtifactRecord",
    "InvalidTransition",
    "MetadataStore",
    "NotFound",
    "ValidationRecord",
    "artifact_id",
    "open_metadata_store",
    "utcnow",
]
