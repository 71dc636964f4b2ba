"""Damaged image files, made from a real photo the way storage and transfers damage them.

Each builder takes the encoded bytes of a good file and returns damaged bytes; `DAMAGED`
names every case with the error code the `photo` step must answer. Used by the model tests
(`normalise_photo`) and by the pipeline tests (`avatarpipe run --json`).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from models.errors import ErrorCode


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk_at(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, length) of the first chunk of ``kind``."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == kind:
            return pos, length
        pos += 12 + length
    raise ValueError(f"no {kind!r} chunk")


def png_idat_zeroed(data: bytes, fix_crc: bool) -> bytes:
    """200 bytes inside the first IDAT zeroed; with ``fix_crc`` the CRC is recomputed, so only
    the decoder (zlib) can notice: a disk or a careless tool that rewrote the chunk."""
    pos, length = _png_chunk_at(data, b"IDAT")
    assert length > 1000
    out = bytearray(data)
    start = pos + 8 + length // 3
    out[start : start + 200] = bytes(200)
    if fix_crc:
        crc = zlib.crc32(bytes(out[pos + 4 : pos + 8 + length]))
        out[pos + 8 + length : pos + 12 + length] = struct.pack(">I", crc)
    return bytes(out)


def png_bad_crc(data: bytes) -> bytes:
    """One bit of the first IDAT's CRC flipped; the pixel data itself is intact."""
    pos, length = _png_chunk_at(data, b"IDAT")
    out = bytearray(data)
    out[pos + 8 + length] ^= 0x01
    return bytes(out)


def png_without_iend(data: bytes) -> bytes:
    pos, _ = _png_chunk_at(data, b"IEND")
    return data[:pos]


def jpeg_entropy_damaged(data: bytes) -> bytes:
    """Twenty bytes of the scan data inverted, spread over the picture (bit rot)."""
    out = bytearray(data)
    sos = data.index(b"\xff\xda")
    step = (len(data) - sos) // 24
    for i in range(1, 21):
        at = sos + 40 + i * step
        if out[at] not in (0xFF, 0x00):  # keep marker/stuffing structure: damage the bits only
            out[at] ^= 0xFF
    return bytes(out)


def jpeg_entropy_zeroed(data: bytes) -> bytes:
    """200 bytes of the scan zeroed: Huffman codes resynchronise, so libjpeg sees a valid (if
    wrong) bitstream and reports nothing; see `models/image_integrity.py`."""
    out = bytearray(data)
    sos = data.index(b"\xff\xda")
    start = sos + (len(data) - sos) // 5
    out[start : start + 200] = bytes(200)
    return bytes(out)


def jpeg_cut_marker(data: bytes) -> bytes:
    """The 0xFF of the first quantisation-table marker (DQT) lost: the segment structure breaks."""
    out = bytearray(data)
    out[data.index(b"\xff\xdb")] = 0x00
    return bytes(out)


def cut_short(fraction: float) -> Callable[[bytes], bytes]:
    def cut(data: bytes) -> bytes:
        return data[: int(len(data) * fraction)]

    return cut


def gif_of(image: Image.Image) -> bytes:
    return encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


@dataclass(frozen=True)
class Damage:
    fmt: str  # Pillow format of the good file
    ext: str
    damage: Callable[[bytes], bytes]
    code: ErrorCode


DAMAGED: dict[str, Damage] = {
    "png_idat_zeroed": Damage(
        "PNG", "png", lambda d: png_idat_zeroed(d, fix_crc=False), ErrorCode.CORRUPT_IMAGE
    ),
    "png_idat_zeroed_crc_fixed": Damage(
        "PNG", "png", lambda d: png_idat_zeroed(d, fix_crc=True), ErrorCode.CORRUPT_IMAGE
    ),
    "png_bad_crc": Damage("PNG", "png", png_bad_crc, ErrorCode.CORRUPT_IMAGE),
    "png_missing_iend": Damage("PNG", "png", png_without_iend, ErrorCode.TRUNCATED_IMAGE),
    "png_cut_short": Damage("PNG", "png", cut_short(0.6), ErrorCode.TRUNCATED_IMAGE),
    "jpeg_entropy_damaged": Damage("JPEG", "jpg", jpeg_entropy_damaged, ErrorCode.CORRUPT_IMAGE),
    "jpeg_cut_marker": Damage("JPEG", "jpg", jpeg_cut_marker, ErrorCode.CORRUPT_IMAGE),
    "jpeg_cut_short": Damage("JPEG", "jpg", cut_short(0.6), ErrorCode.TRUNCATED_IMAGE),
    "webp_cut_short": Damage("WEBP", "webp", cut_short(0.6), ErrorCode.TRUNCATED_IMAGE),
    "gif_cut_short": Damage("GIF", "gif", cut_short(0.6), ErrorCode.TRUNCATED_IMAGE),
    "tiff_cut_short": Damage("TIFF", "tif", cut_short(0.6), ErrorCode.TRUNCATED_IMAGE),
}


def good_file(image: Image.Image, fmt: str) -> bytes:
    """The undamaged file a case starts from."""
    if fmt == "GIF":
        return gif_of(image)
    if fmt == "JPEG":
        return encode(image, "JPEG", quality=92)
    if fmt == "WEBP":
        return encode(image, "WEBP", quality=90)
    if fmt == "TIFF":
        return encode(image, "TIFF", compression="tiff_deflate")
    return encode(image, fmt)


def damaged_file(image: Image.Image, case: str) -> bytes:
    spec = DAMAGED[case]
    return spec.damage(good_file(image, spec.fmt))
