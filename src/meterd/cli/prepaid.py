"""Prepaid control from the command line: accounts, payments, adjustments, manual commands, the ledger.

``meterd account list|show``, ``meterd account activate ACCOUNT --opening-balance YUAN --ref ID
--operator NAME``, ``meterd pay ACCOUNT AMOUNT --ref ID``, ``meterd adjust ACCOUNT
AMOUNT --ref ID --reason …``, ``meterd trip|reclose|alarm METER --reason … --operator …``,
``meterd commands [--state …]``, ``meterd cancel ID --reason … --operator …``,
``meterd ledger ACCOUNT``.

They work on the state database of a config (``-c``) or data directory (``--data-dir``), also
while the daemon runs: a payment made here is seen by the daemon's next policy pass (which
recloses if it lifts the balance), and a manual command queued here is sent by the daemon ahead of
routine reads (``--wait`` follows it to its end).  Money is exact: an amount outside the amount
grammar (:mod:`meterd.control.amounts`: ASCII digits, at most two decimals, a sign only on an
adjustment) or over ``[prepaid] max_payment`` / ``max_adjustment`` (of ``-c``; the defaults
without it), or a payment id already used, is refused with the reason and changes nothing.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json
from meterd.errors import ConfigError
from meterd.readings import address_key
from meterd.storage.database import Location

DEFAULT_DATA_DIR = Path("meterd-data")
MANUAL_KINDS = {"trip": "trip", "reclose": "reclose", "alarm": "alarm", "alarm-release": "alarm-release",
                "reclose-allowed": "reclose-allowed", "protect": "protect", "protect-release": "protect-release"}


def _where(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="config file (its data directory, tariffs and meters are used)")
    where.add_argument("--data-dir", help=f"data directory (default ./{DEFAULT_DATA_DIR})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("account", help="prepaid accounts: list, show, activate")
    p.add_argument("action", choices=("list", "show", "activate"))
    p.add_argument("account", nargs="?", help="the account number (show, activate)")
    p.add_argument("--area", help="only this area (list)")
    p.add_argument("--state", help="only accounts in this control state (list): pending, normal, reminded, alarmed, "
                                    "tripped")
    p.add_argument("--opening-balance", metavar="YUAN",
                   help="activate: the balance the account starts with, signed (0 if it has none); applied once")
    p.add_argument("--ref", help="activate: the work order or reference of the activation")
    p.add_argument("--operator", help="activate: who activates the account")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=account_cmd)

    p = sub.add_parser("pay", help="record a payment at the counter (applied once per --ref)")
    p.add_argument("account")
    p.add_argument("amount", help="yuan, e.g. 100 or 88.50 (no sign, at most two decimals)")
    p.add_argument("--ref", required=True, help="the payment id (receipt number): a second use changes nothing")
    p.add_argument("--operator", default="counter", help="who took the payment")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=pay_cmd)

    p = sub.add_parser("adjust", help="a signed ledger adjustment with its id and reason")
    p.add_argument("account")
    p.add_argument("amount", help="yuan, at most two decimals; negative debits, e.g. -12.30")
    p.add_argument("--ref", required=True, help="the adjustment id")
    p.add_argument("--reason", required=True)
    p.add_argument("--operator", required=True)
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=adjust_cmd)

    for kind in ("trip", "reclose", "alarm"):
        p = sub.add_parser(kind, help=f"queue a manual {kind} command (sent by the daemon, confirmed by read-back)")
        p.add_argument("meter")
        p.add_argument("--reason", required=True)
        p.add_argument("--operator", required=True)
        if kind == "reclose":
            p.add_argument("--direct", action="store_true", help="直接合闸 instead of 合闸允许 (customer presses)")
        if kind == "alarm":
            p.add_argument("--release", action="store_true", help="release the alarm instead")
        p.add_argument("--wait", type=float, default=0.0, metavar="S",
                       help="wait up to S seconds for the command to end and print its outcome")
        p.add_argument("--json", action="store_true")
        _where(p)
        p.set_defaults(func=command_cmd, kind=kind)

    p = sub.add_parser("commands", help="the command queue and history")
    p.add_argument("--state", choices=("queued", "sent", "confirmed", "failed", "expired", "cancelled", "dry-run"))
    p.add_argument("--meter")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=commands_cmd)

    p = sub.add_parser("cancel", help="cancel a queued command")
    p.add_argument("id", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--operator", required=True)
    _where(p)
    p.set_defaults(func=cancel_cmd)

    p = sub.add_parser("replace-meter", help="record a meter swap: old meter's final and new meter's initial registers")
    p.add_argument("account")
    p.add_argument("old_meter")
    p.add_argument("new_meter")
    p.add_argument("--old-final", required=True, metavar="KWH",
                   help="the old meter's final register as displayed, e.g. 1234.56 or total=1234.56,peak=400.1")
    p.add_argument("--new-initial", required=True, metavar="KWH", help="the new meter's initial register")
    p.add_argument("--at", help="when the swap happened (ISO 8601 with zone; default now)")
    p.add_argument("--multiplier", help="CT × PT of the new meter (default: from -c, else the old meter's)")
    p.add_argument("--ref", required=True, help="the replacement work-order id: a second use changes nothing")
    p.add_argument("--operator", required=True)
    _where(p)
    p.set_defaults(func=replace_cmd)

    p = sub.add_parser("ledger", help="an account's ledger, oldest first, with the running balance")
    p.add_argument("account")
    p.add_argument("--limit", type=int, help="only the last N entries")
    p.add_argument("--json", action="store_true")
    _where(p)
    p.set_defaults(func=ledger_cmd)


def _context(args: argparse.Namespace) -> tuple[Location, Any]:
    if getattr(args, "config", None):
        from meterd.config.loader import load_config

        config = load_config(args.config)
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
        store.upsert_accounts(config.prepaid.accounts, actor="config", now=_now())
    return store, config


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


def _account_doc(store: Any, config: Any, a: Any, now: datetime) -> dict[str, Any]:
    relays = {}
    for meter in a.meters:
        found = store.relay_state(meter)
        relays[meter] = None if found is None else {"at": found[0].isoformat(), **found[1]}
    return {
        "account": a.account, "customer": a.customer, "area": a.area, "tariff": a.tariff,
        "protected": a.protected, "balance": str(a.balance), "state": a.state, "held": a.held,
        "remaining_kwh": None if (r := _remaining_kwh(config, a, now)) is None else str(r),
        "meters": {m: str(k) for m, k in a.meters.items()}, "relay": relays,
        "thresholds": a.thresholds, "opened": a.opened.isoformat(),
        "manual_hold_until": a.manual_until.isoformat() if a.manual_until else None,
        "alarmed_at": a.alarmed_at.isoformat() if a.alarmed_at else None,
    }


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
            doc = _account_doc(store, config, a, now)
            doc["recent"] = [_ledger_doc(r) for r in store.ledger(a.account, limit=5)]
            if args.json:
                print_json(doc)
                return EXIT_OK
            for key in ("account", "customer", "area", "tariff", "protected", "balance", "remaining_kwh", "state",
                        "held", "alarmed_at", "manual_hold_until", "opened"):
                if doc[key] not in (None, ""):
                    print(f"{key:<18} {doc[key]}")
            for meter, ratio in doc["meters"].items():
                relay = doc["relay"][meter]
                shown = "relay not read yet" if relay is None else ", ".join(
                    f"{k}={'yes' if v else 'no'}" for k, v in relay.items() if k != "at") + f" (at {relay['at']})"
                print(f"meter {meter} ×{ratio}: {shown}")
            for row in doc["recent"]:
                print(f"  {row['at']}  {row['kind']:<10} {row['amount']:>12}  {row['detail']}")
            return EXIT_OK
        accounts = [a for a in store.accounts(area=args.area) if args.state is None or a.state == args.state]
        docs = [_account_doc(store, config, a, now) for a in accounts]
        if args.json:
            print_json(docs)
            return EXIT_OK
        print(f"{'ACCOUNT':<14} {'AREA':<10} {'BALANCE':>12} {'STATE':<9} {'PROT':<4} CUSTOMER")
        for d in docs:
            print(f"{d['account']:<14} {d['area']:<10} {d['balance']:>12} {d['state']:<9} "
                  f"{'yes' if d['protected'] else '':<4} {d['customer']}")
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
    from meterd.storage.sqlite import SqliteStore

    kind = CommandKind(args.kind)
    if args.kind == "reclose":
        kind = CommandKind.RECLOSE if args.direct else CommandKind.RECLOSE_ALLOWED
    if args.kind == "alarm" and args.release:
        kind = CommandKind.ALARM_RELEASE
    store, config = _store(args)
    meter = address_key(args.meter)
    if config is not None:
        known = [m.address for m in config.meters]
        ttl = config.prepaid.settings.command_ttl if config.prepaid else timedelta(hours=2)
        hold = config.prepaid.settings.manual_hold if config.prepaid else timedelta(hours=24)
    else:
        with SqliteStore(store.path.parent) as archive:
            known = [m.address for m in archive.meters()]
        ttl, hold = timedelta(hours=2), timedelta(hours=24)
    with store:
        command = queue_manual(store, meter, kind, operator=args.operator, reason=args.reason, now=_now(),
                               ttl=ttl, known_meters=known, manual_hold=hold)
        if not args.json:
            print(f"command #{command.id} {command.kind.value} to meter {meter} queued; the daemon sends it "
                  "ahead of routine reads and confirms it by reading the relay back")
        deadline = time.monotonic() + args.wait
        while args.wait and not command.state.final and time.monotonic() < deadline:
            time.sleep(0.2)
            command = store.command(command.id) or command
    if args.json:
        print_json(_command_doc(command))
    elif args.wait:
        print(f"command #{command.id}: {command.state.value}" + (f": {command.detail}" if command.detail else ""))
    if args.wait and command.state.final and command.state.value != "confirmed":
        return EXIT_FAILED
    return EXIT_OK


@_guard
def commands_cmd(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    with store:
        commands = store.commands(state=args.state, meter=args.meter, limit=args.limit)
    if args.json:
        print_json([_command_doc(c) for c in commands])
        return EXIT_OK
    print(f"{'ID':>5} {'METER':<12} {'KIND':<15} {'STATE':<9} {'BY':<12} {'CREATED':<25} REASON / DETAIL")
    for c in commands:
        print(f"{c.id:>5} {c.meter:<12} {c.kind.value:<15} {c.state.value:<9} {c.requested_by:<12} "
              f"{c.created.isoformat(timespec='seconds'):<25} {c.reason}" + (f" | {c.detail}" if c.detail else ""))
    return EXIT_OK


@_guard
def cancel_cmd(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    with store:
        command = store.cancel(args.id, now=_now(), actor=args.operator, reason=args.reason)
    print(f"command #{command.id} cancelled")
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
    store, _ = _store(args)
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
    print(f"{'SEQ':>6} {'AT':<25} {'KIND':<10} {'AMOUNT':>12} {'BALANCE':>12}  DETAIL")
    for d in docs:
        print(f"{d['seq']:>6} {d['at'][:25]:<25} {d['kind']:<10} {d['amount']:>12} {d['balance']:>12}  {d['detail']}")
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
        try:
            value = Decimal(number.strip())
        except InvalidOperation:
            raise LedgerError(f"{what}: {number!r} is not a number") from None
        if not value.is_finite() or value < 0:
            raise LedgerError(f"{what}: {number!r} must be a reading of zero or more")
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
            print(f"replacement {args.ref} was already recorded; nothing changed")
            return EXIT_OK
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
    if done:
        print(f"replacement {args.ref}: meter {old} -> {new} on {args.account} recorded; the daemon charges the old "
              f"meter's last use at its next pass. Put {new} in the config's account too.")
    else:
        print(f"replacement {args.ref} was already recorded; nothing changed")
    return EXIT_OK
