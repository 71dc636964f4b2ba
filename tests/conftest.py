"""Shared fixtures: isolated homes, bundled photos, the Anny model loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestration.config import DERIVED_DAGSTER_HOME_ENV, VERBOSE_ENV

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "photos"

pytest_plugins = ["tests.backends.fixtures"]  # `backend` (sqlite | postgres), `pg_server`

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
# The product's default placement is the warm worker pool, whose workers are per home and stay up
# for AVATARPIPE_WARM_IDLE_S after their last step: a suite that makes a home per test would keep
# a gigabyte per home alive. Tests run steps in one-shot Pipes workers unless they ask for `warm`
# (tests/orchestration/test_warm_worker.py, test_queue_throughput.py).
os.environ.setdefault("AVATARPIPE_COMPUTE_MODE", "subprocess")


# What the CLI exports into its own process (`prepare_environment`, `export_verbosity`): a test that
# runs the CLI in-process must not leave it to the next test, which would take the derived Dagster
# home for an operator's and ignore the instance settings of its own home.
PROCESS_EXPORTS = ("DAGSTER_HOME", DERIVED_DAGSTER_HOME_ENV, VERBOSE_ENV)


@pytest.fixture(autouse=True)
def _restore_process_exports():
    saved = {name: os.environ.get(name) for name in PROCESS_EXPORTS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def standing_photo() -> Path:
    return SAMPLES / "person_standing.png"


@pytest.fixture(scope="session")
def skiing_photo() -> Path:
    return SAMPLES / "person_skiing.jpg"


@pytest.fixture(scope="session")
def anny_model():
    from models.body_model import load_anny

    return load_anny()


@pytest.fixture(scope="session")
def anny_fitter_body(anny_model):
    """The session's Anny behind the fitter's `BodyModel` interface (what the pipeline fits)."""
    from models.body_model import AnnyBody

    return AnnyBody(anny_model)


@pytest.fixture
def avatar_home(tmp_path, monkeypatch) -> Path:
    """A fresh AVATARPIPE_HOME (and Dagster instance) per test; the model cache is shared."""
    home = tmp_path / "home"
    monkeypatch.setenv("AVATARPIPE_HOME", str(home))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return home
