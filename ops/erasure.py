"""Erase one subject from every store, verify it, and keep a certificate without personal data.

The engine runs named steps in order; each is idempotent and its completion (with counts) is
recorded in the subject's `erasures` document, so an erasure killed mid-way is finished by
running it again (done steps are skipped, the interrupted one is redone):

1. ``plan``: find the subject's uploads, Dagster runs and photo hashes (MongoDB, the object
   store listing, the Dagster instance). The plan names the subject's data, so it is stored
   *encrypted* (Fernet, key derived from the salt and the subject id: only a re-run given the
   same subject id can read it) and dropped once the certificate is written.
2. ``fence``: subject and uploads set to ``erased`` (final: a run finishing later cannot
   resurrect them, sensors skip erased subjects); unfinished Dagster runs of the partitions
   are terminated and marked canceled; each upload's lease is taken (waiting for an
   in-process runner to stop) so no writer is active afterwards.
3. ``object_store``: everything under ``subjects/{subject}/`` (S3: every version and delete
   marker), plus the local store's in-flight temp files there.
4. ``dagster``: the partitions' runs (``delete_run`` removes their events), compute logs,
   per-run event shards, check executions, cached asset rows, sensor ticks and backfills naming
   a partition, and the dynamic partitions (ops/erasure_stores.py).
5. ``mlflow``: runs naming the subject or its uploads, their model versions, then ``mlflow gc``.
6. ``metadata``: subjects, uploads, artifacts, validations and any other document naming the
   subject or an upload are deleted; audit events are rewritten to carry only the salted hash.
7. ``files``: the GX Data Docs site (it lists upload ids) is deleted (and rebuilt by the
   caller when it can), and leftover temp/cache files naming the subject are removed.
8. ``vacuum``: WAL checkpoint + VACUUM of every sqlite file under the home (metadata, Dagster,
   MLflow), so deleted rows do not survive in free pages; on PostgreSQL (Dagster's storage,
   MLflow's backend store) ``VACUUM (FULL, ANALYZE)`` of the tables that held the subject's
   rows (rewritten into new files; statistics refreshed, then `pg_statistic` itself rewritten:
   it keeps sampled values of the old rows otherwise). Not reachable from here, and said so
   in the certificate: WAL segments until recycled, replicas, backups.
9. ``verify``: the independent scan of ops/verification.py; its counts go in the certificate.

The certificate (`erasures/{salted hash}`) holds the hash, request/completion times, operator,
per-store counts and the verification summary: no ids, names or keys of the subject. It keeps
the erased upload ids and content hashes *encrypted* (``needles``, same key as the plan), so a
stand-alone ``verify-erasure --subject ID`` later searches for them too, not only for the id.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.faults import ERASURE_FAULT_ENV, kill_if_armed
from ops.verification import HASH_PREFIX_LEN, Needles, VerificationReport, verify
from storage.metadata_store import MetadataStore, NotFound, utcnow
from storage.object_store import ObjectStore, subject_prefix

SALT_ENV = "AVATARPIPE_ERASURE_SALT"
SALT_FILE = ".erasure_salt"
FAULT_ENV = ERASURE_FAULT_ENV  # tests only: "<step>" SIGKILLs this process inside that step (ops.faults)
STEPS = ("plan", "fence", "object_store", "dagster", "mlflow", "metadata", "files", "vacuum", "verify")
_OWN_COLLECTIONS = {"subjects", "uploads", "artifacts", "validations", "audit_log", "erasures"}


class UnknownSubject(LookupError):
    """No store holds anything of this subject, and it was never erased here."""


@dataclass
class ErasureEnv:
    """Handles on every store of one deployment (built by the orchestration layer)."""

    home: Path
    metadata: MetadataStore
    object_store: ObjectStore
    dagster_instance: Any | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_artifact_root: str | None = None  # s3://… (scanned by key) or a local root
    partitions_def: str = "uploads"
    lease_wait_s: float = 30.0
    lease_ttl_s: float = 120.0
    rebuild_data_docs: Callable[[], Any] | None = None

    def mlflow_client(self) -> Any | None:
        if not self.mlflow_tracking_uri:
            return None
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_tracking_uri, registry_uri=self.mlflow_tracking_uri)


@dataclass
class Plan:
    """What belongs to the subject (kept encrypted in the erasure document until it completes)."""

    upload_ids: set[str] = field(default_factory=set)
    run_ids: set[str] = field(default_factory=set)
    content_hashes: set[str] = field(default_factory=set)

    def merge(self, other: Plan) -> None:
        self.upload_ids |= other.upload_ids
        self.run_ids |= other.run_ids
        self.content_hashes |= other.content_hashes

    def needles(self, subject_id: str) -> Needles:
        return Needles(subject_id, tuple(sorted(self.upload_ids)), tuple(sorted(self.content_hashes)))

    def to_json(self) -> bytes:
        return json.dumps({k: sorted(v) for k, v in vars(self).items()}).encode()

    @staticmethod
    def from_json(data: bytes) -> Plan:
        raw = json.loads(data)
        return Plan(set(raw["upload_ids"]), set(raw["run_ids"]), set(raw["content_hashes"]))


@dataclass
class ErasureResult:
    status: str  # completed | completed_with_findings | already_erased
    certificate: dict[str, Any]
    verification: VerificationReport | None
    resumed: bool = False

    @property
    def clean(self) -> bool:
        return self.certificate.get("verification", {}).get("clean", False)


# -- salt and hashes ----------------------------------------------------------------------


def erasure_salt(home: Path) -> bytes:
    """The per-deployment secret salting subject hashes: `AVATARPIPE_ERASURE_SALT`, else a
    random 32-byte value created once in `$AVATARPIPE_HOME/.erasure_salt` (mode 600)."""
    from orchestration.config import home_secret, load_config

    return home_secret(load_config().erasure_salt, Path(home) / SALT_FILE)


def subject_hash(home: Path, subject_id: str) -> str:
    """sha256(salt + subject id): how certificates and pseudonymised audit events name a subject."""
    return hashlib.sha256(erasure_salt(home) + subject_id.encode()).hexdigest()


def _fernet(home: Path, subject_id: str) -> Any:
    from cryptography.fernet import Fernet

    key = hashlib.sha256(b"avatarpipe-erasure-plan|" + erasure_salt(home) + subject_id.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


# -- the engine ----------------------------------------------------------------------------


def erase_subject(env: ErasureEnv, subject_id: str, operator: str | None = None,
                  progress: Callable[[str], None] | None = None) -> ErasureResult:  # fmt: skip
    """Erase ``subject_id`` everywhere (see the module docstring). Raises UnknownSubject when
    nothing of it is held and it was never erased; storage.lease.UploadBusy when an upload's
    runner does not stop within ``env.lease_wait_s`` (re-run to finish)."""
    say = progress or (lambda _msg: None)
    erasure_id = subject_hash(env.home, subject_id)
    doc = env.metadata.get_erasure(erasure_id)
    if doc is not None and doc.get("status") in ("completed", "completed_with_findings"):
        return ErasureResult("already_erased", certificate_view(doc), None)
    plan = discover(env, subject_id)
    if doc is None and not (plan.upload_ids or _subject_known(env, subject_id)):
        raise UnknownSubject(subject_id)
    resumed = bool(doc and doc.get("steps"))
    if doc is not None and doc.get("plan"):
        plan.merge(Plan.from_json(_fernet(env.home, subject_id).decrypt(doc["plan"].encode())))
    now = utcnow()
    env.metadata.update_erasure(erasure_id, {
        "$setOnInsert": {"subject_hash": erasure_id, "requested_at": now, "steps": {}},
        "$set": {"salt_id": hashlib.sha256(erasure_salt(env.home)).hexdigest()[:12], "operator": operator or _default_operator(), "updated_at": now, "status": "in_progress",
                 "plan": _fernet(env.home, subject_id).encrypt(plan.to_json()).decode()},
        "$inc": {"attempts": 1},
    })  # fmt: skip
    if not resumed:
        env.metadata.append_pseudonymous_audit("erase_requested", erasure_id, {"operator": operator or _default_operator()})
    _mark(env, erasure_id, "plan", {"uploads": len(plan.upload_ids), "runs": len(plan.run_ids),
                                     "content_hashes": len(plan.content_hashes)})  # fmt: skip
    done = (env.metadata.get_erasure(erasure_id) or {}).get("steps", {})
    needles = plan.needles(subject_id)
    report: VerificationReport | None = None
    for step in STEPS[1:]:
        if done.get(step, {}).get("done") and step != "verify":
            say(f"erase: {step} already done")
            continue
        say(f"erase: {step}")
        started = time.perf_counter()
        _fault_point(step)
        if step == "verify":
            report = verify_subject(env, needles)
            counts: dict[str, Any] = report.certificate()
        else:
            counts = _STEP_FUNCS[step](env, subject_id, plan)
        counts = {**counts, "seconds": round(time.perf_counter() - started, 3)}
        _mark(env, erasure_id, step, counts)
    assert report is not None
    status = "completed" if report.clean else "completed_with_findings"
    final = env.metadata.update_erasure(erasure_id, {
        "$set": {"status": status, "completed_at": utcnow(), "verification": report.certificate(),
                 "counts": _store_counts(env.metadata.get_erasure(erasure_id) or {})},
        "$unset": {"plan": "", "request": ""},
    })  # fmt: skip
    # what a later stand-alone verification searches for (encrypted: only the subject id opens it)
    env.metadata.update_erasure(erasure_id, {"$set": {"needles": _fernet(env.home, subject_id).encrypt(
        json.dumps(needles.to_dict()).encode()).decode()}})  # fmt: skip
    env.metadata.append_pseudonymous_audit("erase", erasure_id, {"status": status, "counts": final.get("counts", {})})
    # the encrypted plan and the pre-certificate document versions leave free pages behind
    _vacuum_metadata(env)
    return ErasureResult(status, certificate_view(env.metadata.get_erasure(erasure_id) or final), report, resumed)


def request_erasure(env: ErasureEnv, subject_id: str, operator: str | None = None) -> str:
    """Record an erasure request for a later run (the `erase_subject` Dagster job) and return
    its id, the salted hash. The subject id is kept only encrypted (key derived from the salt),
    so the Dagster run's config and logs carry the hash, never the id."""
    erasure_id = subject_hash(env.home, subject_id)
    doc = env.metadata.get_erasure(erasure_id)
    if doc is None and not (discover(env, subject_id).upload_ids or _subject_known(env, subject_id)):
        raise UnknownSubject(subject_id)
    if doc is None or not str(doc.get("status", "")).startswith("completed"):
        token = _request_fernet(env.home).encrypt(subject_id.encode()).decode()
        env.metadata.update_erasure(erasure_id, {
            "$setOnInsert": {"subject_hash": erasure_id, "requested_at": utcnow(), "steps": {}, "status": "requested"},
            "$set": {"request": token, "operator": operator or _default_operator()},
        })  # fmt: skip
    return erasure_id


