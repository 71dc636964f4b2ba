"""The application layer: what every front end calls to ingest, run, summarise, erase and verify.

The `avatarpipe` CLI (`orchestration/cli.py`, `orchestration/commands/`), the Dagster
definitions (`orchestration/jobs_erasure.py`) and a future HTTP service call these functions;
none of them opens a store itself. The stores are opened here, in one place each:
:func:`metadata_store` (a context manager: closed on the way out) and :func:`object_store`
(with the store retries of `storage.retry`). Results cross the boundary as dataclasses
(:class:`Ingested`, :class:`RunSummary`, :class:`ErasureOutcome`) that a front end renders to
text or JSON; exit codes and wording are the front end's business.

Heavy libraries (Dagster, torch through `models.fitting`, MLflow through the registry, Great
Expectations) are imported inside the functions that need them, so that a front end which
only ingests or reads the ledger starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import mimetypes
import re
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.catalogue import PIPELINE_VERSION
from models.errors import ErrorCode, PipelineError
from models.hints import BodyHints
from ops.erasure import (
    ErasureEnv,
    UnknownSubject,
    Unopenable,
    _default_operator,
    certificate_view,
    erase_subject,
    needles_for,
    subject_hash,
    verify_subject,
)
from ops.erasure import request_erasure as record_erasure_request
from ops.steps import ASSET_ORDER
from ops.upload_minimisation import minimise_upload_bytes
from orchestration.data_docs import rebuild_after_erasure
from orchestration.leases import upload_lease
from orchestration.settings import Settings, prepare_environment
from storage.lease import UploadBusy
from storage.metadata_store import MetadataStore, open_metadata_store
from storage.object_store import ObjectStore, artifact_key, object_store_from_config, sha256_hex
from storage.retry import with_retries

SUBJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- the stores, opened in one place ---------------------------------------------------------


@contextlib.contextmanager
def metadata_store(settings: Settings) -> Iterator[MetadataStore]:
    """The configured metadata store (MongoDB or the embedded montydb), closed afterwards."""
    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        yield metadata


def object_store(settings: Settings) -> ObjectStore:
    """The configured object store (local or S3), its operations retried on transient errors."""
    return with_retries(object_store_from_config(settings.object_store_config()))


def prepared_settings() -> Settings:
    """The validated configuration with the environment prepared for it (Dagster home, caches);
    what every front end starts with before it touches a store."""
    settings = Settings.from_env()
    prepare_environment(settings)
    return settings


# -- ingest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ingested:
    upload_id: str
    subject_id: str
    photo_key: str


def new_upload_id() -> str:
    return "u_" + secrets.token_hex(8)


def new_subject_id() -> str:
    return "s_" + secrets.token_hex(6)


def body_hints(build: str | None = None, height_cm: float | None = None, age_group: str | None = None) -> dict:
    """The uploader's body hints, validated, as stored on the `uploads` document (read by the
    fit step; a hint always wins); raises PipelineError(INVALID_HINT)."""
    return BodyHints(build=build, height_cm=height_cm, age_group=age_group).to_dict()


def plan_ingest(data: bytes, filename: str, subject_id: str | None) -> Ingested:
    """Choose the ids and the raw key (content addressed) of a new upload; nothing is written."""
    subject = subject_id or new_subject_id()
    if not SUBJECT_ID_PATTERN.match(subject):
        raise ValueError("subject ids may use letters, digits, '_' and '-' (at most 64)")
    upload_id = new_upload_id()
    suffix = Path(filename).suffix.lower().lstrip(".")
    ext = suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "bin"
    key = artifact_key(subject, upload_id, "raw", sha256_hex(data), ext)
    return Ingested(upload_id=upload_id, subject_id=subject, photo_key=key)


def register_upload(settings: Settings, ingested: Ingested, details: dict[str, Any], hints: dict | None = None) -> None:
    """Record the subject, the `uploads` document (pending, with the uploader's body hints) and
    the `ingest` audit event."""
    with metadata_store(settings) as metadata:
        metadata.ensure_subject(ingested.subject_id)
        metadata.create_upload(ingested.upload_id, ingested.subject_id, ingested.photo_key, PIPELINE_VERSION)
        if hints:  # read by the fit step (assets.steps.step_context)
            metadata.set_upload_body_hints(ingested.upload_id, hints)
        metadata.append_audit("ingest", ingested.subject_id, ingested.upload_id, details)


def ingest_photo(
    settings: Settings,
    data: bytes,
    filename: str,
    subject_id: str | None,
    store: ObjectStore | None = None,
    hints: dict | None = None,
) -> Ingested:
    """Store the raw upload under the subject's prefix (the configured object store: local or
    S3) and register it in the metadata store. This is also the function an HTTP upload
    handler calls with the request body.

    Data minimisation: what is stored is the upload without its identifying metadata (GPS,
    device, owner, timestamps, thumbnails, free text; `ops.upload_minimisation`), and the key
    and the audit record carry that object's sha256."""
    minimised = minimise_upload_bytes(data)
    data = minimised.data
    ingested = plan_ingest(data, filename, subject_id)
    store = with_retries(store) if store is not None else object_store(settings)
    store.put_bytes(ingested.photo_key, data)
    details = {"bytes": len(data), "sha256": sha256_hex(data), "metadata_removed": list(minimised.removed)}
    register_upload(settings, ingested, details, hints)
    return ingested


