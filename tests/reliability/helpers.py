"""Shared pieces of the reliability tests: isolated homes, the CLI (in-process and as a
subprocess), the ledger of one upload, Dagster's event log, PNG chunks, and fault injection
around the *real* stores (a wrapper that makes chosen calls fail before - or, for a lost
acknowledgement, after - the real store does its work)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo.errors
import pytest
from PIL import Image

from orchestration.resources import MetadataStoreResource, ObjectStoreResource
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import MetadataStore, open_metadata_store
from storage.object_store import LocalObjectStore

CLI = Path(sys.executable).parent / "avatarpipe"


@contextlib.contextmanager
def isolated_home(home: Path, **env: str) -> Iterator[Settings]:
    """AVATARPIPE_HOME (and its Dagster instance) at ``home`` for a whole module; the
    environment, DAGSTER_HOME included, is restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVATARPIPE_HOME", str(home))
        for var in ("DAGSTER_HOME", "MONGODB_URI", "AVATARPIPE_MLFLOW_URI", "AVATARPIPE_S3_BUCKET"):
            mp.delenv(var, raising=False)
        mp.setenv("AVATARPIPE_DAGSTER_URL", "off")
        for name, value in env.items():
            mp.setenv(name, value)
        settings = Settings.from_env()
        prepare_environment(settings)
        yield settings


def cli_in_process(args: list[str], capfd: pytest.CaptureFixture) -> tuple[int, dict | None, str]:
    """`avatarpipe ARGS` through its real entry point in this process: (exit code, the JSON
    answer on stdout or None, stderr)."""
    from orchestration.cli import main

    capfd.readouterr()
    code = main(args)
    out, err = capfd.readouterr()
    answer = json.loads(out) if "--json" in args and out.strip() else None
    return code, answer, err


def cli_subprocess(
    args: list[str], home: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, AVATARPIPE_HOME=str(home), AVATARPIPE_DAGSTER_URL="off")
    full_env.pop("DAGSTER_HOME", None)
    full_env.update(env or {})
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


