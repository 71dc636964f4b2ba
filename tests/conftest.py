"""Shared fixtures: isolated homes, bundled photos, the Anny model loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
