"""The clean reference run the fault tests compare against (and the hygiene test scans)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestration.settings import Settings
from tests.reliability.helpers import cli_subprocess

# Distinctive on purpose: the hygiene test looks for it in every log.
REFERENCE_SUBJECT = "subj-Zoe-Quill-4711"


@dataclass(frozen=True)
class ReferenceRun:
    home: Path
    settings: Settings
    upload_id: str
    answer: dict
    stderr: str
    wall_s: float


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, standing_photo) -> ReferenceRun:
    """`avatarpipe run` on the standing sample, undisturbed, as a user runs it (a subprocess)."""
    home = tmp_path_factory.mktemp("reference_home")
    start = time.perf_counter()
    proc = cli_subprocess(["run", str(standing_photo), "--subject", REFERENCE_SUBJECT, "--json"], home)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    settings = Settings(home=home, cache=Settings.from_env().cache, mongodb_uri=None)
    return ReferenceRun(home, settings, answer["upload_id"], answer, proc.stderr, wall)
