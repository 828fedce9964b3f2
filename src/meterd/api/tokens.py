"""API tokens: a name, a role and a secret that is only ever stored as its SHA-256.

A secret reads ``<id>.<random>``: the id (8 hex digits, also the row's primary key) is a short
prefix that names the token in lists and audit records; the random part is 32 bytes from
:func:`secrets.token_urlsafe`.  Verification looks the row up by id and compares the hashes with
:func:`hmac.compare_digest`, so the time taken does not tell how much of a guess was right.
Revoked tokens stay in the table (who had access, and when it ended) and never verify again.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from meterd.storage.sqlite import from_ms, to_ms
from meterd.storage.statedb import StateDatabase

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    created_ts  INTEGER NOT NULL,
    revoked_ts  INTEGER
);
"""


class Role(enum.StrEnum):
    VIEWER = "viewer"
    TECHNICIAN = "technician"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK: Final = {Role.VIEWER: 0, Role.TECHNICIAN: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    created: datetime
    revoked: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore(StateDatabase):
    """Tokens in the state database (a connection of their own)."""

    SCHEMA = _SCHEMA
    ROWS = False  # plain tuples

    def create(self, name: str, role: Role | str, now: datetime) -> tuple[str, str]:
        """A new token: returns ``(id, secret)``.  The secret is not kept: show it once."""
        if not name or not name.strip():
            raise ValueError("a token needs a name (who uses it)")
        role = Role(role)
        with self._lock:
            while True:
                token_id = secrets.token_hex(4)
                secret = f"{token_id}.{secrets.token_urlsafe(32)}"
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO api_tokens (id, name, role, hash, created_ts) VALUES (?, ?, ?, ?, ?)",
                    (token_id, name.strip(), role.value, _hash(secret), to_ms(now)))
                if cur.rowcount == 1:
                    return token_id, secret
                # an id collision (1 in 4 billion): draw again

    def verify(self, secret: str) -> tuple[str, str, Role] | None:
        """``(id, name, role)`` of a live token with this secret, else None."""
        token_id, dot, _ = secret.partition(".")
        if not dot or not token_id:
            return None
        with self._lock:
            row = self._conn.execute("SELECT name, role, hash, revoked_ts FROM api_tokens WHERE id = ?",
                                     (token_id,)).fetchone()
        if row is None or row[3] is not None:
            return None
        if not hmac.compare_digest(row[2], _hash(secret)):
            return None
        return token_id, row[0], Role(row[1])

    def revoke(self, token_id: str, now: datetime) -> bool:
        """Revoke a token; False when there is no such live token."""
        with self._lock:
            cur = self._conn.execute("UPDATE api_tokens SET revoked_ts = ? WHERE id = ? AND revoked_ts IS NULL",
                                     (to_ms(now), token_id))
        return cur.rowcount == 1

    def list(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, role, created_ts, revoked_ts FROM api_tokens ORDER BY created_ts, id").fetchall()
        return [TokenInfo(r[0], r[1], Role(r[2]), from_ms(r[3]), None if r[4] is None else from_ms(r[4]))
                for r in rows]
