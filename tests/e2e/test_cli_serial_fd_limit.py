"""``meterd run`` says at start when its serial channels need more open files than it may have (issue 21).

It raises the soft open-file limit to the hard one first; when even the hard limit is too small
for the serial ports (five descriptors each, as pyserial opens them) it logs one error naming the
count, the need and the limits -- and still starts.  The ports are paths with no device behind
them, so nothing is opened; the limit is set on the process before it starts.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path


def config(tmp_path: Path, channels: int) -> Path:
    lines = ['[store]', f'data_dir = "{tmp_path / "data"}"']
    for i in range(channels):
        lines += [f"[channels.bus{i}]", f'serial = {{ device = "/dev/meterd-no-such-tty-{i}", baud = 2400 }}']
    for i in range(channels):
        lines += ["[[meters]]", f'address = "{i + 1:012d}"', f'channel = "bus{i}"']
    lines += ["[[polls]]", 'name = "rt"', 'interval = "10s"', 'items = ["00010000"]']
    path = tmp_path / "site.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_with_limit(path: Path, nofile: int) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "meterd.cli.main", "run", "-c", str(path), "--duration", "0.5"],
                          check=False, capture_output=True, text=True, timeout=120, preexec_fn=limit,
                          cwd=path.parent)


def test_run_names_the_open_files_its_serial_channels_need_when_the_limit_is_too_low(tmp_path: Path) -> None:
    p = run_with_limit(config(tmp_path, 60), 256)
    assert p.returncode == 0, p.stderr
    errors = [line for line in p.stderr.splitlines() if "open files" in line]
    assert len(errors) == 1, p.stderr
    assert ("60 serial channels need about 364 open files (5 a port, as pyserial opens them, and 64 more) "
            "but the open-file limit is 256 (hard 256)") in errors[0]


def test_run_says_nothing_when_they_fit(tmp_path: Path) -> None:
    p = run_with_limit(config(tmp_path, 60), 1024)
    assert p.returncode == 0, p.stderr
    assert "open files" not in p.stderr
