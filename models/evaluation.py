"""Evaluation harness of the body fit (`avatarpipe eval`): real photos and synthetic truth.

- Real photos (the development set, bundled samples): per photo the keypoint and fit
  metrics (`keypoint_reprojection_rel`, `silhouette_iou`), framing and people count (against
  `MANIFEST.csv` when the folder has one) and the time of each step; a contact sheet PNG with,
  per photo, the photo | the fitted body over it | the avatar (the rigged GLB at rest, front
  and side, rendered from the GLB itself with `models.render`).
- Synthetic ground truth (`models.synthetic`): Anny bodies with known shape, pose and camera,
  rendered and run through the same detector and fitter. Errors after Procrustes alignment
  (PA-MPJPE over 17 joints, PA-PVE over all vertices) in mm, the rest height error in mm, and
  the IoU of the fitted body's silhouette with the true one.

Results go to `report.json` and `report.md` in the output folder, with the targets of issue
#3 and whether they are met. Science only: no Dagster, no storage.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models.body_model import AnnyBody, BodyModel
from models.errors import PipelineError
from models.fitting import BodyFit, FitConfig, fit_body, fitted_state
from models.keypoints import DetectorConfig, Keypoints, detect_keypoints
from models.photo import normalise_photo

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
PANEL_HEIGHT = 256

# Targets of issue #3 (measured here, reported in EVAL.md).
TARGETS = {
    "photos_median_silhouette_iou_full_body": (">=", 0.85),
    "photos_median_keypoint_reprojection_rel": ("<=", 0.03),
    "synthetic_median_pa_mpjpe_mm": ("<=", 60.0),
    "photos_max_fit_seconds": ("<=", 5.0),
    # issue #12: a body that matches the person
    "synthetic_median_gender_error": ("<=", 0.15),
    "synthetic_median_age_error": ("<=", 0.15),
    "synthetic_median_hinted_height_error_mm": ("<=", 30.0),
}


@dataclass
class PhotoResult:
    photo: str
    status: str  # "fitted" | error code
    message: str = ""
    framing: str | None = None
    expected_framing: str | None = None  # from MANIFEST.csv
    people_count: int | None = None
    expected_people: int | None = None
    keypoint_reprojection_rel: float | None = None
    silhouette_iou: float | None = None  # the fitted (naked) body, as in smplx_params
    clothed_silhouette_iou: float | None = None  # with the clothing offsets, as in the mesh step
    body_height_m: float | None = None
    phenotype: dict[str, float] = field(default_factory=dict)
    phenotype_source: dict[str, str] = field(default_factory=dict)
    keypoints_seconds: float | None = None
    fit_seconds: float | None = None
    iterations: int | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def full_body(self) -> bool:
        if self.expected_framing is not None:
            return self.expected_framing.replace("-", "_") == "full_body"
        return self.framing == "full_body"


@dataclass
class SyntheticResult:
    seed: int
    status: str
    message: str = ""
    framing: str | None = None
    pa_mpjpe_mm: float | None = None
    pa_pve_mm: float | None = None
    height_error_mm: float | None = None
    true_height_m: float | None = None
    fitted_height_m: float | None = None
    iou_true_silhouette: float | None = None
    silhouette_iou: float | None = None  # against MediaPipe's mask, as on photos
    keypoint_reprojection_rel: float | None = None
    fit_seconds: float | None = None
    focal_scale: float | None = None
    true_phenotype: dict[str, float] = field(default_factory=dict)
    fitted_phenotype: dict[str, float] = field(default_factory=dict)
    phenotype_error: dict[str, float] = field(default_factory=dict)  # |fitted - true| per value
    hinted_height_error_mm: float | None = None  # refitted with the true height as a hint


@dataclass
class EvalReport:
    created: str
    machine: dict
    fit_config: dict
    photos: list[PhotoResult]
    synthetic: list[SyntheticResult]
    summary: dict
    targets: dict
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["photos"] = [asdict(p) for p in self.photos]
        data["synthetic"] = [asdict(s) for s in self.synthetic]
        return data


# ---------------------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------------------


def list_photos(folders: Iterable[str | Path]) -> list[tuple[Path, list[str]]]:
    """Image files of the folders, identical files once (with the other names as aliases)."""
    seen: dict[str, tuple[Path, list[str]]] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                seen[digest][1].append(path.name)
            else:
                seen[digest] = (path, [])
    return list(seen.values())


def read_manifest(folder: Path) -> dict[str, dict]:
    manifest = folder / "MANIFEST.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


@dataclass
class PhotoPanels:
    photo: np.ndarray
    overlay: np.ndarray | None
    avatar: np.ndarray | None


def evaluate_photo(
    path: Path, body: BodyModel, fit_config: FitConfig, detector_config: DetectorConfig, with_panels: bool = True
) -> tuple[PhotoResult, PhotoPanels]:
    """Detect, fit and measure one photo (and draw its contact sheet panels)."""
    result = PhotoResult(photo=path.name, status="fitted")
    photo = normalise_photo(path.read_bytes())
    panels = PhotoPanels(photo=photo.image, overlay=None, avatar=None)
    start = time.perf_counter()
    try:
        keypoints = detect_keypoints(photo.image, detector_config)
    except PipelineError as err:
        result.status, result.message = err.code.value, err.message
        result.keypoints_seconds = round(time.perf_counter() - start, 3)
        return result, panels
    result.keypoints_seconds = round(time.perf_counter() - start, 3)
    result.framing, result.people_count = keypoints.framing, keypoints.people_count
    start = time.perf_counter()
    try:
        fit = fit_body(keypoints, body, fit_config)
    except PipelineError as err:
        result.status, result.message = err.code.value, err.message
        return result, panels
    result.fit_seconds = round(time.perf_counter() - start, 3)
    result.keypoint_reprojection_rel = fit.metrics["keypoint_reprojection_rel"]
    result.silhouette_iou = fit.metrics["silhouette_iou"]
    result.body_height_m = fit.metrics["body_height_m"]
    result.phenotype = dict(fit.phenotype)
    result.phenotype_source = {k: v.get("source", "") for k, v in fit.phenotype_estimate.items()}
    result.iterations = fit.metrics["iterations"]
    clothing = _clothing(body, fit, keypoints, photo.image)
    if clothing is not None:
        result.clothed_silhouette_iou = clothing.metrics["silhouette_iou"]
    if with_panels:
        panels.overlay, panels.avatar = _fit_panels(photo.image, keypoints, fit, body, clothing)
    return result, panels


def _clothing(body: BodyModel, fit: BodyFit, keypoints: Keypoints, image: np.ndarray):
    """The mesh step's clothing offsets on an Anny fit (None for other body models)."""
    if not isinstance(body, AnnyBody):
        return None
    from models.body_model import anny_topology
    from models.clothing import fit_clothing

    return fit_clothing(
        body.model, fit.phenotype, fit.pose_parameters, fit.camera, keypoints.mask, anny_topology(body.model), image=image
    )


