"""The five steps, declared once: photo -> keypoints -> smplx_params -> mesh -> rigged_glb.

Each step is a `StepSpec`: its name (the asset it materialises), its inputs, the registered
models it depends on, and a pure ``run(inputs, params, runtime) -> StepOutput`` over bytes
whose science lives in `models/`. Everything else is derived from these declarations: the
Dagster assets and their deps and code versions (`assets/avatar.py`), the quality checks
(`CHECKED_ASSETS`), the asset order the CLI runs (`ASSET_ORDER`), the models behind each
asset (`ASSET_MODELS`, for code versions and reprocessing).

Input names: ``"asset"`` is an upstream artifact's main object, ``"asset:extra"`` one of its
extra files, ``"asset#metrics"`` its recorded metrics (JSON), ``"upload:raw"`` the raw upload.

The same code runs in-process and in the Pipes worker (`ops.worker`, a subprocess locally, an
ECS GPU task in AWS); where each step runs is configuration (`orchestration.compute`). A step
reads its inputs by object key, runs, and writes its outputs under content-addressed keys
(`storage.keys.artifact_key`), extra files first and the main object last (`store_output`,
the one write path), so a step that fails midway leaves no main artifact and a retried step
rewrites identical keys. Recording the `artifacts` document stays with the orchestrator,
which owns the metadata store. No Dagster and no metadata store here, and no science at
import time: `models/` is imported when a step runs, so the code location stays light.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.errors import ErrorCode, PipelineError
from storage.keys import ObjectStore, artifact_key, sha256_hex

UPLOAD = "upload"  # not an asset: the uploads document, whose raw photo the first step reads
METRICS_SUFFIX = "#metrics"
# Input names (see the module docstring).
RAW = "upload:raw"
PHOTO = "photo"
KEYPOINTS, MASK = "keypoints", "keypoints:mask"
FIT = "smplx_params"
TEXTURE, OFFSETS, MESH_METRICS = "mesh:texture", "mesh:offsets", "mesh#metrics"


def input_source(name: str) -> tuple[str, str | None, bool]:
    """``(upstream asset, extra file or None, is the metrics input)`` of an input name."""
    if name.endswith(METRICS_SUFFIX):
        return name.removesuffix(METRICS_SUFFIX), None, True
    asset, _, extra = name.partition(":")
    return asset, extra or None, False


@dataclass(frozen=True)
class StepOutput:
    """What a step produced, before it is stored."""

    data: bytes
    ext: str
    metrics: dict[str, Any]
    extra_files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (bytes, ext)
    preview_png: bytes | None = None  # small thumbnail for the Dagster UI; not stored
    device: str = "cpu"  # where its torch work ran (`WorkerRuntime.device` for the steps that use it)


StepFn = Callable[[Mapping[str, bytes], Mapping[str, dict], "WorkerRuntime"], StepOutput]


@dataclass(frozen=True)
class StepSpec:
    """One step of the pipeline, declared once (see `STEPS`)."""

    name: str  # the asset key it materialises
    inputs: tuple[str, ...]  # input names, in the order their upstream assets become parents
    models: tuple[str, ...]  # registered models its output depends on (its code version)
    run: StepFn  # pure: input bytes + production params + this machine -> output bytes + metrics
    description: str
    optional: frozenset[str] = frozenset()  # inputs an older upstream artifact may not have
    preview_extra: str | None = None  # extra file a remote caller can thumbnail for the preview
    checked: bool = False  # a blocking quality gate follows it (assets/checks.py)
    body_hints: bool = False  # the uploader's body hints travel with its params (issue 12)

    @property
    def deps(self) -> tuple[str, ...]:
        """The upstream assets, in the order their inputs name them first."""
        assets = (input_source(name)[0] for name in self.inputs)
        return tuple(dict.fromkeys(a for a in assets if a != UPLOAD))

    @property
    def reads_upload(self) -> bool:
        """The first step: it starts from the raw upload."""
        return any(input_source(name)[0] == UPLOAD for name in self.inputs)


@dataclass(frozen=True)
class WorkerRuntime:
    """What belongs to the machine a step runs on, not to the request: where the Anny model cache
    is and whether licensed SMPL-X files are installed there. In ECS the worker is another
    machine (its task definition sets AVATARPIPE_CACHE / SMPLX_MODEL_DIR), so these are the
    worker's own configuration: `ops.worker` builds them once from `orchestration.config`, the
    in-process launcher from the same configuration (`from_config`)."""

    anny_cache_dir: str | None = None  # None: models.body_model's default
    smplx_model_dir: str | None = None  # None: Anny
    max_upload_bytes: int | None = None  # the photo step's limits (None: models.photo's defaults)
    max_image_pixels: int | None = None
    gltfpack: str | None = None  # None: clients/ install, then PATH
    device: str = "cpu"  # torch device of the fit and the mesh step ("cuda" on a GPU worker)

    @staticmethod
    def from_config(config: Any) -> WorkerRuntime:
        """From an `orchestration.config.AppConfig` (typed Any: ops does not import orchestration)."""
        smplx = config.smplx_model_dir
        return WorkerRuntime(
            anny_cache_dir=str(config.resolved_cache / "anny"),
            smplx_model_dir=str(smplx) if smplx else None,
            max_upload_bytes=config.max_upload_bytes,
            max_image_pixels=config.max_image_pixels,
            gltfpack=config.gltfpack,
        )

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
    metrics: dict[str, dict] = field(default_factory=dict)  # upstream asset -> its metrics ("#metrics" inputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "upload_id": self.upload_id,
            "subject_id": self.subject_id,
            "inputs": dict(self.inputs),
            "params": {k: dict(v) for k, v in self.params.items()},
            "object_store": dict(self.object_store),
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
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
            metrics={str(k): dict(v) for k, v in (data.get("metrics") or {}).items()},
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


# -- helpers of the steps --------------------------------------------------------------------


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


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# -- the five steps --------------------------------------------------------------------------


def normalise_upload(inputs: Mapping[str, bytes], params: Mapping[str, dict], runtime: WorkerRuntime) -> StepOutput:
    """raw upload -> validated, upright, metadata-free RGB PNG (`models.photo`)."""
    from models.photo import PhotoLimits, normalise_photo

    limits = PhotoLimits.with_overrides(runtime.max_upload_bytes, runtime.max_image_pixels)
    photo = normalise_photo(inputs[RAW], limits)
    metrics = {
        "width": photo.size[0],
        "height": photo.size[1],
        "original_width": photo.original_size[0],
        "original_height": photo.original_size[1],
        "original_format": photo.original_format,
        "exif_rotated": photo.exif_rotated,
        "frames": photo.frames,
    }
    return StepOutput(data=photo.png, ext="png", metrics=metrics, preview_png=thumbnail_png(photo.image))


def detect_landmarks(inputs: Mapping[str, bytes], params: Mapping[str, dict], runtime: WorkerRuntime) -> StepOutput:
    """photo -> MediaPipe Holistic landmarks (JSON) and the person mask (`models.keypoints`)."""
    from models.keypoints import DetectorConfig, detect_keypoints
    from models.photo import decode_png, encode_png

    config = DetectorConfig(**params["keypoint_detector"])
    kp = detect_keypoints(decode_png(inputs[PHOTO]), config)
    metrics = {
        "framing": kp.framing,
        "people_count": kp.people_count,
        "visible_body_landmarks": int((kp.pose[:, 3] >= config.visibility_threshold).sum()),
        "face_detected": kp.face is not None,
        "hands_detected": int(kp.left_hand is not None) + int(kp.right_hand is not None),
        "mask_fraction": round(float((kp.mask >= 128).mean()), 4),
        "person_selection": kp.extra.get("selection", "full_image"),
    }
    return StepOutput(
        data=json_bytes(kp.to_dict()), ext="json", metrics=metrics, extra_files={"mask": (encode_png(kp.mask), "png")}
    )


def fit_smplx_params(inputs: Mapping[str, bytes], params: Mapping[str, dict], runtime: WorkerRuntime) -> StepOutput:
    """keypoints (+ person mask) -> body fit JSON; same computation as the `smplx_params` asset."""
    from models.body_model import load_body_model
    from models.fitting import BodyHints, FitConfig, fit_body

    kp = load_keypoints(inputs[KEYPOINTS], inputs[MASK])
    body = load_body_model(runtime.smplx_model_dir, runtime.anny_cache_dir, runtime.device)  # Anny; SMPL-X when configured
    hints = BodyHints.from_dict(params.get("body_hints"))  # the uploader's, from the uploads document
    fit = fit_body(kp, body, FitConfig.from_params(params.get("body_fitter", {})), hints)
    metrics = dict(fit.metrics) | {"framing": fit.framing, "body_model": fit.body_model.name}
    metrics |= {f"phenotype_{k}": v for k, v in fit.phenotype.items()}
    data = fit.to_dict()
    if fit.body_model.name == "anny":  # ARKit weights of the photo's face (issue 13)
        from models.expression import fit_anny_expression

        expression = fit_anny_expression(body.model, fit.phenotype, kp.face)
        data["expression"] = expression.weights
        metrics["expression_residual"] = round(expression.residual, 4)
    return StepOutput(data=json_bytes(data), ext="json", metrics=metrics, device=body.device)


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
    model = load_anny(runtime.anny_cache_dir, runtime.device)
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
    from models.expression import anny_facial_targets, blink_lids

    layout = body_layout(
        clothing.rest_vertices, topo["faces"], topo["uv"], topo["face_uv_idx"],
        topo["skin_indices"], topo["skin_weights"], [str(b) for b in model.bone_labels], blink_lids(anny_facial_targets(model)),
    )  # fmt: skip
    baked = bake_texture(
        bake_surface, topo["faces"], topo["uv"], topo["face_uv_idx"], fit.camera, image, kp.mask,
        TextureConfig(size=texture_size), layout=layout, face_landmarks=kp.face, hand_landmarks=(kp.left_hand, kp.right_hand),
    )  # fmt: skip
    mesh = textured_mesh(vertices, topo["faces"], topo["uv"], topo["face_uv_idx"], baked.image)
    glb = mesh_to_glb_bytes(mesh)
    overlay = render_overlay(image, vertices, topo["faces"], fit.camera)
    metrics = {
        "vertex_count": len(mesh.vertices),
        "face_count": len(mesh.faces),
        "texture_size": texture_size,
        "texture_coverage": round(float(baked.coverage), 4),
        "facing": baked.facing,  # "away": the photo shows the back; the front is made up (issue 13)
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
        device=runtime.device,
        preview_png=thumbnail_png(overlay),
    )


def _garment(mesh_metrics: Mapping[str, Any]):
    """The skirt or dress the mesh step detected (its metrics), for the rig's skin weights;
    None for no garment or a mesh made before garments were detected."""
    from models.clothing import Garment

    return Garment.from_dict(
        {"kind": mesh_metrics.get("garment", "none"), "hem_fraction": mesh_metrics.get("garment_hem_fraction", 0.0),
         "hem_height_m": mesh_metrics.get("garment_hem_m", 0.0)}
    )  # fmt: skip


def rig_avatar(inputs: Mapping[str, bytes], params: Mapping[str, dict], runtime: WorkerRuntime) -> StepOutput:
    """fit + the mesh's texture, clothing offsets and garment -> skinned, textured, animated GLB
    (`models.rigging`), with a front + side preview ray cast from the GLB itself."""
    from models.body_model import load_anny
    from models.face_blendshapes import arkit_expression
    from models.fitting import BodyFit
    from models.gltf_export import compress_glb, find_gltfpack
    from models.render import preview_png
    from models.rigging import build_rigged_avatar

    fit_json = json.loads(inputs[FIT])
    fit = BodyFit.from_dict(fit_json)
    # clothing offsets (V,3) in Anny's rest frame; absent for a mesh made before offsets existed
    # (the rigged GLB is then the naked body, as it was)
    offsets = load_npy(inputs[OFFSETS]).astype(np.float64) if OFFSETS in inputs else None
    compress = bool(params["rigger"].get("compress", False))
    avatar = build_rigged_avatar(
        load_anny(runtime.anny_cache_dir), fit.phenotype, fit.pose_parameters, inputs[TEXTURE], offsets,
        expression=arkit_expression(fit_json.get("expression")), garment=_garment(json.loads(inputs[MESH_METRICS])),
    )  # fmt: skip
    preview = preview_png(avatar.glb)
    glb = compress_glb(avatar.glb, find_gltfpack(runtime.gltfpack)) if compress else avatar.glb
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
    return StepOutput(data=glb, ext="glb", metrics=metrics, extra_files={"preview": (preview, "png")}, preview_png=preview)


# -- the declarations --------------------------------------------------------------------------


def _declare(*specs: StepSpec) -> dict[str, StepSpec]:
    """The steps by name, in pipeline order; each input names a step declared before it."""
    steps: dict[str, StepSpec] = {}
    for spec in specs:
        unknown = [dep for dep in spec.deps if dep not in steps]
        if unknown:
            raise ValueError(f"step {spec.name} reads {unknown}, which no earlier step makes")
        steps[spec.name] = spec
    return steps


STEPS: dict[str, StepSpec] = _declare(
    StepSpec("photo", (RAW,), (), normalise_upload, "Validated, upright, metadata-free RGB photo (PNG)."),
    StepSpec(
        "keypoints", (PHOTO,), ("keypoint_detector",), detect_landmarks,
        "MediaPipe Holistic landmarks (JSON) and person mask (PNG).",
    ),
    StepSpec(
        "smplx_params", (KEYPOINTS, MASK), ("body_model", "body_fitter"), fit_smplx_params,
        "Body fit: shape, pose, OpenCV camera, fit metrics (JSON).", checked=True, body_hints=True,
    ),
    StepSpec(
        "mesh", (FIT, PHOTO, KEYPOINTS, MASK), ("body_model", "reconstructor"), reconstruct_mesh,
        "Textured surface in the photo's pose and frame (GLB).", preview_extra="overlay", checked=True,
    ),
    StepSpec(
        "rigged_glb", (TEXTURE, OFFSETS, MESH_METRICS, FIT), ("body_model", "rigger"), rig_avatar,
        "Skinned, textured, animated avatar (GLB).", optional=frozenset({OFFSETS}), preview_extra="preview",
        checked=True,
    ),
)  # fmt: skip

ASSET_ORDER: tuple[str, ...] = tuple(STEPS)  # topological: each step after the steps it reads
ASSET_MODELS: dict[str, tuple[str, ...]] = {name: spec.models for name, spec in STEPS.items()}
CHECKED_ASSETS: tuple[str, ...] = tuple(name for name, spec in STEPS.items() if spec.checked)


def step_spec(name: str) -> StepSpec:
    try:
        return STEPS[name]
    except KeyError:
        raise ValueError(f"no step named {name!r}; known: {sorted(STEPS)}") from None


# -- load, run, store ------------------------------------------------------------------------


def load_inputs(spec: StepSpec, request: StepRequest, store: ObjectStore) -> dict[str, bytes]:
    """The step's inputs as bytes: objects by key, "#metrics" inputs from the request."""
    inputs: dict[str, bytes] = {}
    missing: list[str] = []
    for name in spec.inputs:
        asset, _, is_metrics = input_source(name)
        if is_metrics and asset in request.metrics:
            inputs[name] = json_bytes(request.metrics[asset])
        elif not is_metrics and name in request.inputs:
            inputs[name] = store.get_bytes(request.inputs[name])
        elif name not in spec.optional:
            missing.append(name)
    if missing:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR, f"inputs {missing} were not given for step {spec.name}", spec.name
        )
    return inputs


