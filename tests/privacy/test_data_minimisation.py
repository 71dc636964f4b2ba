"""Data minimisation, proven on the stores: real photos tagged like a phone tags them (GPS,
maker, model, serial, owner, timestamps, thumbnail, comments, XMP; `tagged_photos.py`) in
every format, through every local ingestion path - `avatarpipe run`, `avatarpipe ingest`, the
HTTP upload function (`ingest_photo`) and the folder sensor - and nothing stored holds any of
it: every object is searched byte for byte for the GPS rationals and the strings, every image
(GLB-embedded ones too) is read back with Pillow, and Dagster's event log of the run is
searched as well. `avatarpipe privacy-scan` agrees, and finds metadata planted past ingestion.
The S3 `ObjectCreated` path is `tests/aws/test_minimisation_sqs.py`.
"""

from __future__ import annotations

import io
import json
import struct

import pytest
from dagster import DagsterInstance, build_sensor_context
from PIL import Image

from models.metadata_strip import sniff_format
from models.photo import normalise_photo
from ops.privacy_scan import glb_images
from ops.upload_minimisation import MINIMISED_EVENT
from orchestration.app import execute_avatar_job, ingest_photo
from orchestration.resources import MetadataStoreResource, ObjectStoreResource
from orchestration.sensors_ingest import build_folder_sensor
from storage.metadata_store import open_metadata_store
from storage.object_store import LocalObjectStore, raw_upload_key, sha256_hex
from tests.conftest import SAMPLES
from tests.privacy.tagged_photos import LEAKS, TAGGED, leaks_in, metadata_read_back
from tests.reliability.helpers import cli_in_process, isolated_home, ledger


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    # Keep raw uploads (opt-in policy) so that the test can inspect them after `ready`; the
    # default deletion at `ready` is tests/compliance/test_raw_retention.py's.
    with isolated_home(
        tmp_path_factory.mktemp("minimisation_home"), AVATARPIPE_RAW_RETENTION_DAYS="30"
    ) as settings:
        yield settings


@pytest.fixture(scope="module")
def skiing() -> Image.Image:
    return Image.open(SAMPLES / "person_skiing.jpg").convert("RGB")


def _images_in(data: bytes) -> list[bytes]:
    """``data`` itself if it is an image, and the images a GLB embeds."""
    images = list(glb_images(data))
    if sniff_format(data) != "unknown":
        images.append(data)
    return images


def assert_nothing_identifying(settings, upload_id: str) -> dict[str, bytes]:
    """Every object of the upload: no leak in its bytes, nothing Pillow reads back from any image
    in it. Returns the objects by key."""
    state = ledger(settings, upload_id)
    store = LocalObjectStore(settings.objects_dir)
    objects = {}
    for key in state.keys:
        data = store.get_bytes(key)
        assert leaks_in(data) == [], key
        for image in _images_in(data):
            assert leaks_in(image) == [] and metadata_read_back(image) == {}, key
        objects[key] = data
    assert any(key.split("/")[3] == "raw" for key in objects)
    return objects


def _assert_ledger_records_the_stored_raw(settings, upload_id: str) -> None:
    with open_metadata_store(None, settings.metadata_dir) as metadata:
        upload = metadata.get_upload(upload_id)
        events = metadata.audit_for(upload["subject_id"])
    stored = LocalObjectStore(settings.objects_dir).get_bytes(upload["photo_key"])
    digest = sha256_hex(stored)
    assert (
        upload["photo_key"].rsplit("/", 1)[-1].startswith(digest[:16])
    )  # content addressed by what is stored
    ingest = [e for e in events if e["event"] == "ingest" and e["upload_id"] == upload_id]
    assert ingest and ingest[0]["details"]["sha256"] == digest and ingest[0]["details"]["metadata_removed"]


