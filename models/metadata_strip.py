"""Lossless removal of identifying metadata from an uploaded image (data minimisation).

Every ingestion path stores what :func:`strip_metadata` returns, never the bytes as received:
location (GPS), device (make, model, serial numbers, maker notes), owner (artist, copyright,
camera owner), timestamps, embedded thumbnails and free text (comments, descriptions, XMP,
IPTC) are removed **at the container level**; the compressed image data is copied byte for
byte, never decoded or re-encoded, so the picture is exactly the one that was sent.

What is kept is what decoding needs:

* the colour profile (JPEG `APP2 ICC_PROFILE`, PNG `iCCP`/`sRGB`/`gAMA`/`cHRM`, WebP `ICCP`,
  TIFF `ICCProfile`) and JPEG `APP14 Adobe` (the CMYK/YCCK colour transform);
* the **orientation**, kept as the one tag of a minimal EXIF block (only when it is not 1):
  applying it would need re-encoding a JPEG, which is not lossless. `photo` applies it when it
  normalises the image.

Per format: JPEG (APP1 EXIF/XMP, APP13 IPTC/Photoshop, COM, other APPn such as MPF, the JFIF
thumbnail, and anything after EOI - a phone's secondary "MPO" images carry their own EXIF);
PNG (`eXIf`, `tEXt`, `zTXt`, `iTXt`, `tIME` and every other ancillary chunk not needed for
display; bytes after `IEND`); WebP (`EXIF`, `XMP `, unknown chunks; the VP8X flags and RIFF
size are rewritten); GIF (comment and non-looping application extensions, e.g. XMP); TIFF
(classic, every page: all tags but the image-structure ones, with their values and the
EXIF/GPS/Interop sub-directories zeroed in place so no string survives as orphaned bytes).
Other formats (BMP has no metadata; AVIF/HEIC/JPEG 2000 are not parsed here) are returned
unchanged, with ``stripped=False`` - ``avatarpipe privacy-scan`` reports any metadata they hold.
A file too damaged to parse is returned unchanged too (it fails at `photo` anyway).

Pure functions on bytes: no I/O, no configuration.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from PIL import Image

ORIENTATION_TAG = 0x0112


class _Unparseable(ValueError):
    """The container structure cannot be followed (damaged or truncated)."""


@dataclass(frozen=True)
class StrippedImage:
    data: bytes
    format: str  # "JPEG", "PNG", "WEBP", "GIF", "TIFF" or "unknown"
    stripped: bool  # False: the format is not handled or the file could not be parsed
    removed: tuple[str, ...] = field(default=())  # what was dropped, e.g. ("APP1 Exif", "COM")
    orientation: int | None = None  # the orientation kept (None: none, or 1)

    @property
    def changed(self) -> bool:
        return bool(self.removed)


def strip_metadata(data: bytes) -> StrippedImage:
    """``data`` without identifying metadata (see the module docstring); idempotent."""
    fmt = sniff_format(data)
    stripper = _STRIPPERS.get(fmt)
    if stripper is None:
        return StrippedImage(data, fmt, stripped=False)
    try:
        out, removed, orientation = stripper(data)
    except (ValueError, struct.error, IndexError):  # _Unparseable is a ValueError
        return StrippedImage(data, fmt, stripped=False)
    if fmt == "TIFF" and out != data:
        return _keep_tiff_readable(data, out, tuple(removed), orientation)
    return StrippedImage(out, fmt, True, tuple(removed) if out != data else (), orientation)


def _keep_tiff_readable(data: bytes, out: bytes, removed: tuple[str, ...], orientation: int | None) -> StrippedImage:
    """A damaged TIFF that Pillow still reads can become unreadable once its metadata tags are
    zeroed in place (found by the fuzz test: a mutated strip count). Then the picture is kept
    as a lossless, upright, metadata-free PNG instead: the strip never breaks a readable photo.
    The check decodes the stripped picture once and encodes nothing: only the fallback (its
    rewrite broke a readable file) re-encodes, from the original."""
    from models.photo import upright_png, upright_rgb

    if upright_rgb(out) is not None:
        return StrippedImage(out, "TIFF", True, removed, orientation)
    png = upright_png(data)
    if png is None:  # unreadable before too: `photo` reports it either way
        return StrippedImage(out, "TIFF", True, removed, orientation)
    return StrippedImage(png, "PNG", True, (*removed, "TIFF structure (re-encoded losslessly as PNG)"), None)


def sniff_format(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return "unknown"


def orientation_of_exif(payload: bytes) -> int | None:
    """The orientation in an EXIF block (with or without the ``Exif\\0\\0`` prefix); None when
    absent, 1 or unreadable."""
    try:
        exif = Image.Exif()
        exif.load(payload)
        value = exif.get(ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - malformed EXIF: there is no orientation to keep
        return None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


def minimal_exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block holding only the orientation (no ``Exif\\0\\0`` prefix)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()[6:]


# -- JPEG ------------------------------------------------------------------------------------

_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def _strip_jpeg(data: bytes) -> tuple[bytes, list[str], int | None]:
    out, removed, orientation = [b"\xff\xd8"], [], None
    pos = 2
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise _Unparseable("no marker where one must be")
        while data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos + 1]
        if marker == _JPEG_EOI:
            out.append(b"\xff\xd9")
            if pos + 2 < len(data):
                removed.append(f"{len(data) - pos - 2} bytes after EOI")
            break
        if marker in _JPEG_STANDALONE:
            out.append(data[pos : pos + 2])
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise _Unparseable("segment runs past the end")
        segment, payload = data[pos:end], data[pos + 4 : end]
        if marker == _JPEG_SOS:
            scan_end = _jpeg_scan_end(data, end)
            out.append(data[pos:scan_end])
            pos = scan_end
            continue
        kept, what = _jpeg_segment(marker, segment, payload)
        if what:
            removed.append(what)
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00") and orientation is None:
            orientation = orientation_of_exif(payload)
            if orientation is not None:
                kept = _jpeg_app1(minimal_exif(orientation))
        out.append(kept)
        pos = end
    return b"".join(out), removed, orientation


def _jpeg_scan_end(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data (stuffed 0xFF00 and RSTn skipped)."""
    while True:
        pos = data.index(b"\xff", pos)  # ValueError (no EOI) is the caller's _Unparseable
        following = data[pos + 1] if pos + 1 < len(data) else None
        if following is None:
            raise _Unparseable("scan data runs to the end of the file")
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


