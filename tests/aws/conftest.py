"""A real moto server (HTTP on 127.0.0.1, a free port) for every AWS test in this package.

boto3 code talks to it exactly as it would to AWS: only ``endpoint_url`` differs.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import boto3
import pytest

REGION = "eu-west-1"
_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start ``ThreadedMotoServer`` once per session; fake credentials so nothing can reach AWS."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in _FAKE_CREDENTIALS}
    os.environ.update(_FAKE_CREDENTIALS)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Environment for code that builds its own clients (subprocesses, settings) from env vars."""
    for name, value in _FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


def client(service: str, endpoint: str):
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def unique(prefix: str) -> str:
    """Resource names unique per test: the moto server lives for the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kms_key(moto_endpoint: str) -> str:
    return client("kms", moto_endpoint).create_key(Description="avatarpipe test")["KeyMetadata"]["Arn"]


def make_bucket(endpoint: str, name: str | None = None, versioned: bool = False) -> str:
    s3 = client("s3", endpoint)
    bucket = name or unique("bucket")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket
