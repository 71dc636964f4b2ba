"""`avatarpipe eval [--photos DIR]... [--synthetic N] [--seed S] [--out DIR] [--json]`.

Runs the body-fit evaluation harness (`models.evaluation`): every photo of the photo folders
(default: the bundled `samples/` and, when present, the development set `../shared/data/photos`,
or `$AVATARPIPE_EVAL_PHOTOS`) and N synthetic Anny photos with known ground truth, through
the same keypoint detector and fitter as the pipeline (default parameters, Anny unless
`SMPLX_MODEL_DIR` is set). Writes `report.json`, `report.md`, `contact_sheet.png` and
`synthetic_sheet.png` under `--out` (default `$AVATARPIPE_HOME/eval/<UTC time>`); `--markdown
PATH` also copies the Markdown report there (`make eval` writes EVAL.md). Exit status 0 when
the run completed, whether or not the targets are met (they are reported, not asserted).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import click

from orchestration.commands.common import Reply, answers, fail
from orchestration.reports import write_report
from orchestration.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PHOTOS_ENV = "AVATARPIPE_EVAL_PHOTOS"


def default_photo_folders(configured: str | None = None) -> list[Path]:
    """``configured`` (the configuration's AVATARPIPE_EVAL_PHOTOS), else samples/ and the
    development photos."""
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    folders = [REPO / "samples"]
    development = REPO.parent / "shared" / "data" / "photos"
    if development.is_dir():
        folders.append(development)
    return folders


def _human(report) -> str:
    s = report.summary
    lines = [
        (f"photos: {s['photos_fitted']}/{s['photos']} fitted; median reprojection "
        f"{s['photos_median_keypoint_reprojection_rel']}, median IoU {s['photos_median_silhouette_iou']} "
        f"(full body {s['photos_median_silhouette_iou_full_body']}, clothed "
        f"{s['photos_median_clothed_silhouette_iou_full_body']}), fit max {s['photos_max_fit_seconds']} s"),
        (f"synthetic: {s['synthetic_fitted']}/{s['synthetic']} fitted; median PA-MPJPE "
        f"{s['synthetic_median_pa_mpjpe_mm']} mm, PA-PVE {s['synthetic_median_pa_pve_mm']} mm, "
        f"height error {s['synthetic_median_height_error_mm']} mm"),
    ]
    for key, item in report.targets.items():
        verdict = "n/a" if item["met"] is None else ("met" if item["met"] else "MISSED")
        lines.append(f"  target {key} {item['target']}: {item['value']} {verdict}")
    lines.append(f"report: {report.files['markdown']}")
    return "\n".join(lines)


@click.command("eval", help="evaluate the body fit on real photos and synthetic ground truth")
@click.option("--photos", multiple=True, metavar="DIR",
              help=f"photo folder (repeatable; default samples/ + ../shared/data/photos or ${PHOTOS_ENV})")  # fmt: skip
@click.option("--synthetic", type=int, default=10, metavar="N", help="synthetic samples (default 10)")
@click.option("--seed", type=int, default=0, help="first synthetic seed (default 0)")
@click.option("--out", help="output folder (default $AVATARPIPE_HOME/eval/<UTC time>)")
@click.option("--markdown", metavar="PATH", help="also copy the Markdown report to PATH")
@click.option("--no-sheets", is_flag=True, help="skip the contact sheets (faster)")
@answers(prepare=False)
def evaluate(
    settings: Settings, photos: tuple[str, ...], synthetic: int, seed: int, out: str | None, markdown: str | None,
    no_sheets: bool,
) -> Reply:  # fmt: skip
    from models.body_model import load_body_model  # torch: only when evaluating
    from models.evaluation import run_evaluation

    config = settings.app
    folders = [Path(p) for p in photos] if photos else default_photo_folders(config.eval_photos)
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        return fail(2, f"avatarpipe eval: no such folder: {', '.join(missing)}")
    if synthetic < 0:
        return fail(2, "avatarpipe eval: --synthetic must be >= 0")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = Path(out) if out else settings.home / "eval" / stamp
    smplx = str(config.smplx_model_dir) if config.smplx_model_dir else None
    report = run_evaluation(
        folders, synthetic, target, seed=seed,
        body=load_body_model(smplx, str(settings.anny_cache_dir)),
        progress=lambda msg: print(f"avatarpipe eval: {msg}", file=sys.stderr, flush=True),
        contact_sheets=not no_sheets,
    )  # fmt: skip
    if markdown:
        write_report(Path(markdown), Path(report.files["markdown"]).read_text())
    return Reply(0, report.to_dict(), lambda _answer: _human(report))
