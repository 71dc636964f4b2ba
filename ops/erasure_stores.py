"""Per-store deletion steps of an erasure (see ops/erasure.py): Dagster, MLflow, sqlite files.

Every function is idempotent: run again after a crash it finds less (or nothing) to delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ops.verification import Needles, mlflow_run_texts

# MLflow tags that mark a run as holding one subject's data. Anything that logs per-upload
# runs must set them (the upload id is opaque; the subject id is personal data and is found
# by the erasure's full scan of tags/params/metrics/artifact paths as well).
MLFLOW_TAG_UPLOAD = "avatarpipe.upload_id"
MLFLOW_TAG_SUBJECT = "avatarpipe.subject_id"

_UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
SQLITE_HEADER = b"SQLite format 3\x00"


# -- Dagster -----------------------------------------------------------------------------


def partition_run_ids(instance: Any, upload_ids: Iterable[str]) -> set[str]:
    """Runs of the upload partitions: tagged `dagster/partition` or `avatarpipe/upload_id`."""
    from dagster import RunsFilter

    found: set[str] = set()
    for upload_id in upload_ids:
        for tag in ("dagster/partition", "avatarpipe/upload_id"):
            found |= {r.dagster_run.run_id for r in instance.get_run_records(RunsFilter(tags={tag: upload_id}))}
    return found


def cancel_unfinished_runs(instance: Any, run_ids: Iterable[str]) -> list[str]:
    """Ask the run launcher to terminate unfinished runs, then mark them canceled."""
    canceled = []
    for run_id in sorted(run_ids):
        run = instance.get_run_by_id(run_id)
        if run is None or run.status.value not in _UNFINISHED:
            continue
        with contextlib.suppress(Exception):  # in-process runs have no launcher handle
            instance.run_launcher.terminate(run_id)
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status.value in _UNFINISHED:
            instance.report_run_canceled(run, message="canceled: the subject's data is being erased")
        canceled.append(run_id)
    return canceled


def erase_dagster(instance: Any, upload_ids: list[str], run_ids: Iterable[str], partitions_def: str) -> dict[str, int]:
    """Delete the partitions' runs (their event records), compute logs, run shards, check
    executions, sensor ticks and backfills naming them, cached asset rows pointing at them, and
    the dynamic partitions themselves. Returns counts."""
    runs = sorted(set(run_ids) | partition_run_ids(instance, upload_ids))
    counts = {"runs": 0, "compute_log_dirs": 0, "run_shards": 0}
    for run_id in runs:
        instance.compute_log_manager.delete_logs(prefix=[run_id])
        counts["compute_log_dirs"] += _remove_run_storage_dir(instance, run_id)
        if instance.get_run_by_id(run_id) is not None:
            counts["runs"] += 1
        instance.delete_run(run_id)  # run row + tags, then its events (shard and index)
        counts["run_shards"] += _remove_run_shard(instance, run_id)
    counts["check_executions"] = _delete_check_executions(instance, runs, upload_ids)
    counts["asset_rows_repaired"] = _repair_asset_rows(instance, runs, upload_ids)
    counts["ticks"] = _delete_rows_naming(instance.schedule_storage, "ticks", upload_ids)
    counts["backfills"] = _delete_rows_naming(instance.run_storage, "backfills", upload_ids)
    existing = set(instance.get_dynamic_partitions(partitions_def))
    counts["partitions"] = 0
    for upload_id in upload_ids:
        if upload_id in existing:
            instance.delete_dynamic_partition(partitions_def, upload_id)
            counts["partitions"] += 1
    return counts


def _remove_run_storage_dir(instance: Any, run_id: str) -> int:
    """The local compute log manager keeps `<base_dir>/<run_id>/compute_logs`: drop the folder."""
    base = getattr(instance.compute_log_manager, "_base_dir", None)
    if not base:
        return 0
    folder = Path(base) / run_id
    if folder.is_dir():
        shutil.rmtree(folder)
        return 1
    return 0


def _remove_run_shard(instance: Any, run_id: str) -> int:
    """The sqlite event log keeps one database per run: `delete_run` empties it, this removes it."""
    path_for_shard = getattr(instance.event_log_storage, "path_for_shard", None)
    if path_for_shard is None:
        return 0
    removed = 0
    base = Path(path_for_shard(run_id))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{base}{suffix}").unlink()
            removed = 1
    return removed


def _delete_check_executions(instance: Any, run_ids: list[str], upload_ids: list[str]) -> int:
    """`delete_run` leaves `asset_check_executions` rows (partition key, evaluation event)."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as T

    storage = instance.event_log_storage
    if not storage.has_table("asset_check_executions"):
        return 0
    with storage.index_connection() as conn:
        result = conn.execute(T.delete().where(db.or_(T.c.run_id.in_(run_ids), T.c.partition.in_(upload_ids))))
        return int(result.rowcount or 0)


