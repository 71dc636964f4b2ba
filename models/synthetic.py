"""Synthetic ground truth: photos of Anny bodies with known shape, pose and camera.

Each sample is generated on the fly from a seed (nothing is stored): a random adult
phenotype, a plausible random pose (arms, elbows, legs, knees, spine and head within
everyday ranges, turned up to 35 degrees from the camera), dressed by colouring the body's
faces (skin, shirt with random sleeve length, trousers or shorts, shoes, hair, eyes, lips),
lit by a random directional light and rendered anti-aliased onto a random procedural
background (gradients, blotches, stripes, a floor line). MediaPipe then sees a person; the
pipeline runs on the image as on a photo and its fit is compared with the truth.

Ground truth kept per sample: the posed vertices and skeleton in the camera frame, the rest
height, the camera, the phenotype and the rendered silhouette.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.body_model import PHENOTYPE_LABELS, AnnyBody, BodyModel, BodyState
from models.camera import Camera
from models.eval_render import render_mesh
from models.keypoints import Keypoints

# Skeleton used for joint errors: 17 Anny bones, the Human3.6M-style set.
EVAL_JOINTS = (
    "Hips", "LeftUpLeg", "LeftLeg", "LeftFoot", "RightUpLeg", "RightLeg", "RightFoot",
    "Spine1", "Spine2", "Neck", "Head", "LeftArm", "LeftForeArm", "LeftHand",
    "RightArm", "RightForeArm", "RightHand",
)  # fmt: skip

SKIN_TONES = np.array([
    [255, 224, 196], [240, 200, 165], [224, 172, 130], [198, 134, 96], [160, 102, 70], [110, 70, 48],
], dtype=np.float64)  # fmt: skip
HAIR = np.array([[30, 22, 18], [70, 45, 25], [120, 85, 50], [200, 170, 110], [90, 90, 90]], dtype=np.float64)


@dataclass
class SyntheticSample:
    seed: int
    image: np.ndarray  # (h, w, 3) uint8
    silhouette: np.ndarray  # (h, w) bool, the rendered body
    camera: Camera
    state: BodyState  # ground truth, camera frame
    phenotype: dict[str, float]
    vertices: np.ndarray  # (V, 3) posed, camera frame
    joints: np.ndarray  # (17, 3) EVAL_JOINTS heads, camera frame
    height_m: float
    focal_scale: float


def _bone(body: AnnyBody, short: str) -> int:
    return list(body.joint_names).index(f"mixamorig:{short}")


def random_pose(body: AnnyBody, rng: np.random.Generator) -> torch.Tensor:
    """(J, 3) axis-angle in Anny's local-ref frames: an everyday standing pose."""
    rotvec = np.zeros((len(body.joint_names), 3))
    deg = np.pi / 180.0

    def set_(short: str, x: float, y: float, z: float) -> None:
        rotvec[_bone(body, short)] = np.array([x, y, z]) * deg

    for short in ("Spine", "Spine1", "Spine2"):
        set_(short, *rng.uniform(-8, 8, 3))
    set_("Neck", *rng.uniform(-10, 10, 3))
    set_("Head", *rng.uniform(-15, 15, 3))
    hinges = body.hinge_axes()
    for side, sign in (("Left", 1.0), ("Right", -1.0)):
        # Anny faces -Y, Z up: rotation about Y swings the arm in the body's plane (sign by side),
        # about X forward/backward
        set_(f"{side}Arm", rng.uniform(-45, 35), sign * rng.uniform(-50, 35), rng.uniform(-25, 25))
        elbow = _bone(body, f"{side}ForeArm")
        rotvec[elbow] = hinges[elbow] * rng.uniform(0, 95) * deg
        set_(f"{side}Hand", *rng.uniform(-20, 20, 3))
        set_(f"{side}UpLeg", rng.uniform(-25, 25), 0.0, sign * rng.uniform(-5, 15))
        knee = _bone(body, f"{side}Leg")
        rotvec[knee] = hinges[knee] * rng.uniform(0, 45) * deg
        set_(f"{side}Foot", *rng.uniform(-10, 10, 3))
    return torch.as_tensor(rotvec, dtype=torch.float32)


CHILD_SHARE = 0.25  # of the synthetic subjects


def random_phenotype(rng: np.random.Generator) -> dict[str, float]:
    """Builds across the whole gender axis (0 male .. 1 female), heights from short to tall,
    adults (age 0.55-0.95; 0.67 is Anny's young adult) and a quarter children (age 0.2-0.45;
    0.33 is Anny's child anchor)."""
    values = {k: float(rng.uniform(0.1, 0.9)) for k in ("muscle", "weight", "proportions")}
    values["gender"] = float(rng.uniform(0.0, 1.0))
    values["height"] = float(rng.uniform(0.15, 0.85))
    child = rng.random() < CHILD_SHARE
    values["age"] = float(rng.uniform(0.2, 0.45) if child else rng.uniform(0.55, 0.95))
    return values


