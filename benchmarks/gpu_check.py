"""The GPU path, checked in one short run on a machine with an NVIDIA GPU (issue 17).

`python benchmarks/gpu_check.py [--out DIR] [--photo PNG] [--devices cpu,cuda] [--repeats N]`

1. What torch is: version, CUDA build, whether it sees a GPU and which. Without CUDA it says so
   in the JSON (`"cuda": {"usable": false, "reason": ...}`) and exits 3: a CPU-only torch wheel
   on a GPU machine is the commonest mistake, and must not pass as a GPU result.
2. The bundled sample (default `samples/person_standing.png`): MediaPipe keypoints (CPU), then on
   each device: the body model loaded there (`load_body_model(device=)`, timed), the fit
   (`fit_body`, cold then warm, the fastest warm run counts) and the clothing step's solve
   (`fit_clothing` with the Anny model on that device).
3. The comparison of every device with the CPU: the largest difference of the posed vertices
   (metres), of the clothing offsets, the reprojection errors and the clothed IoU. Exit 0 when
   they agree within `TOLERANCE`, 1 when not.

Writes `gpu_check.json` into DIR (default `$OUT`, else `benchmarks/out`). Nothing is downloaded;
it needs the repo's venv and the Anny cache (`AVATARPIPE_CACHE`/anny, default
`~/.cache/avatarpipe/anny`; a missing cache is built, ~3 min, and timed as `anny_cache_build_s`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_DISAGREE, EXIT_NO_CUDA = 0, 1, 3
# what "agrees with the CPU" means: float32 reductions run in another order on the GPU, and
# L-BFGS amplifies tiny differences a little; more than this is a bug, not rounding
TOLERANCE = {"vertex_m": 0.02, "offset_m": 0.01, "reprojection_rel": 0.01, "iou": 0.02}


@dataclass
class DeviceRun:
    """One device's numbers and results (the arrays stay out of the JSON)."""

    device: str
    timings: dict[str, float]
    metrics: dict[str, float]
    posed_vertices: np.ndarray
    offsets: np.ndarray


def torch_report() -> dict:
    """What torch is and whether CUDA is usable, with the reason when it is not."""
    import torch

    report: dict = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "python": platform.python_version()}
    if torch.version.cuda is None:
        report["cuda"] = {"usable": False, "reason": "torch is a CPU-only build (install the CUDA wheel)"}
    elif not torch.cuda.is_available():
        report["cuda"] = {"usable": False, "reason": "CUDA build, but no GPU is visible (driver, CUDA_VISIBLE_DEVICES)"}
    else:
        report["cuda"] = {
            "usable": True,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        }
    return report


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timed(device: str, fn):
    start = time.perf_counter()
    value = fn()
    _synchronise(device)
    return value, round(time.perf_counter() - start, 4)


def run_device(device: str, photo, keypoints, cache_dir: str | None, repeats: int) -> DeviceRun:
    """Load, fit (cold + `repeats` warm) and clothe the sample on one device."""
    from models.body_model import anny_topology, load_anny, load_body_model
    from models.clothing import ClothingConfig, fit_clothing
    from models.fitting import fit_body, posed_vertices

    body, load_s = _timed(device, lambda: load_body_model(None, cache_dir, device))
    fit, cold_s = _timed(device, lambda: fit_body(keypoints, body))
    warm = [_timed(device, lambda: fit_body(keypoints, body))[1] for _ in range(repeats)]
    model = load_anny(cache_dir, device)
    topo = anny_topology(model)
    clothing, clothing_s = _timed(device, lambda: fit_clothing(
        model, fit.phenotype, fit.pose_parameters, fit.camera, keypoints.mask, topo, ClothingConfig(), image=photo.image,
    ))  # fmt: skip
    return DeviceRun(
        device=device,
        timings={
            "model_load_s": load_s,
            "fit_cold_s": cold_s,
            "fit_warm_s": min(warm) if warm else cold_s,
            "clothing_s": clothing_s,
        },
        metrics={
            "keypoint_reprojection_rel": float(fit.metrics["keypoint_reprojection_rel"]),
            "fit_iterations": float(fit.metrics.get("iterations", 0)),
            "silhouette_iou": float(clothing.metrics.get("silhouette_iou", float("nan"))),
        },
        posed_vertices=posed_vertices(body, fit),
        offsets=np.asarray(clothing.offsets, dtype=np.float64),
    )


def compare(reference: DeviceRun, other: DeviceRun) -> dict:
    """How far `other` is from the CPU `reference`, and whether that is within TOLERANCE."""
    differences = {
        "vertex_m": float(np.abs(other.posed_vertices - reference.posed_vertices).max()),
        "offset_m": float(np.abs(other.offsets - reference.offsets).max()),
        "reprojection_rel": abs(other.metrics["keypoint_reprojection_rel"] - reference.metrics["keypoint_reprojection_rel"]),
        "iou": abs(other.metrics["silhouette_iou"] - reference.metrics["silhouette_iou"]),
    }
    agrees = all(np.isfinite(v) and v <= TOLERANCE[k] for k, v in differences.items())
    return {"max_difference": {k: round(v, 6) for k, v in differences.items()}, "tolerance": TOLERANCE, "agrees": agrees}


def ensure_anny_cache(cache_dir: str | None) -> float | None:
    """Seconds spent building Anny's cache when it was missing, else None."""
    from models.body_model import default_cache_dir, load_anny

    path = Path(cache_dir) if cache_dir else default_cache_dir() / "anny"
    if path.is_dir() and any(path.iterdir()):
        return None
    start = time.perf_counter()
    load_anny(cache_dir)
    return round(time.perf_counter() - start, 1)


def run_check(devices: list[str], photo_path: Path, cache_dir: str | None, repeats: int) -> tuple[dict, int]:
    """The report and the exit code for ``devices`` (the first must be "cpu", the reference)."""
    from models.keypoints import detect_keypoints
    from models.photo import normalise_photo

    report = torch_report() | {"devices": devices, "photo": photo_path.name, "cpu_count": os.cpu_count()}
    if any(d.startswith("cuda") for d in devices) and not report["cuda"]["usable"]:
        return report, EXIT_NO_CUDA
    if devices[0] != "cpu":
        raise ValueError("the first device must be cpu: the reference the others are compared with")
    report["anny_cache_build_s"] = ensure_anny_cache(cache_dir)
    photo = normalise_photo(photo_path.read_bytes())
    keypoints = detect_keypoints(photo.image)
    runs = [run_device(device, photo, keypoints, cache_dir, repeats) for device in devices]
    report["runs"] = {r.device: {"timings": r.timings, "metrics": r.metrics} for r in runs}
    report["comparison"] = {r.device: compare(runs[0], r) for r in runs[1:]}
    agrees = all(c["agrees"] for c in report["comparison"].values())
    return report, EXIT_OK if agrees else EXIT_DISAGREE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "out"))
    parser.add_argument("--photo", default=str(REPO / "samples" / "person_standing.png"))
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="Anny cache (default: $AVATARPIPE_CACHE/anny)")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or (str(Path(os.environ["AVATARPIPE_CACHE"]) / "anny") if os.environ.get("AVATARPIPE_CACHE") else None)
    start = time.perf_counter()
    report, code = run_check(args.devices.split(","), Path(args.photo), cache_dir, args.repeats)
    report |= {"exit_code": code, "wall_s": round(time.perf_counter() - start, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if code == EXIT_NO_CUDA:
        print(f"gpu_check: CUDA is not usable: {report['cuda']['reason']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
