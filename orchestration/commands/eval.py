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

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from orchestration.cli import stdout_to_stderr
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


def cmd_eval(args: argparse.Namespace) -> int:
    from models.body_model import load_body_model
    from models.evaluation import run_evaluation

    settings = Settings.from_env()
    config = settings.app
    folders = [Path(p) for p in args.photos] if args.photos else default_photo_folders(config.eval_photos)
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"avatarpipe eval: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.synthetic < 0:
        print("avatarpipe eval: --synthetic must be >= 0", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else settings.home / "eval" / stamp
    smplx = str(config.smplx_model_dir) if config.smplx_model_dir else None
    with stdout_to_stderr():
        report = run_evaluation(
            folders, args.synthetic, out, seed=args.seed,
            body=load_body_model(smplx, str(settings.anny_cache_dir)),
            progress=lambda msg: print(f"avatarpipe eval: {msg}", file=sys.stderr, flush=True),
            contact_sheets=not args.no_sheets,
        )  # fmt: skip
    if args.markdown:
        write_report(Path(args.markdown), Path(report.files["markdown"]).read_text())
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        s = report.summary
        print(f"photos: {s['photos_fitted']}/{s['photos']} fitted; median reprojection "
              f"{s['photos_median_keypoint_reprojection_rel']}, median IoU {s['photos_median_silhouette_iou']} "
              f"(full body {s['photos_median_silhouette_iou_full_body']}, clothed "
              f"{s['photos_median_clothed_silhouette_iou_full_body']}), fit max {s['photos_max_fit_seconds']} s")  # fmt: skip
        print(f"synthetic: {s['synthetic_fitted']}/{s['synthetic']} fitted; median PA-MPJPE "
              f"{s['synthetic_median_pa_mpjpe_mm']} mm, PA-PVE {s['synthetic_median_pa_pve_mm']} mm, "
              f"height error {s['synthetic_median_height_error_mm']} mm")  # fmt: skip
        for key, item in report.targets.items():
            verdict = "n/a" if item["met"] is None else ("met" if item["met"] else "MISSED")
            print(f"  target {key} {item['target']}: {item['value']} {verdict}")
        print(f"report: {report.files['markdown']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate the body fit on real photos and synthetic ground truth")
    parser.add_argument("--photos", action="append", metavar="DIR",
                        help=f"photo folder (repeatable; default samples/ + ../shared/data/photos or ${PHOTOS_ENV})")  # fmt: skip
    parser.add_argument("--synthetic", type=int, default=10, metavar="N", help="synthetic samples (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first synthetic seed (default 0)")
    parser.add_argument("--out", help="output folder (default $AVATARPIPE_HOME/eval/<UTC time>)")
    parser.add_argument("--markdown", metavar="PATH", help="also copy the Markdown report to PATH")
    parser.add_argument("--no-sheets", action="store_true", help="skip the contact sheets (faster)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_eval)
