"""The prepaid side of the state database: accounts, the ledger, balances, charging cursors,
commands, relay states and the audit log, in ``state.sqlite3`` beside the meter archive, or in
PostgreSQL (:class:`~meterd.storage.database.Database`) with the same behaviour.

Exactly-once is the design:

- ``ledger.key`` is UNIQUE (payment id, ``charge:meter:rate:period:n``, adjustment id,
  ``fixed:account:month``).  An entry is inserted with ``INSERT OR IGNORE`` and the balance moves
  only when the row went in, in the same transaction, so a replay, a restart or a duplicate
  delivery applies nothing twice and ``balance == SUM(ledger)`` always holds
  (:meth:`ControlStore.verify_balances` checks it).
- Amounts are stored as integer fen (``amount_fen``) beside their text: sums in SQL are exact, and
  ``Decimal`` comes back with two places.  Amounts finer than a fen are refused, never rounded away.
  Text amounts follow the one grammar of :mod:`meterd.control.amounts`.
- Balances stay integers far inside SQLite's int64 (whose ``+`` turns REAL on overflow): no
  entry beyond ``ENTRY_LIMIT`` (10^12 fen) goes in, and no write leaves a balance outside
  ±``BALANCE_LIMIT_FEN`` (10^18 fen) -- a payment, adjustment or charging pass that would is
  refused whole.  A ``SUM`` over entries could overflow only past 8 million entries of the
  largest size in one sum, and SQLite's ``SUM`` raises then, never returns a float;
  :meth:`ControlStore.verify_balances` then sums again exactly, in Python.
- A charging pass writes its entries, the cursors it advanced, tier usage and flags in one
  transaction: a kill -9 leaves either all of it or none of it.
- A command is marked ``sent`` and committed *before* its bytes go out.  After a crash a ``sent``
  command is never sent again; it is settled by reading the relay back
  (:mod:`meterd.control.commands`).
- Writers take the database lock up front (``BEGIN IMMEDIATE``; on PostgreSQL the store family's
  advisory lock), so the daemon and a CLI ``meterd pay`` in another process -- or another node --
  serialise instead of failing half-way.

On PostgreSQL a BIGINT never turns REAL, it raises; the range checks are computed in NUMERIC
before anything is added, so the same amounts are refused with the same LedgerError.  Where the
two dialects differ the SQL branches on :attr:`~meterd.storage.statedb.StateDatabase.postgres`;
the bulk writes (a charging pass, a policy pass's states and commands, :meth:`ControlStore.apply`
of a billing import, :meth:`ControlStore.upsert_accounts`) take a few round trips there whatever
their size (COPY into temporary tables, one statement moving the rows in, batches), with the same
rows, refusals and audit lines as the SQLite path, which goes row by row in process.

Every ledger change and every command transition is written to ``audit`` in the same transaction,
with who (an operator, ``policy``, ``billing``, ``daemon``) and why.

Onboarding.  An account is created ``pending``: charged like any other, never acted on by the
policy.  An opening balance is one ledger entry, ``opening:ACCOUNT`` (so a replayed import or a
restart with the same config applies it once), and it activates the pending account (``normal``;
the next policy pass decides from the balance) -- in the same transaction when the account is
created with one.  Activating without an amount records an opening balance of 0.00: the
activation is then in the ledger too, which is what makes the next pass look at the account.  An
opening balance is applied to pending accounts only: a second, different one, or one for an
account that was active without one (live before opening balances existed), is refused --
reported and audited -- and an adjustment corrects the balance instead.

保电.  ``accounts.protected`` is the archive's flag, as the config and the billing import write it
(:meth:`ControlStore.upsert_accounts`).  An operator's override of it (``meterd protect``,
:meth:`ControlStore.set_protection`) is a row of ``protection_overrides`` holding what the archive
said when it was made: it is in force until its ``until`` and while the archive still says that;
``upsert_accounts`` drops it, with a change line and an audit line, when a new value arrives.
The policy pass reads the effective value (:meth:`ControlStore.policy_rows`; the overrides are a
handful, patched into the rows rather than joined to a district's accounts).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from operator import attrgetter
from types import MappingProxyType
from typing import Any, ClassVar, Final

from meterd.clock import CST
from meterd.control.amounts import BALANCE_LIMIT_FEN, DEFAULT_LIMIT, ENTRY_LIMIT, AmountError, parse_amount
from meterd.control.charging import Cursor
from meterd.control.command_store import _AUDIT_JSON, Command, CommandStore, _opt_dt, _opt_ms
from meterd.control.model import (
    CommandRequest,
    EntryKind,
    LedgerEntry,
    Rate,
)
from meterd.errors import LedgerError
from meterd.storage.database import Location
from meterd.storage.sqlite import from_ms, to_ms

log = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    account     TEXT NOT NULL PRIMARY KEY,
    customer    TEXT NOT NULL DEFAULT '',
    area        TEXT NOT NULL DEFAULT '',
    tariff      TEXT NOT NULL,
    protected   INTEGER NOT NULL DEFAULT 0,
    thresholds  TEXT NOT NULL DEFAULT '{}',
    opened_ts   INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'normal',
    held        TEXT,
    manual_until_ts INTEGER,
    fixed_through_ts INTEGER,
    balance_fen INTEGER NOT NULL DEFAULT 0,
    last_seq    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS accounts_area ON accounts (area);
CREATE TABLE IF NOT EXISTS account_meters (
    meter       TEXT NOT NULL PRIMARY KEY,
    account     TEXT NOT NULL,
    multiplier  TEXT NOT NULL DEFAULT '1'
);
CREATE INDEX IF NOT EXISTS account_meters_account ON account_meters (account);
CREATE TABLE IF NOT EXISTS ledger (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE,
    account     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    amount_fen  INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    recorded_ts INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    meter       TEXT,
    rate        TEXT,
    kwh         TEXT,
    price       TEXT,
    period_start_ts INTEGER,
    period_end_ts   INTEGER
);
CREATE INDEX IF NOT EXISTS ledger_account ON ledger (account, seq);
CREATE TABLE IF NOT EXISTS cursors (
    meter  TEXT NOT NULL,
    rate   TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (meter, rate)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tier_usage (
    account TEXT NOT NULL,
    period  TEXT NOT NULL,
    kwh     TEXT NOT NULL,
    PRIMARY KEY (account, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS charge_flags (
    id      INTEGER PRIMARY KEY,
    meter   TEXT NOT NULL,
    rate    TEXT NOT NULL,
    ts      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    UNIQUE (meter, rate, ts, kind)
);
CREATE TABLE IF NOT EXISTS commands (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    meter        TEXT NOT NULL,
    account      TEXT,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    manual       INTEGER NOT NULL DEFAULT 0,
    created_ts   INTEGER NOT NULL,
    expires_ts   INTEGER NOT NULL,
    next_try_ts  INTEGER NOT NULL,
    sent_ts      INTEGER,
    finished_ts  INTEGER,
    tries        INTEGER NOT NULL DEFAULT 0,
    detail       TEXT NOT NULL DEFAULT '',
    read_back    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS commands_state ON commands (state, next_try_ts);
CREATE INDEX IF NOT EXISTS commands_meter ON commands (meter, id);
CREATE TABLE IF NOT EXISTS relay_states (
    meter   TEXT NOT NULL PRIMARY KEY,
    ts      INTEGER NOT NULL,
    flags   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS replacements (
    key         TEXT NOT NULL PRIMARY KEY,
    account     TEXT NOT NULL,
    old_meter   TEXT NOT NULL,
    new_meter   TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    old_final   TEXT NOT NULL,
    new_initial TEXT NOT NULL,
    actor       TEXT NOT NULL,
    recorded_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, id);
"""
# Each step after _SCHEMA (see meterd.storage.statedb).  1: the start of an account's alarm episode,
# so the notice period before an automatic trip survives a restart.  Existing accounts keep their
# state (only accounts created from now on without an opening balance are pending); an account
# already alarmed has no start yet, and the policy begins its notice at its next pass.
# 2: the node that claimed (sent) a command, when several nodes share the database (PostgreSQL).
# 3: operators' overrides of the archive's 保电 flag (``meterd protect``; see ControlStore.set_protection).
_MIGRATIONS: Final = (
    ("ALTER TABLE accounts ADD COLUMN alarmed_ts INTEGER",),
    ("ALTER TABLE commands ADD COLUMN node TEXT",),
    (("CREATE TABLE IF NOT EXISTS protection_overrides (account TEXT NOT NULL PRIMARY KEY, "
      "protected INTEGER NOT NULL, archive INTEGER NOT NULL, reason TEXT NOT NULL, operator TEXT NOT NULL, "
      "set_ts INTEGER NOT NULL, until_ts INTEGER)"),),
)
OPENING_PREFIX: Final = "opening:"
PENDING: Final = "pending"  # ControlState.PENDING (policy is above this module)



_ENTRY_LIMIT_FEN: Final = int(ENTRY_LIMIT * 100)


def to_fen(amount: Decimal | str | int, *, what: str = "amount") -> int:
    """Exact yuan -> integer fen.  Refuses text outside the amount grammar
    (:func:`~meterd.control.amounts.parse_amount`), floats, NaN/infinity, fractions of a fen and
    anything beyond :data:`~meterd.control.amounts.ENTRY_LIMIT` yuan either way."""
    if isinstance(amount, str):
        try:
            value = parse_amount(amount, signed=True, limit=ENTRY_LIMIT, what=what, zero=True)
        except AmountError as exc:
            raise LedgerError(str(exc)) from None
    elif isinstance(amount, Decimal):
        value = amount
    elif isinstance(amount, int) and not isinstance(amount, bool):
        value = Decimal(amount)
    else:
        raise LedgerError(f"{what} {amount!r} is not an amount (a Decimal or text such as \"88.50\")")
    if not value.is_finite():
        raise LedgerError(f"{what} {amount!r} is not a finite number")
    if abs(value) > ENTRY_LIMIT:  # compared before any arithmetic: 1E+999999 * 100 would overflow
        raise LedgerError(f"{what} {amount} refused: more than {ENTRY_LIMIT} yuan, beyond any real ledger entry")
    fen = value * 100
    if fen != fen.to_integral_value():
        raise LedgerError(f"{what} {amount} has more than two decimal places (fen)")
    return int(fen)


def _balance_room(fen: str) -> str:
    """SQL: ``fen`` is an integer balance within ±BALANCE_LIMIT_FEN (REAL after an overflow is not)."""
    return f"(typeof({fen}) = 'integer' AND {fen} BETWEEN -{BALANCE_LIMIT_FEN} AND {BALANCE_LIMIT_FEN})"


def _pg_room(fen: str) -> str:
    """:func:`_balance_room` on PostgreSQL, where a BIGINT never turns REAL: ``fen`` is computed in
    NUMERIC by the caller (``balance_fen::numeric + ...``; ``SUM(bigint)`` is NUMERIC already), so
    nothing overflows before the range is checked."""
    return f"({fen} BETWEEN -{BALANCE_LIMIT_FEN} AND {BALANCE_LIMIT_FEN})"


def _out_of_range(exc: BaseException) -> bool:
    """PostgreSQL's numeric_value_out_of_range (a BIGINT overflow), without importing psycopg."""
    return getattr(exc, "sqlstate", None) == "22003"


def parse_opening(value: str | int | Decimal, *, what: str = "opening balance",
                  limit: Decimal = DEFAULT_LIMIT) -> Decimal:
    """An opening balance typed or imported: signed yuan by the amount grammar, zero allowed (an
    account that starts with nothing), at most ``limit`` either way (an opening balance is a
    one-off entry like an adjustment, bounded like one).  ``int``: a TOML integer."""
    text = str(value) if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else value
    try:
        return parse_amount(text, signed=True, limit=limit, what=what, zero=True)  # type: ignore[arg-type]
    except AmountError as exc:
        raise LedgerError(str(exc)) from None


def from_fen(fen: int) -> Decimal:
    return Decimal(fen).scaleb(-2)


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """An account as configured or imported (the billing system is the system of record)."""

    account: str
    tariff: str
    meters: Mapping[str, Decimal]  # meter address -> CT × PT
    customer: str = ""
    area: str = ""
    protected: bool = False
    thresholds: Mapping[str, str] = field(default_factory=dict)  # overrides of the site defaults
    opening_balance: Decimal | None = None  # yuan, signed: applied once, activates a pending account
    activate: bool = False  # activate without an amount given (an opening balance of 0.00)
    opening_ref: str = ""  # where the opening balance comes from (a work order, an import record)


@dataclass(frozen=True, slots=True)
class ProtectionOverride:
    """An operator's override of the archive's 保电 flag for one account (``meterd protect``).

    In force while the archive still says ``archive`` (what it said when the operator acted: a new
    value from the billing system or the config supersedes the override) and ``now`` is before
    ``until`` (None: no end)."""

    account: str
    protected: bool  # what the operator set: True 保电 set, False released
    archive: bool  # the archive's value it overrides
    reason: str
    operator: str
    at: datetime
    until: datetime | None = None

    def in_force(self, archive: bool, now: datetime) -> bool:
        return archive == self.archive and (self.until is None or now < self.until)


