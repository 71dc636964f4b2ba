"""Every kind of bad upload through the real pipeline: `avatarpipe run --json` (its entry point,
in this process), a real Dagster instance, the embedded stores.

A refused upload must end with a typed code and a human message in `uploads`, a failed Dagster
run in which the failing step ran exactly once (input errors are never retried), exit code 1,
and nothing stored beyond the raw upload and the artifacts that were valid. Damaged files (cut
short, bad checksums, broken streams: `damage.py`) are refused at `photo`. Uploads that only
look unusual (16-bit, palette, CMYK, grey, alpha, animated, multi-page, EXIF-rotated) must work.

Cost: refusals at the `photo` step take about a second each. The modes that must work run the
`photo` and `keypoints` steps (one Dagster run each, asset selection): those are the steps that
see the file format; everything after them reads the normalised PNG, which is the same kind of
file whatever came in. The whole chain runs for the EXIF-rotated photo (orientation matters to
the fit) and for a photo of several people.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, DagsterRunStatus
from PIL import Image

from models.errors import PERMANENT_CODES, ErrorCode
from orchestration.app import execute_avatar_job, ingest_photo
from tests.conftest import SHARED_PHOTOS
from tests.reliability.damage import DAMAGED, damaged_file
from tests.reliability.helpers import (
    PNG_PIXEL_CHUNKS,
    assert_refused,
    cli_in_process,
    encode,
    isolated_home,
    ledger,
    png_chunks,
    run_bytes,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One home for the module: every case is its own upload (as in production)."""
    with isolated_home(tmp_path_factory.mktemp("bad_inputs_home")) as settings:
        yield settings


@pytest.fixture(scope="module")
def standing() -> Image.Image:
    return Image.open(Path(__file__).resolve().parents[2] / "samples" / "person_standing.png").convert("RGB")


@pytest.fixture(scope="module")
def skiing() -> Image.Image:
    return Image.open(Path(__file__).resolve().parents[2] / "samples" / "person_skiing.jpg").convert("RGB")


# -- refused at the photo step ---------------------------------------------------------------


def test_empty_file(home, capfd, tmp_path):
    code, answer = run_bytes(capfd, tmp_path, b"", "empty.jpg")
    assert_refused(home, code, answer, ErrorCode.EMPTY_FILE, "photo", ())


def test_bytes_that_are_not_an_image(home, capfd, tmp_path):
    data = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" * 50
    code, answer = run_bytes(capfd, tmp_path, data, "holiday.jpg")
    assert_refused(home, code, answer, ErrorCode.NOT_AN_IMAGE, "photo", ())