def _jpeg_app1(exif_tiff: bytes) -> bytes:
    payload = b"Exif\x00\x00" + exif_tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_segment(marker: int, segment: bytes, payload: bytes) -> tuple[bytes, str]:
    """(bytes to keep, what was removed or "")."""
    if marker == 0xE0:
        if payload.startswith(b"JFIF\x00") and len(payload) >= 14:
            if payload[12] or payload[13]:  # a thumbnail: keep the header, zero thumbnail size
                header = payload[:12] + b"\x00\x00"
                return b"\xff\xe0" + struct.pack(">H", len(header) + 2) + header, "JFIF thumbnail"
            return segment, ""
        return b"", "APP0 " + _label(payload)
    if marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
        return segment, ""
    if marker == 0xEE and payload.startswith(b"Adobe"):
        return segment, ""
    if 0xE0 <= marker <= 0xEF:
        return b"", f"APP{marker - 0xE0} {_label(payload)}"
    if marker == 0xFE:
        return b"", "COM"
    return segment, ""


# Identifiers of well-known APPn payloads. Anything else is reported by marker only: what is
# removed is recorded in the audit log, and a label copied from the file could be free text.
_KNOWN_APP_LABELS = (
    b"Exif", b"http://ns.adobe.com/xap/1.0/", b"http://ns.adobe.com/xmp/extension/", b"Photoshop 3.0",
    b"MPF", b"FPXR", b"JFXX", b"Ducky", b"ICC_PROFILE", b"Adobe", b"JFIF", b"AROT", b"HPSC",
)  # fmt: skip


def _label(payload: bytes) -> str:
    name = payload.split(b"\x00", 1)[0]
    return name.decode("ascii") if name in _KNOWN_APP_LABELS else "(other)"


def _known(name: bytes, known: frozenset[bytes]) -> str:
    """A chunk/extension name for the record: the name itself if it is a registered one."""
    return name.decode("latin-1").strip() if name in known else "(other)"


# -- PNG -------------------------------------------------------------------------------------

# Ancillary chunks that affect how the pixels look (or animate); every other one is dropped.
_PNG_KEEP = {
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"cICP", b"mDCV", b"cLLI", b"acTL", b"fcTL", b"fdAT", b"pHYs",
}  # fmt: skip


