"""Two runners on one upload end in one consistent result: the upload lease
(`storage/lease.py`) lets exactly one in, takes over at once from a holder that died, and
waits out (or refuses) a live one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from orchestration.app import ASSET_ORDER, ingest_photo
from storage.lease import UploadBusy, UploadLease
from storage.metadata_store import open_metadata_store
from tests.reliability.helpers import fsck_report, isolated_home, ledger, popen_cli

RAW = "subjects/s1/u1/raw/0123456789abcdef.png"

_CONTENDER = """
import json, sys, time
from pathlib import Path
from storage.metadata_store import open_metadata_store
store = open_metadata_store(None, Path(sys.argv[1]))
holder = {"token": sys.argv[2], "host": "contender", "pid": 0}
early = time.time() < float(sys.argv[3])
while time.time() < float(sys.argv[3]):
    time.sleep(0.001)
print(json.dumps([early, store.acquire_upload_lease("u1", holder, 60.0) is not None]))
"""

_DIES_HOLDING = """
import os, signal, sys
from pathlib import Path
from storage.lease import UploadLease
from storage.metadata_store import open_metadata_store
store = open_metadata_store(None, Path(sys.argv[1]))
UploadLease(store, "u1", run_id="run-of-the-dead", ttl_s=3600).acquire()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def metadata_dir(tmp_path) -> Path:
    path = tmp_path / "metadata"
    store = open_metadata_store(None, path)
    store.create_upload("u1", "s1", RAW, "1")
    store.close()
    return path


def _python(code: str, *args: str) -> subprocess.Popen:
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_only_one_of_many_processes_gets_the_lease(metadata_dir):
    start_at = time.time() + 8.0  # all contenders import first, then try at the same instant
    procs = [_python(_CONTENDER, str(metadata_dir), f"token-{i}", str(start_at)) for i in range(6)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        early, won = json.loads(out)
        assert early  # it was ready before the start: the attempts really raced
        results.append(won)
    assert results.count(True) == 1
    store = open_metadata_store(None, metadata_dir)
    winner = store.upload_lease("u1")["token"]
    store.close()
    assert winner == f"token-{results.index(True)}"


def test_a_dead_holder_is_taken_over_at_once(metadata_dir):
    proc = _python(_DIES_HOLDING, str(metadata_dir))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    store = open_metadata_store(None, metadata_dir)
    try:
        assert store.upload_lease("u1")["run_id"] == "run-of-the-dead"  # an hour left on it
        start = time.perf_counter()
        with UploadLease(store, "u1", purpose="test") as lease:
            assert [b.run_id for b in lease.broken] == ["run-of-the-dead"]
            assert store.upload_lease("u1")["token"] == lease.token
        assert time.perf_counter() - start < 30  # not the hour: the holder's pid is gone
        assert store.upload_lease("u1") is None  # released on exit
    finally:
        store.close()


def test_a_live_holder_elsewhere_is_waited_out_until_its_lease_expires(metadata_dir):
    store = open_metadata_store(None, metadata_dir)
    try:
        remote = {"token": "remote", "host": "another-machine", "pid": 1}
        assert store.acquire_upload_lease("u1", remote, ttl_s=1.5) is not None
        with pytest.raises(UploadBusy) as busy:
            UploadLease(store, "u1").acquire()
        assert busy.value.holder["host"] == "another-machine"
        with UploadLease(store, "u1", wait_s=30, poll_s=0.1) as lease:  # expires, then it is ours
            assert lease.broken == []
            assert store.upload_lease("u1")["token"] == lease.token
    finally:
        store.close()


def test_heartbeat_keeps_a_long_run_s_lease(metadata_dir):
    store = open_metadata_store(None, metadata_dir)
    try:
        with UploadLease(store, "u1", ttl_s=0.6):
            time.sleep(2.0)  # three lease lifetimes: renewals keep it
            with pytest.raises(UploadBusy):
                UploadLease(store, "u1").acquire()
    finally:
        store.close()


# -- two `avatarpipe resume` of one upload at the same time --------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with isolated_home(tmp_path_factory.mktemp("concurrency_home")) as settings:
        yield settings


@pytest.mark.slow
def test_concurrent_runs_of_one_upload_end_in_one_result(home, standing_photo):
    ingested = ingest_photo(home, standing_photo.read_bytes(), standing_photo.name, "twice")
    first = popen_cli(["resume", ingested.upload_id, "--json", "--wait", "900"], home.home)
    second = popen_cli(["resume", ingested.upload_id, "--json", "--wait", "900"], home.home)

    # while one of them works, an impatient third is told the upload is busy
    metadata = open_metadata_store(None, home.metadata_dir)
    deadline = time.time() + 300
    while metadata.upload_lease(ingested.upload_id) is None:
        assert time.time() < deadline and first.poll() is None and second.poll() is None
        time.sleep(0.2)
    metadata.close()
    third = popen_cli(["resume", ingested.upload_id, "--json"], home.home)
    out, err = third.communicate(timeout=300)
    assert third.returncode == 3, err[-2000:]
    busy = json.loads(out)
    assert busy["status"] == "busy" and busy["error"]["code"] == "UPLOAD_BUSY"

    answers = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        answers.append(json.loads(out))
    assert sorted(a["resume"]["action"] for a in answers) == ["nothing_to_do", "resumed"]
    assert all(a["status"] == "ready" for a in answers)

    runs = DagsterInstance.get().get_runs(RunsFilter(tags={"avatarpipe/upload_id": ingested.upload_id}))
    assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS]  # exactly one run did the work
    state = ledger(home, ingested.upload_id)
    assert [d["asset_key"] for d in state.docs] == list(ASSET_ORDER)  # once each
    assert state.upload["status"] == "ready" and state.upload["lease"] is None
    assert fsck_report(home).clean
    assert os.environ.get("AVATARPIPE_FAULT_KILL_AT") is None
