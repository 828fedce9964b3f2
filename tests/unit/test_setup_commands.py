"""The README keeps exactly two set-up commands (issue 18): the demo, and the test suite as one
command that installs what it needs -- and CI runs that same command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_readme_has_the_demo_and_the_test_command_and_nothing_else():
    assert _quick_start_commands() == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && meterd demo",
        "scripts/test",
    ]


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec scripts/test\b", ci, re.M)
    assert os.access(ROOT / "scripts" / "test", os.X_OK) and os.access(ROOT / ".ci" / "run", os.X_OK)


def test_the_test_script_installs_every_server_the_suite_starts():
    script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    for package in ("mosquitto", "victoria-metrics", "chromium", "postgresql", "fonts-noto-cjk", "prometheus"):
        assert f"need+=({package})" in script, package
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "test")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
