"""`avatarpipe worker start|stop|status [--json]`: the warm Pipes workers of this home
(compute mode `warm`, `orchestration.compute_warm`). Steps start workers on demand and workers
exit when idle (`AVATARPIPE_WARM_IDLE_S`), so these commands are for operators: start the pool
before a batch (the first request then finds the models loaded), see what is running and how
much memory it took, stop it (each worker finishes the step in hand first).

Exit status: 0; 1 when `start` could not bring a worker up (its log is named).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from models.errors import PipelineError
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings

if TYPE_CHECKING:
    from orchestration.compute_warm import SlotStatus, WarmPool


def pool_of(settings: Settings) -> WarmPool:
    """The pool the configured launcher would hand steps to (whatever the compute mode)."""
    from orchestration.compute import launcher_from_settings  # Dagster: only when a worker command runs

    return launcher_from_settings(settings).warm_pool()


def _human(slots: list[SlotStatus]) -> str:
    if not slots:
        return "no warm workers"
    lines = []
    for s in slots:
        if not s.alive:
            lines.append(f"slot {s.slot}: not running")
            continue
        state = "starting" if not s.ready else ("busy" if s.busy else f"idle {s.idle_s}s")
        stale = "" if s.current else " (other code or configuration: replaced on its next request)"
        lines.append(
            f"slot {s.slot}: pid {s.pid} {state}, served {s.served}, failed {s.failed}, "
            f"peak RSS {s.peak_rss_mb} MB, warm-up {s.warm_up_s}s{stale}"
        )
    return "\n".join(lines)


def _answer(slots: list[SlotStatus], **extra: object) -> dict:
    return {"slots": [asdict(s) for s in slots], **extra}


@click.group("worker", help="the warm Pipes workers of this home (compute mode warm)")
def worker() -> None:
    """`avatarpipe worker start|stop|status`."""


@worker.command("start", help="start the warm workers and wait until their models are loaded")
@click.option("--slots", type=click.IntRange(min=1), help="how many (default AVATARPIPE_WARM_WORKERS)")
@answers()
def start(settings: Settings, slots: int | None) -> Reply:
    pool = pool_of(settings)
    try:
        status = pool.start(slots)
    except PipelineError as exc:
        text = f"{exc.code.value}: {exc.message}"
        return Reply(1, {"error": exc.to_dict()}, lambda _a: text, human_on_stderr=True)
    return Reply(0, _answer(status), lambda _a: _human(status))


@worker.command("stop", help="stop the warm workers (each finishes its step first)")
@answers()
def stop(settings: Settings) -> Reply:
    pool = pool_of(settings)
    stopped = pool.stop()
    return Reply(
        0, _answer(pool.status(), stopped=stopped), lambda _a: f"stopped {len(stopped)} warm worker(s)"
    )


@worker.command("status", help="the warm workers: pid, busy or idle, requests served, peak RSS")
@answers()
def status(settings: Settings) -> Reply:
    slots = pool_of(settings).status()
    return Reply(0, _answer(slots), lambda _a: _human(slots))
