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

import argparse
import json
import mimetypes
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestration.cli import Ingested, plan_ingest, register_upload, stdout_to_stderr
from orchestration.settings import Settings, prepare_environment

HTTP_TIMEOUT_S = 120


def upload_url(
    subject_id: str, filename: str, settings: Settings | None = None, expires_in: int | None = None
) -> dict[str, Any]:
    """For the web tier: a presigned PUT for a new upload of `subject_id` (S3 must be configured).

    Returns `{"upload_id", "subject_id", "method", "url", "key", "headers", "expires_at"}`; the
    client must send `headers` as given. The upload is registered by the SQS sensor when S3
    reports the object, so an unused URL leaves nothing behind.
    """
    from storage.s3_store import S3ObjectStore, S3StoreConfig, create_upload_ticket

    settings = settings or Settings.from_env()
    if not settings.aws.s3_bucket:
        raise ValueError("upload URLs need S3: set AVATARPIPE_S3_BUCKET")
    config = {k: v for k, v in settings.object_store_config().items() if k != "kind"}
    store = S3ObjectStore(S3StoreConfig(**config))
    ext = Path(filename).suffix or ".bin"
    content_type = mimetypes.guess_type(filename)[0]
    return create_upload_ticket(store, subject_id, ext, content_type, expires_in=expires_in).to_dict()


def put_presigned(url: str, headers: dict[str, str], data: bytes) -> int:
    """PUT `data` to a presigned URL with plain HTTP; returns the HTTP status."""
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return response.status


def ingest_via_presigned_put(settings: Settings, data: bytes, filename: str, subject_id: str | None) -> Ingested:
    """What a browser does: get a presigned PUT for the content-addressed raw key, upload over
    HTTP, and register the upload once S3 has accepted the object."""
    from ops.upload_minimisation import minimise_upload_bytes
    from storage.object_store import sha256_hex
    from storage.s3_store import S3ObjectStore, S3StoreConfig, create_upload_ticket

    data = minimise_upload_bytes(data).data  # the client strips before sending: nothing identifying travels
    planned = plan_ingest(data, filename, subject_id)
    config = {k: v for k, v in settings.object_store_config().items() if k != "kind"}
    store = S3ObjectStore(S3StoreConfig(**config))
    ticket = create_upload_ticket(
        store,
        planned.subject_id,
        Path(planned.photo_key).suffix,
        mimetypes.guess_type(filename)[0],
        sha256=sha256_hex(data),
        upload_id=planned.upload_id,
    )
    put_presigned(ticket.request.url, ticket.request.headers, data)
    ingested = Ingested(upload_id=ticket.upload_id, subject_id=ticket.subject_id, photo_key=ticket.key)
    register_upload(settings, ingested, {"bytes": len(data), "via": "presigned-put"})
    return ingested


def cmd_ingest(args: argparse.Namespace) -> int:
    from models.errors import PipelineError
    from orchestration.cli import hints_from_args, ingest_photo

    try:
        hints = hints_from_args(args)
    except PipelineError as err:
        print(f"avatarpipe: {err.message}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    prepare_environment(settings)
    photo = Path(args.photo)
    if not photo.is_file():
        print(f"avatarpipe: no such file: {photo}", file=sys.stderr)
        return 2
    data = photo.read_bytes()
    s3 = bool(settings.aws.s3_bucket)
    try:
        with stdout_to_stderr():
            if s3:
                if hints:
                    print("avatarpipe: body hints are not carried on the presigned S3 upload path yet", file=sys.stderr)
                ingested = ingest_via_presigned_put(settings, data, photo.name, args.subject)
            else:
                ingested = ingest_photo(settings, data, photo.name, args.subject, hints=hints)
    except ValueError as exc:
        print(f"avatarpipe: {exc}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"avatarpipe: upload failed: {exc}", file=sys.stderr)
        return 1
    answer = {
        "upload_id": ingested.upload_id,
        "subject_id": ingested.subject_id,
        "photo_key": ingested.photo_key,
        "store": "s3" if s3 else "local",
        "via": "presigned-put" if s3 else "direct",
        "bytes": len(data),
        "status": "pending",
    }
    if args.json:
        print(json.dumps(answer))
    else:
        print(
            f"upload {ingested.upload_id} (subject {ingested.subject_id}) stored at {ingested.photo_key} "
            f"via {answer['via']}; the ingestion sensor will request its run"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ingest", help="store a photo and register the upload; sensors run it")
    parser.add_argument("photo")
    parser.add_argument("--subject", help="subject id (letters, digits, _ and -); random if omitted")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    from orchestration.cli import add_hint_arguments

    add_hint_arguments(parser)
    parser.set_defaults(func=cmd_ingest)
