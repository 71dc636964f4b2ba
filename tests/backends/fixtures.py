"""Backend fixtures: the same tests on the embedded defaults (sqlite) and on PostgreSQL.

`backend` is parametrised `sqlite` / `postgres`. For `postgres` it yields the environment that
points Dagster's storage (`DAGSTER_PG_URL`) and MLflow's backend store (`AVATARPIPE_MLFLOW_URI`)
at fresh databases of the session's throwaway server, with MLflow artifacts on S3 (the moto
server). Without PostgreSQL installed the `postgres` cases skip, unless
`AVATARPIPE_REQUIRE_POSTGRES=1` (CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.aws.conftest import moto_endpoint  # noqa: F401 - the session's moto server, for every package
from tests.backends.postgres import REQUIRE_ENV, PgServer, PostgresUnavailable, postgres_server

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL required ({REQUIRE_ENV}=1) but unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@dataclass
class Backend:
    """One backend's environment (`env`: variables to set) and, for postgres, its databases."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    server: PgServer | None = None
    databases: dict[str, str] = field(default_factory=dict)  # role (dagster|mlflow) -> name

    @property
    def postgres(self) -> bool:
        return self.name == "postgres"

    def clone(self) -> Backend:
        """A copy with its own databases cloned from these (CREATE DATABASE … TEMPLATE)."""
        if not self.postgres:
            return Backend(self.name, dict(self.env))
        assert self.server is not None
        clone = _postgres_backend(self.server, self.env.get("AVATARPIPE_MLFLOW_ARTIFACT_ROOT", ""),
                                  {role: self.server.create_database(role, template=db) for role, db in self.databases.items()})  # fmt: skip
        clone.env.update({k: v for k, v in self.env.items() if k.endswith("_ENDPOINT_URL")})  # the same S3
        return clone

    def drop(self) -> None:
        """Drop this backend's databases (a throwaway server keeps them until it stops otherwise)."""
        if self.server is not None:
            for database in self.databases.values():
                self.server.drop_database(database)

    def apply(self, environ: dict | None = None) -> dict[str, str]:
        """Set this backend's variables (default: os.environ); returns the previous values."""
        target = os.environ if environ is None else environ
        saved = {k: target.get(k) for k in (*BACKEND_VARS, *self.env)}
        for key in BACKEND_VARS:
            target.pop(key, None)
        target.update(self.env)
        return saved


BACKEND_VARS = ("DAGSTER_PG_URL", "AVATARPIPE_MLFLOW_URI", "AVATARPIPE_MLFLOW_ARTIFACT_ROOT",
                "AVATARPIPE_MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL", "DAGSTER_HOME")  # fmt: skip


def restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _postgres_backend(server: PgServer, artifact_root: str, databases: dict[str, str]) -> Backend:
    env = {"DAGSTER_PG_URL": server.url(databases["dagster"]), "AVATARPIPE_MLFLOW_URI": server.url(databases["mlflow"]),
           "AVATARPIPE_MLFLOW_ARTIFACT_ROOT": artifact_root}  # fmt: skip
    return Backend("postgres", env, server, databases)


def make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    """A fresh backend: nothing for sqlite; new databases and an artifact bucket for postgres."""
    if name == "sqlite":
        return Backend("sqlite")
    server = request.getfixturevalue("pg_server")
    endpoint = request.getfixturevalue("moto_endpoint")
    from tests.aws.conftest import make_bucket

    bucket = make_bucket(endpoint)
    backend = _postgres_backend(server, f"s3://{bucket}/mlflow",
                                {role: server.create_database(role) for role in ("dagster", "mlflow")})  # fmt: skip
    backend.env.update(MLFLOW_S3_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL=endpoint)  # MLflow's boto3 client
    return backend


def use_backend(backend: Backend | str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Point this test's environment at ``backend`` (a name: a fresh one), through ``monkeypatch``."""
    if isinstance(backend, str):
        backend = make_backend(backend, request)
    for key in BACKEND_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in backend.env.items():
        monkeypatch.setenv(key, value)
    return backend
