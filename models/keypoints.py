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
DETECTOR_ID = "mediapipe-holistic-0.10.14-people-v2"  # v2: person selection, mask cleanup

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


@dataclass(frozen=True)
class PersonCandidate:
    """One person found by MediaPipe's BlazePose detector (or, failing that, its face detector)."""

    hip_centre: tuple[float, float]  # px; for a face-only candidate, an estimate below the face
    radius: float  # px: half the person's full-body extent (BlazePose's alignment circle)
    face_centre: tuple[float, float]  # px
    face_size: float  # px
    score: float
    source: str  # "pose" | "face"

    def prominence(self, size: tuple[int, int]) -> float:
        """Body size, discounted by up to 25 % towards the image corners: the biggest person
        wins, and of two equally big people the more central one."""
        w, h = size
        off = np.hypot(self.hip_centre[0] - w / 2, self.hip_centre[1] - h / 2) / max(np.hypot(w, h) / 2, 1.0)
        return self.radius * (1.0 - 0.25 * min(float(off), 1.0))


@dataclass
class PeopleSearch:
    candidates: list[PersonCandidate]  # merged BlazePose detections, most prominent first
    faces: list[tuple[float, float, float, float]]  # merged face detections: x, y, size, score

    @property
    def count(self) -> int:
        """Distinct people: every face, plus every body detection without a face among them
        (someone seen from behind)."""
        extra = [c for c in self.candidates if c.source == "pose" and not _has_face(c, self.faces)]
        return len(self.faces) + len(extra)


