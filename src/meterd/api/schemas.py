"""The API's OpenAPI schemas and the serialisers that turn stored objects into the documents
those schemas describe.

:data:`SCHEMAS` is the ``components/schemas`` part of the OpenAPI document; request bodies are
checked against it (``meterd.api.app``) and responses are built by the ``*_doc`` functions here,
so a document and its schema sit side by side.  Money is a string ("88.50"), times are ISO 8601
with their zone.  Pure: no request, no store, no clock.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from meterd.analytics.anomalies import Event
from meterd.analytics.outages import Outage
from meterd.api.tokens import Role
from meterd.control.command_store import Command
from meterd.control.model import MAX_KEY, MAX_REASON, CommandKind, CommandState
from meterd.control.state import Account, LedgerRow
from meterd.storage.alarms import MAX_NAME
from meterd.storage.sqlite import MeterRecord, encode_value

MANUAL_KINDS: Final = ("trip", "reclose", "reclose-allowed", "alarm", "alarm-release")
COMMAND_STATES: Final = tuple(s.value for s in CommandState)
ACCOUNT_STATES: Final = ("pending", "normal", "reminded", "alarmed", "tripped")

# --- schemas -----------------------------------------------------------------------------------

STR: Final = {"type": "string"}
#: an account name, a meter address or a payment's ref in a request body: a ref is stored with its
#: ledger entry and the audit line (a 60 KB ref used to be stored as it came)
KEY: Final = {"type": "string", "maxLength": MAX_KEY}
#: a token's name is the operator's name in the audit log and on alarms (at most MAX_NAME there too)
TOKEN_NAME: Final = {"type": "string", "maxLength": MAX_NAME}
#: an operator's reason (a command, a cancellation, an adjustment): kept in the command and the audit log
REASON: Final = {"type": "string", "maxLength": MAX_REASON}
OPT_STR: Final = {"type": ["string", "null"]}
TIME: Final = {"type": "string", "format": "date-time"}
OPT_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
MONEY: Final = {"type": "string", "pattern": r"^-?\d+(\.\d{1,2})?$", "description": "yuan, exact"}
PAYMENT_AMOUNT: Final = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,2})?$", "maxLength": 24,
                          "description": "yuan: ASCII digits, at most two decimals, no sign; more than 0 and at "
                                         "most [prepaid] max_payment (default 1000000); else 422"}
ADJUSTMENT_AMOUNT: Final = {"type": "string", "pattern": r"^[+-]?[0-9]+(\.[0-9]{1,2})?$", "maxLength": 24,
                             "description": "yuan: ASCII digits, at most two decimals, negative debits; not 0, at "
                                            "most [prepaid] max_adjustment (default 1000000) either way; else 422"}


def obj(props: dict[str, Any], required: tuple[str, ...] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props if required is None else required),
            **extra}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: Final[dict[str, Any]] = {
    "Error": obj({"error": STR}),
    "Health": obj({"status": {"type": "string", "enum": ["ok"]}}),
    "Readiness": obj({"status": {"type": "string", "enum": ["ready", "not ready"]},
                      "reasons": {"type": "array", "items": STR}}),
    "Reading": obj({"meter": STR, "quantity": STR, "timestamp": TIME, "value": STR,
                     "kind": {"type": "string", "enum": ["decimal", "datetime", "int", "str", "bool"]},
                     "unit": STR, "quality": {"type": "string", "enum": ["good", "suspect", "estimated", "implausible"]}}),
    "Meter": obj({"address": STR, "channel": STR, "protocol": STR, "ct": STR, "pt": STR, "name": STR,
                   "group": STR, "latest": {"type": "object", "additionalProperties": ref("Reading")}}),
    "Readings": obj({"meter": STR, "readings": {"type": "array", "items": ref("Reading")}}),
    "Account": obj({"account": STR, "customer": STR, "area": STR, "tariff": STR,
                     "protected": {"type": "boolean"}, "archive_protected": {"type": "boolean"}, "balance": MONEY,
                     "state": {"type": "string", "enum": list(ACCOUNT_STATES)}, "held": OPT_STR,
                     "meters": {"type": "object", "additionalProperties": STR}, "opened": TIME,
                     "manual_hold_until": OPT_TIME, "alarmed_at": OPT_TIME}),
    "LedgerEntry": obj({"seq": {"type": "integer"}, "key": STR, "kind": STR, "amount": MONEY, "at": TIME,
                         "recorded": TIME, "actor": STR, "detail": STR, "meter": OPT_STR, "rate": OPT_STR,
                         "kwh": OPT_STR, "price": OPT_STR, "balance": MONEY}),
    "Ledger": obj({"account": STR, "balance": MONEY, "entries": {"type": "array", "items": ref("LedgerEntry")}}),
    "Command": obj({"id": {"type": "integer"}, "meter": STR, "account": OPT_STR,
                     "kind": {"type": "string", "enum": [k.value for k in CommandKind]},
                     "state": {"type": "string", "enum": list(COMMAND_STATES)}, "reason": STR,
                     "requested_by": STR, "manual": {"type": "boolean"}, "created": TIME, "expires": TIME,
                     "sent": OPT_TIME, "finished": OPT_TIME, "tries": {"type": "integer"}, "detail": STR,
                     "read_back": {"type": "object", "additionalProperties": {"type": "boolean"}}}),
    "Applied": obj({"applied": {"type": "boolean"}, "balance": MONEY, "reason": STR,
                     "seq": {"type": ["integer", "null"]}}),
    "Anomaly": obj({"id": {"type": "integer"}, "meter": STR, "kind": STR,
                     "severity": STR, "opened": TIME, "last_seen": TIME, "closed": OPT_TIME, "detail": STR,
                     "evidence": {"type": "array", "items": {"type": "object"}}}),
    "Outage": obj({"id": {"type": "integer"}, "unit": STR, "started": TIME, "ended": OPT_TIME,
                    "meters": {"type": "array", "items": STR}, "accounts": {"type": "array", "items": STR}}),
    "Overview": obj({"at": TIME, "day": STR,
                      "timezone": {"type": "string", "description": "the site's zone ([site] timezone), IANA name"},
                      "utc_offset": {"type": "string", "description": "its offset now, e.g. +08:00"},
                      "meters": {"type": "integer"},
                      "meters_with_data_today": {"type": "integer"},
                      "terminals": obj({"total": {"type": "integer"}, "online": {"type": "integer"}}),
                      "collection": obj({"attempts": {"type": "integer"}, "successes": {"type": "integer"},
                                          "no_record": {"type": "integer", "description": "answered 'no record "
                                                        "yet': not due, neither success nor failure"},
                                          "failed": {"type": "integer"},
                                          "success_rate": {"type": ["number", "null"],
                                                           "description": "successes / (attempts - no_record)"},
                                          "target": {"type": "number"}}),
                      "accounts": obj({s: {"type": "integer"} for s in ("total", *ACCOUNT_STATES)}),
                      "commands": {"type": "object", "additionalProperties": {"type": "integer"}},
                      "anomalies_open": {"type": "integer"}, "outages_open": {"type": "integer"},
                      "alarms": obj({"open": {"type": "integer"}, "acknowledged": {"type": "integer"}})}),
    "LineLoss": obj({"unit": STR, "kind": STR, "start": STR, "end": STR, "supply": STR, "sales": STR,
                      "auxiliary": STR, "loss": STR, "rate": OPT_STR, "supply_points": {"type": "integer"},
                      "supply_with_data": {"type": "integer"}, "sales_points": {"type": "integer"},
                      "sales_with_data": {"type": "integer"}, "completeness": STR,
                      "missing": {"type": "array", "items": STR}, "estimated": {"type": "array", "items": STR},
                      "flags": {"type": "array", "items": STR}}),
    "Energy": obj({"start": STR, "end": STR, "key": STR, "kwh": STR}),
    "Curve": obj({"subject": STR, "day": STR, "step_seconds": {"type": "integer"}, "meters": {"type": "array",
                   "items": STR}, "points": {"type": "array", "items": obj(
                       {"at": TIME, "kw": STR, "meters": {"type": "integer"}})}}),
    "Quality": {"type": "object", "required": ["day", "total", "meters", "channels", "areas"],
                "properties": {"day": STR, "total": {"type": "object"}, "meters": {"type": "array"},
                               "channels": {"type": "array"}, "areas": {"type": "array"}}},
    "Terminal": obj({"id": STR, "channel": STR, "kind": {"type": "string", "enum": ["dtu", "mqtt"]},
                      "online": {"type": "boolean"}, "since": OPT_TIME, "meters": {"type": "integer"}}),
    "SyncJob": obj({"job": STR, "kind": STR, "schedule": OPT_STR, "watermark": OPT_STR, "last_run": OPT_TIME,
                     "last_status": OPT_STR, "last_error": OPT_STR, "counts": {"type": "object"},
                     "files_unfinished": {"type": "integer"}, "quarantined_total": {"type": "integer"}}),
    "SyncRun": obj({"job": STR, "kind": STR, "applied": {"type": "integer"}, "duplicates": {"type": "integer"},
                     "quarantined": {"type": "integer"}}),
    "Attempt": obj({"meter": STR, "channel": STR, "item": STR, "timestamp": TIME, "outcome": STR,
                     "latency": {"type": ["number", "null"]}, "detail": STR}),
    "OnDemandRead": obj({"meter": STR, "readings": {"type": "array", "items": ref("Reading")},
                          "attempts": {"type": "array", "items": ref("Attempt")}}),
    "Channel": obj({"name": STR, "stats": {"type": "object"}}),
    "Diagnostics": obj({"channels": {"type": "array", "items": ref("Channel")},
                         "listeners": {"type": "object"}, "spool": {"type": "object"}}),
    "Token": obj({"id": STR, "name": STR, "role": {"type": "string", "enum": [r.value for r in Role]},
                   "created": TIME, "revoked": OPT_TIME}),
    "NewToken": obj({"id": STR, "name": STR, "role": STR, "secret": STR}),
    "ConfigSummary": {"type": "object", "required": ["source", "data_dir", "channels", "meters", "polls"],
                      "properties": {"source": STR, "data_dir": STR, "channels": {"type": "array"},
                                     "meters": {"type": "integer"}, "polls": {"type": "array"},
                                     "tasks": {"type": "array"}, "sections": {"type": "array"}}},
    "ReadRequest": obj({"quantities": {"type": "array", "items": KEY, "minItems": 1, "maxItems": 32}},
                        additionalProperties=False),
    "TokenRequest": obj({"name": TOKEN_NAME, "role": {"type": "string", "enum": [r.value for r in Role]}},
                         additionalProperties=False),
    "CommandRequest": obj({"meter": KEY, "kind": {"type": "string", "enum": list(MANUAL_KINDS)},
                            "reason": REASON}, additionalProperties=False),
    "CancelRequest": obj({"reason": REASON}, additionalProperties=False),
    "PaymentRequest": obj({"account": KEY, "amount": PAYMENT_AMOUNT, "ref": KEY}, additionalProperties=False),
    "AdjustmentRequest": obj({"account": KEY, "amount": ADJUSTMENT_AMOUNT, "ref": KEY, "reason": REASON},
                              additionalProperties=False),
    "ActivationRequest": obj({"opening_balance": {**ADJUSTMENT_AMOUNT, "description": (
        "yuan: ASCII digits, at most two decimals, negative when the customer owes; 0 for none; at most 1000000 "
        "either way; else 422")}, "ref": KEY}, additionalProperties=False),
}


def array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


# --- documents ---------------------------------------------------------------------------------


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def reading_doc(r: Any) -> dict[str, Any]:
    text, kind = encode_value(r.value)
    return {"meter": r.meter, "quantity": r.quantity, "timestamp": r.timestamp.isoformat(), "value": text,
            "kind": kind, "unit": r.unit, "quality": str(r.quality)}


def meter_doc(m: MeterRecord, latest: dict[str, Any]) -> dict[str, Any]:
    return {"address": m.address, "channel": m.channel, "protocol": m.protocol, "ct": str(m.ct), "pt": str(m.pt),
            "name": m.name, "group": m.group, "latest": {q: reading_doc(r) for q, r in latest.items()}}


def account_doc(a: Account, now: datetime) -> dict[str, Any]:
    """``protected`` is the effective 保电 at ``now`` (an operator's override in force, else the
    archive's flag); ``archive_protected`` the billing system's / config's own flag."""
    return {"account": a.account, "customer": a.customer, "area": a.area, "tariff": a.tariff,
            "protected": a.protected_at(now), "archive_protected": a.protected, "balance": str(a.balance), "state": a.state, "held": a.held,
            "meters": {m: str(k) for m, k in a.meters.items()}, "opened": a.opened.isoformat(),
            "manual_hold_until": iso(a.manual_until), "alarmed_at": iso(a.alarmed_at)}


def ledger_doc(r: LedgerRow, balance: Decimal) -> dict[str, Any]:
    return {"seq": r.seq, "key": r.key, "kind": str(r.kind), "amount": str(r.amount), "at": r.at.isoformat(),
            "recorded": r.recorded.isoformat(), "actor": r.actor, "detail": r.detail, "meter": r.meter,
            "rate": r.rate, "kwh": None if r.kwh is None else str(r.kwh),
            "price": None if r.price is None else str(r.price), "balance": str(balance)}


def command_doc(c: Command) -> dict[str, Any]:
    return {"id": c.id, "meter": c.meter, "account": c.account, "kind": c.kind.value, "state": c.state.value,
            "reason": c.reason, "requested_by": c.requested_by, "manual": c.manual,
            "created": c.created.isoformat(), "expires": c.expires.isoformat(), "sent": iso(c.sent),
            "finished": iso(c.finished), "tries": c.tries, "detail": c.detail, "read_back": dict(c.read_back)}


def anomaly_doc(e: Event) -> dict[str, Any]:
    return {"id": e.id, "meter": e.meter, "kind": str(e.kind), "severity": str(e.severity),
            "opened": e.opened.isoformat(), "last_seen": e.last_seen.isoformat(), "closed": iso(e.closed),
            "detail": e.detail, "evidence": [dict(x) for x in e.evidence]}


def outage_doc(o: Outage) -> dict[str, Any]:
    return {"id": o.id, "unit": o.unit, "started": o.started.isoformat(), "ended": iso(o.ended),
            "meters": list(o.meters), "accounts": list(o.accounts)}


def attempt_doc(a: Any) -> dict[str, Any]:
    return {"meter": a.meter, "channel": a.channel, "item": a.item, "timestamp": a.timestamp.isoformat(),
            "outcome": a.outcome, "latency": a.latency, "detail": a.detail}


def job_kind(config: Any, name: str) -> str:
    for job in (config.sync.jobs if config is not None and config.sync else ()):
        if job.name == name:
            return str(getattr(job.kind, "value", job.kind))
    return "unknown"


def config_doc(config: Any) -> dict[str, Any]:
    """What an admin may see of the running config: names, links, counts -- no secrets (the
    loader refuses them inline anyway; environment variable names are shown, never values)."""
    def link(ch: Any) -> dict[str, Any]:
        kind = type(ch.link).__name__.removesuffix("Link").lower()
        doc = {"kind": kind}
        for attr in ("device", "baud", "host", "port", "listener", "terminal"):
            if hasattr(ch.link, attr):
                doc[attr] = getattr(ch.link, attr)
        return doc
    sections = [name for name in ("mqtt", "prepaid", "analytics", "sync", "api") if getattr(config, name, None)]
    return {"source": config.source, "data_dir": str(config.store.data_dir),
            "channels": [{"name": ch.name, "link": link(ch), "meters": len(config.meters_on(ch.name))}
                         for ch in config.channels],
            "meters": len(config.meters),
            "polls": [{"name": p.name, "groups": list(p.groups), "quantities": list(p.quantities)} for p in config.polls],
            "tasks": [getattr(t, "name", str(t)) for t in config.tasks],
            "sections": sections}
