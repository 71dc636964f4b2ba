"""What the CLI shows on stderr: one progress line per step, the rest only with `--verbose`.

Without `--verbose` (the default), Dagster's console logger is kept at WARNING for the runs this
process starts (the event log in the instance still records every event: the UI shows them
all), Python warnings and the INFO logs of libraries (MLflow's alembic migrations…) are
silenced, and so are TensorFlow Lite's / absl's C++ logs (MediaPipe) — also in the Pipes
worker processes, which inherit the environment. With `--verbose` nothing is filtered.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from orchestration.config import export_verbosity, verbose_output

# C++ logging of TFLite (TF_CPP_MIN_LOG_LEVEL) and glog/absl (GLOG_minloglevel): errors only
QUIET_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "2", "PYTHONWARNINGS": "ignore"}
# What native libraries write straight to fd 2 whatever the variables above say: absl's log lines
# (`W0000 00:00:… 123 file.cc:114] …`) and TFLite's delegate notice (MediaPipe), and NVIDIA Warp's
# start-up banner and kernel-cache lines (Anny's skinning). Only whole lines of these shapes go.
NATIVE_CHATTER = re.compile(
    r"^(?:[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|INFO: Created TensorFlow Lite"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|Warp (?:CUDA warning:|\d+\.\d+\.\d+ initialized:)"
    r"|   CUDA Toolkit |   Devices:|     \"cpu\" +: |   Kernel cache:|     \S*/warp/\d"
    r"|Module \S+ \S+ load on device )"
)


def is_verbose() -> bool:
    """Whether this process (or the CLI that started it) was asked for `--verbose`."""
    return verbose_output()


def configure_output(verbose: bool, whole_process: bool = True) -> None:
    """Set the process up for `--verbose` or quiet output (see the module docstring); the
    environment carries the choice to the worker processes. ``whole_process`` False (a command
    called in a process that is not the CLI's own, e.g. a test): only the choice is recorded,
    the process's warnings, logging and fd 2 are left alone."""
    export_verbosity(verbose)
    if not whole_process:
        return
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        return
    for name, value in QUIET_NATIVE_ENV.items():
        os.environ.setdefault(name, value)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:  # libraries that set their own logger to INFO (GX) stop here
        handler.setLevel(logging.WARNING)
    filter_native_chatter()


def filter_native_chatter() -> None:
    """Route fd 2 (this process's and, inherited, its workers') through a pipe that drops the
    lines :data:`NATIVE_CHATTER` matches and passes every other byte on at once. Undone at exit,
    after the last line has passed."""
    if getattr(filter_native_chatter, "installed", False):
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            for line in iter(source.readline, b""):
                if not NATIVE_CHATTER.match(line.decode("utf-8", "replace")):
                    with contextlib.suppress(OSError):  # a closed terminal: keep draining, never block the writers
                        os.write(real, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end (the workers have exited): EOF
        thread.join(timeout=2.0)

    atexit.register(restore)
    filter_native_chatter.installed = True  # type: ignore[attr-defined]


def run_logging_config() -> dict[str, Any]:
    """The run config's `loggers` part: Dagster's console logger at WARNING unless verbose
    (its DEBUG lines are the event log's business, not the terminal's)."""
    if is_verbose():
        return {}
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def step_progress(steps: tuple[str, ...], write: Callable[[str], None] | None = None) -> Callable[[Any], None]:
    """A consumer of a run's Dagster events that writes one line per finished step on stderr:
    ``[2/5] keypoints 1.0s`` for the assets (``FAILED`` when it failed) and an indented
    ``check smplx_params_quality 0.4s`` for each asset check."""
    out = write or (lambda line: print(line, file=sys.stderr, flush=True))

    def on_event(event: Any) -> None:
        if event.event_type_value not in ("STEP_SUCCESS", "STEP_FAILURE"):
            return
        data = event.event_specific_data
        seconds = getattr(data, "duration_ms", None)
        took = f" {seconds / 1000:.1f}s" if seconds is not None else ""
        failed = " FAILED" if event.event_type_value == "STEP_FAILURE" else ""
        step = event.step_key or "?"
        if step in steps:
            out(f"[{steps.index(step) + 1}/{len(steps)}] {step}{failed}{took}")
            return
        owner = next((s for s in steps if step.startswith(s + "_")), None)  # `<asset>_<check>` ops
        out(f"      check {step[len(owner) + 1:] if owner else step}{failed}{took}")

    return on_event
