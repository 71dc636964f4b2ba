"""`avatarpipe reprocess [--model NAME ...] [--upload ID ...] [--limit N] [--dry-run] [--json]`.

Rebuilds every upload whose current artifacts were made with a model version other than the
production one: per upload, one Dagster run (in this process, recorded in the instance like
`avatarpipe run`) of `reprocess_job` selecting the first affected asset and everything
downstream; upstream artifacts are reused. `--dry-run` prints the plan and runs nothing.
Exit status: 0 when every run succeeded (or nothing was outdated), 1 when one failed, 2 for
usage errors. The `model_upgrade_sensor` does the same automatically through the run queue.
The use-case itself is `orchestration.app.reprocess` (also what `models rollback` calls).
"""

from __future__ import annotations

from typing import Any

import click

from orchestration.app import reprocess
from orchestration.commands.common import Reply, answers, fail
from orchestration.settings import Settings


def _human(answer: dict[str, Any]) -> str:
    production = " ".join(f"{m}@{v}" for m, v in answer["production"].items())
    lines = [f"production: {production}"]
    verb = "would reprocess" if answer["dry_run"] else "reprocessed"
    lines.append(
        f"{verb} {len(answer['uploads'])} upload(s)"
        + (" (dry run: nothing ran)" if answer["dry_run"] else "")
    )
    for row in answer["uploads"]:
        outcome = "" if answer["dry_run"] else f"  -> {row['run_status']} in {row['seconds']}s"
        lines.append(
            f"  {row['upload_id']} (subject {row['subject_id']}): {' -> '.join(row['assets'])}"
            f"  [{', '.join(row['models'])}]{outcome}"
        )
    for skipped in answer["skipped"]:
        lines.append(f"  skipped {skipped['upload_id']}: {skipped['reason']}")
    if answer["deferred"]:
        lines.append(f"  {answer['deferred']} more left for a later call (--limit)")
    return "\n".join(lines)


@click.command("reprocess", help="rebuild what model upgrades made stale (only the affected steps)")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="only outdated versions of this model (repeatable; default: all models)")  # fmt: skip
@click.option("--upload", "uploads", multiple=True, metavar="ID", help="only this upload (repeatable)")
@click.option("--limit", type=int, help="reprocess at most N uploads this time")
@click.option("--dry-run", is_flag=True, help="list what would run; run nothing")
@click.option("--canary", type=int, metavar="N",
              help="rebuild N random affected uploads with the candidate version (alias candidate), compare with "
                   "production's artifacts, report; production and the current artifacts stay")  # fmt: skip
@click.option("--candidate", metavar="VERSION",
              help="with --canary: the version to try (default: the `candidate` alias, else the newest "
                   "non-production version)")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="with --canary: seed of the random choice")
@answers()
def reprocess_command(
    settings: Settings, models: tuple[str, ...], uploads: tuple[str, ...], limit: int | None, dry_run: bool,
    canary: int | None, candidate: str | None, seed: int,
) -> Reply:  # fmt: skip
    from orchestration.registry import RegistryError  # MLflow: only when reprocessing

    try:
        if canary is not None:
            return _canary(settings, models, canary, candidate, seed)
        answer = reprocess(settings, list(models) or None, list(uploads) or None, dry_run, limit)
        if not dry_run and answer["counts"]["planned"]:
            from orchestration.model_ops import sync_avatar_tags

            for name in {m.split("@")[0] for row in answer["uploads"] for m in row["models"]}:
                sync_avatar_tags(settings, name)  # MLflow: how many avatars each version built
    except (RegistryError, ValueError) as exc:
        return fail(2, f"avatarpipe reprocess: {exc}")
    return Reply(0 if answer["counts"]["failed"] == 0 else 1, answer, _human)


def _canary(settings: Settings, models: tuple[str, ...], count: int, candidate: str | None, seed: int) -> Reply:
    """`--canary N`: the candidate on N seeded-random affected uploads (orchestration.model_ops)."""
    from orchestration.model_ops import candidate_version, format_canary, run_canary

    if len(models) != 1:
        raise ValueError("--canary needs exactly one --model NAME")
    version = candidate or candidate_version(settings, models[0])
    report = run_canary(settings, models[0], version, count, seed)
    return Reply(0 if report.passed else 1, report.to_dict(), lambda _a: format_canary(report))
