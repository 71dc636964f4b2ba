"""The warm placement for real: Dagster assets materialised in real (ephemeral) instances hand
their step to long-lived `ops.warm_worker` processes through `PipesWarmWorkerClient`; the
workers load the real models once and run the real steps on a real photo's inputs.

- a step gives the same bytes as in the subprocess placement, and the worker serves the next
  step without a new process;
- two concurrent requests are served at once, by two worker processes;
- a worker killed with SIGKILL mid-step fails that step with WORKER_LOST, the orchestrating
  process carries on, nothing is recorded, and the next step starts a fresh worker;
- an idle worker exits by itself and removes its socket and state file.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from orchestration.compute import ComputeLauncherResource
from orchestration.compute_warm import WarmPool, _pid_alive
from storage.object_store import LocalObjectStore
from tests.ops.inputs import RealInputs, real_inputs, store_fit_inputs
from tests.ops.test_worker_pipes import _failure_metadata, _materialize, _metadata, _request


@pytest.fixture(scope="module")
def inputs(standing_photo: Path) -> RealInputs:
    return real_inputs(standing_photo)


def warm(directory: Path, workers: int = 2, idle_s: float = 600.0) -> ComputeLauncherResource:
    return ComputeLauncherResource(
        mode="warm", warm_dir=str(directory), warm_workers=workers, warm_idle_s=idle_s
    )


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("warm") / "worker"
    yield directory
    warm(directory).warm_pool().stop()


def _keypoints_request(store: LocalObjectStore, inputs: RealInputs, upload: str = "u_test"):
    from tests.ops.inputs import put

    photo_key = put(store, "s_test", upload, "photo", inputs.photo_png, "png")
    return replace(_request(store, "keypoints", {"photo": photo_key}), upload_id=upload)


def test_a_step_gives_the_subprocess_bytes_and_the_worker_stays(tmp_path, inputs, pool_dir) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    request = _keypoints_request(store, inputs)
    cold, _ = _materialize(ComputeLauncherResource(mode="subprocess", heavy_steps=["keypoints"]), request)
    launcher = warm(pool_dir)
    first, logs = _materialize(launcher, request)
    second, _ = _materialize(launcher, request)

    assert cold.success and first.success and second.success
    cold_meta, first_meta, second_meta = _metadata(cold), _metadata(first), _metadata(second)
    assert first_meta["placement"] == "warm" and first_meta["worker"] == "ops.worker"
    assert first_meta["sha256"] == cold_meta["sha256"] == second_meta["sha256"]  # same bytes
    assert first_meta["result"]["extra_files"] == cold_meta["result"]["extra_files"]  # the mask too
    assert first_meta["worker_pid"] == second_meta["worker_pid"] != cold_meta["worker_pid"]
    assert any("compute: step keypoints runs warm" in line for line in logs)
    assert any("worker: step keypoints" in line for line in logs)  # the worker's log, through Pipes
    (slot,) = [s for s in launcher.warm_pool().status() if s.alive]
    assert slot.served == 2 and slot.failed == 0 and slot.pid == first_meta["worker_pid"]
    assert 0 < (slot.peak_rss_mb or 0) < 2048  # the memory bound per worker


def test_two_concurrent_requests_are_served_at_once(tmp_path, inputs, pool_dir) -> None:
    launcher = warm(pool_dir, workers=2)
    results: dict[str, object] = {}

    def materialise(upload: str) -> None:
        store = LocalObjectStore(tmp_path / upload)
        results[upload] = _materialize(launcher, _keypoints_request(store, inputs, upload))[0]

    threads = [threading.Thread(target=materialise, args=(u,)) for u in ("u_first", "u_second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.success for r in results.values())
    pids = {_metadata(r)["worker_pid"] for r in results.values()}
    # a client takes a warm, free slot first: a second process served only because the first was busy
    assert len(pids) == 2
    assert {s.pid for s in launcher.warm_pool().status() if s.alive} == pids


def test_a_worker_killed_mid_step_fails_the_step_typed_and_the_next_starts_fresh(tmp_path, inputs) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    directory = tmp_path / "worker"
    launcher = warm(directory, workers=1)
    pool: WarmPool = launcher.warm_pool()
    pool.start()
    (slot,) = pool.status()
    victim = slot.pid
    fit_request = _request(store, "smplx_params", store_fit_inputs(store, "s_test", "u_test", inputs))
    outcome: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", _materialize(launcher, fit_request)[0])
    )
    thread.start()
    deadline = time.monotonic() + 300
    while not pool.status()[0].busy:  # the fit is running in the worker
        assert time.monotonic() < deadline and thread.is_alive(), "the step never reached the worker"
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)

    result = outcome["result"]
    assert not result.success  # the step failed; this process, the orchestrator, carries on
    failure = _failure_metadata(result)
    assert failure.user_failure_data.metadata["error_code"].value == "WORKER_LOST"
    assert "exited before answering" in failure.user_failure_data.description
    assert list(store.list_keys("subjects/s_test/u_test/smplx_params/")) == []  # nothing half-written

    # The next request starts a fresh worker (here one that exits when idle for 3 s).
    short_lived = warm(directory, workers=1, idle_s=3)
    again, _ = _materialize(short_lived, _keypoints_request(store, inputs))
    assert again.success
    fresh = _metadata(again)["worker_pid"]
    assert fresh != victim and _pid_alive(fresh)
    deadline = time.monotonic() + 60
    while _pid_alive(fresh):
        assert time.monotonic() < deadline, "the idle worker did not exit"
        time.sleep(0.2)
    assert not (directory / "slot-0.sock").exists() and not (directory / "slot-0.json").exists()
    assert [s.alive for s in short_lived.warm_pool().status()] == [False]


def test_a_worker_without_pipes_parameters_answers_not_ok_and_lives_on(pool_dir) -> None:
    pool = warm(pool_dir).warm_pool()
    with pool.slot() as slot:
        pid = pool.ensure_worker(slot)
        answer = pool.request(slot, {"op": "step", "bootstrap": {}})
        assert answer == {"ok": False, "error": "the request carries no Dagster Pipes bootstrap parameters"}
        assert pool.request(slot, {"op": "ping"})["pid"] == pid


def test_an_unauthenticated_client_is_refused(pool_dir) -> None:
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    pool = warm(pool_dir).warm_pool()
    pool.start(1)
    with pytest.raises(AuthenticationError):
        Client(str(pool.socket_path(0)), family="AF_UNIX", authkey=b"not the token")
    assert pool.status()[0].alive  # and the worker serves on


def test_a_client_that_never_answers_the_challenge_does_not_hold_up_others(pool_dir) -> None:
    """A connection that sends nothing (the challenge unanswered) neither blocks the accept loop
    nor keeps its thread: a real client is served at once, and the silent one is dropped after
    the handshake deadline."""
    import socket

    from ops.warm_worker import HANDSHAKE_TIMEOUT_S

    pool = warm(pool_dir).warm_pool()
    pool.start(1)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(pool.socket_path(0)))
    try:
        answers: list[dict] = []
        client = threading.Thread(target=lambda: answers.append(pool.request(0, {"op": "ping"})), daemon=True)
        client.start()
        client.join(HANDSHAKE_TIMEOUT_S / 2)  # served while the silent one still holds its handshake
        assert answers and answers[0]["pid"] == pool.alive_pid(0)
        silent.settimeout(HANDSHAKE_TIMEOUT_S + 20)
        received = b""
        while chunk := silent.recv(4096):  # the challenge, then EOF when the worker gives up
            received += chunk
        assert b"#CHALLENGE#" in received
    finally:
        silent.close()
    assert pool.status()[0].alive


def test_a_worker_runs_the_clients_code_whatever_the_working_directory(tmp_path, monkeypatch) -> None:
    """`python -m ops.warm_worker` imports from the working directory first: started from another
    checkout (here a decoy `ops` package that exits at once) it must still run the client's
    code, or its fingerprint never matches and every step replaces it."""
    decoy = tmp_path / "elsewhere" / "ops"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "warm_worker.py").write_text("raise SystemExit('decoy ops.warm_worker')\n")
    monkeypatch.chdir(decoy.parent)
    pool = warm(tmp_path / "worker", workers=1, idle_s=30).warm_pool()
    try:
        (status,) = pool.start(1)
        assert status.alive and status.ready and status.current
    finally:
        pool.stop()


ROTATING_PROCESS = """
import sys
from pathlib import Path
from ops.warm_worker import rotate_log
log = Path(sys.argv[1])
print("x" * 2000, file=sys.stderr, flush=True)
print("rotated" if rotate_log(log, 1000) else "kept", file=sys.stderr, flush=True)
print("after", flush=True)
print("again" if rotate_log(log, 1000) else "kept", file=sys.stderr, flush=True)
"""


def test_a_worker_log_above_its_limit_is_rotated_under_the_running_process(tmp_path) -> None:
    """What a warm worker does with `slot-N.log` (its stdout and stderr, also native libraries'):
    above the limit the file moves to `.1` and both descriptors write to a fresh one."""
    import subprocess
    import sys

    log = tmp_path / "slot-0.log"
    with open(log, "ab") as fh:
        subprocess.run([sys.executable, "-c", ROTATING_PROCESS, str(log)], stdout=fh, stderr=fh, check=True,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    older = (tmp_path / "slot-0.log.1").read_text()
    assert older.startswith("x" * 2000) and "after" not in older
    assert log.read_text().split() == ["rotated", "after", "kept"]


RUN_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from orchestration.app import body_hints, ingest_photo, metadata_store, prepared_settings, run_avatar_job
settings = prepared_settings()
assert body_hints("feminine", 170.0, "adult") == {"build": "feminine", "height_cm": 170.0, "age_group": "adult"}
photo = Path(sys.argv[1])
ingested = ingest_photo(settings, photo.read_bytes(), photo.name, None)
run_avatar_job(settings, ingested.upload_id)
with metadata_store(settings) as store:
    status = store.get_upload(ingested.upload_id)["status"]
heavy = sorted(m for m in ("torch", "mediapipe", "great_expectations", "trimesh") if m in sys.modules)
print(json.dumps({"status": status, "heavy": heavy}))
"""


def test_a_whole_run_in_warm_mode_keeps_the_science_and_gx_out_of_the_run_process(tmp_path, standing_photo) -> None:
    """All five steps and the three quality gates in the warm worker: the avatar is ready, and
    the process that ran the Dagster run (and validated the uploader's hints) never imported
    torch, MediaPipe, trimesh or GX."""
    import json
    import subprocess
    import sys

    env = os.environ | {"AVATARPIPE_HOME": str(tmp_path / "home"), "AVATARPIPE_COMPUTE_MODE": "warm",
                        "AVATARPIPE_WARM_WORKERS": "1", "AVATARPIPE_WARM_IDLE_S": "30"}  # fmt: skip
    env.pop("DAGSTER_HOME", None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUN_IN_A_FRESH_PROCESS, str(standing_photo)],
            env=env, capture_output=True, text=True, timeout=1200, check=True,
        )  # fmt: skip
    finally:
        warm(tmp_path / "home" / "worker", workers=1).warm_pool().stop()
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"status": "ready", "heavy": []}


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def test_a_worker_keeps_one_validator_process_that_never_outlives_it(tmp_path) -> None:
    from tests.quality.test_glb_quality import VALIDATOR_INSTALLED, _missing

    if not VALIDATOR_INSTALLED:
        _missing("npm gltf-validator is not installed in clients/node_modules")
    pool = warm(tmp_path / "worker", workers=1).warm_pool()
    (slot,) = pool.start()
    validators = [pid for pid, cmd in _children(slot.pid) if "validate_server.mjs" in cmd]
    assert len(validators) == 1, _children(slot.pid)  # started at the warm-up, before any check
    os.kill(slot.pid, signal.SIGKILL)  # no clean exit: the validator sees its stdin close
    deadline = time.monotonic() + 30
    while _pid_alive(validators[0]):
        assert time.monotonic() < deadline, "the validator outlived its worker"
        time.sleep(0.1)
