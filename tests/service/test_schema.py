"""Property-based tests of the whole API from its own OpenAPI document (schemathesis): whatever
the generated requests, the service never answers with a server error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ST = Path(sys.executable).parent / "st"


@pytest.mark.parametrize("role", ["admin", "uploader"])
def test_no_generated_request_gets_a_server_error(service, role):
    done = subprocess.run(
        [str(ST), "run", f"{service.url}/openapi.json", "--checks", "not_a_server_error",
         "--header", f"Authorization: Bearer {service.keys[role]}", "--max-examples", "12",
         "--phases", "examples,coverage,fuzzing", "--seed", "7", "--request-timeout", "60",
         "--suppress-health-check", "all", "--workers", "1"],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert summary and int(summary.group(2)) >= 100, done.stdout[-2000:]  # the API was really exercised
