"""What every avatar asset does around its science call: find the upload, load parent
artifacts, write the output under a subject-prefixed content-addressed key, record the
`artifacts` document, and turn errors into a failed upload with a typed reason."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetExecutionContext, Backoff, Failure, Jitter, MetadataValue, RetryPolicy

from models.catalogue import ASSET_MODELS
from models.errors import ErrorCode, PipelineError
from ops.faults import FAULT_KILL_ENV, kill_if_armed
from ops.steps import StepResult
from orchestration.registry import mlflow_version_url
from storage.metadata_store import ArtifactRecord, MetadataStore
from storage.object_store import ObjectStore, StoredObject, artifact_key, key_without_subject, sha256_hex
from storage.retry import StoreUnavailable, with_retries

# TEST-ONLY fault injection (tests/reliability, read in ops.faults): "<asset>:stored" SIGKILLs
# this process right after the step's objects are written (before its `artifacts` document),
# "<asset>:recorded" right after the document and audit event. Never set it outside tests.

_log = logging.getLogger(__name__)


def step_retry_policy() -> RetryPolicy:
    """Dagster's retry of a failed step: transient failures (STORE_UNAVAILABLE once the store's
    own retries are spent, unexpected errors) get `AVATARPIPE_STEP_RETRIES` more attempts (2),
    waits growing exponentially from `AVATARPIPE_STEP_RETRY_DELAY_S` (5 s) with +/- jitter.
    Permanent input errors raise `Failure(allow_retries=False)` and bypass it."""
    from orchestration.config import load_config

    config = load_config()
    return RetryPolicy(
        max_retries=config.step_retries,
        delay=config.step_retry_delay_s,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


@dataclass
class StepContext:
    asset_key: str
    upload_id: str
    subject_id: str
    run_id: str
    store: ObjectStore
    metadata: MetadataStore
    model_versions: dict[str, str]
    model_params: dict[str, dict]
    code_version: str
    timer: dict[str, float] = field(default_factory=dict)
    retries_left: int = 0  # Dagster RetryPolicy attempts still to come after this one
    model_urls: dict[str, str] = field(default_factory=dict)  # MLflow UI page of each version used (issue 19)


@dataclass(frozen=True)
class Parent:
    doc: dict
    data: bytes

    def json(self) -> dict:
        return json.loads(self.data)


def step_context(context: AssetExecutionContext, asset_key: str) -> StepContext:
    upload_id = context.partition_key
    metadata: MetadataStore = context.resources.metadata.store()
    upload = metadata.get_upload(upload_id)
    if upload is None:
        raise Failure(description=f"unknown upload {upload_id}", allow_retries=False)
    registry = context.resources.model_registry
    production = registry.production_versions()
    names = ASSET_MODELS[asset_key]
    return StepContext(
        asset_key=asset_key,
        upload_id=upload_id,
        subject_id=upload["subject_id"],
        run_id=context.run_id,
        store=with_retries(context.resources.object_store.store()),  # transient errors: backoff
        metadata=metadata,
        model_versions={name: production[name].version for name in names},
        model_params={name: production[name].params for name in names} | _body_hints(asset_key, upload),
        code_version=context.assets_def.code_versions_by_key[context.asset_key] or "",
        retries_left=_retries_left(context),
        model_urls={name: mlflow_version_url(registry.location(), name, production[name].version) for name in names},
    )


def _body_hints(asset_key: str, upload: dict) -> dict[str, dict]:
    """The uploader's body hints travel to the fit with the model parameters (issue 12)."""
    hints = upload.get("body_hints")
    return {"body_hints": dict(hints)} if asset_key == "smplx_params" and hints else {}


def _retries_left(context: AssetExecutionContext) -> int:
    policy = context.op_def.retry_policy
    return max(0, policy.max_retries - context.retry_number) if policy else 0


def fault_point(step: StepContext, point: str) -> None:
    """TEST-ONLY: die like a lost machine (SIGKILL, no cleanup) at a step boundary when
    `AVATARPIPE_FAULT_KILL_AT` names it (see `FAULT_KILL_ENV`)."""
    kill_if_armed(FAULT_KILL_ENV, f"{step.asset_key}:{point}")


def load_parent(step: StepContext, asset_key: str, extra_file: str | None = None) -> Parent:
    """The current artifact of an upstream asset for this upload (or one of its extra files)."""
    doc = step.metadata.current_artifact(step.upload_id, asset_key)
    if doc is None:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR,
            f"upstream artifact {asset_key} is missing for this upload; materialise it first",
            step.asset_key,
        )
    key = doc["extra_files"][extra_file] if extra_file else doc["key"]
    return Parent(doc=doc, data=step.store.get_bytes(key))


def save_artifact(
    step: StepContext,
    data: bytes,
    ext: str,
    parents: list[Parent],
    metrics: dict[str, Any],
    extra_files: dict[str, tuple[bytes, str]] | None = None,
) -> tuple[str, StoredObject]:
    """Write extra files first and the main object last, then the `artifacts` document.

    Keys are content addressed, so a retried step rewrites the same keys and the document
    upsert is idempotent: retries never duplicate anything.
    """
    extra_keys: dict[str, str] = {}
    for name, (blob, blob_ext) in (extra_files or {}).items():
        key = artifact_key(step.subject_id, step.upload_id, step.asset_key, sha256_hex(blob), blob_ext)
        extra_keys[name] = step.store.put_bytes(key, blob).key
    digest = sha256_hex(data)
    obj = step.store.put_bytes(
        artifact_key(step.subject_id, step.upload_id, step.asset_key, digest, ext), data
    )
    return record_stored_artifact(step, obj, extra_keys, parents, metrics), obj


