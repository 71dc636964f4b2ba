"""Faults *during* compute, not at step boundaries: a Pipes worker SIGKILLed in the middle of the
fit and of the mesh step, the object store's filesystem full (a real tmpfs of limited size),
and the PostgreSQL server restarting in the middle of a run whose Dagster instance and MLflow
registry live on it. Each ends in a successful retry or a typed error, nothing half-written is
recorded as an artifact, and `fsck` is clean after `resume`.

Every process is a real `avatarpipe` CLI subprocess; the worker is found in /proc (its command
line is `python -m ops.worker`, its environment names this test's home).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ops.procstat import home_processes
from orchestration.app import ASSET_ORDER
from tests.reliability.helpers import (
    cli_subprocess,
    fsck_report,
    isolated_home,
    ledger,
    only_upload,
    popen_cli,
)

pytestmark = pytest.mark.slow
FAST_RETRY = {"AVATARPIPE_STEP_RETRY_DELAY_S": "0.5"}


def _workers(home: Path) -> list[int]:
    """Pids of live `ops.worker` processes of this home, oldest first."""
    return home_processes("ops.worker", home)


def _kill_worker_mid_step(home: Path, nth: int, proc: subprocess.Popen, alive_s: float = 2.0) -> bool:
    """SIGKILL the ``nth`` distinct worker (0: the fit, 1: the mesh step) once it has computed for
    ``alive_s``; False when the run ended before that worker appeared."""
    seen: list[int] = []
    while proc.poll() is None:
        for pid in _workers(home):
            if pid not in seen:
                seen.append(pid)
        if len(seen) > nth:
            time.sleep(alive_s)
            try:
                os.kill(seen[nth], signal.SIGKILL)
            except ProcessLookupError:
                return False
            return True
        time.sleep(0.1)
    return False


def _finish(settings, proc: subprocess.Popen) -> tuple[str, dict | None]:
    out, _err = proc.communicate(timeout=1200)
    upload_id = only_upload(settings)
    answer = json.loads(out) if out.strip() else None
    return upload_id, answer


def _assert_complete_and_consistent(settings, upload_id: str) -> None:
    state = ledger(settings, upload_id)
    assert state.upload["status"] == "ready", state.upload
    assert set(state.current) == set(ASSET_ORDER)
    report = fsck_report(settings, upload_id)
    assert report.clean, report.to_dict()


@pytest.mark.parametrize("nth,step", [(0, "smplx_params"), (1, "mesh")])
def test_worker_killed_mid_step_is_retried(tmp_path, standing_photo, nth, step) -> None:
    with isolated_home(tmp_path / "home", **FAST_RETRY) as settings:
        proc = popen_cli(["run", str(standing_photo), "--subject", f"kill-{step}", "--json"], settings.home, FAST_RETRY)
        killed = _kill_worker_mid_step(settings.home, nth, proc)
        upload_id, answer = _finish(settings, proc)
        assert killed, f"the {step} worker never ran"
        if answer is None or answer["status"] != "ready":  # retries spent: the typed answer, then resume
            assert answer is not None and answer["error"]["code"] in ("STORE_UNAVAILABLE", "INTERNAL_ERROR"), answer
            resumed = cli_subprocess(["resume", upload_id, "--json"], settings.home, FAST_RETRY)
            assert resumed.returncode == 0, resumed.stderr[-2000:]
        _assert_complete_and_consistent(settings, upload_id)
        from dagster import DagsterInstance, RunsFilter

        runs = DagsterInstance.get().get_run_records(RunsFilter(tags={"dagster/partition": upload_id}))
        events = [e.dagster_event.event_type_value for r in runs for e in DagsterInstance.get().all_logs(r.dagster_run.run_id)
                  if e.is_dagster_event and e.dagster_event is not None and e.dagster_event.step_key == step]  # fmt: skip
        assert "STEP_UP_FOR_RETRY" in events or "STEP_FAILURE" in events, events  # the kill was seen, not hidden


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)


def test_object_store_disk_full_is_a_typed_error_then_resume_completes(tmp_path, standing_photo) -> None:
    """The object store on a 2.5 MB tmpfs: the photo, keypoints, fit and mesh fit (≈ 2.0 MB), the
    rigged GLB (≈ 1.5 MB) does not. Needs root (mount); elsewhere it skips, saying so."""
    home = tmp_path / "home"
    objects = home / "objects"
    try:
        _mount_tmpfs(objects, "2560k")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {exc}")
    try:
        with isolated_home(home, **FAST_RETRY) as settings:
            proc = cli_subprocess(["run", str(standing_photo), "--subject", "disk-full", "--json"], home, FAST_RETRY)
            answer = json.loads(proc.stdout)
            upload_id = only_upload(settings)
            assert proc.returncode == 1 and answer["status"] == "failed", answer
            assert answer["error"]["code"] == "STORE_UNAVAILABLE" and "no space left" in answer["error"]["message"]
            state = ledger(settings, upload_id)
            assert "rigged_glb" not in state.current  # no artifact recorded for the step that failed
            assert not [p for p in objects.rglob("*") if p.is_file() and p.name.endswith(".tmp")]  # no partial file
            for key in state.keys:  # what is there is whole: content-addressed names match the bytes
                assert hashlib.sha256((objects / key).read_bytes()).hexdigest().startswith(key.rsplit("/", 1)[1].split(".")[0])
            subprocess.run(["mount", "-o", "remount,size=64m", str(objects)], check=True)  # space freed
            resumed = cli_subprocess(["resume", upload_id, "--json"], home, FAST_RETRY)
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            _assert_complete_and_consistent(settings, upload_id)
    finally:
        subprocess.run(["umount", "-l", str(objects)], check=False, capture_output=True)


def test_postgres_restart_mid_run(tmp_path, standing_photo, request) -> None:
    """Dagster's storage and the MLflow registry on PostgreSQL; the server restarts while the fit
    runs. The run either rides it out or fails with a typed error; `resume` completes it."""
    from tests.backends.fixtures import use_backend

    with pytest.MonkeyPatch.context() as mp:
        backend = use_backend("postgres", request, mp)
        assert backend.server is not None
        env = {**FAST_RETRY, **backend.env}
        with isolated_home(tmp_path / "home", **env) as settings:
            instance_yaml = settings.dagster_home / "dagster.yaml"
            assert "postgres_url" in instance_yaml.read_text()
            proc = popen_cli(["run", str(standing_photo), "--subject", "pg-restart", "--json"], settings.home, env)
            assert _wait_for_worker(settings.home, proc), "the fit never started"
            backend.server.restart()
            upload_id, answer = _finish(settings, proc)
            assert "postgres_url" in instance_yaml.read_text(), answer
            if answer is None or answer["status"] != "ready":
                resumed = cli_subprocess(["resume", upload_id, "--json"], settings.home, env)
                assert resumed.returncode == 0, resumed.stderr[-3000:]
            _assert_complete_and_consistent(settings, upload_id)
            runs = backend.server.execute("SELECT status FROM runs", backend.databases["dagster"])
            assert ("SUCCESS",) in runs, runs


def _wait_for_worker(home: Path, proc: subprocess.Popen, alive_s: float = 2.0) -> bool:
    while proc.poll() is None:
        if _workers(home):
            time.sleep(alive_s)
            return True
        time.sleep(0.1)
    return False


STORE_GIVES_UP_FAST = {"AVATARPIPE_STORE_RETRY_TRIES": "3", "AVATARPIPE_STORE_RETRY_BASE_S": "0.01",
                       "AVATARPIPE_STORE_RETRY_MAX_S": "0.05"}  # fmt: skip


def test_metadata_store_gone_mid_run_is_a_typed_error_then_resume_completes(tmp_path, standing_photo) -> None:
    """The embedded metadata store (montydb on sqlite under AVATARPIPE_HOME/metadata) goes away
    while the fit computes: the test moves its directory (as an unmounted or lost volume would),
    and brings it back only after the run has ended. The run ends in STORE_UNAVAILABLE (never an
    empty store read as "no such upload", never a fresh empty repository made in its place),
    nothing is reported as an artifact, and once the directory is back `resume` completes it."""
    env = {**FAST_RETRY, **STORE_GIVES_UP_FAST}
    with isolated_home(tmp_path / "home", **env) as settings:
        metadata, away = settings.metadata_dir, settings.metadata_dir.with_name("metadata.away")
        proc = popen_cli(["run", str(standing_photo), "--subject", "store-gone", "--json"], settings.home, env)
        assert _wait_for_worker(settings.home, proc), "the fit never started"
        metadata.rename(away)
        try:
            out, err = proc.communicate(timeout=1200)
            assert not metadata.exists(), "a fresh, empty repository was made in place of the vanished one"
        finally:
            away.rename(metadata)
        assert out.strip(), err[-4000:]  # a typed answer, not a traceback
        answer = json.loads(out)
        assert proc.returncode == 1 and answer["status"] == "failed", (answer, err[-2000:])
        assert answer["error"]["code"] == "STORE_UNAVAILABLE", answer
        assert answer["artifacts"] == {}  # nothing half-written reported as an artifact
        upload_id = answer["upload_id"]
        state = ledger(settings, upload_id)
        assert "smplx_params" not in state.current  # the fit's result was never recorded
        from dagster import DagsterInstance, RunsFilter

        instance = DagsterInstance.get()
        runs = instance.get_run_records(RunsFilter(tags={"dagster/partition": upload_id}))
        assert [r.dagster_run.status.value for r in runs] == ["FAILURE"]
        failed = [e for e in instance.all_logs(runs[0].dagster_run.run_id) if e.is_dagster_event and e.dagster_event
                  and e.dagster_event.event_type_value == "STEP_FAILURE"]  # fmt: skip
        assert [e.dagster_event.step_key for e in failed] == ["smplx_params"]  # the step that had to record the fit
        retried = " ".join(str(e.dagster_event.event_specific_data) for e in instance.all_logs(runs[0].dagster_run.run_id)
                           if e.is_dagster_event and e.dagster_event and e.dagster_event.step_key == "smplx_params"
                           and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY")  # fmt: skip
        assert "RepositoryUnavailable" in retried or "STORE_UNAVAILABLE" in retried, retried[:2000]  # why it failed
        resumed = cli_subprocess(["resume", upload_id, "--json"], settings.home, env)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        _assert_complete_and_consistent(settings, upload_id)