def _fit_panels(
    image: np.ndarray, keypoints: Keypoints, fit: BodyFit, body: BodyModel, clothing=None
) -> tuple[np.ndarray, np.ndarray]:
    """The fitted body over the photo, and the avatar in its rest pose: for Anny, the rigged GLB
    (clothed surface, texture baked from the photo: what the mesh and rigged_glb steps make)
    rendered from the front and the side; for other models, the plain body from the front."""
    from models.eval_render import look_at_front, render_mesh
    from models.surface import render_overlay

    state = fitted_state(body, fit)
    vertices = body.posed_vertices(state)
    overlay = render_overlay(image, vertices, body.faces, fit.camera)
    rest = body.rest_vertices(state.shape)
    colours = np.full((len(body.faces), 3), 200.0)
    if isinstance(body, AnnyBody):
        from models.texture import TextureConfig, bake_texture

        model = body.model
        uv = model.texture_coordinates.detach().cpu().numpy().astype(np.float64)
        face_uv = model.face_texture_coordinate_indices.detach().cpu().numpy().astype(np.int64)
        surface = clothing.posed_vertices if clothing is not None else vertices
        rest = clothing.rest_vertices if clothing is not None else rest
        baked = bake_texture(surface, body.faces, uv, face_uv, fit.camera, image, keypoints.mask, TextureConfig(size=512))
        glb_views = _rigged_glb_views(body, fit, baked.image, clothing)
        if glb_views is not None:
            return overlay, glb_views
        colours = _face_colours_from_texture(baked.image, uv, face_uv)
    size = (round(PANEL_HEIGHT * 0.6) * 2, PANEL_HEIGHT * 2)
    points, camera = look_at_front(rest, body.facing_camera, size)
    avatar, _ = render_mesh(points, body.faces, camera, colours, background=np.full((size[1], size[0], 3), 235, np.uint8))
    return overlay, avatar


def _rigged_glb_views(body: AnnyBody, fit: BodyFit, texture: np.ndarray, clothing) -> np.ndarray | None:
    """The rigged GLB the pipeline would deliver, at rest, front | side, rendered from the GLB
    itself (`models.render`): what a client shows, the issue-12 contact sheet."""
    from models.photo import encode_png
    from models.render import read_glb_mesh, render_view
    from models.rigging import build_rigged_avatar

    offsets = clothing.offsets if clothing is not None else None
    avatar = build_rigged_avatar(body.model, fit.phenotype, fit.pose_parameters, encode_png(texture), offsets)
    mesh = read_glb_mesh(avatar.glb)
    views = [render_view(mesh, view, PANEL_HEIGHT * 2) for view in ("front", "side")]
    return np.hstack(views).astype(np.uint8)


def _face_colours_from_texture(texture: np.ndarray, uv: np.ndarray, face_uv: np.ndarray) -> np.ndarray:
    """Mean texture colour at each face's UV corners and centroid (texture row 0 = v 1)."""
    size = texture.shape[0]
    corners = uv[face_uv]  # (F, 3, 2)
    samples = np.concatenate([corners, corners.mean(axis=1, keepdims=True)], axis=1)
    cols = np.clip((samples[..., 0] * size).astype(int), 0, size - 1)
    rows = np.clip(((1.0 - samples[..., 1]) * size).astype(int), 0, size - 1)
    return texture[rows, cols].astype(np.float64).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# Synthetic ground truth
