"""A real `avatarpipe serve` (uvicorn) on loopback over a fresh home, with keys of every role."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CLI = Path(sys.executable).parent / "avatarpipe"
ALLOWED_ORIGIN = "http://app.example.test"


@dataclass
class Service:
    url: str
    home: Path
    env: dict[str, str]
    keys: dict[str, str]  # role (and "uploader2") -> key

    def client(self, role: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_key(env: dict[str, str], role: str) -> str:
    out = subprocess.run([str(CLI), "keys", "create", "--role", role, "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out)["key"]


def start_service(home: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Service]:
    env = {**os.environ, "AVATARPIPE_HOME": str(home), "AVATARPIPE_CORS_ORIGINS": ALLOWED_ORIGIN,
           **(extra_env or {})}  # fmt: skip
    env.pop("DAGSTER_HOME", None)
    env.pop("MONGODB_URI", None)
    keys = {role: _create_key(env, role) for role in ("uploader", "compliance", "admin")}
    keys["uploader2"] = _create_key(env, "uploader")
    port = _free_port()
    log = (
        home.parent / "service.log"
    )  # outside the home: the erasure's byte scan would (rightly) find its upload ids
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
    else:
        proc.kill()
        raise RuntimeError("the service did not start")
    return proc, Service(url=url, home=home, env=env, keys=keys)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("service") / "home"
    home.mkdir()
    proc, svc = start_service(home)
    try:
        yield svc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until_final(svc: Service, upload_id: str, role: str = "uploader", timeout_s: float = 900) -> dict:
    """Follow the upload's Server-Sent Events until it is ready or failed; returns the last status."""
    last: dict = {}
    with svc.client(role) as client, client.stream("GET", f"/v1/uploads/{upload_id}/events",
                                                   timeout=timeout_s) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])
    return last
