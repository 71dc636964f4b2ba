"""`avatarpipe run` as a user runs it: a subprocess, stdout JSON, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "avatarpipe"


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, AVATARPIPE_HOME=str(home))
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=900, check=False)


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_home")


def test_run_json_contract(cli_home, skiing_photo):
    proc = _run(["run", str(skiing_photo), "--subject", "cli-subject", "--json"], cli_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert set(summary) == {
        "upload_id", "subject_id", "status", "error", "artifacts", "metrics", "checks",
        "timings_s", "model_versions", "dagster_run_id",
    }  # fmt: skip
    assert summary["status"] == "ready" and summary["error"] is None
    assert summary["subject_id"] == "cli-subject" and summary["upload_id"].startswith("u_")
    assert set(summary["artifacts"]) == {"photo", "keypoints", "smplx_params", "mesh", "rigged_glb"}
    glb = summary["artifacts"]["rigged_glb"]
    assert Path(glb["path"]).read_bytes()[:4] == b"glTF" and glb["bytes"] == Path(glb["path"]).stat().st_size
    assert set(summary["timings_s"]) == set(summary["artifacts"])
    assert summary["model_versions"]["body_fitter"] == "1"
    assert "avatarpipe: upload" in proc.stderr  # progress on stderr


def test_run_rejects_a_non_image_with_a_typed_error(cli_home, tmp_path):
    bogus = tmp_path / "photo.jpg"
    bogus.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = _run(["run", str(bogus), "--json"], cli_home)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert summary["status"] == "failed"
    assert summary["error"]["code"] in {"NOT_AN_IMAGE", "TRUNCATED_IMAGE"}
    assert summary["artifacts"] == {}


def test_missing_file_is_a_usage_error(cli_home, tmp_path):
    proc = _run(["run", str(tmp_path / "nope.png")], cli_home)
    assert proc.returncode == 2 and "no such file" in proc.stderr
