"""``[store]``: the SQLite files of data_dir by default, or a PostgreSQL database whose password is
never in the config; every store opens on ``StoreConfig.state``."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterd import secrets
from meterd.config.loader import load_config, parse_config
from meterd.errors import ConfigError
from meterd.storage.database import Database

URL = "postgresql://meterd@db.example:5432/meterd"


@pytest.fixture(autouse=True)
def _no_secrets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(secrets, "_from_file", {})
    monkeypatch.setattr(secrets, "_loaded_from", None)
    for name in ("PGPASSWORD", "METERD_DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def store(**keys: object):
    return parse_config({"store": {"data_dir": "/var/lib/meterd", **keys}}, source="site.toml").store


def problems(**keys: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        store(**keys)
    return info.value.problems


def test_sqlite_under_data_dir_is_the_default_and_needs_nothing() -> None:
    s = store()
    assert s.database is None
    assert s.state == Path("/var/lib/meterd")


def test_a_database_is_where_every_store_opens_and_data_dir_stays() -> None:
    s = store(database=URL, pool_size=3)
    assert s.state == Database(URL, pool_size=3)
    assert s.state is s.database
    assert s.data_dir == Path("/var/lib/meterd")  # spools, inboxes and locks still live there
    assert s.database is not None and s.database.password is None and s.database.pool_size == 3


def test_pool_size_defaults_to_8() -> None:
    s = store(database=URL)
    assert s.database is not None and s.database.pool_size == 8


def test_the_password_comes_from_the_variable_password_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERD_DB_PASSWORD", "s3cret")
    s = store(database=URL, password_env="METERD_DB_PASSWORD")
    assert s.database is not None and s.database.password == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.state)


def test_without_password_env_libpqs_own_pgpassword_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-libpq")
    s = store(database=URL)
    assert s.database is not None and s.database.password == "from-libpq"


def test_the_password_may_come_from_the_secrets_file(tmp_path: Path) -> None:
    env = tmp_path / "secrets.env"
    env.write_text("METERD_DB_PASSWORD=from-file\n")
    env.chmod(0o600)
    (tmp_path / "site.toml").write_text(
        f'secrets_file = "secrets.env"\n[store]\ndata_dir = "data"\ndatabase = "{URL}"\n'
        'password_env = "METERD_DB_PASSWORD"\n')
    s = load_config(tmp_path / "site.toml").store
    assert s.database is not None and s.database.password == "from-file"
    assert s.data_dir == tmp_path / "data"


def test_a_named_password_that_is_not_set_is_an_error_naming_the_key() -> None:
    assert problems(database=URL, password_env="METERD_DB_PASSWORD") == [
        "site.toml: store.password_env: environment variable METERD_DB_PASSWORD (the database password) is not set"]


@pytest.mark.parametrize("url", ["postgresql://meterd:hunter2@db:5432/meterd",
                                 "postgres://meterd:@db/meterd",
                                 "postgresql://meterd@db/meterd?sslmode=require&password=hunter2"])
def test_a_password_inside_the_url_is_refused_and_not_repeated(url: str) -> None:
    found = problems(database=url)
    assert len(found) == 1
    assert found[0].startswith("site.toml: store.database: a password must not be written in the URL")
    assert "store.password_env" in found[0]
    assert "hunter2" not in found[0]


def test_a_password_key_in_the_store_is_refused() -> None:
    assert problems(database=URL, password="hunter2") == [
        ("site.toml: store.password: a secret must not be written in the config: put it in the environment or the "
         "secrets file and name the variable with password_env")]


@pytest.mark.parametrize(("keys", "expected"), [
    ({"database": "mysql://u@h/db"}, "store.database: must be a PostgreSQL URL"),
    ({"database": 5}, "store.database: must be a string"),
    ({"database": "postgresql://u@h:99999/db"}, "store.database: not a valid URL"),
    ({"database": "postgresql://u@h/"}, "store.database: names no database"),
    ({"database": URL, "pool_size": 0}, "store.pool_size: must be between 1 and 1000, got 0"),
    ({"database": URL, "pool_size": "8"}, "store.pool_size:"),
    ({"database": URL, "password_env": "not a name"}, "store.password_env: must be an environment variable name"),
    ({"pool_size": 4}, "store.pool_size: only with store.database"),
    ({"password_env": "METERD_DB_PASSWORD"}, "store.password_env: only with store.database"),
])
def test_bad_database_settings_name_the_key(keys: dict[str, object], expected: str) -> None:
    found = problems(**keys)
    assert any(p.startswith(f"site.toml: {expected}") for p in found), found


def test_a_unix_socket_url_is_taken() -> None:
    s = store(database="postgresql:///meterd?host=/var/run/postgresql")
    assert s.database is not None and s.database.url.endswith("host=/var/run/postgresql")