_PNG_METADATA_CHUNKS = frozenset(
    {
        b"eXIf",
        b"tEXt",
        b"zTXt",
        b"iTXt",
        b"tIME",
        b"bKGD",
        b"hIST",
        b"sPLT",
        b"oFFs",
        b"pCAL",
        b"sCAL",
        b"sTER",
        b"dSIG",
    }
)


def _strip_png(data: bytes) -> tuple[bytes, list[str], int | None]:
    import zlib

    out, removed, orientation = [data[:8]], [], None
    pos = 8
    while True:
        if pos + 12 > len(data):
            raise _Unparseable("no IEND")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise _Unparseable("chunk runs past the end")
        if kind in _PNG_KEEP:
            out.append(data[pos:end])
        elif kind == b"eXIf" and orientation is None:
            orientation = orientation_of_exif(data[pos + 8 : end - 4])
            if orientation is not None:
                body = b"eXIf" + minimal_exif(orientation)
                out.append(struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body)))
            removed.append("eXIf")
        else:
            removed.append(_known(kind, _PNG_METADATA_CHUNKS))
        pos = end
        if kind == b"IEND":
            if pos < len(data):
                removed.append(f"{len(data) - pos} bytes after IEND")
            break
    return b"".join(out), removed, orientation


# -- WebP ------------------------------------------------------------------------------------

