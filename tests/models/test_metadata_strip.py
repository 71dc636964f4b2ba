"""Lossless metadata stripping (models/metadata_strip.py) on real photos tagged like a phone
tags them (tests/privacy/tagged_photos.py), in every format it handles."""

import numpy as np
import pytest
from PIL import Image

from models.metadata_strip import strip_metadata
from models.photo import normalise_photo
from tests.conftest import SAMPLES
from tests.privacy.tagged_photos import LEAKS, TAGGED, leaks_in, metadata_read_back
from tests.reliability.damage import encode

PHOTOS = [SAMPLES / "person_skiing.jpg", SAMPLES / "person_standing.png"]


@pytest.fixture(scope="module", params=PHOTOS, ids=lambda p: p.stem)
def photo(request) -> Image.Image:
    return Image.open(request.param).convert("RGB")


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("fmt", list(TAGGED))
def test_strip_removes_everything_identifying_and_keeps_the_picture(photo, fmt, orientation):
    tagged = TAGGED[fmt].make(photo, orientation)
    assert leaks_in(tagged) and metadata_read_back(tagged)  # the fixture really carries it

    result = strip_metadata(tagged)
    assert result.stripped and result.format == TAGGED[fmt].fmt and result.changed
    assert leaks_in(result.data) == []  # byte search: GPS rationals, make, model, serial, owner, time, XMP
    assert metadata_read_back(result.data) == {}  # and Pillow reads nothing back
    before, after = normalise_photo(tagged), normalise_photo(result.data)
    assert np.array_equal(before.image, after.image)  # the same picture, pixel for pixel
    assert after.exif_rotated == before.exif_rotated == (orientation != 1 and fmt != "gif")
    assert strip_metadata(result.data).data == result.data  # idempotent: a second pass changes nothing


def test_jpeg_scan_data_is_copied_not_re_encoded(photo):
    tagged = TAGGED["jpeg"].make(photo, 6)
    stripped = strip_metadata(tagged).data
    encoded = encode(photo, "JPEG", quality=92)  # what tagged_jpeg added its segments to
    tables_and_scan = encoded[encoded.index(b"\xff\xdb") :]  # from the first DQT to EOI
    assert stripped.endswith(tables_and_scan)  # quantisation and Huffman tables, scan: byte for byte
    head = stripped[: -len(tables_and_scan)]
    assert [head[i + 1] for i in range(len(head) - 1) if head[i] == 0xFF and head[i + 1] >= 0xC0] == [
        0xD8,
        0xE1,
        0xE0,
    ]  # before it only SOI, the orientation-only APP1 and JFIF (the source photo's COM is gone too)
    assert stripped.count(b"Exif\x00\x00") == 1 and len(stripped) < len(tagged)  # only the orientation block


def test_clean_files_unusual_formats_and_damaged_files_pass_unchanged(photo):
    clean = strip_metadata(strip_metadata(TAGGED["png"].make(photo, 1)).data)
    assert clean.stripped and not clean.changed
    for data in (b"", b"%PDF-1.7 not an image", TAGGED["jpeg"].make(photo, 1)[:5000]):
        result = strip_metadata(data)
        assert result.data == data and not result.changed
        assert not result.stripped or data == b""  # a damaged file is left for `photo` to refuse
    assert LEAKS  # the leak list is not empty by accident


def test_what_was_removed_is_named_without_copying_free_text(photo):
    """`removed` goes to the audit log: a segment or chunk named by the file itself (free text)
    is recorded as "(other)", never by that name."""
    import struct

    jpeg = encode(photo, "JPEG", quality=90)
    planted = b"\xff\xe5" + struct.pack(">H", 2 + 17) + b"Jane Roe-Privacy\x00"  # APP5, "labelled" by a name
    result = strip_metadata(jpeg[:2] + planted + jpeg[2:])
    assert "APP5 (other)" in result.removed and b"Jane" not in result.data
    assert not any("Jane" in r for r in result.removed)
    tagged = strip_metadata(TAGGED["jpeg"].make(photo, 1))
    assert {"APP1 Exif", "APP1 http://ns.adobe.com/xap/1.0/", "APP13 Photoshop 3.0", "COM"} <= set(tagged.removed)
