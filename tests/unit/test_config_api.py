"""``[api]``: address and connection limits, with defaults and errors naming the key."""

from __future__ import annotations

import tomllib

import pytest

from meterd.config.loader import parse_config
from meterd.config.model import ApiConfig
from meterd.errors import ConfigError


def load(api: str, tmp_path) -> ApiConfig:
    config = parse_config(tomllib.loads(f'[store]\ndata_dir = "{tmp_path}"\n[api]\n{api}\n'), "site.toml")
    assert config.api is not None
    return config.api


def test_defaults(tmp_path):
    assert load("", tmp_path) == ApiConfig("127.0.0.1", 8080, header_timeout=10.0, keep_alive_timeout=5.0,
                                           max_connections=1024)


def test_limits_are_read(tmp_path):
    api = load('port = 8645\nheader_timeout = "2s"\nkeep_alive_timeout = "500ms"\nmax_connections = 64', tmp_path)
    assert (api.port, api.header_timeout, api.keep_alive_timeout, api.max_connections) == (8645, 2.0, 0.5, 64)


def test_bad_limits_are_named_all_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load('header_timeout = "0s"\nkeep_alive_timeout = "soon"\nmax_connections = 0\nmax_conns = 5', tmp_path)
    problems = "\n".join(info.value.problems)
    assert "api.header_timeout: must be a positive duration" in problems
    assert "api.keep_alive_timeout: must be a positive duration" in problems
    assert "api.max_connections: must be between 1 and 1000000, got 0" in problems
    assert "max_conns" in problems
