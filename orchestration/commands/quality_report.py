"""`avatarpipe quality-report [--since DATE] [--json]`: quality-check results across avatars.

Reads the `validations` collection (one document per check run), keeps the newest run of
each check per upload inside the window, and reports pass rates per check and per
expectation plus the worst offenders. It also rebuilds Great Expectations Data Docs (a
static HTML site) under `$AVATARPIPE_HOME/gx/` from the stored GX validation results, so the
site always mirrors the report's window and never outlives an erased upload's documents.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestration.cli import stdout_to_stderr
from orchestration.settings import Settings, prepare_environment

_RELATIVE = re.compile(r"^(\d+)d$")


def parse_since(text: str) -> datetime:
    """`2026-11-14`, `2026-11-14T08:00`, `2026-11-14T08:00+01:00` (UTC when no zone) or `7d`."""
    match = _RELATIVE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(days=int(match.group(1)))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date/datetime or Nd: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_per_check(docs: list[dict]) -> list[dict]:
    """The newest validation of each (upload, check); `docs` come oldest first."""
    latest: dict[tuple[str, str], dict] = {}
    for doc in docs:
        latest[(doc["upload_id"], doc["check_name"])] = doc
    return list(latest.values())


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


def build_data_docs(home: Path, docs: list[dict]) -> Path:
    """GX Data Docs for these validations, rebuilt from scratch in a file context at home/gx."""
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from assets.checks import import_gx, load_suites, quiet_context

    root = home / "gx"
    for stale in ("expectations", "uncommitted/validations", "uncommitted/data_docs"):
        shutil.rmtree(root / stale, ignore_errors=True)
    gx, _ = import_gx()
    context = quiet_context(gx, mode="file", project_root_dir=str(home))
    for suite in load_suites().values():
        context.suites.add(suite.to_gx())
    for doc in latest_per_check(docs):
        if not doc.get("gx_result_json"):
            continue
        result = ExpectationSuiteValidationResult(**json.loads(doc["gx_result_json"]))
        run_id = RunIdentifier(run_name=doc["upload_id"], run_time=doc["created_at"])
        # Shown on each page; upload ids are opaque, subject ids stay out of the static site.
        result.meta["run_id"] = run_id
        result.meta["avatarpipe"] = {
            "upload_id": doc["upload_id"],
            "asset": doc["asset_key"],
            "artifact_id": doc.get("artifact_id"),
            "dagster_run_id": doc.get("run_id"),
            "suite_sha": doc["suite_sha"],
        }
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=doc["suite_name"]),
            run_id=run_id,
            batch_identifier=f"{doc['asset_key']}-{(doc.get('artifact_id') or 'none')[:12]}",
        )
        context.validation_results_store.set(key, result)
    sites = context.build_data_docs()
    index = Path(sites["local_site"].removeprefix("file://"))
    from orchestration.offline_docs import strip_remote_references

    strip_remote_references(index.parent)  # offline: no CDN, no remote logo (issue 19)
    return index


def quality_report(settings: Settings, since: datetime | None, top: int = 10, docs_site: bool = True) -> dict[str, Any]:
    from storage.metadata_store import open_metadata_store

    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        docs = metadata.find_validations(since=since)
        uploads = {u["_id"]: u for u in metadata.list_uploads()} if docs else {}
    finally:
        metadata.close()
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


def cmd_quality_report(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    prepare_environment(settings)
    with stdout_to_stderr():
        report = quality_report(settings, args.since, args.top, docs_site=not args.no_docs)
    print(json.dumps(report, default=str) if args.json else _human(report))
    sys.stdout.flush()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "quality-report",
        help="pass rates of the quality checks across avatars, worst offenders, GX Data Docs",
    )
    parser.add_argument("--since", type=parse_since, help="ISO date/datetime (UTC if no zone) or Nd, e.g. 7d")
    parser.add_argument("--top", type=int, default=10, help="how many worst offenders to list (default 10)")
    parser.add_argument("--no-docs", action="store_true", help="skip rebuilding the GX Data Docs site")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_quality_report)
