"""`avatarpipe ingest PHOTO [--subject ID] [--json]`: store a photo and register the upload,
without running the pipeline; the ingestion sensors request the run.

* Local object store (default): the raw photo is written into `$AVATARPIPE_HOME/objects`;
  the folder sensor picks it up (`dagster dev` / the daemon).
* S3 (`AVATARPIPE_S3_BUCKET`): the command asks for a presigned PUT URL — exactly what the
  web tier hands a browser — and uploads with plain HTTP, no AWS SDK on the client side; the
  bucket's `ObjectCreated` event reaches the SQS sensor.

Either way the upload is registered (`uploads` document, status pending, `ingest` audit
event) once the object is stored, so a failed transfer registers nothing. Exit codes: 0 stored
and registered, 1 the transfer or registration failed, 2 usage errors (missing file, bad id).
"""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import click

from models.errors import PipelineError
from orchestration.app import body_hints, ingest_photo, ingest_via_presigned_put
from orchestration.commands.common import Reply, answers, fail, hint_options, subject_option
from orchestration.settings import Settings


@click.command("ingest", help="store a photo and register the upload; sensors run it")
@click.argument("photo")
@subject_option
@hint_options
@answers()
def ingest(
    settings: Settings, photo: str, subject: str | None, build: str | None, height_cm: float | None, age_group: str | None
) -> Reply:
    try:
        hints = body_hints(build, height_cm, age_group)
    except PipelineError as err:
        return fail(2, f"avatarpipe: {err.message}")
    path = Path(photo)
    if not path.is_file():
        return fail(2, f"avatarpipe: no such file: {path}")
    data = path.read_bytes()
    s3 = bool(settings.aws.s3_bucket)
    try:
        if s3:
            if hints:
                print("avatarpipe: body hints are not carried on the presigned S3 upload path yet", file=sys.stderr)
            ingested = ingest_via_presigned_put(settings, data, path.name, subject)
        else:
            ingested = ingest_photo(settings, data, path.name, subject, hints=hints)
    except ValueError as exc:
        return fail(2, f"avatarpipe: {exc}")
    except (urllib.error.URLError, OSError) as exc:
        return fail(1, f"avatarpipe: upload failed: {exc}")
    answer = {
        "upload_id": ingested.upload_id,
        "subject_id": ingested.subject_id,
        "photo_key": ingested.photo_key,
        "store": "s3" if s3 else "local",
        "via": "presigned-put" if s3 else "direct",
        "bytes": len(data),
        "status": "pending",
    }
    return Reply(0, answer, lambda a: (
        f"upload {a['upload_id']} (subject {a['subject_id']}) stored at {a['photo_key']} "
        f"via {a['via']}; the ingestion sensor will request its run"
    ))  # fmt: skip