# ---------------------------------------------------------------------------------------------


def evaluate_synthetic(
    seed: int, body: AnnyBody, fit_config: FitConfig, detector_config: DetectorConfig, with_height_hint: bool = True
) -> tuple[SyntheticResult, np.ndarray | None]:
    """Generate sample `seed`, run detector + fitter on its image, compare with the truth; then
    (`with_height_hint`) refit with the true height as the uploader's hint and measure the
    height error again."""
    from models.fitting import BodyHints
    from models.surface import project_silhouette
    from models.synthetic import EVAL_JOINTS, generate_sample, pa_error_mm

    sample = generate_sample(body, seed)
    result = SyntheticResult(seed=seed, status="fitted", true_height_m=round(sample.height_m, 4),
                             focal_scale=round(sample.focal_scale, 3),
                             true_phenotype={k: round(v, 4) for k, v in sample.phenotype.items()})  # fmt: skip
    try:
        keypoints = detect_keypoints(sample.image, detector_config)
        start = time.perf_counter()
        fit = fit_body(keypoints, body, fit_config)
        result.fit_seconds = round(time.perf_counter() - start, 3)
    except PipelineError as err:
        result.status, result.message = err.code.value, err.message
        return result, None
    state = fitted_state(body, fit)
    vertices = body.posed_vertices(state)
    heads = body.bone_heads(state)
    joints = heads[[list(body.bone_names).index(f"mixamorig:{n}") for n in EVAL_JOINTS]]
    fitted_height = body.rest_height(state.shape)
    silhouette = project_silhouette(vertices, body.faces, fit.camera)
    union = np.logical_or(silhouette, sample.silhouette).sum()
    result.framing = keypoints.framing
    result.pa_mpjpe_mm = round(pa_error_mm(joints, sample.joints), 1)
    result.pa_pve_mm = round(pa_error_mm(vertices, sample.vertices), 1)
    result.fitted_height_m = round(fitted_height, 4)
    result.height_error_mm = round(abs(fitted_height - sample.height_m) * 1000.0, 1)
    result.iou_true_silhouette = round(float(np.logical_and(silhouette, sample.silhouette).sum() / max(union, 1)), 4)
    result.silhouette_iou = fit.metrics["silhouette_iou"]
    result.keypoint_reprojection_rel = fit.metrics["keypoint_reprojection_rel"]
    result.fitted_phenotype = {k: round(float(v), 4) for k, v in fit.phenotype.items()}
    result.phenotype_error = {
        k: round(abs(float(fit.phenotype[k]) - v), 4) for k, v in sample.phenotype.items() if k in fit.phenotype
    }
    if with_height_hint:
        hinted = fit_body(keypoints, body, fit_config, hints=BodyHints(height_cm=sample.height_m * 100.0))
        hinted_height = body.rest_height(fitted_state(body, hinted).shape)
        result.hinted_height_error_mm = round(abs(hinted_height - sample.height_m) * 1000.0, 1)
    from models.surface import render_overlay

    overlay = render_overlay(sample.image, vertices, body.faces, fit.camera)
    return result, np.hstack([sample.image, overlay])


def phenotype_summary(synthetic: list[SyntheticResult]) -> dict:
    """Median absolute error per phenotype value, and the child/adult split (Anny age < 0.5 is
    a child: the anchors are child 0.33, young adult 0.67)."""
    out: dict = {}
    for label in ("gender", "age", "muscle", "weight", "height", "proportions"):
        out[f"synthetic_median_{label}_error"] = _median(s.phenotype_error.get(label) for s in synthetic)
    children = [s for s in synthetic if s.true_phenotype.get("age", 1.0) < 0.5 and s.fitted_phenotype]
    adults = [s for s in synthetic if s.true_phenotype.get("age", 0.0) >= 0.5 and s.fitted_phenotype]
    out["synthetic_children_recognised"] = f"{sum(s.fitted_phenotype['age'] < 0.5 for s in children)}/{len(children)}"
    out["synthetic_adults_recognised"] = f"{sum(s.fitted_phenotype['age'] >= 0.5 for s in adults)}/{len(adults)}"
    sided = [s for s in synthetic if s.fitted_phenotype and abs(s.true_phenotype.get("gender", 0.5) - 0.5) > 0.2]
    out["synthetic_build_side_correct"] = (
        f"{sum((s.fitted_phenotype['gender'] - 0.5) * (s.true_phenotype['gender'] - 0.5) > 0 for s in sided)}/{len(sided)}"
    )
    out["synthetic_median_hinted_height_error_mm"] = _median(s.hinted_height_error_mm for s in synthetic)
    return out


@dataclass
class CueResult:
    """The phenotype estimate's evidence and centre on one synthetic subject (no fit)."""

    seed: int
    status: str  # "detected" | error code
    true_phenotype: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, float] = field(default_factory=dict)
    centre: dict[str, float] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    raw_centre: dict[str, float] = field(default_factory=dict)  # the cues' estimate before the calibration


