import io

import numpy as np
import pytest
from PIL import Image

from models.errors import ErrorCode, PipelineError
from models.photo import PhotoLimits, decode_png, normalise_photo


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
