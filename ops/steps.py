"""The heavy steps as pure "input bytes -> output bytes + metrics" functions, shared by the
in-process asset path and the Pipes worker (`ops.worker`, a subprocess locally, an ECS GPU
task in AWS). No Dagster and no metadata store here: only `models/` and the object store.

A step reads its inputs by object key, runs the science, and writes its outputs under the
same content-addressed keys the assets use (`storage.object_store.artifact_key`), extra files
first and the main object last, so a step that fails midway leaves no main artifact and a
retried step rewrites identical keys. Recording the `artifacts` document stays with the
orchestrator, which owns the metadata store.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.errors import ErrorCode, PipelineError
from storage.object_store import ObjectStore, artifact_key, sha256_hex

# Input names: an upstream asset key, or "asset:extra" for one of its extra files.
KEYPOINTS, MASK, PHOTO, FIT = "keypoints", "keypoints:mask", "photo", "smplx_params"


@dataclass(frozen=True)
class StepOutput:
    """What a step produced, before it is stored."""

    data: bytes
    ext: str
    metrics: dict[str, Any]
    extra_files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (bytes, ext)
    preview_png: bytes | None = None  # small thumbnail for the Dagster UI; not stored


@dataclass(frozen=True)
class StepSpec:
    name: str  # the asset key it materialises
    inputs: tuple[str, ...]
    run: Callable[[Mapping[str, bytes], Mapping[str, dict], WorkerRuntime], StepOutput]
    preview_extra: str | None = None  # extra file a remote caller can thumbnail for the preview


@dataclass(frozen=True)
class WorkerRuntime:
    """What belongs to the machine a step runs on, not to the request: where the Anny model cache
    is and whether licensed SMPL-X files are installed there. In ECS the worker is another
    machine (its task definition sets AVATARPIPE_CACHE / SMPLX_MODEL_DIR), so these are the
    worker's own configuration: `ops.worker` builds them once from `orchestration.config`, the
    in-process launcher from the same configuration (`from_config`)."""

    anny_cache_dir: str | None = None  # None: models.body_model's default
    smplx_model_dir: str | None = None  # None: Anny

    @staticmethod
    def from_config(config: Any) -> WorkerRuntime:
        """From an `orchestration.config.AppConfig` (typed Any: ops does not import orchestration)."""
        smplx = config.smplx_model_dir
        return WorkerRuntime(str(config.resolved_cache / "anny"), str(smplx) if smplx else None)

    @staticmethod
    def configured() -> WorkerRuntime:
        from orchestration.config import load_config  # the one reader of the environment

        return WorkerRuntime.from_config(load_config())


@dataclass(frozen=True)
class StepRequest:
    """Everything a worker needs, as plain data (it travels as Pipes extras)."""

    step: str
    upload_id: str
    subject_id: str
    inputs: dict[str, str]  # input name -> object key
    params: dict[str, dict]  # registered model name -> production params
    object_store: dict[str, Any]  # see storage.object_store.object_store_from_config

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "upload_id": self.upload_id,
            "subject_id": self.subject_id,
            "inputs": dict(self.inputs),
            "params": {k: dict(v) for k, v in self.params.items()},
            "object_store": dict(self.object_store),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> StepRequest:
        missing = {"step", "upload_id", "subject_id", "inputs", "params", "object_store"} - set(data)
        if missing:
            raise ValueError(f"step request is missing {sorted(missing)}")
        return StepRequest(
            step=str(data["step"]),
            upload_id=str(data["upload_id"]),
            subject_id=str(data["subject_id"]),
            inputs={str(k): str(v) for k, v in data["inputs"].items()},
            params={str(k): dict(v) for k, v in data["params"].items()},
            object_store=dict(data["object_store"]),
        )


@dataclass(frozen=True)
class StepResult:
    """A stored step output: where it is and what it measured (JSON-able, crosses Pipes)."""

    step: str
    key: str
    uri: str
    sha256: str
    bytes: int
    extra_files: dict[str, str]  # name -> object key
    metrics: dict[str, Any]
    compute_seconds: float
    device: str
    preview_png: bytes | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "key": self.key,
            "uri": self.uri,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "extra_files": dict(self.extra_files),
            "metrics": dict(self.metrics),
            "compute_seconds": self.compute_seconds,
            "device": self.device,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> StepResult:
        return StepResult(
            step=data["step"],
            key=data["key"],
            uri=data["uri"],
            sha256=data["sha256"],
            bytes=int(data["bytes"]),
            extra_files=dict(data["extra_files"]),
            metrics=dict(data["metrics"]),
            compute_seconds=float(data["compute_seconds"]),
            device=str(data["device"]),
        )


# -- helpers shared with the assets ---------------------------------------------------------


def json_bytes(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def thumbnail_png(rgb: np.ndarray, max_side: int = 320) -> bytes:
    from PIL import Image

    from models.photo import encode_png

    image = Image.fromarray(rgb)
    image.thumbnail((max_side, max_side))
    return encode_png(np.asarray(image))


def decode_mask(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def load_keypoints(keypoints_json: bytes, mask_png: bytes):
    from models.keypoints import Keypoints

    return Keypoints.from_dict(json.loads(keypoints_json), decode_mask(mask_png))


# -- the heavy steps -------------------------------------------------------------------------


def fit_smplx_params(inputs: Mapping[str, bytes], params: Mapping[str, dict], runtime: WorkerRuntime) -> StepOutput:
    """keypoints (+ person mask) -> body fit JSON; same computation as the `smplx_params` asset."""
    from models.body_model import load_body_model
    from models.fitting import BodyHints, FitConfig, fit_body

    kp = load_keypoints(inputs[KEYPOINTS], inputs[MASK])
    body = load_body_model(runtime.smplx_model_dir, runtime.anny_cache_dir)  # Anny; SMPL-X when configured
    hints = BodyHints.from_dict(params.get("body_hints"))  # the uploader's, from the uploads document
    fit = fit_body(kp, body, body.info, FitConfig.from_params(params.get("body_fitter", {})), hints)
    metrics = dict(fit.metrics) | {"framing": fit.framing, "body_model": fit.body_model.name}
    metrics |= {f"phenotype_{k}": v for k, v in fit.phenotype.items()}
    data = fit.to_dict()
    if fit.body_model.name == "anny":  # ARKit weights of the photo's face (issue 13)
        from models.expression import fit_anny_expression

        expression = fit_anny_expression(body.model, fit.phenotype, kp.face)
        data["expression"] = expression.weights
        metrics["expression_residual"] = round(expression.residual, 4)
    return StepOutput(data=json_bytes(data), ext="json", metrics=metrics)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def reconstruct_mesh(inputs: Mapping[str, bytes], params: Mapping[str, dict], runtime: WorkerRuntime) -> StepOutput:
    """fit + photo + keypoints -> clothed, textured GLB in the photo's frame; same as the `mesh`
    asset (clothing offsets along normals, projective texture, overlay; offsets kept as .npy)."""
    from models.body_model import anny_topology, load_anny
    from models.clothing import ClothingConfig, fit_clothing
    from models.fitting import BodyFit
    from models.photo import decode_png, encode_png
    from models.surface import mesh_to_glb_bytes, render_overlay, textured_mesh
    from models.texture import TextureConfig, bake_texture, body_layout

    fit = BodyFit.from_dict(json.loads(inputs[FIT]))
    if fit.body_model.name != "anny":
        raise PipelineError(
            ErrorCode.UNSUPPORTED_BODY_MODEL,
            f"clothing, texturing and rigging support the Anny body model; this fit used {fit.body_model.name}",
            "mesh",
        )
    image = decode_png(inputs[PHOTO])
    kp = load_keypoints(inputs[KEYPOINTS], inputs[MASK])
    reconstructor = params.get("reconstructor", {})
    texture_size = int(reconstructor.get("texture_size", 1024))
    model = load_anny(runtime.anny_cache_dir)
    topo = anny_topology(model)
    clothing = fit_clothing(
        model, fit.phenotype, fit.pose_parameters, fit.camera, kp.mask, topo,
        ClothingConfig(enabled=bool(reconstructor.get("clothing", True))), image=image,
    )  # fmt: skip
    vertices = clothing.posed_vertices
    bake_surface = vertices  # the photo's face: an open mouth bakes onto open lips
    expression = json.loads(inputs[FIT]).get("expression")
    if expression:
        from models.expression import anny_facial_targets, posed_expression_offsets

        targets = anny_facial_targets(model)
        bake_surface = vertices + posed_expression_offsets(clothing.rest_vertices, vertices, targets, expression)
    layout = body_layout(
        clothing.rest_vertices, topo["faces"], topo["uv"], topo["face_uv_idx"],
        topo["skin_indices"], topo["skin_weights"], [str(b) for b in model.bone_labels],
    )  # fmt: skip
    baked = bake_texture(
        bake_surface, topo["faces"], topo["uv"], topo["face_uv_idx"], fit.camera, image, kp.mask,
        TextureConfig(size=texture_size), layout=layout, face_landmarks=kp.face,
    )  # fmt: skip
    mesh = textured_mesh(vertices, topo["faces"], topo["uv"], topo["face_uv_idx"], baked.image)
    glb = mesh_to_glb_bytes(mesh)
    overlay = render_overlay(image, vertices, topo["faces"], fit.camera)
    metrics = {
        "vertex_count": len(mesh.vertices),
        "face_count": len(mesh.faces),
        "texture_size": texture_size,
        "texture_coverage": round(float(baked.coverage), 4),
        "height_m": round(float(np.ptp(vertices[:, 1])), 4),
    } | clothing.metrics  # silhouette_iou (clothed), silhouette_iou_naked, offset_*
    return StepOutput(
        data=glb,
        ext="glb",
        metrics=metrics,
        extra_files={
            "texture": (encode_png(baked.image), "png"),
            "overlay": (encode_png(overlay), "png"),
            "offsets": (npy_bytes(clothing.offsets.astype(np.float32)), "npy"),
        },
        preview_png=thumbnail_png(overlay),
    )


STEPS: dict[str, StepSpec] = {
    "smplx_params": StepSpec("smplx_params", (KEYPOINTS, MASK), fit_smplx_params),
    "mesh": StepSpec("mesh", (FIT, PHOTO, KEYPOINTS, MASK), reconstruct_mesh, preview_extra="overlay"),
}


def step_spec(name: str) -> StepSpec:
    try:
        return STEPS[name]
    except KeyError:
        raise ValueError(f"no heavy step named {name!r}; known: {sorted(STEPS)}") from None


# -- load, run, store ------------------------------------------------------------------------


def load_inputs(spec: StepSpec, keys: Mapping[str, str], store: ObjectStore) -> dict[str, bytes]:
    missing = [name for name in spec.inputs if name not in keys]
    if missing:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR, f"inputs {missing} were not given for step {spec.name}", spec.name
        )
    return {name: store.get_bytes(keys[name]) for name in spec.inputs}


def store_output(
    store: ObjectStore, subject_id: str, upload_id: str, step: str, output: StepOutput
) -> tuple[str, str, str, int, dict[str, str]]:
    """Write extra files, then the main object; returns (key, uri, sha256, bytes, extra keys)."""
    extra_keys: dict[str, str] = {}
    for name, (blob, ext) in output.extra_files.items():
        key = artifact_key(subject_id, upload_id, step, sha256_hex(blob), ext)
        extra_keys[name] = store.put_bytes(key, blob).key
    obj = store.put_bytes(artifact_key(subject_id, upload_id, step, sha256_hex(output.data), output.ext), output.data)
    return obj.key, obj.uri, obj.sha256, obj.bytes, extra_keys


def execute_step(
    request: StepRequest, store: ObjectStore, device: str = "cpu", runtime: WorkerRuntime | None = None
) -> StepResult:
    """Load inputs, run the step, store the outputs. Raises `PipelineError` for bad input.
    ``runtime``: this machine's model files (default: the configured ones)."""
    spec = step_spec(request.step)
    inputs = load_inputs(spec, request.inputs, store)
    start = time.perf_counter()
    output = spec.run(inputs, request.params, runtime or WorkerRuntime.configured())
    compute_seconds = round(time.perf_counter() - start, 3)
    key, uri, digest, size, extra_keys = store_output(
        store, request.subject_id, request.upload_id, spec.name, output
    )
    return StepResult(
        step=spec.name,
        key=key,
        uri=uri,
        sha256=digest,
        bytes=size,
        extra_files=extra_keys,
        metrics=output.metrics,
        compute_seconds=compute_seconds,
        device=device,
        preview_png=output.preview_png,
    )
