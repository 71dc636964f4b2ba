"""`avatarpipe quality-report [--since DATE] [--json]`: quality-check results across avatars.

Reads the `validations` collection (one document per check run), keeps the newest run of
each check per upload inside the window, and reports pass rates per check and per
expectation plus the worst offenders. It also rebuilds Great Expectations Data Docs (a
static HTML site) under `$AVATARPIPE_HOME/gx/` from the stored GX validation results, so the
site always mirrors the report's window and never outlives an erased upload's documents.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from orchestration.app import metadata_store
from orchestration.commands.common import Reply, answers, parsed_by
from orchestration.data_docs import build_data_docs, latest_per_check
from orchestration.settings import Settings

_RELATIVE = re.compile(r"^(\d+)d$")


def parse_since(text: str) -> datetime:
    """`2026-11-14`, `2026-11-14T08:00`, `2026-11-14T08:00+01:00` (UTC when no zone) or `7d`."""
    match = _RELATIVE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(days=int(match.group(1)))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"not an ISO date/datetime or Nd: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def aggregate(docs: list[dict], uploads: dict[str, dict], top: int = 10) -> dict[str, Any]:
    """Pass rates per check and per expectation, and the uploads with the most failures."""
    latest = latest_per_check(docs)
    checks: dict[str, dict[str, Any]] = defaultdict(lambda: {"validated": 0, "passed": 0, "failed_error": 0, "failed_warn": 0})
    expectations: dict[tuple[str, str], dict[str, Any]] = {}
    offenders: dict[str, dict[str, Any]] = {}
    for doc in latest:
        summary = checks[doc["check_name"]]
        summary["validated"] += 1
        summary["passed"] += bool(doc["passed"])
        summary["failed_error"] += doc["severity"] == "ERROR"
        summary["failed_warn"] += doc["severity"] == "WARN"
        for result in doc.get("results", []):
            key = (doc["check_name"], result["name"])
            entry = expectations.setdefault(
                key,
                {"check": key[0], "name": key[1], "severity": result["severity"], "column": result.get("column"),
                 "evaluated": 0, "failed": 0},
            )  # fmt: skip
            entry["evaluated"] += 1
            entry["failed"] += not result["success"]
        if doc["failed_expectations"]:
            upload = uploads.get(doc["upload_id"], {})
            offender = offenders.setdefault(
                doc["upload_id"],
                {"upload_id": doc["upload_id"], "subject_id": doc["subject_id"], "status": upload.get("status"),
                 "error_count": 0, "warn_count": 0, "failed": []},
            )  # fmt: skip
            for failed in doc["failed_expectations"]:
                offender["error_count" if failed["severity"] == "ERROR" else "warn_count"] += 1
                offender["failed"].append(
                    {"check": doc["check_name"], "name": failed["name"], "severity": failed["severity"],
                     "observed": failed.get("observed")}
                )  # fmt: skip
    for summary in checks.values():
        summary["pass_rate"] = round(summary["passed"] / summary["validated"], 4)
    rows = sorted(expectations.values(), key=lambda e: (e["failed"] == 0, -e["failed"] / e["evaluated"], e["check"], e["name"]))
    for row in rows:
        row["pass_rate"] = round(1 - row["failed"] / row["evaluated"], 4)
    worst = sorted(offenders.values(), key=lambda o: (-o["error_count"], -o["warn_count"], o["upload_id"]))[:top]
    return {
        "check_runs": len(docs),
        "uploads": len({doc["upload_id"] for doc in latest}),
        "checks": dict(sorted(checks.items())),
        "expectations": rows,
        "worst_offenders": worst,
    }


def quality_report(settings: Settings, since: datetime | None, top: int = 10, docs_site: bool = True) -> dict[str, Any]:
    with metadata_store(settings) as metadata:
        docs = metadata.find_validations(since=since)
        uploads = {u["_id"]: u for u in metadata.list_uploads()} if docs else {}
    report = {"since": since.isoformat() if since else None, "generated_at": datetime.now(UTC).isoformat()}
    report |= aggregate(docs, uploads, top)
    report["data_docs"] = str(build_data_docs(settings.home, docs)) if docs_site else None
    report["html_report"] = str(write_html_report(settings.home, docs, report)) if docs_site else None
    return report


def write_html_report(home: Path, docs: list[dict], report: dict[str, Any]) -> Path:
    """The self-contained quality page (no external reference) beside the GX site."""
    from orchestration.offline_docs import render_quality_html

    path = home / "gx" / "quality_report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_quality_html(latest_per_check(docs), report))
    return path


def _human(report: dict[str, Any]) -> str:
    window = f"since {report['since']}" if report["since"] else "all time"
    lines = [f"quality report ({window}): {report['uploads']} uploads, {report['check_runs']} check runs"]
    if report["checks"]:
        lines.append(f"  {'check':<22} {'validated':>9} {'passed':>7} {'ERROR':>6} {'WARN':>5} {'pass rate':>10}")
        for name, c in report["checks"].items():
            lines.append(
                f"  {name:<22} {c['validated']:>9} {c['passed']:>7} {c['failed_error']:>6} {c['failed_warn']:>5} "
                f"{c['pass_rate']:>10.0%}"
            )
    failing = [e for e in report["expectations"] if e["failed"]]
    if failing:
        lines.append("  failing expectations (lowest pass rate first):")
        for e in failing[:15]:
            lines.append(
                f"    {e['check']}/{e['name']} [{e['severity']}] {e['evaluated'] - e['failed']}/{e['evaluated']} "
                f"({e['pass_rate']:.0%})"
            )
    if report["worst_offenders"]:
        lines.append("  worst offenders:")
        for o in report["worst_offenders"]:
            names = ", ".join(f"{f['check']}/{f['name']}={f['observed']}" for f in o["failed"][:6])
            lines.append(f"    {o['upload_id']} (subject {o['subject_id']}, {o['status']}): {o['error_count']} ERROR, "
                         f"{o['warn_count']} WARN: {names}")  # fmt: skip
    if report["data_docs"]:
        lines.append(f"  Data Docs: {report['data_docs']}")
    if report.get("html_report"):
        lines.append(f"  self-contained report: {report['html_report']}")
    return "\n".join(lines)


@click.command("quality-report", help="pass rates of the quality checks across avatars, worst offenders, GX Data Docs")
@click.option("--since", callback=parsed_by(parse_since), help="ISO date/datetime (UTC if no zone) or Nd, e.g. 7d")
@click.option("--top", type=int, default=10, help="how many worst offenders to list (default 10)")
@click.option("--no-docs", is_flag=True, help="skip rebuilding the GX Data Docs site")
@answers()
def quality_report_command(settings: Settings, since: datetime | None, top: int, no_docs: bool) -> Reply:
    return Reply(0, quality_report(settings, since, top, docs_site=not no_docs), _human)
