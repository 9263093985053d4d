"""A throwaway PostgreSQL cluster for tests, from Debian's binaries (apt package ``postgresql``).

Installs nothing: it finds ``/usr/lib/postgresql/*/bin``, runs ``initdb`` in a
private temporary directory and starts the server on 127.0.0.1 at a free high
port (its unix socket in the same directory). PostgreSQL refuses to run as
root, so as root the cluster belongs to the ``postgres`` system user the
package creates and every server command runs through ``runuser``.
Each test gets its own schema (:func:`create_database`) instead of a
database: creating a schema takes milliseconds, a database a second.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def binaries() -> Path | None:
    """The newest installed PostgreSQL server bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster in a temporary directory; ``start()``, use ``dsn``, ``stop()``."""

    def __init__(self, durable: bool = False):
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.durable = durable  # fsync on: only benchmarks need real durability figures
        self.port = _free_port()
        # As root under /tmp itself: $TMPDIR may sit below a directory the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="mailward-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        self.data = self.root / "data"
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            *(() if self.durable else ("--no-sync",)),
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=100 "
            f"-c fsync={'on' if self.durable else 'off'} "
            f"-c synchronous_commit={'on' if self.durable else 'off'}"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def create_database(dsn: str) -> str:
    """A DSN whose connections see only a new, empty schema of the cluster behind ``dsn``."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return make_conninfo(dsn, options=f"-c search_path={schema}")