def _face_colours(body: AnnyBody, rng: np.random.Generator, rest: np.ndarray) -> np.ndarray:
    """Clothes and skin: (F, 3) colours from the faces' body parts and dominant bones."""
    from models.texture import face_part_labels, part_names

    model = body.model
    faces = body.faces
    parts = np.array(part_names())[
        face_part_labels(model.texture_coordinates.numpy(), model.face_texture_coordinate_indices.numpy())
    ]
    weights = model.vertex_bone_weights.numpy()
    indices = model.vertex_bone_indices.numpy()
    dominant = indices[np.arange(len(indices)), weights.argmax(axis=1)]
    bone_names = [b.split(":")[-1] for b in body.bone_names]
    face_bone = np.array(bone_names)[dominant[faces[:, 0]]]

    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.05)
    shirt = rng.uniform(20, 235, 3)
    trousers = rng.uniform(20, 200, 3)
    shoes = rng.uniform(10, 120, 3)
    hair = HAIR[rng.integers(len(HAIR))]
    long_sleeves, shorts = rng.random() < 0.5, rng.random() < 0.3

    colours = np.tile(skin, (len(faces), 1))
    torso = np.isin(face_bone, ["Hips", "Spine", "Spine1", "Spine2", "LeftShoulder", "RightShoulder", "LeftArm", "RightArm"])
    colours[torso & (parts == "body")] = shirt
    if long_sleeves:
        colours[np.isin(face_bone, ["LeftForeArm", "RightForeArm"]) & (parts == "body")] = shirt
    legs = ["LeftUpLeg", "RightUpLeg"] + ([] if shorts else ["LeftLeg", "RightLeg"])
    colours[np.isin(face_bone, legs) & (parts == "body")] = trousers
    hips_low = (face_bone == "Hips") & (rest[faces].mean(axis=1)[:, 2] < rest[:, 2].min() + 0.55 * np.ptp(rest[:, 2]))
    colours[hips_low & (parts == "body")] = trousers
    colours[np.isin(parts, ["foot.L", "foot.R"])] = shoes
    # hair: the head above the eyebrows and the back of the head
    centre = rest[faces].mean(axis=1)
    head = parts == "head"
    eyes_z = rest[:, 2].max() - 0.11 * (rest[:, 2].max() - rest[:, 2].min()) / 1.7
    back = centre[:, 1] > np.median(centre[head, 1])
    colours[head & ((centre[:, 2] > eyes_z + 0.035) | (back & (centre[:, 2] > eyes_z - 0.06)))] = hair
    colours[np.isin(parts, ["eye_front.L", "eye_front.R"])] = [40, 30, 25]
    colours[np.isin(parts, ["mouth_cavity", "tongue"])] = [150, 60, 60]
    noise = rng.normal(0, 6, colours.shape)
    return np.clip(colours + noise, 0, 255)


def random_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A procedural scene: gradient wall, optional floor, blotches or stripes."""
    import cv2

    top, bottom = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    image = (1 - t) * top + t * bottom
    image = np.repeat(image, w, axis=1)
    kind = rng.integers(3)
    if kind == 0:  # blotches
        small = rng.uniform(0, 1, (6, 4, 3))
        image = image * 0.6 + 0.4 * 255 * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # stripes
        period = rng.uniform(20, 80)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(w) / period)[None, :, None]
        image = image * (0.8 + 0.2 * stripes)
    floor = int(h * rng.uniform(0.75, 0.9))
    image[floor:] = image[floor:] * 0.7 + rng.uniform(30, 200, 3) * 0.3
    image = image + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def phenotype_shape(phenotype: dict[str, float]) -> torch.Tensor:
    """Anny's shape unknowns (`AnnyBody`: logits of the phenotype values) for `phenotype`."""
    return torch.logit(torch.tensor([phenotype[k] for k in PHENOTYPE_LABELS]))


def place_body(
    body: AnnyBody,
    phenotype: dict[str, float],
    root_rotvec: torch.Tensor,
    joint_rotvec: torch.Tensor,
    camera: Camera,
    fill: float,
    offset_px: tuple[float, float] = (0.0, 0.0),
) -> tuple[BodyState, np.ndarray]:
    """A synthetic subject's body in front of `camera` (the one builder of the synthetic photos
    and the appearance subjects): facing the camera, turned by `root_rotvec`, posed by
    `joint_rotvec`, at the depth where its vertical extent fills `fill` of the image height,
    its centre `offset_px` off the image centre. Returns the state and its posed vertices."""
    state = BodyState(
        root_rotvec=root_rotvec,
        translation=torch.zeros(3),
        joint_rotvec=joint_rotvec,
        shape=phenotype_shape(phenotype),
        base_rotation=torch.as_tensor(body.facing_camera, dtype=torch.float32),
    )
    vertices = body.posed_vertices(state)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    depth = camera.K[1, 1] * (hi[1] - lo[1]) / (fill * camera.image_size[1])
    offset = np.asarray(offset_px, dtype=np.float64) / camera.K[0, 0] * depth
    translation = np.array([offset[0], offset[1], depth]) - (lo + hi) / 2 * np.array([1, 1, 0])
    state.translation = torch.as_tensor(translation, dtype=torch.float32)
    return state, body.posed_vertices(state)