def erase_requested(env: ErasureEnv, erasure_id: str, progress: Callable[[str], None] | None = None) -> ErasureResult:
    """Carry out (or resume) an erasure recorded by :func:`request_erasure`."""
    doc = env.metadata.get_erasure(erasure_id)
    if doc is None:
        raise UnknownSubject(erasure_id)
    if str(doc.get("status", "")).startswith("completed"):
        return ErasureResult("already_erased", certificate_view(doc), None)
    subject_id = _request_fernet(env.home).decrypt(doc["request"].encode()).decode()
    return erase_subject(env, subject_id, doc.get("operator"), progress)


def _request_fernet(home: Path) -> Any:
    from cryptography.fernet import Fernet

    key = hashlib.sha256(b"avatarpipe-erasure-request|" + erasure_salt(home)).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _audited_content_hashes(events: list[dict]) -> set[str]:
    """The raw uploads' sha256 as the ingest (and minimisation) events recorded them: the raw
    object itself may be gone already (deleted once the avatar was ready), its hash is still a
    needle the verification must search for."""
    digests = ((event.get("details") or {}).get("sha256") for event in events)
    return {d for d in digests if isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d)}


def discover(env: ErasureEnv, subject_id: str) -> Plan:
    """Everything that currently names the subject: uploads (documents and object keys), the
    Dagster runs of their partitions, and the sha256 of its photos (raw and normalised)."""
    plan = Plan()
    for upload in env.metadata.list_uploads(subject_id):
        plan.upload_ids.add(upload["_id"])
        plan.run_ids |= set(upload.get("dagster_run_ids") or [])
        with contextlib.suppress(KeyError, ValueError):
            if upload.get("photo_key"):
                plan.content_hashes.add(env.object_store.stat(upload["photo_key"]).sha256)
    plan.content_hashes |= _audited_content_hashes(env.metadata.audit_for(subject_id))
    prefix = subject_prefix(subject_id)
    for key in env.object_store.list_keys(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) >= 2:
            plan.upload_ids.add(parts[0])
        if len(parts) >= 3 and parts[1] in ("raw", "photo"):
            with contextlib.suppress(KeyError):
                plan.content_hashes.add(env.object_store.stat(key).sha256)
    for upload_id in sorted(plan.upload_ids):
        for doc in env.metadata.artifacts_for_upload(upload_id, include_superseded=True):
            plan.run_ids |= {doc["run_id"]} if doc.get("run_id") else set()
            if doc.get("asset_key") in ("photo", "raw") and doc.get("sha256"):
                plan.content_hashes.add(doc["sha256"])
    if env.dagster_instance is not None and plan.upload_ids and not isinstance(env.dagster_instance, Unopenable):
        from ops.erasure_stores import partition_run_ids

        plan.run_ids |= partition_run_ids(env.dagster_instance, plan.upload_ids)
    return plan


