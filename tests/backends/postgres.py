"""A throwaway PostgreSQL server for tests: Debian's binaries, a cluster in a temp dir, loopback
only, on a free port (parallel runs do not clash), stopped and deleted at the end.

`AVATARPIPE_TEST_PG_URL` (a superuser URL) uses an existing server instead. As root the
cluster runs as the `postgres` user (initdb refuses root). Durability is switched off
(fsync, full-page writes): the cluster never outlives the test session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REQUIRE_ENV = "AVATARPIPE_REQUIRE_POSTGRES"  # CI: a missing PostgreSQL fails instead of skipping
URL_ENV = "AVATARPIPE_TEST_PG_URL"


class PostgresUnavailable(RuntimeError):
    pass


def pg_bin_dir() -> Path | None:
    """Debian's versioned bin dir (initdb is not on PATH there), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgServer:
    """A running server: `url(db)` names a database on it (superuser, password auth)."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path | None = None

    def url(self, database: str = "postgres", driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, prefix: str, template: str | None = None) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        if template:  # a template must have no sessions: close the pools that built it
            self.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         f"WHERE datname = '{template}' AND pid <> pg_backend_pid()")  # fmt: skip
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def dump(self, database: str) -> bytes:
        """`pg_dump` of one database: an independent, logical view of everything it holds."""
        bindir = pg_bin_dir()
        pg_dump = str(bindir / "pg_dump") if bindir else "pg_dump"
        env = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run([pg_dump, "-h", self.host, "-p", str(self.port), "-U", self.user, "--inserts", database],
                              env=env, check=True, capture_output=True, timeout=120).stdout  # fmt: skip

    def restart(self) -> None:
        """Stop (fast: connections are cut) and start again on the same port."""
        if self.data_dir is None:
            raise PostgresUnavailable("not our server: cannot restart it")
        _pg_ctl(self.data_dir, "restart", self.port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_cluster_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _pg_ctl(data_dir: Path, action: str, port: int) -> None:
    bindir = pg_bin_dir()
    assert bindir is not None
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data_dir} -c fsync=off -c full_page_writes=off"
    cmd = [str(bindir / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"), "-w", "-m", "fast"]
    if action != "stop":
        cmd += ["-o", options]
    subprocess.run(_as_cluster_owner([*cmd, action]), check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """The server of `AVATARPIPE_TEST_PG_URL`, else a fresh throwaway cluster."""
    if os.environ.get(URL_ENV):
        from urllib.parse import urlsplit

        parts = urlsplit(os.environ[URL_ENV])
        yield PgServer(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres", parts.password or "")
        return
    bindir = pg_bin_dir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root but there is no `postgres` user") from exc
    root = Path(tempfile.mkdtemp(prefix="avatarpipe-pg-"))
    data_dir = root / "data"
    password = secrets.token_hex(12)
    pwfile = root / "pw"
    pwfile.write_text(password)
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    try:
        subprocess.run(_as_cluster_owner([str(bindir / "initdb"), "-D", str(data_dir), "-A", "scram-sha-256",
                                          f"--pwfile={pwfile}", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
                       check=True, capture_output=True, timeout=300)  # fmt: skip
        _pg_ctl(data_dir, "start", port)
        try:
            yield PgServer("127.0.0.1", port, "postgres", password, data_dir)
        finally:
            with contextlib.suppress(Exception):
                _pg_ctl(data_dir, "stop", port)
    finally:
        shutil.rmtree(root, ignore_errors=True)
