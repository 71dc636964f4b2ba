"""Independent verification that a subject is gone: scan every store for its identifiers.

What is searched (the *needles*): the subject id, each of its upload ids, and the first 16 hex
digits of the sha256 of each of its photos (raw upload and normalised ``photo`` artifact;
object keys embed exactly those 16 digits, full digests start with them). Needles are matched
as UTF-8/ASCII bytes, hex digests in lower case.

Where (each store through its own API, plus the bytes on disk):

* object store: every current key, and on S3 every version and delete marker;
* MongoDB: every document of every collection;
* MLflow: every experiment, run (deleted ones too), tag, param, metric, artifact path,
  registered model and model version;
* Dagster: every run's tags and config, the ``uploads`` dynamic partitions, and the
  materialisations, observations and check executions of the subject's partitions; then
  *every row of every table* of its run, event-log and schedule storages through their own SQL
  connections (sqlite or Postgres alike: runs, run_tags, event_logs, asset_check_executions,
  asset_keys, dynamic_partitions, job_ticks, instigators, kvs, ...);
* MLflow with a database backend store (sqlite, Postgres): also every row of every table by
  SQL, and on an ``s3://`` artifact root every key under it;
* files: the raw bytes (and the relative path) of every file under ``AVATARPIPE_HOME``,
  sqlite databases, their WAL/journal files and free pages included.

A store that is configured but cannot be opened or read is an *error* of the report, and a
report with errors is never clean. What no scan can reach is listed in ``unreachable``.

The report carries counts and locations; :meth:`VerificationReport.certificate` drops the
locations (they can name the subject) for the erasure certificate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CHUNK = 4 << 20
HASH_PREFIX_LEN = 16


@dataclass(frozen=True)
class Needles:
    """What to look for, by kind: ``subject_id``, ``upload_id`` or ``content_sha256``."""

    subject_id: str
    upload_ids: tuple[str, ...] = ()
    content_hashes: tuple[str, ...] = ()  # full sha256 hex digests

    def items(self) -> list[tuple[str, str]]:
        found = [("subject_id", self.subject_id)]
        found += [("upload_id", u) for u in sorted(set(self.upload_ids))]
        found += [("content_sha256", h.lower()[:HASH_PREFIX_LEN]) for h in sorted(set(self.content_hashes))]
        return found

    def in_text(self, text: str) -> list[str]:
        """Kinds of needles found in ``text``."""
        return [kind for kind, value in self.items() if value in text]

    def to_dict(self) -> dict[str, Any]:
        return {"subject_id": self.subject_id, "upload_ids": list(self.upload_ids),
                "content_hashes": list(self.content_hashes)}  # fmt: skip

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Needles:
        return Needles(data["subject_id"], tuple(data.get("upload_ids", ())), tuple(data.get("content_hashes", ())))


@dataclass(frozen=True)
class Hit:
    store: str  # object_store | metadata | mlflow | dagster | files
    location: str  # key, collection/_id, run id, relative path...
    kinds: tuple[str, ...]  # which needle kinds matched


@dataclass
class VerificationReport:
    hits: list[Hit] = field(default_factory=list)
    scanned: dict[str, dict[str, int]] = field(default_factory=dict)  # store -> counters
    skipped: dict[str, str] = field(default_factory=dict)  # store -> why it was not scanned (not used)
    errors: dict[str, str] = field(default_factory=dict)  # store -> why a configured store could not be read
    unreachable: list[str] = field(default_factory=list)  # what no scan can see (WAL, replicas, backups)

    @property
    def clean(self) -> bool:
        """No hits, and every configured store was read (``skipped``: stores not in use)."""
        return not self.hits and not self.errors

    def hits_by_store(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for hit in self.hits:
            counts[hit.store] = counts.get(hit.store, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "hits": [{"store": h.store, "location": h.location, "kinds": list(h.kinds)} for h in self.hits],
            "hits_by_store": self.hits_by_store(),
            "scanned": self.scanned,
            "skipped": self.skipped,
            "errors": self.errors,
            "unreachable": self.unreachable,
        }

    def certificate(self) -> dict[str, Any]:
        """Counts only (locations may embed the subject id): safe to keep after erasure."""
        return {"clean": self.clean, "hits_by_store": self.hits_by_store(), "scanned": self.scanned,
                "skipped": sorted(self.skipped), "errors": self.errors, "unreachable": self.unreachable}  # fmt: skip


# -- object store ------------------------------------------------------------------------


def scan_object_store(store: Any, needles: Needles) -> tuple[list[Hit], dict[str, int]]:
    """Every key (and on S3 every version / delete marker) whose name holds a needle."""
    hits: list[Hit] = []
    keys = 0
    for key in store.list_keys(""):
        keys += 1
        if kinds := needles.in_text(key):
            hits.append(Hit("object_store", key, tuple(kinds)))
    counters = {"keys": keys}
    versions = list(_s3_versions(store))
    if versions:
        counters["versions"] = len(versions)
        for key, version_id, is_marker in versions:
            if kinds := needles.in_text(key):
                what = "delete-marker" if is_marker else "version"
                hits.append(Hit("object_store", f"{key}?{what}={version_id}", tuple(kinds)))
    return hits, counters


def _s3_versions(store: Any) -> Iterator[tuple[str, str, bool]]:
    """(key, version id, is delete marker) of every version in an S3 store's buckets."""
    config = getattr(store, "config", None)
    client = getattr(store, "client", None)
    if config is None or client is None or not hasattr(config, "bucket"):
        return
    buckets = sorted({b for b in (config.bucket, getattr(config, "uploads_bucket", None)) if b})
    for bucket in buckets:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in page.get("Versions", []):
                yield item["Key"], item["VersionId"], False
            for item in page.get("DeleteMarkers", []):
                yield item["Key"], item["VersionId"], True