def _repair_asset_rows(instance: Any, run_ids: list[str], upload_ids: list[str]) -> int:
    """`asset_keys` caches each asset's last materialisation (a serialised event naming the
    partition) and status: point it at the newest remaining materialisation (or nothing) and
    wipe the cached status, which Dagster recomputes."""
    import sqlalchemy as db
    from dagster import AssetRecordsFilter
    from dagster._core.storage.event_log.schema import AssetKeyTable as T
    from dagster._serdes import serialize_value

    storage = instance.event_log_storage
    needles = [*run_ids, *upload_ids]
    repaired = 0
    keys = list(instance.get_asset_keys())
    with storage.index_connection() as conn:
        rows = conn.execute(db.select(T.c.id, T.c.asset_key, T.c.last_materialization, T.c.last_run_id)).fetchall()
    stale = [row for row in rows if any(n in f"{row[2] or ''}{row[3] or ''}" for n in needles)]
    by_string = {key.to_string(): key for key in keys}
    for row_id, key_string, _, _ in stale:
        asset_key = by_string.get(key_string)
        latest = None
        if asset_key is not None:
            found = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset_key), limit=1).records
            latest = found[0] if found else None
        values = {
            "last_materialization": serialize_value(latest) if latest else None,
            "last_run_id": latest.run_id if latest else None,
            "last_materialization_timestamp": None,
            "cached_status_data": None,
        }
        if latest is not None:
            from datetime import UTC, datetime

            values["last_materialization_timestamp"] = datetime.fromtimestamp(latest.timestamp, UTC).replace(tzinfo=None)
        with storage.index_connection() as conn:
            conn.execute(T.update().where(T.c.id == row_id).values(**values))
        repaired += 1
    if keys:
        instance.wipe_asset_cached_status(keys)
    return repaired


def _delete_rows_naming(storage: Any, what: str, upload_ids: list[str]) -> int:
    """Sensor ticks (schedule storage) or backfills (run storage) whose body names a partition.

    Dagster has no API to delete one tick or backfill, so this is a targeted SQL DELETE through
    the storage's own connection (sqlite or Postgres alike). A backfill spanning several
    partitions loses its record entirely; its other partitions' runs are untouched.
    """
    import sqlalchemy as db

    if not upload_ids:
        return 0
    if what == "ticks":
        from dagster._core.storage.schedules.schema import JobTickTable as T

        body = T.c.tick_body
        tag_table = None
    else:
        from dagster._core.storage.runs.schema import BackfillTagsTable
        from dagster._core.storage.runs.schema import BulkActionsTable as T

        body = T.c.body
        tag_table = BackfillTagsTable
    condition = db.or_(*[body.like(f"%{u}%") for u in upload_ids])
    with storage.connect() as conn:
        if tag_table is not None:
            keys = [r[0] for r in conn.execute(db.select(T.c.key).where(condition)).fetchall()]
            if keys:
                conn.execute(tag_table.delete().where(tag_table.c.backfill_id.in_(keys)))
        result = conn.execute(T.delete().where(condition))
        return int(result.rowcount or 0)


# -- MLflow ------------------------------------------------------------------------------


def erase_mlflow(tracking_uri: str, needles: Needles, artifact_root: Path | None = None) -> dict[str, int]:
    """Runs naming the subject or its uploads (tags, params, metrics, artifact paths): delete
    the model versions pointing at them, mark them deleted, then garbage-collect them
    (`mlflow gc`: rows and artifact files). Deleted-but-not-collected runs are found too."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    doomed = [run for run, text in mlflow_run_texts(client) if needles.in_text(text)]
    counts = {"runs": len(doomed), "model_versions": 0}
    for run in doomed:
        run_id = run.info.run_id
        for mv in client.search_model_versions(f"run_id='{run_id}'"):
            client.delete_model_version(mv.name, mv.version)
            counts["model_versions"] += 1
        if run.info.lifecycle_stage != "deleted":
            client.delete_run(run_id)
    if doomed:
        from mlflow.cli import gc

        ids = ",".join(run.info.run_id for run in doomed)
        gc.main(["--backend-store-uri", tracking_uri, "--tracking-uri", tracking_uri, "--run-ids", ids],
                standalone_mode=False)  # fmt: skip
    # gc deletes artifacts at the URI recorded in the run; a home restored or copied to another
    # path keeps them under the local artifact root, in a folder named by the run id
    counts["artifact_dirs"] = 0
    if artifact_root is not None and artifact_root.is_dir():
        names = {run.info.run_id for run in doomed}
        for folder in sorted(p for p in artifact_root.rglob("*") if p.is_dir() and p.name in names):
            if folder.exists():
                shutil.rmtree(folder)
                counts["artifact_dirs"] += 1
    # registered models named or tagged after the subject (their versions go with them)
    counts["registered_models"] = 0
    for model in client.search_registered_models():
        text = f"{model.name}\n{model.description or ''}\n{model.tags}"
        if needles.in_text(text):
            client.delete_registered_model(model.name)
            counts["registered_models"] += 1
    return counts


# -- PostgreSQL ---------------------------------------------------------------------------

# Dagster tables that hold per-partition rows (rewritten by VACUUM FULL after an erasure);
# the others (snapshots, daemon heartbeats, migrations...) never name an upload.
DAGSTER_SUBJECT_TABLES = ("runs", "run_tags", "event_logs", "asset_event_tags", "asset_check_executions",
                          "asset_keys", "dynamic_partitions", "job_ticks", "instigators", "kvs", "bulk_actions",
                          "backfill_tags", "secondary_indexes", "pending_steps", "concurrency_slots",
                          "asset_daemon_asset_evaluations", "jobs")  # fmt: skip
UNREACHABLE_POSTGRES = ("PostgreSQL WAL segments (until checkpoints recycle them) and WAL archives",
                        "PostgreSQL streaming replicas' own copies (until they replay the deletion)",
                        "PostgreSQL backups and snapshots taken before the erasure")  # fmt: skip


def postgres_urls(env: Any) -> dict[str, str]:
    """role (dagster | mlflow) -> the SQLAlchemy URL of each store of ``env`` that is Postgres."""
    urls = {}
    try:
        url = getattr(getattr(env.dagster_instance, "run_storage", None), "postgres_url", None)
    except Exception:  # noqa: BLE001 - an instance that could not be opened: what it was configured with
        from orchestration.config import load_config

        url = load_config().dagster_pg_url
    if url:
        urls["dagster"] = url
    tracking = env.mlflow_tracking_uri or ""
    if tracking.startswith(("postgresql", "postgres:")):
        urls["mlflow"] = tracking
    return urls


def unreachable_copies(env: Any) -> list[str]:
    """What the verification cannot see, for this deployment's stores (goes in the certificate)."""
    found = ["backups or copies of AVATARPIPE_HOME and of the stores taken before the erasure"]
    if postgres_urls(env):
        found += list(UNREACHABLE_POSTGRES)
    if getattr(getattr(env.object_store, "config", None), "bucket", None):
        found.append("S3 cross-region replicas and AWS Backup recovery points of the buckets")
    if getattr(env.metadata, "embedded", True) is False:
        found.append("MongoDB oplog, secondaries' journals and backups")
    return found


