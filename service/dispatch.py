"""Where the service's uploads and erasures run.

`inline` (one machine, `avatarpipe serve` on its own): a bounded pool hands each upload to
`avatarpipe resume UPLOAD` in a child process — a real Dagster run of the avatar job recorded in
the instance, under the upload's lease, with the science isolated from the service (a crash or
OOM in a step cannot take the API down). `sensors` (production): the service only ingests and
the ingestion sensors / run queue launch the runs, as for any other upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Dispatcher:
    mode: str  # "inline" | "sensors"
    workers: int = 1
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    on_finished: Callable[[str, int], None] | None = None  # (upload id, exit status)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="avatarpipe-run")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def queue_depth(self) -> int:
        """Uploads handed over and not finished (running or waiting for a worker)."""
        with self._lock:
            return self._pending

    def submit_upload(self, upload_id: str) -> Future | None:
        if self.mode != "inline":
            return None  # the sensors pick the pending upload up
        return self._submit(upload_id, ["resume", upload_id, "--json"])

    def submit_erasure(self, subject_id: str, operator: str) -> Future:
        """Erasure always runs here: it is one bounded job, and its request is already recorded."""
        return self._submit(None, ["erase", "--subject", subject_id, "--operator", operator, "--json"])

    def _submit(self, upload_id: str | None, args: list[str]) -> Future:
        with self._lock:
            self._pending += 1
        return self._pool.submit(self._run, upload_id, args)

    def _run(self, upload_id: str | None, args: list[str]) -> int:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "orchestration.cli", *args],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # its progress: our stderr
                check=False,
            )  # fmt: skip
            if upload_id is not None and self.on_finished is not None:
                self.on_finished(upload_id, done.returncode)
            return done.returncode
        finally:
            with self._lock:
                self._pending -= 1

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
