"""A bounded load on loopback: steady status polls with concurrent uploads, and not one failed
request (the full-size run, 50 polls/s and 10 uploaders for a minute, is benchmarks/service_load.py)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.service_load import run_load
from tests.service.conftest import start_service

pytestmark = pytest.mark.slow


def test_status_polls_and_concurrent_uploads_all_succeed(tmp_path, standing_photo):
    home = tmp_path / "home"
    home.mkdir()
    proc, svc = start_service(home, {"AVATARPIPE_SERVICE_DISPATCH": "sensors"})
    try:
        result = asyncio.run(run_load(svc.url, svc.keys["uploader"], standing_photo.read_bytes(), 8, 20, 3))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert result.failures == 0, result
    assert result.status["requests"] >= 100 and result.uploads["requests"] >= 3
