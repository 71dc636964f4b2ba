"""Which stored images still carry identifying metadata (`avatarpipe privacy-scan`).

Every object in the object store is examined: images (raw uploads, normalised photos,
previews, textures) directly, GLBs through their embedded images. An image is reported when
`models.metadata_strip` would remove something identifying from it, or when Pillow reads any
EXIF tag (other than the orientation and, for TIFF, the image structure), GPS or EXIF
sub-directory, text chunk, comment or XMP from it. Read only.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from models.metadata_strip import TIFF_IMAGE_TAGS, sniff_format, strip_metadata
from storage.object_store import ObjectStore

# Removable but not about anyone: physical pixel size, background colour, palette histograms.
_HARMLESS = frozenset({"pHYs", "bKGD", "hIST", "sPLT", "APP0 JFIF"})
_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = b"glTF", 0x4E4F534A, 0x004E4942


@dataclass(frozen=True)
class PrivacyFinding:
    key: str
    part: str  # "" for the object itself, "image N" for an image embedded in a GLB
    format: str
    metadata: list[str]


@dataclass
class PrivacyReport:
    objects: int = 0
    images: int = 0
    findings: list[PrivacyFinding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {
            "clean": self.clean,
            "objects_scanned": self.objects,
            "images_scanned": self.images,
            "findings": [asdict(f) for f in self.findings],
        }


def image_metadata(data: bytes) -> list[str]:
    """The identifying metadata an encoded image holds (empty: none)."""
    if sniff_format(data) in ("PNG", "JPEG"):
        data = data.rstrip(b"\x00")  # alignment padding (GLB buffer views) after IEND/EOI is not data
    found = [r for r in strip_metadata(data).removed if r not in _HARMLESS]
    found += [f"pillow:{name}" for name in _pillow_metadata(data)]
    return found


def _pillow_metadata(data: bytes) -> list[str]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            names = [f"exif tag {t}" for t in exif if t != 0x0112 and t not in TIFF_IMAGE_TAGS]
            names += [f"exif ifd {ifd:x}" for ifd in (0x8825, 0x8769) if exif.get_ifd(ifd)]
            names += [k for k in ("comment", "xmp", "photoshop") if image.info.get(k)]
            names += [f"text {k}" for k in (getattr(image, "text", None) or {})]
            return names
    except Exception:  # noqa: BLE001 - not an image Pillow reads (or damaged): nothing to read back
        return []


def glb_images(glb: bytes) -> Iterator[bytes]:
    """The encoded images embedded in a GLB's binary chunk (bufferView images)."""
    if glb[:4] != _GLB_MAGIC or len(glb) < 20:
        return
    pos, document, binary = 12, None, b""
    while pos + 8 <= len(glb):
        length, kind = struct.unpack("<II", glb[pos : pos + 8])
        chunk = glb[pos + 8 : pos + 8 + length]
        if kind == _JSON_CHUNK:
            document = json.loads(chunk)
        elif kind == _BIN_CHUNK:
            binary = chunk
        pos += 8 + length
    if document is None:
        return
    views = document.get("bufferViews", [])
    for image in document.get("images", []):
        view = image.get("bufferView")
        if view is None or view >= len(views):
            continue
        start = views[view].get("byteOffset", 0)
        yield binary[start : start + views[view]["byteLength"]]


def scan_store(store: ObjectStore, prefix: str = "") -> PrivacyReport:
    report = PrivacyReport()
    for key in store.list_keys(prefix):
        report.objects += 1
        data = store.get_bytes(key)
        parts = [("", data)] if sniff_format(data) != "unknown" or _pillow_reads(data) else []
        parts += [(f"image {i}", image) for i, image in enumerate(glb_images(data))]
        for part, image in parts:
            report.images += 1
            found = image_metadata(image)
            if found:
                report.findings.append(PrivacyFinding(key, part, sniff_format(image), found))
    return report


def _pillow_reads(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not an image"
        return False