def put_presigned(url: str, headers: dict[str, str], data: bytes, timeout_s: float = 120) -> int:
    """PUT `data` to a presigned URL with plain HTTP; returns the HTTP status."""
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status


def ingest_via_presigned_put(settings: Settings, data: bytes, filename: str, subject_id: str | None) -> Ingested:
    """What a browser does: get a presigned PUT for the content-addressed raw key, upload over
    HTTP, and register the upload once S3 has accepted the object."""
    from storage.s3_store import S3ObjectStore, S3StoreConfig, create_upload_ticket  # boto3: S3 only

    data = minimise_upload_bytes(data).data  # the client strips before sending: nothing identifying travels
    planned = plan_ingest(data, filename, subject_id)
    config = {k: v for k, v in settings.object_store_config().items() if k != "kind"}
    ticket = create_upload_ticket(
        S3ObjectStore(S3StoreConfig(**config)),
        planned.subject_id,
        Path(planned.photo_key).suffix,
        mimetypes.guess_type(filename)[0],
        sha256=sha256_hex(data),
        upload_id=planned.upload_id,
    )
    put_presigned(ticket.request.url, ticket.request.headers, data)
    ingested = Ingested(upload_id=ticket.upload_id, subject_id=ticket.subject_id, photo_key=ticket.key)
    register_upload(settings, ingested, {"bytes": len(data), "via": "presigned-put"})
    return ingested


# -- run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresignedUpload:
    """A browser's ticket to upload straight to the uploads bucket (SSE-KMS headers included):
    the upload is registered (pending) and runs when the object lands (the S3/SQS sensor)."""

    upload_id: str
    subject_id: str
    key: str
    url: str
    headers: dict[str, str]
    expires_in: int


def presign_upload(settings: Settings, filename: str, subject_id: str | None, hints: dict | None = None) -> PresignedUpload:
    """Register a pending upload and return the presigned PUT for its raw object. Raises
    LookupError when no S3 object store is configured (a local store has nothing to presign)."""
    from storage.s3_store import S3ObjectStore, S3StoreConfig, create_upload_ticket  # boto3: S3 only

    if not settings.aws.s3_bucket:
        raise LookupError("presigned uploads need the S3 object store (AVATARPIPE_S3_BUCKET)")
    subject = subject_id or new_subject_id()
    suffix = Path(filename).suffix.lower().lstrip(".")
    config = {k: v for k, v in settings.object_store_config().items() if k != "kind"}
    ticket = create_upload_ticket(
        S3ObjectStore(S3StoreConfig(**config)),
        subject,
        suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "bin",
        mimetypes.guess_type(filename)[0],
    )
    ingested = Ingested(upload_id=ticket.upload_id, subject_id=ticket.subject_id, photo_key=ticket.key)
    register_upload(settings, ingested, {"via": "presigned-put"}, hints)
    return PresignedUpload(ticket.upload_id, ticket.subject_id, ticket.key, ticket.request.url,
                           dict(ticket.request.headers), settings.app.presign_expiry_s)  # fmt: skip


