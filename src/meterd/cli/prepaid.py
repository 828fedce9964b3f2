"""Prepaid control from the command line: accounts, payments, adjustments, manual commands, the ledger.

``meterd account list|show``, ``meterd account activate ACCOUNT --opening-balance YUAN --ref ID
--operator NAME``, ``meterd pay ACCOUNT AMOUNT --ref ID``, ``meterd adjust ACCOUNT
AMOUNT --ref ID --reason …``, ``meterd trip|reclose|alarm METER --reason … --operator …``,
``meterd commands [--state …]``, ``meterd cancel ID --reason … --operator …``,
``meterd ledger ACCOUNT``, ``meterd protect ACCOUNT --set|--release --reason … --operator …
[--until TIME]``.

They work on the state database of a config (``-c``) or data directory (``--data-dir``), also
while the daemon runs: a payment made here is seen by the daemon's next policy pass (which
recloses if it lifts the balance), and a manual command queued here is sent by the daemon ahead of
routine reads (``--wait`` follows it to its end).  Money is exact: an amount outside the amount
grammar (:mod:`meterd.control.amounts`: ASCII digits, at most two decimals, a sign only on an
adjustment) or over ``[prepaid] max_payment`` / ``max_adjustment`` (of ``-c``; the defaults
without it), or a payment id already used, is refused with the reason and changes nothing.

Exit codes: 0 done; 2 bad input or refused (nothing written); 1 a command followed with ``--wait``
ended other than confirmed (failed, expired, cancelled, dry-run); 3 (:data:`EXIT_PENDING`) it had
not ended when the wait ran out (still queued: not sent yet; or sent, its read-back not in yet).
Meters are typed as in ``meterd readings``: ``1`` is ``000000000001`` (:func:`address_key`).
Times print in the site's zone with the offset; ``--json`` keeps ISO 8601.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    MAX_COUNT,
    MAX_ID,
    error,
    name_arg,
    parse_time,
    print_json,
    shown,
    site_zone,
    whole_number,
)
from meterd.clock import local_text
from meterd.config.durations import parse_duration
from meterd.errors import ConfigError
from meterd.readings import address_key
from meterd.storage.database import Location

DEFAULT_DATA_DIR = Path("meterd-data")
# ``--wait`` ran out with the command not ended: still queued (the daemon has not sent it: is it
# running, is the meter's channel up?) or sent and not confirmed yet.  Not a failure -- the daemon
# may still send and confirm it -- and not success: the operator looks again (meterd commands).
EXIT_PENDING = 3
WAIT_HELP = ("wait up to S seconds for the command to end and print its outcome; exit 0 confirmed, 1 failed, "
             f"expired or cancelled, {EXIT_PENDING} still queued or sent (not confirmed) when the wait runs out")


MAX_READING_TEXT: Final = 24  # characters of a register value typed to replace-meter (as of an amount)


MAX_WAIT: Final = 86_400  # seconds of --wait: --wait 1e308 (or inf) waited forever on a queued command


def _wait(text: str) -> float:
    """``--wait``: seconds, from 0 to :data:`MAX_WAIT`."""
    try:
        value = float(text) if len(text) <= 24 else math.nan
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT:  # NaN too
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds from 0 to {MAX_WAIT:,}")
    return value


def _reason(text: str) -> str:
    """``--reason``: at most :data:`~meterd.control.model.MAX_REASON` characters, as the API takes."""
    from meterd.control.model import MAX_REASON

    if len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"{len(text)} characters, at most {MAX_REASON}")
    return text


def _where(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="config file (its data directory, tariffs and meters are used)")
    where.add_argument("--data-dir", help=f"data directory (default ./{DEFAULT_DATA_DIR})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("account", help="prepaid accounts: list, show, activate")
    p.add_argument("action", choices=("list", "show", "activate"))
    p.add_argument("account", type=name_arg, nargs="?", help="the account number (show, activate)")
    p.add_argument("--area", help="only this area (list)")
    p.add_argument("--state", help="only accounts in this control state (list): pending, normal, reminded, alarmed, "
                                    "tripped")
    p.add_argument("--opening-balance", metavar="YUAN",
                   help="activate: the balance the account starts with, signed (0 if it has none); applied once")
    p.add_argument("--ref", type=name_arg, help="activate: the work order or reference of the activation")
    p.add_argument("--operator", type=name_arg, help="activate: who activates the account")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=account_cmd)

    p = sub.add_parser("pay", help="record a payment at the counter (applied once per --ref)")
    p.add_argument("account", type=name_arg)
    p.add_argument("amount", help="yuan, e.g. 100 or 88.50 (no sign, at most two decimals)")
    p.add_argument("--ref", type=name_arg, required=True, help="the payment id (receipt number): a second use changes nothing")
    p.add_argument("--operator", type=name_arg, default="counter", help="who took the payment")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=pay_cmd)

    p = sub.add_parser("adjust", help="a signed ledger adjustment with its id and reason")
    p.add_argument("account", type=name_arg)
    p.add_argument("amount", help="yuan, at most two decimals; negative debits, e.g. -12.30")
    p.add_argument("--ref", type=name_arg, required=True, help="the adjustment id")
    p.add_argument("--reason", required=True, type=_reason)
    p.add_argument("--operator", type=name_arg, required=True)
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=adjust_cmd)

    for kind in ("trip", "reclose", "alarm"):
        p = sub.add_parser(kind, help=f"queue a manual {kind} command (sent by the daemon, confirmed by read-back)")
        p.add_argument("meter", type=name_arg)
        p.add_argument("--reason", required=True, type=_reason)
        p.add_argument("--operator", type=name_arg, required=True)
        if kind == "reclose":
            p.add_argument("--direct", action="store_true", help="直接合闸 instead of 合闸允许 (customer presses)")
        if kind == "alarm":
            p.add_argument("--release", action="store_true", help="release the alarm instead")
        p.add_argument("--wait", type=_wait, default=0.0, metavar="S", help=WAIT_HELP)
        p.add_argument("--json", action="store_true")
        _where(p)
        p.set_defaults(func=command_cmd, kind=kind)

    p = sub.add_parser("protect", help="set or release an account's 保电 over the archive's flag (audited)",
                       description="An operator's override of the 保电 (protection) flag that the config or the "
                                   "billing system gives an account: a protected account is never tripped, "
                                   "automatically or by hand.  In force until --until, or until the archive's "
                                   "own flag for the account changes (a new value from the billing import or the "
                                   "config supersedes the override).  Asking for what the archive says ends the "
                                   "override.  The daemon's next policy pass uses it.")
    p.add_argument("account", type=name_arg)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--set", dest="protect", action="store_true", help="protect the account (保电)")
    which.add_argument("--release", dest="protect", action="store_false", help="release its protection (保电解除)")
    p.add_argument("--reason", required=True, type=_reason)
    p.add_argument("--operator", type=name_arg, required=True)
    p.add_argument("--until", metavar="TIME",
                   help="when the override ends: a duration from now (8h, 2d) or a time (2026-12-09 08:00 in the "
                        "site's zone, or ISO 8601 with an offset); default: until the archive's flag changes")
    p.add_argument("--meters", action="store_true",
                   help="also queue the meters' own 保电 / 保电解除 commands (confirmed by read-back); not with "
                        "--until, which the meters cannot keep")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=protect_cmd)

    p = sub.add_parser("commands", help="the command queue and history")
    p.add_argument("--state", choices=("queued", "sent", "confirmed", "failed", "expired", "cancelled", "dry-run"))
    p.add_argument("--meter", type=name_arg, help="only this meter's (1 is 000000000001)")
    p.add_argument("--limit", type=whole_number(1, MAX_COUNT), default=50)
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=commands_cmd)

    p = sub.add_parser("cancel", help="cancel a queued command")
    p.add_argument("id", type=whole_number(1, MAX_ID))
    p.add_argument("--reason", required=True, type=_reason)
    p.add_argument("--operator", type=name_arg, required=True)
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=cancel_cmd)

    p = sub.add_parser("replace-meter", help="record a meter swap: old meter's final and new meter's initial registers")
    p.add_argument("account", type=name_arg)
    p.add_argument("old_meter", type=name_arg)
    p.add_argument("new_meter", type=name_arg)
    p.add_argument("--old-final", required=True, metavar="KWH",
                   help="the old meter's final register as displayed, e.g. 1234.56 or total=1234.56,peak=400.1")
    p.add_argument("--new-initial", required=True, metavar="KWH", help="the new meter's initial register")
    p.add_argument("--at", help="when the swap happened (ISO 8601 with zone; default now)")
    p.add_argument("--multiplier", help="CT × PT of the new meter (default: from -c, else the old meter's)")
    p.add_argument("--ref", type=name_arg, required=True, help="the replacement work-order id: a second use changes nothing")
    p.add_argument("--operator", type=name_arg, required=True)
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=replace_cmd)

    p = sub.add_parser("ledger", help="an account's ledger, oldest first, with the running balance")
    p.add_argument("account", type=name_arg)
    p.add_argument("--limit", type=whole_number(1, MAX_COUNT), help="only the last N entries")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=ledger_cmd)


def _context(args: argparse.Namespace) -> tuple[Location, Any]:
    if getattr(args, "config", None):
        from meterd.cli.common import load_site_config

        config = load_site_config(args.config)
        return config.store.state, config
    return (Path(args.data_dir) if getattr(args, "data_dir", None) else DEFAULT_DATA_DIR), None


def _store(args: argparse.Namespace, context: tuple[Location, Any] | None = None):
    from meterd.control.state import ControlStore

    where, config = context or _context(args)
    if config is None and isinstance(where, Path) and not where.exists():
        raise ConfigError(f"data directory {where} does not exist (use -c site.toml or --data-dir)")
    store = ControlStore(where)
    if config is not None and config.prepaid is not None:
        # The config's accounts, as the daemon writes them at start: usable before it first ran.
        for line in store.upsert_accounts(config.prepaid.accounts, actor="config", now=_now()):
            if "supersedes the operator's override" in line:  # a protected flag changed in the config
                error(f"note: config {args.config}: {line}")
    return store, config


def _zone(store: Any, config: Any) -> tzinfo:
    """The site's zone for ``store``'s times: the config's, else the one its state database records."""
    return site_zone(config, store.database if store.database is not None else store.path.parent)


