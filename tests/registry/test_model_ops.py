"""Champion/challenger gates, forced promotions, MLflow lineage details and offline quality
pages, on a real MLflow sqlite registry (fast; the end-to-end evidence with two real body
fitter versions and real pipeline runs is tests/registry/test_model_ops_pipeline.py)."""

import json
import re

import pytest
from mlflow import MlflowClient
from mlflow.models import Model

from models.evaluation import BuildResult, summarise_builds
from orchestration.cli import main
from orchestration.model_ops import (
    GATES_FILE,
    Gate,
    PromotionRefused,
    compare_versions,
    gate_promotion,
    judge_metric,
    load_gates,
)
from orchestration.offline_docs import remote_references, render_quality_html, strip_remote_references
from orchestration.registry import (
    EXPERIMENT_KIND,
    RegistryLocation,
    mlflow_version_url,
    open_registry,
    production_map,
)
from orchestration.resources import ModelRegistryResource
from orchestration.sensors import CANARY_JOB, SensorCursor, canary_requests
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store

REPROJECTION = "photos_median_keypoint_reprojection_rel"
IOU = "photos_median_silhouette_iou"


@pytest.fixture
def location(avatar_home, monkeypatch) -> RegistryLocation:
    monkeypatch.setenv("AVATARPIPE_DAGSTER_URL", "off")
    settings = Settings.from_env()
    prepare_environment(settings)
    return RegistryLocation.for_settings(settings)


@pytest.mark.parametrize(
    ("better", "champion", "challenger", "verdict"),
    [
        ("lower", 0.030, 0.020, "better"),
        ("lower", 0.030, 0.030, "same"),
        ("lower", 0.030, 0.032, "worse_within_tolerance"),  # tolerance max(0.002, 10 % of 0.03)=0.003
        ("lower", 0.030, 0.040, "regressed"),
        ("higher", 0.80, 0.79, "worse_within_tolerance"),
        ("higher", 0.80, 0.70, "regressed"),
        ("higher", 0.80, None, "missing"),
    ],
)
def test_metric_verdicts_use_the_larger_of_absolute_and_relative_tolerance(better, champion, challenger, verdict):
    gate = Gate("m", better, abs=0.002 if better == "lower" else 0.02, rel=0.10 if better == "lower" else 0.0)
    assert judge_metric("m", champion, challenger, gate).verdict == verdict
    assert judge_metric("m", champion, challenger, None).verdict == "ungated"


def test_gates_file_is_versioned_and_names_the_harness_metrics():
    gates = load_gates()
    assert isinstance(gates.version, int) and gates.path == str(GATES_FILE)
    assert {REPROJECTION, IOU, "synthetic_median_pa_mpjpe_mm"} <= set(gates.evaluation)
    assert not gates.evaluation["photos_median_fit_seconds"].gated  # step time is shown, never blocks
    assert "smplx_params.keypoint_reprojection_rel" in gates.canary


def test_promote_refuses_a_regression_unless_forced_with_a_reason(location, capfd):
    registry = open_registry(location)
    registry.ensure_initialised()
    registry.log_evaluation("body_fitter", "1", {REPROJECTION: 0.030, IOU: 0.80}, {})
    assert main(["models", "register", "body_fitter", "--set", "iters=[2,2,2,0]", "--metric", f"{REPROJECTION}=0.090",
                 "--metric", f"{IOU}=0.81", "--json"]) == 0  # fmt: skip
    capfd.readouterr()

    comparison = compare_versions(registry, "body_fitter", "1", "2")
    verdicts = {m.metric: m.verdict for m in comparison.metrics}
    assert verdicts[REPROJECTION] == "regressed" and verdicts[IOU] == "better"
    assert comparison.verdict == "refuse" and [m.metric for m in comparison.regressions] == [REPROJECTION]
    assert main(["models", "compare", "body_fitter", "1", "2", "--json"]) == 0
    shown = json.loads(capfd.readouterr().out)
    row = {m["metric"]: m for m in shown["metrics"]}[REPROJECTION]
    assert (row["champion"], row["challenger"], row["difference"]) == (0.03, 0.09, 0.06)

    with pytest.raises(PromotionRefused, match=f"{REPROJECTION} regressed"):
        gate_promotion(registry, "body_fitter", "2")
    assert main(["models", "promote", "body_fitter", "2"]) == 2
    assert "refusing to promote body_fitter v2" in capfd.readouterr().err
    assert main(["models", "promote", "body_fitter", "2", "--force"]) == 2  # a reason is required
    assert "--reason" in capfd.readouterr().err
    assert registry.production_versions()["body_fitter"].version == "1"

    assert main(["models", "promote", "body_fitter", "2", "--force", "--reason", "hotfix test", "--json"]) == 0
    answer = json.loads(capfd.readouterr().out)
    assert answer["forced"] is True and answer["production"] == "2" and answer["gate"]["verdict"] == "refuse"
    assert "hotfix test" in registry.version_tags("body_fitter", "2")["avatarpipe.forced_promotion"]
    with open_metadata_store(None, Settings.from_env().metadata_dir) as metadata:
        [event] = metadata.audit_events("model_promote")
    assert event["details"]["forced"] is True and event["details"]["force_reason"] == "hotfix test"
    assert event["details"]["gates_version"] == load_gates().version