def vacuum_postgres(url: str, role: str) -> dict[str, int]:
    """``VACUUM (FULL, ANALYZE)`` of the tables that can hold a subject's rows (all of MLflow's,
    Dagster's per-partition ones): each is rewritten into a new file without the dead rows and
    its statistics (``pg_statistic`` samples values) rebuilt. Takes an ACCESS EXCLUSIVE lock per
    table while it runs. Plain VACUUM only marks dead rows reusable: their bytes stay in the
    table file until overwritten, hence FULL."""
    import sqlalchemy as db

    from orchestration.config import dagster_pg_url

    engine = db.create_engine(dagster_pg_url(url) if role == "dagster" else url, poolclass=db.pool.NullPool,
                              isolation_level="AUTOCOMMIT")  # fmt: skip
    try:
        with engine.connect() as conn:
            tables = db.inspect(conn).get_table_names()
            chosen = [t for t in tables if role != "dagster" or t in DAGSTER_SUBJECT_TABLES]
            for table in chosen:
                conn.execute(db.text(f'VACUUM (FULL, ANALYZE) "{table}"'))
            # ANALYZE replaced the tables' sampled values in pg_statistic, whose old row versions
            # (the erased ids among them) stay in its file until it is rewritten too
            statistics = _vacuum_catalog(conn, "pg_statistic")
            if _is_superuser(conn):  # flushes the rewritten files; old WAL segments can recycle
                conn.execute(db.text("CHECKPOINT"))
    finally:
        engine.dispose()
    return {"tables_vacuumed": len(chosen), "statistics_rewritten": statistics}


def _vacuum_catalog(conn: Any, catalog: str) -> int:
    """VACUUM FULL of a per-database catalog (allowed to the database owner); 0 when refused."""
    import sqlalchemy as db
    from sqlalchemy.exc import DBAPIError

    try:
        conn.execute(db.text(f"VACUUM FULL pg_catalog.{catalog}"))
    except DBAPIError:  # not the owner: the certificate's counts say so (statistics_rewritten=0)
        return 0
    return 1


def _is_superuser(conn: Any) -> bool:
    import sqlalchemy as db

    return bool(conn.execute(db.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar())


# -- sqlite files --------------------------------------------------------------------------


def sqlite_files(root: Path) -> list[Path]:
    """Every sqlite database under ``root`` (found by its header, whatever its name)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError), path.open("rb") as fh:
                if fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                    found.append(path)
    return sorted(found)


def vacuum_sqlite(root: Path) -> dict[str, int]:
    """Checkpoint the WAL and VACUUM every sqlite file under ``root``, so deleted rows do not
    survive in free pages, freelist trunks or the write-ahead log."""
    files = sqlite_files(root)
    before = after = 0
    for path in files:
        before += _size_with_wal(path)
        con = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA secure_delete=ON")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("VACUUM")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        after += _size_with_wal(path)
    return {"files": len(files), "bytes_before": before, "bytes_after": after}


def _size_with_wal(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            total += Path(f"{path}{suffix}").stat().st_size
    return total