# -- metadata ----------------------------------------------------------------------------


def scan_metadata(metadata: Any, needles: Needles) -> tuple[list[Hit], dict[str, int]]:
    """Every document of every collection, serialised to text."""
    hits: list[Hit] = []
    documents = 0
    collections = metadata.collection_names()
    for collection in collections:
        for doc in metadata.iter_documents(collection):
            documents += 1
            if kinds := needles.in_text(json.dumps(doc, default=str, sort_keys=True)):
                hits.append(Hit("metadata", f"{collection}/{doc['_id']}", tuple(kinds)))
    return hits, {"collections": len(collections), "documents": documents}


def documents_naming(metadata: Any, needles: Needles, collections: Iterable[str]) -> dict[str, list[Any]]:
    """``_id``s of documents (in ``collections``) whose text holds any needle."""
    found: dict[str, list[Any]] = {}
    for collection in collections:
        for doc in metadata.iter_documents(collection):
            if needles.in_text(json.dumps(doc, default=str, sort_keys=True)):
                found.setdefault(collection, []).append(doc["_id"])
    return found


# -- MLflow ------------------------------------------------------------------------------


def mlflow_run_texts(client: Any) -> Iterator[tuple[Any, str]]:
    """(run, searchable text) for every run of every experiment, deleted ones included."""
    from mlflow.entities import ViewType

    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    if not ids:
        return
    page_token = None
    while True:
        runs = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000, page_token=page_token)
        for run in runs:
            yield run, _run_text(client, run)
        page_token = runs.token
        if not page_token:
            return


def _run_text(client: Any, run: Any) -> str:
    parts = [run.info.run_name or "", json.dumps(run.data.tags, sort_keys=True),
             json.dumps(run.data.params, sort_keys=True), json.dumps(run.data.metrics, sort_keys=True)]  # fmt: skip
    parts += list(_artifact_paths(client, run.info.run_id, None))
    return "\n".join(parts)


def _artifact_paths(client: Any, run_id: str, path: str | None) -> Iterator[str]:
    try:
        entries = client.list_artifacts(run_id, path)
    except Exception:  # noqa: BLE001 - artifacts of a half-deleted run may be gone: nothing to list
        return
    for entry in entries:
        yield entry.path
        if entry.is_dir:
            yield from _artifact_paths(client, run_id, entry.path)


def scan_mlflow(client: Any, needles: Needles) -> tuple[list[Hit], dict[str, int]]:
    from mlflow.entities import ViewType

    hits: list[Hit] = []
    runs = 0
    for run, text in mlflow_run_texts(client):
        runs += 1
        if kinds := needles.in_text(text):
            hits.append(Hit("mlflow", f"run/{run.info.run_id}", tuple(kinds)))
    experiments = client.search_experiments(view_type=ViewType.ALL)
    for exp in experiments:
        if kinds := needles.in_text(f"{exp.name}\n{json.dumps(exp.tags, sort_keys=True)}"):
            hits.append(Hit("mlflow", f"experiment/{exp.experiment_id}", tuple(kinds)))
    versions = 0
    for model in client.search_registered_models():
        text = f"{model.name}\n{model.description or ''}\n{json.dumps(model.tags, sort_keys=True)}"
        if kinds := needles.in_text(text):
            hits.append(Hit("mlflow", f"model/{model.name}", tuple(kinds)))
        for mv in client.search_model_versions(f"name='{model.name}'"):
            versions += 1
            text = f"{mv.description or ''}\n{mv.source}\n{json.dumps(mv.tags, sort_keys=True)}"
            if kinds := needles.in_text(text):
                hits.append(Hit("mlflow", f"model_version/{model.name}/{mv.version}", tuple(kinds)))
    return hits, {"experiments": len(experiments), "runs": runs, "model_versions": versions}


