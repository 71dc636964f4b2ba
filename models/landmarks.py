"""The correspondence between MediaPipe landmarks and body-model points.

Every body model behind `models.body_model.BodyModel` regresses three groups of 3D points in
the label orders defined here, so the fitter never needs to know which model it fits:

- `BODY_LABELS` (23): Anny's COCO-style keypoint regressor order - 17 COCO points plus big
  toe, small toe and heel per side. Anny regresses them from its vertices
  (`anny.KeypointsRegressor.coco`); SMPL-X from its joints and its `vertex_ids` landmarks.
- `HAND_LABELS` (21 per hand, left then right): MediaPipe Hands' order. Anny: the heads of the
  mixamo hand and finger bones and the tails of the distal finger bones (fingertips). SMPL-X:
  the wrist and finger joints and its fingertip landmarks.
- `FACE_LABELS` (8): rigid facial points that fix the head's orientation (nose tip, chin, eye
  corners, mouth corners). Anny: surface vertices found on the rest mesh from Anny's body-part
  segmentation (see `models.body_model.anny_face_vertex_ids`). SMPL-X: its 51 static face
  landmarks (lmk_faces_idx) in the iBUG-68 order, of which 8 are used.

`MEDIAPIPE_BODY` maps each body label to a MediaPipe Pose landmark and a per-point weight.
MediaPipe's hips sit higher and wider than anatomical hip joints, and its foot index is a
toe tip rather than the big toe's base: those are down-weighted. The small toes have no
MediaPipe counterpart and are not fitted.
"""

from __future__ import annotations

BODY_LABELS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)  # fmt: skip

# body label -> (MediaPipe Pose landmark name, per-point weight)
MEDIAPIPE_BODY: dict[str, tuple[str, float]] = {
    "nose": ("nose", 1.0),
    "left_eye": ("left_eye", 0.5),
    "right_eye": ("right_eye", 0.5),
    "left_ear": ("left_ear", 0.5),
    "right_ear": ("right_ear", 0.5),
    "left_shoulder": ("left_shoulder", 1.0),
    "right_shoulder": ("right_shoulder", 1.0),
    "left_elbow": ("left_elbow", 1.0),
    "right_elbow": ("right_elbow", 1.0),
    "left_wrist": ("left_wrist", 1.0),
    "right_wrist": ("right_wrist", 1.0),
    "left_hip": ("left_hip", 0.3),
    "right_hip": ("right_hip", 0.3),
    "left_knee": ("left_knee", 1.0),
    "right_knee": ("right_knee", 1.0),
    "left_ankle": ("left_ankle", 1.0),
    "right_ankle": ("right_ankle", 1.0),
    "left_big_toe": ("left_foot_index", 0.5),
    "right_big_toe": ("right_foot_index", 0.5),
    "left_heel": ("left_heel", 0.5),
    "right_heel": ("right_heel", 0.5),
}

TORSO_LABELS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
LEG_LABELS = (
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_big_toe", "right_big_toe",
    "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)  # fmt: skip

# MediaPipe Hands landmark order (21 per hand).
HAND_LABELS: tuple[str, ...] = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)  # fmt: skip

# hand label -> (mixamo bone without the side prefix, "head" | "tail")
ANNY_HAND_POINTS: dict[str, tuple[str, str]] = {
    "wrist": ("Hand", "head"),
    **{
        f"{finger}_{joint}": (f"Hand{finger.capitalize()}{i}", "head")
        for finger, joints in (
            ("thumb", ("cmc", "mcp", "ip")),
            ("index", ("mcp", "pip", "dip")),
            ("middle", ("mcp", "pip", "dip")),
            ("ring", ("mcp", "pip", "dip")),
            ("pinky", ("mcp", "pip", "dip")),
        )
        for i, joint in enumerate(joints, start=1)
    },
    **{f"{finger}_tip": (f"Hand{finger.capitalize()}3", "tail") for finger in ("thumb", "index", "middle", "ring", "pinky")},
}

# hand label -> SMPL-X joint name without the side prefix (fingertips are vertex landmarks)
SMPLX_HAND_JOINTS: dict[str, str] = {
    "wrist": "wrist",
    **{
        f"{finger}_{joint}": f"{finger}{i}"
        for finger, joints in (
            ("thumb", ("cmc", "mcp", "ip")),
            ("index", ("mcp", "pip", "dip")),
            ("middle", ("mcp", "pip", "dip")),
            ("ring", ("mcp", "pip", "dip")),
            ("pinky", ("mcp", "pip", "dip")),
        )
        for i, joint in enumerate(joints, start=1)
    },
    **{f"{finger}_tip": finger for finger in ("thumb", "index", "middle", "ring", "pinky")},
}

# Rigid facial points: label -> (MediaPipe Face Mesh index, iBUG-68 index (SMPL-X landmarks are
# iBUG-68 points 18-68, i.e. SMPL-X landmark = iBUG - 17, 0-based)). Subject's left/right.
FACE_POINTS: dict[str, tuple[int, int]] = {
    "nose_tip": (1, 30),
    "chin": (152, 8),
    "right_eye_outer": (33, 36),
    "right_eye_inner": (133, 39),
    "left_eye_inner": (362, 42),
    "left_eye_outer": (263, 45),
    "mouth_right": (61, 48),
    "mouth_left": (291, 54),
}
FACE_LABELS: tuple[str, ...] = tuple(FACE_POINTS)

# SMPL-X names of the body labels (nose, eyes, ears, toes and heels are SMPL-X vertex landmarks).
SMPLX_BODY_JOINTS: dict[str, str] = {
    "nose": "nose", "left_eye": "left_eye", "right_eye": "right_eye",
    "left_ear": "left_ear", "right_ear": "right_ear",
    "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow",
    "left_wrist": "left_wrist", "right_wrist": "right_wrist",
    "left_hip": "left_hip", "right_hip": "right_hip",
    "left_knee": "left_knee", "right_knee": "right_knee",
    "left_ankle": "left_ankle", "right_ankle": "right_ankle",
    "left_big_toe": "left_big_toe", "right_big_toe": "right_big_toe",
    "left_small_toe": "left_small_toe", "right_small_toe": "right_small_toe",
    "left_heel": "left_heel", "right_heel": "right_heel",
}  # fmt: skip

# Limb directions compared with MediaPipe's 3D world landmarks (metric, hip-centred, axes of
# the camera): they tell which way a limb points in depth, which 2D keypoints cannot.
LIMBS: tuple[tuple[str, str], ...] = (
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"),
    ("left_hip", "left_shoulder"), ("right_hip", "right_shoulder"),
    ("left_heel", "left_big_toe"), ("right_heel", "right_big_toe"),
)  # fmt: skip
