"""`avatarpipe run PHOTO [PHOTO ...] [--subject ID] [--build B] [--height-cm H] [--age-group A] [--json]`:
turn each photo into a rigged GLB avatar, one Dagster run of the code location per photo in this
process (the definitions, MediaPipe, the GX suites and the registry reads loaded once for all of
them), then answer from the metadata store (the ledger). Exit status: 0 all ready, 1 any failed
(or the ledger is unreachable: `avatarpipe resume` completes it later), 2 usage errors (a
missing file, a bad hint or id: nothing is uploaded).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
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
from orchestration.console import step_progress
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


@dataclass(frozen=True)
class PhotoAnswer:
    """One photo's outcome in a `run` call: its exit status, JSON answer and text."""

    code: int
    answer: dict[str, Any]
    text: str | None  # None: the answer was a typed error already said on stderr


def run_one(settings: Settings, path: Path, subject: str | None, hints: dict, defs: Any) -> PhotoAnswer:
    """Ingest one photo and run its five steps (one Dagster run), answering from the ledger."""
    start = time.perf_counter()
    ingested = ingest_photo(settings, path.read_bytes(), path.name, subject, hints=hints)
    print(f"avatarpipe: upload {ingested.upload_id} registered ({path.name}); running {len(ASSET_ORDER)} steps")
    run_id = None
    try:
        run_id = run_avatar_job(settings, ingested.upload_id, defs=defs, on_event=step_progress(ASSET_ORDER))
        summary = summarise(settings, ingested.upload_id, run_id).to_dict()
    except StoreUnavailable as exc:  # the ledger itself is away: say so, typed (resume later)
        answer = store_unavailable_answer(ingested.upload_id, run_id, exc)
        print(f"avatarpipe: {answer['error']['message']}", file=sys.stderr)
        return PhotoAnswer(1, answer, None)
    wall_s = time.perf_counter() - start
    return PhotoAnswer(0 if summary["status"] == "ready" else 1, summary, human_summary(summary, wall_s))


def avatar_definitions(settings: Settings) -> Any:
    """The code location's definitions, built once per call and shared by its photos' runs."""
    from orchestration.definitions import build_definitions

    return build_definitions(settings)


@click.command("run", help="turn photos into rigged GLB avatars (one Dagster run each, models loaded once)")
@click.argument("photos", nargs=-1, required=True, metavar="PHOTO [PHOTO ...]")
@subject_option
@hint_options
@answers()
def run(
    settings: Settings,
    photos: tuple[str, ...],
    subject: str | None,
    build: str | None,
    height_cm: float | None,
    age_group: str | None,
) -> Reply:
    """One photo: one JSON object (as always). Several: one JSON object per line with ``--json``,
    in the order of the arguments; the hints and ``--subject`` apply to every photo. Every file
    is checked before the first upload, so a typo refuses the call without half-doing it."""
    paths = [Path(photo) for photo in photos]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return fail(2, f"avatarpipe: no such file: {', '.join(missing)}")
    try:
        hints = body_hints(build, height_cm, age_group)
    except PipelineError as err:
        return fail(2, f"avatarpipe: {err.message}")
    defs = avatar_definitions(settings)
    done = [run_one(settings, path, subject, hints, defs) for path in paths]
    code = max(d.code for d in done)
    if len(done) == 1:
        only = done[0]
        return Reply(only.code, only.answer, None if only.text is None else (lambda _s: only.text))
    texts = [d.text for d in done if d.text is not None]
    return Reply(code, [d.answer for d in done], lambda _s: "\n\n".join(texts), one_per_line=True)