def verify_subject(env: ErasureEnv, needles: Needles) -> VerificationReport:
    from ops.erasure_stores import unreachable_copies

    return verify(needles, home=env.home, object_store=env.object_store, metadata=env.metadata,
                  dagster_instance=env.dagster_instance, mlflow_client=_open_or_error(env.mlflow_client),
                  mlflow_tracking_uri=env.mlflow_tracking_uri, mlflow_artifact_root=env.mlflow_artifact_root,
                  unreachable=unreachable_copies(env))  # fmt: skip


def _open_or_error(opener: Callable[[], Any]) -> Any:
    """The client, or an object whose every use raises the opening error (a failed store)."""
    try:
        return opener()
    except Exception as exc:  # noqa: BLE001 - reported by verify() as the store's error
        return Unopenable(exc)


class Unopenable:
    """Stands for a configured store that could not be opened: any use raises why."""

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def __getattr__(self, name: str) -> Any:
        raise self._exc


def needles_for(env: ErasureEnv, subject_id: str) -> Needles:
    """What `verify-erasure` looks for: the subject id plus whatever still names it, plus the
    plan of an erasure in progress."""
    plan = discover(env, subject_id)
    doc = env.metadata.get_erasure(subject_hash(env.home, subject_id))
    if doc and doc.get("plan"):
        plan.merge(Plan.from_json(_fernet(env.home, subject_id).decrypt(doc["plan"].encode())))
    if doc and doc.get("needles"):  # a completed erasure: what it erased
        recorded = Needles.from_dict(json.loads(_fernet(env.home, subject_id).decrypt(doc["needles"].encode())))
        plan.upload_ids |= set(recorded.upload_ids)
        plan.content_hashes |= set(recorded.content_hashes)
    return plan.needles(subject_id)


