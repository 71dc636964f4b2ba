"""The `erase_subject` Dagster job: carry out an erasure requested with
`avatarpipe erase --subject ID --request-only` (or `ops.erasure.request_erasure`).

Its config is the erasure id (the salted hash the request printed), never the subject id:
Dagster keeps every run's config and logs, so a subject id given here would itself survive
the erasure. The request holds the id encrypted until the erasure completes.
"""

from dagster import Config, OpExecutionContext, job, op

from ops.erasure import ErasureEnv, erase_requested
from orchestration.data_docs import rebuild_after_erasure
from orchestration.settings import Settings


class EraseSubjectConfig(Config):
    erasure_id: str  # the salted hash returned by the request


@op(required_resource_keys={"metadata", "object_store", "model_registry"})
def erase_requested_subject(context: OpExecutionContext, config: EraseSubjectConfig) -> dict:
    """Erase the requested subject from every store and verify it (ops/erasure.py)."""
    settings = Settings.from_env()
    location = context.resources.model_registry.location()
    metadata = context.resources.metadata.store()
    env = ErasureEnv(
        home=settings.home,
        metadata=metadata,
        object_store=context.resources.object_store.store(),
        dagster_instance=context.instance,
        mlflow_tracking_uri=location.tracking_uri,
        mlflow_artifact_root=location.artifact_location,
        rebuild_data_docs=lambda: rebuild_after_erasure(settings.home, metadata),
    )
    result = erase_requested(env, config.erasure_id, progress=context.log.info)
    summary = {"status": result.status, "clean": result.clean, "counts": result.certificate.get("counts", {})}
    context.add_output_metadata({"status": result.status, "clean": result.clean})
    context.log.info(f"erasure {config.erasure_id[:16]}: {result.status}")
    return summary


@job(description="Erase one subject (by erasure id) from every store, verify, write the certificate.")
def erase_subject() -> None:
    erase_requested_subject()