def detect_keypoints(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> Keypoints:
    """Landmarks of the most prominent person; raise NO_PERSON / PERSON_TOO_SMALL when unusable.

    People are found with MediaPipe's BlazePose person detector (the detector Holistic itself
    runs, here on the whole image and on overlapping square tiles, so that small people are
    found too) and counted with its full-range face detector (same tiles; group photos also at
    half scale). Holistic tracks a single person: when several are present and the one it
    chose on the whole image is not the most prominent, it runs again on a crop around the
    chosen person and the landmarks and mask are mapped back to the photo. The person mask is
    reduced to the regions connected to that person's landmarks.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    image = np.ascontiguousarray(image[..., :3])
    h, w = image.shape[:2]
    people = find_people(image, config)
    result, roi, selection = _holistic_on_chosen_person(image, people, config)
    if result.pose_landmarks is None:
        raise PipelineError(ErrorCode.NO_PERSON, "no person was found in the photo", STEP)
    rw, rh = (roi[2] - roi[0], roi[3] - roi[1]) if roi is not None else (w, h)
    ox, oy = (roi[0], roi[1]) if roi is not None else (0, 0)

    def to_px(landmarks, with_visibility: bool = False) -> np.ndarray | None:
        """Landmarks (normalised to the image Holistic saw) in pixels of the photo."""
        if landmarks is None:
            return None
        rows = []
        for lm in landmarks.landmark:
            row = [lm.x * rw + ox, lm.y * rh + oy, lm.z * rw]
            if with_visibility:
                row.append(lm.visibility)
            rows.append(row)
        return np.array(rows)

    pose = to_px(result.pose_landmarks, with_visibility=True)
    assert pose is not None
    pose_world = None
    if getattr(result, "pose_world_landmarks", None) is not None:
        pose_world = np.array([[lm.x, lm.y, lm.z] for lm in result.pose_world_landmarks.landmark])
    mask = np.zeros((h, w), dtype=np.uint8)
    local = _mask_to_uint8(result.segmentation_mask, (rh, rw))
    if roi is not None:
        mask[roi[1] : roi[3], roi[0] : roi[2]] = local
    else:
        mask = local
    count = max(people.count, 1)
    mask = person_component(mask, pose, config.visibility_threshold)
    if count > 1:
        mask = person_region(mask, pose, config.visibility_threshold)
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
        face=to_px(result.face_landmarks),
        left_hand=to_px(result.left_hand_landmarks),
        right_hand=to_px(result.right_hand_landmarks),
        mask=mask,
        framing="full_body",
        person_bbox=bbox,
        people_count=count,
        extra={
            "selection": selection,
            "roi": list(roi) if roi is not None else None,
            "candidates": len(people.candidates),
            "faces": len(people.faces),
        },
    )
    keypoints.framing = classify_framing(keypoints, config.visibility_threshold)
    return keypoints


def _holistic(image: np.ndarray, config: DetectorConfig):
    import mediapipe as mp

    with mp.solutions.holistic.Holistic(
        static_image_mode=True,
        model_complexity=config.model_complexity,
        enable_segmentation=True,
        refine_face_landmarks=True,
        min_detection_confidence=config.min_detection_confidence,
    ) as holistic:
        return holistic.process(np.ascontiguousarray(image))


def _holistic_on_chosen_person(image: np.ndarray, people: PeopleSearch, config: DetectorConfig):
    """Holistic's result for the most prominent person, the crop it ran on (None: the whole
    photo) and how the person was selected."""
    h, w = image.shape[:2]
    full = _holistic(image, config)
    chosen = people.candidates[0] if people.candidates else None
    if chosen is None or _matches(full, chosen, (w, h)):
        return full, None, "full_image"
    if len(people.candidates) == 1 and full.pose_landmarks is not None:
        return full, None, "full_image"  # one person: Holistic's landmarks are theirs
    for roi in _person_rois(chosen, (w, h)):
        x0, y0, x1, y1 = roi
        cropped = _holistic(np.ascontiguousarray(image[y0:y1, x0:x1]), config)
        if _matches(cropped, chosen, (x1 - x0, y1 - y0), offset=(x0, y0)):
            return cropped, roi, "crop"
    return full, None, "full_image_fallback"  # Holistic keeps to another person: take its choice


_POSE_DETECTION_GRAPH = """
input_stream: "image"
output_stream: "detections"
node { calculator: "PoseDetectionCpu" input_stream: "IMAGE:image" output_stream: "DETECTIONS:detections" }
"""


def _square_tiles(w: int, h: int, side: int) -> list[tuple[int, int, int]]:
    """Overlapping (50 %) square tiles (x, y, side) covering the image."""
    side = max(min(side, w, h), 1)
    step = max(side // 2, 1)

    def starts(length: int) -> list[int]:
        values = list(range(0, max(length - side, 0) + 1, step))
        if values[-1] + side < length:
            values.append(length - side)
        return values

    return [(x, y, side) for y in starts(h) for x in starts(w)]


def find_people(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> PeopleSearch:
    """Every person BlazePose's detector finds on the image and its tiles, most prominent first,
    and every face the full-range face detector finds (merged across tiles)."""
    import mediapipe as mp
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.python.solution_base import SolutionBase

    h, w = image.shape[:2]
    tiles = [(0, 0, 0)] + (_square_tiles(w, h, min(w, h)) if max(w, h) > 1.2 * min(w, h) else [])
    graph = text_format.Parse(_POSE_DETECTION_GRAPH, calculator_pb2.CalculatorGraphConfig())
    raw: list[PersonCandidate] = []
    faces: list[tuple[float, float, float, float]] = []
    with (
        SolutionBase(graph_config=graph, outputs=["detections"]) as detector,
        mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.6) as face_detector,
    ):
        def scan(tile_list: list[tuple[int, int, int]], with_bodies: bool) -> None:
            for x, y, side in tile_list:
                crop = image if side == 0 else np.ascontiguousarray(image[y : y + side, x : x + side])
                cw, ch = (w, h) if side == 0 else (side, side)
                if with_bodies:
                    for det in detector.process({"image": crop}).detections or []:
                        raw.append(_pose_candidate(det, x, y, cw, ch))
                for det in face_detector.process(crop).detections or []:
                    box = det.location_data.relative_bounding_box
                    size = max(box.width * cw, box.height * ch)
                    faces.append((x + (box.xmin + box.width / 2) * cw, y + (box.ymin + box.height / 2) * ch,
                                  size, float(det.score[0])))  # fmt: skip

        scan(tiles, with_bodies=True)
        merged_faces = _merge_faces(faces)
        if len(merged_faces) >= 2 or not merged_faces:  # groups and small faces: look closer
            scan(_square_tiles(w, h, min(w, h) // 2), with_bodies=False)
            merged_faces = _merge_faces(faces, min_hits=2)
    candidates = _merge_candidates([c for c in raw if c.score >= config.min_detection_confidence])
    if not candidates:
        candidates = [_face_candidate(f) for f in merged_faces]
    candidates.sort(key=lambda c: (-round(c.prominence((w, h)), 3), c.hip_centre[0], c.hip_centre[1]))
    return PeopleSearch(candidates=candidates, faces=merged_faces)


def _pose_candidate(det, x0: int, y0: int, w: int, h: int) -> PersonCandidate:
    keypoints = det.location_data.relative_keypoints
    hip = (x0 + keypoints[0].x * w, y0 + keypoints[0].y * h)
    top = (x0 + keypoints[1].x * w, y0 + keypoints[1].y * h)
    box = det.location_data.relative_bounding_box
    return PersonCandidate(
        hip_centre=hip,
        radius=float(np.hypot(top[0] - hip[0], top[1] - hip[1])),
        face_centre=(x0 + (box.xmin + box.width / 2) * w, y0 + (box.ymin + box.height / 2) * h),
        face_size=float(max(box.width * w, box.height * h)),
        score=float(det.score[0]),
        source="pose",
    )


def _face_candidate(face: tuple[float, float, float, float]) -> PersonCandidate:
    """A person inferred from a face alone: the body extends ~4.5 face sizes around the hips,
    which sit ~4 face sizes below the face (adult proportions)."""
    x, y, size, score = face
    return PersonCandidate(
        hip_centre=(x, y + 4.0 * size), radius=4.5 * size, face_centre=(x, y), face_size=size,
        score=score, source="face",
    )  # fmt: skip


def _merge_candidates(raw: list[PersonCandidate]) -> list[PersonCandidate]:
    """One candidate per person: detections whose hip centres are within 30 % of the body
    radius are the same person (the highest-scoring one is kept)."""
    merged: list[PersonCandidate] = []
    for cand in sorted(raw, key=lambda c: (-c.score, c.hip_centre)):
        same = any(
            np.hypot(cand.hip_centre[0] - m.hip_centre[0], cand.hip_centre[1] - m.hip_centre[1])
            < 0.3 * max(cand.radius, m.radius)
            for m in merged
        )
        if not same:
            merged.append(cand)
    return merged


def _merge_faces(
    faces: list[tuple[float, float, float, float]], min_hits: int = 1
) -> list[tuple[float, float, float, float]]:
    """One face per cluster of detections whose centres are within half a face size; with
    `min_hits` > 1, a face seen only once must score >= 0.8 (tiles overlap, so a real face is
    usually seen twice)."""
    clusters: list[list[tuple[float, float, float, float]]] = []
    for face in sorted(faces, key=lambda f: (-f[3], f[0], f[1])):
        for cluster in clusters:
            ref = cluster[0]
            if np.hypot(face[0] - ref[0], face[1] - ref[1]) < 0.5 * max(face[2], ref[2]):
                cluster.append(face)
                break
        else:
            clusters.append([face])
    return [c[0] for c in clusters if len(c) >= min_hits or c[0][3] >= 0.8]


def _has_face(candidate: PersonCandidate, faces: list[tuple[float, float, float, float]]) -> bool:
    cx, cy = candidate.face_centre
    return any(np.hypot(cx - x, cy - y) < 0.75 * max(candidate.face_size, size) for x, y, size, _ in faces)


def _matches(result, candidate: PersonCandidate, size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> bool:
    """Whether Holistic's person (landmarks relative to an image of `size` at `offset`) is
    `candidate`: its hip centre lies near the candidate's, or its nose on the candidate's face."""
    if result.pose_landmarks is None:
        return False
    w, h = size
    ox, oy = offset
    lm = result.pose_landmarks.landmark
    hip = (ox + (lm[23].x + lm[24].x) / 2 * w, oy + (lm[23].y + lm[24].y) / 2 * h)
    nose = (ox + lm[0].x * w, oy + lm[0].y * h)
    near_hip = np.hypot(hip[0] - candidate.hip_centre[0], hip[1] - candidate.hip_centre[1]) < 0.35 * candidate.radius
    near_face = np.hypot(nose[0] - candidate.face_centre[0], nose[1] - candidate.face_centre[1]) < candidate.face_size
    return bool(near_hip or near_face)


def _person_rois(candidate: PersonCandidate, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Crops to try around a person, clipped to the image: BlazePose's own square ROI (2.5 body
    radii), then narrower ones that leave out the neighbours of someone in a crowd."""
    w, h = size
    cx, cy = candidate.hip_centre
    rois = []
    for half_width in (1.25, 0.8, 0.55):
        x0, x1 = int(max(cx - half_width * candidate.radius, 0)), int(min(cx + half_width * candidate.radius, w))
        y0, y1 = int(max(cy - 1.25 * candidate.radius, 0)), int(min(cy + 1.25 * candidate.radius, h))
        if x1 - x0 >= 16 and y1 - y0 >= 16:
            rois.append((x0, y0, x1, y1))
    return rois