def run_avatar_job(
    settings: Settings,
    upload_id: str,
    wait_s: float = 0.0,
    *,
    defs: Any = None,
    on_event: Callable[[Any], None] | None = None,
) -> str:
    """Materialise the five assets for one partition in one run recorded in the instance,
    holding the upload's lease meanwhile (`orchestration/leases.py`); raises
    `storage.lease.UploadBusy` if another live runner holds it for more than ``wait_s``.
    ``defs``: definitions already built (a batch builds them once)."""
    with upload_lease(settings, upload_id, wait_s=wait_s) as lease:
        return execute_avatar_job(settings, upload_id, run_id=lease.run_id, defs=defs, on_event=on_event)


CODE_LOCATION_MODULE = "orchestration.definitions"  # `dagster dev -m orchestration.definitions` (make ui)


def code_location_origins(job_name: str) -> tuple[Any, Any]:
    """The origins a run launched from the UI would carry for ``job_name``: the remote origin
    (code location `orchestration.definitions`, its single repository) that the UI's
    re-execution reads, and the Python origin a run worker reconstructs the job from."""
    from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from orchestration.settings import REPO_ROOT

    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=CODE_LOCATION_MODULE, working_directory=str(REPO_ROOT)
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=CODE_LOCATION_MODULE)
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)
    recon = ReconstructableRepository.for_module(CODE_LOCATION_MODULE, "defs", working_directory=str(REPO_ROOT))
    return remote, ReconstructableJob(recon, job_name).get_python_origin()


def execute_avatar_job(
    settings: Settings,
    upload_id: str,
    *,
    asset_selection: list[str] | None = None,
    run_id: str | None = None,
    trigger: str = "cli",
    defs: Any = None,
    on_event: Callable[[Any], None] | None = None,
) -> str:
    """One run of the avatar job (or of ``asset_selection`` and their checks) for one partition,
    executed in this process, without the lease: callers hold it (`run_avatar_job`,
    `avatarpipe resume`).

    The run is a run of the code location, not an ephemeral one: its record carries the origins
    a run launched from the UI would carry (:func:`code_location_origins`), so it is listed under
    the job in the Dagster UI and can be re-executed from there. `execute_in_process` cannot
    record an origin, so the run is created here (`create_run_for_job`) and executed in this
    process the way a run worker executes a launched run (`execute_run`), with the in-process
    executor; launching it through the run launcher instead would cost a new process that
    imports everything again (measured in BENCHMARKS.md). ``on_event`` sees each Dagster event
    of the run as it happens (the CLI's progress lines, `orchestration.console.step_progress`)."""
    from dagster import AssetKey, DagsterInstance
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run_iterator

    from orchestration.console import run_logging_config
    from orchestration.definitions_build import AVATAR_JOB, build_definitions

    defs = defs or build_definitions(settings)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("uploads", [upload_id])
    selection = [AssetKey(a) for a in asset_selection] if asset_selection else None
    job = defs.resolve_job_def(AVATAR_JOB).as_ephemeral_job(resource_defs={}, input_values={})
    remote_origin, code_origin = code_location_origins(AVATAR_JOB)
    tags = {
        **job.run_tags,
        **job.get_tags_for_partition_key(upload_id, selected_asset_keys=selection),
        "avatarpipe/upload_id": upload_id,
        "avatarpipe/trigger": trigger,
    }
    run = instance.create_run_for_job(
        job_def=job.get_subset(asset_selection=set(selection)) if selection else job,
        run_id=run_id,
        run_config=run_logging_config(),
        tags=tags,
        asset_selection=frozenset(selection) if selection else None,
        remote_job_origin=remote_origin,
        job_code_origin=code_origin,
    )
    for event in execute_run_iterator(InMemoryJob(job), run, instance):
        if on_event is not None:
            on_event(event)
    return run.run_id


