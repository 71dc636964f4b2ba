"""`avatarpipe run PHOTO [PHOTO ...] [--subject ID] [--build B] [--height-cm H] [--age-group A] [--json]`:
turn each photo into a rigged GLB avatar, one Dagster run of the code location per photo, then
answer from the metadata store (the ledger). The definitions are built once per call. Several
photos run as concurrent runs over the warm pool (at most `AVATARPIPE_MAX_CONCURRENT_RUNS`, and
in warm mode at most one more than `AVATARPIPE_WARM_WORKERS`; :func:`batch_concurrency`), so one photo's
bookkeeping overlaps another's steps; answers keep the order of the arguments, and a photo
that fails fails alone. Exit status: 0 all ready, 1 any failed (or the ledger is unreachable:
`avatarpipe resume` completes it later), 2 usage errors (a missing file, a bad hint or id:
nothing is uploaded).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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


def run_one(
    settings: Settings, path: Path, subject: str | None, hints: dict, defs: Any, label: str = ""
) -> PhotoAnswer:
    """Ingest one photo and run its five steps (one Dagster run), answering from the ledger.
    ``label``: what prefixes this photo's progress lines when several run at once."""
    start = time.perf_counter()
    ingested = ingest_photo(settings, path.read_bytes(), path.name, subject, hints=hints)
    print(f"avatarpipe: {label}upload {ingested.upload_id} registered ({path.name}); running {len(ASSET_ORDER)} steps")
    run_id = None
    write: Callable[[str], None] | None = (lambda line: print(label + line, file=sys.stderr, flush=True)) if label else None
    try:
        run_id = run_avatar_job(settings, ingested.upload_id, defs=defs, on_event=step_progress(ASSET_ORDER, write))
        summary = summarise(settings, ingested.upload_id, run_id).to_dict()
    except StoreUnavailable as exc:  # the ledger itself is away: say so, typed (resume later)
        answer = store_unavailable_answer(ingested.upload_id, run_id, exc)
        print(f"avatarpipe: {answer['error']['message']}", file=sys.stderr)
        return PhotoAnswer(1, answer, None)
    wall_s = time.perf_counter() - start
    return PhotoAnswer(0 if summary["status"] == "ready" else 1, summary, human_summary(summary, wall_s))


def avatar_definitions(settings: Settings) -> Any:
    """The code location's definitions, built once per call and shared by its photos' runs."""
    from orchestration.definitions_build import build_definitions

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
    done = run_photos(settings, paths, subject, hints, defs, batch_concurrency(len(paths)))
    code = max(d.code for d in done)
    if len(done) == 1:
        only = done[0]
        return Reply(only.code, only.answer, None if only.text is None else (lambda _s: only.text))
    texts = [d.text for d in done if d.text is not None]
    return Reply(code, [d.answer for d in done], lambda _s: "\n\n".join(texts), one_per_line=True)


def batch_concurrency(photos: int) -> int:
    """How many of a call's photos run at once: the run queue's limit
    (`AVATARPIPE_MAX_CONCURRENT_RUNS`) and, in warm mode, one more than the pool has workers
    (`AVATARPIPE_WARM_WORKERS`): the extra run does its ingest and bookkeeping while the others'
    steps hold the workers, as the run queue measured best (docs/operations.md), and a run
    beyond that would only wait for a slot. One in `inprocess` mode, where every run would load
    the models itself, and where the platform cannot fork."""
    from orchestration.config import load_config

    config = load_config()
    if photos <= 1 or config.compute_mode == "inprocess" or not hasattr(os, "fork"):
        return 1
    limit = config.max_concurrent_runs
    if config.compute_mode == "warm":
        limit = min(limit, config.warm_workers + 1)
    return max(1, min(photos, limit))


def run_photos(
    settings: Settings, paths: list[Path], subject: str | None, hints: dict, defs: Any, concurrency: int
) -> list[PhotoAnswer]:
    """Every photo's answer, in the order of ``paths``. One at a time in this process when
    ``concurrency`` is 1; else each photo's run goes in a child forked from this process, at
    most ``concurrency`` at once. The fork shares what this process has already imported and
    built (Dagster, the definitions), so a photo costs its run and no new interpreter; each run
    has its own process, as a run worker has, so Dagster's per-run capture of stdout/stderr and
    its storage connections are never shared between two runs. A child that dies without an
    answer fails its photo alone (INTERNAL_ERROR), the others go on."""
    if concurrency <= 1:
        return [run_one(settings, path, subject, hints, defs) for path in paths]
    _import_run_machinery()  # once here, not once per child
    answers: dict[int, PhotoAnswer] = {}
    running: dict[int, tuple[int, Path]] = {}  # pid -> (index, answer file)
    waiting = list(enumerate(paths))
    with tempfile.TemporaryDirectory(prefix="avatarpipe-run-") as tmp:
        while waiting or running:
            while waiting and len(running) < concurrency:
                index, path = waiting.pop(0)
                out = Path(tmp) / f"{index}.json"
                label = f"({index + 1}/{len(paths)} {path.name}) "
                pid = _fork_photo(lambda p=path, o=out, lb=label: _answer_to_file(settings, p, subject, hints, defs, lb, o))
                running[pid] = (index, out)
            pid, status = os.wait()
            if pid not in running:
                continue  # not one of ours (a subprocess reaped elsewhere)
            index, out = running.pop(pid)
            answers[index] = _read_answer(out, paths[index], os.waitstatus_to_exitcode(status))
    return [answers[i] for i in range(len(paths))]


def _import_run_machinery() -> None:
    """What every photo's run imports: Dagster's instance, storage and in-process execution."""
    from dagster import DagsterInstance
    from dagster._core.execution.api import execute_run_iterator  # noqa: F401

    DagsterInstance.get()  # the storage classes of the instance's dagster.yaml


def _fork_photo(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child that exits without this process's exit handlers."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        work()
    except BaseException:  # noqa: BLE001 - the parent reports a child without an answer
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer_to_file(
    settings: Settings, path: Path, subject: str | None, hints: dict, defs: Any, label: str, out: Path
) -> None:
    """A child's work: the photo's run, its answer written for the parent (a file, not a pipe:
    an answer never waits for the parent to read it)."""
    try:
        answer = run_one(settings, path, subject, hints, defs, label)
    except Exception as exc:  # noqa: BLE001 - this photo fails alone, typed
        message = f"{type(exc).__name__}: {exc}"[:500]
        print(f"avatarpipe: {label}{message}", file=sys.stderr)
        answer = PhotoAnswer(1, _no_answer(path, message), None)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(answer), default=str))
    os.replace(tmp, out)


def _no_answer(path: Path, message: str) -> dict[str, Any]:
    return {"upload_id": None, "photo": path.name, "status": "failed", "artifacts": {},
            "error": {"code": "INTERNAL_ERROR", "message": message}}  # fmt: skip


def _read_answer(out: Path, path: Path, exit_code: int) -> PhotoAnswer:
    try:
        data = json.loads(out.read_text())
        return PhotoAnswer(int(data["code"]), data["answer"], data["text"])
    except (OSError, ValueError, KeyError):
        message = f"the run of {path.name} ended without an answer (exit status {exit_code})"
        print(f"avatarpipe: {message}", file=sys.stderr)
        return PhotoAnswer(1, _no_answer(path, message), None)