def certificate_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The certificate as shown to an auditor (the encrypted plan is never shown)."""
    return {k: v for k, v in doc.items() if k not in ("plan", "request", "needles")}


# -- steps -------------------------------------------------------------------------------


def _step_fence(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    from storage.lease import UploadLease

    counts = {"subject_marked": 0, "uploads_marked": 0, "runs_canceled": 0}
    with contextlib.suppress(NotFound):
        env.metadata.set_subject_status(subject_id, "erased")
        counts["subject_marked"] = 1
    if env.dagster_instance is not None:
        from ops.erasure_stores import cancel_unfinished_runs

        counts["runs_canceled"] = len(cancel_unfinished_runs(env.dagster_instance, plan.run_ids))
    present = [u for u in sorted(plan.upload_ids) if env.metadata.get_upload(u) is not None]
    for upload_id in present:  # first: a runner finishing now cannot set its upload ready again
        env.metadata.set_upload_status(upload_id, "erased")
        counts["uploads_marked"] += 1
    for upload_id in present:  # then wait until no runner holds the upload (it may still write)
        with UploadLease(env.metadata, upload_id, purpose="erase", ttl_s=env.lease_ttl_s, wait_s=env.lease_wait_s):
            pass
    return counts


def _step_object_store(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    prefix = subject_prefix(subject_id)
    counts = {"objects": env.object_store.delete_prefix(prefix)}
    root = getattr(env.object_store, "root", None)
    if root is not None:  # local store: in-flight temp files are hidden from list_keys
        import shutil

        folder = Path(root).joinpath(*prefix.rstrip("/").split("/"))
        if folder.exists():
            counts["leftover_files"] = sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
    return counts


def _step_dagster(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    if env.dagster_instance is None:
        return {"skipped": 1}
    from ops.erasure_stores import erase_dagster

    return erase_dagster(env.dagster_instance, sorted(plan.upload_ids), plan.run_ids, env.partitions_def)


def _step_mlflow(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    if not env.mlflow_tracking_uri:
        return {"skipped": 1}
    from ops.erasure_stores import erase_mlflow

    root = env.home / "mlflow" / "artifacts"
    return erase_mlflow(env.mlflow_tracking_uri, plan.needles(subject_id), root if root.is_dir() else None)


def _step_metadata(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    from ops.verification import documents_naming

    counts = env.metadata.delete_subject_documents(subject_id, sorted(plan.upload_ids))
    needles = plan.needles(subject_id)
    audit = documents_naming(env.metadata, needles, ["audit_log"]).get("audit_log", [])
    counts["audit_pseudonymised"] = env.metadata.pseudonymise_audit(audit, subject_hash(env.home, subject_id))
    others = [c for c in env.metadata.collection_names() if c not in _OWN_COLLECTIONS]
    for collection, ids in documents_naming(env.metadata, needles, others).items():
        counts[f"other:{collection}"] = env.metadata.delete_documents(collection, ids)
    # documents of the known collections that name an upload in a field we do not query by
    for collection, ids in documents_naming(env.metadata, needles, ["subjects", "uploads", "artifacts", "validations"]).items():
        counts[collection] = counts.get(collection, 0) + env.metadata.delete_documents(collection, ids)
    return counts


def _step_files(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    """GX Data Docs (static pages listing upload ids) and temp/cache leftovers."""
    import shutil

    from ops.verification import scan_files

    counts = {"data_docs_removed": 0, "data_docs_rebuilt": 0, "quality_pages_removed": 0, "temp_files_removed": 0}
    needles = plan.needles(subject_id)
    page = env.home / "gx" / "quality_report.html"  # the self-contained report: the next quality-report redraws it
    if page.is_file() and any(value.encode() in page.read_bytes() for _kind, value in needles.items()):
        page.unlink()
        counts["quality_pages_removed"] = 1
    gx = env.home / "gx" / "uncommitted"
    if gx.is_dir() and scan_files(gx, needles)[0]:
        for name in ("validations", "data_docs"):
            shutil.rmtree(gx / name, ignore_errors=True)
        counts["data_docs_removed"] = 1
        if env.rebuild_data_docs is not None:
            env.rebuild_data_docs()
            counts["data_docs_rebuilt"] = 1
    for hit in scan_files(env.home, needles)[0]:
        path = env.home / hit.location
        if _is_temp_file(path):
            path.unlink(missing_ok=True)
            counts["temp_files_removed"] += 1
    return counts


def _is_temp_file(path: Path) -> bool:
    """Temp/cache files the product writes: hidden `*.tmp` (atomic writes), `tmp`/`cache` folders."""
    if path.name.endswith(".tmp") or path.name.startswith(".") and ".tmp" in path.name:
        return True
    return any(part in ("tmp", "cache", ".cache") for part in path.parts[-4:-1])


def _step_vacuum(env: ErasureEnv, subject_id: str, plan: Plan) -> dict[str, int]:
    from ops.erasure_stores import postgres_urls, vacuum_postgres, vacuum_sqlite

    counts = vacuum_sqlite(env.home)
    for role, url in postgres_urls(env).items():
        for key, value in vacuum_postgres(url, role).items():
            counts[f"postgres_{role}_{key}"] = value
    return counts


def _vacuum_metadata(env: ErasureEnv) -> None:
    from ops.erasure_stores import vacuum_sqlite

    if env.metadata.embedded:
        vacuum_sqlite(env.home / "metadata")


_STEP_FUNCS: dict[str, Callable[[ErasureEnv, str, Plan], dict[str, Any]]] = {
    "fence": _step_fence,
    "object_store": _step_object_store,
    "dagster": _step_dagster,
    "mlflow": _step_mlflow,
    "metadata": _step_metadata,
    "files": _step_files,
    "vacuum": _step_vacuum,
}


def _mark(env: ErasureEnv, erasure_id: str, step: str, counts: dict[str, Any]) -> None:
    env.metadata.update_erasure(erasure_id, {"$set": {f"steps.{step}": {"done": True, "at": utcnow(), "counts": counts},
                                                      "updated_at": utcnow()}})  # fmt: skip


def _store_counts(doc: dict[str, Any]) -> dict[str, Any]:
    steps = doc.get("steps", {})
    return {s: {k: v for k, v in steps.get(s, {}).get("counts", {}).items() if k != "seconds"}
            for s in ("object_store", "dagster", "mlflow", "metadata", "files", "vacuum")}  # fmt: skip


def _subject_known(env: ErasureEnv, subject_id: str) -> bool:
    return env.metadata.get_subject(subject_id) is not None


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _fault_point(step: str) -> None:
    """Tests: die like a killed process (SIGKILL, no cleanup) at the start of ``step``."""
    kill_if_armed(FAULT_ENV, step)


__all__ = ["HASH_PREFIX_LEN", "STEPS", "ErasureEnv", "ErasureResult", "Plan", "UnknownSubject", "Unopenable",
           "certificate_view", "discover", "erase_requested", "erase_subject", "erasure_salt", "needles_for", "request_erasure", "subject_hash", "verify_subject"]  # fmt: skip