def _now() -> datetime:
    return datetime.now(UTC)


def _guard(func):
    def wrapper(args: argparse.Namespace) -> int:
        from meterd.control.amounts import AmountError
        from meterd.errors import LedgerError

        try:
            return func(args)
        except ConfigError as exc:
            error(str(exc))
            return EXIT_BAD_INPUT
        except (LedgerError, AmountError) as exc:
            error(str(exc))
            return EXIT_BAD_INPUT
    wrapper.__name__ = func.__name__
    return wrapper


def _remaining_kwh(config: Any, account: Any, now: datetime) -> Decimal | None:
    """Remaining energy for display and IC-card style meters: balance ÷ current price."""
    if config is None or config.prepaid is None or account.balance <= 0:
        return None
    tariff = config.prepaid.tariffs.get(account.tariff)
    if tariff is None:
        return None
    price = tariff.current_price(now)
    if not price:
        return None
    return (account.balance / price).quantize(Decimal("0.01"))


def _local(at: datetime | None, zone: tzinfo) -> str:
    """A time for people: in the site's zone with its offset, to the second ('' for none)."""
    return "" if at is None else local_text(at, zone)


def _override_doc(o: Any) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"protected": o.protected, "operator": o.operator, "reason": o.reason, "at": o.at.isoformat(),
            "until": o.until.isoformat() if o.until else None}


