"""Right to erasure, end to end: two subjects through real Dagster runs (MLflow registry, embedded
MongoDB API, local object store), one erased, then the independent scan - including a raw byte
scan of the whole home - must find nothing of it while the other subject is intact.

Every test runs on both backends (tests/backends/fixtures.py): the embedded sqlite stores, and
Dagster + MLflow on PostgreSQL (MLflow artifacts on S3, a moto server), where the independent
checks are a `pg_dump` of both databases and a byte scan of their table files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ops.erasure_stores import MLFLOW_TAG_SUBJECT, MLFLOW_TAG_UPLOAD
from orchestration.app import execute_avatar_job, ingest_photo, run_avatar_job
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store
from tests.backends.fixtures import BACKEND_VARS, BACKENDS, Backend, make_backend, use_backend

ERASED, KEPT = "subj-erase-7f3a", "subj-keep-91c2"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=BACKENDS)
def processed_home(request, tmp_path_factory, standing_photo, skiing_photo) -> dict:
    """One home with both subjects processed (real runs), an MLflow per-upload run for each,
    and a Data Docs site; tests copy it (and clone its databases) so each starts from the same state."""
    backend = make_backend(request.param, request)
    home = tmp_path_factory.mktemp(f"compliance-{backend.name}") / "home"
    saved = {k: os.environ.get(k) for k in ("AVATARPIPE_HOME", "DAGSTER_HOME", "MONGODB_URI", *BACKEND_VARS, *backend.env)}
    os.environ["AVATARPIPE_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)
    os.environ.pop("MONGODB_URI", None)
    backend.apply()
    try:
        settings = Settings.from_env()
        prepare_environment(settings)
        uploads = {}
        for subject, photo in ((ERASED, standing_photo), (KEPT, skiing_photo)):
            ingested = ingest_photo(settings, photo.read_bytes(), photo.name, subject)
            run_avatar_job(settings, ingested.upload_id)
            uploads[subject] = ingested.upload_id
            _log_per_upload_mlflow_run(settings, subject, ingested.upload_id)
        from orchestration.commands.quality_report import quality_report

        quality_report(settings, since=None)  # writes home/gx/uncommitted (lists upload ids)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {"home": home, "uploads": uploads, "backend": backend}


def _log_per_upload_mlflow_run(settings: Settings, subject: str, upload_id: str) -> None:
    """A per-upload evaluation run with the documented tags, a metric, and an artifact, plus a
    model version registered from it (what erasure must delete too)."""
    from mlflow import MlflowClient

    from orchestration.registry import RegistryLocation, open_registry

    location = RegistryLocation.for_settings(settings)
    open_registry(location).ensure_initialised()
    client = MlflowClient(tracking_uri=location.tracking_uri, registry_uri=location.effective_registry_uri)
    exp = client.get_experiment_by_name("avatarpipe-eval") or None
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "avatarpipe-eval", artifact_location=f"{location.artifact_location}/eval")
    run = client.create_run(exp_id, tags={MLFLOW_TAG_UPLOAD: upload_id, MLFLOW_TAG_SUBJECT: subject})
    client.log_param(run.info.run_id, "upload", upload_id)
    client.log_metric(run.info.run_id, "silhouette_iou", 0.8)
    client.log_dict(run.info.run_id, {"upload_id": upload_id}, f"eval/{upload_id}.json")
    client.set_terminated(run.info.run_id)
    name = f"eval-{subject}"
    client.create_registered_model(name)
    client.create_model_version(name, source=f"runs:/{run.info.run_id}/eval", run_id=run.info.run_id)


@pytest.fixture
def home(processed_home, tmp_path, monkeypatch, request) -> dict:
    """A private copy of the processed home, selected through AVATARPIPE_HOME."""
    target = tmp_path / "home"
    shutil.copytree(processed_home["home"], target, symlinks=True)
    backend = use_backend(processed_home["backend"].clone(), request, monkeypatch)
    monkeypatch.setenv("AVATARPIPE_HOME", str(target))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    settings = Settings.from_env()
    prepare_environment(settings)
    yield {"home": target, "uploads": processed_home["uploads"], "settings": settings, "backend": backend}
    backend.drop()


def _cli(*args: str, env_extra: dict | None = None) -> tuple[int, dict]:
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", *args, "--json"], check=False, cwd=REPO,
                          env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode < 0:
        return proc.returncode, {}
    return proc.returncode, json.loads(proc.stdout)


def _raw_hits(home: Path, needles: list[str]) -> list[str]:
    """An independent byte scan (not ops/verification.py): every file, every needle."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(home)}: {n}" for n in needles if n.encode() in data or n in str(path)]
    return found