def evaluate_phenotype_cues(
    seeds: Iterable[int], body: AnnyBody, detector_config: DetectorConfig | None = None
) -> list[CueResult]:
    """Detector, evidence and estimate (`models.phenotype`) on synthetic subjects, without the
    fit: about a second a subject, so that a change to a cue can be checked on many fresh seeds
    (a cue set on some seeds is judged on others) before the slow fitted evaluation."""
    from models.phenotype import estimate_phenotype, measure_evidence
    from models.synthetic import generate_sample

    results = []
    for seed in seeds:
        sample = generate_sample(body, seed)
        result = CueResult(seed=seed, status="detected", true_phenotype={k: round(v, 4) for k, v in sample.phenotype.items()})
        try:
            kp = detect_keypoints(sample.image, detector_config or DetectorConfig())
        except PipelineError as err:
            result.status = err.code.value
            results.append(result)
            continue
        result.evidence = measure_evidence(kp.pose, kp.pose_world, kp.face, kp.mask, kp.extra.get("face_attributes"))
        estimate = estimate_phenotype(result.evidence)
        result.centre, result.source = dict(estimate.centre), dict(estimate.source)
        result.raw_centre = dict(estimate_phenotype(result.evidence, calibrated=False).centre)
        results.append(result)
    return results


def cue_summary(results: list[CueResult]) -> dict:
    """Per phenotype value the median error of the estimate's centre and of the prior's centre
    alone (the bar a cue must clear), and per cue its correlation with the true build and age
    and how many subjects it was read on."""
    from models.phenotype import PHENOTYPE_LABELS, PRIOR_CENTRE

    seen = [r for r in results if r.centre]
    out: dict = {"subjects": len(results), "detected": len(seen)}
    for label in PHENOTYPE_LABELS:
        out[f"centre_median_{label}_error"] = _median(abs(r.centre[label] - r.true_phenotype[label]) for r in seen)
        out[f"prior_median_{label}_error"] = _median(abs(PRIOR_CENTRE[label] - r.true_phenotype[label]) for r in seen)
    # the build on clearly built subjects only (the synthetic builds are uniform in [0, 1]; near
    # 0.5 the prior is right whatever the photo): the population the calibration is judged on
    clear = clearly_built(seen)
    recognised, children, misread, adults = children_recognised(seen)
    out["children_recognised"] = f"{recognised}/{children}"
    out["adults_read_as_children"] = f"{misread}/{adults}"
    out["clearly_built"] = len(clear)
    out["clear_centre_median_gender_error"] = _median(abs(r.centre["gender"] - r.true_phenotype["gender"]) for r in clear)
    out["clear_prior_median_gender_error"] = _median(abs(PRIOR_CENTRE["gender"] - r.true_phenotype["gender"]) for r in clear)
    cues: dict[str, dict] = {}
    for cue in sorted({name for r in seen for name in r.evidence}):
        rows = [(r.evidence[cue], r.true_phenotype) for r in seen if cue in r.evidence]
        values = np.array([v for v, _ in rows], dtype=np.float64)
        entry: dict = {"n": len(rows)}
        for label in ("gender", "age"):
            truth = np.array([t[label] for _, t in rows], dtype=np.float64)
            varied = len(rows) >= 3 and values.std() > 0 and truth.std() > 0
            entry[f"r_{label}"] = round(float(np.corrcoef(values, truth)[0, 1]), 3) if varied else None
        cues[cue] = entry
    out["cues"] = cues
    return out


def _shrunk_errors(results: list[CueResult], label: str, shrink: float) -> np.ndarray:
    from models.phenotype import PRIOR_CENTRE

    prior = PRIOR_CENTRE[label]
    return np.array(
        [abs(prior + shrink * (r.raw_centre[label] - prior) - r.true_phenotype[label]) for r in results if r.raw_centre],
        dtype=np.float64,
    )


def shrink_errors(results: list[CueResult], label: str, shrink: float) -> tuple[float, float]:
    """Median and mean absolute error of `label` when the cues' estimate keeps `shrink` of its
    departure from the prior's centre (0: the prior alone, 1: the cues' own estimate)."""
    errors = _shrunk_errors(results, label, shrink)
    return float(np.median(errors)), float(errors.mean())


def choose_shrink(results: list[CueResult], label: str, steps: int = 10, min_se: float = 2.0) -> float:
    """The rule behind `models.phenotype.CALIBRATION`: the shrink in 1/`steps` steps with the
    lowest mean absolute error of `label` on `results`, kept only when it beats the cues' own
    estimate (shrink 1) by at least `min_se` standard errors of the paired difference (a gain
    within the sampling noise is no evidence for shrinking); otherwise 1. The mean, not the
    median: a weak cue's median curve is flat within its noise. Choose on some seeds, judge
    on others."""
    curves = {k: _shrunk_errors(results, label, k / steps) for k in range(steps + 1)}
    best = min(curves, key=lambda k: (round(float(curves[k].mean()), 9), k))
    gain = curves[steps] - curves[best]
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    return best / steps if best != steps and float(gain.mean()) >= min_se * se else 1.0


def held_out_skill(results: list[CueResult], label: str, shrink: float) -> float:
    """1 - the estimate's mean absolute error / the prior's (0 when no better than the prior)."""
    estimate, prior = shrink_errors(results, label, shrink)[1], shrink_errors(results, label, 0.0)[1]
    return max(0.0, 1.0 - estimate / prior) if prior > 0 else 0.0