def test_truncated_jpeg(home, capfd, tmp_path, standing):
    jpeg = encode(standing, "JPEG", quality=92)
    code, answer = run_bytes(capfd, tmp_path, jpeg[: len(jpeg) * 6 // 10], "cut.jpg")  # scan data cut short
    assert_refused(home, code, answer, ErrorCode.TRUNCATED_IMAGE, "photo", ())


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_file(home, capfd, tmp_path, skiing, case):
    """PNG with damaged IDAT / bad CRC / no IEND, JPEG with damaged scan data / a lost marker,
    WebP, GIF and TIFF cut short (`tests/reliability/damage.py`): `TRUNCATED_IMAGE` when the data
    ends early, `CORRUPT_IMAGE` when it is damaged; never a garbled photo passed on."""
    spec = DAMAGED[case]
    code, answer = run_bytes(capfd, tmp_path, damaged_file(skiing, case), f"{case}.{spec.ext}")
    assert_refused(home, code, answer, spec.code, "photo", ())


def test_image_too_small_to_hold_a_person(home, capfd, tmp_path, standing):
    code, answer = run_bytes(capfd, tmp_path, encode(standing.resize((48, 48)), "PNG"), "tiny.png")
    assert_refused(home, code, answer, ErrorCode.IMAGE_TOO_SMALL, "photo", ())


def test_decompression_bomb(home, capfd, tmp_path):
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")  # ~100 KB on disk, 900 Mpx declared
    assert len(bomb) < 200_000
    code, answer = run_bytes(capfd, tmp_path, bomb, "bomb.png")
    assert_refused(home, code, answer, ErrorCode.DECOMPRESSION_BOMB, "photo", ())
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's guard is configured, never switched off


def test_file_larger_than_the_configured_limit(home, capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("AVATARPIPE_MAX_UPLOAD_BYTES", "100000")
    noise = np.random.default_rng(9).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")  # ~480 KB: a valid image, just too big
    code, answer = run_bytes(capfd, tmp_path, data, "big.png")
    assert_refused(home, code, answer, ErrorCode.FILE_TOO_LARGE, "photo", ())
    assert "100000" in answer["error"]["message"]


# -- refused at the keypoints step: the photo was valid and stays --------------------------


def test_photo_with_no_person(home, capfd, tmp_path):
    h, w = 600, 800
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([xx * 255 // w, (yy * 180 // h) + 40, 255 - xx * 255 // w], axis=-1).astype(np.uint8)
    scene[400:, :] = (70, 120, 60)  # a "meadow" under a "sky", and a box
    scene[250:420, 300:420] = (150, 90, 40)
    code, answer = run_bytes(capfd, tmp_path, encode(Image.fromarray(scene), "PNG"), "landscape.png")
    assert_refused(home, code, answer, ErrorCode.NO_PERSON, "keypoints", ("photo",))


def test_person_too_small(home, capfd, tmp_path, skiing):
    # The skier ~150 px tall at the bottom of a 1024 px canvas: found, but below 15 % of the height.
    canvas = Image.new("RGB", (1024, 1024), (128, 128, 128))
    w = skiing.width * 150 // skiing.height
    canvas.paste(skiing.resize((w, 150)), ((1024 - w) // 2, 1024 - 150 - 20))
    code, answer = run_bytes(capfd, tmp_path, encode(canvas, "PNG"), "far_away.png")
    assert_refused(home, code, answer, ErrorCode.PERSON_TOO_SMALL, "keypoints", ("photo",))


def test_person_cut_off(home, capfd, tmp_path, standing):
    # Only the legs are in the picture: no body can be fitted. Whichever step notices, the
    # outcome is a permanent, typed error and nothing beyond the valid artifacts.
    legs = standing.crop((0, int(standing.height * 0.55), standing.width, standing.height))
    code, answer = run_bytes(capfd, tmp_path, encode(legs, "PNG"), "legs.png")
    error = answer["error"]
    assert code == 1 and answer["status"] == "failed"
    assert ErrorCode(error["code"]) in PERMANENT_CODES and error["step"] in ("keypoints", "smplx_params")
    valid = ("photo",) if error["step"] == "keypoints" else ("photo", "keypoints")
    assert_refused(home, code, answer, ErrorCode(error["code"]), error["step"], valid)


# -- unusual but valid files work ------------------------------------------------------------


def _sixteen_bit(image: Image.Image) -> bytes:
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def _animated_gif(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    second = Image.new("RGB", image.size, (0, 0, 255))
    image.save(buffer, format="GIF", save_all=True, append_images=[second], duration=200, loop=0)
    return buffer.getvalue()


def _multipage_tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    second = Image.new("RGB", image.size, (255, 0, 0))
    image.save(buffer, format="TIFF", save_all=True, append_images=[second], compression="tiff_deflate")
    return buffer.getvalue()


def _transparent_background(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype=np.uint8)
    alpha[:, :40] = 0  # a transparent strip at the left
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


MODES = {
    "grayscale": (lambda im: encode(im.convert("L"), "PNG"), "png", "PNG", 1),
    "palette": (lambda im: encode(im.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "png", "PNG", 1),
    "rgba": (_transparent_background, "png", "PNG", 1),
    "cmyk_jpeg": (lambda im: encode(im.convert("CMYK"), "JPEG", quality=92), "jpg", "JPEG", 1),
    "16_bit": (_sixteen_bit, "png", "PNG", 1),
    "animated_gif": (_animated_gif, "gif", "GIF", 2),
    "multipage_tiff": (_multipage_tiff, "tif", "TIFF", 2),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_unusual_formats_work(home, standing, mode):
    make, ext, fmt, frames = MODES[mode]
    ingested = ingest_photo(home, make(standing), f"upload.{ext}", "modes")
    run_id = execute_avatar_job(home, ingested.upload_id, asset_selection=["photo", "keypoints"])
    assert DagsterInstance.get().get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS

    state = ledger(home, ingested.upload_id)
    photo, keypoints = state.current["photo"], state.current["keypoints"]
    assert photo["metrics"]["original_format"] == fmt
    assert photo["metrics"]["frames"] == frames  # animated / multi-page: the first frame is used
    assert (photo["metrics"]["width"], photo["metrics"]["height"]) == standing.size
    assert keypoints["metrics"]["people_count"] >= 1 and keypoints["metrics"]["visible_body_landmarks"] >= 20
    stored = (home.objects_dir / photo["key"]).read_bytes()
    assert set(png_chunks(stored)) <= PNG_PIXEL_CHUNKS  # 8-bit RGB PNG, no metadata at all
    assert Image.open(io.BytesIO(stored)).mode == "RGB"


def _exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Pixels stored turned 90 degrees, with EXIF Orientation 6 ("rotate 90 CW to display"), a
    GPS position and a camera make: what phones upload."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return encode(stored, "JPEG", quality=93, exif=exif.tobytes())


def test_exif_rotated_photo_works_upright(home, capfd, tmp_path, skiing):
    data = _exif_rotated_jpeg(skiing)
    assert Image.open(io.BytesIO(data)).size == (skiing.height, skiing.width)  # stored sideways
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    code, answer, _ = cli_in_process(["run", str(path), "--subject", "exif", "--json"], capfd)
    assert code == 0, answer["error"]
    assert answer["status"] == "ready"
    photo = answer["metrics"]["photo"]
    assert photo["exif_rotated"] is True
    assert (photo["width"], photo["height"]) == skiing.size  # upright: landscape again

    state = ledger(home, answer["upload_id"])
    kp = (home.objects_dir / state.current["keypoints"]["key"]).read_bytes()
    import json

    pose = np.asarray(json.loads(kp)["pose"])
    nose_y, ankles_y = pose[0, 1], pose[[27, 28], 1].mean()
    assert nose_y < ankles_y  # head above feet: the person is upright in the normalised photo
    stored_photo = (home.objects_dir / state.current["photo"]["key"]).read_bytes()
    assert set(png_chunks(stored_photo)) <= PNG_PIXEL_CHUNKS
    assert b"TestCam" not in stored_photo and b"GPS" not in stored_photo


SEVERAL_PEOPLE = SHARED_PHOTOS / "occlusion_02.jpg"


@pytest.mark.skipif(not SEVERAL_PEOPLE.is_file(), reason="needs ../shared/data/photos")
def test_several_people_work_on_the_most_prominent(home, capfd):
    code, answer, _ = cli_in_process(["run", str(SEVERAL_PEOPLE), "--subject", "group", "--json"], capfd)
    assert code == 0, answer["error"]
    assert answer["status"] == "ready"
    keypoints = answer["metrics"]["keypoints"]
    assert keypoints["people_count"] >= 2  # recorded: the avatar is of one of several people
    state = ledger(home, answer["upload_id"])
    kp = state.current["keypoints"]
    assert kp["metrics"]["people_count"] == keypoints["people_count"]


def test_resume_refuses_an_input_error(home, capfd, tmp_path):
    """Re-running the same bad input cannot succeed: `resume` says so and runs nothing."""
    _code, answer = run_bytes(capfd, tmp_path, b"", "empty-again.jpg")
    runs_before = len(DagsterInstance.get().get_run_records())
    code, resumed, _ = cli_in_process(["resume", answer["upload_id"], "--json"], capfd)
    assert code == 1 and resumed["resume"]["action"] == "refused"
    assert "EMPTY_FILE" in resumed["resume"]["reason"] and resumed["error"]["code"] == "EMPTY_FILE"
    assert len(DagsterInstance.get().get_run_records()) == runs_before
    code, _, err = cli_in_process(["resume", "u_doesnotexist", "--json"], capfd)
    assert code == 2 and "no such upload" in err