def generate_sample(body: AnnyBody, seed: int, size: tuple[int, int] = (512, 768)) -> SyntheticSample:
    """One synthetic photo with its ground truth (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    w, h = size
    phenotype = random_phenotype(rng)
    rest = body.rest_vertices(phenotype_shape(phenotype))
    yaw, pitch, roll = rng.uniform(-35, 35), rng.uniform(-5, 5), rng.uniform(-4, 4)
    import roma

    # yaw about the body's vertical axis (Anny Z), then small tilts
    euler = torch.tensor([pitch, roll, yaw], dtype=torch.float32) * np.pi / 180
    root = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, float(euler[2])])) @ roma.rotvec_to_rotmat(
        torch.tensor([float(euler[0]), float(euler[1]), 0.0])
    )
    joints = random_pose(body, rng)
    focal_scale = float(rng.uniform(1.0, 1.5))
    camera = Camera.from_focal(focal_scale * max(w, h), w, h)
    # place the body: its vertical extent fills 65-85 % of the image, a little off centre
    fill = rng.uniform(0.65, 0.85)
    offset_px = (rng.uniform(-0.08, 0.08) * w, rng.uniform(-0.04, 0.04) * h)
    state, vertices = place_body(body, phenotype, roma.rotmat_to_rotvec(root), joints, camera, fill, offset_px)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.9), 1.0])  # from the camera side, above
    image, silhouette = render_mesh(
        vertices, body.faces, camera, _face_colours(body, rng, rest), background=random_background(rng, w, h),
        light_direction=light, ambient=float(rng.uniform(0.3, 0.45)),
    )  # fmt: skip
    heads = body.bone_heads(state)
    joints = heads[[list(body.bone_names).index(f"mixamorig:{n}") for n in EVAL_JOINTS]]
    return SyntheticSample(
        seed=seed, image=image, silhouette=silhouette, camera=camera, state=state, phenotype=phenotype,
        vertices=vertices, joints=joints, height_m=float(np.ptp(rest[:, 2])), focal_scale=focal_scale,
    )  # fmt: skip


def procrustes_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`source` (N, 3) after the similarity transform (rotation, scale, translation) that best
    maps it onto `target` (Umeyama)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t.T @ s)
    d = np.sign(np.linalg.det(u @ vt))
    correction = np.diag([1.0, 1.0, d])
    rotation = u @ correction @ vt
    scale = float((sigma * np.diag(correction)).sum() / max((s**2).sum(), 1e-12))
    return scale * s @ rotation.T + mu_t


def pa_error_mm(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-point error (mm) after Procrustes alignment (PA-MPJPE for joints, PA-PVE for
    vertices)."""
    aligned = procrustes_align(np.asarray(predicted, float), np.asarray(truth, float))
    return float(np.linalg.norm(aligned - truth, axis=1).mean() * 1000.0)


def keypoints_from_points(
    body: BodyModel, state: BodyState, camera: Camera, mask: np.ndarray, framing: str = "full_body"
) -> Keypoints:
    """MediaPipe-style keypoints read off a known body (perfect 2D landmarks, visibility 1):
    the fitter's input without the detector, for tests and oracle evaluations."""
    from models.keypoints import POSE_INDEX
    from models.landmarks import BODY_LABELS, MEDIAPIPE_BODY

    points = body.points(state.detached())
    body_3d = points.body.numpy().astype(np.float64)
    pixels = camera.project(body_3d)
    w, h = camera.image_size
    pose = np.zeros((33, 4))
    world = np.zeros((33, 3))
    for k, label in enumerate(BODY_LABELS):
        if label in MEDIAPIPE_BODY:
            index = POSE_INDEX[MEDIAPIPE_BODY[label][0]]
            pose[index] = (pixels[k, 0], pixels[k, 1], 0.0, 1.0)
            world[index] = body_3d[k]
    hips = [BODY_LABELS.index("left_hip"), BODY_LABELS.index("right_hip")]
    world -= body_3d[hips].mean(axis=0)
    ys, xs = np.nonzero(np.asarray(mask))
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else [0.0, 0.0, w, h]
    return Keypoints(
        image_size=(w, h), pose=pose, pose_world=world, face=None, left_hand=None, right_hand=None,
        mask=(np.asarray(mask) > 0).astype(np.uint8) * 255, framing=framing, person_bbox=bbox,
    )  # fmt: skip