def _postgres_hits(backend: Backend, needles: list[str]) -> list[str]:
    """Independent of ops/verification.py: `pg_dump` of each database (every row, logically) and
    the bytes of its table and index files (dead rows that VACUUM did not rewrite)."""
    found = []
    server = backend.server
    assert server is not None
    for role, database in backend.databases.items():
        dump = server.dump(database)
        found += [f"pg_dump {role}: {n}" for n in needles if n.encode() in dump]
        if server.data_dir is not None:
            oid = server.execute(f"SELECT oid FROM pg_database WHERE datname = '{database}'")[0][0]
            for path in (server.data_dir / "base" / str(oid)).iterdir():
                data = path.read_bytes()
                found += [f"{role} file {path.name}: {n}" for n in needles if n.encode() in data]
    return found


def test_erase_one_subject_keeps_the_other(home) -> None:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

    settings, erased_upload, kept_upload = home["settings"], home["uploads"][ERASED], home["uploads"][KEPT]
    metadata = open_metadata_store(None, settings.metadata_dir)
    photo_sha = metadata.current_artifact(erased_upload, "photo")["sha256"]
    raw_key = metadata.get_upload(erased_upload)["photo_key"]
    kept_docs_before = len(metadata.artifacts_for_upload(kept_upload, include_superseded=True))
    metadata.close()
    raw_sha16 = raw_key.rsplit("/", 1)[-1].split(".")[0]
    # before: the scan finds the subject everywhere (the test cannot pass vacuously)
    code, before = _cli("verify-erasure", "--subject", ERASED)
    assert code == 1 and not before["errors"]
    assert {"object_store", "metadata", "mlflow", "dagster", "files"} <= set(before["hits_by_store"])
    sql_tables = {h["location"] for h in before["hits"] if h["store"] == "dagster" and h["location"].startswith("sql:")}
    assert {"sql:runs", "sql:run_tags", "sql:event_logs", "sql:asset_check_executions", "sql:dynamic_partitions"} <= sql_tables
    assert any(h["store"] == "mlflow" and h["location"].startswith("sql:") for h in before["hits"])
    backend: Backend = home["backend"]
    needles = [ERASED, erased_upload, photo_sha[:16], raw_sha16]
    if backend.postgres:  # the person really is in Postgres (and MLflow's S3 artifacts) before
        assert _postgres_hits(backend, needles)
        assert any(h["location"].startswith("artifact:") for h in before["hits"])

    code, answer = _cli("erase", "--subject", ERASED, "--operator", "dpo@example")
    assert code == 0, answer.get("verification", {}).get("hits")
    cert = answer["certificate"]
    assert answer["status"] == "completed" and cert["verification"]["clean"]
    counts = cert["counts"]
    assert counts["object_store"]["objects"] >= 6
    assert counts["dagster"]["runs"] == 1 and counts["dagster"]["partitions"] == 1
    assert counts["mlflow"]["runs"] == 1 and counts["mlflow"]["model_versions"] == 1
    assert counts["mlflow"]["registered_models"] == 1  # "eval-<subject>" names the subject
    assert counts["metadata"]["uploads"] == 1 and counts["metadata"]["artifacts"] == 5
    assert counts["files"]["data_docs_removed"] == 1
    # the certificate itself holds no personal data
    assert not [n for n in (ERASED, erased_upload, photo_sha[:16], raw_sha16) if n in json.dumps(cert)]

    # independent checks: raw bytes, and verify-erasure again
    assert _raw_hits(home["home"], needles) == []
    if backend.postgres:
        assert _postgres_hits(backend, needles) == []
        assert counts["vacuum"]["postgres_dagster_tables_vacuumed"] >= 10 and counts["vacuum"]["postgres_mlflow_tables_vacuumed"] > 0
        assert counts["vacuum"]["postgres_dagster_statistics_rewritten"] == 1
        assert any("WAL" in what for what in cert["verification"]["unreachable"])
    code, after = _cli("verify-erasure", "--subject", ERASED)
    assert code == 0 and after["clean"] and after["scanned"]["files"]["files"] > 20
    assert after["needles"] == {"upload_ids": 1, "content_hashes": 2}  # recorded by the erasure, searched again
    assert after["scanned"]["dagster"]["sql_tables"] >= 20 and after["scanned"]["mlflow"]["sql_tables"] >= 20

    # audit: only the certificate and pseudonymised events remain
    code, audit = _cli("audit", "--subject", ERASED)
    assert code == 0 and audit["status"] == "erased" and audit["uploads"] == [] and audit["subject"] is None
    assert audit["erasure"]["_id"] == cert["_id"]
    assert {e["event"] for e in audit["events"]} >= {"ingest", "materialise", "erase"}
    assert all(e["upload_id"] is None for e in audit["events"])

    # idempotent: erasing again answers with the same certificate
    code, again = _cli("erase", "--subject", ERASED)
    assert code == 0 and again["status"] == "already_erased" and again["certificate"]["_id"] == cert["_id"]

    # the other subject: documents, objects, Dagster history intact, and still reprocessable
    metadata = open_metadata_store(None, settings.metadata_dir)
    assert metadata.get_upload(kept_upload)["status"] == "ready"
    kept_artifacts = metadata.artifacts_for_upload(kept_upload, include_superseded=True)
    assert len(kept_artifacts) == kept_docs_before
    from storage.object_store import LocalObjectStore

    store = LocalObjectStore(settings.objects_dir)
    assert all(store.exists(doc["key"]) for doc in kept_artifacts)
    metadata.close()
    instance = DagsterInstance.get()
    kept_runs = instance.get_run_records(RunsFilter(tags={"dagster/partition": kept_upload}))
    assert len(kept_runs) == 1 and kept_runs[0].dagster_run.status == DagsterRunStatus.SUCCESS
    assert kept_upload in instance.get_dynamic_partitions("uploads")
    glb = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("rigged_glb"), asset_partitions=[kept_upload]), limit=5).records
    assert len(glb) == 1
    code, kept_audit = _cli("audit", "--subject", KEPT)
    assert code == 0 and kept_audit["status"] == "active" and len(kept_audit["uploads"]) == 1
    # reprocess the kept subject after the erasure: from its normalised photo (its raw upload was
    # deleted when its avatar was ready - the default retention policy)
    run_id = execute_avatar_job(settings, kept_upload, asset_selection=["keypoints", "smplx_params", "mesh", "rigged_glb"])
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS


