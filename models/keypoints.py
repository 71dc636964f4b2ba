"""2D keypoints and person mask from MediaPipe Holistic (models shipped in the 0.10.14 wheel).

Holistic gives 33 body landmarks with visibility, 478 face landmarks (with iris refinement),
21 landmarks per visible hand and a person segmentation mask. Coordinates are stored in
pixels of the normalised photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from models.errors import ErrorCode, PipelineError

STEP = "keypoints"
DETECTOR_ID = "mediapipe-holistic-0.10.14"

# MediaPipe Pose landmark indices used by framing and fitting.
POSE_INDEX = {
    "nose": 0, "left_eye": 2, "right_eye": 5, "left_ear": 7, "right_ear": 8,
    "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14,
    "left_wrist": 15, "right_wrist": 16, "left_hip": 23, "right_hip": 24,
    "left_knee": 25, "right_knee": 26, "left_ankle": 27, "right_ankle": 28,
    "left_heel": 29, "right_heel": 30, "left_foot_index": 31, "right_foot_index": 32,
}  # fmt: skip


@dataclass(frozen=True)
class DetectorConfig:
    model_complexity: int = 1  # 2 would download the heavy model at run time: not allowed
    min_detection_confidence: float = 0.5
    visibility_threshold: float = 0.5
    min_person_height_frac: float = 0.15


@dataclass
class Keypoints:
    image_size: tuple[int, int]  # (w, h)
    pose: np.ndarray  # (33, 4): x_px, y_px, z (same scale as x), visibility in [0, 1]
    pose_world: np.ndarray | None  # (33, 3) metres, hip-centred (MediaPipe's estimate)
    face: np.ndarray | None  # (478, 3): x_px, y_px, z
    left_hand: np.ndarray | None  # (21, 3)
    right_hand: np.ndarray | None  # (21, 3)
    mask: np.ndarray  # (h, w) uint8 person probability * 255
    framing: str  # "head" | "half_body" | "full_body"
    person_bbox: list[float]  # x0, y0, x1, y1 in px
    people_count: int = 1
    detector: str = DETECTOR_ID
    extra: dict = field(default_factory=dict)

    def visible(self, name: str, threshold: float = 0.5) -> bool:
        x, y, _, vis = self.pose[POSE_INDEX[name]]
        w, h = self.image_size
        return bool(vis >= threshold and 0 <= x < w and 0 <= y < h)

    def to_dict(self) -> dict:
        """JSON-ready dict; the mask is stored separately as a PNG."""
        return {
            "detector": self.detector,
            "image_size": list(self.image_size),
            "pose": self.pose.round(3).tolist(),
            "pose_world": None if self.pose_world is None else self.pose_world.round(4).tolist(),
            "face": None if self.face is None else self.face.round(2).tolist(),
            "left_hand": None if self.left_hand is None else self.left_hand.round(2).tolist(),
            "right_hand": None if self.right_hand is None else self.right_hand.round(2).tolist(),
            "framing": self.framing,
            "person_bbox": [round(v, 1) for v in self.person_bbox],
            "people_count": self.people_count,
            "pose_landmark_names": {str(v): k for k, v in POSE_INDEX.items()},
            "extra": self.extra,
        }

    @staticmethod
    def from_dict(data: dict, mask: np.ndarray) -> Keypoints:
        def arr(key: str) -> np.ndarray | None:
            value = data.get(key)
            return None if value is None else np.asarray(value, dtype=np.float64)

        return Keypoints(
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
            pose=np.asarray(data["pose"], dtype=np.float64),
            pose_world=arr("pose_world"),
            face=arr("face"),
            left_hand=arr("left_hand"),
            right_hand=arr("right_hand"),
            mask=mask,
            framing=data["framing"],
            person_bbox=list(data["person_bbox"]),
            people_count=int(data.get("people_count", 1)),
            detector=data.get("detector", DETECTOR_ID),
            extra=data.get("extra", {}),
        )


def detect_keypoints(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> Keypoints:
    """Run Holistic on an RGB uint8 image; raise NO_PERSON / PERSON_TOO_SMALL when unusable."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import mediapipe as mp

    h, w = image.shape[:2]
    with mp.solutions.holistic.Holistic(
        static_image_mode=True,
        model_complexity=config.model_complexity,
        enable_segmentation=True,
        refine_face_landmarks=True,
        min_detection_confidence=config.min_detection_confidence,
    ) as holistic:
        result = holistic.process(np.ascontiguousarray(image))
    if result.pose_landmarks is None:
        raise PipelineError(ErrorCode.NO_PERSON, "no person was found in the photo", STEP)

    pose = np.array(
        [[lm.x * w, lm.y * h, lm.z * w, lm.visibility] for lm in result.pose_landmarks.landmark]
    )
    pose_world = None
    if getattr(result, "pose_world_landmarks", None) is not None:
        pose_world = np.array([[lm.x, lm.y, lm.z] for lm in result.pose_world_landmarks.landmark])
    mask = _mask_to_uint8(result.segmentation_mask, (h, w))
    bbox = _person_bbox(pose, mask, config.visibility_threshold, (w, h))
    if (bbox[3] - bbox[1]) < config.min_person_height_frac * h:
        raise PipelineError(
            ErrorCode.PERSON_TOO_SMALL,
            f"the person is {bbox[3] - bbox[1]:.0f} px tall in a {h} px image; "
            f"at least {config.min_person_height_frac:.0%} of the height is needed",
            STEP,
        )
    keypoints = Keypoints(
        image_size=(w, h),
        pose=pose,
        pose_world=pose_world,
        face=_landmarks_px(result.face_landmarks, w, h),
        left_hand=_landmarks_px(result.left_hand_landmarks, w, h),
        right_hand=_landmarks_px(result.right_hand_landmarks, w, h),
        mask=mask,
        framing="full_body",
        person_bbox=bbox,
    )
    keypoints.framing = classify_framing(keypoints, config.visibility_threshold)
    return keypoints


def classify_framing(keypoints: Keypoints, threshold: float = 0.5) -> str:
    """`full_body` when ankles are in view, `half_body` when hips are, else `head`."""
    if keypoints.visible("left_ankle", threshold) and keypoints.visible("right_ankle", threshold):
        return "full_body"
    if keypoints.visible("left_hip", threshold) or keypoints.visible("right_hip", threshold):
        return "half_body"
    return "head"


def _landmarks_px(landmarks, w: int, h: int) -> np.ndarray | None:
    if landmarks is None:
        return None
    return np.array([[lm.x * w, lm.y * h, lm.z * w] for lm in landmarks.landmark])


def _mask_to_uint8(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=np.uint8)
    return np.clip(np.asarray(mask) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _person_bbox(
    pose: np.ndarray, mask: np.ndarray, threshold: float, size: tuple[int, int]
) -> list[float]:
    """Bounding box of the person: the mask where it is confident, else visible landmarks."""
    ys, xs = np.nonzero(mask >= 128)
    if len(xs) > 50:
        return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    pts = pose[pose[:, 3] >= threshold, :2]
    if len(pts) == 0:
        pts = pose[:, :2]
    w, h = size
    x0, y0 = np.clip(pts.min(axis=0), 0, [w, h])
    x1, y1 = np.clip(pts.max(axis=0), 0, [w, h])
    return [float(x0), float(y0), float(x1), float(y1)]
