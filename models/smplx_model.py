"""SMPL-X behind the `BodyModel` interface, through the `smplx` package.

SMPL-X's model files are licensed by the Max Planck Institute and are not shipped: point
`SMPLX_MODEL_DIR` (or the `smplx_model_dir` argument) at a folder that holds
`SMPLX_NEUTRAL.npz` (directly or under `smplx/`, the layout `smplx.create` expects) or at the
`.npz` file itself.

Unknowns: `global_orient` (as the root rotation), `transl`, the 21 body joints, the jaw and the
15 + 15 finger joints as axis-angle (`use_pca=False`, flat-hand mean: zero = open hand), and 10
`betas`. Expression stays neutral (MediaPipe's face landmarks fix the head, not the
expression, in this fitter). Keypoints (see `models.landmarks`): SMPL-X joints, its vertex
landmarks (nose, eyes, ears, toes, heels, fingertips) and its 51 static face landmarks.

`write_tiny_smplx_model` writes a small synthetic file with the keys and layout `smplx`
expects (55 joints, a few hundred vertices): it exercises the loader and the fitter in tests
without the licensed files. `smplx` hard-codes the full-size mesh's landmark vertex ids
(`smplx.vertex_ids.vertex_ids['smplx']`, up to 9929); for smaller meshes they are patched while
the model is built (from the file's own `landmark_names`/`landmark_vertex_ids` when present)
and restored afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from models.body_interface import BodyModel, BodyModelInfo, BodyPoints, BodyState, farthest_point_sample
from models.device import on_device, resolve_device
from models.landmarks import BODY_LABELS, FACE_POINTS, HAND_LABELS, SMPLX_BODY_JOINTS, SMPLX_HAND_JOINTS

BODY_JOINTS = (
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
FINGERS = tuple(f"{finger}{i}" for finger in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3))
POSED_JOINTS = BODY_JOINTS + ("jaw",) + tuple(f"left_{f}" for f in FINGERS) + tuple(f"right_{f}" for f in FINGERS)
N_BETAS = 10
N_EXPRESSION = 10
SILHOUETTE_VERTICES = 1200

# SMPL-X kinematic tree (55 joints).
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip

# smplx's landmark vertex names (VertexJointSelector order) for the extra keypoints
LANDMARK_NAMES = (
    "nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb", "rindex", "rmiddle", "rring", "rpinky",
)  # fmt: skip


def _role(name: str) -> str:
    base = name.removeprefix("left_").removeprefix("right_")
    roles = {
        "hip": "upper_leg", "knee": "lower_leg", "ankle": "foot", "foot": "toe", "spine1": "spine",
        "spine2": "spine", "spine3": "spine", "neck": "neck", "collar": "clavicle", "head": "head",
        "shoulder": "upper_arm", "elbow": "forearm", "wrist": "hand", "jaw": "jaw",
    }  # fmt: skip
    return roles.get(base, "finger")


def resolve_model_file(path: str | Path) -> Path:
    """The SMPL-X `.npz` for a file or folder (`SMPLX_NEUTRAL.npz`, directly or under `smplx/`)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "SMPLX_NEUTRAL.npz", path / "smplx" / "SMPLX_NEUTRAL.npz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no SMPLX_NEUTRAL.npz in {path} (nor in {path / 'smplx'})")


@contextlib.contextmanager
def _vertex_ids_for(data: np.lib.npyio.NpzFile) -> Iterator[None]:
    """Patch smplx's hard-coded landmark vertex ids when the mesh is smaller than SMPL-X's."""
    from smplx.vertex_ids import vertex_ids

    original = dict(vertex_ids["smplx"])
    n_vertices = int(data["v_template"].shape[0])
    if max(original.values()) < n_vertices:
        yield
        return
    if "landmark_names" in data.files:
        names = [str(n) for n in data["landmark_names"]]
        patched = dict(zip(names, (int(i) for i in data["landmark_vertex_ids"]), strict=True))
    else:  # no ids in the file: any valid vertex keeps the loader working
        patched = {name: int(vid) % n_vertices for name, vid in original.items()}
    vertex_ids["smplx"].clear()
    vertex_ids["smplx"].update(patched)
    try:
        yield
    finally:
        vertex_ids["smplx"].clear()
        vertex_ids["smplx"].update(original)


