"""Issue 19's evidence, end to end on the real pipeline: two real body fitter versions (v2
deliberately worse: a handful of L-BFGS iterations instead of 114), a real MLflow sqlite
registry, a real Dagster instance and two real avatars.

compare shows v2 worse -> promote refuses -> a canary on both uploads reports the regression
and leaves production and the current artifacts as they were -> a forced promotion, one upload
rebuilt with v2 -> rollback restores v1 and rebuilds exactly that upload. Along the way: the
Dagster metadata links each model version to MLflow, `models avatars` lists what a version
built, and the quality pages reference no outside host."""

import json
import os
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, RunsFilter

from orchestration.app import ingest_photo, run_avatar_job
from orchestration.cli import main
from orchestration.commands.quality_report import quality_report
from orchestration.offline_docs import remote_references
from orchestration.registry import RegistryLocation, open_registry
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store

pytestmark = pytest.mark.slow
WORSE = "iters=[2,2,2,0]"  # the catalogue default is [12, 30, 60, 12]
EVAL = ["--eval-max-photos", "1", "--eval-synthetic", "1", "--eval-builds", "1", "--eval-appearance", "1"]
REPROJECTION = "photos_median_keypoint_reprojection_rel"


@pytest.fixture(scope="module")
def home(tmp_path_factory, standing_photo, skiing_photo):
    """A home with two avatars built by the version-1 models: (settings, sorted upload ids)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVATARPIPE_HOME", str(tmp_path_factory.mktemp("model_ops_home")))
        for var in ("DAGSTER_HOME", "MONGODB_URI", "AVATARPIPE_MLFLOW_URI", "AVATARPIPE_EXPECTATIONS_DIR"):
            mp.delenv(var, raising=False)
        mp.setenv("AVATARPIPE_DAGSTER_URL", "off")
        settings = Settings.from_env()
        prepare_environment(settings)
        uploads = []
        for photo in (standing_photo, skiing_photo):
            ingested = ingest_photo(settings, photo.read_bytes(), photo.name, "ops-subject")
            run_avatar_job(settings, ingested.upload_id)
            uploads.append(ingested.upload_id)
        yield settings, sorted(uploads)


def _cli(capfd, *args: str, code: int = 0) -> dict:
    capfd.readouterr()
    assert main(list(args)) == code, capfd.readouterr().err[-3000:]
    return json.loads(capfd.readouterr().out)


def _current_ids(settings: Settings, upload: str) -> dict[str, str]:
    with open_metadata_store(None, settings.metadata_dir) as metadata:
        return {d["asset_key"]: d["_id"] for d in metadata.artifacts_for_upload(upload)}


def _fitter_versions(settings: Settings, upload: str) -> str:
    with open_metadata_store(None, settings.metadata_dir) as metadata:
        return metadata.current_artifact(upload, "smplx_params")["model_versions"]["body_fitter"]


def test_worse_fitter_is_refused_canaried_forced_and_rolled_back(home, capfd):
    settings, uploads = home
    instance = DagsterInstance.get()
    registry = open_registry(RegistryLocation.for_settings(settings))

    # 1. evaluation attached to both versions (the harness on 1 photo + 1 synthetic body)
    champion = _cli(capfd, "models", "evaluate", "body_fitter", "1", *EVAL, "--json")
    assert champion["metrics"]["photos_fitted"] == 1 and champion["metrics"]["synthetic_fitted"] == 1
    registered = _cli(capfd, "models", "register", "body_fitter", "--set", WORSE, "--evaluate", *EVAL,
                      "--description", "deliberately worse: 6 iterations", "--json")  # fmt: skip
    assert registered["registered"]["version"] == "2"
    v2 = registry.get_version("body_fitter", "2", with_metrics=True)
    assert v2.metrics[REPROJECTION] == registered["evaluation"]["metrics"][REPROJECTION]
    tags = registry.version_tags("body_fitter", "2")
    assert tags["mlflow.source.git.commit"] and tags["mlflow.user"] and "avatarpipe.evaluation_set" in tags
    # besides the fit: the photo built end to end by the pipeline's steps, and novel views of the bake
    for metrics in (champion["metrics"], v2.metrics):
        assert metrics["builds_succeeded"] == 1 and metrics["build_median_glb_bytes"] > 100_000
        assert metrics["build_median_smplx_params_seconds"] > 0 and metrics["build_median_rigged_glb_seconds"] > 0
        assert 10 < metrics["appearance_psnr_front"] < 60 and 0 < metrics["appearance_ssim_unseen"] <= 1

    # 2. compare shows it worse; promote refuses
    comparison = _cli(capfd, "models", "compare", "body_fitter", "1", "2", "--json")
    verdicts = {m["metric"]: m["verdict"] for m in comparison["metrics"]}
    assert comparison["verdict"] == "refuse" and verdicts[REPROJECTION] == "regressed", comparison
    assert verdicts["appearance_psnr_unseen"] == "same"  # the bake's novel views do not depend on the fitter
    assert verdicts["build_median_glb_bytes"] != "ungated" and verdicts["build_median_mesh_seconds"] != "ungated"
    assert main(["models", "promote", "body_fitter", "2"]) == 2
    assert "refusing to promote" in capfd.readouterr().err
    assert registry.production_versions()["body_fitter"].version == "1"

    # 3. canary on both uploads: regression reported, production and current artifacts untouched
    before = {u: _current_ids(settings, u) for u in uploads}
    runs_before = len(instance.get_runs())
    capfd.readouterr()
    assert main(["reprocess", "--model", "body_fitter", "--canary", "2", "--json"]) == 1
    canary = json.loads(capfd.readouterr().out)
    assert canary["verdict"] == "failed" and canary["candidate"] == "2" and canary["champion"] == "1"
    assert sorted(u["upload_id"] for u in canary["uploads"]) == uploads
    assert canary["production_after"] == canary["production_before"] and canary["production_after"]["body_fitter"] == "1"
    assert any("regressed" in p or "quality check fails" in p for p in canary["problems"]), canary["problems"]
    for row in canary["uploads"]:
        assert row["error"] is None and set(row["candidate_objects"]) == {"smplx_params", "mesh", "rigged_glb"}
        fit = {m["metric"]: m for m in row["metrics"]}["smplx_params.keypoint_reprojection_rel"]
        assert fit["challenger"] > fit["champion"]  # the worse fitter measured worse on the real upload
    assert {u: _current_ids(settings, u) for u in uploads} == before  # nothing became current
    assert len(instance.get_runs()) == runs_before  # no Dagster run, no materialisation
    canary_tags = registry.version_tags("body_fitter", "2")
    assert canary_tags["avatarpipe.canary"] == "failed" and "regressed: " in canary_tags["avatarpipe.canary_summary"]
    assert not any(u in json.dumps(canary_tags) for u in uploads)  # no upload ids in MLflow (erasure scans it)
    assert str(registry.client.get_model_version_by_alias("body_fitter", "candidate").version) == "2"

    if os.environ.get("AVATARPIPE_EVIDENCE_OUT"):  # numbers for a report, when asked for
        Path(os.environ["AVATARPIPE_EVIDENCE_OUT"]).write_text(json.dumps({"compare": comparison, "canary": canary}))

    # 4. forced promotion (the failed canary is one more reason it needs --force); rebuild one upload
    forced = _cli(capfd, "models", "promote", "body_fitter", "2", "--force", "--reason", "evidence test", "--json")
    assert forced["forced"] and "its last canary failed" in forced["gate"]["reasons"]
    rebuilt = _cli(capfd, "reprocess", "--upload", uploads[0], "--json")
    assert rebuilt["counts"] == {"planned": 1, "succeeded": 1, "failed": 0}
    assert [_fitter_versions(settings, u) for u in uploads] == ["2", "1"]
    avatars = _cli(capfd, "models", "avatars", "body_fitter", "2", "--json")
    assert [a["upload_id"] for a in avatars["avatars"]] == [uploads[0]] and avatars["current_count"] == 1
    assert avatars["mlflow_url"].endswith("/#/models/body_fitter/versions/2?workflowType=machine_learning")
    assert registry.version_tags("body_fitter", "2")["avatarpipe.avatars_built"] == "1"
    newest = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("smplx_params"), asset_partitions=[uploads[0]]), limit=1
    ).records[0]
    links = newest.asset_materialization.metadata
    assert links["mlflow_body_fitter"].url.endswith("/#/models/body_fitter/versions/2?workflowType=machine_learning")
    assert links["mlflow_body_model"].url.endswith("/#/models/body_model/versions/1?workflowType=machine_learning")

    # 5. rollback: production back to v1, exactly the avatar v2 built is rebuilt
    untouched = _current_ids(settings, uploads[1])
    rollback = _cli(capfd, "models", "rollback", "body_fitter", "--json")
    assert (rollback["bad"], rollback["restored"], rollback["uploads"]) == ("2", "1", [uploads[0]])
    assert rollback["reprocess"]["counts"] == {"planned": 1, "succeeded": 1, "failed": 0}
    assert registry.production_versions()["body_fitter"].version == "1"
    assert [_fitter_versions(settings, u) for u in uploads] == ["1", "1"]
    assert _current_ids(settings, uploads[1]) == untouched
    reprocess_runs = instance.get_runs(RunsFilter(tags={"avatarpipe/reprocess_from": "smplx_params"}))
    assert sorted(r.tags["dagster/partition"] for r in reprocess_runs) == [uploads[0], uploads[0]]
    assert _cli(capfd, "models", "avatars", "body_fitter", "2", "--json")["avatars"] == []

    # 6. the quality pages built from these real validations reference no outside host
    report = quality_report(settings, since=None)
    page = Path(report["html_report"]).read_text()
    assert uploads[0] in page and remote_references(page) == []
    site = Path(report["data_docs"]).parent
    offenders = {str(p.relative_to(site)): remote_references(p.read_text(errors="replace"))
                 for p in site.rglob("*") if p.suffix in {".html", ".css", ".js"}}  # fmt: skip
    assert {k: v for k, v in offenders.items() if v} == {}
