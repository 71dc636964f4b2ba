"""Container-level integrity checks that Pillow's decoders do not make.

Pillow decodes what it can and stays quiet about some damage:

* **PNG**: chunk CRCs of the image data are not verified, and a file that ends after its last
  `IDAT` (no `IEND`) loads without complaint. :func:`check_png` walks every chunk, checks its
  CRC and requires `IEND`.
* **WebP / TIFF**: a file cut short fails in Pillow with "could not create decoder object" or
  "cannot identify image file", which reads as the wrong problem; the RIFF size and the TIFF
  strip/tile table say precisely that data is missing.
* **JPEG**: libjpeg reports recoverable damage in the entropy-coded data ("Corrupt JPEG data:
  bad Huffman code", "... extraneous bytes before marker", "premature end of data segment")
  as *warnings*, which Pillow's decoder discards: the damaged blocks come out as grey smears.
  :func:`check_jpeg` decodes once more with libjpeg-turbo (`simplejpeg`) in strict mode, which
  turns those warnings into errors.

What no decoder can see: damage that leaves a valid bitstream. Baseline JPEG Huffman codes
resynchronise, so e.g. a run of zeroed bytes inside the scan often decodes as valid (if wrong)
coefficients with no warning at all; only the picture shows it.

Pure functions on bytes; no I/O, no configuration.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libjpeg's messages for damaged (not merely unusual) data; anything else simplejpeg refuses
# (an exotic colour transform, say) is left to Pillow, the decoder of record.
_JPEG_DAMAGE = ("corrupt jpeg data", "premature end", "bogus", "invalid jpeg", "huffman")


@dataclass(frozen=True)
class IntegrityProblem:
    """What is wrong with a file: ``truncated`` (it ends early) or not (it is damaged)."""

    truncated: bool
    detail: str


def check_png(data: bytes) -> IntegrityProblem | None:
    """Every chunk complete and with a matching CRC, ending with `IEND`; None when intact."""
    if not data.startswith(PNG_SIGNATURE):
        return IntegrityProblem(False, "not a PNG signature")
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            return IntegrityProblem(True, "the file ends before its IEND chunk")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return IntegrityProblem(True, f"the {_chunk_name(kind)} chunk is cut short")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            return IntegrityProblem(False, f"the {_chunk_name(kind)} chunk fails its CRC check")
        if kind == b"IEND":
            return None  # bytes after IEND are not part of the image
        pos = end


def check_jpeg(data: bytes) -> IntegrityProblem | None:
    """libjpeg's recoverable-damage warnings, as errors; None when libjpeg reports none."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(
            data, colorspace="GRAY", strict=True
        )  # grey: every component is still entropy-decoded
    except ValueError as exc:
        message = str(exc)
        lowered = message.lower()
        if not any(word in lowered for word in _JPEG_DAMAGE):
            return None
        return IntegrityProblem("premature end of jpeg file" in lowered, message)
    return None


def check_webp(data: bytes) -> IntegrityProblem | None:
    """The RIFF container holds as many bytes as its header declares."""
    (declared,) = struct.unpack("<I", data[4:8])  # the caller saw "WEBP" at 8..12
    if len(data) < declared + 8:
        return IntegrityProblem(
            True, f"the RIFF container declares {declared + 8} bytes, the file has {len(data)}"
        )
    return None


_TIFF_TYPE_SIZE = {3: 2, 4: 4}  # SHORT, LONG: the types strip/tile offsets and counts use
_TIFF_DATA_TAGS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def check_tiff(data: bytes) -> IntegrityProblem | None:
    """The first image directory and every strip or tile it points at lie inside the file
    (classic TIFF; BigTIFF is left to libtiff)."""
    if len(data) < 8:
        return IntegrityProblem(True, "the file ends inside the TIFF header")
    order = "<" if data[:2] == b"II" else ">"
    (magic, ifd) = struct.unpack(order + "HI", data[2:8])
    if magic != 42:
        return None
    if ifd + 2 > len(data):
        return IntegrityProblem(True, "the file ends before its first image directory")
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    if ifd + 2 + 12 * count > len(data):
        return IntegrityProblem(True, "the first image directory is cut short")
    entries = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack(order + "HHI4s", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
        entries[tag] = (kind, n, value)
    for offsets_tag, counts_tag in _TIFF_DATA_TAGS:
        if offsets_tag in entries and counts_tag in entries:
            offsets = _tiff_values(data, order, *entries[offsets_tag])
            counts = _tiff_values(data, order, *entries[counts_tag])
            if offsets is None or counts is None:
                return IntegrityProblem(True, "the strip or tile table lies past the end of the file")
            if any(o + c > len(data) for o, c in zip(offsets, counts, strict=False)):
                return IntegrityProblem(True, "image data lies past the end of the file")
    return None


def _tiff_values(data: bytes, order: str, kind: int, n: int, value: bytes) -> list[int] | None:
    size = _TIFF_TYPE_SIZE.get(kind)
    if size is None:
        return []  # an unusual type: libtiff will judge
    code = order + ("H" if size == 2 else "I") * n
    if size * n <= 4:
        return list(struct.unpack(code, value[: size * n]))
    (offset,) = struct.unpack(order + "I", value)
    if offset + size * n > len(data):
        return None
    return list(struct.unpack(code, data[offset : offset + size * n]))


def check_container(data: bytes) -> IntegrityProblem | None:
    """The check for the file's format, recognised by its signature; other formats pass."""
    if data.startswith(PNG_SIGNATURE):
        return check_png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return check_jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return check_webp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return check_tiff(data)
    return None


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii", "replace") if kind.isalpha() else repr(kind)