def popen_cli(args: list[str], home: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = dict(os.environ, AVATARPIPE_HOME=str(home), AVATARPIPE_DAGSTER_URL="off")
    full_env.pop("DAGSTER_HOME", None)
    full_env.update(env or {})
    return subprocess.Popen(
        [str(CLI), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )


@dataclass
class Ledger:
    """What the stores hold for one upload."""

    upload: dict
    docs: list[dict]  # artifacts, superseded ones too
    keys: list[str]  # object keys under the upload's prefix

    @property
    def current(self) -> dict[str, dict]:
        return {d["asset_key"]: d for d in self.docs if d.get("superseded_by") is None}

    def keys_of(self, asset: str) -> list[str]:
        return [k for k in self.keys if k.split("/")[3] == asset]


def ledger(settings: Settings, upload_id: str) -> Ledger:
    from storage.object_store import upload_prefix

    metadata = open_metadata_store(None, settings.metadata_dir)
    try:
        upload = metadata.get_upload(upload_id)
        assert upload is not None, upload_id
        docs = metadata.artifacts_for_upload(upload_id, include_superseded=True)
    finally:
        metadata.close()
    store = LocalObjectStore(settings.objects_dir)
    keys = list(store.list_keys(upload_prefix(upload["subject_id"], upload_id)))
    return Ledger(upload=upload, docs=docs, keys=keys)


def only_upload(settings: Settings) -> str:
    metadata = open_metadata_store(None, settings.metadata_dir)
    try:
        uploads = metadata.list_uploads()
    finally:
        metadata.close()
    assert len(uploads) == 1, [u["_id"] for u in uploads]
    return uploads[0]["_id"]


def run_events(run_id: str) -> list[str]:
    from dagster import DagsterInstance

    return [
        e.dagster_event.event_type_value
        for e in DagsterInstance.get().all_logs(run_id)
        if e.is_dagster_event and e.dagster_event is not None
    ]


def fsck_report(settings: Settings, upload_id: str | None = None, grace_s: float = 0.0):
    from ops.fsck import check

    metadata = open_metadata_store(None, settings.metadata_dir)
    try:
        return check(LocalObjectStore(settings.objects_dir), metadata, upload_id=upload_id, grace_s=grace_s)
    finally:
        metadata.close()


# -- refused uploads through `avatarpipe run --json` ----------------------------------------


def run_bytes(capfd: pytest.CaptureFixture, tmp_path: Path, data: bytes, name: str) -> tuple[int, dict]:
    """`avatarpipe run FILE --json` (in process) on ``data`` saved as ``name``."""
    path = tmp_path / name
    path.write_bytes(data)
    code, answer, _err = cli_in_process(["run", str(path), "--subject", "bad-input", "--json"], capfd)
    assert answer is not None
    return code, answer


def assert_refused(
    home: Settings, code: int, answer: dict, expected: Any, step: str, valid: tuple[str, ...]
) -> None:
    """Exit 1, typed error (``expected``: an ErrorCode) in the answer and in `uploads`, only the
    valid artifacts stored, the failing step run once (no retry of an input error), and the
    home consistent."""
    from dagster import DagsterInstance, DagsterRunStatus

    assert code == 1
    assert answer["status"] == "failed"
    assert answer["error"]["code"] == expected.value and answer["error"]["step"] == step, answer["error"]
    assert len(answer["error"]["message"]) > 10
    assert set(answer["artifacts"]) == set(valid)

    state = ledger(home, answer["upload_id"])
    assert state.upload["status"] == "failed"
    assert state.upload["error"] == answer["error"]
    assert {d["asset_key"] for d in state.docs} == set(valid) and len(state.docs) == len(valid)
    stored_assets = {key.split("/")[3] for key in state.keys}
    assert stored_assets == {"raw", *valid}  # the upload itself and the valid artifacts, nothing else
    assert state.upload.get("lease") is None  # the run's lease was released

    run = DagsterInstance.get().get_run_by_id(answer["dagster_run_id"])
    assert run.status == DagsterRunStatus.FAILURE
    events = run_events(run.run_id)
    assert events.count("STEP_FAILURE") == 1
    assert "STEP_UP_FOR_RETRY" not in events  # permanent: Dagster's RetryPolicy was bypassed
    assert fsck_report(home, answer["upload_id"]).clean


# -- images ----------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What an image needs to be decoded; everything else (eXIf, tEXt, iTXt, zTXt, iCCP, tIME,
# pHYs, ...) is metadata and must not be stored.
PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == PNG_MAGIC
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        if chunks[-1] == b"IEND":  # anything after it (e.g. GLB padding) is not PNG
            break
        pos += 12 + length
    return chunks


# -- fault injection around the real stores --------------------------------------------------


INJECTED = "injected fault"


@dataclass
class FaultPlan:
    """Which calls fail. ``transient_every``: of every N calls of an operation, the first N-1
    fail (so each logical call succeeds on its N-th attempt); ``persistent``: calls for which
    it returns True always fail; ``lost_ack``: the write happens, then the call fails anyway
    (the acknowledgement was lost; at most ``lost_ack_times`` per operation). Counts every call
    and every injected failure."""

    transient_every: int = 0
    persistent: Callable[[str, Any], bool] | None = None
    lost_ack: Callable[[str, Any], bool] | None = None
    lost_ack_times: int = 1  # per operation
    calls: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def should_fail(self, operation: str, subject: Any) -> bool:
        with self._lock:
            n = self.calls[operation] = self.calls.get(operation, 0) + 1
            fail = bool(self.persistent and self.persistent(operation, subject))
            if not fail and self.transient_every > 1:
                fail = n % self.transient_every != 0
            if fail:
                self.injected[operation] = self.injected.get(operation, 0) + 1
            return fail

    def note_lost_ack(self, operation: str, subject: Any) -> bool:
        if not (self.lost_ack and self.lost_ack(operation, subject)):
            return False
        name = f"{operation}:lost_ack"
        with self._lock:
            if self.injected.get(name, 0) >= self.lost_ack_times:
                return False
            self.injected[name] = self.injected.get(name, 0) + 1
            return True


PLANS: dict[str, FaultPlan] = {}  # resources are plain config: they find their plan by id


class FaultyObjectStore:
    """The real store, except that planned calls raise `OSError(EIO)` before touching it."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _gate(self, operation: str, key: Any) -> None:
        if self.plan.should_fail(operation, key):
            raise OSError(errno.EIO, f"{INJECTED}: {operation}")

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None):
        self._gate("put_bytes", key)
        return self.inner.put_bytes(key, data, content_type)

    def get_bytes(self, key: str) -> bytes:
        self._gate("get_bytes", key)
        return self.inner.get_bytes(key)

    def exists(self, key: str) -> bool:
        self._gate("exists", key)
        return self.inner.exists(key)

    def stat(self, key: str):
        self._gate("stat", key)
        return self.inner.stat(key)

    def delete(self, key: str) -> bool:
        self._gate("delete", key)
        return self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._gate("delete_prefix", prefix)
        return self.inner.delete_prefix(prefix)

    def list_keys(self, prefix: str = ""):
        self._gate("list_keys", prefix)
        return self.inner.list_keys(prefix)


class _FaultyCollection:
    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in {"find", "find_one", "insert_one", "update_one", "update_many", "delete_many", "count_documents"}:
            return attr
        operation = f"{self.inner.name}.{name}"

        def call(*args: Any, **kwargs: Any) -> Any:
            subject = args[0] if args else None
            if self.plan.should_fail(operation, subject):
                raise pymongo.errors.AutoReconnect(f"{INJECTED}: connection reset during {operation}")
            result = attr(*args, **kwargs)
            if self.plan.note_lost_ack(operation, subject):
                raise pymongo.errors.AutoReconnect(f"{INJECTED}: acknowledgement of {operation} lost")
            return result

        return call


class _FaultyDatabase:
    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __getitem__(self, name: str) -> _FaultyCollection:
        return _FaultyCollection(self.inner[name], self.plan)


class FaultyClient:
    """A pymongo-API client (here montydb's) whose collections fail as planned."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __getitem__(self, name: str) -> _FaultyDatabase:
        return _FaultyDatabase(self.inner[name], self.plan)


def faulty_metadata_store(embedded_dir: Path, plan: FaultPlan) -> MetadataStore:
    """The real embedded metadata store with `plan`'s faults injected under its retry layer."""
    real = open_metadata_store(None, embedded_dir)
    return MetadataStore(FaultyClient(real.client, plan), real.db_name, lock_path=real._lock_path)


class FaultyObjectStoreResource(ObjectStoreResource):
    plan_id: str

    def backend(self) -> Any:
        # under the retry layer, as a flaky backend is in production (`store()` adds the retries)
        return FaultyObjectStore(super().backend(), PLANS[self.plan_id])


_FAULTY_METADATA: dict[str, MetadataStore] = {}


class FaultyMetadataStoreResource(MetadataStoreResource):
    plan_id: str

    def store(self) -> MetadataStore:
        if self.plan_id not in _FAULTY_METADATA:
            _FAULTY_METADATA[self.plan_id] = faulty_metadata_store(Path(self.embedded_dir), PLANS[self.plan_id])
        return _FAULTY_METADATA[self.plan_id]
