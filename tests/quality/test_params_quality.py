"""`smplx_params` metrics (fit quality, shape range, joint limits) and the smplx_params suite."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from models.quality import joint_rotation_limit, params_metrics


def _rotate(fit: dict, bone: str, degrees: float) -> dict:
    index = fit["bone_names"].index(bone)
    pose = np.asarray(fit["pose_parameters"])
    pose[index, :3, :3] = Rotation.from_euler("x", degrees, degrees=True).as_matrix()
    return fit | {"pose_parameters": pose.tolist()}


def test_good_fit_passes(good_fit, failures) -> None:
    m = params_metrics(good_fit)
    assert m.shape_value_count == 6 and m.shape_out_of_range_count == 0
    assert m.pose_bone_count == 52 and m.limited_bone_count == 51
    assert m.joint_limit_violation_count == 0 and m.max_joint_rotation_deg == 0
    assert m.rotation_orthonormality_error < 1e-9 and m.camera_valid
    assert failures("smplx_params", m.row()) == {}


def test_joint_limits_by_bone_name() -> None:
    assert joint_rotation_limit("mixamorig:LeftLeg") == joint_rotation_limit("mixamorig:RightLeg") == 160
    assert joint_rotation_limit("mixamorig:LeftHandIndex2") == 110
    assert joint_rotation_limit("mixamorig:Hips") is None


def test_shape_out_of_range_fails(good_fit, failures) -> None:
    fit = good_fit | {"phenotype": good_fit["phenotype"] | {"height": 1.3}}
    assert failures("smplx_params", params_metrics(fit).row()) == {"shape_parameters_in_range": "ERROR"}


def test_nan_pose_fails(good_fit, failures) -> None:
    pose = np.asarray(good_fit["pose_parameters"])
    pose[5, 0, 0] = np.nan
    failed = failures("smplx_params", params_metrics(good_fit | {"pose_parameters": pose.tolist()}).row())
    assert failed == {"pose_finite": "ERROR"}


def test_slightly_beyond_a_joint_limit_warns(good_fit, failures) -> None:
    m = params_metrics(_rotate(good_fit, "mixamorig:LeftLeg", 170.0))  # knee limit 160
    assert m.joint_limit_violation_count == 1 and m.max_joint_limit_excess_deg == pytest.approx(10.0, abs=0.01)
    assert failures("smplx_params", m.row()) == {"pose_within_joint_limits": "WARN"}


def test_far_beyond_a_joint_limit_fails(good_fit, failures) -> None:
    m = params_metrics(_rotate(good_fit, "mixamorig:Neck", 120.0))  # neck limit 60
    assert failures("smplx_params", m.row()) == {
        "pose_within_gross_joint_limits": "ERROR",
        "pose_within_joint_limits": "WARN",
    }


def test_skewed_rotation_fails(good_fit, failures) -> None:
    pose = np.asarray(good_fit["pose_parameters"])
    pose[3, :3, :3] *= 1.1  # scaled: not a rotation
    failed = failures("smplx_params", params_metrics(good_fit | {"pose_parameters": pose.tolist()}).row())
    assert failed["pose_rotations_valid"] == "ERROR"


@pytest.mark.parametrize(("reprojection", "expected"), [
    (0.05, {"reprojection_error_good": "WARN"}),
    (0.2, {"reprojection_error_acceptable": "ERROR", "reprojection_error_good": "WARN"}),
    (None, {"reprojection_error_acceptable": "ERROR", "reprojection_error_good": "WARN"}),
    (float("nan"), {"reprojection_error_acceptable": "ERROR", "reprojection_error_good": "WARN"}),
])  # fmt: skip
def test_reprojection_error(good_fit, failures, reprojection, expected) -> None:
    fit = good_fit | {"metrics": {"keypoint_reprojection_rel": reprojection}}
    assert failures("smplx_params", params_metrics(fit).row()) == expected


def test_invalid_camera_fails(good_fit, failures) -> None:
    camera = good_fit["camera"] | {"K": [[0, 0, 256], [0, 0, 384], [0, 0, 1]]}
    assert failures("smplx_params", params_metrics(good_fit | {"camera": camera}).row()) == {"camera_valid": "ERROR"}


def test_smplx_style_parameters(failures) -> None:
    """A SMPL-X fit stores betas and axis-angle poses in `parameters`; no bone names, no limits."""
    fit = {
        "body_model": {"name": "smplx", "version": "1.1", "rig": "smplx"},
        "camera": {"K": [[900, 0, 256], [0, 900, 384], [0, 0, 1]], "image_size": [512, 768]},
        "phenotype": {},
        "parameters": {"betas": [0.5] * 10, "global_orient": [0, 0, 0], "body_pose": [[0.1, 0, 0]] * 21},
        "metrics": {"keypoint_reprojection_rel": 0.01},
    }
    m = params_metrics(fit)
    assert (m.shape_value_count, m.pose_bone_count, m.limited_bone_count) == (10, 22, 0)
    assert failures("smplx_params", m.row()) == {}
    wild = fit | {"parameters": fit["parameters"] | {"betas": [9.0] * 10}}
    assert failures("smplx_params", params_metrics(wild).row()) == {"shape_parameters_in_range": "ERROR"}
