"""API tokens in the state database, on both backends: shown once, stored hashed, revoked for good."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from meterd.api import tokens as tokens_module
from meterd.api.tokens import Role, TokenStore
from meterd.storage.database import Location

NOW = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)


@pytest.fixture
def store(state_where: Location) -> Iterator[TokenStore]:
    with TokenStore(state_where) as s:
        yield s


def test_create_verify_list_revoke(store: TokenStore) -> None:
    token_id, secret = store.create("  grafana ", "viewer", NOW)
    assert secret.startswith(token_id + ".")
    assert store.verify(secret) == (token_id, "grafana", Role.VIEWER)
    assert store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.verify("nodot") is None and store.verify(".x") is None
    (info,) = store.list()
    assert (info.id, info.name, info.role, info.created, info.revoked) == (token_id, "grafana", Role.VIEWER, NOW, None)
    assert store.revoke(token_id, NOW + timedelta(hours=1))
    assert not store.revoke(token_id, NOW + timedelta(hours=2))  # already revoked
    assert store.verify(secret) is None
    assert store.list()[0].revoked == NOW + timedelta(hours=1)
    with pytest.raises(ValueError):
        store.create(" ", "viewer", NOW)


def test_an_id_collision_draws_again(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["0000abcd", "0000abcd", "0000beef"])
    monkeypatch.setattr(tokens_module.secrets, "token_hex", lambda _n: next(ids))
    first, _ = store.create("a", Role.ADMIN, NOW)
    second, secret = store.create("b", Role.OPERATOR, NOW)
    assert (first, second) == ("0000abcd", "0000beef")
    assert store.verify(secret) == ("0000beef", "b", Role.OPERATOR)
    assert [t.name for t in store.list()] == ["a", "b"]


def test_tokens_outlive_the_connection(state_where: Location) -> None:
    with TokenStore(state_where) as s:
        _, secret = s.create("ops", "operator", NOW)
    with TokenStore(state_where) as s:
        assert s.verify(secret) is not None