def record_step_result(step: StepContext, result: StepResult, parents: list[Parent]) -> tuple[str, StoredObject]:
    """Record the `artifacts` document for outputs a compute-launched step already stored."""
    obj = StoredObject(
        key=result.key, uri=result.uri, sha256=result.sha256, bytes=result.bytes,
        path=step.store.local_path(result.key),
    )  # fmt: skip
    step.timer["compute"] = result.compute_seconds
    return record_stored_artifact(step, obj, result.extra_files, parents, result.metrics), obj


def record_stored_artifact(
    step: StepContext, obj: StoredObject, extra_keys: dict[str, str], parents: list[Parent], metrics: dict[str, Any]
) -> str:
    """The `artifacts` document and audit event for an object that is already stored."""
    fault_point(step, "stored")
    artifact_id = step.metadata.record_artifact(
        ArtifactRecord(
            upload_id=step.upload_id,
            subject_id=step.subject_id,
            asset_key=step.asset_key,
            uri=obj.uri,
            key=obj.key,
            sha256=obj.sha256,
            bytes=obj.bytes,
            code_version=step.code_version,
            run_id=step.run_id,
            model_versions=step.model_versions,
            lineage_model_versions=lineage_model_versions(step.model_versions, [p.doc for p in parents]),
            parent_ids=[p.doc["_id"] for p in parents],
            metrics=metrics,
            extra_files=extra_keys,
            compute_seconds=round(step.timer.get("compute", 0.0), 3),
        )
    )
    step.metadata.append_audit(
        "materialise",
        step.subject_id,
        step.upload_id,
        {"asset": step.asset_key, "artifact_id": artifact_id, "run_id": step.run_id},
    )
    fault_point(step, "recorded")
    return artifact_id


def lineage_model_versions(own: dict[str, str], parent_docs: list[dict]) -> dict[str, str]:
    """The model versions behind an artifact and everything it was computed from."""
    lineage: dict[str, str] = {}
    for doc in parent_docs:
        lineage.update(doc.get("lineage_model_versions") or doc.get("model_versions") or {})
    return dict(sorted((lineage | own).items()))


@contextlib.contextmanager
def timed(step: StepContext, name: str = "compute") -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        step.timer[name] = step.timer.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def failure_guard(step: StepContext) -> Iterator[None]:
    """Record why a step failed and stop it with a typed reason.

    Input errors (permanent codes) fail the upload and are never retried. Transient ones
    (STORE_UNAVAILABLE once the store's own retries are spent, unexpected exceptions) keep the
    upload `running` with the error while Dagster's RetryPolicy has attempts left and fail it
    on the last one. What reaches Dagster's event log has the subject id redacted.
    """
    try:
        yield
    except PipelineError as exc:
        _fail(step, exc, exc)
    except StoreUnavailable as exc:
        _fail(step, PipelineError(ErrorCode.STORE_UNAVAILABLE, str(exc), step.asset_key), exc)
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - every error becomes a typed Failure in _fail
        message = redact(f"{type(exc).__name__}: {exc}", step)[:500]
        _fail(step, PipelineError(ErrorCode.INTERNAL_ERROR, message, step.asset_key), exc)


def redact(text: str, step: StepContext) -> str:
    """Object keys name the subject (`subjects/{subject}/...`): keep it out of log lines."""
    return text.replace(f"subjects/{step.subject_id}/", "subjects/<subject>/")


def _fail(step: StepContext, error: PipelineError, cause: BaseException) -> None:
    error.step = error.step or step.asset_key
    retrying = not error.permanent and step.retries_left > 0
    _record_status(step, "running" if retrying else "failed", error)
    metadata: dict[str, Any] = {"error_code": error.code.value, "step": error.step}
    if isinstance(cause, PipelineError):
        raise Failure(description=error.message, metadata=metadata, allow_retries=not error.permanent) from cause
    # an unexpected error: its traceback goes to Dagster redacted, not as the chained exception
    metadata["traceback"] = MetadataValue.text(redact("".join(traceback.format_exception(cause)), step))
    raise Failure(description=error.message, metadata=metadata, allow_retries=True) from None


def _record_status(step: StepContext, status: str, error: PipelineError) -> None:
    """Best effort: when the metadata store itself is what failed, the run's failure in Dagster
    is the record (`avatarpipe resume` picks the upload up again)."""
    try:
        step.metadata.set_upload_status(step.upload_id, status, error=error.to_dict(), run_id=step.run_id)
    except Exception as exc:  # noqa: BLE001 - the original failure is what must propagate
        _log.warning("could not record status %s for upload %s: %s", status, step.upload_id, type(exc).__name__)


def result_metadata(step: StepContext, artifact_id: str, obj: StoredObject, metrics: dict) -> dict:
    """Dagster materialisation metadata: where the artifact is, what produced it, its metrics."""
    meta: dict[str, Any] = {
        "artifact_id": artifact_id,
        # the key without its `subjects/{subject}/` head: no subject ids in Dagster's event log
        "object": key_without_subject(obj.key),
        "sha256": obj.sha256,
        "bytes": obj.bytes,
        "compute_seconds": round(step.timer.get("compute", 0.0), 3),
        "model_versions": MetadataValue.json(step.model_versions),
        **{f"mlflow_{name}": MetadataValue.url(url) for name, url in step.model_urls.items()},
    }
    for name, value in metrics.items():
        if isinstance(value, (int, float, str, bool)):
            meta[name] = value
    return meta
