"""Throughput through the ingestion sensor and the Dagster run queue, on a fresh home.

    python benchmarks/queue_throughput.py [--uploads 30] [--mode warm] [--max-concurrent-runs 3]
        [--warm-workers 2] [--photo PATH] [--timeout-s 3600] [--write]

What production does, on this machine: N raw photos land in the local object store's upload
folder (as a browser's PUT would put them), the folder sensor registers each upload and
requests one run, the `QueuedRunCoordinator` starts at most `--max-concurrent-runs` of them at
a time (the limit the project writes into the instance's dagster.yaml), each run's steps go
where `--mode` places them, and the quality gates mark each upload `ready`. `dagster-daemon
run` does the sensor ticks, the queue and the run launches, with the default run launcher
(one run worker process per run). The warm pool is started before the uploads land (`worker
start`), so the numbers are the sustained rate, not the first model load.

Prints one JSON object: uploads, runs per upload (must be 1 each), statuses, the sustained
rate (completions per minute between the first and the last completion), the overall rate
(uploads per minute from the first run's start to the last run's end), run latency p50/p95,
queue wait, the most runs seen in flight at once, and the peak RSS (`VmHWM`) of every warm
worker and run worker. ``--write`` puts the result in its own section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: this tree's modules, not an installed copy's

from ops.procstat import home_processes, peak_rss_mb
from orchestration.config import DERIVED_DAGSTER_HOME_ENV

SECTION_START = "<!-- queue-throughput:start -->"
SECTION_END = "<!-- queue-throughput:end -->"
FINAL = {"ready", "failed", "failed_quality"}


@dataclass
class QueueResult:
    uploads: int
    mode: str
    max_concurrent_runs: int
    warm_workers: int
    statuses: dict[str, int]
    runs_per_upload: dict[str, int]  # how many uploads had 0, 1, 2... runs
    run_statuses: dict[str, int]
    max_in_flight: int
    sustained_per_min: float | None
    overall_per_min: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    queue_wait_p50_s: float | None
    wall_s: float
    load_before: str
    peak_rss_mb: dict[str, list[float]] = field(default_factory=dict)  # "warm_worker" / "run_worker"
    timed_out: bool = False


def _pick(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _counts(values: list[str]) -> dict[str, int]:
    return {v: values.count(v) for v in sorted(set(values))}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` for the duration (the application layer reads it, and
    `prepare_environment` exports more); all of it is restored afterwards."""
    saved = dict(os.environ)
    # the queue's instance is the home's own: a DAGSTER_HOME left by an earlier caller (which
    # avatarpipe would take for an operator's instance) must not stand in for it
    for name in ("DAGSTER_HOME", DERIVED_DAGSTER_HOME_ENV):
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def drop_uploads(root: Path, photo: bytes, ext: str, count: int) -> list[str]:
    """Put ``count`` raw photos where the folder sensor looks (each its own subject and upload);
    the sensor registers them, as it does for a browser's upload. Returns the upload ids."""
    from storage.keys import raw_upload_key, sha256_hex
    from storage.object_store import LocalObjectStore

    store = LocalObjectStore(root)
    uploads = []
    for _ in range(count):
        subject, upload = "s_" + secrets.token_hex(6), "u_" + secrets.token_hex(8)
        store.put_bytes(raw_upload_key(subject, upload, ext, sha256_hex(photo)), photo)
        uploads.append(upload)
    return uploads


