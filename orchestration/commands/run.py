"""`avatarpipe run PHOTO [--subject ID] [--build B] [--height-cm H] [--age-group A] [--json]`: turn
one photo into a rigged GLB avatar in one Dagster run in this process, then answer from the
metadata store (the ledger). Exit status: 0 ready, 1 failed (or the ledger is unreachable:
`avatarpipe resume` completes it later), 2 usage errors (missing file, bad hint or id).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from models.errors import PipelineError
from orchestration.app import (
    ASSET_ORDER,
    body_hints,
    ingest_photo,
    run_avatar_job,
    store_unavailable_answer,
    summarise,
)
from orchestration.commands.common import Reply, answers, fail, hint_options, subject_option
from orchestration.settings import Settings
from storage.retry import StoreUnavailable


def human_summary(summary: dict[str, Any], wall_s: float) -> str:
    lines = [f"upload {summary['upload_id']} (subject {summary['subject_id']}): {summary['status']}"]
    if summary["error"]:
        err = summary["error"]
        lines.append(f"  error {err.get('code')} at {err.get('step')}: {err.get('message')}")
    glb = summary["artifacts"].get("rigged_glb")
    if glb:
        lines.append(f"  avatar GLB: {glb['path'] or glb['uri']} ({glb['bytes'] / 1e6:.2f} MB)")
    fit = summary["metrics"].get("smplx_params", {})
    if fit:
        lines.append(
            f"  fit: reprojection {fit.get('keypoint_reprojection_rel')} of body height, "
            f"silhouette IoU {fit.get('silhouette_iou')}, framing {fit.get('framing')}"
        )
    if summary["checks"]:
        verdicts = [
            f"{name} " + ("pass" if c["passed"] else f"{c['severity']} ({', '.join(f['name'] for f in c['failed_expectations'])})")
            for name, c in summary["checks"].items()
        ]
        lines.append(f"  quality: {'; '.join(verdicts)}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items() if v is not None)
    lines.append(f"  steps: {timings}; total wall {wall_s:.1f}s; Dagster run {summary['dagster_run_id']}")
    return "\n".join(lines)


@click.command("run", help="turn one photo into a rigged GLB avatar")
@click.argument("photo")
@subject_option
@hint_options
@answers()
def run(
    settings: Settings, photo: str, subject: str | None, build: str | None, height_cm: float | None, age_group: str | None
) -> Reply:
    path = Path(photo)
    if not path.is_file():
        return fail(2, f"avatarpipe: no such file: {path}")
    try:
        hints = body_hints(build, height_cm, age_group)
    except PipelineError as err:
        return fail(2, f"avatarpipe: {err.message}")
    start = time.perf_counter()
    ingested = ingest_photo(settings, path.read_bytes(), path.name, subject, hints=hints)
    print(f"avatarpipe: upload {ingested.upload_id} registered; running {len(ASSET_ORDER)} steps")
    run_id = None
    try:
        run_id = run_avatar_job(settings, ingested.upload_id)
        summary = summarise(settings, ingested.upload_id, run_id).to_dict()
    except StoreUnavailable as exc:  # the ledger itself is away: say so, typed (resume later)
        answer = store_unavailable_answer(ingested.upload_id, run_id, exc)
        print(f"avatarpipe: {answer['error']['message']}", file=sys.stderr)
        return Reply(1, answer)  # no text: the message above is the answer
    wall_s = time.perf_counter() - start
    return Reply(0 if summary["status"] == "ready" else 1, summary, lambda s: human_summary(s, wall_s))
