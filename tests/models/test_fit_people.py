"""Person selection, people count and framing on real photos (real MediaPipe).

The development photos live outside the repository (`../shared/data/photos`, licences in its
MANIFEST.csv); tests that need them are skipped where they are absent. The bundled samples
always run.
"""

from pathlib import Path

import numpy as np
import pytest

from models.errors import ErrorCode, PipelineError
from models.keypoints import POSE_INDEX, classify_framing, detect_keypoints, find_people, person_component
from models.photo import normalise_photo

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"


def _photo(name: str) -> np.ndarray:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"development photo {name} not available")
    return normalise_photo(path.read_bytes()).image


def _nose_x(kp) -> float:
    return float(kp.pose[POSE_INDEX["nose"], 0])


def test_single_person_sample_is_one_full_body(standing_photo):
    image = normalise_photo(standing_photo.read_bytes()).image
    kp = detect_keypoints(image)
    assert kp.people_count == 1 and kp.framing == "full_body"
    assert kp.extra["selection"] == "full_image"


def test_two_children_picks_the_bigger_one_deterministically():
    image = _photo("child_02.jpg")  # two children on a fence; the right one is closer and bigger
    first = detect_keypoints(image)
    assert first.people_count == 2
    assert _nose_x(first) > image.shape[1] / 2  # Holistic alone takes the left child
    assert first.framing == "full_body"
    # the mask belongs to the chosen child: nothing of it on the left half
    assert (first.mask[:, : image.shape[1] // 3] >= 128).sum() == 0
    again = detect_keypoints(image)
    assert np.allclose(again.pose, first.pose) and again.people_count == first.people_count


def test_group_photos_count_people_and_keep_one():
    row = detect_keypoints(_photo("multi_01.jpg"))  # nine people standing in a row
    assert 7 <= row.people_count <= 11
    assert row.framing == "full_body"
    x0, _, x1, _ = row.person_bbox
    assert x1 - x0 < 0.3 * row.image_size[0]  # one person's mask, not the whole row
    crowd = detect_keypoints(_photo("multi_03.jpg"))  # 29 people, small, three rows
    assert crowd.people_count >= 20
    assert crowd.extra["selection"] == "crop"  # Holistic finds nobody on the whole photo


def test_occlusion_photo_picks_the_biggest_person():
    kp = detect_keypoints(_photo("occlusion_02.jpg"))
    assert kp.people_count >= 3
    people = find_people(_photo("occlusion_02.jpg"))
    chosen = people.candidates[0]
    # landmarks of the chosen person, not of whoever Holistic prefers on the whole image
    hips = kp.pose[[POSE_INDEX["left_hip"], POSE_INDEX["right_hip"]], :2].mean(axis=0)
    assert np.hypot(*(hips - np.array(chosen.hip_centre))) < 0.35 * chosen.radius


@pytest.mark.parametrize(
    ("name", "framing"),
    [("fullbody_08.png", "full_body"), ("halfbody_01.png", "half_body"), ("halfbody_05.png", "half_body"),
     ("head_01.jpg", "head")],
)  # fmt: skip
def test_framing_follows_the_visible_landmarks(name, framing):
    kp = detect_keypoints(_photo(name))
    assert kp.framing == framing and classify_framing(kp) == framing
    assert kp.people_count == 1


def test_no_person_is_a_typed_error():
    rng = np.random.default_rng(0)
    noise = (rng.random((400, 300, 3)) * 255).astype(np.uint8)
    with pytest.raises(PipelineError) as info:
        detect_keypoints(noise)
    assert info.value.code is ErrorCode.NO_PERSON


def test_mask_keeps_only_regions_touching_the_person():
    mask = np.zeros((100, 100), np.uint8)
    mask[10:60, 10:40] = 255  # the person
    mask[70:90, 70:90] = 255  # a neighbour's arm, not connected
    pose = np.zeros((33, 4))
    pose[:, :2] = (25, 30)
    pose[:, 3] = 1.0
    cleaned = person_component(mask, pose)
    assert (cleaned[10:60, 10:40] == 255).all() and (cleaned[70:90, 70:90] == 0).all()
