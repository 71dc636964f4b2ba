"""Fuzzing the decoder: mutated real photos in every accepted format.

Properties: whatever the bytes, `normalise_photo` either returns a valid normalised photo (an
upright 8-bit RGB image of the size it reports and a PNG that decodes to exactly it) or raises
`PipelineError` with a permanent input code at the `photo` step - never another exception; and
the metadata strip of every ingestion path never raises and never changes a readable picture.

Bounded in examples (``AVATARPIPE_FUZZ_EXAMPLES``, default 1000 per property, about 30 s
together) and in size (photos shrunk to 160 px, so one example decodes in milliseconds);
hypothesis' example database is off and generation derandomised, so the run is the same on
every machine. Slow lane: ``pytest -m slow tests/models/test_photo_fuzz.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.errors import PERMANENT_CODES, PipelineError
from models.metadata_strip import sniff_format, strip_metadata
from models.photo import PhotoLimits, decode_png, normalise_photo
from tests.conftest import SAMPLES
from tests.privacy.tagged_photos import TAGGED
from tests.reliability.damage import encode

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("AVATARPIPE_FUZZ_EXAMPLES", "1000"))
LIMITS = PhotoLimits(max_side=128)


def _seeds() -> list[bytes]:
    """Each sample photo in each format the pipeline accepts, 160 px on the long side, plain and
    carrying a phone's metadata (GPS, maker, thumbnail, XMP, comments)."""
    seeds = []
    for name in ("person_standing.png", "person_skiing.jpg"):
        image = Image.open(SAMPLES / name).convert("RGB")
        image.thumbnail((160, 160))
        exif = Image.Exif()
        exif[0x0112] = 6
        exif[0x010F] = "FuzzCam"
        seeds += [
            encode(image, "PNG"),
            encode(image, "JPEG", quality=90, exif=exif.tobytes()),
            encode(image, "JPEG", quality=80, progressive=True),
            encode(image, "WEBP", quality=80),
            encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
            encode(image, "TIFF", compression="tiff_deflate"),
            encode(image.convert("RGBA"), "PNG", exif=exif.tobytes()),
        ]
        seeds += [tagged.make(image, 6) for tagged in TAGGED.values()]  # phone metadata in every format
    return seeds


SEEDS = _seeds()


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "cut", "delete", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            data[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "cut":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_every_mutation_normalises_or_fails_typed(data: bytes) -> None:
    try:
        photo = normalise_photo(data, LIMITS)
    except PipelineError as exc:
        assert exc.code in PERMANENT_CODES and exc.step == "photo", exc
        assert exc.message
        return
    assert photo.image.dtype == np.uint8 and photo.image.ndim == 3 and photo.image.shape[2] == 3
    assert max(photo.size) <= LIMITS.max_side and min(photo.original_size) >= LIMITS.min_side
    assert np.array_equal(decode_png(photo.png), photo.image)


@FUZZ
@given(data=mutated())
def test_metadata_strip_never_fails_and_never_changes_the_picture(data: bytes) -> None:
    """The strip every ingestion path applies (models/metadata_strip.py) on the same mutated
    files: it never raises, is idempotent, and never breaks or changes a picture `photo` could
    read: same pixels, same orientation. (The converse does not hold, on purpose: a file that
    failed only because of a damaged metadata chunk - a flipped bit in `eXIf` - is readable
    once that chunk is gone; `photo` always judges the stripped file, which is what is stored.)"""
    stripped = strip_metadata(data)
    assert strip_metadata(stripped.data).data == stripped.data
    before, after = _outcome(data), _outcome(stripped.data)
    if isinstance(before, tuple):
        assert isinstance(after, tuple), (after, stripped.removed)
        assert np.array_equal(before[0], after[0]), stripped.removed
        if stripped.format == sniff_format(data):  # not re-encoded: the orientation tag was kept
            assert before[1] == after[1], stripped.removed


def _outcome(data: bytes):
    try:
        photo = normalise_photo(data, LIMITS)
    except PipelineError as exc:
        return exc.code
    return photo.image, photo.exif_rotated