# -- summarise -------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What one upload's run produced, read from the metadata store (the ledger), not from logs:
    the `run --json` answer."""

    upload_id: str
    subject_id: str | None
    status: str  # ready | failed_quality | failed
    error: dict[str, Any] | None
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings_s: dict[str, float | None] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)
    dagster_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_unavailable_answer(upload_id: str, run_id: str | None, exc: Exception) -> dict[str, Any]:
    """The `run --json` answer when the metadata store cannot be read: nothing is reported as an
    artifact (the ledger is what says what exists); `avatarpipe resume` completes it later."""
    message = f"metadata store unavailable ({exc}); run `avatarpipe resume {upload_id}` when it is back"
    return {"upload_id": upload_id, "run_id": run_id, "status": "failed", "artifacts": {},
            "error": {"code": "STORE_UNAVAILABLE", "message": message}}  # fmt: skip


def summarise(settings: Settings, upload_id: str, run_id: str | None) -> RunSummary:
    """The upload's status, artifacts, metrics, quality verdicts, timings and model versions."""
    store = object_store(settings)  # `local_path` is None on S3
    with metadata_store(settings) as metadata:
        upload = metadata.get_upload(upload_id) or {}
        docs = {doc["asset_key"]: doc for doc in metadata.artifacts_for_upload(upload_id)}
        validations = metadata.latest_validations(upload_id, run_id=run_id)
    status = upload.get("status", "failed")
    if status not in ("ready", "failed_quality"):
        status = "failed"
    summary = RunSummary(
        upload_id=upload_id,
        subject_id=upload.get("subject_id"),
        status=status,
        error=upload.get("error") if status != "ready" else None,
        dagster_run_id=run_id,
    )
    for asset in ASSET_ORDER:
        doc = docs.get(asset)
        if doc is None:
            continue
        summary.artifacts[asset] = {
            "uri": doc["uri"],
            "path": store.local_path(doc["key"]),
            "sha256": doc["sha256"],
            "bytes": doc["bytes"],
        }
        summary.metrics[asset] = doc.get("metrics", {})
        summary.timings_s[asset] = doc.get("compute_seconds")
        summary.model_versions.update(doc.get("model_versions", {}))
    for name, doc in validations.items():
        summary.checks[name] = {
            "passed": doc["passed"],
            "severity": doc["severity"],
            "failed_expectations": doc["failed_expectations"],
        }
    return summary


# -- erase and verify ------------------------------------------------------------------------


@contextlib.contextmanager
def erasure_env(settings: Settings, *, lease_wait_s: float = 30.0) -> Iterator[ErasureEnv]:
    """Every store of this deployment as an `ops.erasure.ErasureEnv` (closed afterwards); the
    environment must be prepared (:func:`prepared_settings`)."""
    from dagster import DagsterInstance

    from orchestration.registry import RegistryLocation  # MLflow: only where erasure needs it

    location = RegistryLocation.for_settings(settings)
    mlflow_uri = location.tracking_uri if (location.db_path is None or location.db_path.is_file()) else None
    try:
        instance_context: Any = DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - a store that cannot be opened fails the verification
        instance_context = contextlib.nullcontext(Unopenable(exc))
    with metadata_store(settings) as metadata, instance_context as instance:
        yield ErasureEnv(
            home=settings.home,
            metadata=metadata,
            object_store=object_store(settings),
            dagster_instance=instance,
            mlflow_tracking_uri=mlflow_uri,
            mlflow_artifact_root=location.artifact_location,
            lease_wait_s=lease_wait_s,
            rebuild_data_docs=lambda: rebuild_after_erasure(settings.home, metadata),
        )


@dataclass(frozen=True)
class ErasureOutcome:
    """How an erasure (or its request) ended: ``status`` is erased | already_erased | requested |
    unknown_subject | busy; ``clean`` whether the verification scan found nothing."""

    status: str
    clean: bool = False
    answer: dict[str, Any] = field(default_factory=dict)  # the `--json` answer


def erase(
    settings: Settings,
    subject_id: str,
    operator: str | None = None,
    lease_wait_s: float = 30.0,
    progress: Callable[[str], None] | None = None,
) -> ErasureOutcome:
    """Erase one subject from every store, verify it, and return the certificate."""
    report = progress or (lambda message: print(message, file=sys.stderr))
    with erasure_env(settings, lease_wait_s=lease_wait_s) as env:
        try:
            result = erase_subject(env, subject_id, operator, progress=report)
        except UnknownSubject:
            return ErasureOutcome("unknown_subject", answer={
                "status": "unknown_subject",
                "message": "no store holds data of this subject and it was never erased here"})  # fmt: skip
        except UploadBusy as exc:
            return ErasureOutcome("busy", answer={
                "status": "busy", "message": f"{exc}; the erasure is recorded and resumes when re-run"})  # fmt: skip
    answer: dict[str, Any] = {"status": result.status, "resumed": result.resumed, "certificate": result.certificate}
    if result.verification is not None:
        answer["verification"] = result.verification.to_dict()
    return ErasureOutcome(result.status, clean=bool(result.clean), answer=answer)