def _account_doc(store: Any, config: Any, a: Any, now: datetime) -> dict[str, Any]:
    relays = {}
    for meter in a.meters:
        found = store.relay_state(meter)
        relays[meter] = None if found is None else {"at": found[0].isoformat(), **found[1]}
    return {
        "account": a.account, "customer": a.customer, "area": a.area, "tariff": a.tariff,
        # protected: the effective 保电 (an operator's override in force, else the archive's flag)
        "protected": a.protected_at(now), "archive_protected": a.protected,
        "protection_override": _override_doc(a.protection_override(now)),
        "balance": str(a.balance), "state": a.state, "held": a.held,
        "remaining_kwh": None if (r := _remaining_kwh(config, a, now)) is None else str(r),
        "meters": {m: str(k) for m, k in a.meters.items()}, "relay": relays,
        "thresholds": a.thresholds, "opened": a.opened.isoformat(),
        "manual_hold_until": a.manual_until.isoformat() if a.manual_until else None,
        "alarmed_at": a.alarmed_at.isoformat() if a.alarmed_at else None,
    }


def _protection_text(a: Any, now: datetime, zone: tzinfo) -> str:
    """The effective 保电 in words: yes/no, and the operator's override in force with who, why and until."""
    o = a.protection_override(now)
    if o is None:
        return "yes (保电, from the archive)" if a.protected else "no"
    until = f"until {_local(o.until, zone)} or" if o.until else "until"
    return (f"{'yes' if o.protected else 'no'}: 保电 {'set' if o.protected else 'released'} by {o.operator} on "
            f"{_local(o.at, zone)} ({o.reason}), {until} the archive's flag changes; the archive says "
            f"{'yes' if a.protected else 'no'}")