def test_erasure_killed_midway_resumes(home) -> None:
    erased_upload = home["uploads"][ERASED]
    # SIGKILL at the start of the Dagster step: objects are gone, nothing else is
    code, _ = _cli("erase", "--subject", ERASED, env_extra={"AVATARPIPE_ERASURE_FAULT": "dagster"})
    assert code == -9
    metadata = open_metadata_store(None, home["settings"].metadata_dir)
    assert metadata.get_upload(erased_upload)["status"] == "erased"
    metadata.close()
    code, partial = _cli("verify-erasure", "--subject", ERASED)
    assert code == 1 and "object_store" not in partial["hits_by_store"] and "dagster" in partial["hits_by_store"]
    code, answer = _cli("erase", "--subject", ERASED)
    assert code == 0 and answer["status"] == "completed" and answer["resumed"] is True
    assert answer["certificate"]["attempts"] == 2
    assert _raw_hits(home["home"], [ERASED, erased_upload]) == []


def test_verification_fails_when_a_store_cannot_be_opened(home) -> None:
    """A configured store the scan cannot read is a failure, never "clean": MLflow's backend store
    on every backend, and Dagster's Postgres storage on the postgres backend."""
    code, ok = _cli("verify-erasure", "--subject", ERASED)
    assert code == 1 and not ok["errors"]
    broken = {"AVATARPIPE_MLFLOW_URI": f"sqlite:///{home['home']}/.erasure_salt/mlflow.db"}  # under a file
    backend: Backend = home["backend"]
    if backend.postgres:  # (MLflow's own engine retries a missing Postgres database for ~2 min: the
        assert backend.server is not None  # sqlite break above fails as surely, in a second)
        broken["DAGSTER_PG_URL"] = backend.server.url("no_such_database")
    code, answer = _cli("verify-erasure", "--subject", ERASED, env_extra=broken)
    assert code == 1 and not answer["clean"]
    assert "mlflow" in answer["errors"] and "mlflow" not in answer["scanned"]
    if backend.postgres:
        assert "dagster" in answer["errors"]
    assert backend.server is None or backend.server.password not in json.dumps(answer)


def test_unknown_subject_gets_a_clear_answer(home) -> None:
    code, answer = _cli("erase", "--subject", "never-seen-subject")
    assert code == 2 and answer["status"] == "unknown_subject"
    code, audit = _cli("audit", "--subject", "never-seen-subject")
    assert code == 2 and audit["status"] == "unknown_subject"


def test_erase_subject_dagster_job(home) -> None:
    """The Dagster job erases a requested subject; its run config and logs carry only the hash."""
    from dagster import DagsterInstance

    from ops.erasure import request_erasure
    from orchestration.app import erasure_env
    from orchestration.definitions import build_definitions

    settings = home["settings"]
    with erasure_env(settings) as env:
        erasure_id = request_erasure(env, ERASED, operator="dpo@example")
    job = build_definitions(settings).resolve_job_def("erase_subject")
    result = job.execute_in_process(
        run_config={"ops": {"erase_requested_subject": {"config": {"erasure_id": erasure_id}}}},
        instance=DagsterInstance.get(),
    )
    assert result.success
    assert result.output_for_node("erase_requested_subject")["status"] == "completed"
    # the erase run itself stays in Dagster: nothing of the subject may be in it (raw bytes too)
    assert _raw_hits(home["home"], [ERASED, home["uploads"][ERASED]]) == []
    code, after = _cli("verify-erasure", "--subject", ERASED)
    assert code == 0 and after["clean"]
