"""Warm Pipes worker: `python -m ops.warm_worker --socket PATH ...`, one long-lived process that
loads the models once (torch, MediaPipe, Anny with its fast evaluator) and then serves many step
requests, so a step no longer pays an interpreter start, the torch import and Anny's load.

It is a *server of requests*, not a scheduler: one process runs one step at a time, and a pool
of them (`orchestration.compute_warm.WarmPool`, one process per slot) serves concurrent runs;
how many steps run at once stays Dagster's business (the run queue's `max_concurrent_runs`).

Transport: `multiprocessing.connection` on a Unix domain socket in a 0700 directory under
`AVATARPIPE_HOME`, authenticated with the pool's token (HMAC challenge, `authkey`). Messages are
JSON (`send_bytes`), never pickles. A request carries the step's Dagster Pipes bootstrap
parameters (what `PipesSubprocessClient` would put in a child's environment); the worker opens
a Pipes context from them (`PipesMappingParamsLoader`) and runs the same `ops.worker.run` as the
subprocess and ECS placements, so logs, the materialisation and the `StepResult` travel back
through Dagster's own channel (the client's temp-file message reader). The socket reply only
says that the request finished; a worker that dies mid-step closes the socket instead, which the
client turns into WORKER_LOST.

Lifecycle: the client starts a worker when its slot has none alive (detached, own session);
the worker writes ``slot-N.json`` (pid, fingerprint) beside its socket, exits after
``--idle-s`` seconds without a request, and on SIGTERM (after the step in hand, if any). The
fingerprint (`worker_fingerprint`) names the code and the machine configuration it loaded, so
a client with other code or another model cache replaces the worker instead of using it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

from ops.procstat import peak_rss_mb

OP_PING = "ping"
OP_STEP = "step"
OP_QUALITY = "quality"
HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and does not answer the challenge is dropped
LOG_MAX_BYTES = 8 * 1024 * 1024  # `slot-N.log` is rotated to `slot-N.log.1` above this size
CODE_DIRS = ("models", "ops", "storage", "assets")  # what a step's code is made of
REPO_ROOT = Path(__file__).resolve().parent.parent


def worker_fingerprint() -> str:
    """What a warm worker is bound to: this Python environment, the code (size and mtime of every
    source file under `CODE_DIRS`) and the machine configuration a step reads
    (`ops.steps.WorkerRuntime`, the store retries). Client and worker compute it alike; a
    mismatch means the worker runs stale code or another model cache and must be replaced."""
    from ops.steps import WorkerRuntime
    from orchestration.config import load_config

    config = load_config()
    # the environment, not the path it was called by (a venv reached through a symlink is the same)
    digest = hashlib.sha256(f"{os.path.realpath(sys.prefix)}:{sys.version}".encode())
    digest.update(repr(WorkerRuntime.from_config(config)).encode())
    digest.update(str(config.node_modules).encode())  # the quality gate's glTF validator
    digest.update(
        repr((config.store_retry_tries, config.store_retry_base_s, config.store_retry_max_s)).encode()
    )
    for name in CODE_DIRS:
        for path in sorted((REPO_ROOT / name).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path.relative_to(REPO_ROOT)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def warm_up() -> dict[str, float]:
    """Import and load what the steps use, once: seconds per part (in the worker's log)."""
    from ops.steps import WorkerRuntime

    runtime = WorkerRuntime.configured()
    seconds: dict[str, float] = {}

    def timed(name: str, load: Any) -> None:
        start = time.perf_counter()
        load()
        seconds[name] = round(time.perf_counter() - start, 2)

    def science_modules() -> None:
        import models.clothing
        import models.fitting
        import models.render
        import models.rigging
        import models.surface
        import models.texture  # noqa: F401

    def body() -> None:
        from models.body_model import load_body_model

        load_body_model(runtime.smplx_model_dir, runtime.anny_cache_dir)  # Anny and its fast evaluator

    timed("torch", lambda: __import__("torch"))
    timed("mediapipe", lambda: __import__("mediapipe"))
    timed("science", science_modules)
    timed("body_model", body)
    timed("great_expectations", _import_gx)
    timed("gltf_validator", _start_validator)
    return seconds


def _start_validator() -> None:
    """The rigged-GLB gate's glTF validator: one node process for this worker's life."""
    from ops.quality_rows import keep_validator_running
    from orchestration.config import load_config

    keep_validator_running(load_config().node_modules)


def _import_gx() -> None:
    from assets.checks import import_gx

    import_gx()


@dataclass
class WorkerState:
    """What `ping` answers (also `avatarpipe worker status`)."""

    pid: int
    slot: int
    fingerprint: str
    started_at: float
    last_request_at: float
    busy: bool = False
    served: int = 0
    failed: int = 0
    draining: bool = False
    warm_up_s: float = 0.0

    def answer(self) -> dict[str, Any]:
        return asdict(self) | {
            "peak_rss_mb": peak_rss_mb(),
            "idle_s": round(time.time() - self.last_request_at, 1),
        }


class _Deadline:
    """A connection whose reads give up after ``timeout_s`` without data (for the handshake)."""

    def __init__(self, conn: Connection, timeout_s: float):
        self.conn = conn
        self.timeout_s = timeout_s

    def send_bytes(self, data: bytes) -> None:
        self.conn.send_bytes(data)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        if not self.conn.poll(self.timeout_s):
            raise TimeoutError(f"no answer to the challenge within {self.timeout_s:g}s")
        return self.conn.recv_bytes(maxlength)


def rotate_log(path: Path, max_bytes: int) -> bool:
    """When ``path`` (this process's stdout and stderr) is above ``max_bytes``: move it to
    ``path.1`` (replacing the older one) and point fds 1 and 2 at a fresh ``path``. A log written
    through file descriptors (native libraries write to fd 2 too) cannot use a logging
    handler's rotation. True when it rotated."""
    try:
        if path.stat().st_size <= max_bytes or os.fstat(2).st_ino != path.stat().st_ino:
            return False  # small, or fd 2 is not this file (started by hand, a test)
        sys.stdout.flush()
        sys.stderr.flush()
        os.replace(path, path.with_name(path.name + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return False
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True


class WarmWorker:
    """The server: accepts authenticated connections, answers `ping`, runs `step` requests one
    at a time (a lock: the pool gives each process one client at a time anyway), exits idle."""

    def __init__(
        self, socket_path: Path, token: bytes, slot: int, idle_s: float, fingerprint: str, log_path: Path | None = None
    ):
        self.socket_path = socket_path
        self.log_path = log_path  # where this process's stdout/stderr go (rotated by size)
        self.state_path = socket_path.with_suffix(".json")
        self.token = token
        self.idle_s = idle_s
        now = time.time()
        self.state = WorkerState(os.getpid(), slot, fingerprint, now, now)
        self.step_lock = threading.Lock()
        self.listener: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def serve(self) -> int:
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # a dead predecessor's socket
        self.listener = Listener(str(self.socket_path), family="AF_UNIX")  # authenticated per connection
        os.chmod(self.socket_path, 0o600)
        self._write_state(ready=False)
        signal.signal(signal.SIGTERM, lambda *_: self._drain())
        # Clients may connect now: they wait in the backlog until the models are loaded.
        start = time.perf_counter()
        parts = warm_up()
        self.state.warm_up_s = round(time.perf_counter() - start, 2)
        self.state.last_request_at = time.time()
        self._write_state(ready=True)
        print(
            f"warm worker {self.state.pid} (slot {self.state.slot}) ready: {parts}",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=self._idle_watch, name="idle-watch", daemon=True).start()
        while True:
            try:
                conn = self.listener.accept()  # no authkey on the listener: the challenge is the thread's
            except OSError:  # a client that hung up before it was accepted
                continue
            threading.Thread(target=self._authenticated, args=(conn,), daemon=True).start()

    def _authenticated(self, conn: Connection) -> None:
        """The pool token's challenge in both directions (what `Listener(authkey=...)` does in
        `accept`), here in the connection's own thread and with a deadline: a client that connects
        and never answers holds neither the accept loop nor, after ``HANDSHAKE_TIMEOUT_S``, a thread."""
        timed = _Deadline(conn, HANDSHAKE_TIMEOUT_S)
        try:
            deliver_challenge(timed, self.token)
            answer_challenge(timed, self.token)
        except (OSError, EOFError, AuthenticationError, TimeoutError):  # failed the challenge, or silent
            conn.close()
            return
        self._handle(conn)

    def _write_state(self, ready: bool) -> None:
        """``slot-N.json``: who serves this socket and whether its models are loaded."""
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps({"pid": self.state.pid, "fingerprint": self.state.fingerprint, "ready": ready})
        )
        os.replace(tmp, self.state_path)

    def _drain(self) -> None:
        """SIGTERM (`avatarpipe worker stop`): exit now when idle, else right after the step in hand."""
        self.state.draining = True
        if not self.state.busy:
            self._exit()

    def _idle_watch(self) -> None:
        while True:
            time.sleep(min(1.0, max(self.idle_s / 4, 0.05)))
            if self.log_path is not None:
                rotate_log(self.log_path, LOG_MAX_BYTES)
            if not self.state.busy and time.time() - self.state.last_request_at > self.idle_s:
                print(
                    f"warm worker {self.state.pid}: idle {self.idle_s:g}s, exiting",
                    file=sys.stderr,
                    flush=True,
                )
                self._exit()

    def _exit(self) -> None:
        """Remove the socket and state file (only ours: a successor may own them already), exit."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("pid") == self.state.pid:
            self.state_path.unlink(missing_ok=True)
            self.socket_path.unlink(missing_ok=True)
        sys.stderr.flush()
        os._exit(0)

    # -- requests --------------------------------------------------------------------------

    def _handle(self, conn: Connection) -> None:
        with conn:
            try:
                request = json.loads(conn.recv_bytes())
            except (EOFError, OSError, ValueError):
                return
            op = request.get("op")
            if op == OP_PING:
                reply = self.state.answer()
            elif op == OP_STEP:
                reply = self._run_step(request.get("bootstrap") or {})
            elif op == OP_QUALITY:
                reply = self._run_quality(request.get("request") or {})
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
            try:
                conn.send_bytes(json.dumps(reply).encode())
            except OSError:  # the client went away (its run was cancelled): nothing to tell
                pass
        if self.state.draining and not self.state.busy:
            self._exit()

    def _run_step(self, bootstrap: dict[str, str]) -> dict[str, Any]:
        """One step through Dagster Pipes, exactly as `python -m ops.worker` runs it."""
        from dagster_pipes import (
            PipesContext,
            PipesDefaultContextLoader,
            PipesDefaultMessageWriter,
            PipesMappingParamsLoader,
        )

        from ops.worker import run

        with self.step_lock:
            self.state.busy = True
            try:
                loader = PipesMappingParamsLoader(bootstrap)
                if not loader.is_dagster_pipes_process():
                    return {"ok": False, "error": "the request carries no Dagster Pipes bootstrap parameters"}
                # A context per request, not open_dagster_pipes(): that one is a process-wide
                # singleton, made for a process that serves a single step.
                with PipesContext(loader, PipesDefaultContextLoader(), PipesDefaultMessageWriter()) as pipes:
                    exit_code = run(pipes)
                self.state.served += 1
                return {"ok": exit_code == 0, "exit_code": exit_code, "peak_rss_mb": peak_rss_mb()}
            except Exception as exc:  # noqa: BLE001 - reported to Dagster by the context's close; the worker lives on
                self.state.failed += 1
                return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                self.state.busy = False
                self.state.last_request_at = time.time()

    def _run_quality(self, request: dict[str, Any]) -> dict[str, Any]:
        """One quality gate's metrics and GX validation (`assets.checks.serve_quality_request`)."""
        from assets.checks import serve_quality_request
        from models.errors import ErrorCode, PipelineError

        with self.step_lock:
            self.state.busy = True
            try:
                answer = serve_quality_request(request)
                self.state.served += 1
                return answer
            except PipelineError as exc:
                return {"ok": False, "error": exc.to_dict()}
            except Exception as exc:  # noqa: BLE001 - the gate cannot run: a typed answer, the worker lives on
                self.state.failed += 1
                message = f"quality check crashed: {type(exc).__name__}: {exc}"[:500]
                return {"ok": False, "error": {"code": ErrorCode.INTERNAL_ERROR.value, "message": message}}
            finally:
                self.state.busy = False
                self.state.last_request_at = time.time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.warm_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket path (its folder: mode 0700)")
    parser.add_argument("--token-file", required=True, type=Path, help="the pool's authentication token")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--idle-s", type=float, default=600.0, help="exit after this long without a request")
    parser.add_argument("--log", type=Path, help="the file stdout/stderr go to: rotated above LOG_MAX_BYTES")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip().encode()
    if args.log is not None:
        rotate_log(args.log, LOG_MAX_BYTES)  # a predecessor's log may have grown to the limit
    worker = WarmWorker(args.socket, token, args.slot, args.idle_s, worker_fingerprint(), args.log)
    return worker.serve()


if __name__ == "__main__":
    raise SystemExit(main())