@pytest.mark.slow
def test_run_stores_nothing_identifying_anywhere(home, capfd, tmp_path, skiing):
    """`avatarpipe run` on a sideways phone JPEG: the whole chain, every artifact, GLB textures
    and Dagster's event log; the avatar is upright (the orientation was the one tag kept)."""
    path = tmp_path / "phone.jpg"
    sideways = skiing.transpose(Image.Transpose.ROTATE_90)  # stored turned, Orientation 6 turns it back
    path.write_bytes(TAGGED["jpeg"].make(sideways, 6))
    code, answer, _ = cli_in_process(["run", str(path), "--subject", "privacy-run", "--json"], capfd)
    assert code == 0, answer["error"]
    assert answer["metrics"]["photo"]["exif_rotated"] is True
    assert (answer["metrics"]["photo"]["width"], answer["metrics"]["photo"]["height"]) == skiing.size

    objects = assert_nothing_identifying(home, answer["upload_id"])
    assert {"raw", "photo", "rigged_glb"} <= {key.split("/")[3] for key in objects}
    glbs = [data for data in objects.values() if data[:4] == b"glTF"]
    assert any(list(glb_images(glb)) for glb in glbs)  # the GLBs' textures were among the images checked
    _assert_ledger_records_the_stored_raw(home, answer["upload_id"])

    events = DagsterInstance.get().all_logs(answer["dagster_run_id"])
    log_text = "\n".join(str(e.to_json() if hasattr(e, "to_json") else e) for e in events).encode()
    assert [leak for leak in LEAKS if leak in log_text] == []  # Dagster metadata previews included

    code, scan, _ = cli_in_process(["privacy-scan", "--json"], capfd)
    assert code == 0 and scan["clean"], scan["findings"]
    assert scan["images_scanned"] > len([d for d in objects.values() if sniff_format(d) != "unknown"])


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("fmt", list(TAGGED))
def test_cli_ingest_and_photo_step_in_every_format(home, capfd, tmp_path, skiing, fmt, orientation):
    spec = TAGGED[fmt]
    tagged = spec.make(skiing, orientation)
    path = tmp_path / f"upload.{spec.ext}"
    path.write_bytes(tagged)
    code, answer, _ = cli_in_process(["ingest", str(path), "--subject", "privacy-cli", "--json"], capfd)
    assert code == 0
    execute_avatar_job(home, answer["upload_id"], asset_selection=["photo"])
    objects = assert_nothing_identifying(home, answer["upload_id"])
    assert {key.split("/")[3] for key in objects} == {"raw", "photo"}
    _assert_ledger_records_the_stored_raw(home, answer["upload_id"])
    state = ledger(home, answer["upload_id"])
    photo = state.current["photo"]["metrics"]
    assert photo["original_format"] == spec.fmt
    assert photo["exif_rotated"] is (orientation != 1 and fmt != "gif")  # orientation survives stripping


@pytest.mark.parametrize("fmt", list(TAGGED))
def test_http_upload_function_stores_the_picture_without_metadata(home, skiing, fmt):
    """`ingest_photo` is what an HTTP upload handler calls with the request body."""
    tagged = TAGGED[fmt].make(skiing, 6)
    ingested = ingest_photo(home, tagged, f"upload.{TAGGED[fmt].ext}", "privacy-http")
    stored = LocalObjectStore(home.objects_dir).get_bytes(ingested.photo_key)
    assert leaks_in(stored) == [] and metadata_read_back(stored) == {}
    assert (normalise_photo(stored).image == normalise_photo(tagged).image).all()  # the same picture


