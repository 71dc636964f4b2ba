"""Export options for a finished avatar GLB, like avatar platforms offer (format, level of detail,
texture size, compression). Pure bytes in, bytes out; no stores.

- `lod`: 0 the GLB as built; 1 and 2 simplified to 50 % and 25 % of the triangles by
  meshoptimizer's gltfpack (`-si`), which keeps the skin (joints, weights, inverse binds), the
  morph targets and the clips; `-noq` keeps float attributes so no extension is required.
  gltfpack writes morph targets densely; they are made sparse again here (`sparsify_morph_targets`)
  so a simplified avatar is smaller than the original, not 2x larger.
- `texture_size`: the largest side of the base colour texture (downscaled with Lanczos, never
  upscaled: the answer reports the size actually written).
- `compress`: "meshopt" = gltfpack `-cc` (EXT_meshopt_compression, a decoder is needed client-side).
- `format`: "glb" or "vrm" (VRM 1.0, models.vrm).
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib
from PIL import Image

from models.errors import ErrorCode, PipelineError
from models.gltf_export import MIN_MORPH_OFFSET_M, compress_glb, drop_orphan_byte_offsets, find_gltfpack

FORMATS = ("glb", "vrm")
LOD_RATIOS = {0: 1.0, 1: 0.5, 2: 0.25}
TEXTURE_SIZES = (256, 512, 1024, 2048)
COMPRESSIONS = ("none", "meshopt")


@dataclass(frozen=True)
class ExportOptions:
    format: str = "glb"
    lod: int = 0
    texture_size: int | None = None  # None: keep the texture as it is
    compress: str = "none"

    def validate(self) -> None:
        """A typed error for any option outside the supported set."""
        for name, value, allowed in (
            ("format", self.format, FORMATS),
            ("lod", self.lod, tuple(LOD_RATIOS)),
            ("texture_size", self.texture_size, (None, *TEXTURE_SIZES)),
            ("compress", self.compress, COMPRESSIONS),
        ):
            if value not in allowed:
                shown = ", ".join(str(a) for a in allowed if a is not None)
                raise PipelineError(
                    ErrorCode.UNSUPPORTED_EXPORT_OPTION,
                    f"--{name.replace('_', '-')} {value!r}: use one of {shown}",
                )
        if self.format == "vrm" and self.compress != "none":
            raise PipelineError(
                ErrorCode.UNSUPPORTED_EXPORT_OPTION,
                "--compress meshopt is for --format glb (VRM loaders expect plain glTF)",
            )


@dataclass(frozen=True)
class ExportResult:
    data: bytes
    triangles: int
    texture_size: tuple[int, int] | None  # (width, height) of the base colour texture
    options: ExportOptions


def export_avatar(
    glb: bytes, options: ExportOptions, vrm_meta: dict | None = None, gltfpack: str | None = None
) -> ExportResult:
    """The rigged GLB converted per `options` (validated first); ``gltfpack``: the configured
    executable (see `find_gltfpack`)."""
    options.validate()
    data = glb
    if options.lod:
        data = simplify_glb(data, LOD_RATIOS[options.lod], gltfpack=gltfpack)
    if options.texture_size is not None:
        data = limit_texture_size(data, options.texture_size)
    if options.format == "vrm":
        from models.vrm import to_vrm

        data = to_vrm(data, vrm_meta or {})
    if options.compress == "meshopt":
        data = compress_glb(data, find_gltfpack(gltfpack))
    return ExportResult(
        data=data, triangles=count_triangles(data), texture_size=texture_size(data), options=options
    )


# ---------------------------------------------------------------------------------------------
# Reading and re-packing a GLB's binary chunk
# ---------------------------------------------------------------------------------------------


def _view_bytes(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> bytes:
    view = gltf.bufferViews[index]
    start = view.byteOffset or 0
    return blob[start : start + view.byteLength]


def repack(gltf: pygltflib.GLTF2, payloads: list[bytes | None]) -> bytes:
    """GLB bytes with bufferView i holding payloads[i]; None drops a view (every reference to
    the later views is renumbered). Views are re-laid out 4-byte aligned in one buffer."""
    keep = [i for i, p in enumerate(payloads) if p is not None]
    renumber = {old: new for new, old in enumerate(keep)}
    blob = bytearray()
    views = []
    for old in keep:
        blob += b"\0" * (-len(blob) % 4)
        view = gltf.bufferViews[old]
        view.buffer, view.byteOffset, view.byteLength = 0, len(blob), len(payloads[old])
        blob += payloads[old]
        views.append(view)
    blob += b"\0" * (-len(blob) % 4)
    gltf.bufferViews = views
    for acc in gltf.accessors:
        if acc.bufferView is not None:
            acc.bufferView = renumber[acc.bufferView]
        if acc.sparse is not None:
            acc.sparse.indices.bufferView = renumber[acc.sparse.indices.bufferView]
            acc.sparse.values.bufferView = renumber[acc.sparse.values.bufferView]
    for image in gltf.images:
        if image.bufferView is not None:
            image.bufferView = renumber[image.bufferView]
    gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(bytes(blob))
    drop_orphan_byte_offsets(gltf)
    return b"".join(gltf.save_to_bytes())


def _payloads(gltf: pygltflib.GLTF2, blob: bytes) -> list[bytes | None]:
    return [_view_bytes(gltf, blob, i) for i in range(len(gltf.bufferViews))]


def count_triangles(glb: bytes) -> int:
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    return sum(
        gltf.accessors[p.indices].count // 3
        for m in gltf.meshes
        for p in m.primitives
        if p.indices is not None
    )


def texture_size(glb: bytes) -> tuple[int, int] | None:
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    if not gltf.images or gltf.images[0].bufferView is None:
        return None
    with Image.open(io.BytesIO(_view_bytes(gltf, gltf.binary_blob(), gltf.images[0].bufferView))) as img:
        return img.size


# ---------------------------------------------------------------------------------------------
# Texture size
# ---------------------------------------------------------------------------------------------


def limit_texture_size(glb: bytes, size: int) -> bytes:
    """Every embedded image downscaled so its longest side is at most `size` (PNG, Lanczos)."""
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    blob = gltf.binary_blob()
    payloads = _payloads(gltf, blob)
    changed = False
    for image in gltf.images:
        if image.bufferView is None:
            continue
        with Image.open(io.BytesIO(payloads[image.bufferView])) as img:
            if max(img.size) <= size:
                continue
            scale = size / max(img.size)
            resized = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS
            )
        out = io.BytesIO()
        resized.save(out, format="PNG", optimize=True)
        payloads[image.bufferView] = out.getvalue()
        image.mimeType = "image/png"
        changed = True
    return repack(gltf, payloads) if changed else glb


# ---------------------------------------------------------------------------------------------
# Levels of detail
# ---------------------------------------------------------------------------------------------


def simplify_glb(glb: bytes, ratio: float, timeout_s: float = 120.0, gltfpack: str | None = None) -> bytes:
    """Triangles reduced to about `ratio` by gltfpack (skin, morph targets, clips, names, extras
    and materials kept), morph targets made sparse again."""
    tool = find_gltfpack(gltfpack)
    if tool is None:
        raise PipelineError(ErrorCode.INTERNAL_ERROR, "a level of detail needs gltfpack: run `make clients`")
    with tempfile.TemporaryDirectory(prefix="avatarpipe-lod-") as tmp:
        source, target = Path(tmp) / "in.glb", Path(tmp) / "out.glb"
        source.write_bytes(glb)
        result = subprocess.run(
            [tool, "-i", str(source), "-o", str(target), "-si", str(ratio), "-noq", "-kn", "-km", "-ke"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if result.returncode != 0 or not target.exists():
            raise PipelineError(
                ErrorCode.INTERNAL_ERROR, f"gltfpack -si failed: {(result.stderr or result.stdout)[:300]}"
            )
        return sparsify_morph_targets(target.read_bytes())


_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def _own_views(gltf: pygltflib.GLTF2, payloads: list[bytes | None], views: set[int]) -> None:
    """Every accessor still reading one of `views` gets a tightly packed view of its own (so the
    old views can be dropped once nothing references them)."""
    for acc in gltf.accessors:
        if acc.bufferView not in views or acc.sparse is not None:
            continue
        view = gltf.bufferViews[acc.bufferView]
        size = _COMPONENT_BYTES[acc.componentType] * _TYPE_WIDTH[acc.type]
        raw = np.frombuffer(payloads[acc.bufferView] or b"", np.uint8)
        rows = np.lib.stride_tricks.as_strided(
            raw[acc.byteOffset or 0 :], (acc.count, size), (view.byteStride or size, 1)
        )
        payloads.append(np.ascontiguousarray(rows).tobytes())
        gltf.bufferViews.append(
            pygltflib.BufferView(buffer=0, byteLength=len(payloads[-1]), target=view.target)
        )
        acc.bufferView, acc.byteOffset = len(payloads) - 1, 0


def sparsify_morph_targets(glb: bytes) -> bytes:
    """Dense POSITION morph targets -> sparse accessors without a bufferView (as
    models.gltf_export writes them); the dense views are dropped."""
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    blob = gltf.binary_blob()
    payloads: list[bytes | None] = _payloads(gltf, blob)
    shared: set[int] = set()
    for mesh in gltf.meshes:
        for prim in mesh.primitives:
            dense = [
                t["POSITION"] for t in (prim.targets or []) if gltf.accessors[t["POSITION"]].sparse is None
            ]
            shared |= {gltf.accessors[t].bufferView for t in dense}
            if not dense:
                continue
            for index in dense:
                acc = gltf.accessors[index]
                view = gltf.bufferViews[acc.bufferView]
                stride = view.byteStride or 12
                raw = np.frombuffer(payloads[acc.bufferView] or b"", np.uint8)
                rows = np.lib.stride_tricks.as_strided(
                    raw[acc.byteOffset or 0 :], (acc.count, 12), (stride, 1)
                )
                values = np.ascontiguousarray(rows).view(np.float32).reshape(acc.count, 3)
                moved = np.flatnonzero(np.linalg.norm(values, axis=1) >= MIN_MORPH_OFFSET_M)
                kept = values[moved]
                if len(moved) == 0:
                    moved, kept = np.array([0]), np.zeros((1, 3), np.float32)
                small = acc.count <= 65535
                payloads += [moved.astype(np.uint16 if small else np.uint32).tobytes(), kept.tobytes()]
                gltf.bufferViews += [pygltflib.BufferView(buffer=0, byteLength=len(payloads[-2])),
                                     pygltflib.BufferView(buffer=0, byteLength=len(payloads[-1]))]  # fmt: skip
                acc.bufferView, acc.byteOffset = None, None  # a sparse accessor over zeros
                full = np.zeros_like(values)
                full[moved] = kept
                acc.min = [float(v) for v in np.minimum(full.min(axis=0), 0.0)]
                acc.max = [float(v) for v in np.maximum(full.max(axis=0), 0.0)]
                acc.sparse = pygltflib.Sparse(
                    count=len(moved),
                    indices=pygltflib.AccessorSparseIndices(
                        bufferView=len(payloads) - 2, componentType=5123 if small else 5125
                    ),
                    values=pygltflib.AccessorSparseValues(bufferView=len(payloads) - 1),
                )
    # gltfpack packs the targets into the views of the other vertex attributes: move those out
    _own_views(gltf, payloads, shared)
    return repack_referenced(gltf, payloads)


def repack_referenced(gltf: pygltflib.GLTF2, payloads: list[bytes | None]) -> bytes:
    """`repack` keeping only the views an accessor (or its sparse data) or an image reads."""
    referenced = {a.bufferView for a in gltf.accessors} | {i.bufferView for i in gltf.images}
    referenced |= {
        v
        for a in gltf.accessors
        if a.sparse
        for v in (a.sparse.indices.bufferView, a.sparse.values.bufferView)
    }
    return repack(gltf, [p if i in referenced else None for i, p in enumerate(payloads)])
