"""What every avatar asset does around its science call: find the upload, load parent
artifacts, write the output under a subject-prefixed content-addressed key, record the
`artifacts` document, and turn errors into a failed upload with a typed reason."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetExecutionContext, Failure, MetadataValue

from models.catalogue import ASSET_MODELS
from models.errors import ErrorCode, PipelineError
from storage.metadata_store import ArtifactRecord, MetadataStore
from storage.object_store import ObjectStore, StoredObject, artifact_key, sha256_hex


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
        store=context.resources.object_store.store(),
        metadata=metadata,
        model_versions={name: production[name].version for name in names},
        model_params={name: production[name].params for name in names},
        code_version=context.assets_def.code_versions_by_key[context.asset_key] or "",
    )


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
    return artifact_id, obj


@contextlib.contextmanager
def timed(step: StepContext, name: str = "compute") -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        step.timer[name] = step.timer.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def failure_guard(step: StepContext) -> Iterator[None]:
    """Record why the upload failed and stop the run; input errors are never retried."""
    try:
        yield
    except PipelineError as exc:
        exc.step = exc.step or step.asset_key
        step.metadata.set_upload_status(step.upload_id, "failed", error=exc.to_dict(), run_id=step.run_id)
        raise Failure(
            description=exc.message,
            metadata={"error_code": exc.code.value, "step": exc.step},
            allow_retries=not exc.permanent,
        ) from exc
    except Failure:
        raise
    except Exception as exc:
        error = PipelineError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:500], step.asset_key)
        step.metadata.set_upload_status(step.upload_id, "failed", error=error.to_dict(), run_id=step.run_id)
        raise


def result_metadata(step: StepContext, artifact_id: str, obj: StoredObject, metrics: dict) -> dict:
    """Dagster materialisation metadata: where the artifact is, what produced it, its metrics."""
    meta: dict[str, Any] = {
        "artifact_id": artifact_id,
        "uri": MetadataValue.url(obj.uri) if obj.uri.startswith("http") else obj.uri,
        "sha256": obj.sha256,
        "bytes": obj.bytes,
        "compute_seconds": round(step.timer.get("compute", 0.0), 3),
        "model_versions": MetadataValue.json(step.model_versions),
    }
    for name, value in metrics.items():
        if isinstance(value, (int, float, str, bool)):
            meta[name] = value
    return meta
