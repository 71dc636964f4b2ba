"""The five partitioned assets: photo -> keypoints -> smplx_params -> mesh -> rigged_glb."""


import base64
import io

import numpy as np
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets.partitions import uploads_partitions
from assets.steps import (
    Parent,
    StepContext,
    failure_guard,
    load_parent,
    record_step_result,
    result_metadata,
    save_artifact,
    step_context,
    timed,
)
from models.body_model import load_anny
from models.clothing import Garment
from models.errors import ErrorCode, PipelineError
from models.face_blendshapes import arkit_expression
from models.fitting import BodyFit
from models.gltf_export import compress_glb, find_gltfpack
from models.keypoints import DetectorConfig, detect_keypoints
from models.photo import PhotoLimits, decode_png, encode_png, normalise_photo
from models.render import preview_png
from models.rigging import build_rigged_avatar
from ops.steps import FIT, KEYPOINTS, MASK, PHOTO, StepRequest, json_bytes, thumbnail_png
from orchestration.config import load_config

RESOURCES = {"object_store", "metadata", "model_registry", "compute"}
GROUP = "avatar"


def _preview_markdown(png: bytes, title: str) -> MetadataValue:
    encoded = base64.b64encode(png).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def _finish(step: StepContext, data: bytes, ext: str, parents: list[Parent], metrics: dict,
            extra_files: dict | None = None, preview: bytes | None = None) -> MaterializeResult:
    artifact_id, obj = save_artifact(step, data, ext, parents, metrics, extra_files)
    meta = result_metadata(step, artifact_id, obj, metrics)
    if preview is not None:
        meta["preview"] = _preview_markdown(preview, step.asset_key)
    return MaterializeResult(metadata=meta)


def _raw_upload_bytes(step: StepContext, upload: dict) -> bytes:
    """The raw upload, or a clear refusal once retention has removed it (downstream assets
    keep working from the normalised `photo` artifact)."""
    if upload.get("raw_deleted_at") is not None:
        raise PipelineError(
            ErrorCode.RAW_PHOTO_EXPIRED,
            f"the raw upload was deleted by the retention policy on {upload['raw_deleted_at']:%Y-%m-%d}; "
            "the normalised photo is kept, so reprocess the steps after `photo` instead",
            "photo",
        )
    return step.store.get_bytes(upload["photo_key"])


def _photo(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "photo")
    step.metadata.set_upload_status(step.upload_id, "running", run_id=step.run_id)
    with failure_guard(step):
        upload = step.metadata.get_upload(step.upload_id)
        raw = _raw_upload_bytes(step, upload)
        with timed(step):
            config = load_config()
            photo = normalise_photo(raw, PhotoLimits.with_overrides(config.max_upload_bytes, config.max_image_pixels))
        metrics = {
            "width": photo.size[0],
            "height": photo.size[1],
            "original_width": photo.original_size[0],
            "original_height": photo.original_size[1],
            "original_format": photo.original_format,
            "exif_rotated": photo.exif_rotated,
            "frames": photo.frames,
        }
        return _finish(step, photo.png, "png", [], metrics, preview=thumbnail_png(photo.image))


def _keypoints(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "keypoints")
    with failure_guard(step):
        parent = load_parent(step, "photo")
        image = decode_png(parent.data)
        config = DetectorConfig(**step.model_params["keypoint_detector"])
        with timed(step):
            kp = detect_keypoints(image, config)
        metrics = {
            "framing": kp.framing,
            "people_count": kp.people_count,
            "visible_body_landmarks": int((kp.pose[:, 3] >= config.visibility_threshold).sum()),
            "face_detected": kp.face is not None,
            "hands_detected": int(kp.left_hand is not None) + int(kp.right_hand is not None),
            "mask_fraction": round(float((kp.mask >= 128).mean()), 4),
            "person_selection": kp.extra.get("selection", "full_image"),
        }
        return _finish(
            step, json_bytes(kp.to_dict()), "json", [parent], metrics,
            extra_files={"mask": (encode_png(kp.mask), "png")},
        )  # fmt: skip


def _launch_heavy_step(
    context: AssetExecutionContext, step: StepContext, inputs: dict[str, tuple[str, str | None]]
) -> MaterializeResult:
    """Run a heavy step through the compute launcher: in-process, a Dagster Pipes subprocess
    (the embedded default) or an ECS GPU task. The step reads its inputs from the object store
    and writes its outputs there; the artifact document is recorded here.

    `inputs` maps a step input name to (upstream asset, extra file or None).
    """
    parents: dict[str, Parent] = {}
    keys: dict[str, str] = {}
    for name, (asset_key, extra) in inputs.items():
        doc = _current_doc(step, asset_key)
        parents.setdefault(asset_key, Parent(doc=doc, data=b""))
        keys[name] = doc["extra_files"][extra] if extra else doc["key"]
    request = StepRequest(
        step=step.asset_key,
        upload_id=step.upload_id,
        subject_id=step.subject_id,
        inputs=keys,
        params=step.model_params,
        object_store=context.resources.object_store.config(),
    )
    compute = context.resources.compute
    result, worker_meta = compute.run_step(context, request)
    artifact_id, obj = record_step_result(step, result, list(parents.values()))
    meta = result_metadata(step, artifact_id, obj, result.metrics)
    meta |= {"device": result.device, "placement": compute.placement(step.asset_key)}
    meta |= {k: v for k, v in worker_meta.items() if k == "AWS ECS Task URL"}
    if result.preview_png:
        meta["preview"] = _preview_markdown(result.preview_png, step.asset_key)
    return MaterializeResult(metadata=meta)


