"""Uploads through the ingestion sensor and the Dagster run queue, for real: raw photos land in
the local upload folder, `dagster-daemon run` (the sensor daemon, the queued run coordinator's
daemon and the default run launcher) registers each upload, requests one run, starts at most
`AVATARPIPE_MAX_CONCURRENT_RUNS` at a time, and each run's steps go to the warm workers. Every
upload completes exactly once. The full-size measurement is `benchmarks/queue_throughput.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from benchmarks.queue_throughput import run_queue
from orchestration.settings import Settings, prepare_environment


def test_the_instance_config_carries_the_configured_run_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAGSTER_HOME", "AVATARPIPE_HOME", "AVATARPIPE_CACHE", "ANNY_CACHE_DIR", "AVATARPIPE_DERIVED_DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever prepare_environment sets
    monkeypatch.setenv("AVATARPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVATARPIPE_MAX_CONCURRENT_RUNS", "5")
    settings = Settings.from_env()
    prepare_environment(settings)
    instance = DagsterInstance.from_config(str(settings.dagster_home))
    config = instance.run_coordinator.get_run_queue_config()
    assert config.max_concurrent_runs == 5
    assert [(limit["key"], limit["limit"]) for limit in config.tag_concurrency_limits] == [("avatarpipe/upload_id", 1)]
    monkeypatch.setenv("AVATARPIPE_MAX_CONCURRENT_RUNS", "3")  # a changed limit rewrites the instance config
    prepare_environment(Settings.from_env())
    assert DagsterInstance.from_config(str(settings.dagster_home)).run_coordinator.get_run_queue_config().max_concurrent_runs == 3


def test_queued_uploads_all_complete_once_each_within_the_limit(tmp_path: Path, standing_photo: Path) -> None:
    result = run_queue(3, standing_photo, tmp_path / "home", mode="warm", max_concurrent_runs=2, warm_workers=2, timeout_s=1500)
    assert not result.timed_out
    assert result.statuses == {"ready": 3}
    assert result.runs_per_upload == {"1": 3}  # none lost, none duplicated
    assert result.run_statuses == {"SUCCESS": 3}
    assert 1 <= result.max_in_flight <= 2  # the queue's limit held
    assert len(result.peak_rss_mb["warm_worker"]) == 2
    assert all(0 < rss < 2048 for rss in result.peak_rss_mb["warm_worker"])
