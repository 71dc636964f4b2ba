"""The ledger side of every avatar asset: find the upload, resolve a step's inputs to the
current artifacts (the one read path, `resolve_inputs`), record the `artifacts` document of
what the step stored (`record_step_result`), and turn errors into a failed upload with a
typed reason. The steps themselves are declared in `ops.steps`; they write their outputs
there (`ops.steps.store_output`, the one write path)."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetExecutionContext, Backoff, Failure, Jitter, MetadataValue, RetryPolicy

from models.errors import ErrorCode, PipelineError
from ops.faults import FAULT_KILL_ENV, kill_if_armed
from ops.steps import STEPS, UPLOAD, StepResult, StepSpec, input_source
from storage.keys import ObjectStore, StoredObject, key_without_subject
from storage.metadata_store import ArtifactRecord, MetadataStore
from storage.retry import StoreUnavailable

# TEST-ONLY fault injection (tests/reliability, read in ops.faults): "<asset>:stored" SIGKILLs
# this process right after the step's objects are written (before its `artifacts` document),
# "<asset>:recorded" right after the document and audit event. Never set it outside tests.

_log = logging.getLogger(__name__)


def step_retry_policy(config: Any) -> RetryPolicy:
    """Dagster's retry of a failed step: transient failures (STORE_UNAVAILABLE once the store's
    own retries are spent, unexpected errors) get `AVATARPIPE_STEP_RETRIES` more attempts (2),
    waits growing exponentially from `AVATARPIPE_STEP_RETRY_DELAY_S` (5 s) with +/- jitter.
    Permanent input errors raise `Failure(allow_retries=False)` and bypass it.
    ``config``: an `orchestration.config.AppConfig` (typed Any: assets do not import orchestration)."""
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
    upload: dict = field(default_factory=dict)  # the uploads document
    timer: dict[str, float] = field(default_factory=dict)
    retries_left: int = 0  # Dagster RetryPolicy attempts still to come after this one
    model_urls: dict[str, str] = field(default_factory=dict)  # MLflow UI page of each version used (issue 19)


@dataclass(frozen=True)
class ResolvedInputs:
    """A step's inputs as the ledger has them: object keys, recorded metrics, and the
    artifact documents they come from (the new artifact's parents, in input order)."""

    keys: dict[str, str]  # input name -> object key
    metrics: dict[str, dict]  # upstream asset -> its recorded metrics ("#metrics" inputs)
    parents: list[dict]


def step_context(context: AssetExecutionContext, asset_key: str) -> StepContext:
    upload_id = context.partition_key
    metadata: MetadataStore = context.resources.metadata.store()
    upload = metadata.get_upload(upload_id)
    if upload is None:
        raise Failure(description=f"unknown upload {upload_id}", allow_retries=False)
    registry = context.resources.model_registry
    production = registry.production_versions()
    names = STEPS[asset_key].models
    return StepContext(
        asset_key=asset_key,
        upload_id=upload_id,
        subject_id=upload["subject_id"],
        run_id=context.run_id,
        store=context.resources.object_store.store(),  # with its retries (orchestration.resources)
        metadata=metadata,
        model_versions={name: production[name].version for name in names},
        model_params={name: production[name].params for name in names} | _body_hints(asset_key, upload),
        code_version=context.assets_def.code_versions_by_key[context.asset_key] or "",
        upload=upload,
        retries_left=_retries_left(context),
        model_urls={name: registry.version_url(name, production[name].version) for name in names},
    )


def _body_hints(asset_key: str, upload: dict) -> dict[str, dict]:
    """The uploader's body hints travel to the fit with the model parameters (issue 12)."""
    hints = upload.get("body_hints")
    return {"body_hints": dict(hints)} if STEPS[asset_key].body_hints and hints else {}


def _retries_left(context: AssetExecutionContext) -> int:
    policy = context.op_def.retry_policy
    return max(0, policy.max_retries - context.retry_number) if policy else 0


def fault_point(step: StepContext, point: str) -> None:
    """TEST-ONLY: die like a lost machine (SIGKILL, no cleanup) at a step boundary when
    `AVATARPIPE_FAULT_KILL_AT` names it (see `FAULT_KILL_ENV`)."""
    kill_if_armed(FAULT_KILL_ENV, f"{step.asset_key}:{point}")


def current_doc(step: StepContext, asset_key: str) -> dict:
    """The current artifact document of an upstream asset for this upload."""
    doc = step.metadata.current_artifact(step.upload_id, asset_key)
    if doc is None:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR,
            f"upstream artifact {asset_key} is missing for this upload; materialise it first",
            step.asset_key,
        )
    return doc


def raw_upload_key(step: StepContext) -> str:
    """The raw upload's key, or a clear refusal once retention has removed it (downstream
    assets keep working from the normalised `photo` artifact)."""
    deleted_at = step.upload.get("raw_deleted_at")
    if deleted_at is not None:
        raise PipelineError(
            ErrorCode.RAW_PHOTO_EXPIRED,
            f"the raw upload was deleted by the retention policy on {deleted_at:%Y-%m-%d}; "
            "the normalised photo is kept, so reprocess the steps after `photo` instead",
            step.asset_key,
        )
    return step.upload["photo_key"]


def resolve_inputs(step: StepContext, spec: StepSpec) -> ResolvedInputs:
    """Every input of ``spec`` from the ledger: the current artifact of each upstream asset
    (read once), its main object's or extra file's key, or its recorded metrics."""
    docs: dict[str, dict] = {}
    keys: dict[str, str] = {}
    metrics: dict[str, dict] = {}
    for name in spec.inputs:
        asset, extra, is_metrics = input_source(name)
        if asset == UPLOAD:
            keys[name] = raw_upload_key(step)
            continue
        if asset not in docs:  # each upstream document is read once
            docs[asset] = current_doc(step, asset)
        doc = docs[asset]
        if is_metrics:
            metrics[asset] = dict(doc.get("metrics") or {})
        elif extra is None:
            keys[name] = doc["key"]
        elif extra in doc.get("extra_files", {}):
            keys[name] = doc["extra_files"][extra]
        elif name not in spec.optional:
            raise PipelineError(
                ErrorCode.INTERNAL_ERROR, f"upstream artifact {asset} has no {extra} file", step.asset_key
            )
    return ResolvedInputs(keys=keys, metrics=metrics, parents=list(docs.values()))


def record_step_result(step: StepContext, result: StepResult, parents: list[dict]) -> tuple[str, StoredObject]:
    """Record the `artifacts` document (and audit event) for outputs the step already stored."""
    obj = StoredObject(
        key=result.key, uri=result.uri, sha256=result.sha256, bytes=result.bytes,
        path=step.store.local_path(result.key),
    )  # fmt: skip
    step.timer["compute"] = result.compute_seconds
    return record_stored_artifact(step, obj, result.extra_files, parents, result.metrics), obj


def record_stored_artifact(
    step: StepContext, obj: StoredObject, extra_keys: dict[str, str], parents: list[dict], metrics: dict[str, Any]
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
            lineage_model_versions=lineage_model_versions(step.model_versions, parents),
            parent_ids=[p["_id"] for p in parents],
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
