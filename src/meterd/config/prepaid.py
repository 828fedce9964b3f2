"""The ``[prepaid]`` section: tariffs, accounts, thresholds, safety rules, 定值控制, notifications.

::

    [prepaid]
    dry_run = false                    # record what would be sent, send nothing
    check_every = "60s"                # charging + policy pass
    command_ttl = "2h"                 # a command not delivered by then expires (offline meter)
    retry_every = "5m"                 # an unreachable meter is tried again this often
    valid_for = "10m"                  # DL/T 645 1C validity window written into the command
    settle = "0s"                      # pause before the relay read-back
    manual_hold = "24h"                # after an operator's reclose, no automatic trip for this long
    trip_notice = "24h"                # from the first alarm to the earliest automatic trip ("0s": none)
    reclose = "allowed"                # "allowed" (合闸允许: the customer presses the button) or "direct"
    quiet_hours = ["22:00-07:00"]      # no automatic trips (CST)
    no_trip_weekends = true
    holidays = [2026-10-01]            # no automatic trips; workdays = [...] for 调休 weekend workdays
    max_trips_per_area_hour = 20
    password_env = "METERD_METER_PASSWORD"   # DL/T 645 password (level + 3 bytes, 8 hex digits)
    operator_env = "METERD_OPERATOR_CODE"    # DL/T 645 operator code (8 hex digits)
    thresholds = { reminder = "50", alarm = "20", trip = "0", reclose = "10" }   # yuan, or "3d": days of average use
    max_payment = "1000000"            # yuan: the most one payment may be (CLI, API, billing imports)
    max_adjustment = "1000000"         # yuan: the most one adjustment may be, either sign

    [[prepaid.tariffs]]
    name = "residential"
    [[prepaid.tariffs.versions]]
    effective = 2026-01-01
    kind = "tiered"                    # flat | tou | tiered
    tiers = [{ upto = "2160", price = "0.4883" }, { upto = "4800", price = "0.5383" }, { price = "0.7883" }]
    tier_period = "year"               # year | month
    # flat: price = "0.5283"; tou: rates = { sharp = "…", peak = "…", flat = "…", valley = "…" },
    # tou_source = "registers" | "schedule", schedule = [{ start = "08:00", rate = "peak" }, …]
    fixed_monthly = "0"

    [[prepaid.accounts]]
    account = "A1001"
    customer = "Zhang San"
    area = "TA-001"
    tariff = "residential"
    meters = ["000000000001"]          # configured meters; CT × PT comes from the meter
    protected = false                  # 保电: never tripped automatically
    thresholds = { alarm = "3d" }      # overrides
    opening_balance = "50.00"          # yuan, signed; applied once.  Without it the account is pending

    [[prepaid.power_limits]]           # 定值控制 for large customers
    meter = "000000000009"
    limit_kw = "80"
    hold = "5m"
    action = "trip"                    # or "alarm"
    windows = [{ start = "08:00", end = "11:00", limit_kw = "60" }]   # 时段控

    [[prepaid.notify]]
    kind = "log"                       # or "webhook": url, template, kinds, headers, timeout
    path = "notices.log"

Secrets are never in the file: ``password`` or ``operator`` written inline is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.checking import show
from meterd.config.keys import keys
from meterd.control.amounts import DEFAULT_LIMIT, DEFAULT_LIMITS, ENTRY_LIMIT, AmountError, AmountLimits, parse_amount
from meterd.control.engine import PrepaidSettings
from meterd.control.limits import PowerLimit, PowerWindow
from meterd.control.model import TOU_RATES, CommandKind, Rate
from meterd.control.policy import DEFAULT_TRIP_NOTICE, SafetyRules, Threshold, Thresholds
from meterd.control.state import AccountSpec, parse_opening
from meterd.control.tariff import Tariff, TariffKind, TariffVersion, Tier, TierPeriod, TouPeriod, TouSource
from meterd.errors import LedgerError
from meterd.readings import address_key

_KEYS: Final = keys("prepaid")
_THRESHOLD_KEYS: Final = keys("prepaid.thresholds")
_DEFAULT_THRESHOLDS: Final = {"reminder": "50", "alarm": "20", "trip": "0", "reclose": "10"}
_TARIFF_KEYS: Final = keys("prepaid.tariffs[]")
_VERSION_KEYS: Final = keys("prepaid.tariffs[].versions[]")
_PERIOD_KEYS: Final = keys("prepaid.tariffs[].versions[].schedule[]")
_TIER_KEYS: Final = keys("prepaid.tariffs[].versions[].tiers[]")
_ACCOUNT_KEYS: Final = keys("prepaid.accounts[]")
_LIMIT_KEYS: Final = keys("prepaid.power_limits[]")
_WINDOW_KEYS: Final = keys("prepaid.power_limits[].windows[]")
_NOTIFY_KEYS: Final = keys("prepaid.notify[]")
_RATE_NAMES: Final = {r.value: r for r in TOU_RATES}
_HHMM: Final = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    kind: str  # "log" | "webhook"
    path: Path | None = None
    url: str | None = None
    template: str | None = None
    kinds: frozenset[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class PrepaidConfig:
    settings: PrepaidSettings
    tariffs: dict[str, Tariff]
    accounts: tuple[AccountSpec, ...] = ()
    power_limits: tuple[PowerLimit, ...] = ()
    notify: tuple[NotifyConfig, ...] = ()
    password_env: str | None = None
    operator_env: str | None = None
    amounts: AmountLimits = DEFAULT_LIMITS  # max_payment, max_adjustment


def parse_prepaid(check: Any, raw: Any, *, meters: dict[str, Decimal], base_dir: Path | None,
                  secret_env: Any) -> PrepaidConfig | None:
    """``meters``: configured meter address -> CT × PT."""
    table = check.table("prepaid", raw)
    if table is None:
        return None
    for inline in ("password", "operator"):
        if inline in table:
            check.problem(f"prepaid.{inline}", f"secrets are not written in the config: set {inline}_env to the "
                                               "name of an environment variable holding it")
    check.known_keys("prepaid", {k: v for k, v in table.items() if k not in ("password", "operator")}, _KEYS)
    before = len(check.problems)

    def duration(key: str, default: float, *, zero: bool = False) -> float:
        if key not in table:
            return default
        value = check.duration(f"prepaid.{key}", table[key], allow_zero=zero)
        return default if value is None else value

    dry_run = _bool(check, "prepaid.dry_run", table.get("dry_run", False))
    reclose = {"allowed": CommandKind.RECLOSE_ALLOWED, "direct": CommandKind.RECLOSE}.get(table.get("reclose", "allowed"))
    if reclose is None:
        check.problem("prepaid.reclose", f'must be "allowed" or "direct", got {show(table.get("reclose"))}')
    quiet = tuple(w for w in (_window(check, f"prepaid.quiet_hours[{i}]", v)
                              for i, v in enumerate(_list(check, "prepaid.quiet_hours", table.get("quiet_hours", []))))
                  if w is not None)
    cap = None
    if "max_trips_per_area_hour" in table:
        cap = check.integer("prepaid.max_trips_per_area_hour", table["max_trips_per_area_hour"], low=0)
    rules = SafetyRules(
        quiet_hours=quiet,
        no_trip_weekends=_bool(check, "prepaid.no_trip_weekends", table.get("no_trip_weekends", False)),
        holidays=frozenset(_dates(check, "prepaid.holidays", table.get("holidays", []))),
        workdays=frozenset(_dates(check, "prepaid.workdays", table.get("workdays", []))),
        max_trips_per_area_hour=cap,
        dry_run=dry_run,
        reclose_kind=reclose or CommandKind.RECLOSE_ALLOWED,
        trip_notice=dt.timedelta(seconds=duration("trip_notice", DEFAULT_TRIP_NOTICE.total_seconds(), zero=True)),
    )
    thresholds = _thresholds(check, "prepaid.thresholds", table.get("thresholds", {}), _DEFAULT_THRESHOLDS)
    settings = PrepaidSettings(
        thresholds=thresholds or _thresholds(check, "", {}, _DEFAULT_THRESHOLDS),  # type: ignore[arg-type]
        rules=rules,
        command_ttl=dt.timedelta(seconds=duration("command_ttl", 7200)),
        retry_every=dt.timedelta(seconds=duration("retry_every", 300)),
        valid_for=dt.timedelta(seconds=duration("valid_for", 600)),
        settle=duration("settle", 0.0, zero=True),
        check_every=duration("check_every", 60.0),
        manual_hold=dt.timedelta(seconds=duration("manual_hold", 86400, zero=True)),
    )
    broken: set[str] = set()
    tariffs = _tariffs(check, table.get("tariffs", []), broken)
    accounts = _accounts(check, table.get("accounts", []), tariffs, meters, thresholds, broken)
    limits = _limits(check, table.get("power_limits", []), meters, accounts)
    notify = _notify(check, table.get("notify", []), base_dir)
    password_env = secret_env(check, "prepaid", table, "password_env", required=False)
    operator_env = secret_env(check, "prepaid", table, "operator_env", required=False)
    amounts = AmountLimits(*(_limit(check, f"prepaid.{key}", table[key]) if key in table else DEFAULT_LIMIT
                             for key in ("max_payment", "max_adjustment")))
    if len(check.problems) > before:
        return None
    return PrepaidConfig(settings=settings, tariffs=tariffs, accounts=tuple(accounts), power_limits=tuple(limits),
                         notify=tuple(notify), password_env=password_env, operator_env=operator_env, amounts=amounts)


def _amount(check: Any, path: str, value: Any, *, signed: bool, zero: bool, limit: Decimal,
            what: str = "amount") -> Decimal | None:
    """A money value of the config by the one amount grammar (:mod:`meterd.control.amounts`): a
    string, or a TOML integer; a TOML float is binary and refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        check.problem(path, f'must be an amount in yuan written as a string, e.g. "100" or "88.50", got {show(value)}')
        return None
    try:
        return parse_amount(value, signed=signed, zero=zero, limit=limit, what=what)
    except AmountError as exc:
        check.problem(path, str(exc))
        return None


