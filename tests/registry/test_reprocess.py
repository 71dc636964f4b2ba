"""Model upgrade -> reprocess, end to end: real MLflow registry (sqlite), real Dagster instance,
the real pipeline on two photos. The Dagster event log is the witness of what ran. The upgrade
test runs on PostgreSQL too (Dagster's storage and MLflow's backend store; the other two tests
share the sqlite home they need)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    build_sensor_context,
)
from dagster._core.definitions.data_version import StaleCauseCategory, StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver  # Dagster's own UI resolver

from orchestration.app import ASSET_ORDER, ingest_photo, run_avatar_job, summarise
from orchestration.registry import (
    RegistryLocation,
    asset_code_versions,
    load_production_versions,
    open_registry,
)
from orchestration.sensors import (
    CANARY_JOB,
    TAG_CANARY_VERSION,
    TAG_FROM,
    TAG_GENERATION,
    build_model_upgrade_sensor,
)
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store
from tests.backends.fixtures import BACKEND_VARS, BACKENDS, make_backend

pytestmark = pytest.mark.slow
CLI = Path(sys.executable).parent / "avatarpipe"
REBUILT = ("smplx_params", "mesh", "rigged_glb")


@pytest.fixture(scope="module")
def home(tmp_path_factory, request):
    backend = make_backend(request.param, request)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVATARPIPE_HOME", str(tmp_path_factory.mktemp(f"reprocess_home_{backend.name}")))
        for var in ("DAGSTER_HOME", "MONGODB_URI", *BACKEND_VARS):
            mp.delenv(var, raising=False)
        for key, value in backend.env.items():
            mp.setenv(key, value)
        mp.setenv("AVATARPIPE_DAGSTER_URL", "off")  # no webserver to reload in tests
        settings = Settings.from_env()
        prepare_environment(settings)
        yield settings


@pytest.fixture(scope="module")
def built(home, standing_photo, skiing_photo) -> dict[str, str]:
    """Two avatars built with the production (version 1) models: {upload id: run id}."""
    runs = {}
    for photo in (standing_photo, skiing_photo):
        ingested = ingest_photo(home, photo.read_bytes(), photo.name, "reprocess-subject")
        runs[ingested.upload_id] = run_avatar_job(home, ingested.upload_id)
        assert summarise(home, ingested.upload_id, None).to_dict()["status"] == "ready"
    return runs


def _cli(*args: str) -> dict:
    proc = subprocess.run([str(CLI), *args], capture_output=True, text=True, env=dict(os.environ),
                          timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _materialisations(instance: DagsterInstance, asset: str, upload: str) -> list:
    return instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[upload]), limit=20
    ).records


def _current(settings: Settings, upload: str) -> dict[str, dict]:
    with open_metadata_store(None, settings.metadata_dir) as metadata:
        return {d["asset_key"]: d for d in metadata.artifacts_for_upload(upload)}


def _assets_materialised_in(instance: DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return sorted(r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records)


def _definitions(settings: Settings):
    # imported here: importing the module builds the default code location from the environment
    from orchestration.definitions import build_definitions

    return build_definitions(settings)


@pytest.mark.parametrize("home", BACKENDS, indirect=True)
def test_body_fitter_upgrade_rebuilds_only_the_affected_steps(home, built):
    instance = DagsterInstance.get()
    uploads = sorted(built)
    before = {u: _current(home, u) for u in uploads}
    location = RegistryLocation.for_settings(home)
    old_code = asset_code_versions(load_production_versions(location))

    promoted = _cli("models", "register", "body_fitter", "--set", "angle_prior=0.08", "--set", "seed=1",
                    "--description", "stronger hinge prior", "--promote", "--json")  # fmt: skip
    assert promoted["registered"]["version"] == "2" and promoted["registered"]["params"]["angle_prior"] == 0.08
    assert promoted["promotion"]["previous"] == "1" and promoted["promotion"]["production"] == "2"
    assert promoted["promotion"]["outdated_uploads"] == 2
    new_code = asset_code_versions(load_production_versions(location))
    assert {a for a in old_code if old_code[a] != new_code[a]} == {"smplx_params"}

    # What the Dagster UI shows once the code location is reloaded: the fit is stale because its
    # code version changed; photo and keypoints are fresh.
    defs = _definitions(home)
    resolver = get_stale_status_resolver(instance, list(defs.assets))
    for upload in uploads:
        assert resolver.get_status(AssetKey("photo"), upload) == StaleStatus.FRESH
        assert resolver.get_status(AssetKey("keypoints"), upload) == StaleStatus.FRESH
        assert resolver.get_status(AssetKey("smplx_params"), upload) == StaleStatus.STALE
        causes = resolver.get_stale_causes(AssetKey("smplx_params"), upload)
        assert [c.category for c in causes] == [StaleCauseCategory.CODE]

    plan = _cli("reprocess", "--dry-run", "--json")
    assert plan["dry_run"] is True and plan["counts"] == {"planned": 2, "succeeded": 0, "failed": 0}
    assert [(r["upload_id"], r["first_asset"], r["assets"], r["models"]) for r in plan["uploads"]] == [
        (u, "smplx_params", list(REBUILT), ["body_fitter@1->2"]) for u in uploads
    ]
    assert not instance.get_runs(RunsFilter(tags={TAG_FROM: "smplx_params"}))  # nothing ran

    done = _cli("reprocess", "--json")
    assert done["counts"] == {"planned": 2, "succeeded": 2, "failed": 0}
    assert all(r["run_status"] == "SUCCESS" and r["upload_status"] == "ready" for r in done["uploads"])
    reprocess_runs = {r["upload_id"]: r["run_id"] for r in done["uploads"]}

    for upload in uploads:
        # Event log: photo and keypoints only from the original run; the three downstream assets
        # exactly once more, in this upload's reprocess run, under the new code version.
        for asset in ("photo", "keypoints"):
            assert [r.run_id for r in _materialisations(instance, asset, upload)] == [built[upload]]
        for asset in REBUILT:
            records = _materialisations(instance, asset, upload)
            assert sorted(r.run_id for r in records) == sorted([built[upload], reprocess_runs[upload]]), asset
        newest = _materialisations(instance, "smplx_params", upload)[0]
        assert newest.run_id == reprocess_runs[upload]
        assert newest.asset_materialization.tags["dagster/code_version"] == new_code["smplx_params"]
        assert _assets_materialised_in(instance, reprocess_runs[upload]) == sorted(REBUILT)
        run = instance.get_run_by_id(reprocess_runs[upload])
        assert run.status == DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == upload
        assert run.tags["avatarpipe/trigger"] == "cli" and run.tags[TAG_FROM] == "smplx_params"

        # Ledger: upstream docs untouched; the rebuilt ones name the new version and supersede the old.
        after = _current(home, upload)
        assert after["photo"]["_id"] == before[upload]["photo"]["_id"]
        assert after["keypoints"]["_id"] == before[upload]["keypoints"]["_id"]
        assert after["smplx_params"]["model_versions"] == {"body_model": "1", "body_fitter": "2"}
        assert after["rigged_glb"]["lineage_model_versions"]["body_fitter"] == "2"
        with open_metadata_store(None, home.metadata_dir) as metadata:
            for asset in REBUILT:
                assert after[asset]["run_id"] == reprocess_runs[upload]
                old = metadata.get_artifact(before[upload][asset]["_id"])
                assert old["superseded_by"] == after[asset]["_id"] and old["superseded_at"] is not None
            fit = json.loads(Path(summarise(home, upload, None).to_dict()["artifacts"]["smplx_params"]["path"]).read_text())
            assert fit["config"]["angle_prior"] == 0.08 and fit["config"]["seed"] == 1
            audit = [e for e in metadata.audit_for("reprocess-subject") if e["upload_id"] == upload]
        reprocess_events = [e["details"] for e in audit if e["event"] == "reprocess"]
        assert reprocess_events == [reprocess_events[0]] and reprocess_events[0]["trigger"] == "cli"
        assert reprocess_events[0]["run_id"] == reprocess_runs[upload]

    assert len(instance.get_runs(RunsFilter(tags={TAG_FROM: "smplx_params"}))) == 2
    resolver = get_stale_status_resolver(instance, list(defs.assets))
    assert {resolver.get_status(AssetKey(a), u) for a in ASSET_ORDER for u in uploads} == {StaleStatus.FRESH}
    assert _cli("reprocess", "--dry-run", "--json")["uploads"] == []  # nothing left to do


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_model_upgrade_sensor_rebuilds_in_bounded_batches_and_rolls_back(home, built):
    instance = DagsterInstance.get()
    uploads = sorted(built)
    registry = open_registry(RegistryLocation.for_settings(home))
    defs = _definitions(home)
    job = defs.resolve_job_def("reprocess_job")
    sensor = build_model_upgrade_sensor("reprocess_job", limit=1)  # at most one run in flight

    def tick(cursor):
        with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as ctx:
            return sensor(ctx)

    def execute(request):  # what the run launcher does: a run worker loads the code afresh
        job = _definitions(home).resolve_job_def("reprocess_job")
        result = job.execute_in_process(partition_key=request.partition_key, asset_selection=request.asset_selection,
                                        tags=request.tags, instance=instance, raise_on_error=False)  # fmt: skip
        assert result.success
        return result.run_id

    first = tick(None)
    assert not first.run_requests and "nothing outdated" in first.skip_reason.skip_message
    mesh_v1 = {u: _current(home, u)["mesh"] for u in uploads}

    new = registry.register_version("reconstructor", {"texture_size": 512}, description="smaller atlas")
    registry.promote("reconstructor", new.version)
    second = tick(first.cursor)
    [request] = second.run_requests
    assert request.partition_key == uploads[0]
    assert request.asset_selection == [AssetKey("mesh"), AssetKey("rigged_glb")]
    assert request.tags["avatarpipe/trigger"] == "sensor" and request.tags[TAG_GENERATION].startswith("2-")

    # Bounded: while that run exists unfinished (the daemon has created it, not yet run it), the
    # next tick requests nothing more.
    queued = instance.create_run_for_job(job_def=job, tags=request.tags)
    held = tick(second.cursor)
    assert not held.run_requests and "1 upload(s) waiting, 1 run(s) in flight" in held.skip_reason.skip_message
    instance.delete_run(queued.run_id)
    sensor_runs = {uploads[0]: execute(request)}

    third = tick(held.cursor)
    [request] = third.run_requests
    assert request.partition_key == uploads[1]
    sensor_runs[uploads[1]] = execute(request)
    assert "nothing outdated (2 run(s) requested" in tick(third.cursor).skip_reason.skip_message
    # the generation is done: the MLflow version page counts what it built (and names the query)
    tags = registry.version_tags("reconstructor", new.version)
    assert tags["avatarpipe.avatars_built"] == "2" and tags["avatarpipe.avatars_query"].startswith("avatarpipe models")

    for upload in uploads:
        assert _assets_materialised_in(instance, sensor_runs[upload]) == ["mesh", "rigged_glb"]
        assert len(_materialisations(instance, "smplx_params", upload)) == 2  # not rebuilt again
        assert len(_materialisations(instance, "keypoints", upload)) == 1
        mesh = _current(home, upload)["mesh"]
        assert mesh["model_versions"]["reconstructor"] == "2" and mesh["metrics"]["texture_size"] == 512

    # Rollback, after the first upload's partition was retired: a new generation, the partition
    # is re-added, and the rebuilt mesh is the version-1 artifact made current again.
    registry.promote("reconstructor", "1")
    instance.delete_dynamic_partition("uploads", uploads[0])
    rollback = tick(third.cursor)
    [request] = rollback.run_requests
    assert request.partition_key == uploads[0] and request.tags[TAG_GENERATION].startswith("3-")
    assert [r.partition_keys for r in rollback.dynamic_partitions_requests] == [[uploads[0]]]
    instance.add_dynamic_partitions("uploads", [uploads[0]])  # what the daemon does with the request
    execute(request)
    mesh = _current(home, uploads[0])["mesh"]
    assert mesh["model_versions"]["reconstructor"] == "1" and mesh["sha256"] == mesh_v1[uploads[0]]["sha256"]
    assert mesh["_id"] == mesh_v1[uploads[0]]["_id"]  # same bytes, same code version: same document
    assert summarise(home, uploads[0], None).to_dict()["status"] == "ready"


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_model_upgrade_sensor_canaries_a_candidate_and_promotes_only_after_it_passed(home, built):
    """The sensor path of the canary: a new `candidate` alias -> one model_canary_job run on a
    seeded-random affected upload (the CLI's canary code, recorded the same way) -> failed: production
    and the current artifacts stay; passed: promoted through the gates, then the next tick reprocesses
    every affected upload."""
    instance = DagsterInstance.get()
    uploads = sorted(built)
    registry = open_registry(RegistryLocation.for_settings(home))
    defs = _definitions(home)
    sensor = build_model_upgrade_sensor(defs.resolve_job_def("reprocess_job"), canary_uploads=1)

    def tick(cursor):
        with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as ctx:
            return sensor(ctx)

    def execute(request):  # what the run launcher does with the canary job's request
        job = _definitions(home).resolve_job_def(request.job_name)
        return job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance,
                                      raise_on_error=False)  # fmt: skip

    def canary_events(verdict=None):
        with open_metadata_store(None, home.metadata_dir) as metadata:
            return [e["details"] for e in metadata.audit_events("model_canary_summary")
                    if verdict is None or e["details"]["verdict"] == verdict]  # fmt: skip

    def promotions_by_canary():
        with open_metadata_store(None, home.metadata_dir) as metadata:
            return [e["details"] for e in metadata.audit_events("model_promote") if e["details"]["trigger"] == "canary"]

    settled = tick(None)  # (an earlier test of this module may leave an upload outdated: its rebuild is requested)
    assert all(r.job_name == "reprocess_job" for r in settled.run_requests)  # no candidate, no canary
    generation = json.loads(settled.cursor)["generation"]
    production = registry.production_versions()["reconstructor"].version
    current = {u: {a: d["_id"] for a, d in _current(home, u).items()} for u in uploads}

    # 1. a worse candidate (no clothing offsets: the mesh no longer covers the clothed silhouette)
    worse = registry.register_version("reconstructor", {"clothing": False}, description="canary: worse")
    registry.set_alias("reconstructor", "candidate", worse.version)
    requested = tick(settled.cursor)
    # (a rebuild an earlier test of this module left outdated may be requested beside it)
    [request] = [r for r in requested.run_requests if r.job_name == CANARY_JOB]
    assert request.job_name == CANARY_JOB and request.tags[TAG_CANARY_VERSION] == worse.version
    assert request.run_config["ops"]["run_model_canary"]["config"]["uploads"] == 1
    assert not [r for r in tick(requested.cursor).run_requests if r.job_name == CANARY_JOB]  # once per candidate version
    failed_before = len(canary_events("failed"))
    assert not execute(request).success  # the canary job fails, visibly
    [event] = canary_events("failed")[failed_before:]
    assert (event["candidate"], event["uploads"], event["affected"]) == (worse.version, 1, 2)
    assert registry.version_tags("reconstructor", worse.version)["avatarpipe.canary"] == "failed"
    assert registry.production_versions()["reconstructor"].version == production
    assert {u: {a: d["_id"] for a, d in _current(home, u).items()} for u in uploads} == current
    assert promotions_by_canary() == []
    after_failure = tick(requested.cursor)  # production did not move: no new generation, nothing new to rebuild
    assert json.loads(after_failure.cursor)["generation"] == generation
    assert {r.run_key for r in after_failure.run_requests} <= {r.run_key for r in settled.run_requests}

    # 2. a candidate as good as production (a smaller texture atlas): passed -> promoted -> reprocessed
    good = registry.register_version("reconstructor", {"texture_size": 512}, description="canary: good")
    registry.set_alias("reconstructor", "candidate", good.version)
    requested = tick(after_failure.cursor)
    [request] = [r for r in requested.run_requests if r.job_name == CANARY_JOB]  # (beside the left-over rebuild)
    assert request.tags[TAG_CANARY_VERSION] == good.version
    assert execute(request).success
    assert canary_events()[-1]["verdict"] == "passed"
    assert registry.version_tags("reconstructor", good.version)["avatarpipe.canary"] == "passed"
    assert registry.production_versions()["reconstructor"].version == good.version
    [promotion] = promotions_by_canary()
    assert (promotion["previous"], promotion["production"]) == (production, good.version)
    assert "candidate" not in registry.get_version("reconstructor", good.version).aliases
    assert {u: {a: d["_id"] for a, d in _current(home, u).items()} for u in uploads} == current  # not yet rebuilt
    rebuild = tick(requested.cursor)
    promoted = [r for r in rebuild.run_requests if r.run_key not in {s.run_key for s in settled.run_requests}]
    assert sorted(r.partition_key for r in promoted) == uploads
    assert {r.job_name for r in rebuild.run_requests} == {"reprocess_job"}
    assert all(r.asset_selection == [AssetKey("mesh"), AssetKey("rigged_glb")] for r in promoted)
    registry.promote("reconstructor", production)  # leave the module's home as the other tests expect


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_retention_job_purges_superseded_artifacts_and_keeps_the_avatars(home, built):
    instance = DagsterInstance.get()
    defs = _definitions(home)
    config = {"ops": {"purge_superseded_artifacts": {"config": {"older_than_days": 0}}}}
    result = defs.resolve_job_def("retention_job").execute_in_process(run_config=config, instance=instance)
    assert result.success
    summary = result.output_for_node("purge_superseded_artifacts")
    assert summary["artifacts_deleted"] >= 6 and summary["objects_deleted"] >= 6
    with open_metadata_store(None, home.metadata_dir) as metadata:
        for upload in built:
            docs = metadata.artifacts_for_upload(upload, include_superseded=True)
            current = [d for d in docs if d["superseded_by"] is None]
            parents = {p for d in current for p in d["parent_ids"]}
            assert all(d["superseded_by"] is None or d["_id"] in parents for d in docs)
            answer = summarise(home, upload, None).to_dict()
            assert answer["status"] == "ready" and set(answer["artifacts"]) == set(ASSET_ORDER)
            assert all(Path(a["path"]).is_file() for a in answer["artifacts"].values())
        assert len(metadata.audit_events("purge_superseded")) == len(built)
