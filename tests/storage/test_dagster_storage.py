"""Dagster's instance storage on both backends (sqlite and PostgreSQL): avatarpipe's configuration
puts it where it says, the erasure's SQL scan reads every table of it, and the per-partition
deletion (+ VACUUM FULL on Postgres) leaves no row naming the upload."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, DynamicPartitionsDefinition, asset, materialize

from ops.erasure_stores import erase_dagster, partition_run_ids, vacuum_postgres
from ops.verification import Needles, dagster_sql_connections, scan_sql
from orchestration.settings import Settings, prepare_environment
from tests.backends.fixtures import BACKENDS, use_backend

UPLOAD = "u_storage0a1b2c3d"
uploads = DynamicPartitionsDefinition(name="uploads")


@asset(partitions_def=uploads)
def probe(context) -> int:
    context.add_output_metadata({"upload": context.partition_key})
    return 1


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_instance_storage_scan_and_erase(backend_name, avatar_home, request, monkeypatch):
    backend = use_backend(backend_name, request, monkeypatch)
    settings = Settings.from_env()
    prepare_environment(settings)
    needles = Needles("subject-not-in-dagster", (UPLOAD,))
    with DagsterInstance.get() as instance:
        expected = "PostgresRunStorage" if backend.postgres else "SqliteRunStorage"
        assert type(instance.run_storage).__name__ == expected
        instance.add_dynamic_partitions("uploads", [UPLOAD, "u_other"])
        assert materialize([probe], partition_key=UPLOAD, instance=instance, tags={"avatarpipe/upload_id": UPLOAD}).success
        assert materialize([probe], partition_key="u_other", instance=instance).success

        hits, counters = scan_sql("dagster", dagster_sql_connections(instance), needles)
        tables = {h.location for h in hits}
        assert {"sql:runs", "sql:run_tags", "sql:event_logs", "sql:dynamic_partitions"} <= tables, tables
        assert counters["sql_tables"] >= 15

        counts = erase_dagster(instance, [UPLOAD], partition_run_ids(instance, [UPLOAD]), "uploads")
        assert counts["runs"] == 1 and counts["partitions"] == 1
        if backend.postgres:
            assert vacuum_postgres(instance.run_storage.postgres_url, "dagster")["tables_vacuumed"] >= 10
        assert scan_sql("dagster", dagster_sql_connections(instance), needles)[0] == []
        assert instance.get_dynamic_partitions("uploads") == ["u_other"]  # the other upload stays
    if backend.postgres:
        assert backend.server is not None
        dump = backend.server.dump(backend.databases["dagster"])
        assert UPLOAD.encode() not in dump and b"u_other" in dump
    backend.drop()
