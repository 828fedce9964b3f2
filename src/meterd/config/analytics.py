"""The ``[topology]``, ``[analytics]`` and ``[[sync.jobs]]`` sections: areas and lines with their
metering points, anomaly limits, outage detection, and the billing-system sync jobs.

::

    [[topology.units]]
    name = "TA-001"                 # a transformer area (台区)
    kind = "area"                   # area | line | group
    parent = "F-12"                 # the feeder line it hangs on (optional)
    loss_threshold = "8"            # percent: rates above are flagged (default [analytics].loss_threshold)
    jump_threshold = "5"            # percentage points against the unit's own recent average

    [[topology.points]]
    meter = "000000000001"          # a configured [[meters]] address
    unit = "TA-001"
    role = "supply"                 # supply (考核表) | sales (用户表) | auxiliary
    multiplier = "1"                # extra factor; readings already carry CT × PT
    industry = "residential"
    groups = ["north"]

    [analytics]
    loss_threshold = "10"
    jump_threshold = "5"
    check_every = "60s"             # anomaly and outage checks
    voltage_nominal = "220"
    voltage_low_pct = "-10"
    voltage_high_pct = "7"
    imbalance_pct = "30"
    no_data_after = "24h"
    clock_drift = "5m"
    outage_silent_after = "30m"
    outage_min_share = "0.6"
    outage_min_meters = 3
    generators = ["000000000007"]   # meters that may export (PV): no reverse-energy anomaly

    [[sync.jobs]]
    name = "payments"
    kind = "import_payments"        # import_payments | import_accounts | export_readings | export_balances
    folder = "/srv/billing/payments"   # a drop folder (inbox/ outbox/ processed/ quarantine/) ...
    # url = "https://billing.example/api/payments"   # ... or an HTTP JSON endpoint
    # token_env = "METERD_BILLING_TOKEN"
    schedule = "*/5 * * * *"        # cron (CST); omitted: only `meterd sync run NAME`
    format = "csv"                  # exports: csv | json
    encoding = "utf-8"              # exports: utf-8 | gbk
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.checking import show
from meterd.config.keys import keys
from meterd.readings import address_key

_UNIT_KEYS: Final = keys("topology.units[]")
_POINT_KEYS: Final = keys("topology.points[]")
_ANALYTICS_KEYS: Final = keys("analytics")
_JOB_KEYS: Final = keys("sync.jobs[]")
_UNIT_KINDS: Final = ("area", "line", "group")
_ROLES: Final = ("supply", "sales", "auxiliary")
_JOB_KINDS: Final = ("import_payments", "import_accounts", "export_readings", "export_balances")


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    topology: Any  # meterd.analytics.topology.Topology
    limits: Any  # meterd.analytics.anomalies.Limits
    check_every: float = 60.0
    outage_silent_after: dt.timedelta = dt.timedelta(minutes=30)
    outage_min_share: Decimal = Decimal("0.6")
    outage_min_meters: int = 3
    generators: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SyncConfig:
    jobs: tuple[Any, ...] = ()  # meterd.billing_link.jobs.JobSpec
    schedules: dict[str, str] = field(default_factory=dict)


def _number(check: Any, path: str, value: Any, *, low: Decimal | None = None) -> Decimal | None:
    try:
        number = Decimal(str(value).strip()) if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
            else None
    except ArithmeticError:
        number = None
    if number is None or not number.is_finite() or (low is not None and number < low):
        check.problem(path, f"must be a number{'' if low is None else f' of at least {low}'} (as a string, e.g. "
                            f'"10"), got {show(value)}')
        return None
    return number


_address = address_key


def parse_analytics(check: Any, topology_raw: Any, analytics_raw: Any, *, meters: set[str]) -> AnalyticsConfig | None:
    from meterd.analytics.anomalies import Limits
    from meterd.analytics.topology import Point, Role, Topology, Unit

    before = len(check.problems)
    analytics = check.table("analytics", analytics_raw if analytics_raw is not None else {}) or {}
    check.known_keys("analytics", analytics, _ANALYTICS_KEYS)
    default_loss = _number(check, "analytics.loss_threshold", analytics.get("loss_threshold", "10"), low=Decimal(0))
    default_jump = _number(check, "analytics.jump_threshold", analytics.get("jump_threshold", "5"), low=Decimal(0))
    topology = check.table("topology", topology_raw if topology_raw is not None else {}) or {}
    check.known_keys("topology", topology, keys("topology"))
    units: dict[str, Any] = {}
    for index, table in check.array_of_tables("topology.units", topology.get("units", [])):
        path = f"topology.units[{index}]"
        check.known_keys(path, table, _UNIT_KEYS)
        name = check.required_string(path, table, "name")
        kind = table.get("kind", "area")
        if kind not in _UNIT_KINDS:
            check.problem(f"{path}.kind", f"must be one of {', '.join(_UNIT_KINDS)}, got {show(kind)}")
            continue
        loss = _number(check, f"{path}.loss_threshold", table["loss_threshold"], low=Decimal(0)) \
            if "loss_threshold" in table else default_loss
        jump = _number(check, f"{path}.jump_threshold", table["jump_threshold"], low=Decimal(0)) \
            if "jump_threshold" in table else default_jump
        if name is None or loss is None or jump is None:
            continue
        if name in units:
            check.problem(f"{path}.name", f"unit {name!r} is defined twice")
            continue
        units[name] = Unit(name=name, kind=kind, loss_threshold=loss, jump_threshold=jump,
                           parent=table.get("parent"))
    for name, unit in units.items():
        if unit.parent is not None and unit.parent not in units:
            check.problem("topology.units", f"unit {name}: parent {unit.parent!r} is not a unit")
    points = []
    for index, table in check.array_of_tables("topology.points", topology.get("points", [])):
        path = f"topology.points[{index}]"
        check.known_keys(path, table, _POINT_KEYS)
        meter = check.required_string(path, table, "meter")
        unit = check.required_string(path, table, "unit")
        role = table.get("role", "sales")
        multiplier = _number(check, f"{path}.multiplier", table.get("multiplier", "1"), low=Decimal(0))
        ok = meter is not None and unit is not None and multiplier is not None
        if meter is not None and _address(meter) not in meters:
            check.problem(f"{path}.meter", f"meter {meter} is not in [[meters]]")
            ok = False
        if unit is not None and unit not in units:
            check.problem(f"{path}.unit", f"unknown unit {unit!r}" + (f" (defined: {', '.join(sorted(units))})"
                                                                      if units else ": no [[topology.units]]"))
            ok = False
        if role not in _ROLES:
            check.problem(f"{path}.role", f"must be one of {', '.join(_ROLES)}, got {show(role)}")
            ok = False
        groups = check.string_list(f"{path}.groups", table.get("groups", [])) or []
        industry = table.get("industry", "")
        if not isinstance(industry, str):
            check.problem(f"{path}.industry", f"must be a string, got {show(industry)}")
            ok = False
        if ok and multiplier is not None:
            points.append(Point(meter=_address(meter), unit=unit, role=Role(role), multiplier=multiplier,
                                industry=industry, groups=tuple(groups)))
    result_topology = Topology(units=units, points=tuple(points))
    if len(check.problems) == before:
        for problem in result_topology.problems():
            check.problem("topology", problem)

    def duration(key: str, default: float) -> dt.timedelta:
        if key not in analytics:
            return dt.timedelta(seconds=default)
        seconds = check.duration(f"analytics.{key}", analytics[key])
        return dt.timedelta(seconds=seconds if seconds is not None else default)

    limit_kwargs: dict[str, Any] = {}
    for key in ("voltage_nominal", "voltage_low_pct", "voltage_high_pct", "imbalance_pct"):
        if key in analytics:
            value = _number(check, f"analytics.{key}", analytics[key])
            if value is not None:
                limit_kwargs[key] = value
    for key, default in (("no_data_after", 86400.0), ("clock_drift", 300.0)):
        if key in analytics:
            limit_kwargs[key] = duration(key, default)
    share = _number(check, "analytics.outage_min_share", analytics.get("outage_min_share", "0.6"), low=Decimal(0))
    min_meters = analytics.get("outage_min_meters", 3)
    if isinstance(min_meters, bool) or not isinstance(min_meters, int) or min_meters < 1:
        check.problem("analytics.outage_min_meters", f"must be a positive integer, got {show(min_meters)}")
        min_meters = 3
    generators = {_address(g) for g in check.string_list("analytics.generators", analytics.get("generators", []))
                  or []}
    for g in sorted(generators - meters):
        check.problem("analytics.generators", f"meter {g} is not in [[meters]]")
    every = check.duration("analytics.check_every", analytics.get("check_every", 60.0)) or 60.0
    if len(check.problems) > before:
        return None
    return AnalyticsConfig(topology=result_topology, limits=Limits(**limit_kwargs), check_every=every,
                           outage_silent_after=duration("outage_silent_after", 1800.0),
                           outage_min_share=share or Decimal("0.6"), outage_min_meters=min_meters,
                           generators=frozenset(generators))


def parse_sync(check: Any, raw: Any, *, base_dir: Path | None, secret_env: Any) -> SyncConfig | None:
    from meterd.billing_link.jobs import JobKind, JobSpec
    from meterd.billing_link.model import DEFAULT_MAX_FILE_MB, MAX_FILE_MB_LIMIT

    table = check.table("sync", raw)
    if table is None:
        return None
    check.known_keys("sync", table, keys("sync"))
    before = len(check.problems)
    jobs = []
    names: set[str] = set()
    for index, job in check.array_of_tables("sync.jobs", table.get("jobs", [])):
        path = f"sync.jobs[{index}]"
        if "token" in job:
            check.problem(f"{path}.token", "secrets are not written in the config: set token_env to the name of an "
                                           "environment variable holding it")
        check.known_keys(path, {k: v for k, v in job.items() if k != "token"}, _JOB_KEYS)
        name = check.required_string(path, job, "name")
        kind = job.get("kind")
        if kind not in _JOB_KINDS:
            check.problem(f"{path}.kind", f"must be one of {', '.join(_JOB_KINDS)}, got {show(kind)}")
        if name is not None and name in names:
            check.problem(f"{path}.name", f"job {name!r} is defined twice")
        folder = url = None
        if ("folder" in job) == ("url" in job):
            check.problem(path, "needs exactly one of folder (a drop folder) or url (an HTTP JSON endpoint)")
        if "folder" in job:
            text = check.string(f"{path}.folder", job["folder"])
            if text is not None:
                folder = Path(text)
                if base_dir is not None and not folder.is_absolute():
                    folder = base_dir / folder
        if "url" in job:
            url = check.string(f"{path}.url", job["url"])
            if url is not None and not url.startswith(("http://", "https://")):
                check.problem(f"{path}.url", f"must be an http:// or https:// URL, got {show(url)}")
        token_env = secret_env(check, path, job, "token_env", required=False)
        schedule = job.get("schedule")
        if schedule is not None:
            try:
                from apscheduler.triggers.cron import CronTrigger

                CronTrigger.from_crontab(schedule)
            except (ValueError, TypeError) as exc:
                check.problem(f"{path}.schedule", f"not a cron expression ({exc}): {show(schedule)}")
        fmt = job.get("format", "csv")
        if fmt not in ("csv", "json"):
            check.problem(f"{path}.format", f'must be "csv" or "json", got {show(fmt)}')
        encoding = job.get("encoding", "utf-8")
        if encoding not in ("utf-8", "gbk"):
            check.problem(f"{path}.encoding", f'must be "utf-8" or "gbk", got {show(encoding)}')
        chunk = job.get("chunk", 500)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            check.problem(f"{path}.chunk", f"must be a positive integer, got {show(chunk)}")
        max_file_mb = job.get("max_file_mb", DEFAULT_MAX_FILE_MB)
        if isinstance(max_file_mb, bool) or not isinstance(max_file_mb, int) or not 1 <= max_file_mb <= MAX_FILE_MB_LIMIT:
            check.problem(f"{path}.max_file_mb", f"must be an integer 1..{MAX_FILE_MB_LIMIT} (MiB), got {show(max_file_mb)}")
        if len(check.problems) > before or name is None:
            continue
        names.add(name)
        jobs.append(JobSpec(name=name, kind=JobKind(kind), folder=folder, url=url, token_env=token_env,
                            schedule=schedule, format=fmt, encoding=encoding, chunk=chunk, max_file_mb=max_file_mb))
    if len(check.problems) > before:
        return None
    return SyncConfig(jobs=tuple(jobs), schedules={j.name: j.schedule for j in jobs if j.schedule})