# Relay-state flags in words: (when true, when false).
_RELAY_WORDS: dict[str, tuple[str, str]] = {
    "relay.open": ("relay open", "relay closed"),
    "relay.command_open": ("commanded open", "commanded closed"),
    "alarm.pre_trip": ("pre-trip alarm on", "pre-trip alarm off"),
    "relay.protected": ("meter 保电 on", "meter 保电 off"),
}


def _relay_text(found: tuple[datetime, dict[str, Any]] | None, zone: tzinfo) -> str:
    if found is None:
        return "relay not read yet"
    at, flags = found
    parts = []
    for key, value in flags.items():
        words = _RELAY_WORDS.get(key)
        if words is not None and isinstance(value, bool):
            parts.append(words[0] if value else words[1])
        else:
            parts.append(f"{key} {'yes' if value is True else 'no' if value is False else value}")
    # the stored state's time: when these flags were last confirmed (a read-back, or a poll that found them
    # changed, or one at least RELAY_REFRESH after it), not necessarily the newest poll
    return f"{', '.join(parts) or 'no flags read'} (confirmed {_local(at, zone)})"


def _thresholds_text(a: Any) -> str:
    if not a.thresholds:
        return "the site's"
    own = ", ".join(f"{name} {value}" for name, value in a.thresholds.items())
    return f"{own} (this account's own; the site's for the others)"


def _show_account(store: Any, config: Any, a: Any, now: datetime) -> None:
    """``meterd account show`` as text: one ``name  value`` line each, values in words and times in
    the site's zone; the relay of each meter; the last ledger entries."""
    remaining = _remaining_kwh(config, a, now)
    zone = _zone(store, config)
    lines = [
        ("account", a.account), ("customer", a.customer), ("area", a.area), ("tariff", a.tariff),
        ("protected", _protection_text(a, now, zone)), ("balance", f"{a.balance} yuan"),
        ("remaining", None if remaining is None else f"{remaining} kWh at the current price"),
        ("state", a.state), ("trip held", a.held), ("alarmed since", _local(a.alarmed_at, zone)),
        ("manual hold until", _local(a.manual_until, zone)), ("opened", _local(a.opened, zone)),
        ("thresholds", _thresholds_text(a)),
    ]
    for name, value in lines:
        if value not in (None, ""):
            print(f"{name:<18} {value}")
    for meter, ratio in a.meters.items():
        print(f"meter {meter} ×{ratio}: {_relay_text(store.relay_state(meter), zone)}")
    recent = store.ledger(a.account, limit=5)
    if recent:
        print("recent ledger entries:")
    for r in recent:
        print(f"  {_local(r.at, zone)}  {r.kind.value:<10} {r.amount:>12}  {r.detail}")


