"""`avatarpipe export UPLOAD_ID [--format glb|vrm] [--lod 0|1|2] [--texture-size 256|512|1024|2048]
[--compress none|meshopt] [--out PATH] [--json]`: write an upload's avatar in the form a client
asks for (models/export.py). Without options the file is the `rigged_glb` artifact as it is.

`--json` prints one object: file, bytes, sha256, triangles, texture_size [w, h], format, lod,
compress. Exit status: 0 written, 2 a bad request (unknown upload, not ready yet, unsupported
option) answered with a typed error {"error": {"code", "message"}}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from models.errors import ErrorCode, PipelineError
from orchestration.settings import Settings

EXIT_OK, EXIT_BAD_REQUEST = 0, 2


def _int_or_text(value: str | None) -> int | str | None:
    """Options are validated by models.export (a typed error), not by argparse (an untyped exit)."""
    if value is None:
        return None
    return int(value) if value.strip().lstrip("-").isdigit() else value


def load_ready_glb(settings: Settings, upload_id: str) -> bytes:
    """The upload's current `rigged_glb` bytes; typed errors when it does not exist (yet)."""
    from storage.metadata_store import open_metadata_store
    from storage.object_store import object_store_from_config

    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        upload = metadata.get_upload(upload_id)
        docs = {d["asset_key"]: d for d in metadata.artifacts_for_upload(upload_id)} if upload else {}
    finally:
        metadata.close()
    if upload is None:
        raise PipelineError(ErrorCode.UNKNOWN_UPLOAD, f"no upload {upload_id!r}")
    if upload.get("status") != "ready" or "rigged_glb" not in docs:
        raise PipelineError(
            ErrorCode.UPLOAD_NOT_READY,
            f"upload {upload_id} is {upload.get('status')!r}, not 'ready': no avatar to export",
        )
    return object_store_from_config(settings.object_store_config()).get_bytes(docs["rigged_glb"]["key"])


def run_export(settings: Settings, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    from models.export import ExportOptions, export_avatar

    try:
        options = ExportOptions(
            format=args.format,
            lod=_int_or_text(args.lod),
            texture_size=_int_or_text(args.texture_size),
            compress=args.compress,
        )
        options.validate()  # before touching any store
        glb = load_ready_glb(settings, args.upload_id)
        result = export_avatar(glb, options, vrm_meta={"name": f"avatar {args.upload_id}"})
    except PipelineError as exc:
        return EXIT_BAD_REQUEST, {"error": {"code": exc.code.value, "message": exc.message}}
    out = Path(args.out) if args.out else Path(f"{args.upload_id}.{options.format}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.data)
    return EXIT_OK, {
        "file": str(out),
        "bytes": len(result.data),
        "sha256": hashlib.sha256(result.data).hexdigest(),
        "triangles": result.triangles,
        "texture_size": list(result.texture_size) if result.texture_size else None,
        "format": options.format,
        "lod": options.lod,
        "compress": options.compress,
    }


def _human(answer: dict[str, Any]) -> str:
    if "error" in answer:
        return f"avatarpipe export: {answer['error']['code']}: {answer['error']['message']}"
    size = "x".join(map(str, answer["texture_size"] or [])) or "none"
    return (
        f"{answer['file']}: {answer['format']} lod {answer['lod']}, {answer['triangles']} triangles, "
        f"texture {size}, compress {answer['compress']}, {answer['bytes'] / 1e6:.2f} MB"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from orchestration.cli import stdout_to_stderr

    settings = Settings.from_env()
    with stdout_to_stderr():
        code, answer = run_export(settings, args)
    print(
        json.dumps(answer) if args.json else _human(answer),
        file=sys.stdout if code == EXIT_OK or args.json else sys.stderr,
    )
    return code


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export", help="write an upload's avatar as GLB or VRM, at a level of detail / texture size"
    )
    parser.add_argument("upload_id", metavar="UPLOAD_ID")
    parser.add_argument("--format", default="glb", help="glb (default) or vrm (VRM 1.0)")
    parser.add_argument("--lod", default="0", help="0 (default, full), 1 (1/2 of the triangles), 2 (1/4)")
    parser.add_argument(
        "--texture-size", default=None, help="largest texture side: 256, 512, 1024 or 2048 (default: as is)"
    )
    parser.add_argument(
        "--compress", default="none", help="none (default) or meshopt (EXT_meshopt_compression)"
    )
    parser.add_argument("--out", help="output path (default: UPLOAD_ID.glb / .vrm in the current directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_export)
