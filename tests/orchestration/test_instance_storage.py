"""The embedded instance's storage (`orchestration.instance_storage`, named by the repo's
dagster.yaml): Dagster's sqlite files and records, with far fewer SQLite connections per run,
safe across a fork, and a bounded number of open run databases."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, asset, materialize
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from sqlalchemy import event
from sqlalchemy.engine import Engine

from orchestration import instance_storage
from orchestration.instance_storage import PooledSqliteEventLogStorage

REPO = Path(__file__).resolve().parents[2]


@asset
def tiny() -> int:
    return 1


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    return dagster_home


def _connections_of_a_run(instance: DagsterInstance) -> int:
    """SQLite connections opened to the event log's databases (`history/runs/*.db`) by one run."""
    opened = []

    def count(dbapi_connection, _record) -> None:
        path = dbapi_connection.execute("PRAGMA database_list").fetchall()[0][2]
        if Path(path).parent.name == "runs":
            opened.append(path)

    event.listen(Engine, "connect", count)
    try:
        assert materialize([tiny], instance=instance).success
    finally:
        event.remove(Engine, "connect", count)
    return len(opened)


def test_the_repos_instance_keeps_dagsters_sqlite_files_and_opens_far_fewer_connections(home, tmp_path) -> None:
    with DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        _connections_of_a_run(instance)  # the first run makes the index's tables
        pooled = _connections_of_a_run(instance)
        run = instance.get_runs(limit=1)[0]
        records = instance.get_records_for_run(run.run_id).records
        kinds = {r.event_log_entry.dagster_event_type for r in records if r.event_log_entry.is_dagster_event}
        assert kinds >= {DagsterEventType.RUN_SUCCESS, DagsterEventType.ASSET_MATERIALIZATION}
        assert instance.get_latest_materialization_event(tiny.key) is not None  # the cross-run index
    # Dagster's own layout: the stock storage reads what the pooled one wrote
    assert (home / "history" / "runs.db").is_file() and (home / "history" / "runs" / "index.db").is_file()
    assert (home / "history" / "runs" / f"{run.run_id}.db").is_file()
    stock_home = tmp_path / "stock"
    stock_home.mkdir()
    (stock_home / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir: " + str(home) + "\n")
    with DagsterInstance.from_config(str(stock_home)) as stock:
        assert len(stock.get_records_for_run(run.run_id).records) == len(records)
        _connections_of_a_run(stock)
        stock_connections = _connections_of_a_run(stock)
    assert pooled <= 2, pooled  # the new run's database, at most one more
    assert stock_connections >= 10, stock_connections


def _entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None, level=logging.INFO, user_message=message, run_id=run_id, timestamp=time.time()
    )


def test_a_forked_child_writes_through_its_own_connections(home) -> None:
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.store_event(_entry("forkrun", "parent before"))
        pid = os.fork()
        if pid == 0:  # the child: the parent's pooled connection must not be used here
            try:
                storage.store_event(_entry("forkrun", "child"))
                os._exit(0)
            except BaseException:  # noqa: BLE001 - any failure is the child's exit status
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        storage.store_event(_entry("forkrun", "parent after"))
        messages = [r.event_log_entry.user_message for r in storage.get_records_for_run("forkrun").records]
        assert messages == ["parent before", "child", "parent after"]


def test_only_the_recent_run_databases_stay_open(home, monkeypatch) -> None:
    monkeypatch.setattr(instance_storage, "MAX_OPEN_SHARDS", 2)
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        for n in range(5):
            storage.store_event(_entry(f"run{n}", "hello"))
        assert list(storage._engines) == ["run3", "run4"]  # the least recently used were dropped
        assert [r.event_log_entry.user_message for r in storage.get_records_for_run("run0").records] == ["hello"]