def request_erasure(settings: Settings, subject_id: str, operator: str | None = None) -> ErasureOutcome:
    """Record the request only; the `erase_subject` job (config: erasure_id) carries it out."""
    with erasure_env(settings) as env:
        try:
            erasure_id = record_erasure_request(env, subject_id, operator)
        except UnknownSubject:
            return ErasureOutcome("unknown_subject", answer={
                "status": "unknown_subject", "message": "no store holds data of this subject"})  # fmt: skip
    return ErasureOutcome("requested", answer={"status": "requested", "erasure_id": erasure_id,
                                               "message": "launch the erase_subject job with this erasure_id"})  # fmt: skip


def verify_erasure(settings: Settings, subject_id: str) -> dict[str, Any]:
    """Scan every store for the subject id, its upload ids and its photos' content hashes;
    writes nothing. The `verify-erasure --json` answer (`clean`, `hits`, `scanned`...)."""
    started = time.perf_counter()
    with erasure_env(settings) as env:
        needles = needles_for(env, subject_id)
        report = verify_subject(env, needles)
    answer = report.to_dict()
    answer["needles"] = {"upload_ids": len(needles.upload_ids), "content_hashes": len(needles.content_hashes)}
    answer["seconds"] = round(time.perf_counter() - started, 3)
    return answer


# -- reading for people and clients -------------------------------------------------------


def subject_audit(settings: Settings, subject_id: str, operator: str | None = None) -> dict[str, Any]:
    """A subject's full history (the `audit --json` answer); reading it is an audited access."""
    hashed = subject_hash(settings.home, subject_id)
    with metadata_store(settings) as metadata:
        subject = metadata.get_subject(subject_id)
        erasure = metadata.get_erasure(hashed)
        if subject is None and erasure is None and not metadata.list_uploads(subject_id):
            return {"status": "unknown_subject"}
        who = {"operator": operator or _default_operator(), "command": "audit"}
        if subject is not None:
            metadata.append_audit("access", subject_id, None, who)
        else:
            metadata.append_pseudonymous_audit("access", hashed, who)
        events = metadata.audit_for(subject_id) + metadata.audit_for_hash(hashed)
        uploads = []
        for upload in metadata.list_uploads(subject_id):
            artifacts = metadata.artifacts_for_upload(upload["_id"], include_superseded=True)
            uploads.append({
                "upload_id": upload["_id"], "status": upload["status"], "created_at": upload.get("created_at"),
                "dagster_run_ids": upload.get("dagster_run_ids", []),
                "artifacts": [{"asset": a["asset_key"], "artifact_id": a["_id"], "sha256": a["sha256"],
                               "model_versions": a.get("model_versions", {}), "run_id": a.get("run_id"),
                               "superseded_by": a.get("superseded_by"), "created_at": a.get("created_at")}
                              for a in artifacts],
                "checks": [{"check": v["check_name"], "passed": v["passed"], "severity": v["severity"],
                            "at": v["created_at"]} for v in metadata.find_validations(upload_id=upload["_id"])],
            })  # fmt: skip
        models_used = sorted({f"{name}@{version}" for u in uploads for a in u["artifacts"]
                              for name, version in a["model_versions"].items()})  # fmt: skip
    return {
        "status": "erased" if erasure and erasure.get("status", "").startswith("completed") else "active",
        "subject": subject,
        "subject_hash": hashed,
        "events": [{"event": e["event"], "at": e["at"], "upload_id": e.get("upload_id"), "details": e.get("details")}
                   for e in sorted(events, key=lambda e: (e["at"], e["seq"]))],
        "uploads": uploads,
        "model_versions_used": models_used,
        "erasure": certificate_view(erasure) if erasure else None,
    }


