"""Real photos carrying what a phone puts in them: GPS position, maker, model, serial number,
owner, timestamps, an embedded thumbnail, free-text comments and XMP - in every format the
pipeline strips (JPEG, PNG, WebP, GIF, TIFF).

The EXIF block is written here by hand (a small big-endian TIFF writer, as piexif would),
because Pillow cannot write an IFD1 thumbnail. `LEAKS` are the byte strings that must never be
found in anything stored; `assert_no_leak` searches for them (and reads the file back with
Pillow).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from models.metadata_strip import TIFF_IMAGE_TAGS

MAKE = "AcmePhone"
MODEL = "PhoneModel X"
SERIAL = "SN-4711-0815"
OWNER = "Jane Roe-Privacy"
TAKEN = "2026:06:14 07:31:02"
# N 48 deg 51' 29", E 2 deg 17' 40" (the position), as EXIF rationals.
LAT, LON = ((48, 1), (51, 1), (29, 1)), ((2, 1), (17, 1), (40, 1))
XMP_TEXT = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.483N" '
    f'exif:GPSLongitude="2,17.667E" tiff:Model="{MODEL}" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"/>'
    "</rdf:RDF></x:xmpmeta>"
)
COMMENT = f"shot at home by {OWNER}"


def _rationals(values, order: str) -> bytes:
    return b"".join(struct.pack(order + "II", n, d) for n, d in values)


# What must never be at rest: as text, and the GPS latitude/longitude as rationals in both byte orders.
LEAKS: tuple[bytes, ...] = (
    MAKE.encode(),
    MODEL.encode(),
    SERIAL.encode(),
    OWNER.encode(),
    TAKEN.encode(),
    b"51.483N",
    _rationals(LAT, ">"),
    _rationals(LAT, "<"),
    _rationals(LON, ">"),
    _rationals(LON, "<"),
)

_ASCII, _SHORT, _LONG, _RATIONAL = 2, 3, 4, 5
_SIZES = {_ASCII: 1, _SHORT: 2, _LONG: 4, _RATIONAL: 8}


def _value_bytes(kind: int, value) -> tuple[int, bytes]:
    if kind == _ASCII:
        raw = value.encode() + b"\x00"
        return len(raw), raw
    if kind == _RATIONAL:
        return len(value), _rationals(value, ">")
    values = value if isinstance(value, (list, tuple)) else [value]
    return len(values), struct.pack(">" + ("H" if kind == _SHORT else "I") * len(values), *values)


def _ifd(entries: list[tuple[int, int, object]], at: int, next_ifd: int = 0) -> bytes:
    """One big-endian IFD at offset ``at`` (of the TIFF), out-of-line values right after it."""
    entries = sorted(entries, key=lambda e: e[0])
    data_at = at + 2 + 12 * len(entries) + 4
    table, blob = [struct.pack(">H", len(entries))], b""
    for tag, kind, value in entries:
        count, raw = _value_bytes(kind, value)
        if len(raw) <= 4:
            table.append(struct.pack(">HHI", tag, kind, count) + raw.ljust(4, b"\x00"))
        else:
            table.append(struct.pack(">HHII", tag, kind, count, data_at + len(blob)))
            blob += raw + (b"\x00" if len(raw) & 1 else b"")
    return b"".join(table) + struct.pack(">I", next_ifd) + blob


def _ifd_size(entries: list[tuple[int, int, object]]) -> int:
    return len(_ifd(entries, 0))


def phone_exif(thumbnail_jpeg: bytes, orientation: int = 1) -> bytes:
    """A phone's EXIF (TIFF structure, no ``Exif\\0\\0`` prefix): IFD0 with make, model,
    orientation, time and artist; the EXIF IFD with serial, owner, time taken; the GPS IFD; and
    IFD1 holding a JPEG thumbnail."""
    exif_ifd = [(0x9003, _ASCII, TAKEN), (0xA430, _ASCII, OWNER), (0xA431, _ASCII, SERIAL)]
    gps_ifd = [(1, _ASCII, "N"), (2, _RATIONAL, LAT), (3, _ASCII, "E"), (4, _RATIONAL, LON)]

    def ifd0(exif_at: int, gps_at: int, ifd1_at: int) -> list:
        return [
            (0x010F, _ASCII, MAKE), (0x0110, _ASCII, MODEL), (0x0112, _SHORT, orientation),
            (0x0132, _ASCII, TAKEN), (0x013B, _ASCII, OWNER), (0x8769, _LONG, exif_at), (0x8825, _LONG, gps_at),
        ]  # fmt: skip

    at0 = 8
    exif_at = at0 + _ifd_size(ifd0(0, 0, 0))
    gps_at = exif_at + _ifd_size(exif_ifd)
    ifd1_at = gps_at + _ifd_size(gps_ifd)
    thumb_at = ifd1_at + _ifd_size([(0x0103, _SHORT, 6), (0x0201, _LONG, 0), (0x0202, _LONG, 0)])
    ifd1 = [(0x0103, _SHORT, 6), (0x0201, _LONG, thumb_at), (0x0202, _LONG, len(thumbnail_jpeg))]
    return (
        b"MM\x00*" + struct.pack(">I", at0)
        + _ifd(ifd0(exif_at, gps_at, ifd1_at), at0, next_ifd=ifd1_at)
        + _ifd(exif_ifd, exif_at) + _ifd(gps_ifd, gps_at) + _ifd(ifd1, ifd1_at) + thumbnail_jpeg
    )  # fmt: skip


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def tagged_jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    """Phone JPEG: EXIF (with thumbnail) and XMP in APP1, IPTC in APP13, a COM comment, and a
    secondary image after EOI (MPO style) with its own EXIF."""
    thumb = _encode(image.resize((image.width // 8, image.height // 8)), "JPEG", quality=70)
    base = _encode(image, "JPEG", quality=92)
    extra = (
        _jpeg_segment(0xE1, b"Exif\x00\x00" + phone_exif(thumb, orientation))
        + _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP_TEXT.encode())
        + _jpeg_segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x10\x1c\x02\x50\x00\x0c" + OWNER.encode()[:12])
        + _jpeg_segment(0xFE, COMMENT.encode())
    )  # fmt: skip
    secondary = b"\xff\xd8" + _jpeg_segment(0xE1, b"Exif\x00\x00" + phone_exif(thumb)) + thumb[2:]
    return base[:2] + extra + base[2:] + secondary


def tagged_png(image: Image.Image, orientation: int = 1) -> bytes:
    thumb = _encode(image.resize((image.width // 8, image.height // 8)), "JPEG", quality=70)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", OWNER)
    info.add_text("Comment", COMMENT, zip=True)  # zTXt
    info.add_itxt("XML:com.adobe.xmp", XMP_TEXT)
    data = _encode(image, "PNG", pnginfo=info, exif=phone_exif(thumb, orientation))
    iend = data.rindex(b"IEND") - 4
    tme = _png_chunk(b"tIME", struct.pack(">HBBBBB", 2026, 6, 14, 7, 31, 2))
    return data[:iend] + tme + data[iend:]


def tagged_webp(image: Image.Image, orientation: int = 1) -> bytes:
    thumb = _encode(image.resize((image.width // 8, image.height // 8)), "JPEG", quality=70)
    return _encode(image, "WEBP", quality=90, exif=phone_exif(thumb, orientation), xmp=XMP_TEXT.encode())


def tagged_gif(image: Image.Image, orientation: int = 1) -> bytes:
    del orientation  # GIF has no orientation
    data = _encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "GIF", comment=COMMENT.encode())
    xmp = b"\x21\xff\x0bXMP DataXMP" + _gif_sub_blocks(XMP_TEXT.encode()) + b"\x00"
    return data[:-1] + xmp + data[-1:]


def _gif_sub_blocks(payload: bytes) -> bytes:
    return b"".join(
        bytes([len(payload[i : i + 255])]) + payload[i : i + 255] for i in range(0, len(payload), 255)
    )


def tagged_tiff(image: Image.Image, orientation: int = 1) -> bytes:
    """Uncompressed TIFF (Pillow's own writer, which nests the GPS and EXIF directories)."""
    from PIL import TiffImagePlugin

    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[0x010F], ifd[0x0110], ifd[0x013B], ifd[0x0132] = MAKE, MODEL, OWNER, TAKEN
    ifd[0x010E] = COMMENT  # ImageDescription
    ifd[0x0112] = orientation
    ifd[700] = XMP_TEXT.encode()
    ifd[0x8825] = {1: "N", 2: tuple(n / d for n, d in LAT), 3: "E", 4: tuple(n / d for n, d in LON)}
    ifd[0x8769] = {0xA430: OWNER, 0xA431: SERIAL, 0x9003: TAKEN}
    return _encode(image, "TIFF", tiffinfo=ifd)


@dataclass(frozen=True)
class Tagged:
    fmt: str
    ext: str
    make: object  # (image, orientation) -> bytes


TAGGED = {
    "jpeg": Tagged("JPEG", "jpg", tagged_jpeg),
    "png": Tagged("PNG", "png", tagged_png),
    "webp": Tagged("WEBP", "webp", tagged_webp),
    "gif": Tagged("GIF", "gif", tagged_gif),
    "tiff": Tagged("TIFF", "tif", tagged_tiff),
}


def leaks_in(data: bytes) -> list[bytes]:
    """The identifying byte strings found in ``data`` (also inside zlib streams of PNG text
    chunks would not be seen: those chunks are checked by name instead)."""
    return [leak for leak in LEAKS if leak in data]


def metadata_read_back(data: bytes) -> dict[str, object]:
    """What Pillow reads from ``data`` beyond the pixels: EXIF tags (orientation aside), GPS and
    EXIF sub-IFDs, text chunks, comments, XMP; empty when there is nothing."""
    found: dict[str, object] = {}
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()  # for TIFF: the whole first directory, image structure included
        tags = {k: v for k, v in exif.items() if k not in TIFF_IMAGE_TAGS}
        if tags:
            found["exif"] = tags
        for sub in (0x8825, 0x8769):
            if exif.get_ifd(sub):
                found[f"ifd_{sub:x}"] = dict(exif.get_ifd(sub))
        for key in (
            "comment",
            "xmp",
            "XML:com.adobe.xmp",
            "Author",
            "Comment",
            "photoshop",
            "icc_profile_text",
        ):
            if im.info.get(key):
                found[key] = im.info[key]
        text = getattr(im, "text", None)
        if text:
            found["text"] = dict(text)
    return found
