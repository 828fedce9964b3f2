"""Secrets come from the environment or a private secrets file, never from the config itself."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from meterd import secrets
from meterd.config.loader import load_config, parse_config
from meterd.errors import ConfigError

BASE = """
[store]
data_dir = "data"
[channels.bus1]
tcp = { host = "127.0.0.1", port = 9 }
[[meters]]
address = "000000000001"
channel = "bus1"
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]
"""


@pytest.fixture(autouse=True)
def _forget_loaded_secrets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(secrets, "_from_file", {})
    monkeypatch.setattr(secrets, "_loaded_from", None)
    monkeypatch.delenv("METERD_TEST_SECRET", raising=False)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_file_format_is_systemds_environmentfile() -> None:
    values = secrets.parse_secrets("# comment\n\nA=1\nexport B = two words \nC='q=1'\nD=\"x\"\nE=\n", "s.env")
    assert values == {"A": "1", "B": "two words", "C": "q=1", "D": "x", "E": ""}


@pytest.mark.parametrize(("text", "fragment"), [("JUSTTEXT\n", "s.env:1: expected NAME=VALUE"),
                                                ("A=1\n1X=2\n", "s.env:2"), ("A=1\nA=2\n", "A is set twice")])
def test_bad_lines_name_file_and_line_not_the_value(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        secrets.parse_secrets(text, "s.env")
    assert fragment in str(exc.value)


def test_config_points_to_a_private_file_and_the_environment_wins(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "secrets.env", "METERD_TEST_SECRET=from-file\n")
    (tmp_path / "site.toml").write_text('secrets_file = "secrets.env"\n' + BASE)
    load_config(tmp_path / "site.toml")
    assert secrets.lookup("METERD_TEST_SECRET") == "from-file"
    monkeypatch.setenv("METERD_TEST_SECRET", "from-env")
    assert secrets.lookup("METERD_TEST_SECRET") == "from-env"
    assert secrets.lookup("METERD_NOT_SET_ANYWHERE") is None
    assert "secrets.env" in secrets.where("METERD_NOT_SET_ANYWHERE")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_secrets_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    write(tmp_path / "secrets.env", "METERD_TEST_SECRET=s3cr3t-value\n", mode)
    (tmp_path / "site.toml").write_text('secrets_file = "secrets.env"\n' + BASE)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "site.toml")
    text = str(exc.value)
    assert "secrets_file" in text and f"{mode:04o}" in text and "chmod 600" in text
    assert "s3cr3t-value" not in text
    assert secrets.lookup("METERD_TEST_SECRET") is None


def test_a_missing_secrets_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('secrets_file = "/nonexistent/secrets.env"\n' + BASE)
    with pytest.raises(ConfigError, match="/nonexistent/secrets.env: file not found"):
        load_config(tmp_path / "site.toml")


@pytest.mark.parametrize(("extra", "where"), [
    ('\n[mqtt]\nhost = "h"\npassword = "hunter2"\n', "mqtt.password"),
    ('\n[channels.bus2]\ntcp = { host = "h", port = 1 }\ntoken = "hunter2"\n', "channels.bus2.token"),
    ('\n[[sync.jobs]]\nname = "j"\nkind = "import_payments"\nurl = "http://x"\ntoken_env = "T"\n'
     'secret = "hunter2"\n', "sync.jobs[0].secret"),
    ('\n[prepaid]\noperator_code = "hunter2"\n', "prepaid.operator_code"),
])
def test_a_secret_written_inline_is_refused_wherever_it_is(extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(BASE + extra), source="site.toml")
    text = str(exc.value)
    assert where in text and "written in the config" in text
    assert "hunter2" not in text


def test_the_daemon_takes_a_broker_password_from_the_secrets_file(tmp_path: Path) -> None:
    from meterd.collector.daemon import secret

    write(tmp_path / "s.env", "METERD_MQTT_PASSWORD=pw-from-file\n")
    secrets.load_secrets_file(tmp_path / "s.env")
    assert os.environ.get("METERD_MQTT_PASSWORD") in (None, "pw-from-file")  # the file never leaks into env
    assert secret("METERD_MQTT_PASSWORD", "mqtt.password_env") == (os.environ.get("METERD_MQTT_PASSWORD")
                                                                   or "pw-from-file")
    with pytest.raises(ConfigError, match="METERD_NOPE_SECRET"):
        secret("METERD_NOPE_SECRET", "x.password_env")
