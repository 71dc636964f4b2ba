"""Reading glTF accessors back out of a GLB's binary chunk, as a glTF client does (the one
accessor reader of `models/`: the quality check, the previews and the VRM conversion use it)."""

from __future__ import annotations

import numpy as np
import pygltflib

COMPONENT_DTYPES = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
TYPE_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


class GlbReadError(ValueError):
    """The GLB cannot be read the way a glTF client would read it."""


def read_accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    """(count, width) array of an accessor from the GLB's binary chunk; normalised ints -> [0,1].

    Honours byte offsets and strides; refuses (GlbReadError) what it cannot read faithfully:
    sparse accessors, external buffers, unknown component types, reads past the buffer view."""
    acc = gltf.accessors[index]
    if acc.sparse is not None:
        raise GlbReadError(f"accessor {index} is sparse (not supported here)")
    if acc.componentType not in COMPONENT_DTYPES or acc.type not in TYPE_WIDTH:
        raise GlbReadError(f"accessor {index} has an invalid componentType/type")
    dtype = np.dtype(COMPONENT_DTYPES[acc.componentType]).newbyteorder("<")
    width = TYPE_WIDTH[acc.type]
    if acc.bufferView is None:
        return np.zeros((acc.count, width), dtype=dtype)
    view = gltf.bufferViews[acc.bufferView]
    if gltf.buffers[view.buffer].uri is not None:
        raise GlbReadError(f"accessor {index} points at an external buffer")
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    element = dtype.itemsize * width
    stride = view.byteStride or element
    end = start + stride * (acc.count - 1) + element if acc.count else start
    if start < 0 or end > len(blob) or end > (view.byteOffset or 0) + view.byteLength:
        raise GlbReadError(f"accessor {index} reads past its buffer view")
    data = np.ndarray(
        (acc.count, width), dtype=dtype, buffer=blob, offset=start, strides=(stride, dtype.itemsize)
    )
    data = np.array(data)
    if acc.normalized and dtype.kind in "iu":
        return data.astype(np.float64) / np.iinfo(dtype).max
    return data