_WEBP_KEEP = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"}
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _strip_webp(data: bytes) -> tuple[bytes, list[str], int | None]:
    (declared,) = struct.unpack("<I", data[4:8])
    if declared + 8 > len(data):
        raise _Unparseable("RIFF size past the end")
    chunks, removed, orientation = [], [], None
    pos = 12
    while pos + 8 <= declared + 8:
        kind = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > len(data):
            raise _Unparseable("chunk runs past the end")
        payload = data[pos + 8 : pos + 8 + size]
        if kind in _WEBP_KEEP:
            chunks.append([kind, payload])
        elif kind == b"EXIF" and orientation is None:
            orientation = orientation_of_exif(payload)
            if orientation is not None:
                chunks.append([kind, minimal_exif(orientation)])
            removed.append("EXIF")
        else:
            removed.append(_known(kind, frozenset({b"XMP ", b"EXIF"})))
        pos = end
    if chunks and chunks[0][0] == b"VP8X":
        flags = chunks[0][1][0] & ~(_VP8X_EXIF | _VP8X_XMP)
        if any(kind == b"EXIF" for kind, _ in chunks):
            flags |= _VP8X_EXIF
        chunks[0][1] = bytes([flags]) + chunks[0][1][1:]
    elif any(kind == b"EXIF" for kind, _ in chunks):
        chunks = [c for c in chunks if c[0] != b"EXIF"]  # a simple WebP cannot carry EXIF
        orientation = None
    body = b"".join(
        kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")
        for kind, payload in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body, removed, orientation


# -- GIF -------------------------------------------------------------------------------------

_GIF_KEEP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0", b"ICCRGBG1012")


def _strip_gif(data: bytes) -> tuple[bytes, list[str], int | None]:
    flags = data[10]
    pos = 13 + (3 * (2 ** ((flags & 7) + 1)) if flags & 0x80 else 0)
    out, removed = [data[:pos]], []
    while True:
        block = data[pos]
        if block == 0x3B:  # trailer
            out.append(b"\x3b")
            break
        if block == 0x2C:  # image: descriptor, local colour table, LZW code size, data
            local = data[pos + 9]
            start = pos
            pos += 10 + (3 * (2 ** ((local & 7) + 1)) if local & 0x80 else 0) + 1
            pos = _gif_sub_blocks(data, pos)
            out.append(data[start:pos])
            continue
        if block != 0x21:
            raise _Unparseable("unknown GIF block")
        label, start = data[pos + 1], pos
        end = _gif_sub_blocks(data, pos + 2)
        if label == 0xFE:
            removed.append("comment")
        elif label == 0xFF and data[pos + 3 : pos + 14] not in _GIF_KEEP_APPS:
            removed.append("application " + _known(data[pos + 3 : pos + 14], frozenset({b"XMP DataXMP"})))
        else:
            out.append(data[start:end])
        pos = end
    return b"".join(out), removed, None


def _gif_sub_blocks(data: bytes, pos: int) -> int:
    while True:
        size = data[pos]
        pos += 1 + size
        if pos > len(data):
            raise _Unparseable("sub-block runs past the end")
        if size == 0:
            return pos


# -- TIFF ------------------------------------------------------------------------------------

# Image-structure tags (TIFF 6.0 baseline and extensions): everything else is metadata.
TIFF_IMAGE_TAGS = {
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 274, 277, 278, 279, 280, 281, 282, 283,
    284, 286, 287, 290, 291, 296, 297, 301, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330,
    332, 338, 339, 340, 341, 347, 529, 530, 531, 532, 34675,
}  # fmt: skip
_TIFF_SUB_IFDS = {34665, 34853, 40965}  # EXIF, GPS, Interoperability
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_TIFF_NAMES = {270: "ImageDescription", 271: "Make", 272: "Model", 305: "Software", 306: "DateTime",
               315: "Artist", 33432: "Copyright", 34665: "ExifIFD", 34853: "GPSInfo", 700: "XMP",
               33723: "IPTC", 34377: "Photoshop"}  # fmt: skip


def _strip_tiff(data: bytes) -> tuple[bytes, list[str], int | None]:
    buf = bytearray(data)
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    removed, orientation, seen = [], None, set()
    while ifd and ifd not in seen:
        seen.add(ifd)
        ifd, page_orientation = _strip_tiff_ifd(buf, order, ifd, removed)
        orientation = orientation or page_orientation
    return bytes(buf), removed, orientation


def _tiff_entries(buf: bytearray, order: str, ifd: int) -> list[tuple[int, int, int, bytes]]:
    (count,) = struct.unpack(order + "H", buf[ifd : ifd + 2])
    if ifd + 6 + 12 * count > len(buf):
        raise _Unparseable("directory runs past the end")
    return [struct.unpack(order + "HHI4s", buf[ifd + 2 + 12 * i : ifd + 14 + 12 * i]) for i in range(count)]


def _strip_tiff_ifd(buf: bytearray, order: str, ifd: int, removed: list[str]) -> tuple[int, int | None]:
    """Rewrite one directory in place without its metadata tags; (next directory, orientation)."""
    entries = _tiff_entries(buf, order, ifd)
    (next_ifd,) = struct.unpack(order + "I", buf[ifd + 2 + 12 * len(entries) : ifd + 6 + 12 * len(entries)])
    kept, orientation = [], None
    for tag, kind, n, value in entries:
        if tag in TIFF_IMAGE_TAGS:
            kept.append((tag, kind, n, value))
            if tag == 274:
                (o,) = struct.unpack(order + "H", value[:2])
                orientation = o if 2 <= o <= 8 else None
            continue
        removed.append(_TIFF_NAMES.get(tag, f"tag {tag}"))
        _zero_tiff_value(buf, order, kind, n, value)
        if tag in _TIFF_SUB_IFDS:
            (sub,) = struct.unpack(order + "I", value)
            _zero_tiff_ifd(buf, order, sub, depth=0)
    old_end = ifd + 6 + 12 * len(entries)
    packed = struct.pack(order + "H", len(kept)) + b"".join(struct.pack(order + "HHI4s", *e) for e in kept)
    packed += struct.pack(order + "I", next_ifd)
    buf[ifd:old_end] = packed + bytes(old_end - ifd - len(packed))
    return next_ifd, orientation


def _zero_tiff_value(buf: bytearray, order: str, kind: int, n: int, value: bytes) -> None:
    size = _TIFF_TYPE_SIZE.get(kind, 1) * n
    if size > 4:
        (offset,) = struct.unpack(order + "I", value)
        if offset + size <= len(buf):
            buf[offset : offset + size] = bytes(size)


def _zero_tiff_ifd(buf: bytearray, order: str, ifd: int, depth: int) -> None:
    """Zero a sub-directory (EXIF/GPS) with everything it points at."""
    if depth > 4 or ifd + 2 > len(buf):
        return
    entries = _tiff_entries(buf, order, ifd)
    for tag, kind, n, value in entries:
        _zero_tiff_value(buf, order, kind, n, value)
        if tag in _TIFF_SUB_IFDS:
            (sub,) = struct.unpack(order + "I", value)
            _zero_tiff_ifd(buf, order, sub, depth + 1)
    end = ifd + 6 + 12 * len(entries)
    buf[ifd:end] = bytes(end - ifd)


_STRIPPERS = {
    "JPEG": _strip_jpeg,
    "PNG": _strip_png,
    "WEBP": _strip_webp,
    "GIF": _strip_gif,
    "TIFF": _strip_tiff,
}