def store_output(
    store: ObjectStore, subject_id: str, upload_id: str, step: str, output: StepOutput
) -> tuple[str, str, str, int, dict[str, str]]:
    """Write extra files, then the main object; returns (key, uri, sha256, bytes, extra keys).

    Keys are content addressed, so a retried step rewrites the same keys: retries never
    duplicate anything."""
    extra_keys: dict[str, str] = {}
    for name, (blob, ext) in output.extra_files.items():
        key = artifact_key(subject_id, upload_id, step, sha256_hex(blob), ext)
        extra_keys[name] = store.put_bytes(key, blob).key
    obj = store.put_bytes(artifact_key(subject_id, upload_id, step, sha256_hex(output.data), output.ext), output.data)
    return obj.key, obj.uri, obj.sha256, obj.bytes, extra_keys


def execute_step(
    request: StepRequest, store: ObjectStore, device: str | None = None, runtime: WorkerRuntime | None = None
) -> StepResult:
    """Load inputs, run the step, store the outputs. Raises `PipelineError` for bad input.
    ``device``: where the torch work runs (default: the runtime's, "cpu" unless configured);
    ``runtime``: this machine's model files (default: the configured ones). The result's
    ``device`` is where the step's torch work actually ran ("cpu" for steps without any)."""
    spec = step_spec(request.step)
    inputs = load_inputs(spec, request, store)
    start = time.perf_counter()
    runtime = runtime or WorkerRuntime.configured()
    if device is not None:
        runtime = replace(runtime, device=device)
    output = spec.run(inputs, request.params, runtime)
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
        device=output.device,
        preview_png=output.preview_png,
    )
