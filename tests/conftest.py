"""Shared fixtures: the installed ``meterd`` command, free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meterd import ports


def meterd_command() -> str:
    """The installed console script (next to this interpreter in a venv, else on PATH)."""
    here = Path(sys.executable).parent / "meterd"
    if here.exists():
        return str(here)
    found = shutil.which("meterd")
    if not found:
        pytest.fail("the meterd command is not installed: pip install -e '.[test]'")
    return found


@pytest.fixture(scope="session")
def meterd_bin() -> str:
    return meterd_command()


@pytest.fixture(autouse=True)
def _secrets_file_forgotten():
    """A secrets file a test loads (through a config's ``secrets_file``) is process state in
    :mod:`meterd.secrets`: forget it after the test, so no later test finds its values or its name
    in a message (test_sync_token_env failed after test_config_reference)."""
    from meterd.secrets import forget_secrets_file

    yield
    forget_secrets_file()


@pytest.fixture
def run_meterd(meterd_bin, tmp_path):
    def run(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([meterd_bin, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env=env, input=input)

    return run


def free_port() -> int:
    """A port to listen on later, outside the range outgoing connections draw from (meterd.ports)."""
    return ports.free_port()


# --- PostgreSQL: a server of the tests' own, and stores on both backends ---------------------------


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the run (tests/pgserver.py); in CI a missing PostgreSQL fails."""
    import pgserver

    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed")
    server = pgserver.PgServer()
    try:
        yield server
    finally:
        from meterd.storage.database import close_pools

        close_pools()
        server.close()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database of this test's own.  The pools the test opened are closed
    after it: each keeps connections open, and a run's hundreds of databases would exhaust the
    server's max_connections ("too many clients")."""
    yield pg_server.new_database()
    from meterd.storage.database import close_pools

    close_pools()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_where(request, tmp_path):
    """Where a store lives, once per backend: the data directory (SQLite) or a fresh PostgreSQL
    database (a :class:`meterd.storage.database.Database`)."""
    if request.param == "sqlite":
        return tmp_path
    from meterd.storage.database import Database

    return Database(request.getfixturevalue("pg_url"), pool_size=4)