def age_cue_table(results: list[CueResult], child_below: float = 0.5) -> dict[str, tuple[float, float, float]]:
    """Per age cue of `models.phenotype.AGE_CUES`: the mean among children (true age below
    `child_below`), the mean among adults and the pooled standard deviation, over the subjects
    the cue was read on: the table the child log-odds is computed from (set it on some seeds,
    judge it on others)."""
    from models.phenotype import AGE_CUES

    table: dict[str, tuple[float, float, float]] = {}
    for cue in AGE_CUES:
        rows = [(r.evidence[cue], r.true_phenotype["age"] < child_below) for r in results if cue in r.evidence]
        children = np.array([v for v, child in rows if child], dtype=np.float64)
        adults = np.array([v for v, child in rows if not child], dtype=np.float64)
        if len(children) < 2 or len(adults) < 2:
            continue
        spread = ((children - children.mean()) ** 2).sum() + ((adults - adults.mean()) ** 2).sum()
        sd = float(np.sqrt(spread / (len(children) + len(adults) - 2)))
        table[cue] = (round(float(children.mean()), 4), round(float(adults.mean()), 4), round(sd, 4))
    return table


def children_recognised(results: list[CueResult], child_below: float = 0.5) -> tuple[int, int, int, int]:
    """(children whose estimated age is below `child_below`, children, adults read as children,
    adults) among the detected subjects."""
    seen = [r for r in results if r.centre]
    children = [r for r in seen if r.true_phenotype["age"] < child_below]
    adults = [r for r in seen if r.true_phenotype["age"] >= child_below]
    return (sum(r.centre["age"] < child_below for r in children), len(children),
            sum(r.centre["age"] < child_below for r in adults), len(adults))  # fmt: skip


def clearly_built(results: list[CueResult], margin: float = 0.2) -> list[CueResult]:
    """The subjects whose true build is at least `margin` from neutral (0.5): the synthetic
    builds are uniform in [0, 1], people are mostly clearly male or female."""
    return [r for r in results if abs(r.true_phenotype["gender"] - 0.5) > margin]


# ---------------------------------------------------------------------------------------------
# Summary, report, contact sheet
# ---------------------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    clean = [float(v) for v in values if v is not None]
    return round(statistics.median(clean), 4) if clean else None


def summarise(photos: list[PhotoResult], synthetic: list[SyntheticResult]) -> tuple[dict, dict]:
    fitted = [p for p in photos if p.status == "fitted"]
    full = [p for p in fitted if p.full_body]
    syn = [s for s in synthetic if s.status == "fitted"]
    summary = {
        "photos": len(photos),
        "photos_fitted": len(fitted),
        "photos_failed": {p.photo: p.status for p in photos if p.status != "fitted"},
        "photos_full_body_fitted": len(full),
        "photos_median_keypoint_reprojection_rel": _median(p.keypoint_reprojection_rel for p in fitted),
        "photos_median_silhouette_iou": _median(p.silhouette_iou for p in fitted),
        "photos_median_silhouette_iou_full_body": _median(p.silhouette_iou for p in full),
        "photos_median_clothed_silhouette_iou_full_body": _median(p.clothed_silhouette_iou for p in full),
        "photos_median_fit_seconds": _median(p.fit_seconds for p in fitted),
        "photos_max_fit_seconds": max((p.fit_seconds for p in fitted if p.fit_seconds is not None), default=None),
        "photos_median_keypoints_seconds": _median(p.keypoints_seconds for p in photos),
        "synthetic": len(synthetic),
        "synthetic_fitted": len(syn),
        "synthetic_median_pa_mpjpe_mm": _median(s.pa_mpjpe_mm for s in syn),
        "synthetic_mean_pa_mpjpe_mm": round(statistics.fmean(s.pa_mpjpe_mm for s in syn), 1) if syn else None,
        "synthetic_median_pa_pve_mm": _median(s.pa_pve_mm for s in syn),
        "synthetic_median_height_error_mm": _median(s.height_error_mm for s in syn),
        "synthetic_median_iou_true_silhouette": _median(s.iou_true_silhouette for s in syn),
        "synthetic_median_fit_seconds": _median(s.fit_seconds for s in syn),
        **phenotype_summary(syn),
    }
    targets = {}
    for key, (op, threshold) in TARGETS.items():
        value = summary.get(key)
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        targets[key] = {"target": f"{op} {threshold}", "value": value, "met": met}
    return summary, targets