def _activate(store: Any, args: argparse.Namespace, now: datetime) -> int:
    """``meterd account activate``: the opening balance applied once, the account out of pending."""
    missing = [f"--{name.replace('_', '-')}" for name in ("opening_balance", "ref", "operator")
               if not getattr(args, name)]
    if not args.account or missing:
        error("account activate needs an ACCOUNT" if not args.account else
              f"account activate {args.account}: missing {', '.join(missing)} (use --opening-balance 0 for an "
              "account that starts with nothing)")
        return EXIT_BAD_INPUT
    from meterd.control.state import parse_opening

    opening = parse_opening(args.opening_balance, what="--opening-balance")
    result = store.activate(args.account, opening, args.ref, actor=args.operator, now=now)
    _print_ledger_result(args, result, f"account {args.account}: {result.reason}",
                         f"account {args.account}: nothing changed")
    return EXIT_OK


def _print_ledger_result(args: argparse.Namespace, result: Any, applied: str, refused: str) -> None:
    """What a ledger change (payment, adjustment, opening balance) did: ``applied``, or ``refused``
    with the reason, each with the balance after; the same three fields with ``--json``."""
    if args.json:
        print_json({"applied": result.applied, "balance": str(result.balance), "reason": result.reason})
    elif result.applied:
        print(f"{applied}; balance {result.balance}")
    else:
        print(f"{refused}: {result.reason}; balance {result.balance}")


@_guard
def account_cmd(args: argparse.Namespace) -> int:
    store, config = _store(args)
    now = _now()
    with store:
        if args.action == "activate":
            return _activate(store, args, now)
        if args.action == "show":
            if not args.account:
                error("account show needs an ACCOUNT")
                return EXIT_BAD_INPUT
            a = store.account(args.account)
            if a is None:
                error(f"unknown account {args.account}")
                return EXIT_BAD_INPUT
            if args.json:
                doc = _account_doc(store, config, a, now)
                doc["recent"] = [_ledger_doc(r) for r in store.ledger(a.account, limit=5)]
                print_json(doc)
            else:
                _show_account(store, config, a, now)
            return EXIT_OK
        accounts = [a for a in store.accounts(area=args.area) if args.state is None or a.state == args.state]
        if args.json:
            print_json([_account_doc(store, config, a, now) for a in accounts])
            return EXIT_OK
        print(f"{'ACCOUNT':<14} {'AREA':<10} {'BALANCE':>12} {'STATE':<9} {'PROT':<5} CUSTOMER")
        overridden = False
        for a in accounts:
            prot = "yes" if a.protected_at(now) else ""
            if a.protection_override(now) is not None:
                prot, overridden = f"{prot or 'no'}*", True
            print(f"{a.account:<14} {a.area:<10} {a.balance:>12} {a.state:<9} {prot:<5} {a.customer}")
        if overridden:
            print("* 保电 set or released by an operator over the archive's flag (meterd account show ACCOUNT says "
                  "who, why and until when)")
        return EXIT_OK


def _amount_limits(config: Any) -> Any:
    from meterd.control.amounts import AmountLimits

    return config.prepaid.amounts if config is not None and config.prepaid is not None else AmountLimits()


@_guard
def pay_cmd(args: argparse.Namespace) -> int:
    from meterd.control.amounts import parse_payment

    context = _context(args)
    amount = parse_payment(args.amount, _amount_limits(context[1]), what="argument amount")  # before any write
    store, _ = _store(args, context)
    with store:
        result = store.pay(args.account, amount, args.ref, actor=args.operator, now=_now())
    _print_ledger_result(args, result, f"payment {args.ref}: {amount} applied to {args.account}",
                         f"payment {args.ref}: not applied")
    return EXIT_OK


@_guard
def adjust_cmd(args: argparse.Namespace) -> int:
    from meterd.control.amounts import parse_adjustment

    context = _context(args)
    amount = parse_adjustment(args.amount, _amount_limits(context[1]), what="argument amount")  # before any write
    store, _ = _store(args, context)
    with store:
        result = store.adjust(args.account, amount, args.ref, actor=args.operator, now=_now(),
                              reason=args.reason)
    _print_ledger_result(args, result, f"adjustment {args.ref}: {amount} applied to {args.account}",
                         f"adjustment {args.ref}: not applied")
    return EXIT_OK


def _command_doc(c: Any) -> dict[str, Any]:
    return {"id": c.id, "meter": c.meter, "account": c.account, "kind": c.kind.value, "state": c.state.value,
            "reason": c.reason, "requested_by": c.requested_by, "manual": c.manual,
            "created": c.created.isoformat(), "expires": c.expires.isoformat(),
            "sent": c.sent.isoformat() if c.sent else None,
            "finished": c.finished.isoformat() if c.finished else None,
            "tries": c.tries, "detail": c.detail, "read_back": c.read_back}


