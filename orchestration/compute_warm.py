"""The `warm` placement: a pool of long-lived Pipes workers (`ops.warm_worker`) on this machine.

A step placed `warm` is a Dagster Pipes session like the `subprocess` one, with the same context
injector and message reader (temp files); only the launch differs. `PipesWarmWorkerClient`
opens the session and, instead of starting `python -m ops.worker` with the bootstrap
parameters in its environment, hands those parameters to a warm worker over its Unix socket and
waits for its answer. The worker runs the same `ops.worker.run`, so logs, the materialisation
and the `StepResult` come back through Dagster's own message reader, and the bytes written are
those of the subprocess placement.

The pool (`WarmPool`) lives in ``$AVATARPIPE_HOME/worker`` (mode 0700): per slot a socket
``slot-N.sock``, a state file ``slot-N.json`` (pid, fingerprint, ready), a log ``slot-N.log``
and a lock ``slot-N.lock``; one token for the pool (``token``, mode 0600). A client takes a
free slot by its lock (`fcntl.flock`, released by the kernel when the client dies), starts the
slot's worker when none is alive or the alive one has other code (`worker_fingerprint`), and
holds the slot for the step. So ``size`` steps run at once, one per worker process; how many
runs there are is the run queue's business (`max_concurrent_runs`), which the pool size should
match. A worker that dies mid-step (kill, OOM) fails that step with WORKER_LOST; the run process
lives on, nothing is recorded for the step (outputs are written atomically, the main object
last, and only the run process records artifacts), and the next request starts a fresh worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from dagster import PipesClient
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError
from dagster._core.pipes.client import (
    PipesClientCompletedInvocation,
    PipesContextInjector,
    PipesMessageReader,
)
from dagster._core.pipes.utils import (
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    open_pipes_session,
)

from models.errors import ErrorCode, PipelineError
from ops.warm_worker import OP_PING, OP_QUALITY, OP_STEP, REPO_ROOT, worker_fingerprint
from orchestration.config import child_environment, home_secret

WORKER_MODULE = "ops.warm_worker"
SLOT_POLL_S = 0.2  # how often a client looks for a free slot when all are taken
STOP_WAIT_S = 30.0
MAX_SOCKET_PATH = 104  # sun_path: 108 bytes on Linux, 104 on macOS


class WorkerLost(PipelineError):
    """The warm worker serving a step died before answering (killed, out of memory)."""

    def __init__(self, message: str, step: str | None = None):
        super().__init__(ErrorCode.WORKER_LOST, message, step)


@lru_cache(maxsize=1)
def client_fingerprint() -> str:
    """The fingerprint a worker must have to serve this process (computed once per process)."""
    return worker_fingerprint()


def _pid_alive(pid: int) -> bool:
    """A running process (a zombie is not: a worker this process started and that exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@dataclass(frozen=True)
class SlotStatus:
    """One slot of the pool as `avatarpipe worker status` shows it."""

    slot: int
    pid: int | None
    alive: bool
    ready: bool
    current: bool  # its fingerprint is this client's (same code and configuration)
    busy: bool | None = None  # None: not asked (not alive, or busy answering)
    served: int | None = None
    failed: int | None = None
    idle_s: float | None = None
    peak_rss_mb: float | None = None
    warm_up_s: float | None = None


@dataclass(frozen=True)
class WarmPool:
    """The warm workers of one `AVATARPIPE_HOME` (see the module docstring)."""

    directory: Path
    size: int = 2
    idle_s: float = 600.0
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 900.0  # a first start may build Anny's cache (minutes)

    # -- files -----------------------------------------------------------------------------

    def prepare(self) -> bytes:
        """The pool's directory (0700) and token (0600, made once)."""
        longest = self.socket_path(max(self.size - 1, 0))
        if len(os.fsencode(longest)) >= MAX_SOCKET_PATH:
            raise ValueError(f"{longest} is too long for a Unix socket ({MAX_SOCKET_PATH} bytes): use a shorter AVATARPIPE_HOME")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        return home_secret(None, self.directory / "token")

    def socket_path(self, slot: int) -> Path:
        return self.directory / f"slot-{slot}.sock"

    def state(self, slot: int) -> dict[str, Any]:
        try:
            return json.loads(self.socket_path(slot).with_suffix(".json").read_text())
        except (OSError, ValueError):
            return {}

    def alive_pid(self, slot: int) -> int | None:
        pid = self.state(slot).get("pid")
        return pid if isinstance(pid, int) and _pid_alive(pid) else None

    # -- slots -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """Hold a free slot for one request: warm slots first, else wait until one frees."""
        self.prepare()
        order = sorted(range(self.size), key=lambda s: self.alive_pid(s) is None)
        while True:
            for slot in order:
                fd = os.open(self.directory / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield slot
                    return
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
            time.sleep(SLOT_POLL_S)

    # -- workers ---------------------------------------------------------------------------

    def ensure_worker(self, slot: int) -> int:
        """The pid of the slot's ready, current worker, starting one when needed (slot held)."""
        pid = self.alive_pid(slot)
        if pid is not None and self.state(slot).get("fingerprint") != client_fingerprint():
            self._terminate(pid)  # stale code or another model cache: replace it
            pid = None
        if pid is None:
            pid = self._start(slot)
        self._wait_ready(slot, pid)
        return pid

    def _start(self, slot: int) -> int:
        token_file = self.directory / "token"
        self.prepare()
        env = child_environment(self.env)
        log_path = self.directory / f"slot-{slot}.log"  # rotated by the worker (`rotate_log`)
        command = [self.python, "-m", WORKER_MODULE, "--socket", str(self.socket_path(slot)),
                   "--token-file", str(token_file), "--slot", str(slot), "--idle-s", str(self.idle_s),
                   "--log", str(log_path)]  # fmt: skip
        with open(log_path, "ab") as log:
            # cwd: `python -m` puts the working directory first on sys.path, so a worker started
            # from another checkout would import that checkout's code, never match this client's
            # fingerprint, and be replaced at every step. The client's own tree it is.
            process = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip  # detached: its own session, outlives this client, exits when idle
        return process.pid

    def _wait_ready(self, slot: int, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            state = self.state(slot)
            if state.get("pid") == pid and state.get("ready"):
                return
            if not _pid_alive(pid):
                raise WorkerLost(
                    f"the warm worker (slot {slot}) exited while starting; see {self.directory}/slot-{slot}.log"
                )
            time.sleep(0.1)
        self._terminate(pid)
        raise WorkerLost(f"the warm worker (slot {slot}) was not ready after {self.start_timeout_s:g}s")

    def _terminate(self, pid: int, wait_s: float = STOP_WAIT_S) -> None:
        """SIGTERM (the worker finishes its step, then exits), SIGKILL after ``wait_s``."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def connect(self, slot: int) -> Connection:
        return Client(str(self.socket_path(slot)), family="AF_UNIX", authkey=self.prepare())

    def request(self, slot: int, message: dict[str, Any]) -> dict[str, Any]:
        """One request to the slot's worker; its answer. Raises EOFError/OSError if it dies."""
        with self.connect(slot) as conn:
            conn.send_bytes(json.dumps(message).encode())
            return json.loads(conn.recv_bytes())

    # -- what clients and the CLI do -------------------------------------------------------

    def run_step(self, bootstrap: Mapping[str, str], step: str) -> dict[str, Any]:
        """Hand one step's Pipes bootstrap parameters to a warm worker; its reply."""
        with self.slot() as slot:
            pid = self.ensure_worker(slot)
            try:
                return self.request(slot, {"op": OP_STEP, "bootstrap": dict(bootstrap)})
            except (EOFError, OSError) as exc:
                raise WorkerLost(
                    f"the warm worker (pid {pid}) serving step {step} exited before answering "
                    f"(killed or out of memory: {type(exc).__name__}); the next request starts a fresh one",
                    step,
                ) from None
            except DagsterExecutionInterruptedError:
                # the run was terminated: the worker cannot drop a step halfway, so it goes
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise

    def run_quality(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One quality gate's metrics and GX validation in a warm worker (suites kept loaded);
        its answer (`assets.checks.serve_quality_request`). A typed error comes back typed."""
        asset_key = str(request.get("asset_key"))
        with self.slot() as slot:
            pid = self.ensure_worker(slot)
            try:
                answer = self.request(slot, {"op": OP_QUALITY, "request": dict(request)})
            except (EOFError, OSError):
                raise WorkerLost(
                    f"the warm worker (pid {pid}) checking {asset_key} exited before answering", asset_key
                ) from None
        if not answer.get("ok"):
            error = answer.get("error") or {}
            try:
                code = ErrorCode(error.get("code"))
            except ValueError:
                code = ErrorCode.INTERNAL_ERROR
            raise PipelineError(code, str(error.get("message")), asset_key)
        return answer

    def start(self, slots: int | None = None) -> list[SlotStatus]:
        """Start (and wait for) the workers of the first ``slots`` slots (default: all)."""
        for slot in range(min(slots or self.size, self.size)):
            with self.slot_lock(slot):
                self.ensure_worker(slot)
        return self.status()

    @contextlib.contextmanager
    def slot_lock(self, slot: int) -> Iterator[None]:
        """Hold one given slot (waits while a step runs in it)."""
        self.prepare()
        fd = os.open(self.directory / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def stop(self) -> list[int]:
        """Ask every alive worker to exit (each finishes its step first); the pids stopped."""
        stopped = []
        for slot in self._slots_on_disk():
            pid = self.alive_pid(slot)
            if pid is not None:
                self._terminate(pid)
                stopped.append(pid)
        return stopped

    def status(self) -> list[SlotStatus]:
        """Every slot of the pool (and any older, larger pool's slots still running)."""
        return [
            self._slot_status(slot) for slot in sorted(set(range(self.size)) | set(self._slots_on_disk()))
        ]

    def _slots_on_disk(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem.removeprefix("slot-")) for p in self.directory.glob("slot-*.json"))

    def _slot_status(self, slot: int) -> SlotStatus:
        state = self.state(slot)
        pid = self.alive_pid(slot)
        current = state.get("fingerprint") == client_fingerprint()
        ready = bool(pid and state.get("ready"))
        if not ready:
            return SlotStatus(slot, state.get("pid"), pid is not None, False, current)
        try:
            answer = self.request(slot, {"op": OP_PING})
        except (EOFError, OSError):
            return SlotStatus(slot, pid, False, False, current)
        fields = ("busy", "served", "failed", "idle_s", "peak_rss_mb", "warm_up_s")
        return SlotStatus(slot, pid, True, True, current, **{k: answer.get(k) for k in fields})


class PipesWarmWorkerClient(PipesClient, TreatAsResourceParam):
    """A Pipes client that hands the step to a long-lived worker instead of starting a process.

    Same context injector and message reader as `PipesSubprocessClient` (temp files on this
    machine); the launch is `WarmPool.run_step`. A worker that answers "not ok" (the step
    raised, which the Pipes context already reported) fails the step like a subprocess that
    exits non-zero; a worker that dies raises `WorkerLost`."""

    def __init__(
        self,
        pool: WarmPool,
        context_injector: PipesContextInjector | None = None,
        message_reader: PipesMessageReader | None = None,
    ):
        self.pool = pool
        self.context_injector = context_injector or PipesTempFileContextInjector()
        self.message_reader = message_reader or PipesTempFileMessageReader()

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def run(  # ty: ignore[invalid-method-override]
        self, *, context: Any, extras: dict[str, Any] | None = None, step: str = ""
    ) -> PipesClientCompletedInvocation:
        with open_pipes_session(
            context=context,
            context_injector=self.context_injector,
            message_reader=self.message_reader,
            extras=extras,
        ) as session:
            reply = self.pool.run_step(session.get_bootstrap_env_vars(), step)
            if not reply.get("ok"):
                raise DagsterPipesExecutionError(
                    f"warm worker failed step {step}: {reply.get('error') or 'exit code ' + str(reply.get('exit_code'))}"
                )
        return PipesClientCompletedInvocation(session)