def run_queue(
    uploads: int,
    photo: Path,
    home: Path,
    mode: str = "warm",
    max_concurrent_runs: int = 2,
    warm_workers: int = 2,
    timeout_s: float = 3600.0,
) -> QueueResult:
    """Drop ``uploads`` photos, run the sensor daemon and the queue until every run is over."""
    env = {
        "AVATARPIPE_HOME": str(home),
        "AVATARPIPE_COMPUTE_MODE": mode,
        "AVATARPIPE_MAX_CONCURRENT_RUNS": str(max_concurrent_runs),
        "AVATARPIPE_WARM_WORKERS": str(warm_workers),
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with environment(env):
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        from orchestration.app import metadata_store, prepared_settings
        from orchestration.compute import launcher_from_settings

        settings = prepared_settings()  # installs the instance's dagster.yaml with the limit
        pool = launcher_from_settings(settings).warm_pool()
        if mode == "warm":
            pool.start()
        # Create the instance's sqlite databases before the daemon and its code server open them:
        # two processes creating a fresh schedule database at once leave two alembic heads.
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)
        started = time.monotonic()
        ids = drop_uploads(
            settings.objects_dir, photo.read_bytes(), photo.suffix.lstrip(".").lower(), uploads
        )
        log = open(home / "daemon.log", "ab")  # noqa: SIM115 - closed after the daemon
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "orchestration.definitions"],
            cwd=REPO, env=dict(os.environ), stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        peaks: dict[int, tuple[str, float]] = {}
        max_in_flight, timed_out = 0, False
        terminal = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
        try:
            while True:
                runs = instance.get_runs(filters=RunsFilter(job_name="avatar_job"))
                in_flight = [
                    r for r in runs if r.status in (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING)
                ]
                max_in_flight = max(max_in_flight, len(in_flight))
                for kind, marker in (("warm_worker", "ops.warm_worker"), ("run_worker", "api execute_run")):
                    for pid in home_processes(marker, home):
                        rss = peak_rss_mb(pid)
                        if rss is not None:
                            peaks[pid] = (kind, max(rss, peaks.get(pid, (kind, 0.0))[1]))
                done = [r for r in runs if r.status in terminal]
                if len(done) >= uploads and len({r.tags.get("dagster/partition") for r in done}) >= uploads:
                    break
                if time.monotonic() - started > timeout_s:
                    timed_out = True
                    break
                time.sleep(1.0)
            time.sleep(5)  # one more sensor interval would show a duplicate request
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
            with contextlib.suppress(ProcessLookupError):  # run workers still going (a timeout)
                os.killpg(daemon.pid, signal.SIGTERM)
            log.close()
        wall = time.monotonic() - started
        records = instance.get_run_records(filters=RunsFilter(job_name="avatar_job"))
        with metadata_store(settings) as store:
            statuses = [str((store.get_upload(u) or {}).get("status")) for u in ids]
        for slot in pool.status():
            if slot.peak_rss_mb is not None and slot.pid is not None:
                peaks[slot.pid] = ("warm_worker", max(slot.peak_rss_mb, peaks.get(slot.pid, ("", 0.0))[1]))
        pool.stop()
    per_upload = {u: 0 for u in ids}
    for record in records:
        partition = record.dagster_run.tags.get("dagster/partition")
        if partition in per_upload:
            per_upload[partition] += 1
    starts = [r.start_time for r in records if r.start_time]
    ends = sorted(r.end_time for r in records if r.end_time)
    latencies = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    waits = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    return QueueResult(
        uploads=uploads,
        mode=mode,
        max_concurrent_runs=max_concurrent_runs,
        warm_workers=warm_workers,
        statuses=_counts(statuses),
        runs_per_upload=_counts([str(n) for n in per_upload.values()]),
        run_statuses=_counts([r.dagster_run.status.value for r in records]),
        max_in_flight=max_in_flight,
        sustained_per_min=round((len(ends) - 1) / (ends[-1] - ends[0]) * 60, 2)
        if len(ends) > 1 and ends[-1] > ends[0]
        else None,
        overall_per_min=round(len(ends) / (ends[-1] - min(starts)) * 60, 2) if ends and starts else None,
        latency_p50_s=_pick(latencies, 0.5),
        latency_p95_s=_pick(latencies, 0.95),
        queue_wait_p50_s=_pick(waits, 0.5),
        wall_s=round(wall, 1),
        load_before=load_before,
        peak_rss_mb={
            kind: sorted(v for k, v in peaks.values() if k == kind) for kind in ("warm_worker", "run_worker")
        },
        timed_out=timed_out,
    )


RESULTS = REPO / "benchmarks" / "queue_throughput.json"


def markdown(result: QueueResult) -> str:
    """The BENCHMARKS.md section (between its own markers)."""
    rss = result.peak_rss_mb
    rows = [
        ("uploads through the folder sensor and the run queue", result.uploads),
        ("all runs over before the time limit", "no (timed out: the rates are of the runs that finished)" if result.timed_out else "yes"),
        ("compute mode / warm workers / max_concurrent_runs", f"{result.mode} / {result.warm_workers} / {result.max_concurrent_runs}"),
        ("upload statuses", json.dumps(result.statuses)),
        ("runs per upload (count of uploads)", json.dumps(result.runs_per_upload)),
        ("most runs in flight at once", result.max_in_flight),
        ("sustained avatars per minute (first to last completion)", result.sustained_per_min),
        ("overall avatars per minute (first start to last completion)", result.overall_per_min),
        ("run latency p50 / p95 (s)", f"{result.latency_p50_s} / {result.latency_p95_s}"),
        ("queue wait p50 (s)", result.queue_wait_p50_s),
        ("peak RSS per warm worker (MB)", ", ".join(str(v) for v in rss.get("warm_worker", [])) or "-"),
        ("peak RSS per run worker, max (MB)", max(rss.get("run_worker", []) or [0]) or "-"),
        ("wall (s) / load average before", f"{result.wall_s} / {result.load_before}"),
    ]  # fmt: skip
    lines = [SECTION_START, "## Throughput through the run queue (issue 17, `benchmarks/queue_throughput.py`)", "",
             "| what | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", SECTION_END]  # fmt: skip
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's own section of BENCHMARKS.md (append it the first time)."""
    text = path.read_text() if path.is_file() else ""
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        text = before + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--mode", default="warm", choices=["warm", "subprocess", "inprocess"])
    parser.add_argument("--max-concurrent-runs", type=int, default=3)
    parser.add_argument("--warm-workers", type=int, default=2)
    parser.add_argument("--photo", type=Path, default=REPO / "samples" / "person_standing.png")
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--home", type=Path, help="default: a fresh temporary home")
    parser.add_argument("--write", action="store_true", help="put the result into BENCHMARKS.md")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="avatarpipe-queue-"))
    result = run_queue(
        args.uploads, args.photo, home, args.mode, args.max_concurrent_runs, args.warm_workers, args.timeout_s
    )
    print(json.dumps(asdict(result)))
    if args.write:
        write_section(REPO / "BENCHMARKS.md", markdown(result))
        RESULTS.write_text(json.dumps(asdict(result), indent=1) + "\n")  # the warm-path table's row
    return 0 if not result.timed_out else 1


if __name__ == "__main__":
    raise SystemExit(main())
