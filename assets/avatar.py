"""The five partitioned assets: photo -> keypoints -> smplx_params -> mesh -> rigged_glb.

Built from the step declarations (`ops.steps.STEPS`): one asset per step, its deps, code
version and description from the declaration, and one body for all five that does three
things: resolve the step's inputs from the ledger, run the step where the configuration says
(`orchestration.compute`: in-process, a Pipes subprocess or an ECS task), record the result.
No science here: it is imported when a step runs, so loading the code location stays light.
"""

import base64
from collections.abc import Callable

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from assets.partitions import uploads_partitions
from assets.steps import (
    StepContext,
    failure_guard,
    record_step_result,
    resolve_inputs,
    result_metadata,
    step_context,
)
from ops.steps import STEPS, StepRequest, StepResult, StepSpec

RESOURCES = {"object_store", "metadata", "model_registry", "compute"}
GROUP = "avatar"


def _preview_markdown(png: bytes, title: str) -> MetadataValue:
    encoded = base64.b64encode(png).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def materialise_step(context: AssetExecutionContext, spec: StepSpec) -> MaterializeResult:
    """What every avatar asset does: resolve, run where configured, record."""
    step = step_context(context, spec.name)
    if spec.reads_upload:
        step.metadata.set_upload_status(step.upload_id, "running", run_id=step.run_id)
    with failure_guard(step):
        resolved = resolve_inputs(step, spec)
        request = StepRequest(
            step=spec.name,
            upload_id=step.upload_id,
            subject_id=step.subject_id,
            inputs=resolved.keys,
            params=step.model_params,
            object_store=context.resources.object_store.config(),
            metrics=resolved.metrics,
        )
        compute = context.resources.compute
        result, worker_meta = compute.run_step(context, request, store=step.store)
        artifact_id, obj = record_step_result(step, result, resolved.parents)
        # Not "ready" after rigged_glb: its blocking quality check (assets/checks.py) marks the
        # upload ready once the GLB passes its gate, or failed_quality when it does not.
        return MaterializeResult(metadata=_materialisation_metadata(step, result, artifact_id, obj, compute, worker_meta))


def _materialisation_metadata(step: StepContext, result: StepResult, artifact_id, obj, compute, worker_meta) -> dict:
    meta = result_metadata(step, artifact_id, obj, result.metrics)
    meta |= {"device": result.device, "placement": compute.placement(step.asset_key)}
    meta |= {k: v for k, v in worker_meta.items() if k == "AWS ECS Task URL"}
    if result.preview_png:
        meta["preview"] = _preview_markdown(result.preview_png, step.asset_key)
    return meta


def _asset_body(spec: StepSpec) -> Callable[[AssetExecutionContext], MaterializeResult]:
    def body(context: AssetExecutionContext) -> MaterializeResult:
        return materialise_step(context, spec)

    body.__name__ = spec.name
    return body


def build_avatar_assets(code_versions: dict[str, str], retry_policy: RetryPolicy | None = None) -> list[AssetsDefinition]:
    """The five assets, one per declared step, with code versions derived from the production
    model versions; transient step failures are retried by Dagster (``retry_policy``, see
    `assets.steps.step_retry_policy`)."""
    return [
        asset(
            name=spec.name,
            deps=list(spec.deps),
            partitions_def=uploads_partitions,
            required_resource_keys=RESOURCES,
            code_version=code_versions[spec.name],
            group_name=GROUP,
            description=spec.description,
            kinds={"python"},
            retry_policy=retry_policy,
        )(_asset_body(spec))
        for spec in STEPS.values()
    ]