def person_region(mask: np.ndarray, pose: np.ndarray, threshold: float = 0.5, margin: float = 0.08) -> np.ndarray:
    """The mask limited to the person's own region when others are around: the convex hull of
    the visible landmarks, widened by `margin` x the landmarks' height (hair, clothes)."""
    import cv2

    pts = pose[pose[:, 3] >= threshold, :2]
    if len(pts) < 3:
        return mask
    height = float(np.ptp(pts[:, 1])) or 1.0
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    region = np.zeros(mask.shape, dtype=np.uint8)
    cv2.fillConvexPoly(region, hull, 1)
    radius = max(round(margin * height), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    region = cv2.dilate(region, kernel)
    return np.where(region > 0, mask, 0).astype(mask.dtype)


def person_component(mask: np.ndarray, pose: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The mask reduced to its connected regions that touch the person's visible landmarks
    (segmentation can spill onto a neighbour or a background object)."""
    import cv2

    binary = (mask >= 128).astype(np.uint8)
    count, labels = cv2.connectedComponents(binary, connectivity=8)
    if count <= 2:
        return mask
    h, w = mask.shape
    keep = np.zeros(count, dtype=bool)
    for x, y, _, vis in pose:
        xi, yi = round(float(x)), round(float(y))
        if vis >= threshold and 0 <= xi < w and 0 <= yi < h and labels[yi, xi] > 0:
            keep[labels[yi, xi]] = True
    if not keep.any():
        return mask
    out = mask.copy()
    out[(binary > 0) & ~keep[labels]] = 0
    return out


def classify_framing(keypoints: Keypoints, threshold: float = 0.5) -> str:
    """`full_body` when both ankles are in view; `half_body` when a hip is, or both elbows are
    (a waist-up photo whose hips sit just below the frame); else `head` (head and shoulders).
    The fit only uses leg keypoints of `full_body` photos."""
    if keypoints.visible("left_ankle", threshold) and keypoints.visible("right_ankle", threshold):
        return "full_body"
    if keypoints.visible("left_hip", threshold) or keypoints.visible("right_hip", threshold):
        return "half_body"
    if keypoints.visible("left_elbow", threshold) and keypoints.visible("right_elbow", threshold):
        return "half_body"
    return "head"


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
