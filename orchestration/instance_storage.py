"""The embedded Dagster instance's SQLite storage, with the event log's connections kept open.

Dagster's `SqliteEventLogStorage` opens a new SQLite connection (a new engine with `NullPool`)
for every write, and for every `has_table` question, and closes it afterwards. A warm
`avatarpipe run` stores 67 events through about 220 such connections. Closing the last connection
to a WAL database checkpoints the WAL into the database and syncs it, so each one costs about
15 ms of wall time on this machine's disk: seconds per run, more than some of the steps.

`PooledSqliteStorage` is Dagster's `DagsterSqliteStorage` (the same files, directories and
schema: `$DAGSTER_HOME/history/runs.db`, `history/runs/<run id>.db` and `index.db`,
`schedules/`) with one change: the event log keeps one engine with a small connection pool per
database it writes (and one for `has_table`), so a write is an insert and a commit. The durability is unchanged: SQLite's
default `synchronous=FULL` still syncs every commit, and the WAL is still checkpointed, by
SQLite's automatic checkpoint. Only the most recently used ``MAX_OPEN_SHARDS`` run databases
keep an engine, so a long-lived webserver or daemon does not collect one per run. A forked child
(the CLI's batch) drops its parent's connections unclosed and opens its own: an SQLite
connection must not cross a fork.

dagster.yaml names it as the instance's storage (`storage: custom:`), so every process that
loads the instance (the CLI, `dagster dev`, the daemon, a run worker) uses the same storage.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection, Engine

MAX_OPEN_SHARDS = 8  # run databases with an open engine (plus the index), least recently used dropped
SQLITE_BUSY_TIMEOUT_S = 120  # as Dagster's SQLITE_BUSY_TIMEOUT_SECONDS for the event log


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` whose connections to each database are pooled, not reopened."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._probe: tuple[int, Engine] | None = None  # (pid, the index's engine for `has_table`)
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Any) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine (made on first use); called with ``_db_lock`` held."""
        if self._engines_pid != os.getpid():  # forked: the parent's connections are not ours
            for engine in self._engines.values():
                engine.dispose(close=False)
            self._engines.clear()
            self._engines_pid = os.getpid()
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        self._engines[shard] = engine  # the most recently used last
        runs = [name for name in self._engines if name != INDEX_SHARD_NAME]  # the least recently used first
        for name in runs[: max(len(runs) - MAX_OPEN_SHARDS, 0)]:
            self._engines.pop(name).dispose()
        return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        """Dagster's `_connect` (one lock, the shard's schema made once, one transaction) on the
        shard's kept engine instead of a new one."""
        with self._db_lock:
            engine = self._engine(str(shard))
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """Dagster's `has_table` (asked around asset events, some of them while a write holds
        ``_db_lock``, so not under that lock) on one kept engine for the index instead of a new one."""
        if self._probe is None or self._probe[0] != os.getpid():
            if self._probe is not None:
                self._probe[1].dispose(close=False)  # forked: the parent's connection is not ours
            engine = create_engine(
                self.conn_string_for_shard(INDEX_SHARD_NAME), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
            )
            self._probe = (os.getpid(), engine)
        engine = self._probe[1]
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))

    def dispose(self) -> None:
        if self._probe is not None:
            self._probe[1].dispose()
            self._probe = None
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()


class PooledSqliteStorage(DagsterSqliteStorage):
    """`DagsterSqliteStorage` (`storage: sqlite:` in dagster.yaml) with the pooled event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Any) -> PooledSqliteStorage:  # ty: ignore[invalid-method-override]
        return cls.from_local(inst_data=inst_data, **config_value)
