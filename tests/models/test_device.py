"""The science's device argument (`models.device`): "cpu" passed explicitly is the default to
the bit; "cuda" without a GPU is a typed error, never a silent fallback. On a machine with a GPU
the fit and the Anny evaluation also run on "cuda" and agree with the CPU within tolerance
(`benchmarks/gpu_check.py` measures the same on a lent GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.body_model import anny_body, anny_forward, load_anny, load_body_model
from models.device import module_device, on_device, resolve_device
from models.errors import ErrorCode, PipelineError
from models.fitting import fit_body, posed_vertices
from models.keypoints import detect_keypoints
from models.photo import normalise_photo

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def standing_keypoints(standing_photo):
    return detect_keypoints(normalise_photo(standing_photo.read_bytes()).image)


def test_cpu_is_accepted_and_unknown_devices_are_not():
    assert resolve_device(None) == "cpu" and resolve_device(" CPU ") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_typed_error_before_any_model_is_loaded():
    for ask in (lambda: resolve_device("cuda"), lambda: load_body_model(device="cuda"), lambda: load_anny(device="cuda:0")):
        with pytest.raises(PipelineError) as err:
            ask()
        assert err.value.code == ErrorCode.DEVICE_UNAVAILABLE and not err.value.permanent
        assert "sees no CUDA GPU" in err.value.message


def test_cpu_on_device_creates_cpu_tensors_and_is_a_no_op():
    with on_device("cpu"):
        assert torch.zeros(2).device.type == "cpu"
        assert torch.as_tensor(np.ones(2)).device.type == "cpu"


def test_explicit_cpu_is_the_same_model_not_a_second_copy(anny_model):
    assert load_anny(None, "cpu") is load_anny() is anny_model
    assert module_device(anny_model) == "cpu"
    assert anny_body(device="cpu") is anny_body() and anny_body().device == "cpu"


def test_explicit_cpu_fit_equals_the_default_fit(standing_keypoints, anny_fitter_body):
    """The fitter driven through `load_body_model(device="cpu")` gives the fit that the body
    built without any device gives: the device plumbing changes nothing on the CPU."""
    default = fit_body(standing_keypoints, anny_fitter_body)
    explicit = fit_body(standing_keypoints, load_body_model(device="cpu"))
    untimed = [fit.to_dict() for fit in (explicit, default)]
    for data in untimed:
        data["metrics"].pop("fit_seconds")  # wall clock, the one thing allowed to differ
    assert untimed[0] == untimed[1]
    np.testing.assert_array_equal(
        posed_vertices(load_body_model(device="cpu"), explicit), posed_vertices(anny_fitter_body, default)
    )


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_fit_agrees_with_the_cpu_fit(standing_keypoints, anny_fitter_body):
    cpu = fit_body(standing_keypoints, anny_fitter_body)
    gpu_body = load_body_model(device="cuda")
    gpu = fit_body(standing_keypoints, gpu_body)
    assert module_device(gpu_body.model).startswith("cuda")
    difference = np.abs(posed_vertices(gpu_body, gpu) - posed_vertices(anny_fitter_body, cpu)).max()
    assert difference < 0.02  # metres: float32 reductions differ in order on the GPU
    assert abs(gpu.metrics["keypoint_reprojection_rel"] - cpu.metrics["keypoint_reprojection_rel"]) < 0.01


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_anny_forward_returns_what_the_cpu_does(anny_model):
    gpu = load_anny(device="cuda")
    rest_gpu = anny_forward(gpu, {"height": 0.7})["rest_vertices"][0].cpu().numpy()
    rest_cpu = anny_forward(anny_model, {"height": 0.7})["rest_vertices"][0].numpy()
    np.testing.assert_allclose(rest_gpu, rest_cpu, atol=1e-4)


# -- benchmarks/gpu_check: its CPU path and its answer when CUDA is missing --------------------


def _gpu_check():
    import importlib.util
    import sys

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_gpu_check_script_says_plainly_when_torch_has_no_cuda(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cuda"]["usable"] is False and report["exit_code"] == 3
    assert "CUDA is not usable" in done.stderr and "runs" not in report  # nothing measured as if on a GPU


def test_gpu_check_cpu_path_measures_and_compares(tmp_path, standing_photo):
    import json

    gpu_check = _gpu_check()
    code = gpu_check.main(["--out", str(tmp_path), "--devices", "cpu", "--repeats", "0", "--photo", str(standing_photo)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0 and report["exit_code"] == 0 and report["comparison"] == {}
    cpu = report["runs"]["cpu"]
    assert cpu["timings"]["fit_cold_s"] > 0 and cpu["timings"]["clothing_s"] > 0
    assert cpu["metrics"]["keypoint_reprojection_rel"] < 0.05 and cpu["metrics"]["silhouette_iou"] > 0.6


def test_gpu_check_comparison_flags_a_device_that_disagrees():
    gpu_check = _gpu_check()
    vertices, offsets = np.zeros((10, 3)), np.zeros((10, 3))
    metrics = {"keypoint_reprojection_rel": 0.004, "silhouette_iou": 0.85}
    cpu = gpu_check.DeviceRun("cpu", {}, metrics, vertices, offsets)
    close = gpu_check.DeviceRun("cuda", {}, metrics, vertices + 1e-5, offsets)
    far = gpu_check.DeviceRun("cuda", {}, metrics, vertices + np.array([0.0, 0.05, 0.0]), offsets)
    assert gpu_check.compare(cpu, close)["agrees"] is True
    result = gpu_check.compare(cpu, far)
    assert result["agrees"] is False and result["max_difference"]["vertex_m"] == pytest.approx(0.05)