def _current_doc(step: StepContext, asset_key: str) -> dict:
    doc = step.metadata.current_artifact(step.upload_id, asset_key)
    if doc is None:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR,
            f"upstream artifact {asset_key} is missing for this upload; materialise it first",
            step.asset_key,
        )
    return doc


def _smplx_params(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "smplx_params")
    with failure_guard(step):
        return _launch_heavy_step(context, step, {KEYPOINTS: ("keypoints", None), MASK: ("keypoints", "mask")})


def _mesh(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "mesh")
    with failure_guard(step):
        return _launch_heavy_step(
            context, step,
            {FIT: ("smplx_params", None), PHOTO: ("photo", None),
             KEYPOINTS: ("keypoints", None), MASK: ("keypoints", "mask")},
        )  # fmt: skip


def _load_offsets(step: StepContext) -> np.ndarray | None:
    """The mesh's clothing offsets (V,3) in Anny's rest frame; None for a mesh made before
    offsets existed (the rigged GLB is then the naked body, as it was)."""
    doc = step.metadata.current_artifact(step.upload_id, "mesh")
    if doc is None or "offsets" not in doc.get("extra_files", {}):
        return None
    data = load_parent(step, "mesh", extra_file="offsets").data
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float64)


def _load_garment(step: StepContext) -> Garment | None:
    """The skirt or dress the mesh step detected (its metrics), for the rig's skin weights;
    None for no garment or a mesh made before garments were detected."""
    metrics = (step.metadata.current_artifact(step.upload_id, "mesh") or {}).get("metrics", {})
    return Garment.from_dict(
        {"kind": metrics.get("garment", "none"), "hem_fraction": metrics.get("garment_hem_fraction", 0.0),
         "hem_height_m": metrics.get("garment_hem_m", 0.0)}
    )  # fmt: skip


def _rigged_glb(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "rigged_glb")
    with failure_guard(step):
        mesh_parent = load_parent(step, "mesh")
        texture_png = load_parent(step, "mesh", extra_file="texture").data
        fit_parent = load_parent(step, "smplx_params")
        fit_json = fit_parent.json()
        fit = BodyFit.from_dict(fit_json)
        compress = bool(step.model_params["rigger"].get("compress", False))
        config = load_config()
        with timed(step):
            avatar = build_rigged_avatar(
                load_anny(str(config.resolved_cache / "anny")), fit.phenotype, fit.pose_parameters, texture_png,
                _load_offsets(step), expression=arkit_expression(fit_json.get("expression")),
                garment=_load_garment(step),
            )
            preview = preview_png(avatar.glb)  # front + side, ray cast from the GLB itself
            glb = compress_glb(avatar.glb, find_gltfpack(config.gltfpack)) if compress else avatar.glb
        metrics = {
            "joint_count": avatar.joint_count,
            "vertex_count": avatar.vertex_count,
            "triangle_count": avatar.triangle_count,
            "max_influences": avatar.max_influences,
            "max_weight_sum_error": avatar.max_weight_sum_error,
            "animation_count": len(avatar.animation_names),
            "animations": ",".join(avatar.animation_names),
            "height_m": round(avatar.height_m, 4),
            "glb_bytes": len(glb),
            "glb_uncompressed_bytes": len(avatar.glb),
            "compressed": compress,
            "skinning_error_max_m": round(avatar.skinning_error_max_m, 6),
        }
        result = _finish(
            step, glb, "glb", [mesh_parent, fit_parent], metrics,
            extra_files={"preview": (preview, "png")}, preview=preview,
        )  # fmt: skip
        # Not "ready" yet: the blocking rigged_glb_quality check (assets/checks.py) marks the
        # upload ready once the GLB passes its gate, or failed_quality when it does not.
        return result


def build_avatar_assets(code_versions: dict[str, str]) -> list[AssetsDefinition]:
    """The five assets with code versions derived from the production model versions; transient
    step failures are retried by Dagster (`assets.steps.step_retry_policy`)."""
    from assets.steps import step_retry_policy

    retry_policy = step_retry_policy()
    specs = [
        ("photo", _photo, [], "Validated, upright, metadata-free RGB photo (PNG)."),
        ("keypoints", _keypoints, ["photo"], "MediaPipe Holistic landmarks (JSON) and person mask (PNG)."),
        ("smplx_params", _smplx_params, ["keypoints"], "Body fit: shape, pose, OpenCV camera, fit metrics (JSON)."),
        ("mesh", _mesh, ["smplx_params", "photo", "keypoints"], "Textured surface in the photo's pose and frame (GLB)."),
        ("rigged_glb", _rigged_glb, ["mesh", "smplx_params"], "Skinned, textured, animated avatar (GLB)."),
    ]  # fmt: skip
    return [
        asset(
            name=name,
            deps=deps,
            partitions_def=uploads_partitions,
            required_resource_keys=RESOURCES,
            code_version=code_versions[name],
            group_name=GROUP,
            description=description,
            kinds={"python"},
            retry_policy=retry_policy,
        )(fn)
        for name, fn, deps, description in specs
    ]
