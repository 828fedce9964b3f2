"""A PostgreSQL server of the tests' own: ``initdb`` and ``pg_ctl`` from the installed PostgreSQL,
on a free port, in a temporary directory, never the server that may already run on 5432.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user (Debian's
package creates it).  Durability is switched off (``fsync``, ``full_page_writes``): these
databases die with the test run.  Each test gets a database of its own
(:meth:`PgServer.new_database`), created from ``template0``.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from meterd.ports import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def available() -> bool:
    return _bin_dir() is not None


def _free_port() -> int:
    return free_port()


class PgServer:
    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="meterd-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        self._counter = itertools.count(1)
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port), "unix_socket_directories": f"'{self.root}'",
            "fsync": "off", "full_page_writes": "off", "synchronous_commit": "off", "max_connections": "300",
            "shared_buffers": "128MB", "max_locks_per_transaction": "256",
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("".join(f"\n{k} = {v}" for k, v in conf.items()) + "\n")
        if self._as_root:
            shutil.chown(self.data / "postgresql.conf", "postgres", "postgres")
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120,
                              cwd=self.root)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        for attempt in range(50):
            try:
                with psycopg.connect(self.url(), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
                break
            except psycopg.OperationalError:  # the server is (re)starting
                if attempt == 49:
                    raise
                time.sleep(0.2)
        return self.url(name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