_OVERRIDE_COLUMNS: Final = "account, protected, archive, reason, operator, set_ts, until_ts"


def _override(row: Sequence[Any]) -> ProtectionOverride:
    """A ``protection_overrides`` row (:data:`_OVERRIDE_COLUMNS`, in order) as its dataclass."""
    account, protected, archive, reason, operator, set_ts, until_ts = row
    return ProtectionOverride(account, bool(protected), bool(archive), reason, operator, from_ms(set_ts),
                              _opt_dt(until_ts))


def _cst(at: datetime) -> str:
    return f"{at.astimezone(CST):%Y-%m-%d %H:%M} CST"


def protection_words(protected: bool) -> str:
    return "保电 set" if protected else "保电 released"


def _superseded(o: ProtectionOverride, archive: bool, actor: str) -> str:
    """The change line of an override ended by a new archive value (audited with the other lines)."""
    return (f"account {o.account}: the archive's 保电 flag is now {'on' if archive else 'off'} ({actor}): it "
            f"supersedes the operator's override ({protection_words(o.protected)} by {o.operator} on {_cst(o.at)}: "
            f"{o.reason})")


@dataclass(frozen=True, slots=True)
class ProtectionChange:
    """What :meth:`ControlStore.set_protection` did: ``changed`` False when the account was
    already as asked (``message`` says why); ``override`` the override in force after it (None:
    the archive's value counts)."""

    account: str
    changed: bool
    protected: bool  # the effective value after
    archive: bool
    override: ProtectionOverride | None
    message: str


@dataclass(frozen=True, slots=True)
class Account:
    account: str
    customer: str
    area: str
    tariff: str
    protected: bool  # the archive's 保电 flag (config, billing import); protected_at() is what counts
    thresholds: dict[str, str]
    opened: datetime
    state: str
    held: str | None
    balance: Decimal
    meters: dict[str, Decimal]
    manual_until: datetime | None = None
    fixed_through: datetime | None = None
    alarmed_at: datetime | None = None  # the start of the current alarm episode (the notice period)
    override: ProtectionOverride | None = None  # an operator's override of ``protected``, if one was made

    def protection_override(self, now: datetime) -> ProtectionOverride | None:
        """The operator's override in force at ``now``, or None (the archive's flag counts)."""
        o = self.override
        return o if o is not None and o.in_force(self.protected, now) else None

    def protected_at(self, now: datetime) -> bool:
        """The effective 保电 at ``now``: the operator's override in force, else the archive's flag."""
        o = self.protection_override(now)
        return self.protected if o is None else o.protected


@dataclass(frozen=True, slots=True)
class LedgerRow:
    seq: int
    key: str
    account: str
    kind: EntryKind
    amount: Decimal
    at: datetime
    recorded: datetime
    actor: str
    detail: str
    meter: str | None = None
    rate: str | None = None
    kwh: Decimal | None = None
    price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`ControlStore.pay` / :meth:`adjust` did: ``applied`` False means nothing
    changed (a duplicate id) and ``reason`` says so."""

    applied: bool
    balance: Decimal
    reason: str = ""
    seq: int | None = None


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _ledger_row(r: Any) -> LedgerRow:
    return LedgerRow(seq=r["seq"], key=r["key"], account=r["account"], kind=EntryKind(r["kind"]),
                     amount=from_fen(r["amount_fen"]), at=from_ms(r["ts"]), recorded=from_ms(r["recorded_ts"]),
                     actor=r["actor"], detail=r["detail"], meter=r["meter"], rate=r["rate"],
                     kwh=_dec(r["kwh"]), price=_dec(r["price"]))


# A ledger entry's fields in LedgerEntry order: what the charging hot path hands over instead of
# building a frozen dataclass per entry (LedgerEntry(*fields) is the entry).
EntryFields = tuple[str, str, EntryKind, Decimal, datetime, str, "str | None", "Rate | None", "Decimal | None",
                    "Decimal | None", "datetime | None", "datetime | None"]
entry_fields = attrgetter("key", "account", "kind", "amount", "at", "detail", "meter", "rate", "kwh", "price",
                           "period_start", "period_end")
_HUNDRED: Final = Decimal(100)
_RATES: Final[dict[str, Rate]] = {r.value: r for r in Rate}
_ENUM_TEXT: Final[dict[str, str]] = {m: m.value for m in (*EntryKind, *Rate)}  # bound as plain str


class _Memo(dict[Any, Any]):
    """``memo[x]`` is ``convert(x)``, computed once per distinct ``x``; ``memo[None]`` is None.
    For the columns whose values repeat across a district's rows (instants, kinds, rates).  Not
    for Decimals: equal values may differ in text (0.5, 0.50)."""

    __slots__ = ("_convert",)

    def __init__(self, convert: Callable[[Any], Any], known: Mapping[Any, Any] = MappingProxyType({})) -> None:
        super().__init__(known)
        self[None] = None
        self._convert = convert

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self._convert(key)
        return value


_LEDGER_COLUMNS: Final = ("key, account, kind, amount_fen, ts, recorded_ts, actor, detail, meter, rate, kwh, price, "
                          "period_start_ts, period_end_ts")
# Rows per multi-row VALUES statement (fewer if SQLite takes fewer parameters): one step, the GIL
# released for all of them.  Pipelined, each statement costs the writer a wait for the GIL (2,000
# rows: the caller waited 1 s of a 100,000-account pass for the writer; 4,000: 0.4 s, and the
# cached statements cost a few MiB more; 8,000: 0.3 s and 12 MiB more again).
_ROWS_PER_STATEMENT: Final = 4000
_QUEUED_STATEMENTS: Final = 8  # a pipelined batch's statements waiting for the writer (memory bound)
# PostgreSQL, pipelined: the writer waits for the server several times a part (each statement, and
# COPY sends its data in pieces) and takes the GIL back after each wait, while the caller computes
# in pure Python and gives the GIL up only every switch interval (5 ms by default): that more than
# doubled the writer's time (100,000 accounts: 4-5 s writing for 2.8 s of server work; 0.5 ms:
# 2.9 s).  For the pass the interval is cut to this (process-wide, put back when the last pass ends).
_PG_SWITCH_INTERVAL: Final = 0.0005


class _SwitchInterval:
    """``sys.setswitchinterval`` lowered while at least one pipelined PostgreSQL pass writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, _PG_SWITCH_INTERVAL))
            self._users += 1

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                sys.setswitchinterval(self._saved)


_switch_interval: Final = _SwitchInterval()
# PostgreSQL: a part of a charging pass in a few round trips, whatever its size.  Its ledger rows
# are copied (``COPY ... FROM STDIN``, several times faster than binding parameters) straight into
# the ledger, in a savepoint: a key already there (a replayed pass) fails the COPY, which is rolled
# back to the savepoint, and the part goes the staging way instead: into a temporary table, and in
# by an anti-join (below).  The other rows are copied into temporary tables of the pass's
# transaction (``ON COMMIT DROP``: nothing stays in the pooled session).  Then one statement moves
# the balances by exactly the rows the ledger took in this part (above the ``seq`` watermark: this
# transaction's own under the write lock; each account checked against the range in NUMERIC, so
# nothing overflows, and an account out of range is not moved, which the counts show:
# ChargingBatch._stage_pg), and moves the other rows in with the conflict rules of the SQLite path.
_PG_STAGING: Final = (  # table, its columns
    ("charging_ledger", ("key text, account text, kind text, amount_fen bigint, ts bigint, recorded_ts bigint, "
                         "actor text, detail text, meter text, rate text, kwh text, price text, period_start_ts "
                         "bigint, period_end_ts bigint, ord bigint GENERATED ALWAYS AS IDENTITY")),
    ("charging_cursors", "meter text, rate text, ts bigint, value text, ord bigint GENERATED ALWAYS AS IDENTITY"),
    ("charging_usage", "account text, period text, kwh text, ord bigint GENERATED ALWAYS AS IDENTITY"),
    ("charging_flags", "meter text, rate text, ts bigint, kind text, detail text"),
    ("charging_fixed", "account text, ts bigint"),
)
_PG_COPY: Final = {
    "ledger": f"COPY ledger ({_LEDGER_COLUMNS}) FROM STDIN",
    "charging_ledger": f"COPY charging_ledger ({_LEDGER_COLUMNS}) FROM STDIN",
    "charging_cursors": "COPY charging_cursors (meter, rate, ts, value) FROM STDIN",
    "charging_usage": "COPY charging_usage (account, period, kwh) FROM STDIN",
    "charging_flags": "COPY charging_flags (meter, rate, ts, kind, detail) FROM STDIN",
    "charging_fixed": "COPY charging_fixed (account, ts) FROM STDIN",
}
# The ledger rows of a part, by the way they went in: copied straight in (the rows above the
# watermark ?1), or from the staging table: the entries whose key is new, in the order given (``ord``:
# seq as on SQLite; the part's keys are distinct, and no other writer inserts while the write lock
# is held: an anti-join, cheaper than ON CONFLICT's speculative insertion; the UNIQUE key still
# refuses a duplicate, failing the pass, never charging twice).
_PG_TAKEN: Final = {
    "copied": "taken AS (SELECT account, amount_fen, seq FROM ledger WHERE seq > ?1)",
    "staged": (f"taken AS (INSERT INTO ledger ({_LEDGER_COLUMNS}) SELECT {_LEDGER_COLUMNS} FROM charging_ledger AS c "
               "WHERE NOT EXISTS (SELECT 1 FROM ledger AS l WHERE l.key = c.key) ORDER BY c.ord "
               "RETURNING account, amount_fen, seq)"),
}
_PG_MOVE_BALANCES: Final = (
    "moved AS (SELECT account, SUM(amount_fen) AS fen, MAX(seq) AS seq, COUNT(*) AS n FROM taken GROUP BY account), "
    "done AS (UPDATE accounts SET balance_fen = accounts.balance_fen + moved.fen, last_seq = moved.seq "
    f"FROM moved WHERE accounts.account = moved.account AND {_pg_room('accounts.balance_fen + moved.fen')} "
    "RETURNING 1)")
# Returns the new watermark, the accounts moved and those that should have been, the entries and
# their sum, and (staged) the accounts.
_PG_MOVED: Final = ("SELECT (SELECT MAX(seq) FROM moved), (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM done), "
                    "(SELECT SUM(n) FROM moved), (SELECT SUM(fen) FROM moved)")
_PG_MOVE: Final = {  # the other rows of a part, moved in with the ledger's in the same statement
    # the last row of a key copied (DISTINCT ON ... ord DESC), as SQLite's rows in order leave it
    "charging_cursors": ("cursors_moved AS (INSERT INTO cursors (meter, rate, ts, value) SELECT DISTINCT ON (meter, rate) "
                         "meter, rate, ts, value FROM charging_cursors ORDER BY meter, rate, ord DESC "
                         "ON CONFLICT (meter, rate) DO UPDATE SET ts = excluded.ts, value = excluded.value)"),
    "charging_usage": ("usage_moved AS (INSERT INTO tier_usage (account, period, kwh) SELECT DISTINCT ON (account, "
                       "period) account, period, kwh FROM charging_usage ORDER BY account, period, ord DESC "
                       "ON CONFLICT (account, period) DO UPDATE SET kwh = excluded.kwh)"),
    "charging_flags": ("flags_moved AS (INSERT INTO charge_flags (meter, rate, ts, kind, detail) "
                       "SELECT * FROM charging_flags ON CONFLICT DO NOTHING)"),
}
# Fixed-charge watermarks: accounts rows again, so a statement of their own (one statement may not
# update a row twice).
_PG_FIXED: Final = ("UPDATE accounts SET fixed_through_ts = f.ts FROM charging_fixed AS f "
                    "WHERE accounts.account = f.account")
# Savepoints a pass takes at most (one per part copied straight in).  Past 64 subtransactions a
# transaction's subtransaction ids overflow its slot in shared memory and every other session's
# snapshot looks into pg_subtrans until it ends; the parts after these go the staging way.
_PG_SAVEPOINTS: Final = 48
# The account that a part's entries (those above the watermark) would take out of range, if any.
_PG_OUT_OF_RANGE: Final = (
    "SELECT a.account, a.balance_fen, moved.fen FROM accounts a JOIN (SELECT account, SUM(amount_fen) AS fen "
    "FROM ledger WHERE seq > ? GROUP BY account) AS moved ON a.account = moved.account "
    f"WHERE a.last_seq <= ? AND NOT {_pg_room('a.balance_fen + moved.fen')} LIMIT 1")