def test_versions_live_in_a_plain_experiment_per_model_with_an_mlmodel_and_provenance(location, tmp_path):
    registry = open_registry(location)
    registry.ensure_initialised()
    client = MlflowClient(tracking_uri=location.tracking_uri, registry_uri=location.effective_registry_uri)
    mv = client.get_model_version("body_fitter", "1")
    run = client.get_run(mv.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "body_fitter" and experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND
    # what the UI's version page fetches: <source>/MLmodel, a custom flavour naming the config
    model = Model.load(client.download_artifacts(mv.run_id, "model/MLmodel", str(tmp_path)))
    assert model.flavors["avatarpipe"]["implementation"] == mv.tags["avatarpipe.implementation"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", run.data.tags["mlflow.source.git.commit"])
    assert run.data.tags["mlflow.user"] and mv.tags["avatarpipe.code_version"].endswith("+0.1.0")
    assert run.data.tags["mlflow.source.name"] == "avatarpipe" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert (mlflow_version_url(location, "body_fitter", "1")
            == "http://127.0.0.1:5000/#/models/body_fitter/versions/1?workflowType=machine_learning")  # fmt: skip


def test_offline_quality_pages_reference_no_outside_host(tmp_path):
    docs = [{"upload_id": "u_1", "check_name": "mesh_quality", "passed": False, "severity": "ERROR",
             "suite_name": "mesh_quality", "suite_sha": "abc", "created_at": "2026-12-01",
             "statistics": {"successful": 1, "evaluated": 2},
             "results": [{"success": False, "severity": "ERROR", "name": "silhouette", "column": "silhouette_iou",
                          "observed": 0.4, "expected": {"min_value": 0.6}}]}]  # fmt: skip
    page = render_quality_html(docs, {"uploads": 1, "check_runs": 1, "checks": {}})
    assert "silhouette_iou" in page and remote_references(page) == []
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        '<link href="https://maxcdn.bootstrapcdn.com/b.css" rel="stylesheet"><link href="local.css" rel="stylesheet">'
        '<script src="https://code.jquery.com/jquery.js"></script><img src="https://x.s3.amazonaws.com/logo.png?id=1">'
        '<a href="https://greatexpectations.io">Great Expectations</a>'
    )
    assert strip_remote_references(site) == 1
    text = (site / "index.html").read_text()
    assert remote_references(text) == [] and "local.css" in text and "Great Expectations" in text


def test_the_sensor_requests_one_canary_per_new_candidate_version(location, capfd):
    registry = open_registry(location)
    registry.ensure_initialised()
    production = production_map(registry.production_versions())
    resource = ModelRegistryResource.pinned(location, registry.production_versions())
    cursor = SensorCursor.parse(None).advance(production)
    assert canary_requests(resource, production, cursor, 2, True)[0] == []  # no candidate alias

    assert main(["models", "register", "rigger", "--set", "compress=true", "--candidate", "--promote"]) == 2
    assert "exclude each other" in capfd.readouterr().err and len(registry.versions("rigger")) == 1
    assert main(["models", "register", "rigger", "--set", "compress=true", "--candidate", "--json"]) == 0
    version = json.loads(capfd.readouterr().out)["registered"]["version"]
    assert "candidate" in registry.get_version("rigger", version).aliases
    [request], advanced = canary_requests(resource, production, cursor, 2, True)
    assert request.job_name == CANARY_JOB and request.run_key == f"canary:rigger:{version}"
    assert request.run_config["ops"]["run_model_canary"]["config"] == {
        "model": "rigger", "version": version, "uploads": 2, "seed": 0, "promote": True}  # fmt: skip
    assert advanced.canaried == {"rigger": version} and SensorCursor.parse(advanced.to_json()) == advanced
    assert canary_requests(resource, production, advanced, 2, True)[0] == []  # requested once
    registry.set_version_tags("rigger", version, {"avatarpipe.canary": "running"})  # e.g. the CLI's canary
    assert canary_requests(resource, production, cursor, 2, True)[0] == []
    assert SensorCursor.parse('{"production": {"rigger": "1"}, "generation": 3}').canaried == {}  # older cursors


def test_build_summary_takes_medians_over_the_built_photos():
    builds = [BuildResult("a.png", "built", glb_bytes=100, glb_uncompressed_bytes=100,
                          step_seconds={"photo": 0.1, "mesh": 2.0}),
              BuildResult("b.png", "built", glb_bytes=300, glb_uncompressed_bytes=500,
                          step_seconds={"photo": 0.3, "mesh": 4.0}),
              BuildResult("c.png", "no_person_detected")]  # fmt: skip
    summary = summarise_builds(builds)
    assert (summary["builds"], summary["builds_succeeded"]) == (3, 2)
    assert summary["build_median_glb_bytes"] == 200 and summary["build_median_glb_uncompressed_bytes"] == 300
    assert summary["build_median_mesh_seconds"] == 3.0 and summary["build_median_total_seconds"] == 3.2
    gates = load_gates().evaluation
    assert gates["build_median_glb_bytes"].gated and not gates["build_median_total_seconds"].gated
    assert gates["appearance_psnr_unseen"].better == "higher"
