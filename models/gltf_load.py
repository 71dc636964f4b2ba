"""Reading a GLB into pygltflib's objects, about ten times faster than `GLTF2.load_from_bytes`.

pygltflib decodes the glTF JSON with dataclasses-json, which inspects the type hints of every
field of every object anew: for an avatar (554 accessors, 68 nodes, 7 animations) that is about
0.5 CPU-s per read, and a warm call reads its avatar twice (the preview, the quality gate). The
decoder here applies the same rules (those of dataclasses-json 0.6, which pygltflib uses) with
each class's field types resolved once: the same classes, the same values (an int in a float
field becomes a float, a missing field takes its default, unknown keys are dropped, and a
primitive's `attributes` become pygltflib's `Attributes`). `tests/models/test_gltf_load.py`
compares it object for object with pygltflib's own reading.

Any failure falls back to `GLTF2.load_from_bytes`, so a malformed GLB raises pygltflib's own
error, as before.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

import pygltflib

Decoder = Callable[[Any], Any]


def _keep(value: Any) -> Any:
    return value


def _scalar(kind: type) -> Decoder:
    """dataclasses-json's `_support_extended_types` for int, float, str and bool."""

    def decode(value: Any) -> Any:
        return value if isinstance(value, kind) else kind(value)

    return decode


@cache
def _decoder(hint: Any) -> Decoder:
    """The decoding of a value of type ``hint``, built once per type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return _keep
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(others) == 1:  # Optional[X]
            inner = _decoder(others[0])
            return lambda value: None if value is None else inner(value)
        return _keep  # a Union: pygltflib has none
    if origin is list:
        item = _decoder(args[0]) if args else _keep
        return lambda value: None if value is None else [item(x) for x in value]
    if origin is dict:
        key = _decoder(args[0]) if args else _keep
        item = _decoder(args[1]) if len(args) > 1 else _keep
        return lambda value: None if value is None else {key(k): item(v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return lambda value: _decode_dataclass(hint, value)
    if isinstance(hint, type) and issubclass(hint, (int, float, str, bool)):
        return _scalar(hint)
    return _keep  # e.g. pygltflib.Attributes: the dict, made an object afterwards (as pygltflib does)


@cache
def _fields(cls: type) -> tuple[tuple[str, Decoder], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls) if f.init)


def _decode_dataclass(cls: type, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    value = value or {}  # None in a list of objects: all defaults (dataclasses-json's infer_missing)
    kwargs = {}
    for name, decode in _fields(cls):
        if name in value:
            field_value = value[name]
            kwargs[name] = None if field_value is None else decode(field_value)
    return cls(**kwargs)  # a missing field takes its default


def gltf_from_dict(document: dict) -> pygltflib.GLTF2:
    """pygltflib's `GLTF2.from_json` (with `infer_missing`, as `load_from_bytes` calls it) of
    the parsed JSON ``document``."""
    gltf = _decode_dataclass(pygltflib.GLTF2, document)
    for mesh in gltf.meshes:
        for primitive in mesh.primitives:
            if primitive.attributes:
                primitive.attributes = pygltflib.Attributes(**primitive.attributes)
    return gltf


class _FastGLTF2(pygltflib.GLTF2):
    """pygltflib's GLB container reading (`load_from_bytes`) with the fast JSON decoder."""

    @classmethod
    def from_json(cls, s: str, *, infer_missing: bool = False, **_kw: Any) -> pygltflib.GLTF2:  # type: ignore[override]
        return gltf_from_dict(json.loads(s))


def load_glb(glb: bytes) -> pygltflib.GLTF2:
    """What `pygltflib.GLTF2.load_from_bytes(glb)` returns, faster; its own errors when the GLB
    cannot be read."""
    try:
        return _FastGLTF2.load_from_bytes(glb)
    except Exception:  # noqa: BLE001 - pygltflib's reading raises pygltflib's error
        return pygltflib.GLTF2.load_from_bytes(glb)