class SmplxBody(BodyModel):
    """SMPL-X (smplx package) behind the fitter's interface."""

    def __init__(self, model_file: str | Path):
        import smplx
        from smplx.joint_names import JOINT_NAMES

        self.model_file = resolve_model_file(model_file)
        data = np.load(self.model_file, allow_pickle=False)
        with _vertex_ids_for(data):
            self.model = smplx.SMPLX(
                str(self.model_file), num_betas=N_BETAS, num_expression_coeffs=N_EXPRESSION,
                use_pca=False, flat_hand_mean=True, use_face_contour=False, ext="npz",
            )  # fmt: skip
        self.model.eval()
        n_vertices = int(data["v_template"].shape[0])
        self.info = BodyModelInfo(name="smplx", version=importlib.metadata.version("smplx"),
                                  rig=f"{self.model_file.name}:{n_vertices}v")  # fmt: skip
        self.joint_names = POSED_JOINTS
        self.joint_roles = tuple(_role(n) for n in POSED_JOINTS)
        self.shape_dim = N_BETAS
        # SMPL-X: Y up, facing +Z. Camera: y down, looking along +Z. Facing the camera = 180 deg about X.
        self.facing_camera = np.diag([1.0, -1.0, -1.0])
        self.turn_around = np.diag([-1.0, 1.0, -1.0])
        n_landmarks = int(self.model.lmk_faces_idx.shape[0])
        self.face_point_mask = np.array([ibug >= 17 and ibug - 17 < n_landmarks for _, ibug in FACE_POINTS.values()])
        self._faces = self.model.faces_tensor.detach().cpu().numpy().astype(np.int64)

        names = list(JOINT_NAMES)
        self._body_idx = torch.tensor([names.index(SMPLX_BODY_JOINTS[label]) for label in BODY_LABELS])
        self._hand_idx = torch.tensor([
            [names.index(f"{side}_{SMPLX_HAND_JOINTS[label]}") for label in HAND_LABELS] for side in ("left", "right")
        ])  # fmt: skip
        first_landmark = 55 + len(LANDMARK_NAMES)
        self._face_idx = torch.tensor([first_landmark + max(ibug - 17, 0) for _, ibug in FACE_POINTS.values()])
        self._posed_index = [names.index(n) for n in POSED_JOINTS]
        with torch.no_grad():
            rest = self.model(return_verts=True)
        rest_vertices = rest.vertices[0].double().cpu().numpy()
        self._sil_ids = torch.as_tensor(
            farthest_point_sample(rest_vertices, min(SILHOUETTE_VERTICES, n_vertices))
        )
        self._rest_joints = rest.joints[0].double().cpu().numpy()

    @property
    def faces(self) -> np.ndarray:
        return self._faces

    def hinge_axes(self) -> dict[int, np.ndarray]:
        forward = np.array([0.0, 0.0, 1.0])  # SMPL-X faces +Z
        from smplx.joint_names import JOINT_NAMES

        names = list(JOINT_NAMES)
        axes: dict[int, np.ndarray] = {}
        for j, name in enumerate(self.joint_names):
            role = self.joint_roles[j]
            if role not in ("forearm", "lower_leg"):
                continue
            side = name.split("_")[0]
            child = f"{side}_wrist" if role == "forearm" else f"{side}_ankle"
            direction = self._rest_joints[names.index(child)] - self._rest_joints[names.index(name)]
            towards = forward if role == "forearm" else -forward
            axis = np.cross(direction, towards)
            if np.linalg.norm(axis) > 1e-9:
                axes[j] = axis / np.linalg.norm(axis)
        return axes

    def shape_cache(self, shape: torch.Tensor) -> None:
        return None  # SMPL-X's forward is one small linear blend: nothing worth caching

    def _output(self, state: BodyState):
        import roma

        global_orient = roma.rotmat_to_rotvec(state.root_rotation())[None]
        rotvec = state.joint_rotvec
        n_body = len(BODY_JOINTS)
        return self.model(
            betas=state.shape[None],
            global_orient=global_orient,
            body_pose=rotvec[:n_body].reshape(1, -1),
            jaw_pose=rotvec[n_body : n_body + 1].reshape(1, 3),
            left_hand_pose=rotvec[n_body + 1 : n_body + 16].reshape(1, -1),
            right_hand_pose=rotvec[n_body + 16 : n_body + 31].reshape(1, -1),
            leye_pose=rotvec.new_zeros(1, 3),
            reye_pose=rotvec.new_zeros(1, 3),
            expression=rotvec.new_zeros(1, N_EXPRESSION),
            transl=state.translation[None],
            return_verts=True,
        )

    def points(self, state: BodyState, shape_cache: object | None = None, with_vertices: bool = False) -> BodyPoints:
        out = self._output(state)
        joints = out.joints[0]
        return BodyPoints(
            body=joints[self._body_idx],
            hands=joints[self._hand_idx],
            face=joints[self._face_idx],
            vertices=out.vertices[0, self._sil_ids] if with_vertices else None,
        )

    def posed_vertices(self, state: BodyState) -> np.ndarray:
        with torch.no_grad():
            return self._output(state.detached()).vertices[0].double().cpu().numpy()

    def rest_vertices(self, shape: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.model(betas=shape.detach()[None], return_verts=True).vertices[0].double().cpu().numpy()

    def rest_height(self, shape: torch.Tensor) -> float:
        return float(np.ptp(self.rest_vertices(shape)[:, 1]))

    def serialise(self, state: BodyState) -> dict:
        import roma

        s = state.detached()
        n_body = len(BODY_JOINTS)
        rotvec = s.joint_rotvec.cpu().numpy().astype(np.float64)

        def rounded(a) -> list:
            return np.round(np.asarray(a, dtype=np.float64), 6).tolist()

        return {
            "betas": rounded(s.shape.cpu().numpy()),
            "global_orient": rounded(roma.rotmat_to_rotvec(s.root_rotation()).cpu().numpy()),
            "transl": rounded(s.translation.cpu().numpy()),
            "body_pose": rounded(rotvec[:n_body]),
            "jaw_pose": rounded(rotvec[n_body]),
            "left_hand_pose": rounded(rotvec[n_body + 1 : n_body + 16]),
            "right_hand_pose": rounded(rotvec[n_body + 16 : n_body + 31]),
            "expression": [0.0] * N_EXPRESSION,
            "hand_pose_convention": "axis-angle, flat_hand_mean",
        }

    def deserialise(self, parameters: dict) -> BodyState:
        def t(key: str) -> torch.Tensor:
            return torch.as_tensor(np.asarray(parameters[key], dtype=np.float32))

        rotvec = torch.cat([
            t("body_pose").reshape(-1, 3), t("jaw_pose").reshape(-1, 3),
            t("left_hand_pose").reshape(-1, 3), t("right_hand_pose").reshape(-1, 3),
        ])  # fmt: skip
        return BodyState(
            root_rotvec=t("global_orient").reshape(3),
            translation=t("transl").reshape(3),
            joint_rotvec=rotvec,
            shape=t("betas").reshape(-1),
            base_rotation=torch.eye(3),
        )


def load_smplx_body(path: str, device: str = "cpu") -> SmplxBody:
    """SMPL-X behind the `BodyModel` interface (built once per process, path and device)."""
    return _load_smplx_body(path, resolve_device(device))


@functools.lru_cache(maxsize=4)
def _load_smplx_body(path: str, device: str) -> SmplxBody:
    with on_device(device):  # smplx's buffers and the tensors SmplxBody precomputes
        body = SmplxBody(path)
    body.model.to(device)
    body.device = device
    return body


# ---------------------------------------------------------------------------------------------
# A tiny SMPL-X-format model for tests
# ---------------------------------------------------------------------------------------------

# T-pose joint positions (metres; Y up, facing +Z, subject's left = +X) of the tiny model.
_LEFT_HAND = {
    "index": [(0.80, 1.40, 0.03), (0.84, 1.40, 0.03), (0.87, 1.40, 0.03)],
    "middle": [(0.80, 1.40, 0.01), (0.845, 1.40, 0.01), (0.88, 1.40, 0.01)],
    "pinky": [(0.78, 1.40, -0.03), (0.81, 1.40, -0.03), (0.835, 1.40, -0.03)],
    "ring": [(0.79, 1.40, -0.01), (0.83, 1.40, -0.01), (0.86, 1.40, -0.01)],
    "thumb": [(0.73, 1.39, 0.04), (0.76, 1.38, 0.06), (0.79, 1.37, 0.07)],
}
_TIPS = {"thumb": (0.82, 1.36, 0.07), "index": (0.90, 1.40, 0.03), "middle": (0.91, 1.40, 0.01),
         "ring": (0.89, 1.40, -0.01), "pinky": (0.86, 1.40, -0.03)}  # fmt: skip


def _tiny_joints() -> np.ndarray:
    left = {
        "hip": (0.09, 0.88, 0.0), "knee": (0.10, 0.50, 0.0), "ankle": (0.10, 0.08, 0.0),
        "foot": (0.11, 0.02, 0.12), "collar": (0.08, 1.38, 0.0), "shoulder": (0.18, 1.40, 0.0),
        "elbow": (0.45, 1.40, 0.0), "wrist": (0.70, 1.40, 0.0), "eye_smplhf": (0.03, 1.62, 0.09),
    }  # fmt: skip
    centre = {"pelvis": (0.0, 0.95, 0.0), "spine1": (0.0, 1.05, 0.0), "spine2": (0.0, 1.18, 0.0),
              "spine3": (0.0, 1.25, 0.0), "neck": (0.0, 1.45, 0.0), "head": (0.0, 1.55, 0.02),
              "jaw": (0.0, 1.52, 0.05)}  # fmt: skip
    from smplx.joint_names import JOINT_NAMES

    positions = []
    for name in JOINT_NAMES[:55]:
        if name in centre:
            positions.append(centre[name])
            continue
        side, base = name.split("_", 1)
        sign = 1.0 if side == "left" else -1.0
        if base in left:
            x, y, z = left[base]
        else:
            finger, index = base[:-1], int(base[-1])
            x, y, z = _LEFT_HAND[finger][index - 1]
        positions.append((sign * x, y, z))
    return np.array(positions)


def _tiny_landmarks() -> tuple[list[str], np.ndarray, list[int]]:
    """Landmark vertices: name, position, the joint that carries them."""
    from smplx.joint_names import JOINT_NAMES

    names = list(JOINT_NAMES)
    spec = {
        "nose": ((0.0, 1.58, 0.11), "head"), "reye": ((-0.03, 1.62, 0.09), "head"),
        "leye": ((0.03, 1.62, 0.09), "head"), "rear": ((-0.08, 1.58, 0.0), "head"),
        "lear": ((0.08, 1.58, 0.0), "head"),
        "LBigToe": ((0.11, 0.01, 0.22), "left_foot"), "LSmallToe": ((0.15, 0.01, 0.20), "left_foot"),
        "LHeel": ((0.10, 0.01, -0.05), "left_ankle"),
        "RBigToe": ((-0.11, 0.01, 0.22), "right_foot"), "RSmallToe": ((-0.15, 0.01, 0.20), "right_foot"),
        "RHeel": ((-0.10, 0.01, -0.05), "right_ankle"),
    }  # fmt: skip
    for side, sign in (("l", 1.0), ("r", -1.0)):
        full = "left" if side == "l" else "right"
        for finger, (x, y, z) in _TIPS.items():
            spec[f"{side}{finger}"] = ((sign * x, y, z), f"{full}_{finger}3")
    ordered = list(LANDMARK_NAMES)
    return ordered, np.array([spec[n][0] for n in ordered]), [names.index(spec[n][1]) for n in ordered]


def write_tiny_smplx_model(path: str | Path, seed: int = 0) -> Path:
    """A small SMPL-X-format `.npz` (same keys and layout as SMPLX_NEUTRAL.npz): one octahedron
    per joint plus one vertex per landmark, rigidly skinned; betas 0/1 scale the body's height
    and width, the others are small seeded random directions; no pose correctives."""
    rng = np.random.default_rng(seed)
    joints = _tiny_joints()
    n_joints = len(joints)
    octa = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    octa_faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    radius = np.where(np.arange(n_joints) >= 25, 0.012, 0.05)
    vertices = (joints[:, None, :] + radius[:, None, None] * octa[None]).reshape(-1, 3)
    faces = (octa_faces[None] + 6 * np.arange(n_joints)[:, None, None]).reshape(-1, 3)
    owner = np.repeat(np.arange(n_joints), 6)
    names, landmark_positions, landmark_owner = _tiny_landmarks()
    landmark_ids = np.arange(len(vertices), len(vertices) + len(names))
    vertices = np.concatenate([vertices, landmark_positions])
    owner = np.concatenate([owner, landmark_owner])
    n_vertices = len(vertices)

    weights = np.zeros((n_vertices, n_joints))
    weights[np.arange(n_vertices), owner] = 1.0
    regressor = np.zeros((n_joints, n_vertices))
    for j in range(n_joints):
        regressor[j, 6 * j : 6 * j + 6] = 1.0 / 6.0
    shapedirs = rng.normal(scale=0.002, size=(n_vertices, 3, N_BETAS + N_EXPRESSION))
    centred = vertices - vertices.mean(axis=0)
    shapedirs[:, 1, 0] = 0.05 * centred[:, 1]  # beta 0: taller
    shapedirs[:, 0, 1] = 0.05 * centred[:, 0]  # beta 1: wider
    kintree = np.stack([np.array(SMPLX_PARENTS, dtype=np.int64), np.arange(n_joints)])
    kintree[0, 0] = 4294967295  # as in the official files
    head = int(np.flatnonzero(owner == 15)[0] // 6)
    lmk_faces = np.full(51, 8 * head, dtype=np.int64) + np.arange(51) % 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        v_template=vertices.astype(np.float64),
        f=faces.astype(np.int64),
        shapedirs=shapedirs,
        posedirs=np.zeros((n_vertices, 3, 9 * (n_joints - 1))),
        J_regressor=regressor,
        weights=weights,
        kintree_table=kintree,
        hands_componentsl=np.eye(45),
        hands_componentsr=np.eye(45),
        hands_meanl=np.zeros(45),
        hands_meanr=np.zeros(45),
        lmk_faces_idx=lmk_faces,
        lmk_bary_coords=np.full((51, 3), 1.0 / 3.0),
        landmark_names=np.array(names),
        landmark_vertex_ids=landmark_ids.astype(np.int64),
    )
    return path