@_guard
def command_cmd(args: argparse.Namespace) -> int:
    from meterd.control.engine import queue_manual
    from meterd.control.model import CommandKind

    kind = CommandKind(args.kind)
    if args.kind == "reclose":
        kind = CommandKind.RECLOSE if args.direct else CommandKind.RECLOSE_ALLOWED
    if args.kind == "alarm" and args.release:
        kind = CommandKind.ALARM_RELEASE
    store, config = _store(args)
    meter = address_key(args.meter)
    known, ttl, hold = _command_settings(store, config)
    with store:
        command = queue_manual(store, meter, kind, operator=args.operator, reason=args.reason, now=_now(),
                               ttl=ttl, known_meters=known, manual_hold=hold)
        if not args.json:
            print(f"command #{command.id} {command.kind.value} to meter {meter} queued; the daemon sends it "
                  "ahead of routine reads and confirms it by reading the relay back")
        command = _follow(store, command, args.wait)
    if args.json:
        print_json(_command_doc(command))
    if not args.wait:
        return EXIT_OK
    if not command.state.final:
        error(_pending_text(command, args.wait, _zone(store, config)))
        return EXIT_PENDING
    if not args.json:
        print(f"command #{command.id}: {command.state.value}" + (f": {command.detail}" if command.detail else ""))
    return EXIT_OK if command.state.value == "confirmed" else EXIT_FAILED