# ---------------------------------------------------------------------------------------------
# End-to-end builds and novel views (what a model version is judged on besides the fit)
# ---------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """One photo built photo -> rigged GLB by the pipeline's own steps (the caller runs them):
    the delivered GLB's size and each step's time."""

    photo: str
    status: str  # "built" | error code
    message: str = ""
    glb_bytes: int | None = None
    glb_uncompressed_bytes: int | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)  # step -> seconds


def summarise_builds(builds: list[BuildResult]) -> dict[str, float | int | None]:
    """Median GLB size and median time per step (and in all) over the built photos."""
    built = [b for b in builds if b.status == "built"]
    steps = list(dict.fromkeys(step for b in built for step in b.step_seconds))
    summary: dict[str, float | int | None] = {
        "builds": len(builds),
        "builds_succeeded": len(built),
        "build_median_glb_bytes": _median(b.glb_bytes for b in built),
        "build_median_glb_uncompressed_bytes": _median(b.glb_uncompressed_bytes for b in built),
        "build_median_total_seconds": _median(sum(b.step_seconds.values()) for b in built),
    }
    for step in steps:
        summary[f"build_median_{step}_seconds"] = _median(b.step_seconds.get(step) for b in built)
    return summary


APPEARANCE_TRUTH_SIZE = 1024  # the ground-truth atlas: fixed, so a smaller bake cannot look better
APPEARANCE_RENDER_HEIGHT = 384


def novel_view_result(body: AnnyBody, subject, texture_size: int):
    """One synthetic subject (`models.eval_appearance.make_subject`, truth at its own atlas
    size) baked the way the mesh step bakes (layout-aware, `TextureConfig(size=texture_size)`)
    and rendered beside the truth from four sides: an `AppearanceResult` (masked PSNR/SSIM per
    view, wrong-part share, coverage, bake time). `evaluate_subject` bakes at the truth's size;
    here the two differ, so the atlas size a version chooses is what gets judged."""
    from models.body_model import anny_topology
    from models.eval_appearance import (
        VIEWS,
        AppearanceResult,
        _body_pixels,
        masked_psnr,
        masked_ssim,
        view_mesh,
        wrong_part_share,
    )
    from models.render import render_view
    from models.texture import TextureConfig, bake_texture, body_layout

    topo = anny_topology(body.model)
    faces, uv, fuv = topo["faces"], topo["uv"], topo["face_uv_idx"]
    layout = body_layout(subject.rest_vertices, faces, uv, fuv, topo["skin_indices"], topo["skin_weights"],
                         list(body.model.bone_labels))  # fmt: skip
    start = time.perf_counter()
    baked = bake_texture(subject.fit_vertices, faces, uv, fuv, subject.camera, subject.photo, subject.mask,
                         TextureConfig(size=texture_size), layout=layout)  # fmt: skip
    result = AppearanceResult(seed=subject.seed, kind=subject.kind, hair=subject.hair, method=f"regions@{texture_size}",
                              coverage=round(baked.coverage, 4), bake_seconds=round(time.perf_counter() - start, 3))  # fmt: skip
    result.wrong_part_share = round(wrong_part_share(subject, baked, layout, faces, uv, fuv), 5)
    truth = view_mesh(subject.true_vertices, faces, uv, fuv, subject.texture)
    made = view_mesh(subject.true_vertices, faces, uv, fuv, baked.image)
    for view in VIEWS:
        a, b = (render_view(m, view, height=APPEARANCE_RENDER_HEIGHT) for m in (truth, made))
        seen = _body_pixels(truth, view, a.shape[:2])
        result.psnr[view], result.ssim[view] = round(masked_psnr(a, b, seen), 3), round(masked_ssim(a, b, seen), 4)
    return result


def novel_view_fidelity(
    body: AnnyBody, subjects: int, seed: int = 0, texture_size: int = 1024
) -> tuple[dict[str, float], list[dict]]:
    """Novel-view fidelity of the texture bake at `texture_size` on `subjects` synthetic
    subjects with a ground-truth texture (`novel_view_result`): median PSNR/SSIM per view
    (front seen; back and sides unseen), the median over the unseen views, the wrong-part share
    and the bake time."""
    from models.eval_appearance import KINDS, VIEWS, make_subject, summarise_appearance

    results = []
    for i in range(subjects):
        subject = make_subject(body, seed + i, KINDS[i % len(KINDS)], texture_size=APPEARANCE_TRUTH_SIZE)
        results.append(novel_view_result(body, subject, texture_size))
    if not results:
        return {}, []
    summary = {f"appearance_{k}": v for k, v in summarise_appearance(results)[results[0].method].items()}
    unseen = [r.psnr[v] for r in results for v in VIEWS if v != "front"]
    unseen_ssim = [r.ssim[v] for r in results for v in VIEWS if v != "front"]
    summary["appearance_psnr_unseen"] = round(float(np.median(unseen)), 2)
    summary["appearance_ssim_unseen"] = round(float(np.median(unseen_ssim)), 4)
    summary["appearance_subjects"] = len(results)
    return summary, [asdict(r) for r in results]


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(v, 2) for v in load if v is not None],
        "fit_threads": 1,
    }


def _panel(image: np.ndarray | None, height: int = PANEL_HEIGHT, width: int | None = None) -> np.ndarray:
    if image is None:
        return np.full((height, width or int(height * 0.75), 3), 40, np.uint8)
    h, w = image.shape[:2]
    out = cv2.resize(image, (max(round(w * height / h), 1), height), interpolation=cv2.INTER_AREA)
    return out if width is None else _fit_width(out, width)


def _fit_width(image: np.ndarray, width: int) -> np.ndarray:
    if image.shape[1] >= width:
        return image[:, :width]
    pad = np.full((image.shape[0], width - image.shape[1], 3), 40, np.uint8)
    return np.hstack([image, pad])


def contact_sheet(rows: list[tuple[PhotoResult, PhotoPanels]], path: Path) -> Path:
    """One row per photo: photo | fitted body over it | avatar, with the metrics as caption."""
    lines = []
    for result, panels in rows:
        photo = _panel(panels.photo)
        overlay = _panel(panels.overlay, width=photo.shape[1])
        avatar = _panel(panels.avatar)
        row = np.hstack([photo, overlay, avatar])
        caption = np.full((28, row.shape[1], 3), 255, np.uint8)
        text = f"{result.photo}  {result.framing or '-'}  people {result.people_count}  "
        if result.status == "fitted":
            text += (f"IoU {result.silhouette_iou:.3f}  reproj {result.keypoint_reprojection_rel:.4f}  "
                     f"fit {result.fit_seconds:.1f}s")  # fmt: skip
            if result.phenotype:
                text += (f"  build {result.phenotype['gender']:.2f} age {result.phenotype['age']:.2f} "
                         f"{_fmt(result.body_height_m, 2)} m")  # fmt: skip
        else:
            text += result.status
        cv2.putText(caption, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.vstack([caption, row]))
    if not lines:
        return path
    width = max(line.shape[1] for line in lines)
    sheet = np.vstack([_fit_width(line, width) for line in lines])
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path


def synthetic_sheet(images: list[np.ndarray], path: Path, per_row: int = 4) -> Path:
    panels = [_panel(img) for img in images if img is not None]
    if not panels:
        return path
    width = max(p.shape[1] for p in panels)
    panels = [_fit_width(p, width) for p in panels]
    rows = [np.hstack(panels[i : i + per_row] + [np.zeros_like(panels[0])] * (per_row - len(panels[i : i + per_row])))
            for i in range(0, len(panels), per_row)]  # fmt: skip
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return path


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_report(report: EvalReport) -> str:
    s, t = report.summary, report.targets
    lines = [
        "# Body fit evaluation",
        "",
        (
            f"Created {report.created} on {report.machine['platform']} ({report.machine['cpus']} CPUs, "
            f"load average {report.machine['load_avg_1_5_15']} before, {report.machine.get('load_avg_after')} after); "
            "the fitter runs single-threaded."
        ),
        "",
        "## Targets",
        "",
        "| metric | target | measured | met |",
        "|---|---|---|---|",
    ]
    for key, item in t.items():
        met = "-" if item["met"] is None else ("yes" if item["met"] else "**no**")
        lines.append(f"| {key} | {item['target']} | {_fmt(item['value'], 4)} | {met} |")
    lines += [
        "",
        f"## Real photos ({s['photos_fitted']} of {s['photos']} fitted)",
        "",
        "| photo | framing (expected) | people (expected) | reprojection / height | silhouette IoU | clothed IoU | body height m | keypoints s | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report.photos:
        name = p.photo + (f" (= {', '.join(p.aliases)})" if p.aliases else "")
        status = "" if p.status == "fitted" else f" **{p.status}**"
        lines.append(
            f"| {name}{status} | {p.framing or '-'} ({p.expected_framing or '-'}) | {_fmt(p.people_count)} "
            f"({_fmt(p.expected_people)}) | {_fmt(p.keypoint_reprojection_rel, 4)} | {_fmt(p.silhouette_iou)} | "
            f"{_fmt(p.clothed_silhouette_iou)} | {_fmt(p.body_height_m, 2)} | {_fmt(p.keypoints_seconds, 2)} | "
            f"{_fmt(p.fit_seconds, 2)} |"
        )
    lines += [
        "",
        (
            f"Median reprojection error {_fmt(s['photos_median_keypoint_reprojection_rel'], 4)} of the person's height; "
            f"median silhouette IoU {_fmt(s['photos_median_silhouette_iou'])} (all), "
            f"{_fmt(s['photos_median_silhouette_iou_full_body'])} (full-body photos, {s['photos_full_body_fitted']}); "
            f"with the mesh step's clothing offsets {_fmt(s['photos_median_clothed_silhouette_iou_full_body'])} "
            "(full body); "
            f"fit time median {_fmt(s['photos_median_fit_seconds'], 2)} s, max {_fmt(s['photos_max_fit_seconds'], 2)} s."
        ),
        "",
        f"## Synthetic ground truth ({s['synthetic_fitted']} of {s['synthetic']} fitted)",
        "",
        "| seed | framing | PA-MPJPE mm | PA-PVE mm | height error mm (true m) | IoU with true silhouette | IoU with MediaPipe mask | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.synthetic:
        status = "" if r.status == "fitted" else f" **{r.status}**"
        lines.append(
            f"| {r.seed}{status} | {r.framing or '-'} | {_fmt(r.pa_mpjpe_mm, 1)} | {_fmt(r.pa_pve_mm, 1)} | "
            f"{_fmt(r.height_error_mm, 1)} ({_fmt(r.true_height_m, 2)}) | {_fmt(r.iou_true_silhouette)} | "
            f"{_fmt(r.silhouette_iou)} | {_fmt(r.fit_seconds, 2)} |"
        )
    lines += [
        "",
        (
            f"Median PA-MPJPE {_fmt(s['synthetic_median_pa_mpjpe_mm'], 1)} mm "
            f"(mean {_fmt(s['synthetic_mean_pa_mpjpe_mm'], 1)}), PA-PVE {_fmt(s['synthetic_median_pa_pve_mm'], 1)} mm, "
            f"height error {_fmt(s['synthetic_median_height_error_mm'], 1)} mm, "
            f"IoU with the true silhouette {_fmt(s['synthetic_median_iou_true_silhouette'])}."
        ),
        "",
    ]
    return "\n".join(lines + likeness_lines(report))


def likeness_lines(report: EvalReport) -> list[str]:
    """The phenotype per photo (with each value's source) and the synthetic phenotype errors."""
    s = report.summary
    lines = [
        "## Body likeness (issue 12)",
        "",
        "Anny's `gender` is 0 male .. 1 female; `age` 0.33 child, 0.67 young adult, 1.0 old.",
        "",
        "| photo | gender (source) | age (source) | weight | body height m |",
        "|---|---|---|---|---|",
    ]
    for p in report.photos:
        if not p.phenotype:
            continue
        src = p.phenotype_source
        lines.append(
            f"| {p.photo} | {p.phenotype['gender']:.2f} ({src.get('gender', '-')}) | "
            f"{p.phenotype['age']:.2f} ({src.get('age', '-')}) | {p.phenotype['weight']:.2f} | {_fmt(p.body_height_m, 2)} |"
        )
    errors = ", ".join(
        f"{label} {_fmt(s.get(f'synthetic_median_{label}_error'), 3)}"
        for label in ("gender", "age", "muscle", "weight", "height", "proportions")
    )
    lines += [
        "",
        (
            f"Synthetic median absolute phenotype error: {errors}. Children recognised (age < 0.5) "
        f"{s.get('synthetic_children_recognised')}, adults {s.get('synthetic_adults_recognised')}, build on the "
        f"right side of 0.5 {s.get('synthetic_build_side_correct')} (subjects with |gender - 0.5| > 0.2); "
        f"height error {_fmt(s.get('synthetic_median_height_error_mm'), 1)} mm without a hint, "
            f"{_fmt(s.get('synthetic_median_hinted_height_error_mm'), 1)} mm with the true height as a hint."
        ),
        "",
    ]
    return lines


def run_evaluation(
    photo_folders: list[Path],
    synthetic: int,
    out_dir: Path,
    body: BodyModel | None = None,
    fit_config: FitConfig | None = None,
    detector_config: DetectorConfig | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    contact_sheets: bool = True,
) -> EvalReport:
    """Evaluate the photos of `photo_folders` and `synthetic` generated samples (seeds `seed`...)."""
    from models.body_model import load_body_model

    body = body or load_body_model()
    fit_config = fit_config or FitConfig()
    detector_config = detector_config or DetectorConfig()
    say = progress or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    manifests: dict[str, dict] = {}
    for folder in photo_folders:
        manifests.update(read_manifest(Path(folder)))
    photo_rows: list[tuple[PhotoResult, PhotoPanels]] = []
    for path, aliases in list_photos(photo_folders):
        result, panels = evaluate_photo(path, body, fit_config, detector_config, with_panels=contact_sheets)
        result.aliases = aliases
        row = manifests.get(path.name) or next((manifests[a] for a in aliases if a in manifests), None)
        if row:
            result.expected_framing = row.get("framing")
            result.expected_people = int(row["people_count"]) if row.get("people_count") else None
        say(f"{path.name}: {result.status} IoU {result.silhouette_iou} reprojection {result.keypoint_reprojection_rel} "
            f"fit {result.fit_seconds}s")  # fmt: skip
        photo_rows.append((result, panels))
    synthetic_results: list[SyntheticResult] = []
    synthetic_images: list[np.ndarray] = []
    if synthetic > 0 and not isinstance(body, AnnyBody):
        say("synthetic evaluation skipped: it renders Anny bodies and compares Anny skeletons")
    elif synthetic > 0:
        for i in range(synthetic):
            result, image = evaluate_synthetic(seed + i, body, fit_config, detector_config)
            say(f"synthetic {seed + i}: {result.status} PA-MPJPE {result.pa_mpjpe_mm} mm")
            synthetic_results.append(result)
            if image is not None:
                synthetic_images.append(image)
    machine["load_avg_after"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []
    photos = [r for r, _ in photo_rows]
    summary, targets = summarise(photos, synthetic_results)
    report = EvalReport(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine,
        fit_config=fit_config.to_params(),
        photos=photos,
        synthetic=synthetic_results,
        summary=summary,
        targets=targets,
    )
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md")}
    if contact_sheets and photo_rows:
        files["contact_sheet"] = str(contact_sheet(photo_rows, out_dir / "contact_sheet.png"))
    if contact_sheets and synthetic_images:
        files["synthetic_sheet"] = str(synthetic_sheet(synthetic_images, out_dir / "synthetic_sheet.png"))
    if synthetic > 0 and isinstance(body, AnnyBody):  # appearance (issue 13): its own files
        from models.eval_appearance import write_appearance_report

        files |= write_appearance_report(body, min(synthetic, 6), out_dir, seed=seed)
    report.files = files
    Path(files["json"]).write_text(json.dumps(report.to_dict(), indent=2))
    Path(files["markdown"]).write_text(markdown_report(report))
    return report
