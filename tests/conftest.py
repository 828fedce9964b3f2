"""Shared fixtures: the installed ``meterd`` command, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


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


@pytest.fixture
def run_meterd(meterd_bin, tmp_path):
    def run(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([meterd_bin, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env=env, input=input)

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
