"""One long-lived Khronos glTF validator per warm worker (`clients/validate_server.mjs`).

The rigged-GLB gate validates every avatar. Done one-shot (`models.quality.run_gltf_validator`),
each check starts node and loads the validator's compiled JavaScript again, which costs more CPU
than the validation itself. A warm worker keeps one node process for that instead: the GLB goes
to its stdin (length-prefixed), the issue summary comes back as a JSON line, and the verdict is
read by the same `models.quality.validator_report` as the one-shot path's.

It never makes a verdict up: when the process cannot start, dies, or does not answer in time,
that check runs the one-shot validator (same package, same summary), and the next check starts
a fresh process. The other placements (in-process, subprocess, ECS) keep the one-shot path.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from models.quality import (
    GLTF_VALIDATOR_PACKAGE,
    REPO_ROOT,
    ValidatorReport,
    clients_node_modules,
    gltf_validator_unavailable,
    run_gltf_validator,
    validator_report,
)

SERVER_SCRIPT = REPO_ROOT / "clients" / "validate_server.mjs"
START_TIMEOUT_S = 30.0  # node start and the package's load (about 0.3 s on a quiet machine)
ANSWER_TIMEOUT_S = 120.0  # as the one-shot path's


class ValidatorProcess:
    """A `validate_server.mjs` child of this process, started on first use and after it died."""

    def __init__(self, node_modules: Path | None = None):
        self.node_modules = node_modules or clients_node_modules()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.started = 0  # processes started so far (a restart after a death counts)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._alive() else None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process (if not running) and wait for its ``ready`` line."""
        if self._alive():
            return
        self.close()
        package = self.node_modules / GLTF_VALIDATOR_PACKAGE
        proc = subprocess.Popen(
            [str(shutil.which("node")), str(SERVER_SCRIPT), "--package", str(package)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr.fileno(), bufsize=0,
        )  # fmt: skip  # stderr: the worker's log
        self._proc = proc
        self.started += 1
        if json.loads(self._read_line(START_TIMEOUT_S)).get("ready") is not True:
            raise RuntimeError("the validator process did not say it was ready")

    def _read_line(self, timeout_s: float) -> bytes:
        """One line of the child's stdout; raises TimeoutError / EOFError."""
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        line = b""
        deadline = time.monotonic() + timeout_s
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                raise TimeoutError(f"no answer from the validator process within {timeout_s:g} s")
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                raise EOFError("the validator process exited")
            line += chunk
        return line

    def validate(self, glb: bytes, timeout_s: float = ANSWER_TIMEOUT_S) -> ValidatorReport:
        """The validator's verdict on ``glb``: from the long-lived process, or, when it fails,
        from the one-shot path (and the process is replaced at the next call)."""
        unavailable = gltf_validator_unavailable(self.node_modules, SERVER_SCRIPT)
        if unavailable is not None:
            return run_gltf_validator(glb, self.node_modules, timeout_s)  # its own `unavailable` reason
        with self._lock:
            try:
                self.start()
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write(struct.pack("<I", len(glb)) + glb)
                answer = json.loads(self._read_line(timeout_s))
            except (OSError, EOFError, TimeoutError, ValueError, RuntimeError) as exc:
                print(f"glTF validator process failed ({type(exc).__name__}: {exc}); one-shot run", file=sys.stderr)
                self.close()
                return run_gltf_validator(glb, self.node_modules, timeout_s)
        if not answer.get("ok"):
            return ValidatorReport(status="failed", detail=str(answer.get("error"))[-500:])
        try:
            return validator_report(answer["issues"])
        except (KeyError, TypeError, ValueError) as exc:
            return ValidatorReport(status="failed", detail=f"unreadable validator output ({exc})")

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process's end of its stdin closes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


_SHARED: dict[Path, ValidatorProcess] = {}


def shared_validator(node_modules: Path | None = None) -> ValidatorProcess:
    """This process's validator process for ``node_modules`` (made on first use)."""
    key = node_modules or clients_node_modules()
    if key not in _SHARED:
        _SHARED[key] = ValidatorProcess(key)
    return _SHARED[key]
