"""A run SIGKILLed at every step boundary, resumed each time, ends exactly where a clean run
ends, and leaves no orphan anywhere.

The process kills itself through the test-only hook in assets/steps.py
(`AVATARPIPE_FAULT_KILL_AT=<asset>:stored` right after a step's objects are written and before
its document is recorded; `<asset>:recorded` right after the document). One upload goes
through all ten kill points in a row - `avatarpipe run` is killed at the first, then
`avatarpipe resume` at each following one - and a final `resume` completes it. Every process
is a real CLI subprocess; nothing is cleaned up between them except by `resume` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from orchestration.app import ASSET_ORDER
from tests.reliability.helpers import cli_subprocess, fsck_report, isolated_home, ledger, only_upload

pytestmark = pytest.mark.slow
KILL_POINTS = [f"{asset}:{point}" for asset in ASSET_ORDER for point in ("stored", "recorded")]
SIGKILLED = -9


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with isolated_home(tmp_path_factory.mktemp("kill_home")) as settings:
        yield settings


TIMED = "smplx_params"  # its JSON records `metrics.fit_seconds`, a wall-clock duration


def _fit(home_dir: Path, doc: dict) -> dict:
    """A fit artifact without its wall-clock duration: what the science computed."""
    fit = json.loads((home_dir / "objects" / doc["key"]).read_bytes())
    fit["metrics"].pop("fit_seconds", None)
    return fit


def _relative(keys: list[str]) -> set[str]:
    """Keys without their `subjects/{subject}/{upload}/` head: what a run produced."""
    return {key.split("/", 3)[3] for key in keys}


def test_killed_at_every_step_boundary_then_resumed(home, standing_photo, reference_run):
    upload_id = None
    for index, point in enumerate(KILL_POINTS):
        env = {"AVATARPIPE_FAULT_KILL_AT": point}
        if index == 0:
            proc = cli_subprocess(["run", str(standing_photo), "--subject", "kill-subject", "--json"], home.home, env)
            upload_id = only_upload(home)
        else:
            proc = cli_subprocess(["resume", upload_id, "--json"], home.home, env)
        assert proc.returncode == SIGKILLED, f"{point}: {proc.returncode}\n{proc.stderr[-2000:]}"
        assert proc.stdout == ""  # died before answering
        state = ledger(home, upload_id)
        assert state.upload["status"] != "ready"
        assert state.upload["lease"] is not None  # the dead holder never released it
        report = fsck_report(home, upload_id)
        asset, when = point.split(":")
        if when == "stored":  # objects written, document not: exactly that step's orphans
            assert report.counts()["orphan_object"] >= 1 and report.counts()["missing_object"] == 0
            assert {f.asset_key for f in report.findings} == {asset}
            assert asset not in state.current
        else:  # document recorded: consistent
            assert report.clean, report.to_dict()
            assert asset in state.current

    proc = cli_subprocess(["resume", upload_id, "--json"], home.home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer["status"] == "ready" and answer["error"] is None
    # killed after rigged_glb was recorded but before its quality gate ran: only that is redone
    assert answer["resume"]["from_asset"] == "rigged_glb" and answer["resume"]["action"] == "resumed"

    # The final state equals the clean run's.
    state = ledger(home, upload_id)
    reference = ledger(reference_run.settings, reference_run.upload_id)
    assert state.upload["status"] == "ready" and state.upload["error"] is None and state.upload["lease"] is None
    assert set(state.current) == set(reference.current) == set(ASSET_ORDER)
    assert len(reference.docs) == len(ASSET_ORDER)
    for asset in ASSET_ORDER:
        if asset == TIMED:
            assert _fit(home.home, state.current[asset]) == _fit(reference_run.home, reference.current[asset])
        else:  # deterministic science: the same bytes, hence the same keys and artifact ids
            assert state.current[asset]["sha256"] == reference.current[asset]["sha256"], asset
    # Steps redone after a kill rewrote the same artifact (same id, no new document), except the
    # fit, whose JSON embeds its own duration: a redone fit is a new version of identical content
    # that supersedes the old one (kept until retention, like any superseded version).
    superseded = [d for d in state.docs if d.get("superseded_by")]
    assert {d["asset_key"] for d in superseded} <= {TIMED}
    assert all(_fit(home.home, d) == _fit(home.home, state.current[TIMED]) for d in superseded)
    assert len(state.docs) == len(ASSET_ORDER) + len(superseded)
    untimed = {k for k in _relative(state.keys) if not k.startswith(TIMED)}
    assert untimed == {k for k in _relative(reference.keys) if not k.startswith(TIMED)}
    assert len(state.keys_of(TIMED)) == 1 + len(superseded)  # one object per fit document, no more
    assert fsck_report(home).clean  # the whole home: no orphan objects, no dangling documents

    # Dagster agrees: every killed run was marked failed by the runner that took over.
    runs = DagsterInstance.get().get_runs(RunsFilter(tags={"avatarpipe/upload_id": upload_id}))
    statuses = [r.status for r in runs]
    assert len(runs) == len(KILL_POINTS) + 1
    assert statuses.count(DagsterRunStatus.SUCCESS) == 1
    assert statuses.count(DagsterRunStatus.FAILURE) == len(KILL_POINTS)
