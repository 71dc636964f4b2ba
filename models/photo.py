"""Decode an uploaded photo into a clean, upright, metadata-free RGB image.

Pillow does the decoding. Its decompression-bomb guard stays on (configured through
`max_pixels`, never disabled), EXIF orientation is applied so the person is upright, and
the re-encoded PNG carries no EXIF/GPS/ICC/text metadata at all.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from models.errors import ErrorCode, PipelineError
from models.image_integrity import check_container

STEP = "photo"


@dataclass(frozen=True)
class PhotoLimits:
    max_file_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 64_000_000  # decoded pixels; above this Pillow's bomb guard refuses
    min_side: int = 64
    max_side: int = 1024  # the normalised photo is downscaled to fit this

    @staticmethod
    def with_overrides(max_file_bytes: int | None = None, max_pixels: int | None = None) -> PhotoLimits:
        """The defaults, each overridden when given (the configuration's
        `AVATARPIPE_MAX_UPLOAD_BYTES` / `AVATARPIPE_MAX_IMAGE_PIXELS`, validated positive there:
        the bomb guard can be tightened or loosened, never switched off)."""
        defaults = PhotoLimits()
        for name, value in (("max_file_bytes", max_file_bytes), ("max_pixels", max_pixels)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return PhotoLimits(
            max_file_bytes=max_file_bytes or defaults.max_file_bytes,
            max_pixels=max_pixels or defaults.max_pixels,
        )


@dataclass(frozen=True)
class NormalisedPhoto:
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    png: bytes  # lossless, metadata-free encoding of `image`
    original_size: tuple[int, int]  # (w, h) after EXIF orientation, before downscaling
    original_format: str
    exif_rotated: bool
    frames: int  # >1 for animated GIF / multi-page TIFF; only the first frame is used

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.image.shape[1]), int(self.image.shape[0]))


def check_upload(data: bytes, limits: PhotoLimits | None = None) -> tuple[int, int]:
    """Refuse what can be refused before anything is stored (the HTTP service calls this at the
    door): an empty or too large file, one that is not an image, too many or too few pixels.
    Reads the header only; returns the (w, h) it declares. The `photo` step checks the rest."""
    limits = limits or PhotoLimits()
    _check_file_size(data, limits)
    image = _open_image(data, limits.max_pixels)
    with image:
        size = image.size
    _check_min_side(size, limits)
    return size


def _check_file_size(data: bytes, limits: PhotoLimits) -> None:
    if not data:
        raise PipelineError(ErrorCode.EMPTY_FILE, "the uploaded file is empty", STEP)
    if len(data) > limits.max_file_bytes:
        raise PipelineError(
            ErrorCode.FILE_TOO_LARGE,
            f"the file is {len(data)} bytes; the limit is {limits.max_file_bytes}",
            STEP,
        )


def _check_min_side(size: tuple[int, int], limits: PhotoLimits) -> None:
    if min(size) < limits.min_side:
        raise PipelineError(
            ErrorCode.IMAGE_TOO_SMALL,
            f"the image is {size[0]}x{size[1]} px; at least {limits.min_side} px per side is needed to find a person",
            STEP,
        )


def normalise_photo(data: bytes, limits: PhotoLimits | None = None) -> NormalisedPhoto:
    """Validate and normalise raw upload bytes, raising PipelineError with a typed code.

    Without explicit ``limits`` the defaults apply (the pipeline passes the configured ones).
    Animated GIFs and multi-page TIFFs are accepted: the first frame is used and ``frames``
    says how many there were.
    """
    limits = limits or PhotoLimits()
    _check_file_size(data, limits)
    problem = check_container(data)
    if problem is not None:
        raise _damaged(problem.truncated, problem.detail)
    rgb, fmt, exif_rotated, frames = _decode_upright(data, limits)
    original_size = rgb.size
    _check_min_side(original_size, limits)
    rgb = _bound_size(rgb, limits.max_side)
    return NormalisedPhoto(
        image=np.asarray(rgb, dtype=np.uint8).copy(),
        png=encode_png(np.asarray(rgb)),
        original_size=original_size,
        original_format=fmt,
        exif_rotated=exif_rotated,
        frames=frames,
    )


def _decode_upright(data: bytes, limits: PhotoLimits) -> tuple[Image.Image, str, bool, int]:
    """The first frame, fully decoded, upright, in RGB: (image, format, exif_rotated, frames)."""
    image = _open_image(data, limits.max_pixels)
    fmt = image.format or "unknown"
    # TIFF keeps its orientation in the directory parsed at open (reading it decodes nothing);
    # Pillow's TIFF decoder applies it itself and then drops the tag.
    tiff_orientation = _tiff_orientation(image)
    frame = _decode_first_frame(image, data)  # pixels first: nothing reads metadata before this
    orientation = _exif_orientation(image)
    frames = _frame_count(image)
    image = _apply_orientation(frame, orientation)
    exif_rotated = orientation not in (None, 1) or tiff_orientation not in (None, 1)
    return _to_rgb(image), fmt, exif_rotated, frames


def upright_rgb(data: bytes, limits: PhotoLimits | None = None) -> Image.Image | None:
    """The upload's first frame, upright, in RGB at full resolution, or None when `photo` could
    not read it (the same container check and decode as `normalise_photo`)."""
    limits = limits or PhotoLimits()
    if not data or check_container(data) is not None:
        return None
    try:
        rgb, _, _, _ = _decode_upright(data, limits)
    except PipelineError:
        return None
    return rgb


def upright_png(data: bytes, limits: PhotoLimits | None = None) -> bytes | None:
    """The upload's first frame, upright, as a metadata-free RGB PNG at full resolution, or None
    when `photo` could not read it: the lossless fallback of the metadata strip for a file whose
    structure its in-place rewrite would break (`models.metadata_strip`)."""
    rgb = upright_rgb(data, limits)
    return None if rgb is None else encode_png(np.asarray(rgb))


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB/RGBA/L array with no ancillary metadata chunks."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _open_image(data: bytes, max_pixels: int) -> Image.Image:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels // 2  # Pillow raises above 2x this value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise Image.DecompressionBombError("too many pixels")
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PipelineError(
            ErrorCode.DECOMPRESSION_BOMB,
            f"the image declares more than {max_pixels} pixels and was refused ({exc})",
            STEP,
        ) from exc
    except UnidentifiedImageError as exc:
        raise PipelineError(
            ErrorCode.NOT_AN_IMAGE, "the file is not an image format we can read", STEP
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # a header Pillow cannot parse: cut short or damaged
        raise _damaged(_reads_as_truncation(exc), f"{type(exc).__name__}: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode_first_frame(image: Image.Image, data: bytes) -> Image.Image:
    """Decode the first frame completely, once, and return an independent copy of its pixels.

    This runs before anything inspects the image (EXIF, frame count): those can trigger a
    decode of their own, and a decode error swallowed there leaves Pillow holding a
    half-decoded image that a second ``load()`` returns without complaint. Truncated data is
    never tolerated (``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off for the decode), and
    damage Pillow's decoders do not report was looked for in the container beforehand
    (:mod:`models.image_integrity`).
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.seek(0)
        image.load()
        return image.copy()
    except Image.DecompressionBombError as exc:  # a frame larger than the header said
        raise PipelineError(ErrorCode.DECOMPRESSION_BOMB, f"the image was refused ({exc})", STEP) from exc
    except EOFError as exc:
        raise _damaged(True, str(exc) or "unexpected end of data") from exc
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is a damaged file
        raise _damaged(_reads_as_truncation(exc), f"{type(exc).__name__}: {exc}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _damaged(truncated: bool, detail: str) -> PipelineError:
    if truncated:
        return PipelineError(ErrorCode.TRUNCATED_IMAGE, f"the image data ends too early ({detail})", STEP)
    return PipelineError(ErrorCode.CORRUPT_IMAGE, f"the image data is damaged ({detail})", STEP)


def _reads_as_truncation(exc: BaseException) -> bool:
    message = str(exc).lower()
    return isinstance(exc, EOFError) or any(
        w in message for w in ("truncated", "premature end", "end of file")
    )


def _frame_count(image: Image.Image) -> int:
    """Frames in an animated/multi-page file; counting walks the whole file, so a later frame
    cut short or damaged is refused as well (only the first frame is used)."""
    try:
        return int(getattr(image, "n_frames", 1) or 1)
    except MemoryError:
        raise
    except Exception as exc:  # as in _decode_first_frame
        raise _damaged(_reads_as_truncation(exc), f"{type(exc).__name__}: {exc}") from exc


def _exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation of an already decoded image (reading it decodes nothing)."""
    try:
        value = image.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError, struct.error):  # malformed EXIF must not fail the upload
        return None
    return value if isinstance(value, int) else None


def _tiff_orientation(image: Image.Image) -> int | None:
    tags = getattr(image, "tag_v2", None)
    value = tags.get(0x0112) if tags is not None else None
    return value if isinstance(value, int) else None


# EXIF orientation -> the transposition that makes the picture upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _apply_orientation(image: Image.Image, orientation: int | None) -> Image.Image:
    for step in _ORIENTATION_TRANSPOSE.get(orientation or 1, ()):
        image = image.transpose(step)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (16-bit, palette, CMYK, grey, alpha) to 8-bit RGB; alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(float(arr.max()), 1.0) if arr.max() > 255 else 1.0
        image = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _bound_size(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1.0:
        return image
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS)