# -- Dagster -----------------------------------------------------------------------------


def scan_dagster(instance: Any, needles: Needles, partitions_def: str = "uploads") -> tuple[list[Hit], dict[str, int]]:
    from dagster import AssetRecordsFilter

    hits: list[Hit] = []
    records = instance.get_run_records()
    for record in records:
        run = record.dagster_run
        text = json.dumps(dict(run.tags), sort_keys=True) + json.dumps(run.run_config, default=str, sort_keys=True)
        if kinds := needles.in_text(text):
            hits.append(Hit("dagster", f"run/{run.run_id}", tuple(kinds)))
    partitions = list(instance.get_dynamic_partitions(partitions_def))
    for key in partitions:
        if kinds := needles.in_text(key):
            hits.append(Hit("dagster", f"partition/{partitions_def}/{key}", tuple(kinds)))
    asset_keys = list(instance.get_asset_keys())
    for asset_key in asset_keys:
        for upload_id in needles.upload_ids:
            found = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=asset_key, asset_partitions=[upload_id]), limit=1
            ).records
            if found:
                hits.append(Hit("dagster", f"materialization/{asset_key.to_user_string()}", ("upload_id",)))
    return hits, {"runs": len(records), "dynamic_partitions": len(partitions), "asset_keys": len(asset_keys)}


def dagster_sql_connections(instance: Any) -> list[tuple[str, Any]]:
    """(label, connection context factory) of the instance's run, event-log (index) and schedule
    storages: the storages' own SQL connections, whatever the backend."""
    found = []
    for label, storage, method in (("runs", instance.run_storage, "connect"),
                                   ("event_log", instance.event_log_storage, "index_connection"),
                                   ("schedules", instance.schedule_storage, "connect")):  # fmt: skip
        factory = getattr(storage, method, None)
        if factory is None:
            raise TypeError(f"Dagster {label} storage {type(storage).__name__} has no SQL connection to scan")
        found.append((label, factory))
    return found


def scan_sql(store: str, connections: Iterable[tuple[str, Any]], needles: Needles) -> tuple[list[Hit], dict[str, int]]:
    """Every row of every table reachable through ``connections`` (sqlite or Postgres), as text.

    Databases reached twice (the Postgres storages of one instance share a database) are
    scanned once. One hit per table, naming the needle kinds found in it.
    """
    import sqlalchemy as db

    seen: set[str] = set()
    hits: list[Hit] = []
    tables = rows = 0
    for _label, factory in connections:
        with factory() as conn:
            url = conn.engine.url.render_as_string(hide_password=True)
            names = db.inspect(conn).get_table_names()
            for name in names:
                key = f"{url}|{name}"
                if key in seen:
                    continue
                seen.add(key)
                tables += 1
                kinds: set[str] = set()
                for row in conn.execute(db.text(f'SELECT * FROM "{name}"')):
                    rows += 1
                    kinds.update(needles.in_text("\x1f".join(_cell_text(v) for v in row)))
                if kinds:
                    hits.append(Hit(store, f"sql:{name}", tuple(sorted(kinds))))
    return hits, {"sql_tables": tables, "sql_rows": rows}


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    return str(value)


def mlflow_sql_connections(tracking_uri: str) -> list[tuple[str, Any]]:
    """The MLflow backend store's database, when the tracking URI is one (else [])."""
    import contextlib as _contextlib

    import sqlalchemy as db

    if not tracking_uri.startswith(("sqlite:", "postgresql", "postgres:", "mysql", "mssql")):
        return []

    @_contextlib.contextmanager
    def connect() -> Iterator[Any]:
        engine = db.create_engine(tracking_uri, poolclass=db.pool.NullPool)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()

    return [("mlflow", connect)]