def _follow(store: Any, command: Any, wait: float) -> Any:
    """The command once it has ended, or as it is when ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while wait and not command.state.final and time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        command = store.command(command.id) or command
    return command


def _pending_text(command: Any, wait: float, zone: tzinfo) -> str:
    """One line: a command followed with ``--wait`` had not ended when the wait ran out."""
    what = f"command #{command.id} {command.kind.value} to meter {command.meter}"
    if command.state.value == "sent":
        return (f"{what}: sent but not confirmed after {wait:g} s (the relay is read back to confirm it); "
                f"see meterd commands --meter {command.meter}")
    return (f"{what}: still queued after {wait:g} s, not sent (is the daemon running and the meter's channel "
            f"up?); it may still go out until it expires at {_local(command.expires, zone)}")


def _command_settings(store: Any, config: Any) -> tuple[list[str], timedelta, timedelta]:
    """The meters a manual command may go to, its time to live and the manual hold after a reclose."""
    if config is not None:
        known = [m.address for m in config.meters]
        ttl = config.prepaid.settings.command_ttl if config.prepaid else timedelta(hours=2)
        hold = config.prepaid.settings.manual_hold if config.prepaid else timedelta(hours=24)
        return known, ttl, hold
    from meterd.storage.sqlite import SqliteStore

    with SqliteStore(store.path.parent) as archive:  # --data-dir: the meters the daemon archived
        return [m.address for m in archive.meters()], timedelta(hours=2), timedelta(hours=24)


def _until(text: str | None, now: datetime, zone: tzinfo) -> datetime | None:
    """``--until``: a duration from now (``8h``, ``+2d``) or a time (``parse_time``: a date, an ISO
    time in the site's zone or with its offset)."""
    from meterd.errors import LedgerError

    if text is None:
        return None
    ahead = text.strip().removeprefix("+")
    if ahead[:1].isdigit() and ahead[-1:].isalpha():  # a duration has its unit (a bare number is a date)
        seconds = parse_duration(ahead)
        if seconds is None or seconds <= 0:
            raise LedgerError(f"--until {text!r}: not a duration (use e.g. 8h, 2d, 1h30m) nor a time")
        return now + timedelta(seconds=seconds)
    if text.strip().startswith("-"):
        raise LedgerError(f"--until {text!r}: the end of an override is in the future (8h, 2026-12-09 08:00)")
    try:
        return parse_time(text, now, zone)
    except ValueError:
        raise LedgerError(f"--until {text!r} is not a time: use a duration from now (8h, 2d) or a time "
                          "(2026-12-09 08:00 in the site's zone, or ISO 8601 with an offset)") from None


@_guard
def protect_cmd(args: argparse.Namespace) -> int:
    """``meterd protect ACCOUNT --set|--release``: the operator's override of the archive's 保电."""
    from meterd.control.engine import queue_manual
    from meterd.control.model import CommandKind
    from meterd.errors import LedgerError

    now = _now()
    context = _context(args)
    until = _until(args.until, now, site_zone(context[1], context[0])) if args.until else None  # before any write
    if args.meters and until is not None:
        raise LedgerError("--meters with --until: a meter's own 保电 has no end time, and nothing would send the "
                          "release when --until passes; queue the meters' commands without --until")
    store, config = _store(args, context)
    commands = []
    with store:
        change = store.set_protection(args.account, args.protect, reason=args.reason, actor=args.operator,
                                      now=now, until=until)
        account = store.account(args.account)
        assert account is not None  # set_protection refuses an unknown account
        if args.meters:
            known, ttl, hold = _command_settings(store, config)
            kind = CommandKind.PROTECT if args.protect else CommandKind.PROTECT_RELEASE
            for meter in account.meters:
                commands.append(queue_manual(store, meter, kind, operator=args.operator, reason=args.reason,
                                             now=now, ttl=ttl, known_meters=known, manual_hold=hold))
    if args.json:
        print_json({"account": change.account, "changed": change.changed, "protected": change.protected,
                    "archive_protected": change.archive, "protection_override": _override_doc(change.override),
                    "message": change.message, "state": account.state, "balance": str(account.balance),
                    "held": account.held, "commands": [_command_doc(c) for c in commands]})
        return EXIT_OK
    print(change.message)
    if change.changed and account.state == "pending":
        print(f"account {account.account} is pending: the policy does not act on it until it is activated")
    elif change.changed:
        held = f"; trip held: {account.held}" if account.held else ""
        print(f"account {account.account} is {account.state} (balance {account.balance}{held}): the daemon's next "
              f"policy pass decides it {'with' if change.protected else 'without'} 保电")
    for c in commands:
        print(f"command #{c.id} {c.kind.value} to meter {c.meter} queued; the daemon sends it and confirms it by "
              "reading the relay back")
    return EXIT_OK


@_guard
def commands_cmd(args: argparse.Namespace) -> int:
    store, config = _store(args)
    meter = None if args.meter is None else address_key(args.meter)
    with store:
        commands = store.commands(state=args.state, meter=meter, limit=args.limit)
    if args.json:
        print_json([_command_doc(c) for c in commands])
        return EXIT_OK
    zone = _zone(store, config)
    print(f"{'ID':>5} {'METER':<12} {'KIND':<15} {'STATE':<9} {'BY':<12} {'CREATED':<25} REASON / DETAIL")
    for c in commands:
        print(f"{c.id:>5} {c.meter:<12} {c.kind.value:<15} {c.state.value:<9} {c.requested_by:<12} "
              f"{_local(c.created, zone):<25} {c.reason}" + (f" | {c.detail}" if c.detail else ""))
    return EXIT_OK


@_guard
def cancel_cmd(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    with store:
        command = store.cancel(args.id, now=_now(), actor=args.operator, reason=args.reason)
    if args.json:
        print_json(_command_doc(command))
    else:
        print(f"command #{command.id} {command.kind.value} to meter {command.meter} cancelled")
    return EXIT_OK


def _ledger_doc(r: Any, balance: Decimal | None = None) -> dict[str, Any]:
    doc = {"seq": r.seq, "key": r.key, "kind": r.kind.value, "amount": str(r.amount), "at": r.at.isoformat(),
           "recorded": r.recorded.isoformat(), "actor": r.actor, "detail": r.detail, "meter": r.meter,
           "rate": r.rate, "kwh": None if r.kwh is None else str(r.kwh),
           "price": None if r.price is None else str(r.price)}
    if balance is not None:
        doc["balance"] = str(balance)
    return doc


@_guard
def ledger_cmd(args: argparse.Namespace) -> int:
    store, config = _store(args)
    with store:
        if store.account(args.account) is None:
            error(f"unknown account {args.account}")
            return EXIT_BAD_INPUT
        rows = store.ledger(args.account)
        balance = store.balance(args.account)
    running, docs = Decimal("0.00"), []
    for r in rows:
        running += r.amount
        docs.append(_ledger_doc(r, running))
    if args.limit:
        docs = docs[-args.limit:]
    if args.json:
        print_json({"account": args.account, "balance": str(balance), "entries": docs})
        return EXIT_OK
    zone = _zone(store, config)
    print(f"{'SEQ':>6} {'AT':<25} {'KIND':<10} {'AMOUNT':>12} {'BALANCE':>12}  DETAIL")
    for d in docs:
        at = _local(datetime.fromisoformat(d["at"]), zone)
        print(f"{d['seq']:>6} {at:<25} {d['kind']:<10} {d['amount']:>12} {d['balance']:>12}  {d['detail']}")
    print(f"balance {balance}")
    return EXIT_OK


def _registers(text: str, multiplier: Decimal, what: str) -> dict:
    from decimal import InvalidOperation

    from meterd.control.model import Rate
    from meterd.errors import LedgerError

    values = {}
    for part in text.split(","):
        name, _, number = part.rpartition("=")
        try:
            rate = Rate((name or "total").strip())
        except ValueError:
            raise LedgerError(f"{what}: unknown register {name!r} (total, sharp, peak, flat, valley)") from None
        if len(number.strip()) > MAX_READING_TEXT:  # a 4,000-digit register was recorded as the old meter's final
            raise LedgerError(f"{what}: {shown(number)} is longer than {MAX_READING_TEXT} characters")
        try:
            value = Decimal(number.strip())
        except InvalidOperation:
            raise LedgerError(f"{what}: {shown(number)} is not a number") from None
        if not value.is_finite() or value < 0:
            raise LedgerError(f"{what}: {shown(number)} must be a reading of zero or more")
        values[rate] = value * multiplier
    return values


@_guard
def replace_cmd(args: argparse.Namespace) -> int:
    from meterd.control.model import Rate
    from meterd.errors import LedgerError

    store, config = _store(args)
    old, new = address_key(args.old_meter), address_key(args.new_meter)
    at = _now()
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise LedgerError(f"--at {args.at!r} is not an ISO 8601 time") from None
        if at.tzinfo is None:
            raise LedgerError(f"--at {args.at!r} needs a time zone, e.g. {args.at}+08:00")
    with store:
        if store.has_replacement(args.ref):
            return _replaced(args, old, new, at, False)
        owner = store.meter_accounts().get(old)
        if owner is None or owner[0] != args.account:
            raise LedgerError(f"meter {old} is not on account {args.account}")
        old_multiplier = owner[1]
        if args.multiplier:
            new_multiplier = _registers(args.multiplier, Decimal(1), "--multiplier")[Rate.TOTAL]
            if new_multiplier <= 0:
                raise LedgerError(f"--multiplier {args.multiplier} must be positive")
        elif config is not None and any(m.address == new for m in config.meters):
            m = next(m for m in config.meters if m.address == new)
            new_multiplier = m.ct * m.pt
        else:
            new_multiplier = old_multiplier
        done = store.record_replacement(
            args.ref, args.account, old, new, at, _registers(args.old_final, old_multiplier, "--old-final"),
            _registers(args.new_initial, new_multiplier, "--new-initial"), new_multiplier,
            actor=args.operator, now=_now())
    return _replaced(args, old, new, at, done)


def _replaced(args: argparse.Namespace, old: str, new: str, at: datetime, done: bool) -> int:
    """What ``meterd replace-meter`` did: recorded now, or recorded before (nothing changed)."""
    if done:
        message = (f"replacement {args.ref}: meter {old} -> {new} on {args.account} recorded; the daemon charges the "
                   f"old meter's last use at its next pass. Put {new} in the config's account too.")
    else:
        message = f"replacement {args.ref} was already recorded; nothing changed"
    if args.json:
        print_json({"ref": args.ref, "account": args.account, "old_meter": old, "new_meter": new,
                    "at": at.isoformat(), "recorded": done, "message": message})
    else:
        print(message)
    return EXIT_OK
