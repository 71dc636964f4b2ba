"""Issue 17 (part B): `avatarpipe run` of several photos, runs of the code location that the UI
can re-execute, clean output, cached registry reads and the Anny cache build's progress."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest

from orchestration.commands.common import Reply, emit

REPO = Path(__file__).resolve().parents[2]
STANDING = REPO / "samples" / "person_standing.png"


def test_several_answers_print_one_json_object_per_line(capfd):
    reply = Reply(1, [{"upload_id": "u_a", "status": "ready"}, {"upload_id": "u_b", "status": "failed"}],
                  lambda _a: "two", one_per_line=True)  # fmt: skip
    assert emit(reply, as_json=True) == 1
    out, err = capfd.readouterr()
    assert [json.loads(line)["upload_id"] for line in out.splitlines()] == ["u_a", "u_b"] and err == ""
    assert emit(reply, as_json=False) == 1
    assert capfd.readouterr().out == "two\n"


def test_a_missing_photo_refuses_the_whole_call_before_any_upload(avatar_home, capfd):
    from orchestration.app import metadata_store, prepared_settings
    from orchestration.cli import main

    assert main(["run", str(STANDING), str(avatar_home / "nope.jpg"), "--json"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "no such file" in err and "nope.jpg" in err
    with metadata_store(prepared_settings()) as metadata:
        assert metadata.list_uploads() == []  # the existing photo was not uploaded either


def test_a_cli_run_is_a_run_of_the_code_location_that_the_ui_reexecutes(avatar_home):
    """The run record carries the code location's remote origin, and the UI's own re-execution
    mutation (`launchPipelineReexecution`, as the Re-execute button sends it) accepts it."""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster_graphql.client.query import LAUNCH_PIPELINE_REEXECUTION_MUTATION
    from dagster_graphql.test.utils import execute_dagster_graphql

    from orchestration.app import execute_avatar_job, ingest_photo, prepared_settings
    from orchestration.console import step_progress

    settings = prepared_settings()
    ingested = ingest_photo(settings, STANDING.read_bytes(), STANDING.name, "s_origin")
    lines: list[str] = []
    run_id = execute_avatar_job(settings, ingested.upload_id, asset_selection=["photo"],
                                on_event=step_progress(("photo",), lines.append))  # fmt: skip
    assert lines and lines[0].startswith("[1/1] photo ")  # the CLI's progress line, from the run's events
    instance = DagsterInstance.get()
    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == ingested.upload_id
    origin = run.remote_job_origin
    assert origin is not None and origin.job_name == "avatar_job"
    # the location name `dagster dev -m orchestration.definitions` (make ui) gives its location
    target = ModuleTarget("orchestration.definitions", None, str(REPO), None)
    assert origin.repository_origin.code_location_origin.location_name == target.create_origins()[0].location_name
    assert run.job_code_origin is not None
    with WorkspaceProcessContext(instance, target) as workspace:
        result = execute_dagster_graphql(
            workspace.create_request_context(),
            LAUNCH_PIPELINE_REEXECUTION_MUTATION,
            {"reexecutionParams": {"parentRunId": run_id, "strategy": "ALL_STEPS"}},
        )
    launched = result.data["launchPipelineReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert launched["run"]["parentRunId"] == run_id and launched["run"]["pipeline"]["name"] == "avatar_job"
    child = instance.get_run_by_id(launched["run"]["runId"])
    assert child.asset_selection == run.asset_selection  # the same step, the same partition
    assert child.tags["dagster/partition"] == ingested.upload_id


def test_production_reads_are_cached_per_process_until_the_registry_changes(avatar_home, monkeypatch):
    from orchestration import registry
    from orchestration.app import prepared_settings

    location = registry.RegistryLocation.for_settings(prepared_settings())
    first = registry.load_production_versions(location)  # initialises the fresh registry
    reads = []
    monkeypatch.setattr(registry, "_read_snapshot", lambda *a: reads.append(a) or None)
    assert registry.load_production_versions(location) == first and reads == []  # no file, no MLflow
    registry._drop_snapshot(location)  # what a write through this process does
    assert registry.load_production_versions(location) == first and len(reads) == 1


def test_anny_cache_build_progress_comes_from_annys_own_builder_records():
    """The phases are the ones Anny's cache builder logs (its wording checked against its
    source), each with the elapsed time and an estimate; a cached load shows nothing."""
    from anny.models import model_data

    from models.body_model import anny_build_progress

    source = inspect.getsource(model_data.cache_builder)
    assert "No cached model data found at" in source and "Saved built model data to cache at" in source
    log = logging.getLogger(model_data.__name__)  # the logger Anny's builder writes to
    lines: list[str] = []
    with anny_build_progress(lines.append):
        log.info("Loading cached model data from /c/v3/build_model_data_" + "a" * 32 + ".safetensors")
    assert lines == []
    with anny_build_progress(lines.append) as progress:
        log.info("No cached model data found at /c/v3/build_model_data_" + "b" * 32 + ".safetensors, building model data...")
        log.info("Saved built model data to cache at /c/v3/build_model_data_" + "b" * 32 + ".safetensors")
    assert progress.started is not None
    assert lines[0].startswith("anny model cache: not built yet")
    assert "build_model_data: building" in lines[1] and "min left" in lines[1]
    assert "build_model_data: built in" in lines[2]
    assert logging.getLogger("anny").propagate  # restored after the build


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_output_unless_verbose(monkeypatch, verbose):
    from orchestration import console
    from orchestration.config import VERBOSE_ENV

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    console.configure_output(verbose, whole_process=False)  # this test's process keeps its stderr
    assert console.is_verbose() is verbose
    if verbose:
        assert console.run_logging_config() == {}
    else:
        assert console.run_logging_config()["loggers"]["console"]["config"]["log_level"] == "WARNING"


CHATTER = [
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "W0000 00:00:1796141688.715019   14164 inference_feedback_manager.cc:114] Feedback manager requires ...",
    "Warp 1.19.0 initialized:",
    "   Kernel cache:",
    "Module anny.skinning.warp_skinning fe427fc load on device 'cpu' took 21.03 ms  (cached)",
]


@pytest.mark.parametrize("verbose", [False, True])
def test_native_chatter_leaves_stderr_only_without_verbose(verbose):
    """A process set up as the CLI sets itself up: TFLite/absl/Warp lines written straight to fd 2
    (by it and by a worker process it starts) are dropped; everything else passes, in order."""
    import subprocess
    import sys

    script = (
        "import os, subprocess, sys\n"
        f"from orchestration.console import configure_output; configure_output({verbose})\n"
        f"lines = {CHATTER!r}\n"
        "os.write(2, ('\\n'.join(['[1/5] photo 0.1s', *lines[:3], 'keep me']) + '\\n').encode())\n"
        "subprocess.run([sys.executable, '-c', 'import os; os.write(2, ' + repr(('\\n'.join(lines[3:]) + '\\nworker line\\n').encode()) + ')'])\n"
        "import warnings; warnings.warn('a library deprecation')\n"
        "print('the answer')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0 and done.stdout == "the answer\n"
    kept = done.stderr.splitlines()
    if verbose:
        assert all(line in kept for line in CHATTER) and "a library deprecation" in done.stderr
    else:
        assert kept == ["[1/5] photo 0.1s", "keep me", "worker line"]


def test_run_of_several_photos_answers_one_line_each_in_order(avatar_home, tmp_path):
    """The real CLI process: a good photo and a file that is no image in one call. One JSON
    object per line, in the order given, each its own Dagster run; exit 1 because one failed;
    stderr has the per-step progress lines and none of Dagster's DEBUG event lines."""
    import os
    import subprocess
    import sys

    bogus = tmp_path / "not_a_photo.jpg"
    bogus.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" * 50)
    env = {**os.environ, "PYTHONPATH": str(REPO), "AVATARPIPE_HOME": str(avatar_home)}
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "run", str(STANDING), str(bogus), "--subject", "s_batch", "--json"],
        check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["status"] for a in answers] == ["ready", "failed"]
    assert answers[1]["error"]["code"] == "NOT_AN_IMAGE" and answers[1]["error"]["step"] == "photo"
    assert {a["subject_id"] for a in answers} == {"s_batch"}
    assert answers[0]["dagster_run_id"] != answers[1]["dagster_run_id"]
    assert answers[0]["artifacts"]["rigged_glb"]["bytes"] > 100_000
    for step, n in (("photo", 1), ("keypoints", 2), ("smplx_params", 3), ("mesh", 4), ("rigged_glb", 5)):
        assert f"[{n}/5] {step} " in done.stderr
    assert "[1/5] photo FAILED" in done.stderr
    assert " - DEBUG - " not in done.stderr and "STEP_SUCCESS" not in done.stderr
    assert "inference_feedback_manager" not in done.stderr and "Warp " not in done.stderr


def test_a_batch_photo_whose_run_process_dies_fails_alone_with_an_answer(avatar_home, tmp_path):
    """Each photo of a batch runs in its own forked child: a child killed mid-run (SIGKILL at the
    first step boundary, the test-only fault hook, armed for every photo here) leaves the CLI
    alive, which answers for each photo, in order, typed, and exits 1."""
    import os
    import subprocess
    import sys

    second = tmp_path / "second.png"
    second.write_bytes(STANDING.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO), "AVATARPIPE_HOME": str(avatar_home),
           "AVATARPIPE_FAULT_KILL_AT": "photo:stored"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "run", str(STANDING), str(second), "--json"],
        check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["photo"] for a in answers] == [STANDING.name, "second.png"]
    assert all(a["status"] == "failed" and a["error"]["code"] == "INTERNAL_ERROR" for a in answers)
    assert "ended without an answer (exit status -9)" in done.stderr
