"""Issue 12: the uploader's body hints on `avatarpipe run` / `ingest`, through to the fit."""

import json
import os
import subprocess
import sys
from pathlib import Path

from assets.steps import _body_hints
from orchestration.app import body_hints, ingest_photo
from orchestration.cli import cli
from orchestration.settings import Settings

CLI = Path(sys.executable).parent / "avatarpipe"


def _hints_of(argv: list[str]) -> dict:
    """The hints a command line carries, parsed by the CLI itself (nothing runs)."""
    command = cli.commands[argv[0]]
    params = command.make_context(argv[0], argv[1:]).params
    return body_hints(params["build"], params["height_cm"], params["age_group"])


def test_hint_flags_parse_into_the_stored_hints():
    args = ["run", "p.png", "--build", "feminine", "--height-cm", "170", "--age-group", "adult"]
    assert _hints_of(args) == {"build": "feminine", "height_cm": 170.0, "age_group": "adult"}
    assert _hints_of(["ingest", "p.png"]) == {}


def test_an_out_of_range_height_is_refused_before_anything_is_stored(avatar_home, standing_photo, capfd):
    from orchestration.cli import main

    assert main(["run", str(standing_photo), "--height-cm", "20"]) == 2
    assert "height must be between" in capfd.readouterr().err
    assert not (avatar_home / "objects").exists() or not any((avatar_home / "objects").rglob("*.png"))


def test_ingest_stores_hints_on_the_upload_and_only_the_fit_receives_them(avatar_home, standing_photo):
    from orchestration.settings import prepare_environment
    from storage.metadata_store import open_metadata_store

    settings = Settings.from_env()
    prepare_environment(settings)
    hints = {"build": "masculine", "height_cm": 181.0}
    ingested = ingest_photo(settings, standing_photo.read_bytes(), "standing.png", None, hints=hints)
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        upload = metadata.get_upload(ingested.upload_id)
    finally:
        metadata.close()
    assert upload["body_hints"] == hints
    assert _body_hints("smplx_params", upload) == {"body_hints": hints}
    assert _body_hints("mesh", upload) == {}


def test_run_with_hints_makes_a_body_of_that_height(tmp_path, standing_photo):
    """The whole pipeline as a user runs it: the fit honours the hints and records them."""
    env = dict(os.environ, AVATARPIPE_HOME=str(tmp_path / "home"))
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [str(CLI), "run", str(standing_photo), "--height-cm", "183", "--build", "masculine", "--json"],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    fit = json.loads(Path(summary["artifacts"]["smplx_params"]["path"]).read_text())
    assert fit["hints"] == {"build": "masculine", "height_cm": 183.0}
    assert abs(fit["metrics"]["body_height_m"] - 1.83) < 0.005
    assert fit["phenotype"]["gender"] == 0.05 and fit["phenotype_estimate"]["gender"]["source"] == "hint"
    assert fit["phenotype_estimate"]["age"]["source"] in ("estimated", "prior")