# PostgreSQL: one ``apply()`` copied into a temporary table of its transaction (``ON COMMIT DROP``;
# COPY, several times faster than arrays bound as parameters) and moved in by one statement.  The
# new keys go in, in the order given (``ON CONFLICT DO NOTHING``: a key already in the ledger, or
# given twice in the call, keeps its first row); the balances move by exactly the rows taken, each
# account only if its balance stays in range after every one of its entries in turn (the lowest and
# highest running sums, in NUMERIC: SQLite's entry-by-entry check, and nothing overflows); and the
# accounts no row of ``accounts`` names are returned, which refuses the whole call.  Returns the
# keys taken, their lowest seq, the accounts moved and those that should have been, and the unknown
# accounts.
_PG_APPLY_STAGE: Final = (
    "CREATE TEMPORARY TABLE applying (key text, account text, kind text, amount_fen bigint, ts bigint, detail text, "
    "meter text, rate text, kwh text, price text, period_start_ts bigint, period_end_ts bigint, "
    "ord bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DROP")
_PG_APPLY_COPY: Final = ("COPY applying (key, account, kind, amount_fen, ts, detail, meter, rate, kwh, price, "
                         "period_start_ts, period_end_ts) FROM STDIN")
_PG_APPLY: Final = (
    f"WITH taken AS (INSERT INTO ledger ({_LEDGER_COLUMNS}) SELECT key, account, kind, amount_fen, ts, ?1, ?2, detail, "
    "meter, rate, kwh, price, period_start_ts, period_end_ts FROM applying ORDER BY ord ON CONFLICT (key) DO NOTHING "
    "RETURNING key, account, amount_fen, seq), "
    "runs AS (SELECT account, amount_fen, seq, SUM(amount_fen) OVER (PARTITION BY account ORDER BY seq) AS run "
    "FROM taken), "
    "moved AS (SELECT account, SUM(amount_fen) AS fen, MAX(seq) AS seq, MIN(run) AS lo, MAX(run) AS hi FROM runs "
    "GROUP BY account), "
    "done AS (UPDATE accounts SET balance_fen = accounts.balance_fen + moved.fen, last_seq = moved.seq FROM moved "
    f"WHERE accounts.account = moved.account AND {_pg_room('accounts.balance_fen + moved.lo')} "
    f"AND {_pg_room('accounts.balance_fen + moved.hi')} RETURNING 1) "
    "SELECT (SELECT array_agg(key) FROM taken), (SELECT MIN(seq) FROM taken), (SELECT COUNT(*) FROM done), "
    "(SELECT COUNT(*) FROM moved), (SELECT array_agg(DISTINCT account) FROM applying AS g "
    "WHERE NOT EXISTS (SELECT 1 FROM accounts AS a WHERE a.account = g.account))")
# After _PG_APPLY refused to move an account: the first entry taken (from seq ?1 on) that takes its
# account's running balance out of range, with the balance before it.
_PG_APPLY_OUT_OF_RANGE: Final = (
    "SELECT key, account, amount_fen, run - amount_fen FROM (SELECT l.key, l.account, l.amount_fen, l.seq, "
    "a.balance_fen::numeric + SUM(l.amount_fen) OVER (PARTITION BY l.account ORDER BY l.seq) AS run "
    "FROM ledger AS l JOIN accounts AS a ON a.account = l.account WHERE l.seq >= ?1 AND a.last_seq < ?1) AS r "
    f"WHERE NOT {_pg_room('run')} ORDER BY seq LIMIT 1")
_PG_AUDIT_COPY: Final = "COPY audit (ts, actor, action, subject, detail) FROM STDIN"  # ids in the order copied


_NULL: Final = "\\N"  # NULL in COPY's text format


def _copy_text(rows: Sequence[tuple[Any, ...]], data: str | None = None) -> str | None:
    """``rows`` in COPY's text format (``data``: as formatted by the caller already, NULL as
    ``\\N``), or None when a value holds a character that format escapes (a backslash, tab, newline
    or carriage return: psycopg formats those rows instead).  Checked once for all the rows: every
    backslash must be a NULL's, every tab and newline a separator."""
    if not rows:
        return None
    if data is None:
        data = "".join(["\t".join([_NULL if v is None else v if v.__class__ is str else str(v) for v in row]) + "\n"
                        for row in rows])
    if (data.count("\\") != sum(map(tuple.count, rows, repeat(None))) or "\r" in data
            or data.count("\t") != len(rows) * (len(rows[0]) - 1) or data.count("\n") != len(rows)):
        return None
    return data


def _copy(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]], data: str | None = None) -> None:
    """``COPY ... FROM STDIN`` of ``rows`` in the open transaction (PostgreSQL), as the text of
    :func:`_copy_text` (``data``: made already) when it has it, else formatted by psycopg."""
    if data is None:
        data = _copy_text(rows)
    if data is None:
        conn.copy_rows(sql, rows)  # type: ignore[attr-defined]
    else:
        conn.copy_data(sql, data)  # type: ignore[attr-defined]


def _values(n_rows: int, n_columns: int) -> str:
    one = "(" + ", ".join("?" * n_columns) + ")"
    return ", ".join([one] * n_rows)


class ChargingBatch:
    """The write side of one charging pass (:meth:`ControlStore.charging_batch`).

    Entries go in with ``INSERT OR IGNORE`` (the ledger key is UNIQUE), many rows per statement.
    After each part, balances move by what the ledger actually took since the previous part (the
    rows above a ``seq`` watermark: this transaction's own, under the write lock), so a replayed
    or duplicated key moves nothing: exactly once without asking which keys are known.

    On PostgreSQL the rows of a part are copied in and moved by a few statements (see
    :data:`_PG_STAGING`), which move the balances by exactly the rows the ledger took.  The
    part's COPY text is made by the caller's thread (:func:`_copy_text`), so the writer only waits
    on the server; and while it writes, the interpreter's switch interval is shortened
    (:data:`_PG_SWITCH_INTERVAL`), so it gets the GIL back promptly after each wait.

    Pipelined, the statements run in a writer thread while the caller computes the next part:
    SQLite releases the GIL for the whole of a many-row statement (it would not help row by row:
    the writer would queue for the GIL at every row).  The writer is the only user of the
    connection until the batch ends, and is gone before the COMMIT or ROLLBACK.
    """

    def __init__(self, conn: sqlite3.Connection, now: datetime, actor: str, *, pipelined: bool = False,
                 postgres: bool = False) -> None:
        self._conn = conn
        self._postgres = postgres
        self._staging = False  # PostgreSQL: the temporary tables of the pass are created
        self._savepoints = 0  # PostgreSQL: parts copied straight into the ledger (see _copied_in)
        self._taken = [0, 0]  # PostgreSQL: entries the ledger took and their sum in fen, so far
        self._accounts: set[str] = set()  # PostgreSQL: the accounts of those entries
        self._recorded = to_ms(now)
        self._actor = actor
        self._ms = _Memo(to_ms)  # instants repeat across thousands of entries
        self._text = _Memo(str, _ENUM_TEXT)  # kinds and rates as plain str
        self._seq_before = self._seq_mark = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()[0]
        self.applied = 0
        self.summary: dict[str, Any] = {}
        self._max_params = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._error: BaseException | None = None
        self._abort = False
        self._jobs: queue.Queue[Any] | None = None
        self._writer: threading.Thread | None = None
        if pipelined:
            self._jobs = queue.Queue(maxsize=_QUEUED_STATEMENTS)
            self._writer = threading.Thread(target=self._run_writer, name="charging-writer", daemon=True)
            if postgres:
                _switch_interval.enter()
            try:
                self._writer.start()
            except BaseException:
                if postgres:
                    _switch_interval.leave()
                raise

    def add(self, entries: Iterable[EntryFields], cursors: Iterable[tuple[str, Rate, datetime, Decimal]] = (),
            usage: Iterable[tuple[str, str, Decimal]] = (), flags: Iterable[tuple[str, Rate, datetime, str, str]] = (),
            fixed_through: Mapping[str, datetime] = MappingProxyType({})) -> None:
        """Write a part of the pass (entries as :data:`EntryFields`).  Raises LedgerError for an
        amount finer than a fen; the whole pass is then rolled back."""
        if self._error is not None:
            raise self._error
        if self._postgres:
            self._add_pg(entries, cursors, usage, flags, fixed_through)
            return
        recorded, actor, ms, text = self._recorded, self._actor, self._ms, self._text
        params: list[Any] = []
        for key, account, kind, amount, at, detail, meter, rate, kwh, price, start, end in entries:
            try:  # to_fen(), inlined for the common case: a Decimal to the fen
                x = amount * _HUNDRED
                fen = int(x)
            except (ArithmeticError, ValueError, TypeError):
                x, fen = None, 0
            if fen != x or not -_ENTRY_LIMIT_FEN <= fen <= _ENTRY_LIMIT_FEN:  # to_fen decides (or refuses)
                fen = to_fen(amount, what=f"ledger entry {key}: amount")
            params += (key, account, text[kind], fen, ms[at], recorded, actor, detail, meter, text[rate],
                       None if kwh is None else str(kwh), None if price is None else str(price), ms[start], ms[end])
        self._insert(f"INSERT OR IGNORE INTO ledger ({_LEDGER_COLUMNS}) VALUES ", "", 14, params)
        params = []
        for m, r, at, v in cursors:
            params += (m, text[r], ms[at], str(v))
        self._insert("INSERT INTO cursors (meter, rate, ts, value) VALUES ",
                     " ON CONFLICT (meter, rate) DO UPDATE SET ts = excluded.ts, value = excluded.value", 4, params)
        params = []
        for a, p, k in usage:
            params += (a, p, str(k))
        self._insert("INSERT INTO tier_usage (account, period, kwh) VALUES ",
                     " ON CONFLICT (account, period) DO UPDATE SET kwh = excluded.kwh", 3, params)
        params = []
        for m, r, at, flag_kind, d in flags:
            params += (m, text[r], ms[at], flag_kind, d)
        self._insert("INSERT OR IGNORE INTO charge_flags (meter, rate, ts, kind, detail) VALUES ", "", 5, params)
        if fixed_through:
            self._submit(self._conn.executemany, "UPDATE accounts SET fixed_through_ts = ? WHERE account = ?",
                         [(ms[at], a) for a, at in fixed_through.items()])
        self._submit(self._move_balances)

    def _add_pg(self, entries: Iterable[EntryFields], cursors: Iterable[tuple[str, Rate, datetime, Decimal]],
                usage: Iterable[tuple[str, str, Decimal]], flags: Iterable[tuple[str, Rate, datetime, str, str]],
                fixed_through: Mapping[str, datetime]) -> None:
        """:meth:`add` on PostgreSQL: the same rows (the same amounts refused), copied (see
        :data:`_PG_STAGING`)."""
        recorded, actor, ms, text = self._recorded, self._actor, self._ms, self._text
        rows: dict[str, tuple[Any, ...]] = {}  # key -> row: a key twice in the part, the first one counts
        for key, account, kind, amount, at, detail, meter, rate, kwh, price, start, end in entries:
            try:  # to_fen(), inlined for the common case: a Decimal to the fen
                x = amount * _HUNDRED
                fen = int(x)
            except (ArithmeticError, ValueError, TypeError):
                x, fen = None, 0
            if fen != x or not -_ENTRY_LIMIT_FEN <= fen <= _ENTRY_LIMIT_FEN:  # to_fen decides (or refuses)
                fen = to_fen(amount, what=f"ledger entry {key}: amount")
            if key not in rows:
                rows[key] = (key, account, text[kind], fen, ms[at], recorded, actor, detail, meter, text[rate],
                             None if kwh is None else str(kwh), None if price is None else str(price), ms[start],
                             ms[end])
        ledger = list(rows.values())
        # A cursor or tier usage given twice in a part: SQLite's rows in order leave the last one's
        # values; on PostgreSQL the statement keeps the last copied (ON CONFLICT DO UPDATE may not
        # touch a row twice in one statement).
        tables: list[list[Any]] = [ledger, [(m, text[r], ms[at], str(v)) for m, r, at, v in cursors],
                                   [(a, p, str(k)) for a, p, k in usage]]
        tables.append([(m, text[r], ms[at], flag_kind, d) for m, r, at, flag_kind, d in flags])
        tables.append([(a, ms[at]) for a, at in fixed_through.items()])
        if not any(tables):
            return
        # COPY's text of the part made here, while the writer is busy with the previous part (the
        # two common tables by hand: a generic formatter costs twice as much)
        n = _NULL
        texts = [
            _copy_text(ledger, "".join([
                f"{k}\t{a}\t{kind}\t{fen}\t{ts}\t{rec}\t{by}\t{d}\t{n if m is None else m}\t{n if r is None else r}\t"
                f"{n if kwh is None else kwh}\t{n if p is None else p}\t{n if s is None else s}\t{n if e is None else e}\n"
                for k, a, kind, fen, ts, rec, by, d, m, r, kwh, p, s, e in ledger])),
            _copy_text(tables[1], "".join([f"{m}\t{r}\t{ts}\t{v}\n" for m, r, ts, v in tables[1]])),
            *map(_copy_text, tables[2:])]
        self._submit(self._stage_pg, list(zip(tables, texts)))

    def _copy(self, table: str, rows: list[Any], data: str | None) -> None:
        if data is None:  # a value COPY's text format escapes: psycopg formats the rows
            self._conn.copy_rows(_PG_COPY[table], rows)  # type: ignore[attr-defined]
        else:
            _copy(self._conn, _PG_COPY[table], rows, data)

    def _stage_pg(self, parts: list[tuple[list[Any], str | None]]) -> None:
        """Write one part on PostgreSQL (see :data:`_PG_STAGING`): the other rows copied into their
        temporary tables, the ledger rows copied straight in (or staged), then one statement.
        ``parts``: each table's rows, with their COPY text (see :func:`_copy_text`)."""
        conn = self._conn
        if not self._staging:  # one round trip for all of them
            conn.execute("DO $$BEGIN " + " ".join(f"CREATE TEMPORARY TABLE {table} ({columns}) ON COMMIT DROP;"
                                                   for table, columns in _PG_STAGING) + " END$$")
            self._staging = True
        (ledger, ledger_text), *others = parts
        used = []
        for (table, _), (rows, data) in zip(_PG_STAGING[1:], others):
            if rows:
                self._copy(table, rows, data)
                used.append(table)
        moves = [_PG_MOVE[table] for table in used if table in _PG_MOVE]
        if not ledger:
            if moves:
                conn.execute(f"WITH {', '.join(moves)} SELECT 1")
        else:
            params: tuple[Any, ...] = ()
            if self._copied_in(ledger, ledger_text):
                way, params = "copied", (self._seq_mark,)
            else:
                self._copy("charging_ledger", ledger, ledger_text)
                used.append("charging_ledger")
                way = "staged"
            select = _PG_MOVED + (", (SELECT array_agg(account) FROM moved)" if way == "staged" else "")
            try:
                mark, accounts, moved, count, total, *taken = conn.execute(
                    f"WITH {', '.join([_PG_TAKEN[way], _PG_MOVE_BALANCES, *moves])} {select}", params).fetchone()
            except Exception as exc:
                if not _out_of_range(exc):
                    raise
                raise LedgerError("charging refused: a balance would leave the range of ±"
                                  f"{from_fen(BALANCE_LIMIT_FEN)} yuan") from None
            if moved != accounts:  # an account out of range (not moved), or entries of an unknown account
                row = conn.execute(_PG_OUT_OF_RANGE, (self._seq_mark, self._seq_mark)).fetchone()
                if row is not None:
                    raise LedgerError(f"charging refused: account {row[0]}: balance {from_fen(row[1])} moved by "
                                      f"{from_fen(int(row[2]))} would leave the range of ±"
                                      f"{from_fen(BALANCE_LIMIT_FEN)} yuan")
            if mark is not None:
                self._seq_mark = mark
                self._taken[0] += int(count)
                self._taken[1] += int(total)
                self._accounts.update(taken[0] if taken else (row[1] for row in ledger))
        if "charging_fixed" in used:
            conn.execute(_PG_FIXED)
        if used:
            conn.execute(f"TRUNCATE {', '.join(used)}")  # created in this transaction: truncated in place

    def _copied_in(self, rows: list[Any], data: str | None) -> bool:
        """Copy a part's ledger rows straight into the ledger, in a savepoint; False (nothing
        written) when a key is in the ledger already, or the pass has used its savepoints."""
        if self._savepoints >= _PG_SAVEPOINTS:
            return False
        self._savepoints += 1
        conn = self._conn
        conn.execute("SAVEPOINT charging_part")
        try:
            self._copy("ledger", rows, data)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "23505":  # unique_violation: a key replayed
                raise
            conn.execute("ROLLBACK TO SAVEPOINT charging_part")
            conn.execute("RELEASE SAVEPOINT charging_part")
            return False
        conn.execute("RELEASE SAVEPOINT charging_part")
        return True

    def _move_balances(self) -> None:
        """Move the balances by the entries the ledger took since the last time: the rows above
        the watermark (this transaction's own; nobody else writes meanwhile)."""
        conn, since = self._conn, self._seq_mark
        self._seq_mark = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()[0]
        if self._seq_mark > since:
            moved = ("(SELECT account, SUM(amount_fen) AS fen, MAX(seq) AS seq FROM ledger NOT INDEXED WHERE seq > ? "
                     "GROUP BY account) AS moved")
            try:
                # A balance that would leave its range becomes NULL, which NOT NULL refuses: the
                # check costs one CASE per row (a trigger would cost a pass ~0.1 s per 100,000 accounts).
                conn.execute(
                    f"UPDATE accounts SET balance_fen = CASE WHEN {_balance_room('balance_fen + moved.fen')} "
                    "THEN balance_fen + moved.fen END, last_seq = moved.seq "
                    # NOT INDEXED: the rows by seq range, then grouped (ledger_account would walk all history)
                    f"FROM {moved} WHERE accounts.account = moved.account", (since,))
            except (sqlite3.IntegrityError, sqlite3.OperationalError) as exc:
                if "balance_fen" not in str(exc) and "overflow" not in str(exc):
                    raise
                try:
                    row = conn.execute(f"SELECT a.account, a.balance_fen, moved.fen FROM accounts a JOIN {moved} "
                                       f"ON a.account = moved.account WHERE NOT "
                                       f"{_balance_room('a.balance_fen + moved.fen')} LIMIT 1", (since,)).fetchone()
                except sqlite3.OperationalError:  # the sum of one account's entries overflowed
                    row = None
                which = (f"account {row[0]}: balance {from_fen(row[1])} moved by {from_fen(row[2])}" if row
                         else "an account's entries sum beyond int64")
                raise LedgerError(f"charging refused: {which} would leave the range of ±"
                                  f"{from_fen(BALANCE_LIMIT_FEN)} yuan") from None

    def _insert(self, head: str, tail: str, width: int, params: list[Any]) -> None:
        """``head`` VALUES (...), (...) ``tail`` for the flat ``params``, many rows per statement."""
        step = min(_ROWS_PER_STATEMENT, self._max_params // width) * width
        for i in range(0, len(params), step):
            chunk = params[i:i + step]
            self._submit(self._conn.execute, head + _values(len(chunk) // width, width) + tail, chunk)

    def _submit(self, job: Callable[..., Any], *args: Any) -> None:
        if self._jobs is None:
            job(*args)
        else:
            self._jobs.put((job, args))

    def _run_writer(self) -> None:
        assert self._jobs is not None
        while (item := self._jobs.get()) is not None:
            if self._error is None and not self._abort:
                job, args = item
                try:
                    job(*args)
                except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread, re-raised there
                    self._error = exc

    def _stop(self, *, abort: bool) -> None:
        """Wait for the writer to finish what was queued (``abort``: to skip it) and end."""
        if self._writer is None:
            return
        self._abort = abort
        assert self._jobs is not None
        self._jobs.put(None)
        self._writer.join()
        self._writer = None
        if self._postgres:
            _switch_interval.leave()

    def _finish(self) -> None:
        self._stop(abort=False)
        if self._error is not None:
            raise self._error
        seq = self._seq_before
        if self._postgres:  # the parts' own counts (see _stage_pg): no second look at the pass's rows
            count, total, last, accounts = *self._taken, self._seq_mark, len(self._accounts)
        else:
            count, total, last, accounts = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount_fen), 0), MAX(seq), COUNT(DISTINCT account) FROM ledger "
                "NOT INDEXED WHERE seq > ?", (seq,)).fetchone()
        if not count:
            return
        self.applied = count
        self.summary = {"accounts": accounts, "entries": count, "amount": str(from_fen(int(total))),
                        "ledger_seq": [seq + 1, last]}


