"""The quality gates in real Dagster runs (real instance, metadata store, object store).

Two uploads in one home: the standing sample through the normal suites (every check passes,
the avatar is ready) and the skiing sample through a stricter copy of the suites in which the
mesh must overlap the person mask with IoU >= 0.95: the blocking mesh check fails with
severity ERROR, so `rigged_glb` is not materialised in that run and the upload ends
`failed_quality`. Then `quality-report` aggregates both and builds the GX Data Docs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from assets.checks import EXPECTATIONS_DIR
from orchestration.app import ingest_photo, run_avatar_job, summarise
from orchestration.cli import main
from orchestration.commands.quality_report import quality_report
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "avatarpipe"
STRICT_IOU = 0.95


@dataclass(frozen=True)
class Gates:
    settings: Settings
    good_upload: str
    good_run: str
    blocked: dict  # the `avatarpipe run --json` answer of the blocked upload
    blocked_exit: int


def _strict_suites(directory: Path) -> Path:
    for path in EXPECTATIONS_DIR.glob("*.json"):
        shutil.copy(path, directory / path.name)
    suite = json.loads((directory / "mesh_quality.json").read_text())
    for exp in suite["expectations"]:
        if exp["meta"]["name"] == "silhouette_overlaps_person":
            exp["kwargs"]["min_value"] = STRICT_IOU
    (directory / "mesh_quality.json").write_text(json.dumps(suite))
    return directory


@pytest.fixture(scope="module")
def gates(tmp_path_factory, standing_photo, skiing_photo):
    home = tmp_path_factory.mktemp("gates") / "home"
    strict = _strict_suites(tmp_path_factory.mktemp("strict_suites"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVATARPIPE_HOME", str(home))
        for name in ("MONGODB_URI", "DAGSTER_HOME", "AVATARPIPE_EXPECTATIONS_DIR"):
            mp.delenv(name, raising=False)
        settings = Settings.from_env()
        prepare_environment(settings)
        good = ingest_photo(settings, standing_photo.read_bytes(), standing_photo.name, "good-subject")
        good_run = run_avatar_job(settings, good.upload_id)
        # the blocked one as a user runs it: the CLI in its own process, with the stricter bar
        env = dict(os.environ, AVATARPIPE_EXPECTATIONS_DIR=str(strict))
        proc = subprocess.run(
            [str(CLI), "run", str(skiing_photo), "--subject", "gated-subject", "--json"],
            capture_output=True, text=True, env=env, timeout=900, check=False,
        )  # fmt: skip
        assert proc.stdout.strip(), proc.stderr[-3000:]
        yield Gates(settings, good.upload_id, good_run, json.loads(proc.stdout), proc.returncode)


def _check_records(check: AssetCheckKey, partition: str) -> list:
    records = DagsterInstance.get().event_log_storage.get_asset_check_execution_history(check, limit=20)
    return [r for r in records if r.partition == partition]


def test_good_avatar_passes_every_gate(gates: Gates) -> None:
    instance = DagsterInstance.get()
    assert instance.get_run_by_id(gates.good_run).status == DagsterRunStatus.SUCCESS
    for asset in ("smplx_params", "mesh", "rigged_glb"):
        (record,) = _check_records(AssetCheckKey(AssetKey(asset), f"{asset}_quality"), gates.good_upload)
        assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED and record.run_id == gates.good_run
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.passed and evaluation.partition == gates.good_upload
        assert {"suite", "suite_sha", "validation_id", "failed_expectations", "results", "metrics"} <= set(
            evaluation.metadata
        )

    summary = summarise(gates.settings, gates.good_upload, gates.good_run).to_dict()
    assert summary["status"] == "ready" and summary["error"] is None
    assert summary["checks"] == {
        name: {"passed": True, "severity": None, "failed_expectations": []}
        for name in ("smplx_params_quality", "mesh_quality", "rigged_glb_quality")
    }

    metadata = open_metadata_store(None, gates.settings.metadata_dir)
    try:
        docs = metadata.find_validations(upload_id=gates.good_upload)
        artifacts = {a["asset_key"]: a for a in metadata.artifacts_for_upload(gates.good_upload)}
    finally:
        metadata.close()
    assert sorted(d["asset_key"] for d in docs) == ["mesh", "rigged_glb", "smplx_params"]
    for doc in docs:  # one document per check run, linked to the artifact it judged
        assert doc["passed"] and doc["run_id"] == gates.good_run and doc["subject_id"] == "good-subject"
        assert doc["artifact_id"] == artifacts[doc["asset_key"]]["_id"]
        assert doc["statistics"]["evaluated"] == len(doc["results"]) > 10
    mesh_doc = next(d for d in docs if d["asset_key"] == "mesh")
    assert mesh_doc["metrics"]["hole_count"] == 0 and mesh_doc["metrics"]["silhouette_iou"] > 0.6


def test_blocking_failure_stops_downstream(gates: Gates) -> None:
    answer = gates.blocked
    upload = answer["upload_id"]
    # the CLI: non-zero exit, failed_quality with the typed code and the failed expectation
    assert gates.blocked_exit == 1
    assert answer["status"] == "failed_quality"
    assert answer["error"]["code"] == "QUALITY_GATE_FAILED" and answer["error"]["step"] == "mesh"
    assert "silhouette_overlaps_person" in answer["error"]["message"]
    assert set(answer["artifacts"]) == {"photo", "keypoints", "smplx_params", "mesh"}  # no GLB
    assert answer["checks"]["smplx_params_quality"]["severity"] != "ERROR"  # passed (or a warning)
    mesh_check = answer["checks"]["mesh_quality"]
    assert mesh_check["passed"] is False and mesh_check["severity"] == "ERROR"
    assert [f["name"] for f in mesh_check["failed_expectations"]] == ["silhouette_overlaps_person"]
    assert "rigged_glb_quality" not in answer["checks"]

    # Dagster: the run failed, the mesh was materialised, the GLB was not, the check is on record
    instance = DagsterInstance.get()
    run = instance.get_run_by_id(answer["dagster_run_id"])
    assert run.status == DagsterRunStatus.FAILURE

    def materialised(asset: str) -> int:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[upload]), limit=5
        ).records
        return len(records)

    assert materialised("mesh") == 1 and materialised("rigged_glb") == 0
    (record,) = _check_records(AssetCheckKey(AssetKey("mesh"), "mesh_quality"), upload)
    assert record.status == AssetCheckExecutionRecordStatus.FAILED
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.severity == AssetCheckSeverity.ERROR and evaluation.blocking
    failed = evaluation.metadata["failed_expectations"].value
    assert failed[0]["name"] == "silhouette_overlaps_person" and failed[0]["observed"] < STRICT_IOU
    glb_records = _check_records(AssetCheckKey(AssetKey("rigged_glb"), "rigged_glb_quality"), upload)
    assert all(r.status == AssetCheckExecutionRecordStatus.PLANNED for r in glb_records)

    metadata = open_metadata_store(None, gates.settings.metadata_dir)
    try:
        assert metadata.get_upload(upload)["status"] == "failed_quality"
        mesh_artifact = metadata.current_artifact(upload, "mesh")
        (doc,) = metadata.find_validations(upload_id=upload, asset_key="mesh")
        assert metadata.current_artifact(upload, "rigged_glb") is None
    finally:
        metadata.close()
    assert doc["artifact_id"] == mesh_artifact["_id"] and doc["severity"] == "ERROR"
    assert doc["failed_expectations"][0]["expected"]["min_value"] == STRICT_IOU


def test_quality_report_aggregates_and_builds_data_docs(gates: Gates, capfd) -> None:
    report = quality_report(gates.settings, since=None)
    blocked = gates.blocked["upload_id"]
    assert report["uploads"] == 2 and report["check_runs"] == 5
    assert report["checks"]["mesh_quality"] == {
        "validated": 2, "passed": 1, "failed_error": 1, "failed_warn": 0, "pass_rate": 0.5,
    }  # fmt: skip
    assert report["checks"]["rigged_glb_quality"]["validated"] == 1
    worst = {(e["check"], e["name"]): e for e in report["expectations"]}[("mesh_quality", "silhouette_overlaps_person")]
    assert (worst["evaluated"], worst["failed"], worst["pass_rate"]) == (2, 1, 0.5)
    assert report["expectations"][0]["failed"] >= 1  # failing expectations come first
    offender = report["worst_offenders"][0]
    assert offender["upload_id"] == blocked and offender["status"] == "failed_quality"
    assert offender["error_count"] == 1

    index = Path(report["data_docs"])
    assert index.is_file() and index.is_relative_to(gates.settings.home / "gx")
    pages = {p.parent.parent.name: p for p in (index.parent / "validations").rglob("*.html")}
    assert {gates.good_upload, blocked} <= set(pages)
    failed_page = next((index.parent / "validations" / "mesh_quality" / blocked).rglob("*.html")).read_text()
    assert "silhouette_iou" in failed_page

    # the command: one JSON object on stdout; a window in the future holds nothing
    future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert main(["quality-report", "--json", "--no-docs", "--since", future]) == 0
    out = json.loads(capfd.readouterr().out)
    assert out["uploads"] == 0 and out["checks"] == {} and out["data_docs"] is None