def test_folder_sensor_strips_a_dropped_file_before_requesting_its_run(home, skiing):
    store = LocalObjectStore(home.objects_dir)
    dropped = {}
    for i, (fmt, spec) in enumerate(TAGGED.items()):
        key = raw_upload_key("privacy-drop", f"u_drop{i:010d}", spec.ext)  # a browser's `original.ext`
        store.put_bytes(key, spec.make(skiing, 6))
        dropped[key] = fmt
    sensor = build_folder_sensor("avatar_job", settle_seconds=0)
    with build_sensor_context(
        instance=DagsterInstance.get(),
        sensor_name=sensor.name,
        resources={
            "object_store": ObjectStoreResource.from_config(home.object_store_config()),
            "metadata": MetadataStoreResource(uri=None, embedded_dir=str(home.metadata_dir)),
        },
    ) as context:
        result = sensor(context)
    requested = {r.partition_key for r in result.run_requests}
    with open_metadata_store(None, home.metadata_dir) as metadata:
        audit = metadata.audit_for("privacy-drop")
    for key in dropped:
        stored = store.get_bytes(key)
        assert leaks_in(stored) == [] and metadata_read_back(stored) == {}, key
        upload_id = key.split("/")[2]
        assert upload_id in requested  # stripped first, then requested, in the same tick
        minimised = [e for e in audit if e["event"] == MINIMISED_EVENT and e["upload_id"] == upload_id]
        assert len(minimised) == 1 and minimised[0]["details"]["sha256"] == sha256_hex(stored)
        assert not {str(r) for r in minimised[0]["details"]["removed"]} & {
            leak.decode("latin-1") for leak in LEAKS
        }


def _glb_with_image(image: bytes) -> bytes:
    """A minimal GLB whose only content is an embedded image (as textures are embedded)."""
    document = {
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": len(image)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(image)}],
        "images": [{"bufferView": 0, "mimeType": "image/png"}],
    }
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    binary = image + b"\x00" * (-len(image) % 4)
    body = (
        struct.pack("<II", len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(binary), 0x004E4942)
        + binary
    )
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def test_privacy_scan_finds_metadata_planted_past_ingestion(home, capfd, skiing):
    store = LocalObjectStore(home.objects_dir)
    planted_jpeg = "subjects/privacy-plant/u_plant0000000001/photo/0123456789abcdef.jpg"
    planted_glb = "subjects/privacy-plant/u_plant0000000001/rigged_glb/0123456789abcdef.glb"
    store.put_bytes(planted_jpeg, TAGGED["jpeg"].make(skiing, 1))
    store.put_bytes(planted_glb, _glb_with_image(TAGGED["png"].make(skiing, 1)))
    try:
        code, scan, _ = cli_in_process(["privacy-scan", "--json"], capfd)
        assert code == 1 and not scan["clean"]
        found = {(f["key"], f["part"]): f for f in scan["findings"]}
        assert set(found) == {
            ("u_plant0000000001/photo/0123456789abcdef.jpg", ""),
            ("u_plant0000000001/rigged_glb/0123456789abcdef.glb", "image 0"),
        }
        assert "APP1 Exif" in found[("u_plant0000000001/photo/0123456789abcdef.jpg", "")]["metadata"]
        assert "eXIf" in found[("u_plant0000000001/rigged_glb/0123456789abcdef.glb", "image 0")]["metadata"]
        assert "privacy-plant" not in json.dumps(scan)  # no subject id in the answer
        code, _answer, err = cli_in_process(["privacy-scan"], capfd)
        assert code == 1 and "privacy-plant" not in err
    finally:
        store.delete_prefix("subjects/privacy-plant/")
    code, scan, _ = cli_in_process(["privacy-scan", "--json"], capfd)
    assert code == 0 and scan["clean"], scan["findings"]


def test_the_fixtures_carry_what_a_phone_would(skiing):
    """The proof is only as good as its inputs: every format carries the metadata, as bytes and
    as Pillow reads it."""
    for fmt, spec in TAGGED.items():
        data = spec.make(skiing, 6)
        assert metadata_read_back(data), fmt
        expected = 3 if fmt == "gif" else 5  # GIF: comment + XMP only
        assert len(leaks_in(data)) >= expected, (fmt, leaks_in(data))
        Image.open(io.BytesIO(data)).load()