class ControlStore(CommandStore):
    """Prepaid state in ``data_dir/state.sqlite3`` (shared with the meter archive) or a PostgreSQL
    database: accounts, the ledger, balances and charging here; commands, relay states and the
    audit log from :class:`~meterd.control.command_store.CommandStore`."""

    SCHEMA = _SCHEMA
    STORE = "control"
    MIGRATIONS = _MIGRATIONS
    PRAGMAS = ("temp_store=MEMORY",)  # a charging pass groups its entries by account
    # PostgreSQL: room in each page for the new versions of the rows every pass updates (a cursor
    # per register, a balance per account), so an update stays on its page and touches no index
    # (a HOT update: a district's cursors upsert about twice as fast).
    PG_FILLFACTOR: ClassVar[tuple[tuple[str, int], ...]] = (("cursors", 50), ("accounts", 70))

    def __init__(self, where: Location) -> None:
        super().__init__(where)
        if self.postgres:
            self._tune_tables()

    def _tune_tables(self) -> None:
        wanted = dict(self.PG_FILLFACTOR)
        rows = self._read("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(?::text[]) "
                          "AND relkind = 'r' AND pg_table_is_visible(oid)", (list(wanted),))
        todo = [(name, wanted[name]) for name, options in rows if f"fillfactor={wanted[name]}" not in (options or ())]
        if not todo:
            return
        try:  # once per database (a storage parameter: no lock that blocks readers or writers)
            with self._write() as conn:
                for name, fill in todo:
                    conn.execute(f"ALTER TABLE {name} SET (fillfactor = {int(fill)})")
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "42501":  # insufficient_privilege: not the tables' owner
                raise
            log.info("state database %s: fillfactor of %s not set (%s); passes update more index entries",
                     self.path, ", ".join(name for name, _ in todo), exc)

    # --- accounts ------------------------------------------------------------------------------

    def upsert_accounts(self, specs: Iterable[AccountSpec], *, actor: str, now: datetime) -> list[str]:
        """Create or update accounts and their meter assignments; returns what changed, one line each
        (also audited).  A new account without an opening balance is created ``pending``; a spec
        with one (or ``activate``) applies it once and activates the account (:meth:`_open`).
        Otherwise balances, ledger and control state are never touched here."""
        changes: list[str] = []
        if self.postgres:
            with self._write() as conn:
                return self._upsert_accounts_pg(conn, list(specs), actor=actor, now=now)
        with self._write() as conn:
            for spec in specs:
                thresholds = json.dumps(dict(sorted(spec.thresholds.items())))
                row = conn.execute("SELECT * FROM accounts WHERE account = ?", (spec.account,)).fetchone()
                opens = spec.opening_balance is not None or spec.activate
                if row is None:
                    conn.execute(
                        "INSERT INTO accounts (account, customer, area, tariff, protected, thresholds, opened_ts, "
                        "state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (spec.account, spec.customer, spec.area, spec.tariff, int(spec.protected), thresholds,
                         to_ms(now), PENDING),  # activated below when the spec opens it
                    )
                    changes.append(f"account {spec.account}: created (tariff {spec.tariff}, area {spec.area!r})"
                                   + ("" if opens else ", pending: no opening balance"))
                else:
                    fields = {"customer": spec.customer, "area": spec.area, "tariff": spec.tariff,
                              "protected": int(spec.protected), "thresholds": thresholds}
                    diff = {k: (row[k], v) for k, v in fields.items() if row[k] != v}
                    if diff:
                        conn.execute(
                            "UPDATE accounts SET " + ", ".join(f"{k} = ?" for k in diff) + " WHERE account = ?",
                            (*(v for _, v in diff.values()), spec.account),
                        )
                        changes.append(f"account {spec.account}: " + ", ".join(
                            f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items()))
                        if "protected" in diff:
                            found = conn.execute(f"SELECT {_OVERRIDE_COLUMNS} FROM protection_overrides "
                                                 "WHERE account = ?", (spec.account,)).fetchone()
                            if found is not None:
                                conn.execute("DELETE FROM protection_overrides WHERE account = ?", (spec.account,))
                                changes.append(_superseded(_override(tuple(found)), spec.protected, actor))
                current = {r["meter"]: r for r in conn.execute(
                    "SELECT meter, multiplier FROM account_meters WHERE account = ?", (spec.account,))}
                for meter, multiplier in spec.meters.items():
                    owner = conn.execute("SELECT account, multiplier FROM account_meters WHERE meter = ?",
                                         (meter,)).fetchone()
                    if owner is None:
                        conn.execute("INSERT INTO account_meters (meter, account, multiplier) VALUES (?, ?, ?)",
                                     (meter, spec.account, str(multiplier)))
                        changes.append(f"account {spec.account}: meter {meter} assigned (×{multiplier})")
                    elif owner["account"] != spec.account or Decimal(owner["multiplier"]) != multiplier:
                        conn.execute("UPDATE account_meters SET account = ?, multiplier = ? WHERE meter = ?",
                                     (spec.account, str(multiplier), meter))
                        changes.append(f"account {spec.account}: meter {meter} moved from {owner['account']} "
                                       f"(×{owner['multiplier']} -> ×{multiplier})")
                for meter in set(current) - set(spec.meters):
                    conn.execute("DELETE FROM account_meters WHERE meter = ?", (meter,))
                    changes.append(f"account {spec.account}: meter {meter} unassigned")
                if opens:
                    fen = 0 if spec.opening_balance is None else to_fen(
                        spec.opening_balance, what=f"account {spec.account}: opening balance")
                    changes += self._open(conn, spec.account, fen, spec.opening_ref, actor=actor, now=now)[1]
            for line in changes:
                self._audit(conn, now, actor, "account", line.split(":", 1)[0].split()[1], {"change": line})
        return changes

    def _upsert_accounts_pg(self, conn: sqlite3.Connection, specs: list[AccountSpec], *, actor: str,
                            now: datetime) -> list[str]:
        """:meth:`upsert_accounts` on PostgreSQL in a few statements, not several per account: what
        the specs touch is read at once, the specs are applied in order to that copy by the rules of
        the SQLite path (the same lines, the same audit lines in the same order, a meter taken by a
        later spec from an earlier one), and the result is written as batches: accounts, meter
        assignments, the opening balances (:meth:`_apply_pg`), the audit lines."""
        if not specs:
            return []
        names = list({spec.account for spec in specs})
        meters_named = list({meter for spec in specs for meter in spec.meters})
        # account -> its row: [customer, area, tariff, protected, thresholds, state, held, alarmed_ts, opened_ts]
        rows: dict[str, list[Any]] = {r[0]: list(r[1:]) for r in conn.execute(
            "SELECT account, customer, area, tariff, protected, thresholds, state, held, alarmed_ts, opened_ts "
            "FROM accounts WHERE account = ANY(?::text[])", (names,))}
        created: set[str] = set()
        touched: set[str] = set()  # existing accounts whose row changes
        assigned: dict[str, tuple[str, str] | None] = {}  # meter -> (account, multiplier text); None: unassigned
        meters_of: dict[str, set[str]] = {}  # account -> its meters
        for meter, account, multiplier in conn.execute(
                "SELECT meter, account, multiplier FROM account_meters WHERE meter = ANY(?::text[]) "
                "OR account = ANY(?::text[])", (meters_named, names)):
            assigned[meter] = (account, multiplier)
            meters_of.setdefault(account, set()).add(meter)
        stored = set(assigned)  # the meters with a row now
        moved_meters: set[str] = set()
        keys = [OPENING_PREFIX + spec.account for spec in specs if spec.opening_balance is not None or spec.activate]
        openings: dict[str, tuple[int, int, str]] = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT key, amount_fen, recorded_ts, actor FROM ledger WHERE key = ANY(?::text[])", (keys,))} if keys else {}
        new_entries: list[tuple[LedgerEntry, int]] = []
        audits: list[tuple[Any, ...]] = []
        changes: list[str] = []
        overrides = {o.account: o for o in map(_override, conn.execute(
            f"SELECT {_OVERRIDE_COLUMNS} FROM protection_overrides WHERE account = ANY(?::text[])", (names,)))}
        superseded: list[str] = []
        fields = ("customer", "area", "tariff", "protected", "thresholds")
        for spec in specs:
            account = spec.account
            thresholds = json.dumps(dict(sorted(spec.thresholds.items())))
            values = (spec.customer, spec.area, spec.tariff, int(spec.protected), thresholds)
            row = rows.get(account)
            opens = spec.opening_balance is not None or spec.activate
            if row is None:
                rows[account] = [*values, PENDING, None, None, to_ms(now)]  # activated below when the spec opens it
                created.add(account)
                changes.append(f"account {account}: created (tariff {spec.tariff}, area {spec.area!r})"
                               + ("" if opens else ", pending: no opening balance"))
            else:
                diff = {k: (row[i], v) for i, (k, v) in enumerate(zip(fields, values)) if row[i] != v}
                if diff:
                    row[:5] = values
                    touched.add(account)
                    changes.append(f"account {account}: " + ", ".join(
                        f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items()))
                    if "protected" in diff and (o := overrides.pop(account, None)) is not None:
                        superseded.append(account)
                        changes.append(_superseded(o, spec.protected, actor))
            current = set(meters_of.get(account, ()))
            for meter, multiplier in spec.meters.items():
                owner = assigned.get(meter)
                if owner is None:
                    changes.append(f"account {account}: meter {meter} assigned (×{multiplier})")
                elif owner[0] != account or Decimal(owner[1]) != multiplier:
                    meters_of[owner[0]].discard(meter)
                    changes.append(f"account {account}: meter {meter} moved from {owner[0]} "
                                   f"(×{owner[1]} -> ×{multiplier})")
                else:
                    continue
                assigned[meter] = (account, str(multiplier))
                meters_of.setdefault(account, set()).add(meter)
                moved_meters.add(meter)
            for meter in current - set(spec.meters):
                assigned[meter] = None
                meters_of[account].discard(meter)
                moved_meters.add(meter)
                changes.append(f"account {account}: meter {meter} unassigned")
            if opens:
                fen = 0 if spec.opening_balance is None else to_fen(
                    spec.opening_balance, what=f"account {account}: opening balance")
                if rows[account][5] == PENDING and account not in created:
                    touched.add(account)  # activated
                changes += self._open_pg(rows[account], openings, new_entries, audits, account, fen,
                                         spec.opening_ref, actor=actor, now=now)
        at = to_ms(now)
        audits += [(at, actor, "account", line.split(":", 1)[0].split()[1], _AUDIT_JSON.encode({"change": line}))
                   for line in changes]  # as _audit_row() writes them
        # New rows are copied (none of them is in the table: read under the write lock); changed
        # rows go as one array per column.
        columns = "customer, area, tariff, protected, thresholds, state, held, alarmed_ts"
        if created:
            _copy(conn, f"COPY accounts (account, {columns}, opened_ts) FROM STDIN", [(a, *rows[a]) for a in created])
        if touched:
            conn.execute(
                f"UPDATE accounts SET ({columns}) = (u.customer, u.area, u.tariff, u.protected, u.thresholds, u.state, "
                "u.held, u.alarmed_ts) FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::bigint[], "
                f"?::text[], ?::text[], ?::text[], ?::bigint[]) AS u(account, {columns}) "
                "WHERE accounts.account = u.account", [list(c) for c in zip(*[(a, *rows[a][:8]) for a in touched])])
        if superseded:
            conn.execute("DELETE FROM protection_overrides WHERE account = ANY(?::text[])", (superseded,))
        gone = [m for m in moved_meters if assigned[m] is None and m in stored]
        if gone:
            conn.execute("DELETE FROM account_meters WHERE meter = ANY(?::text[])", (gone,))
        kept = [(m, *owner) for m in moved_meters if (owner := assigned[m]) is not None]
        if new := [row for row in kept if row[0] not in stored]:
            _copy(conn, "COPY account_meters (meter, account, multiplier) FROM STDIN", new)
        if changed := [list(c) for c in zip(*(row for row in kept if row[0] in stored))]:
            conn.execute(
                "UPDATE account_meters SET account = u.account, multiplier = u.multiplier FROM unnest(?::text[], "
                "?::text[], ?::text[]) AS u(meter, account, multiplier) WHERE account_meters.meter = u.meter", changed)
        if new_entries:
            self._apply_pg(conn, [e for e, _ in new_entries], [fen for _, fen in new_entries], actor=actor, now=now,
                           audit_each=False)
        if audits:
            _copy(conn, _PG_AUDIT_COPY, audits)
        return changes

    def _open_pg(self, row: list[Any], openings: dict[str, tuple[int, int, str]],
                 new_entries: list[tuple[LedgerEntry, int]], audits: list[tuple[Any, ...]], account: str, fen: int,
                 ref: str, *, actor: str, now: datetime) -> list[str]:
        """:meth:`_open` on the copy of :meth:`_upsert_accounts_pg`: the account's ``row`` and the
        opening entries known are updated in place, the entry to add and the audit lines appended."""
        key = OPENING_PREFIX + account
        lines: list[str] = []
        amount = from_fen(fen)
        existing = openings.get(key)
        pending = row[5] == PENDING
        if existing is None and not pending:
            why = (f"account {account}: opening balance {amount} not applied: the account is active (opened "
                   f"{from_ms(row[8]).astimezone(CST):%Y-%m-%d %H:%M} CST) without one; correct its "
                   "balance with an adjustment")
            audits.append(self._audit_row(now, actor, "opening-refused", account,
                                          {"key": key, "amount": amount, "ref": ref, "reason": why}))
            lines.append(why)
        elif existing is None:
            detail = f"opening balance ({actor}{', ' + ref if ref else ''})"
            new_entries.append((LedgerEntry(key=key, account=account, kind=EntryKind.OPENING, amount=amount, at=now,
                                            detail=detail), fen))
            openings[key] = (fen, to_ms(now), actor)
            audits.append(self._audit_row(now, actor, str(EntryKind.OPENING), account,
                                          {"key": key, "amount": amount, "detail": detail, "ref": ref}))
            lines.append(f"account {account}: opening balance {amount} applied")
        elif existing[0] != fen:
            why = (f"account {account}: opening balance {amount} not applied: {from_fen(existing[0])} was "
                   f"applied on {from_ms(existing[1]).astimezone(CST):%Y-%m-%d %H:%M} CST by "
                   f"{existing[2]} (an opening balance is applied once; correct it with an adjustment)")
            audits.append(self._audit_row(now, actor, "opening-duplicate", account,
                                          {"key": key, "amount": amount, "ref": ref, "reason": why}))
            lines.append(why)
        if pending:
            row[5:8] = ["normal", None, None]
            audits.append(self._audit_row(now, actor, "control-state", account,
                                          {"from": PENDING, "to": "normal", "held": None, "reason": "activated",
                                           "ref": ref}))
            lines.append(f"account {account}: activated (was pending)")
        return lines

    def _open(self, conn: sqlite3.Connection, account: str, fen: int, ref: str, *, actor: str,
              now: datetime) -> tuple[bool, list[str]]:
        """Apply the opening balance ``fen`` of ``account`` (once: ``opening:ACCOUNT``) and activate
        the account if it is pending.  Returns (whether anything changed, the lines saying what);
        the ledger entry and the state change are audited here, the lines by the caller."""
        key = OPENING_PREFIX + account
        lines: list[str] = []
        changed = False
        amount = from_fen(fen)
        existing = conn.execute("SELECT amount_fen, recorded_ts, actor FROM ledger WHERE key = ?", (key,)).fetchone()
        row = conn.execute("SELECT state, opened_ts FROM accounts WHERE account = ?", (account,)).fetchone()
        pending = row is not None and row["state"] == PENDING
        if existing is None and not pending:
            why = (f"account {account}: opening balance {amount} not applied: the account is active (opened "
                   f"{from_ms(row['opened_ts']).astimezone(CST):%Y-%m-%d %H:%M} CST) without one; correct its "
                   "balance with an adjustment")
            self._audit(conn, now, actor, "opening-refused", account, {"key": key, "amount": amount, "ref": ref,
                                                                       "reason": why})
            lines.append(why)
        elif existing is None:
            detail = f"opening balance ({actor}{', ' + ref if ref else ''})"
            self._insert_entry(conn, LedgerEntry(key=key, account=account, kind=EntryKind.OPENING, amount=amount,
                                                 at=now, detail=detail), fen, actor, now)
            self._audit(conn, now, actor, str(EntryKind.OPENING), account,
                        {"key": key, "amount": amount, "detail": detail, "ref": ref})
            lines.append(f"account {account}: opening balance {amount} applied")
            changed = True
        elif existing["amount_fen"] != fen:
            why = (f"account {account}: opening balance {amount} not applied: {from_fen(existing['amount_fen'])} was "
                   f"applied on {from_ms(existing['recorded_ts']).astimezone(CST):%Y-%m-%d %H:%M} CST by "
                   f"{existing['actor']} (an opening balance is applied once; correct it with an adjustment)")
            self._audit(conn, now, actor, "opening-duplicate", account, {"key": key, "amount": amount, "ref": ref,
                                                                         "reason": why})
            lines.append(why)
        if pending:
            conn.execute("UPDATE accounts SET state = 'normal', held = NULL, alarmed_ts = NULL WHERE account = ?",
                         (account,))
            self._audit(conn, now, actor, "control-state", account,
                        {"from": PENDING, "to": "normal", "held": None, "reason": "activated", "ref": ref})
            lines.append(f"account {account}: activated (was pending)")
            changed = True
        return changed, lines

    def activate(self, account: str, opening_balance: Decimal | str | None, ref: str, *, actor: str,
                 now: datetime) -> Applied:
        """An operator's (or the billing system's) activation of ``account`` with its opening
        balance (None: 0.00).  ``applied`` is False when nothing changed: the account was active
        with this opening balance already, or another one was applied before (``reason`` says so)."""
        if not ref or not ref.strip():
            raise LedgerError(f"activating account {account}: a reference id is required (--ref)")
        if not actor or not actor.strip():
            raise LedgerError(f"activating account {account}: the operator is required")
        fen = 0 if opening_balance is None else to_fen(opening_balance, what=f"account {account}: opening balance")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE account = ?", (account,)).fetchone() is None:
                raise LedgerError(f"activating account {account}: unknown account")
            changed, lines = self._open(conn, account, fen, ref.strip(), actor=actor, now=now)
            for line in lines:
                self._audit(conn, now, actor, "account", account, {"change": line})
            balance = conn.execute("SELECT balance_fen FROM accounts WHERE account = ?", (account,)).fetchone()[0]
        if changed:
            return Applied(True, from_fen(balance), "; ".join(lines))
        return Applied(False, from_fen(balance), "; ".join(lines) or
                       f"account {account} is active with opening balance {from_fen(fen)} already; nothing changed")

    def opening_balances(self) -> dict[str, Decimal]:
        """account -> the opening balance applied to it (accounts without one are not listed)."""
        # the keys that begin with the prefix, compared byte by byte (PostgreSQL's collation may not)
        key = 'key COLLATE "C"' if self.postgres else "key"
        rows = self._tuples(f"SELECT account, amount_fen FROM ledger WHERE {key} >= ? AND {key} < ?",
                            (OPENING_PREFIX, OPENING_PREFIX[:-1] + chr(ord(OPENING_PREFIX[-1]) + 1)))
        return {account: from_fen(fen) for account, fen in rows}

    def _account(self, row: sqlite3.Row, meters: dict[str, Decimal],
                 override: ProtectionOverride | None = None) -> Account:
        return Account(
            account=row["account"], customer=row["customer"], area=row["area"], tariff=row["tariff"],
            protected=bool(row["protected"]),
            thresholds={} if row["thresholds"] == "{}" else json.loads(row["thresholds"]),
            opened=from_ms(row["opened_ts"]), state=row["state"], held=row["held"],
            balance=from_fen(row["balance_fen"]), meters=meters,
            manual_until=_opt_dt(row["manual_until_ts"]), fixed_through=_opt_dt(row["fixed_through_ts"]),
            alarmed_at=_opt_dt(row["alarmed_ts"]), override=override,
        )

    def account(self, account: str) -> Account | None:
        rows = self._read("SELECT * FROM accounts WHERE account = ?", (account,))
        if not rows:
            return None
        meters = {r["meter"]: Decimal(r["multiplier"]) for r in self._read(
            "SELECT meter, multiplier FROM account_meters WHERE account = ? ORDER BY meter", (account,))}
        found = self._tuples(f"SELECT {_OVERRIDE_COLUMNS} FROM protection_overrides WHERE account = ?", (account,))
        return self._account(rows[0], meters, _override(found[0]) if found else None)

    def _overrides(self) -> dict[str, ProtectionOverride]:
        """Every override stored (a handful: they are made by hand), in force or not."""
        return {o.account: o for o in map(_override, self._tuples(
            f"SELECT {_OVERRIDE_COLUMNS} FROM protection_overrides"))}

    def protection_overrides(self, now: datetime) -> dict[str, ProtectionOverride]:
        """account -> the operator's 保电 override in force at ``now`` (the archive still says what
        it said when the override was made, and its ``until`` has not passed)."""
        overrides = self._overrides()
        if not overrides:
            return {}
        clause, param = self._among("account", list(overrides))
        archive = dict(self._tuples(f"SELECT account, protected FROM accounts WHERE {clause}", (param,)))
        return {a: o for a, o in overrides.items() if a in archive and o.in_force(bool(archive[a]), now)}

    def set_protection(self, account: str, protected: bool, *, reason: str, actor: str, now: datetime,
                       until: datetime | None = None) -> ProtectionChange:
        """An operator sets (``protected``) or releases the 保电 of ``account`` over the archive's
        flag, until ``until`` (None: no end) or until the archive's flag changes (a billing import
        or the config: :meth:`upsert_accounts` drops the override then and says so).  Asking for
        what the archive says ends any override (the archive's flag counts again, with no end);
        asking for what is in force already changes nothing.  Audited either way."""
        if not actor or not actor.strip():
            raise LedgerError(f"protection of account {account}: the operator is required (--operator)")
        if not reason or not reason.strip():
            raise LedgerError(f"protection of account {account}: a reason is required (--reason)")
        if until is not None and until <= now:
            raise LedgerError(f"protection of account {account}: --until {_cst(until)} is not in the future")
        actor, reason = actor.strip(), reason.strip()
        with self._write() as conn:
            row = conn.execute("SELECT protected FROM accounts WHERE account = ?", (account,)).fetchone()
            if row is None:
                raise LedgerError(f"protection of account {account}: unknown account")
            archive = bool(row[0])
            found = conn.execute(f"SELECT {_OVERRIDE_COLUMNS} FROM protection_overrides WHERE account = ?",
                                 (account,)).fetchone()
            old = _override(tuple(found)) if found is not None else None
            if old is not None and not old.in_force(archive, now):
                old = None  # ended (its time passed, or the archive changed): as if it were not there
            detail: dict[str, Any] = {"protected": protected, "archive": archive, "reason": reason,
                                      "until": until, "before": protection_words(
                                          old.protected if old else archive) + (" (override)" if old else "")}
            if protected == archive:
                if found is not None:
                    conn.execute("DELETE FROM protection_overrides WHERE account = ?", (account,))
                if old is None:
                    message = (f"account {account}: {protection_words(protected)} already (the archive's flag); "
                               "nothing changed")
                    self._audit(conn, now, actor, "protection-unchanged", account, detail)
                    return ProtectionChange(account, False, archive, archive, None, message)
                message = (f"account {account}: {protection_words(protected)}: the override by {old.operator} "
                           f"({protection_words(old.protected)} on {_cst(old.at)}) ended; the archive's flag "
                           f"({'on' if archive else 'off'}) counts again")
                self._audit(conn, now, actor, "protection-override-ended", account, detail)
                return ProtectionChange(account, True, archive, archive, None, message)
            new = ProtectionOverride(account, protected, archive, reason, actor, now, until)
            if old is not None and old.until == until:
                message = (f"account {account}: {protection_words(protected)} already, by {old.operator} on "
                           f"{_cst(old.at)} ({old.reason}); nothing changed")
                self._audit(conn, now, actor, "protection-unchanged", account, detail)
                return ProtectionChange(account, False, protected, archive, old, message)
            conn.execute("DELETE FROM protection_overrides WHERE account = ?", (account,))
            conn.execute(f"INSERT INTO protection_overrides ({_OVERRIDE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (account, int(protected), int(archive), reason, actor, to_ms(now), _opt_ms(until)))
            self._audit(conn, now, actor, "protection-override", account, detail)
        ends = f"until {_cst(until)} or " if until is not None else "until "
        message = (f"account {account}: {protection_words(protected)} by {actor} over the archive's flag "
                   f"({'on' if archive else 'off'}), {ends}the billing system or the config changes that flag")
        return ProtectionChange(account, True, protected, archive, new, message)

    def accounts(self, *, area: str | None = None, names: Iterable[str] | None = None,
                 state: str | None = None, after: str | None = None, limit: int | None = None) -> list[Account]:
        """Accounts by name, optionally only an area's, only some names, only one control state, or
        a page (``after`` an account name, at most ``limit``) -- filtered in SQL: a dashboard asking
        for the accounts near trip does not load a district."""
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (("area = ?", area), ("state = ?", state), ("account > ?", after)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT * FROM accounts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY account"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._read(sql, params)
        wanted = None if names is None else set(names)
        rows = [r for r in rows if wanted is None or r["account"] in wanted]
        overrides = self._overrides()
        meters: dict[str, dict[str, Decimal]] = {}
        if not rows:
            return []
        sql = "SELECT meter, account, multiplier FROM account_meters"
        whole = len(where) == 0 and limit is None and wanted is None
        if whole:  # every account: one pass over the table
            found = self._read(sql + " ORDER BY meter")
        else:  # a page or a selection: only its accounts' meters, not a district's
            clause, param = self._among("account", [r["account"] for r in rows])
            found = self._read(f"{sql} WHERE {clause} ORDER BY meter", (param,))
        for m in found:
            meters.setdefault(m["account"], {})[m["meter"]] = Decimal(m["multiplier"])
        return [self._account(r, meters.get(r["account"], {}), overrides.get(r["account"])) for r in rows]

    def charging_view(self) -> dict[str, tuple[str, dict[str, Decimal], datetime, datetime | None]]:
        """account -> (tariff, meters with CT × PT, opened, fixed charges through): what a charging
        pass needs, without the cost of full :class:`Account` objects for a whole district."""
        meters: dict[str, dict[str, Decimal]] = {}
        multipliers = _Memo(Decimal)  # a district has a handful of CT × PT values (keyed by text)
        for meter, account, text in self._tuples("SELECT meter, account, multiplier FROM account_meters"):
            own = meters.get(account)
            if own is None:
                meters[account] = {meter: multipliers[text]}
            else:
                own[meter] = multipliers[text]
        instants = _Memo(from_ms)  # accounts opened or charged together share their instants
        owned = meters.get
        return {account: (tariff, owned(account) or {}, instants[opened], instants[fixed])
                for account, tariff, opened, fixed in self._tuples(
                    "SELECT account, tariff, opened_ts, fixed_through_ts FROM accounts")}

    def policy_rows(self, *, changed_since: int | None, quiet_above: Decimal | None,
                    now: datetime) -> list[tuple[Any, ...]]:
        """What a policy pass looks at, as tuples ``(account, area, protected, thresholds, state,
        held, balance_fen, manual_until_ms, alarmed_ms, meters)`` in account order (``thresholds``
        the overrides' JSON text, ``meters`` a tuple in meter order), without building
        :class:`Account` objects.  ``protected`` is the effective 保电 at ``now``: an operator's
        override in force (:meth:`protection_overrides`), else the archive's flag.

        Never a pending account (the policy leaves those alone).  Every other account not NORMAL
        or with a held trip; and the accounts whose ledger moved after
        ``changed_since`` (all when None), less those that use the site's thresholds and whose
        balance is above ``quiet_above`` (see :func:`meterd.control.policy.quiet_level`; None: keep
        them all)."""
        quiet_fen = None if quiet_above is None else to_fen(quiet_above, what="quiet level")
        typed = "::bigint" if self.postgres else ""  # PostgreSQL cannot tell the type of a NULL parameter
        rows = self._tuples(
            "SELECT account, area, protected, thresholds, state, held, balance_fen, manual_until_ts, alarmed_ts "
            "FROM accounts WHERE state != ?3 AND (state != 'normal' OR held IS NOT NULL "
            f"OR ((?1{typed} IS NULL OR thresholds != '{{}}' OR balance_fen <= ?1) "
            f"    AND (?2{typed} IS NULL OR account IN (SELECT account FROM ledger NOT INDEXED WHERE seq > ?2)))) "
            "ORDER BY account", (quiet_fen, changed_since, PENDING))
        overrides = self.protection_overrides(now)  # a handful, made by hand: patched in, not joined
        if overrides:
            rows = [r if (o := overrides.get(r[0])) is None else (r[0], r[1], int(o.protected), *r[3:])
                    for r in rows]
        meters: dict[str, list[str]] = {}
        sql = "SELECT account, meter FROM account_meters"
        if len(rows) > 5000:
            found = self._tuples(sql + " ORDER BY meter")
        else:
            found = []
            names = [r[0] for r in rows]
            for i in range(0, len(names), 500):
                chunk = names[i:i + 500]
                found += self._tuples(f"{sql} WHERE account IN ({','.join('?' * len(chunk))}) ORDER BY meter", chunk)
            found.sort(key=lambda r: r[1])
        for account, meter in found:
            meters.setdefault(account, []).append(meter)
        return [(*r, tuple(meters.get(r[0], ()))) for r in rows]

    def accounts_by_state(self) -> dict[str, int]:
        """Accounts per control state (only the states that have any)."""
        return self._count_by("accounts", "state")

    def commands_by_state(self) -> dict[str, int]:
        """Relay commands per state (only the states that have any)."""
        return self._count_by("commands", "state")

    def meter_accounts(self) -> dict[str, tuple[str, Decimal]]:
        """meter -> (account, CT × PT) for every assigned meter."""
        return {r["meter"]: (r["account"], Decimal(r["multiplier"]))
                for r in self._read("SELECT meter, account, multiplier FROM account_meters")}

    def set_control_state(self, updates: Iterable[tuple[Any, ...]], *, now: datetime, actor: str = "policy") -> None:
        """(account, new state, held reason[, alarm episode start]) for each account whose control
        state changed; without the fourth item the episode is cleared (the policy begins a new one
        if the account is alarmed)."""
        with self._write() as conn:
            self._set_control_state(conn, updates, now, actor)

    def _set_control_state(self, conn: sqlite3.Connection, updates: Iterable[tuple[Any, ...]], now: datetime,
                           actor: str) -> None:
        if self.postgres:
            self._set_control_state_pg(conn, updates, now, actor)
            return
        for account, state, held, *more in updates:
            alarmed = _opt_ms(more[0]) if more else None
            old = conn.execute("SELECT state, held, alarmed_ts FROM accounts WHERE account = ?", (account,)).fetchone()
            if old is None or (old["state"], old["held"], old["alarmed_ts"]) == (state, held, alarmed):
                continue
            conn.execute("UPDATE accounts SET state = ?, held = ?, alarmed_ts = ? WHERE account = ?",
                         (state, held, alarmed, account))
            detail: dict[str, Any] = {"from": old["state"], "to": state, "held": held}
            if alarmed != old["alarmed_ts"]:
                detail["alarmed_at"] = _opt_dt(alarmed)
            self._audit(conn, now, actor, "control-state", account, detail)

    def _set_control_state_pg(self, conn: sqlite3.Connection, updates: Iterable[tuple[Any, ...]], now: datetime,
                              actor: str) -> None:
        """:meth:`_set_control_state` in a few round trips, not three per account: the old states
        read at once, the changes and their audit lines written as batches."""
        updates = list(updates)
        if not updates:
            return
        old_of = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT account, state, held, alarmed_ts FROM accounts WHERE account = ANY(?::text[])",
            ([u[0] for u in updates],))}
        changes: list[tuple[Any, ...]] = []
        audits: list[tuple[Any, ...]] = []
        for account, state, held, *more in updates:
            alarmed = _opt_ms(more[0]) if more else None
            old = old_of.get(account)
            if old is None or old == (state, held, alarmed):
                continue
            changes.append((state, held, alarmed, account))
            detail: dict[str, Any] = {"from": old[0], "to": state, "held": held}
            if alarmed != old[2]:
                detail["alarmed_at"] = _opt_dt(alarmed)
            audits.append(self._audit_row(now, actor, "control-state", account, detail))
            old_of[account] = (state, held, alarmed)  # an account twice: the second compared with the first
        if changes:
            conn.executemany("UPDATE accounts SET state = ?, held = ?, alarmed_ts = ? WHERE account = ?", changes)
            self._audit_many(conn, audits)

    def record_decisions(self, updates: Iterable[tuple[Any, ...]], requests: Sequence[CommandRequest],
                         *, now: datetime, ttl: timedelta, dry_run: bool = False,
                         actor: str = "policy") -> list[Command]:
        """:meth:`set_control_state` and :meth:`queue_commands` in one transaction: a policy pass's
        new states and the commands they call for are stored together (a crash between the two
        cannot leave an account tripped on paper with no trip queued), with one wait for the
        disk instead of two."""
        with self._write() as conn:
            self._set_control_state(conn, updates, now, actor)
            created = self._queue(conn, requests, now, ttl, dry_run)
        return self._read_commands(created)

    def set_manual_until(self, account: str, until: datetime | None, *, now: datetime, actor: str,
                         reason: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE accounts SET manual_until_ts = ? WHERE account = ?", (_opt_ms(until), account))
            self._audit(conn, now, actor, "manual-hold", account, {"until": until, "reason": reason})

    # --- ledger --------------------------------------------------------------------------------

    def _insert_entry(self, conn: sqlite3.Connection, entry: LedgerEntry, fen: int, actor: str,
                      now: datetime) -> int | None:
        sql = ("INSERT OR IGNORE INTO ledger (key, account, kind, amount_fen, ts, recorded_ts, actor, detail, meter, "
               "rate, kwh, price, period_start_ts, period_end_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        params = (entry.key, entry.account, str(entry.kind), fen, to_ms(entry.at), to_ms(now), actor, entry.detail,
                  entry.meter, None if entry.rate is None else str(entry.rate),
                  None if entry.kwh is None else str(entry.kwh), None if entry.price is None else str(entry.price),
                  _opt_ms(entry.period_start), _opt_ms(entry.period_end))
        if self.postgres:  # the seq from RETURNING: lastval() would cost a savepoint and two round trips
            row = conn.execute(sql + " RETURNING seq", params).fetchone()
            if row is None:
                return None
            seq: int | None = row[0]
            try:  # in NUMERIC, checked before the BIGINT sum is computed: nothing overflows
                moved = conn.execute(f"UPDATE accounts SET balance_fen = balance_fen + ?1, last_seq = ?2 "
                                     f"WHERE account = ?3 AND {_pg_room('balance_fen::numeric + ?1')}",
                                     (fen, seq, entry.account))
            except Exception as exc:
                if not _out_of_range(exc):
                    raise
                raise LedgerError(f"ledger entry {entry.key}: {from_fen(fen)} would take account {entry.account} "
                                  f"beyond ±{from_fen(BALANCE_LIMIT_FEN)} yuan; refused") from None
        else:
            cur = conn.execute(sql, params)
            if cur.rowcount != 1:
                return None
            seq = cur.lastrowid
            moved = conn.execute(f"UPDATE accounts SET balance_fen = balance_fen + ?1, last_seq = ?2 WHERE account = ?3 "
                                 f"AND {_balance_room('balance_fen + ?1')}", (fen, seq, entry.account))
        if moved.rowcount != 1:  # the caller's transaction is rolled back: the entry does not stay
            row = conn.execute("SELECT balance_fen FROM accounts WHERE account = ?", (entry.account,)).fetchone()
            now_at = "unknown account" if row is None else f"balance {from_fen(row[0])}"
            raise LedgerError(f"ledger entry {entry.key}: {from_fen(fen)} would take account {entry.account} "
                              f"({now_at}) beyond ±{from_fen(BALANCE_LIMIT_FEN)} yuan; refused")
        return seq

    def apply(self, entries: Sequence[LedgerEntry], *, actor: str, now: datetime,
              audit_each: bool = True) -> list[LedgerEntry]:
        """Append ``entries`` in one transaction; those whose key is already in the ledger are skipped.
        Returns the entries that were applied.  Every entry's account must exist."""
        applied: list[LedgerEntry] = []
        fens = [to_fen(e.amount, what=f"ledger entry {e.key}: amount") for e in entries]
        if self.postgres:
            if not entries:
                return applied
            with self._write() as conn:
                return self._apply_pg(conn, entries, fens, actor=actor, now=now, audit_each=audit_each)
        with self._write() as conn:
            known = {r[0] for r in conn.execute("SELECT account FROM accounts")} if entries else set()
            for entry, fen in zip(entries, fens):
                if entry.account not in known:
                    raise LedgerError(f"ledger entry {entry.key}: unknown account {entry.account}")
                if self._insert_entry(conn, entry, fen, actor, now) is not None:
                    applied.append(entry)
                    if audit_each:
                        self._audit(conn, now, actor, str(entry.kind), entry.account,
                                    {"key": entry.key, "amount": entry.amount, "detail": entry.detail})
        return applied

    def _apply_pg(self, conn: sqlite3.Connection, entries: Sequence[LedgerEntry], fens: Sequence[int], *,
                  actor: str, now: datetime, audit_each: bool) -> list[LedgerEntry]:
        """:meth:`apply` on PostgreSQL in a few statements whatever the number of entries, not two or
        three per entry (see :data:`_PG_APPLY`; the audit lines of the entries taken copied in
        order): the same entries applied, the same refusals (the first entry in order that SQLite's
        one-by-one path would refuse is the one named).  Once per transaction (its temporary table)."""
        text = _Memo(str, _ENUM_TEXT)
        ms = _Memo(to_ms)
        conn.execute(_PG_APPLY_STAGE)
        _copy(conn, _PG_APPLY_COPY, [
            (e.key, e.account, text[e.kind], fen, ms[e.at], e.detail, e.meter, text[e.rate],
             None if e.kwh is None else str(e.kwh), None if e.price is None else str(e.price), ms[e.period_start],
             ms[e.period_end]) for e, fen in zip(entries, fens)])
        try:
            keys, first_seq, moved, moving, unknown = conn.execute(_PG_APPLY, (to_ms(now), actor)).fetchone()
        except Exception as exc:
            if not _out_of_range(exc):
                raise
            raise LedgerError(f"ledger entries refused: a balance would leave the range of "
                              f"±{from_fen(BALANCE_LIMIT_FEN)} yuan") from None
        refusals: list[tuple[int, str]] = []  # (index of the entry, why): SQLite stops at the first
        if unknown:
            missing = set(unknown)
            i = next(i for i, e in enumerate(entries) if e.account in missing)
            refusals.append((i, f"ledger entry {entries[i].key}: unknown account {entries[i].account}"))
        if moved != moving:
            row = conn.execute(_PG_APPLY_OUT_OF_RANGE, (first_seq,)).fetchone()
            if row is not None:
                key, account, fen, before = row
                i = next(i for i, e in enumerate(entries) if e.key == key)
                why = (f"ledger entry {key}: {from_fen(fen)} would take account {account} (balance "
                       f"{from_fen(int(before))}) beyond ±{from_fen(BALANCE_LIMIT_FEN)} yuan; refused")
                refusals.append((i, why))
        if refusals:  # the caller's transaction is rolled back: nothing stays
            raise LedgerError(min(refusals)[1])
        taken = set(keys or ())
        applied = []
        for e in entries:
            if e.key in taken:
                taken.discard(e.key)  # a key given twice: its first entry went in
                applied.append(e)
        if audit_each and applied:
            at = to_ms(now)
            _copy(conn, _PG_AUDIT_COPY, [
                (at, actor, text[e.kind], e.account, _AUDIT_JSON.encode({"key": e.key, "amount": e.amount,
                                                                         "detail": e.detail})) for e in applied])
        return applied

    def _money_entry(self, kind: EntryKind, account: str, amount: Decimal | str, key: str, *, actor: str,
                     now: datetime, detail: str, positive: bool) -> Applied:
        if not key or not str(key).strip():
            raise LedgerError(f"{kind} for account {account}: a reference id is required")
        fen = to_fen(amount, what=f"{kind} {key}: amount")  # text: the amount grammar
        if positive and isinstance(amount, str) and amount[:1] in "+-":
            raise LedgerError(f"{kind} {key}: amount {amount!r} refused: a payment takes no sign")
        if positive and fen <= 0:
            raise LedgerError(f"{kind} {key}: amount {amount} must be positive")
        if not positive and fen == 0:
            raise LedgerError(f"{kind} {key}: amount must not be zero")
        entry = LedgerEntry(key=f"{kind}:{key}", account=account, kind=kind, amount=from_fen(fen), at=now,
                            detail=detail)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE account = ?", (account,)).fetchone() is None:
                raise LedgerError(f"{kind} {key}: unknown account {account}")
            existing = conn.execute("SELECT account, amount_fen, recorded_ts FROM ledger WHERE key = ?",
                                    (entry.key,)).fetchone()
            if existing is not None:
                balance = conn.execute("SELECT balance_fen FROM accounts WHERE account = ?", (account,)).fetchone()
                same = existing["account"] == account and existing["amount_fen"] == fen
                why = (f"{kind} {key} was already applied on {from_ms(existing['recorded_ts']).isoformat()}"
                       + ("; nothing changed" if same else
                          f" to account {existing['account']} for {from_fen(existing['amount_fen'])}; "
                          f"this differing duplicate was ignored"))
                self._audit(conn, now, actor, f"{kind}-duplicate", account, {"key": key, "amount": amount,
                                                                              "reason": why})
                return Applied(False, from_fen(balance["balance_fen"]), why)
            seq = self._insert_entry(conn, entry, fen, actor, now)
            self._audit(conn, now, actor, str(kind), account, {"key": key, "amount": entry.amount, "detail": detail})
            balance = conn.execute("SELECT balance_fen FROM accounts WHERE account = ?", (account,)).fetchone()
        return Applied(True, from_fen(balance["balance_fen"]), seq=seq)

    def pay(self, account: str, amount: Decimal | str, ref: str, *, actor: str, now: datetime,
            detail: str = "") -> Applied:
        """A payment (counter, billing import).  ``ref`` is the payment id: a second payment with the
        same id applies nothing and says when the first was applied."""
        return self._money_entry(EntryKind.PAYMENT, account, amount, ref, actor=actor, now=now,
                                 detail=detail or f"payment {ref}", positive=True)

    def adjust(self, account: str, amount: Decimal | str, ref: str, *, actor: str, now: datetime,
               reason: str) -> Applied:
        """A signed adjustment (credit or debit) with its id and reason."""
        if not reason or not reason.strip():
            raise LedgerError(f"adjustment {ref}: a reason is required")
        return self._money_entry(EntryKind.ADJUSTMENT, account, amount, ref, actor=actor, now=now,
                                 detail=reason, positive=False)

    def balance(self, account: str) -> Decimal:
        rows = self._read("SELECT balance_fen FROM accounts WHERE account = ?", (account,))
        if not rows:
            raise LedgerError(f"unknown account {account}")
        return from_fen(rows[0][0])

    def ledger(self, account: str, *, since: datetime | None = None, limit: int | None = None) -> list[LedgerRow]:
        sql = "SELECT * FROM ledger WHERE account = ?"
        params: list[Any] = [account]
        if since is not None:
            sql += " AND ts >= ?"
            params.append(to_ms(since))
        sql += " ORDER BY seq"
        if limit is not None:
            sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT ?) AS last ORDER BY seq"
            params.append(limit)
        return [_ledger_row(r) for r in self._read(sql, params)]

    def ledger_page(self, account: str, *, kind: EntryKind | str | None = None, before: int | None = None,
                    limit: int = 50) -> list[tuple[LedgerRow, Decimal]]:
        """A page of ``account``'s ledger, newest first: at most ``limit`` entries (of ``kind`` only,
        if given) with ``seq`` below ``before``, each with the account's balance just after it --
        from the whole ledger, whatever ``kind`` is asked for.  Two reads, whatever the page size:
        the entries, then the movements between the page's newest and oldest entry with the sum up
        to the newest."""
        sql = "SELECT * FROM ledger WHERE account = ?"
        params: list[Any] = [account]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(str(kind))
        if before is not None:
            sql += " AND seq < ?"
            params.append(before)
        rows = [_ledger_row(r) for r in self._read(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))]
        if not rows:
            return []
        top, bottom = rows[0].seq, rows[-1].seq
        (total,) = self._read("SELECT COALESCE(SUM(amount_fen), 0) FROM ledger WHERE account = ? AND seq <= ?",
                              (account, top))[0]
        running = int(total)
        after: dict[int, int] = {}
        for seq, fen in self._read("SELECT seq, amount_fen FROM ledger WHERE account = ? AND seq <= ? AND seq >= ?"
                                   " ORDER BY seq DESC", (account, top, bottom)):
            after[seq] = running
            running -= int(fen)
        return [(r, from_fen(after[r.seq])) for r in rows]

    def balance_movements(self, account: str, since: datetime) -> tuple[Decimal, list[tuple[datetime, Decimal]]]:
        """``account``'s balance from the entries stamped before ``since``, and each entry from
        ``since`` on as (its time, its amount), in ledger order: the balance over a period."""
        cut = to_ms(since)
        (opening,) = self._read("SELECT COALESCE(SUM(amount_fen), 0) FROM ledger WHERE account = ? AND ts < ?",
                                (account, cut))[0]
        moves = [(from_ms(ts), from_fen(fen)) for ts, fen in self._read(
            "SELECT ts, amount_fen FROM ledger WHERE account = ? AND ts >= ? ORDER BY ts, seq", (account, cut))]
        return from_fen(int(opening)), moves

    def latest_price(self, account: str) -> Decimal | None:
        """The price (yuan per kWh) of ``account``'s newest energy charge; None without one, or if
        it was not above zero."""
        rows = self._read("SELECT price FROM ledger WHERE account = ? AND price IS NOT NULL AND kwh IS NOT NULL"
                          " ORDER BY seq DESC LIMIT 1", (account,))
        if not rows or not rows[0][0]:
            return None
        price = Decimal(rows[0][0])
        return price if price > 0 else None

    def verify_balances(self) -> list[str]:
        """Accounts whose kept balance differs from the sum of their ledger, or is not an integer
        number of fen within ±BALANCE_LIMIT_FEN (should be none).  SQLite sums; should a sum
        overflow int64 (SQLite's SUM raises then, it never rounds), Python sums again, exactly."""
        try:
            if self.postgres:  # SUM(bigint) is NUMERIC: exact, never overflows; a BIGINT is never REAL
                rows = [(a, b, int(t)) for a, b, t in self._read(
                    "SELECT a.account, a.balance_fen, COALESCE(SUM(l.amount_fen), 0) FROM accounts a "
                    "LEFT JOIN ledger l ON l.account = a.account GROUP BY a.account "
                    "HAVING a.balance_fen != COALESCE(SUM(l.amount_fen), 0) "
                    f"OR NOT {_pg_room('a.balance_fen')}")]
            else:
                rows = [tuple(r) for r in self._read(
                    "SELECT a.account, a.balance_fen, COALESCE(SUM(l.amount_fen), 0) AS total FROM accounts a "
                    "LEFT JOIN ledger l ON l.account = a.account GROUP BY a.account "
                    f"HAVING a.balance_fen != total OR NOT {_balance_room('a.balance_fen')}")]
        except sqlite3.OperationalError as exc:
            if "overflow" not in str(exc):
                raise
            totals: dict[str, int] = {}
            for account, fen in self._tuples("SELECT account, amount_fen FROM ledger"):
                totals[account] = totals.get(account, 0) + fen
            rows = [(a, b, totals.get(a, 0)) for a, b in self._tuples("SELECT account, balance_fen FROM accounts")
                    if type(b) is not int or b != totals.get(a, 0) or abs(b) > BALANCE_LIMIT_FEN]
        out = []
        for account, balance, total in rows:
            kept = f"{from_fen(balance)}" if type(balance) is int else f"{balance!r} (not an integer of fen)"
            out.append(f"account {account}: balance {kept} but ledger sums to {from_fen(int(total))}"
                       if balance != total else f"account {account}: balance {kept} is out of range")
        return out

    def last_seq(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM ledger")[0][0])

    def accounts_changed_since(self, seq: int) -> set[str]:
        return {r[0] for r in self._read("SELECT DISTINCT account FROM ledger NOT INDEXED WHERE seq > ?", (seq,))}

    def average_daily_cost(self, now: datetime, *, days: int = 30) -> dict[str, Decimal]:
        """Per account: charges (energy and fixed) over the last ``days`` days ÷ days, as a cost ≥ 0."""
        since = to_ms(now - timedelta(days=days))
        rows = self._read(
            "SELECT account, -SUM(amount_fen) FROM ledger WHERE kind IN ('charge', 'fixed') AND ts >= ? "
            "GROUP BY account", (since,))
        return {r[0]: (from_fen(int(r[1])) / days).quantize(Decimal("0.01")) for r in rows}

    # --- charging state ------------------------------------------------------------------------

    def cursors(self, meters: Iterable[str] | None = None) -> dict[tuple[str, Rate], tuple[datetime, Decimal]]:
        return {(meter, rate): (at, value) for meter, rate, at, value in self.cursor_rows(meters)}

    def cursor_rows(self, meters: Iterable[str] | None = None) -> list[Cursor]:
        """:meth:`cursors` as rows ``(meter, rate, at, value)``, for a district's pass: built as
        :class:`~meterd.control.charging.Cursor` tuples straight away (charging needs them so)."""
        wanted = None if meters is None else list(meters)
        sql = "SELECT meter, rate, ts, value FROM cursors"
        if wanted is None or len(wanted) > 5000:  # a district: one scan beats thousands of lookups
            rows = self._tuples(sql)
            if wanted is not None:
                keep = set(wanted)
                rows = [r for r in rows if r[0] in keep]
        else:
            rows = []
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                rows += self._tuples(f"{sql} WHERE meter IN ({','.join('?' * len(chunk))})", chunk)
        rates = _Memo(Rate, _RATES)
        instants = _Memo(from_ms)  # the cursors of one round share their instant
        make = tuple.__new__  # make(Cursor, ...) is Cursor(...) without a named tuple's Python-level __new__
        return [make(Cursor, (meter, rates[rate], instants[ts], Decimal(value))) for meter, rate, ts, value in rows]

    def cursor_map(self, meters: Iterable[str] | None = None) -> dict[tuple[str, Rate], Cursor]:
        """:meth:`cursor_rows` as the mapping charging reads, ``(meter, rate) -> cursor``: one
        mapping for a whole district's pass."""
        return {(c[0], c[1]): c for c in self.cursor_rows(meters)}

    def tier_usage(self) -> dict[tuple[str, str], Decimal]:
        return {(account, period): Decimal(kwh)
                for account, period, kwh in self._tuples("SELECT account, period, kwh FROM tier_usage")}

    def commit_charging(
        self,
        entries: Sequence[LedgerEntry],
        cursors: Iterable[tuple[str, Rate, datetime, Decimal]],
        usage: Iterable[tuple[str, str, Decimal]],
        flags: Iterable[tuple[str, Rate, datetime, str, str]],
        fixed_through: Mapping[str, datetime],
        *,
        now: datetime,
        actor: str = "charging",
    ) -> int:
        """One charging pass, all or nothing: entries (duplicates skipped), advanced cursors, tier
        usage, flags and fixed-charge watermarks.  Returns the number of entries applied.  The pass
        is audited as one line (entries are in the ledger itself, each with actor and time)."""
        with self.charging_batch(now=now, actor=actor) as batch:
            batch.add([entry_fields(e) for e in entries], cursors, usage, flags, fixed_through)
        return batch.applied

    @contextmanager
    def charging_batch(self, *, now: datetime, actor: str = "charging", pipelined: bool = False
                       ) -> Iterator[ChargingBatch]:
        """:meth:`commit_charging` filled in parts, for a district: one transaction (``BEGIN
        IMMEDIATE`` ... ``COMMIT``, rolled back on any error), so a pass is still all or nothing.
        ``pipelined``: written by a thread while the caller computes the next part.  Nothing else
        may use the store until the block ends.  The COMMIT does not wait for the disk (see
        :meth:`_write`'s ``redoable``): a pass lost to a power cut loses its cursors with its
        entries, and the next pass charges the same energy again, once."""
        with self._write(redoable=True) as conn:
            if self.postgres:  # the same bargain as redoable on SQLite: the COMMIT does not wait for the disk
                conn.execute("SET LOCAL synchronous_commit = off")
            batch = ChargingBatch(conn, now, actor, pipelined=pipelined, postgres=self.postgres)
            try:
                yield batch
                batch._finish()
            finally:
                batch._stop(abort=True)  # after an error: the writer is gone before the ROLLBACK
            if batch.applied:
                self._audit(conn, now, actor, "charge", "*", batch.summary)

    def charge_flags(self, *, meter: str | None = None, limit: int = 100) -> list[tuple[str, str, datetime, str, str]]:
        sql, params = "SELECT * FROM charge_flags", []
        if meter is not None:
            sql += " WHERE meter = ?"
            params.append(meter)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [(r["meter"], r["rate"], from_ms(r["ts"]), r["kind"], r["detail"]) for r in rows]

    # --- meter replacements ----------------------------------------------------------------------

    def record_replacement(self, key: str, account: str, old_meter: str, new_meter: str, at: datetime,
                           old_final: Mapping[Rate, Decimal], new_initial: Mapping[Rate, Decimal],
                           multiplier: Decimal, *, actor: str, now: datetime) -> bool:
        """A meter swapped on an account: the old meter's final and the new meter's initial register
        values (primary kWh), charged by the next pass.  The new meter takes the old one's place on
        the account.  Returns False (nothing changed) for a key already recorded."""
        if not key.strip():
            raise LedgerError("a meter replacement needs an id (--ref)")
        if not old_final or not new_initial:
            raise LedgerError(f"replacement {key}: the old meter's final and the new meter's initial values "
                              "are both needed")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM replacements WHERE key = ?", (key,)).fetchone():
                return False
            owner = conn.execute("SELECT account FROM account_meters WHERE meter = ?", (old_meter,)).fetchone()
            if owner is None or owner[0] != account:
                raise LedgerError(f"replacement {key}: meter {old_meter} is not on account {account}")
            taken = conn.execute("SELECT account FROM account_meters WHERE meter = ?", (new_meter,)).fetchone()
            if taken is not None:
                raise LedgerError(f"replacement {key}: meter {new_meter} already belongs to account {taken[0]}")
            conn.execute(
                "INSERT INTO replacements (key, account, old_meter, new_meter, ts, old_final, new_initial, actor, "
                "recorded_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, account, old_meter, new_meter, to_ms(at),
                 json.dumps({str(r): str(v) for r, v in old_final.items()}),
                 json.dumps({str(r): str(v) for r, v in new_initial.items()}), actor, to_ms(now)))
            conn.execute("DELETE FROM account_meters WHERE meter = ?", (old_meter,))
            conn.execute("INSERT INTO account_meters (meter, account, multiplier) VALUES (?, ?, ?)",
                         (new_meter, account, str(multiplier)))
            self._audit(conn, now, actor, "meter-replaced", account,
                        {"key": key, "old": old_meter, "new": new_meter, "at": at,
                         "old_final": {str(r): str(v) for r, v in old_final.items()},
                         "new_initial": {str(r): str(v) for r, v in new_initial.items()}})
        return True

    def has_replacement(self, key: str) -> bool:
        return bool(self._read("SELECT 1 FROM replacements WHERE key = ?", (key,)))

    def replacements(self, *, since: datetime) -> list[tuple[str, str, str, str, datetime, dict[Any, Any], dict[Any, Any]]]:
        """(key, account, old, new, at, old_final, new_initial) recorded since ``since``."""
        rows = self._read("SELECT * FROM replacements WHERE recorded_ts >= ? ORDER BY ts", (to_ms(since),))
        return [(r["key"], r["account"], r["old_meter"], r["new_meter"], from_ms(r["ts"]),
                 {Rate(k): Decimal(v) for k, v in json.loads(r["old_final"]).items()},
                 {Rate(k): Decimal(v) for k, v in json.loads(r["new_initial"]).items()}) for r in rows]



def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
