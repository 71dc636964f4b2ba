"""Great Expectations Data Docs (a static HTML site under `$AVATARPIPE_HOME/gx/`) rebuilt from
the stored validation results: by `avatarpipe quality-report` and, after an erasure, by
:func:`rebuild_after_erasure` (the CLI's erasure and the `erase_subject` Dagster job), so the
site never outlives an erased upload's documents. GX is imported only when a site is built.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from storage.metadata_store import MetadataStore


def latest_per_check(docs: list[dict]) -> list[dict]:
    """The newest validation of each (upload, check); `docs` come oldest first."""
    latest: dict[tuple[str, str], dict] = {}
    for doc in docs:
        latest[(doc["upload_id"], doc["check_name"])] = doc
    return list(latest.values())


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

    strip_remote_references(index.parent)  # offline: no CDN, no remote logo, no outside links
    return index


def rebuild_after_erasure(home: Path, metadata: MetadataStore) -> None:
    """The Data Docs site again, from the validations that remain (none of an erased subject)."""
    docs = metadata.find_validations()
    if docs:
        build_data_docs(home, docs)