def scan_artifact_root(
    root: str | None, needles: Needles, endpoint_url: str | None = None
) -> tuple[list[Hit], dict[str, int]]:
    """Every key under an ``s3://bucket/prefix`` MLflow artifact root (local roots are under the
    home or scanned by the file scan); ``endpoint_url``: the S3 endpoint MLflow writes to."""
    if not root or not root.startswith("s3://"):
        return [], {}
    import boto3

    bucket, _, prefix = root[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=endpoint_url or None)
    hits: list[Hit] = []
    keys = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            keys += 1
            if kinds := needles.in_text(item["Key"]):
                hits.append(Hit("mlflow", f"artifact:{item['Key']}", tuple(kinds)))
    return hits, {"artifact_keys": keys}


# -- raw bytes ---------------------------------------------------------------------------


def scan_files(root: Path, needles: Needles) -> tuple[list[Hit], dict[str, int]]:
    """The bytes and relative path of every regular file under ``root``.

    Read in chunks that overlap by the longest needle, so a needle across a chunk boundary is
    still found.
    """
    items = [(kind, value.encode()) for kind, value in needles.items()]
    overlap = max(len(v) for _, v in items) - 1
    hits: list[Hit] = []
    files = 0
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_file() or path.is_symlink():
                continue
            files += 1
            relative = path.relative_to(root).as_posix()
            kinds = set(needles.in_text(relative))
            size, content_kinds = _scan_file(path, items, overlap)
            total += size
            kinds |= content_kinds
            if kinds:
                hits.append(Hit("files", relative, tuple(sorted(kinds))))
    return hits, {"files": files, "bytes": total}


def _scan_file(path: Path, items: list[tuple[str, bytes]], overlap: int) -> tuple[int, set[str]]:
    found: set[str] = set()
    size = 0
    tail = b""
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                size += len(chunk)
                window = tail + chunk
                found.update(kind for kind, value in items if value in window)
                tail = window[-overlap:] if overlap > 0 else b""
    except FileNotFoundError:  # removed while scanning (a temp file)
        return size, found
    return size, found


# -- all of it ---------------------------------------------------------------------------


def verify(
    needles: Needles,
    *,
    home: Path,
    object_store: Any,
    metadata: Any,
    dagster_instance: Any | None,
    mlflow_client: Any | None,
    mlflow_tracking_uri: str | None = None,
    mlflow_artifact_root: str | None = None,
    unreachable: Iterable[str] = (),
) -> VerificationReport:
    """Scan every store; a store passed as None is reported as skipped (not in use). A store
    whose scan fails (cannot connect, cannot read) is an error: the report is not clean."""
    from orchestration.config import load_config, redact_text

    config = load_config()
    s3_endpoint = config.mlflow_s3_endpoint_url or config.aws_endpoint_url
    report = VerificationReport(unreachable=list(unreachable))
    scans = {
        "object_store": (lambda: scan_object_store(object_store, needles)) if object_store is not None else None,
        "metadata": (lambda: scan_metadata(metadata, needles)) if metadata is not None else None,
        "mlflow": (lambda: _scan_mlflow_all(mlflow_client, mlflow_tracking_uri, mlflow_artifact_root, needles, s3_endpoint))
        if mlflow_client is not None else None,
        "dagster": (lambda: _scan_dagster_all(dagster_instance, needles)) if dagster_instance is not None else None,
        "files": lambda: scan_files(home, needles),
    }  # fmt: skip
    for store, scan in scans.items():
        if scan is None:
            report.skipped[store] = "not configured"
            continue
        try:
            hits, counters = scan()
        except Exception as exc:  # noqa: BLE001 - any failure to read a store is a failed verification
            report.errors[store] = redact_text(f"{type(exc).__name__}: {exc}")[:500]
            continue
        report.hits += hits
        report.scanned[store] = counters
    return report


def _scan_dagster_all(instance: Any, needles: Needles) -> tuple[list[Hit], dict[str, int]]:
    hits, counters = scan_dagster(instance, needles)
    sql_hits, sql_counters = scan_sql("dagster", dagster_sql_connections(instance), needles)
    return hits + sql_hits, {**counters, **sql_counters}


def _scan_mlflow_all(client: Any, tracking_uri: str | None, artifact_root: str | None,
                     needles: Needles, s3_endpoint: str | None = None) -> tuple[list[Hit], dict[str, int]]:  # fmt: skip
    hits, counters = scan_mlflow(client, needles)
    if tracking_uri:
        sql_hits, sql_counters = scan_sql("mlflow", mlflow_sql_connections(tracking_uri), needles)
        hits, counters = hits + sql_hits, {**counters, **sql_counters}
    art_hits, art_counters = scan_artifact_root(artifact_root, needles, s3_endpoint)
    return hits + art_hits, {**counters, **art_counters}