def load_ready_glb(settings: Settings, upload_id: str) -> bytes:
    """The upload's current `rigged_glb` bytes; typed errors when it does not exist (yet)."""
    with metadata_store(settings) as metadata:
        upload = metadata.get_upload(upload_id)
        docs = {d["asset_key"]: d for d in metadata.artifacts_for_upload(upload_id)} if upload else {}
    if upload is None:
        raise PipelineError(ErrorCode.UNKNOWN_UPLOAD, f"no upload {upload_id!r}")
    if upload.get("status") != "ready" or "rigged_glb" not in docs:
        raise PipelineError(
            ErrorCode.UPLOAD_NOT_READY,
            f"upload {upload_id} is {upload.get('status')!r}, not 'ready': no avatar to export",
        )
    return object_store(settings).get_bytes(docs["rigged_glb"]["key"])


# -- reprocess (what model upgrades made stale) -----------------------------------------------


def _reprocess_row(target: Any, assets: tuple[str, ...]) -> dict[str, Any]:
    return {
        "upload_id": target.upload_id,
        "subject_id": target.subject_id,
        "status": target.status,
        "first_asset": target.first_asset,
        "assets": list(assets),
        "models": target.model_labels(),
        "outdated": [
            {"asset": o.asset_key, "model": o.model, "recorded": o.recorded, "production": o.production,
             "artifact_id": o.artifact_id}
            for o in target.outdated
        ],
    }  # fmt: skip


def reprocess(
    settings: Settings,
    models: list[str] | None = None,
    uploads: list[str] | None = None,
    dry_run: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """Plan (and unless `dry_run`, execute) the reprocessing of every upload whose current
    artifacts were made with a model version other than the production one: per upload one
    Dagster run of `reprocess_job` (in this process, recorded in the instance) selecting the
    first affected asset and everything downstream. Returns the `avatarpipe reprocess --json`
    answer; `avatarpipe reprocess` and `avatarpipe models rollback` both call this."""
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus  # Dagster: only when reprocessing

    from ops.reprocess import plan_reprocess, record_reprocess_request
    from ops.steps import ASSET_MODELS
    from orchestration.definitions_build import REPROCESS_JOB, build_definitions
    from orchestration.registry import production_map
    from orchestration.sensors import AssetLayout, reprocess_tags

    defs = build_definitions(settings)
    # The versions the code location was built from: its code versions name exactly these.
    production = production_map(defs.resources["model_registry"].production_versions())
    layout = AssetLayout.from_asset_graph(defs.resolve_asset_graph())
    with metadata_store(settings) as metadata:
        plan = plan_reprocess(metadata, production, ASSET_MODELS, layout.order, models, uploads)
        targets = plan.targets[:limit] if limit else plan.targets
        rows = [_reprocess_row(t, layout.rebuild[t.first_asset]) for t in targets]
        answer: dict[str, Any] = {
            "dry_run": dry_run,
            "production": plan.production,
            "models": list(plan.models),
            "uploads": rows,
            "skipped": [vars(s) for s in plan.skipped],
            "deferred": len(plan.targets) - len(targets),
        }
        if dry_run or not targets:
            answer["counts"] = {"planned": len(targets), "succeeded": 0, "failed": 0}
            return answer
        instance = DagsterInstance.get()
        job = defs.resolve_job_def(REPROCESS_JOB)
        for target, row in zip(targets, rows, strict=True):
            if not instance.has_dynamic_partition("uploads", target.upload_id):
                instance.add_dynamic_partitions("uploads", [target.upload_id])  # a retired partition
            print(f"avatarpipe: reprocessing {target.upload_id} from {target.first_asset} "
                  f"({', '.join(target.model_labels())})", file=sys.stderr)  # fmt: skip
            start = time.perf_counter()
            result = job.execute_in_process(
                partition_key=target.upload_id,
                instance=instance,
                asset_selection=[AssetKey(a) for a in row["assets"]],
                raise_on_error=False,
                tags=reprocess_tags(target, "cli"),
            )
            record_reprocess_request(metadata, target, row["assets"], "cli", {"run_id": result.run_id})
            run = instance.get_run_by_id(result.run_id)
            upload = metadata.get_upload(target.upload_id) or {}
            row.update(
                run_id=result.run_id,
                run_status=run.status.value if run else None,
                seconds=round(time.perf_counter() - start, 2),
                upload_status=upload.get("status"),
                error=upload.get("error") if run and run.status != DagsterRunStatus.SUCCESS else None,
            )
        ok = sum(r["run_status"] == DagsterRunStatus.SUCCESS.value for r in rows)
        answer["counts"] = {"planned": len(rows), "succeeded": ok, "failed": len(rows) - ok}
        return answer