def _limit(check: Any, path: str, value: Any) -> Decimal:
    """``max_payment`` / ``max_adjustment``: more than zero, at most ENTRY_LIMIT (no ledger entry
    may be larger, whatever the config says)."""
    found = _amount(check, path, value, signed=False, zero=False, limit=ENTRY_LIMIT)
    return DEFAULT_LIMIT if found is None else found


def _bool(check: Any, path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        check.problem(path, f"must be true or false, got {show(value)}")
        return False
    return value


def _list(check: Any, path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        check.problem(path, f"must be a list, got {show(value)}")
        return []
    return value


def _time(check: Any, path: str, value: Any) -> dt.time | None:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        check.problem(path, f'must be a time of day "HH:MM", got {show(value)}')
        return None
    return dt.time(int(match.group(1)), int(match.group(2)))


def _window(check: Any, path: str, value: Any) -> tuple[dt.time, dt.time] | None:
    if not isinstance(value, str) or value.count("-") != 1:
        check.problem(path, f'must be a window "HH:MM-HH:MM" (CST, may pass midnight), got {show(value)}')
        return None
    start, end = (_time(check, path, part.strip()) for part in value.split("-"))
    if start is None or end is None:
        return None
    if start == end:
        check.problem(path, f"window {value} is empty")
        return None
    return start, end


def _dates(check: Any, path: str, value: Any) -> list[dt.date]:
    dates = []
    for i, entry in enumerate(_list(check, path, value)):
        if isinstance(entry, dt.date) and not isinstance(entry, dt.datetime):
            dates.append(entry)
            continue
        try:
            dates.append(dt.date.fromisoformat(entry))
        except (TypeError, ValueError):
            check.problem(f"{path}[{i}]", f"must be a date such as 2026-10-01, got {show(entry)}")
    return dates


def _money(check: Any, path: str, value: Any, *, positive: bool = False) -> Decimal | None:
    if isinstance(value, float):
        value = str(value)
    try:
        number = Decimal(str(value).strip()) if isinstance(value, (str, int)) and not isinstance(value, bool) \
            else None
    except ArithmeticError:
        number = None
    if number is None or not number.is_finite() or number < 0 or (positive and number == 0):
        what = "a positive number" if positive else "a number of zero or more"
        check.problem(path, f"must be {what} (write prices as strings, e.g. \"0.5283\"), got {show(value)}")
        return None
    return number


def _opening(check: Any, path: str, value: Any) -> Decimal | None:
    """An opening balance by the amount grammar: a string ("50.00", "-12.30") or an integer (TOML
    floats are binary and refused)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        check.problem(path, f'must be an amount in yuan written as a string, e.g. "50.00" or "-12.30", '
                            f"got {show(value)}")
        return None
    try:
        return parse_opening(value, what="opening balance")
    except LedgerError as exc:
        check.problem(path, str(exc))
        return None


MAX_THRESHOLD_DAYS: Final = Decimal(3650)  # "3d" levels: days of average use, at most ten years


def _threshold_text(check: Any, path: str, value: Any) -> bool:
    """A level in yuan by the amount grammar (signed: a trip level may be an overdraft, "-10"; at
    most ENTRY_LIMIT), or days of average use ("3d", "1.5d", at most MAX_THRESHOLD_DAYS): a
    level of 1e30 would overflow the fen it is compared in.  Problems recorded; False if any."""
    if isinstance(value, str) and value[-1:] in ("d", "D"):
        return _amount(check, path, value[:-1], signed=True, zero=True, limit=MAX_THRESHOLD_DAYS,
                       what="days") is not None
    return _amount(check, path, value, signed=True, zero=True, limit=ENTRY_LIMIT, what="threshold") is not None


def _thresholds(check: Any, path: str, raw: Any, base: dict[str, Any]) -> Thresholds | None:
    table = check.table(path, raw) if path else raw
    if table is None:
        return None
    check.known_keys(path, table, _THRESHOLD_KEYS)
    values: dict[str, Threshold] = {}
    for key in _THRESHOLD_KEYS:
        if key not in table and isinstance(base.get(key), Threshold):
            values[key] = base[key]
            continue
        raw_value = table.get(key, base.get(key))
        if key in table and not _threshold_text(check, f"{path}.{key}", raw_value):
            continue
        try:
            values[key] = Threshold.parse(raw_value)
        except ValueError as exc:
            check.problem(f"{path}.{key}", str(exc))
    if len(values) < len(_THRESHOLD_KEYS):
        return None
    thresholds = Thresholds(**values)
    for problem in thresholds.problems():
        check.problem(path, problem)
    return thresholds


def _tariffs(check: Any, raw: Any, broken: set[str]) -> dict[str, Tariff]:
    """The valid tariffs; the names of invalid ones go to ``broken`` (accounts naming them are not
    blamed a second time)."""
    tariffs: dict[str, Tariff] = {}
    for index, table in check.array_of_tables("prepaid.tariffs", raw):
        path = f"prepaid.tariffs[{index}]"
        check.known_keys(path, table, _TARIFF_KEYS)
        name = check.required_string(path, table, "name")
        if name is not None and name in tariffs:
            check.problem(f"{path}.name", f"tariff {name!r} is defined twice")
            continue
        versions = []
        entries = check.array_of_tables(f"{path}.versions", table.get("versions", []))
        if not entries:
            check.problem(f"{path}.versions", "a tariff needs at least one [[prepaid.tariffs.versions]]")
        for vindex, vtable in entries:
            version = _version(check, f"{path}.versions[{vindex}]", vtable)
            if version is not None:
                versions.append(version)
        if name is None or len(versions) != len(entries) or not versions:
            if name is not None:
                broken.add(name)
            continue
        tariff = Tariff(name=name, versions=tuple(sorted(versions, key=lambda v: v.effective)))
        problems = tariff.problems()
        for problem in problems:
            check.problem(path, problem)
        if problems:
            broken.add(name)
        else:
            tariffs[name] = tariff
    return tariffs


def _version(check: Any, path: str, table: dict[str, Any]) -> TariffVersion | None:
    check.known_keys(path, table, _VERSION_KEYS)
    before = len(check.problems)
    effective = _dates(check, f"{path}.effective", [table["effective"]]) if "effective" in table else []
    if "effective" not in table:
        check.problem(f"{path}.effective", "missing: the date (CST) this version takes effect")
    kind = check.choice(f"{path}.kind", table.get("kind"), TariffKind)
    kwargs: dict[str, Any] = {}
    if "price" in table:
        kwargs["price"] = _money(check, f"{path}.price", table["price"], positive=True)
    if "rates" in table:
        rates = check.table(f"{path}.rates", table["rates"]) or {}
        prices: dict[Rate, Decimal] = {}
        for key, value in rates.items():
            if key not in _RATE_NAMES:
                check.problem(f"{path}.rates.{key}", f"unknown rate (use {', '.join(_RATE_NAMES)})")
                continue
            price = _money(check, f"{path}.rates.{key}", value, positive=True)
            if price is not None:
                prices[_RATE_NAMES[key]] = price
        kwargs["rate_prices"] = prices
    if "tou_source" in table:
        kwargs["tou_source"] = check.choice(f"{path}.tou_source", table["tou_source"], TouSource)
    if "schedule" in table:
        periods = []
        for i, entry in check.array_of_tables(f"{path}.schedule", table["schedule"]):
            check.known_keys(f"{path}.schedule[{i}]", entry, _PERIOD_KEYS)
            start = _time(check, f"{path}.schedule[{i}].start", entry.get("start"))
            rate = _RATE_NAMES.get(entry.get("rate"))
            if rate is None:
                check.problem(f"{path}.schedule[{i}].rate", f"must be one of {', '.join(_RATE_NAMES)}, "
                                                             f"got {show(entry.get('rate'))}")
            if start is not None and rate is not None:
                periods.append(TouPeriod(start, rate))
        kwargs["day_schedule"] = tuple(periods)
    if "tiers" in table:
        tiers = []
        for i, entry in check.array_of_tables(f"{path}.tiers", table["tiers"]):
            check.known_keys(f"{path}.tiers[{i}]", entry, _TIER_KEYS)
            upto = _money(check, f"{path}.tiers[{i}].upto", entry["upto"], positive=True) if "upto" in entry else None
            price = _money(check, f"{path}.tiers[{i}].price", entry.get("price"), positive=True)
            if price is not None:
                tiers.append(Tier(upto, price))
        kwargs["tiers"] = tuple(tiers)
    if "tier_period" in table:
        kwargs["tier_period"] = check.choice(f"{path}.tier_period", table["tier_period"], TierPeriod)
    if "fixed_monthly" in table:
        kwargs["fixed_monthly"] = _money(check, f"{path}.fixed_monthly", table["fixed_monthly"])
    if len(check.problems) > before or kind is None or not effective:
        return None
    version = TariffVersion(effective=effective[0], kind=kind, **kwargs)
    problems = version.problems()
    for problem in problems:
        check.problem(path, problem)
    return None if problems else version


def _accounts(check: Any, raw: Any, tariffs: dict[str, Tariff], meters: dict[str, Decimal],
              defaults: Thresholds | None, broken: set[str]) -> list[AccountSpec]:
    accounts: list[AccountSpec] = []
    seen: dict[str, str] = {}
    owners: dict[str, str] = {}
    for index, table in check.array_of_tables("prepaid.accounts", raw):
        path = f"prepaid.accounts[{index}]"
        check.known_keys(path, table, _ACCOUNT_KEYS)
        before = len(check.problems)
        name = check.required_string(path, table, "account")
        if name is not None and name in seen:
            check.problem(f"{path}.account", f"account {name} is defined twice (also {seen[name]})")
        tariff = check.required_string(path, table, "tariff")
        if tariff is not None and tariff not in tariffs and tariff not in broken:
            check.problem(f"{path}.tariff", f"unknown tariff {tariff!r}" + (
                f" (defined: {', '.join(sorted(tariffs))})" if tariffs else ": no [[prepaid.tariffs]] defined"))
        assigned: dict[str, Decimal] = {}
        for i, meter in enumerate(check.string_list(f"{path}.meters", table.get("meters", [])) or []):
            address = address_key(meter)
            if address not in meters:
                check.problem(f"{path}.meters[{i}]", f"meter {meter} is not in [[meters]]")
            elif address in owners:
                check.problem(f"{path}.meters[{i}]", f"meter {address} already belongs to account {owners[address]}")
            else:
                assigned[address] = meters[address]
                owners[address] = name or "?"
        if not assigned and "meters" not in table:
            check.problem(f"{path}.meters", "missing: the account's meters")
        thresholds: dict[str, str] = {}
        if "thresholds" in table:
            t = check.table(f"{path}.thresholds", table["thresholds"]) or {}
            check.known_keys(f"{path}.thresholds", t, _THRESHOLD_KEYS)
            thresholds = {k: str(v) for k, v in t.items() if k in _THRESHOLD_KEYS}
            if defaults is not None:
                _thresholds(check, f"{path}.thresholds", t, {k: getattr(defaults, k) for k in _THRESHOLD_KEYS})
        protected = _bool(check, f"{path}.protected", table.get("protected", False))
        customer = table.get("customer", "")
        area = table.get("area", "")
        for key, value in (("customer", customer), ("area", area)):
            if not isinstance(value, str):
                check.problem(f"{path}.{key}", f"must be a string, got {show(value)}")
        opening = _opening(check, f"{path}.opening_balance", table["opening_balance"]) \
            if "opening_balance" in table else None
        if len(check.problems) > before or name is None or tariff is None:
            continue
        seen[name] = path
        accounts.append(AccountSpec(account=name, tariff=tariff, meters=assigned, customer=customer, area=area,
                                    protected=protected, thresholds=thresholds, opening_balance=opening,
                                    opening_ref=f"config {path}" if opening is not None else ""))
    return accounts


def _limits(check: Any, raw: Any, meters: dict[str, Decimal], accounts: list[AccountSpec]) -> list[PowerLimit]:
    limits: list[PowerLimit] = []
    owner = {m: a for a in accounts for m in a.meters}
    for index, table in check.array_of_tables("prepaid.power_limits", raw):
        path = f"prepaid.power_limits[{index}]"
        check.known_keys(path, table, _LIMIT_KEYS)
        before = len(check.problems)
        meter = check.required_string(path, table, "meter")
        if meter is not None:
            meter = address_key(meter)
            if meter not in meters:
                check.problem(f"{path}.meter", f"meter {meter} is not in [[meters]]")
        limit = _money(check, f"{path}.limit_kw", table["limit_kw"], positive=True) if "limit_kw" in table else None
        hold = check.duration(f"{path}.hold", table.get("hold", "5m"))
        action = {"trip": CommandKind.TRIP, "alarm": CommandKind.ALARM}.get(table.get("action", "alarm"))
        if action is None:
            check.problem(f"{path}.action", f'must be "trip" or "alarm", got {show(table.get("action"))}')
        windows = []
        for i, entry in check.array_of_tables(f"{path}.windows", table.get("windows", [])):
            check.known_keys(f"{path}.windows[{i}]", entry, _WINDOW_KEYS)
            start = _time(check, f"{path}.windows[{i}].start", entry.get("start"))
            end = _time(check, f"{path}.windows[{i}].end", entry.get("end"))
            kw = _money(check, f"{path}.windows[{i}].limit_kw", entry.get("limit_kw"), positive=True)
            if start is not None and end is not None and kw is not None:
                windows.append(PowerWindow(start, end, kw))
        if limit is None and not windows and "limit_kw" not in table:
            check.problem(path, "needs limit_kw, windows, or both")
        if len(check.problems) > before or meter is None or hold is None or action is None:
            continue
        account = owner.get(meter)
        power_limit = PowerLimit(meter=meter, account=account.account if account else None,
                                 area=account.area if account else "", limit_kw=limit,
                                 hold=dt.timedelta(seconds=hold), action=action, windows=tuple(windows),
                                 protected=bool(account and account.protected))
        for problem in power_limit.problems():
            check.problem(path, problem)
        limits.append(power_limit)
    return limits


def _notify(check: Any, raw: Any, base_dir: Path | None) -> list[NotifyConfig]:
    sinks = []
    for index, table in check.array_of_tables("prepaid.notify", raw):
        path = f"prepaid.notify[{index}]"
        check.known_keys(path, table, _NOTIFY_KEYS)
        kind = table.get("kind")
        kinds = None
        if "kinds" in table:
            listed = check.string_list(f"{path}.kinds", table["kinds"])
            kinds = frozenset(listed) if listed is not None else None
        if kind == "log":
            target = check.required_string(path, table, "path")
            if target is not None:
                file = Path(target)
                if base_dir is not None and not file.is_absolute():
                    file = base_dir / file
                sinks.append(NotifyConfig(kind="log", path=file, kinds=kinds))
        elif kind == "webhook":
            url = check.required_string(path, table, "url")
            if url is not None and not url.startswith(("http://", "https://")):
                check.problem(f"{path}.url", f"must be an http:// or https:// URL, got {show(url)}")
                url = None
            template = table.get("template")
            if template is not None and not isinstance(template, str):
                check.problem(f"{path}.template", f"must be a string, got {show(template)}")
                template = None
            elif template is not None:
                from meterd.control.notify import WebhookSink

                try:
                    WebhookSink("http://check.invalid/", template=template)
                except ValueError as exc:
                    check.problem(f"{path}.template", str(exc).replace("webhook http://check.invalid/: ", ""))
                    url = None
            headers = check.table(f"{path}.headers", table.get("headers", {})) or {}
            timeout = check.duration(f"{path}.timeout", table.get("timeout", 5.0))
            if url is not None and timeout is not None:
                sinks.append(NotifyConfig(kind="webhook", url=url, template=template, kinds=kinds,
                                          headers={str(k): str(v) for k, v in headers.items()}, timeout=timeout))
        else:
            check.problem(f"{path}.kind", f'must be "log" or "webhook", got {show(kind)}')
    return sinks
