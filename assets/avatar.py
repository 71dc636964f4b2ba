"""The five partitioned assets: photo -> keypoints -> smplx_params -> mesh -> rigged_glb."""


import base64
import json

import numpy as np
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets.partitions import uploads_partitions
from assets.steps import (
    Parent,
    StepContext,
    failure_guard,
    load_parent,
    result_metadata,
    save_artifact,
    step_context,
    timed,
)
from models.body_model import anny_info, anny_topology, load_anny
from models.fitting import BodyFit, FitConfig, fit_body, posed_vertices
from models.keypoints import DetectorConfig, Keypoints, detect_keypoints
from models.photo import decode_png, encode_png, normalise_photo
from models.rigging import build_rigged_avatar
from models.surface import mesh_to_glb_bytes, render_overlay, silhouette_iou, textured_mesh
from models.texture import TextureConfig, bake_texture

RESOURCES = {"object_store", "metadata", "model_registry"}
GROUP = "avatar"


def _json_bytes(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _preview_markdown(png: bytes, title: str) -> MetadataValue:
    encoded = base64.b64encode(png).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def _thumbnail(rgb: np.ndarray, max_side: int = 320) -> bytes:
    from PIL import Image

    image = Image.fromarray(rgb)
    image.thumbnail((max_side, max_side))
    return encode_png(np.asarray(image))


def _finish(step: StepContext, data: bytes, ext: str, parents: list[Parent], metrics: dict,
            extra_files: dict | None = None, preview: bytes | None = None) -> MaterializeResult:
    artifact_id, obj = save_artifact(step, data, ext, parents, metrics, extra_files)
    meta = result_metadata(step, artifact_id, obj, metrics)
    if preview is not None:
        meta["preview"] = _preview_markdown(preview, step.asset_key)
    return MaterializeResult(metadata=meta)


def _photo(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "photo")
    step.metadata.set_upload_status(step.upload_id, "running", run_id=step.run_id)
    with failure_guard(step):
        upload = step.metadata.get_upload(step.upload_id)
        raw = step.store.get_bytes(upload["photo_key"])
        with timed(step):
            photo = normalise_photo(raw)
        metrics = {
            "width": photo.size[0],
            "height": photo.size[1],
            "original_width": photo.original_size[0],
            "original_height": photo.original_size[1],
            "original_format": photo.original_format,
            "exif_rotated": photo.exif_rotated,
            "frames": photo.frames,
        }
        return _finish(step, photo.png, "png", [], metrics, preview=_thumbnail(photo.image))


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
        }
        return _finish(
            step, _json_bytes(kp.to_dict()), "json", [parent], metrics,
            extra_files={"mask": (encode_png(kp.mask), "png")},
        )  # fmt: skip


def _load_keypoints(step: StepContext) -> tuple[Parent, Keypoints]:
    parent = load_parent(step, "keypoints")
    mask_png = load_parent(step, "keypoints", extra_file="mask").data
    import io

    from PIL import Image

    mask = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L"))
    return parent, Keypoints.from_dict(parent.json(), mask)


def _smplx_params(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "smplx_params")
    with failure_guard(step):
        parent, kp = _load_keypoints(step)
        fitter = dict(step.model_params["body_fitter"])
        fitter["iters"] = tuple(fitter["iters"])
        fitter["pose_prior"] = tuple(fitter["pose_prior"])
        fitter["shape_prior"] = tuple(fitter["shape_prior"])
        with timed(step):
            model = load_anny()
            fit = fit_body(kp, model, anny_info(), FitConfig(**fitter))
            vertices = posed_vertices(model, fit)
            faces = anny_topology(model)["faces"]
            fit.metrics["silhouette_iou"] = round(silhouette_iou(vertices, faces, fit.camera, kp.mask), 4)
        metrics = dict(fit.metrics) | {"framing": fit.framing}
        metrics |= {f"phenotype_{k}": v for k, v in fit.phenotype.items()}
        return _finish(step, _json_bytes(fit.to_dict()), "json", [parent], metrics)


def _mesh(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "mesh")
    with failure_guard(step):
        fit_parent = load_parent(step, "smplx_params")
        photo_parent = load_parent(step, "photo")
        kp_parent, kp = _load_keypoints(step)
        fit = BodyFit.from_dict(fit_parent.json())
        image = decode_png(photo_parent.data)
        texture_size = int(step.model_params["reconstructor"].get("texture_size", 1024))
        with timed(step):
            model = load_anny()
            topo = anny_topology(model)
            vertices = posed_vertices(model, fit)
            baked = bake_texture(
                vertices, topo["faces"], topo["uv"], topo["face_uv_idx"], fit.camera, image, kp.mask,
                TextureConfig(size=texture_size),
            )  # fmt: skip
            mesh = textured_mesh(vertices, topo["faces"], topo["uv"], topo["face_uv_idx"], baked.image)
            glb = mesh_to_glb_bytes(mesh)
            overlay = render_overlay(image, vertices, topo["faces"], fit.camera)
        metrics = {
            "vertex_count": len(mesh.vertices),
            "face_count": len(mesh.faces),
            "texture_size": texture_size,
            "texture_coverage": round(float(baked.coverage), 4),
            "silhouette_iou": round(silhouette_iou(vertices, topo["faces"], fit.camera, kp.mask), 4),
            "height_m": round(float(np.ptp(vertices[:, 1])), 4),
        }
        return _finish(
            step, glb, "glb", [fit_parent, photo_parent, kp_parent], metrics,
            extra_files={"texture": (encode_png(baked.image), "png"), "overlay": (encode_png(overlay), "png")},
            preview=_thumbnail(overlay),
        )  # fmt: skip


def _rigged_glb(context: AssetExecutionContext) -> MaterializeResult:
    step = step_context(context, "rigged_glb")
    with failure_guard(step):
        mesh_parent = load_parent(step, "mesh")
        texture_png = load_parent(step, "mesh", extra_file="texture").data
        fit_parent = load_parent(step, "smplx_params")
        fit = BodyFit.from_dict(fit_parent.json())
        with timed(step):
            avatar = build_rigged_avatar(load_anny(), fit.phenotype, fit.pose_parameters, texture_png)
        metrics = {
            "joint_count": avatar.joint_count,
            "vertex_count": avatar.vertex_count,
            "triangle_count": avatar.triangle_count,
            "max_influences": avatar.max_influences,
            "max_weight_sum_error": avatar.max_weight_sum_error,
            "animation_count": len(avatar.animation_names),
            "animations": ",".join(avatar.animation_names),
            "height_m": round(avatar.height_m, 4),
            "glb_bytes": len(avatar.glb),
        }
        result = _finish(step, avatar.glb, "glb", [mesh_parent, fit_parent], metrics)
        step.metadata.set_upload_status(step.upload_id, "ready", run_id=step.run_id)
        return result


def build_avatar_assets(code_versions: dict[str, str]) -> list[AssetsDefinition]:
    """The five assets with code versions derived from the production model versions."""
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
        )(fn)
        for name, fn, deps, description in specs
    ]
