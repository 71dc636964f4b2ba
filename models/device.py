"""Where the torch work of the science runs: "cpu" (the default everywhere) or "cuda".

The device is an explicit argument (the worker picks it: `ops.worker.select_device`); nothing
in `models/` reads the environment to choose it. A body model is loaded onto a device
(`models.body_model.load_body_model(..., device=)`); the fit and every Anny forward pass then
run where the model's tensors are, under `on_device`, so that the tensors the fitter creates
(`torch.zeros`, `torch.as_tensor(numpy)`, ...) land beside the model's. Results leave as CPU
numpy arrays (`.cpu().numpy()`) at the boundaries.

On "cpu" `on_device` does nothing, so CPU results are bit-for-bit those of code that never
heard of devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from models.errors import ErrorCode, PipelineError

CPU = "cpu"
CUDA = "cuda"


def resolve_device(device: str | None) -> str:
    """``device`` checked: "cpu", "cuda" or "cuda:N". Asking for CUDA where torch sees no GPU
    (a CPU-only torch build, no driver, no device N) raises DEVICE_UNAVAILABLE: a worker asked
    for a GPU must say so, never fall back silently and report a device it did not use."""
    name = (device or CPU).strip().lower()
    if name == CPU:
        return CPU
    if name != CUDA and not name.startswith(f"{CUDA}:"):
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (CPU-only build)"
        raise PipelineError(
            ErrorCode.DEVICE_UNAVAILABLE,
            f"device {name!r} was asked for but torch {torch.__version__} sees no CUDA GPU (CUDA: {build})",
        )
    index = int(name.split(":", 1)[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise PipelineError(
            ErrorCode.DEVICE_UNAVAILABLE, f"device {name!r} was asked for; {torch.cuda.device_count()} GPU(s) present"
        )
    return name


def on_device(device: str) -> contextlib.AbstractContextManager:
    """Tensors created inside default to ``device`` (`torch.device` as a context manager);
    on the CPU a no-op."""
    return contextlib.nullcontext() if device == CPU else torch.device(device)


def module_device(module: torch.nn.Module) -> str:
    """The device a model's tensors are on ("cpu" for a model without any)."""
    for tensor in _tensors(module):
        return str(tensor.device)
    return CPU


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()
