import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from models.errors import ErrorCode, PipelineError
from models.image_integrity import check_container
from models.photo import PhotoLimits, decode_png, normalise_photo
from tests.conftest import SAMPLES
from tests.reliability.damage import DAMAGED, damaged_file, good_file, jpeg_entropy_zeroed, png_idat_zeroed


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _gradient(w: int = 200, h: int = 300) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


def _code(data: bytes, limits: PhotoLimits | None = None) -> ErrorCode:
    with pytest.raises(PipelineError) as info:
        normalise_photo(data, limits or PhotoLimits())
    return info.value.code


def test_png_roundtrip_has_no_metadata_chunks():
    photo = normalise_photo(_encode(_gradient(), "PNG"))
    assert photo.image.shape == (300, 200, 3) and photo.image.dtype == np.uint8
    assert b"eXIf" not in photo.png and b"tEXt" not in photo.png and b"iCCP" not in photo.png
    assert np.array_equal(decode_png(photo.png), photo.image)


def test_exif_orientation_is_applied_and_exif_gps_stripped():
    image = _gradient(200, 300)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    exif[0x8825] = {1: "N", 2: (52.0, 1.0, 1.0)}  # GPS IFD
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    photo = normalise_photo(data)
    assert photo.exif_rotated
    assert photo.size == (300, 200)  # width and height swapped: upright
    assert b"Exif" not in photo.png and b"GPS" not in photo.png


@pytest.mark.parametrize(
    "make",
    [
        lambda: _encode(_gradient().convert("L"), "PNG"),
        lambda: _encode(_gradient().convert("P"), "PNG"),
        lambda: _encode(_gradient().convert("RGBA"), "PNG"),
        lambda: _encode(_gradient().convert("CMYK"), "JPEG"),
        lambda: _encode(Image.fromarray((np.arange(300 * 200).reshape(300, 200) % 65535).astype(np.uint16)), "PNG"),
    ],
    ids=["grayscale", "palette", "rgba", "cmyk-jpeg", "16-bit"],
)
def test_image_modes_become_rgb(make):
    photo = normalise_photo(make())
    assert photo.image.ndim == 3 and photo.image.shape[2] == 3 and photo.image.dtype == np.uint8


def test_large_photo_is_bounded():
    photo = normalise_photo(_encode(_gradient(3000, 1500), "PNG"), PhotoLimits(max_side=1024))
    assert max(photo.size) == 1024 and photo.original_size == (3000, 1500)


def test_animated_gif_uses_first_frame():
    frames = [_gradient(), _gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    photo = normalise_photo(buf.getvalue())
    assert photo.frames == 2 and photo.size == (200, 300)


def test_bad_inputs_get_typed_codes():
    assert _code(b"") is ErrorCode.EMPTY_FILE
    assert _code(b"this is not an image at all") is ErrorCode.NOT_AN_IMAGE
    assert _code(_encode(_gradient(), "JPEG")[:400]) is ErrorCode.TRUNCATED_IMAGE
    assert _code(_encode(_gradient(40, 40), "PNG")) is ErrorCode.IMAGE_TOO_SMALL
    assert _code(b"x" * 2048, PhotoLimits(max_file_bytes=1024)) is ErrorCode.FILE_TOO_LARGE


def test_decompression_bomb_is_refused_with_guard_on():
    bomb = _encode(Image.new("1", (30000, 30000)), "PNG")  # ~100 KB file, 900 Mpx declared
    assert _code(bomb) is ErrorCode.DECOMPRESSION_BOMB
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard was restored, not disabled


# -- damaged files (issue 20): every one refused with the code that names the problem ----------

REAL_PHOTOS = [SAMPLES / "person_standing.png", SAMPLES / "person_skiing.jpg"]


@pytest.mark.parametrize("photo", REAL_PHOTOS, ids=lambda p: p.stem)
@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_are_refused(photo, case):
    image = Image.open(photo).convert("RGB")
    good = good_file(image, DAMAGED[case].fmt)
    assert normalise_photo(good).size == image.size  # the file was fine before the damage
    assert _code(damaged_file(image, case)) is DAMAGED[case].code


def test_decode_errors_are_not_swallowed_by_metadata_reads():
    """The issue's reproduction: a PNG (with an eXIf chunk, so orientation is read) whose IDAT
    was damaged and its CRC recomputed. Only the zlib decoder can notice; reading EXIF used to
    trigger that decode first and swallow its error, and the second load returned garbage."""
    image = Image.open(SAMPLES / "person_standing.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 1
    data = png_idat_zeroed(_encode(image, "PNG", exif=exif.tobytes()), fix_crc=True)
    with pytest.raises(PipelineError) as info:
        normalise_photo(data)
    assert info.value.code is ErrorCode.CORRUPT_IMAGE and "unrecognized data stream" in info.value.message


def test_truncated_data_is_refused_even_if_a_library_allows_it(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries set it globally
    image = Image.open(SAMPLES / "person_skiing.jpg").convert("RGB")
    jpeg = _encode(image, "JPEG", quality=90)
    assert _code(jpeg[: len(jpeg) * 6 // 10]) is ErrorCode.TRUNCATED_IMAGE
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_zeroed_jpeg_scan_bytes_that_stay_a_valid_bitstream_are_a_known_blind_spot():
    """Documented limitation (models/image_integrity.py): Huffman codes resynchronise, so 200
    zeroed scan bytes in the standing sample decode with no libjpeg warning at all. If this starts
    failing, a decoder learnt to see it: move the case into DAMAGED."""
    image = Image.open(SAMPLES / "person_standing.png").convert("RGB")
    data = jpeg_entropy_zeroed(good_file(image, "JPEG"))
    assert check_container(data) is None
    assert normalise_photo(data).size == image.size
