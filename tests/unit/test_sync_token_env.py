"""A sync job whose ``token_env`` names an unset variable stops the daemon's start-up with a config
error naming the job and the variable, as the README says (issue #14); before, the daemon started
and the job failed at each scheduled run."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.errors import ConfigError
from meterd.storage.sqlite import SqliteStore

VAR = "METERD_TEST_BILLING_TOKEN_14"


def _site(data_dir: Path) -> str:
    return f"""
[store]
data_dir = "{data_dir}"
[[sync.jobs]]
name = "payments"
kind = "import_payments"
url = "http://127.0.0.1:9/payments"
token_env = "{VAR}"
schedule = "*/5 * * * *"
[[sync.jobs]]
name = "balances"
kind = "export_balances"
folder = "{data_dir}/out"
schedule = "0 1 * * *"
"""


def test_an_unset_token_stops_start_up_naming_job_and_variable(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    config = parse_config(tomllib.loads(_site(tmp_path)), source="site.toml")  # the CLI's other commands may load it
    with SqliteStore(config.store.data_dir) as store:
        with pytest.raises(ConfigError) as info:
            build_node(config, store)
    assert info.value.problems == [f"sync job payments: token_env: environment variable {VAR} (the billing "
                                   "system's token) is not set"]


def test_a_set_token_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "s3cret")
    config = parse_config(tomllib.loads(_site(tmp_path)), source="site.toml")
    with SqliteStore(config.store.data_dir) as store:
        assert build_node(config, store).sync is not None


def test_meterd_run_exits_2_with_the_message(tmp_path: Path, run_meterd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    path = tmp_path / "site.toml"
    path.write_text(_site(tmp_path / "data"))
    done = run_meterd("run", "--config", str(path), "--duration", "1")
    assert done.returncode == 2, done.stderr[-800:]
    assert f"sync job payments: token_env: environment variable {VAR}" in done.stderr
    assert "nothing was started" in done.stderr
