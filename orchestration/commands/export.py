"""`avatarpipe export UPLOAD_ID [--format glb|vrm] [--lod 0|1|2] [--texture-size 256|512|1024|2048]
[--compress none|meshopt] [--out PATH] [--json]`: write an upload's avatar in the form a client
asks for (models/export.py). Without options the file is the `rigged_glb` artifact as it is.

`--json` prints one object: file, bytes, sha256, triangles, texture_size [w, h], format, lod,
compress. Exit status: 0 written, 2 a bad request (unknown upload, not ready yet, unsupported
option) answered with a typed error {"error": {"code", "message"}}.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click

from models.errors import PipelineError
from orchestration.app import load_ready_glb
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings

EXIT_OK, EXIT_BAD_REQUEST = 0, 2


def _int_or_text(value: str | None) -> int | str | None:
    """Options are validated by models.export (a typed error), not by click (an untyped exit)."""
    if value is None:
        return None
    return int(value) if value.strip().lstrip("-").isdigit() else value


def run_export(
    settings: Settings, upload_id: str, *, format: str = "glb", lod: str | None = "0",
    texture_size: str | None = None, compress: str = "none", out: str | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """(exit status, the `--json` answer): the file written, or a typed error."""
    from models.export import ExportOptions, export_avatar  # trimesh, meshopt: only when exporting

    try:
        options = ExportOptions(
            format=format, lod=_int_or_text(lod), texture_size=_int_or_text(texture_size), compress=compress
        )
        options.validate()  # before touching any store
        glb = load_ready_glb(settings, upload_id)
        result = export_avatar(glb, options, vrm_meta={"name": f"avatar {upload_id}"})
    except PipelineError as exc:
        return EXIT_BAD_REQUEST, {"error": {"code": exc.code.value, "message": exc.message}}
    path = Path(out) if out else Path(f"{upload_id}.{options.format}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(result.data)
    return EXIT_OK, {
        "file": str(path),
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


@click.command("export", help="write an upload's avatar as GLB or VRM, at a level of detail / texture size")
@click.argument("upload_id", metavar="UPLOAD_ID")
@click.option("--format", "format_", default="glb", help="glb (default) or vrm (VRM 1.0)")
@click.option("--lod", default="0", help="0 (default, full), 1 (1/2 of the triangles), 2 (1/4)")
@click.option("--texture-size", default=None, help="largest texture side: 256, 512, 1024 or 2048 (default: as is)")
@click.option("--compress", default="none", help="none (default) or meshopt (EXT_meshopt_compression)")
@click.option("--out", help="output path (default: UPLOAD_ID.glb / .vrm in the current directory)")
@answers(prepare=False)
def export(
    settings: Settings, upload_id: str, format_: str, lod: str, texture_size: str | None, compress: str, out: str | None
) -> Reply:
    code, answer = run_export(
        settings, upload_id, format=format_, lod=lod, texture_size=texture_size, compress=compress, out=out
    )
    return Reply(code, answer, _human, human_on_stderr=code != EXIT_OK)
