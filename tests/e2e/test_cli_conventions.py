"""CLI conventions a new user expects (issue 18): logging options after the subcommand,
``--version``, ``METERD_CONFIG``, ``--since`` with a minus sign, a quiet end when piped into
``head``, and times shown in the site's zone with the offset."""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd import __version__
from meterd.cli.main import build_parser, join_negative_times, log_level
from meterd.readings import Reading
from meterd.storage.sqlite import SqliteStore


def _store(path, readings: int, now: datetime) -> None:
    with SqliteStore(path) as store:
        store.write_readings([Reading("000000000001", "energy.active.import.total", now - timedelta(minutes=i),
                                      Decimal(1000 + i), "kWh") for i in range(readings)])


@pytest.mark.parametrize(("argv", "level"), [
    (["readings", "--meter", "1"], logging.INFO),
    (["--log-level", "DEBUG", "readings", "--meter", "1"], logging.DEBUG),
    (["readings", "--meter", "1", "--log-level", "debug"], logging.DEBUG),
    (["readings", "--meter", "1", "-v"], logging.DEBUG),
    (["-v", "readings", "--meter", "1"], logging.DEBUG),
    (["readings", "--meter", "1", "-q"], logging.WARNING),
    (["readings", "--meter", "1", "-qq"], logging.ERROR),
    (["-v", "readings", "--meter", "1", "--log-level", "ERROR"], logging.ERROR),
    (["account", "show", "A1", "-c", "x.toml", "-q"], logging.WARNING),  # nested subcommands too
])
def test_logging_options_work_before_and_after_the_subcommand(argv, level):
    args = build_parser().parse_args(argv)
    assert log_level(args, argv) == level


def test_a_subcommands_own_quiet_flag_still_belongs_to_it():
    args = build_parser().parse_args(["demo", "--quiet"])
    assert args.quiet is True and log_level(args, ["demo", "--quiet"]) == logging.INFO


def test_negative_times_are_joined_to_their_option():
    assert join_negative_times(["readings", "--since", "-2h", "--until", "-10m", "--meter", "-1"]) == [
        "readings", "--since=-2h", "--until=-10m", "--meter", "-1"]


def test_version(run_meterd):
    p = run_meterd("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"meterd {__version__}"


def test_since_with_a_minus_sign_and_local_times_with_the_offset(run_meterd, tmp_path):
    now = datetime.now(UTC)
    _store(tmp_path / "data", 300, now)
    for since in ("-2h", "2h"):
        p = run_meterd("readings", "--data-dir", str(tmp_path / "data"), "--meter", "1", "--since", since)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert 119 <= len(lines) <= 121, len(lines)  # one a minute for two hours
        assert all("+08:00  energy.active.import.total" in line for line in lines), lines[:2]


def test_meterd_config_names_the_config_when_c_is_not_given(run_meterd, tmp_path, meterd_bin):
    config = tmp_path / "site.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "site-data"}"\n', encoding="utf-8")
    _store(tmp_path / "site-data", 3, datetime.now(UTC))
    env = {**os.environ, "METERD_CONFIG": str(config)}
    p = subprocess.run([meterd_bin, "readings", "--meter", "1"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3, p.stderr
    # a command that requires -c takes it from the environment too
    p = subprocess.run([meterd_bin, "sync", "status"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=60)
    assert "required: -c" not in p.stderr and "Traceback" not in p.stderr
    # --data-dir still wins over the environment
    p = subprocess.run([meterd_bin, "readings", "--meter", "1", "--data-dir", str(tmp_path / "other")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and "other" in p.stderr


def test_output_piped_into_head_ends_quietly(tmp_path, meterd_bin):
    _store(tmp_path / "data", 5000, datetime.now(UTC))  # far more than a pipe's buffer
    p = subprocess.run(["bash", "-c", f'"{meterd_bin}" readings --data-dir "{tmp_path / "data"}" --meter 1 | head -1;'
                                      ' echo "status=${PIPESTATUS[0]}" >&2'],
                       capture_output=True, text=True, timeout=60)
    assert len(p.stdout.splitlines()) == 1
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert "status=141" in p.stderr


def test_the_demos_summary_is_a_table_or_json_never_a_python_dict(run_meterd, tmp_path):
    p = run_meterd("demo", "--quiet", "--duration", "6", "--interval", "2", "--data-dir", str(tmp_path / "d1"),
                   "--api-port", "0", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "{'" not in p.stdout and "False" not in p.stdout and "None" not in p.stdout, p.stdout
    assert any(line.startswith("CHANNEL ") and "FAILURES" in line for line in p.stdout.splitlines())
    p = run_meterd("demo", "--json", "--duration", "6", "--interval", "2", "--data-dir", str(tmp_path / "d2"),
                   "--api-port", "0", timeout=120)
    assert p.returncode == 0, p.stderr
    import json

    doc = json.loads(p.stdout)  # the whole of stdout is the one document
    assert set(doc["channels"]) >= {"pty1", "tcp3"} and doc["channels"]["tcp3"]["attempts"] > 0
