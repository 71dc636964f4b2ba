"""Smoke test of the evaluation harness on one real photo and one synthetic sample."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from models.evaluation import list_photos, run_evaluation, summarise
from models.synthetic import generate_sample, pa_error_mm, procrustes_align


def test_procrustes_removes_rotation_scale_and_translation():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(17, 3))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = 1.7 * truth @ rotation.T + np.array([3.0, -1.0, 2.0])
    assert np.allclose(procrustes_align(moved, truth), truth, atol=1e-9)
    assert pa_error_mm(moved, truth) < 1e-6
    noisy = truth + rng.normal(scale=0.01, size=truth.shape)
    assert 5.0 < pa_error_mm(noisy, truth) < 20.0  # ~1 cm noise -> ~1.5 cm mean error


def test_synthetic_samples_are_reproducible(anny_model):
    from models.body_model import anny_body

    body = anny_body()
    a, b = generate_sample(body, 3), generate_sample(body, 3)
    assert np.array_equal(a.image, b.image) and np.allclose(a.joints, b.joints)
    assert a.image.shape == (768, 512, 3) and 0.1 < a.silhouette.mean() < 0.5
    assert 1.4 < a.height_m < 2.1 and a.joints.shape == (17, 3)
    assert not np.array_equal(generate_sample(body, 4).image, a.image)


def test_harness_on_one_photo_and_one_synthetic_sample(tmp_path, standing_photo, anny_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(standing_photo, photos / "standing.png")
    shutil.copy(standing_photo, photos / "same_again.png")  # identical files count once
    (photos / "MANIFEST.csv").write_text("file,framing,people_count\nstanding.png,full-body,1\n")
    assert len(list_photos([photos])) == 1

    report = run_evaluation([photos], synthetic=1, out_dir=tmp_path / "out", seed=5)

    (photo,) = report.photos
    assert photo.status == "fitted"
    assert (photo.photo, photo.aliases) == ("same_again.png", ["standing.png"])  # sorted; manifest by alias
    assert photo.framing == "full_body" and photo.expected_framing == "full-body" and photo.people_count == 1
    assert 0.0 < photo.keypoint_reprojection_rel < 0.02
    assert 0.7 < photo.silhouette_iou <= 1.0 and photo.clothed_silhouette_iou >= photo.silhouette_iou - 0.02
    assert photo.fit_seconds > 0 and photo.keypoints_seconds > 0
    (sample,) = report.synthetic
    assert sample.status == "fitted" and sample.framing == "full_body"
    assert 0.0 < sample.pa_mpjpe_mm < 150.0 and 0.0 < sample.pa_pve_mm < 200.0
    assert 0.6 < sample.iou_true_silhouette <= 1.0 and sample.height_error_mm >= 0.0
    # report files: JSON with the summary and targets, Markdown, contact sheets a person can look at
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["summary"]["photos_fitted"] == 1 and data["summary"]["synthetic_fitted"] == 1
    assert set(data["targets"]) == {
        "photos_median_silhouette_iou_full_body", "photos_median_keypoint_reprojection_rel",
        "synthetic_median_pa_mpjpe_mm", "photos_max_fit_seconds",
        # issue 12
        "synthetic_median_gender_error", "synthetic_median_age_error", "synthetic_median_hinted_height_error_mm",
    }  # fmt: skip
    # per-phenotype errors against the truth; a height hint makes the height exact
    assert set(sample.phenotype_error) == {"gender", "age", "muscle", "weight", "height", "proportions"}
    assert all(0.0 <= e <= 1.0 for e in sample.phenotype_error.values())
    assert sample.hinted_height_error_mm is not None and sample.hinted_height_error_mm <= 30.0
    assert set(photo.phenotype_source) == set(photo.phenotype) and "gender" in photo.phenotype
    assert data["targets"]["photos_median_keypoint_reprojection_rel"]["met"] is True
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "PA-MPJPE" in markdown and "same_again.png (= standing.png)" in markdown
    sheet = np.asarray(Image.open(tmp_path / "out" / "contact_sheet.png"))
    assert sheet.shape[0] >= 256 and sheet.shape[1] >= 3 * 150  # photo | overlay | avatar
    assert (tmp_path / "out" / "synthetic_sheet.png").is_file()


def test_summary_flags_missed_targets():
    from models.evaluation import PhotoResult, SyntheticResult

    photos = [PhotoResult(photo=f"{i}.png", status="fitted", framing="full_body", keypoint_reprojection_rel=0.01,
                          silhouette_iou=iou, fit_seconds=2.0) for i, iou in enumerate((0.7, 0.8, 0.9))]  # fmt: skip
    photos.append(PhotoResult(photo="x.png", status="NO_PERSON"))
    synthetic = [SyntheticResult(seed=0, status="fitted", pa_mpjpe_mm=70.0)]
    summary, targets = summarise(photos, synthetic)
    assert summary["photos_failed"] == {"x.png": "NO_PERSON"}
    assert targets["photos_median_silhouette_iou_full_body"] == {"target": ">= 0.85", "value": 0.8, "met": False}
    assert targets["synthetic_median_pa_mpjpe_mm"]["met"] is False
    assert targets["photos_median_keypoint_reprojection_rel"]["met"] is True


def test_cli_registers_eval(monkeypatch, capfd):
    import click

    from orchestration.cli import cli, main

    ctx = cli.commands["eval"].make_context("eval", ["--photos", "x", "--synthetic", "2", "--json"])
    args = ctx.params
    assert ctx.info_name == "eval" and list(args["photos"]) == ["x"] and args["synthetic"] == 2 and args["as_json"]
    with pytest.raises(click.BadParameter):
        cli.commands["eval"].make_context("eval", ["--synthetic", "many"])
    assert main(["eval", "--synthetic", "many"]) == 2  # a usage error, as argparse answered it
    assert "many" in capfd.readouterr().err


def test_phenotype_cues_without_the_fit(anny_model):
    """The cheap held-out check of the phenotype estimate: detector + evidence + centre per
    synthetic subject, summarised against the truth and against the prior alone."""
    from models.body_model import anny_body
    from models.evaluation import cue_summary, evaluate_phenotype_cues
    from models.phenotype import PRIOR_CENTRE

    results = evaluate_phenotype_cues([5, 6], anny_body())
    assert [r.seed for r in results] == [5, 6]
    detected = [r for r in results if r.status == "detected"]
    assert detected, "the detector found no one on two synthetic subjects"
    for r in detected:
        assert set(r.centre) == set(PRIOR_CENTRE) and set(r.source) == set(PRIOR_CENTRE)
        assert all(0.0 <= v <= 1.0 for v in r.centre.values())
    summary = cue_summary(results)
    assert summary["detected"] == len(detected)
    gender_prior = sorted(abs(0.5 - r.true_phenotype["gender"]) for r in detected)
    assert summary["prior_median_gender_error"] == pytest.approx(float(np.median(gender_prior)), abs=1e-4)
    assert all(entry["n"] <= len(detected) for entry in summary["cues"].values())


def test_cue_summary_correlations():
    from models.evaluation import CueResult, cue_summary

    labels = ("gender", "age", "muscle", "weight", "height", "proportions")
    rows = []
    for i, g in enumerate((0.1, 0.4, 0.6, 0.9)):
        truth = dict.fromkeys(labels, 0.5) | {"gender": g, "age": 0.3 + 0.1 * i}
        centre = dict.fromkeys(labels, 0.5) | {"age": 0.67}
        evidence = {"rises_with_build": 2.0 * g, "falls_with_age": -truth["age"]}
        rows.append(CueResult(seed=i, status="detected", true_phenotype=truth, evidence=evidence, centre=centre))
    rows.append(CueResult(seed=9, status="NO_PERSON"))
    summary = cue_summary(rows)
    assert summary["subjects"] == 5 and summary["detected"] == 4
    assert summary["cues"]["rises_with_build"]["r_gender"] == pytest.approx(1.0)
    assert summary["cues"]["falls_with_age"]["r_age"] == pytest.approx(-1.0)
    assert summary["centre_median_gender_error"] == pytest.approx(0.25)  # centre 0.5, builds 0.1..0.9
    assert summary["clearly_built"] == 2 and summary["clear_prior_median_gender_error"] == pytest.approx(0.4)


def _cue_rows(truths, raws):
    from models.evaluation import CueResult

    return [
        CueResult(seed=i, status="detected", true_phenotype={"gender": t}, raw_centre={"gender": r})
        for i, (t, r) in enumerate(zip(truths, raws))
    ]


def test_the_calibration_shrinks_only_what_the_evidence_supports():
    """`choose_shrink` / `held_out_skill`: right cues are kept whole, overconfident ones are
    halved, cues at chance fall back to the prior (skill 0)."""
    from models.evaluation import choose_shrink, clearly_built, held_out_skill, shrink_errors

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.0, 1.0, 400)
    right = _cue_rows(truth, truth)
    assert choose_shrink(right, "gender") == 1.0 and held_out_skill(right, "gender", 1.0) == pytest.approx(1.0)
    # twice as far from 0.5 as the truth: half of the departure is right
    loud = _cue_rows(truth, 0.5 + 2.0 * (truth - 0.5))
    assert choose_shrink(loud, "gender") == pytest.approx(0.5)
    # at chance: confident answers unrelated to the truth
    noise = _cue_rows(truth, rng.choice([0.05, 0.95], len(truth)))
    assert choose_shrink(noise, "gender") == 0.0 and held_out_skill(noise, "gender", 0.0) == 0.0
    assert shrink_errors(noise, "gender", 0.0)[1] < shrink_errors(noise, "gender", 1.0)[1]
    # a gain smaller than `min_se` standard errors is no reason to shrink
    assert choose_shrink(loud[:5], "gender", min_se=1e6) == 1.0
    assert all(abs(r.true_phenotype["gender"] - 0.5) > 0.2 for r in clearly_built(right))
    assert 0 < len(clearly_built(right)) < len(right)
