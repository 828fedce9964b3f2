"""The operator console's read-only endpoints (``/api/v1/whoami``, ``/api/v1/search`` and
``/api/v1/console/...``): what the console's meter, account, area and terminal pages show that the
plain API does not answer in one request.  Viewer role, except where a page shows a technician's
diagnostics.

Strategy: every list is a page -- ``limit`` (default 50, at most 500) and an opaque ``cursor``
(the ``next`` of the previous page; None when there is no more) -- filtered and ordered in SQL or
over the config's in-memory meter list, so a district of 100,000 meters answers as fast as a demo.
The handlers are registered in :data:`meterd.api.app.ENDPOINTS` (``*CONSOLE_ENDPOINTS``) and take
the same :class:`~meterd.api.app.Api` (its stores, clock and config) as the others; nothing here
writes.  The console's actions go to the plain API's write endpoints, with their role checks.

Accounts by name, the accounts of a page of meters, a meter's audit trail and the command list
are the control store's public reads (:class:`~meterd.control.command_store.CommandStore`:
``search_accounts``, ``meter_owners``, ``audit_page``, ``commands``).  The ledger with its running
balance and a terminal's failures and online intervals, which no store method pages yet, go
through the owning store's connection and lock, with the placeholders its other queries use.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterd.api.app import Api, ApiError, Caller, Endpoint, _query_day, _query_time
from meterd.api.schemas import STR, TIME, account_doc, anomaly_doc, command_doc, iso, outage_doc, reading_doc
from meterd.api.tokens import Role
from meterd.checking import shown, small_int
from meterd.clock import local_date
from meterd.control.state import LedgerRow
from meterd.readings import address_key
from meterd.storage.sqlite import MeterRecord

PAGE: Final = 50
MAX_PAGE: Final = 500
MAX_POINTS: Final = 720  # a curve is bucketed to at most this many points
RELAY_QUANTITIES: Final = ("relay.open", "relay.command_open", "relay.protected", "alarm.pre_trip")
POWER: Final = "power.active.total"
ENERGY: Final = "energy.active.import.total"
OBJ: Final = {"type": "object"}
_AUTH: Final = (401, 403)


def _limit(request: Request) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return PAGE
    value = small_int(text, 1, MAX_PAGE)
    if value is None:
        raise ApiError(400, f"query parameter limit={shown(text)} must be an integer from 1 to {MAX_PAGE}")
    return value


def _int_cursor(request: Request) -> int | None:
    text = request.query_params.get("cursor")
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"query parameter cursor={text!r} is not a cursor this list gave")
    return int(text)


def _page(rows: list[Any], limit: int, cursor_of: Any) -> tuple[list[Any], str | None]:
    """``rows`` fetched with ``limit + 1``: the page and the next cursor (None at the end)."""
    if len(rows) > limit:
        return rows[:limit], str(cursor_of(rows[limit - 1]))
    return rows, None


def _units(api: Api) -> Any:
    config = api.config
    if config is None or config.analytics is None or config.analytics.topology is None:
        return None
    return config.analytics.topology


def _terminal_channels(api: Api) -> list[tuple[str, str, str]]:
    """(terminal id, channel, kind) of the configured DTU / MQTT / 1376.1 terminals."""
    return [(t["id"], t["channel"], t["kind"]) for t in api._terminals()]


def _owners(api: Api, meters: Iterable[str]) -> dict[str, str]:
    """meter -> its account, for a page of meters (one query, not the district's table)."""
    return api.control.meter_owners(list(meters))


def _meter_list(api: Api) -> list[Any]:
    """The configured meters by address (the config's list, sorted once per config), else the
    archive's records."""
    if api.config is not None and api.config.meters:
        cached = getattr(api, "_console_meters", None)
        if cached is None or cached[0] is not api.config:
            cached = (api.config, sorted(api.config.meters, key=lambda m: m.address))
            api._console_meters = cached  # type: ignore[attr-defined]
        return cached[1]
    return list(api.archive.meters())


# --- who am I, search --------------------------------------------------------------------------


async def whoami(api: Api, request: Request, caller: Caller | None) -> Response:
    assert caller is not None
    return JSONResponse({"name": caller.name, "role": str(caller.role), "token_id": caller.token_id,
                         "roles": [str(r) for r in Role if caller.role.allows(r)]})


def _digits_match(address: str, q: str) -> bool:
    """A short form: the address ends with the digits typed (``12`` finds ``000000000012``),
    leading zeros of the query aside."""
    return address.endswith((q, q.lstrip("0") or "0"))


async def search(api: Api, request: Request, caller: Caller | None) -> Response:
    q = (request.query_params.get("q") or "").strip()
    limit = min(_limit(request), 50)
    if not q:
        raise ApiError(400, "query parameter q is required: a meter address (or its last digits), an account, "
                            "a customer's name, a terminal or an area")
    if len(q) > 100:
        raise ApiError(400, "query parameter q is over 100 characters")

    def work() -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        low = q.lower()
        # meters: the exact address first, then short forms and names
        exact = address_key(q)
        meters = _meter_list(api)
        hits = [m for m in meters if m.address == exact]
        hits += [m for m in meters if m.address != exact and (
            (q.isdigit() and _digits_match(m.address, q)) or (m.name and low in m.name.lower()))][:limit]
        if not hits and exact.isdigit() and (api.archive.meter(exact) is not None or _owners(api, [exact])):
            hits = [MeterRecord(exact, "", "", Decimal(1), Decimal(1))]
        owners = _owners(api, (m.address for m in hits[:limit]))
        for m in hits[:limit]:
            found.append({"type": "meter", "id": m.address, "label": m.address,
                          "detail": " · ".join(x for x in (m.name, m.channel, owners.get(m.address, "")) if x)})
        # accounts by their name or the customer's (the words as typed: % and _ are no wildcards)
        for a in api.control.search_accounts(q, limit=limit):
            found.append({"type": "account", "id": a.account, "label": a.account,
                          "detail": " · ".join(x for x in (a.customer, a.area, a.state) if x)})
        for terminal, channel, kind in _terminal_channels(api):
            if low in terminal.lower() or low in channel.lower():
                found.append({"type": "terminal", "id": terminal, "label": terminal, "detail": f"{kind} · {channel}"})
        topology = _units(api)
        if topology is not None:
            for unit in sorted(topology.units.values(), key=lambda u: u.name):
                if low in unit.name.lower():
                    found.append({"type": "area", "id": unit.name, "label": unit.name, "detail": unit.kind})
        return {"q": q, "results": found[: limit * 4]}
    return JSONResponse(await run_in_threadpool(work))


# --- meters ------------------------------------------------------------------------------------


async def meter_list(api: Api, request: Request, caller: Caller | None) -> Response:
    """The meters by address, a page at a time, optionally one channel's or one group's."""
    limit = _limit(request)
    after = request.query_params.get("cursor") or None
    channel = request.query_params.get("channel") or None
    group = request.query_params.get("group") or None

    def work() -> dict[str, Any]:
        if channel is None and group is None and (api.config is None or not api.config.meters):
            rows: list[Any] = api.archive.meters(after=after, limit=limit + 1)
        else:
            meters = _meter_list(api)
            start = 0 if after is None else _after(meters, after)
            rows = []
            for m in meters[start:]:
                if (channel is None or m.channel == channel) and (group is None or m.group == group):
                    rows.append(m)
                    if len(rows) > limit:
                        break
        rows, nxt = _page(rows, limit, lambda m: m.address)
        owners = _owners(api, (m.address for m in rows))
        return {"meters": [{"address": m.address, "name": m.name, "channel": m.channel, "group": m.group,
                            "protocol": str(m.protocol), "account": owners.get(m.address)}
                           for m in rows], "next": nxt}
    return JSONResponse(await run_in_threadpool(work))


def _after(meters: list[Any], after: str) -> int:
    """The index of the first meter after the address ``after`` in the sorted ``meters``."""
    lo, hi = 0, len(meters)
    while lo < hi:
        mid = (lo + hi) // 2
        if meters[mid].address <= after:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _channel_terminal(api: Api, channel: str) -> dict[str, Any] | None:
    for t in api._terminals():
        if t["channel"] == channel:
            return t
    return None


async def meter_page(api: Api, request: Request, caller: Caller | None) -> Response:
    """One meter: its archive record, latest values, relay and protection state, account, the
    terminal behind which it sits, attempts in the last 24 h by outcome, open anomalies, pending
    commands."""
    address = address_key(request.path_params["address"])

    def work() -> dict[str, Any]:
        if not api._meter_exists(address):
            raise ApiError(404, f"unknown meter {address}")
        now = api.clock()
        record = api.archive.meter(address)
        configured = next((m for m in (api.config.meters if api.config is not None else ()) if m.address == address),
                          None)
        latest = api.archive.latest(address)
        owner = _owners(api, [address]).get(address)
        account = api.control.account(owner) if owner else None
        attempts = api.archive.attempts(meter=address, since=now - timedelta(hours=24))
        outcomes: dict[str, int] = {}
        for a in attempts:
            outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
        last_ok = next((a for a in reversed(attempts) if a.outcome == "ok"), None)
        last_failure = next((a for a in reversed(attempts) if a.outcome not in ("ok", "no_record")), None)
        channel = (record.channel if record is not None else "") or (configured.channel if configured else "")
        relay = {q: reading_doc(latest[q]) for q in RELAY_QUANTITIES if q in latest}
        return {
            "address": address, "name": (record.name if record else "") or (configured.name if configured else ""),
            "channel": channel, "protocol": record.protocol if record else (str(configured.protocol) if configured else ""),
            "group": record.group if record else (configured.group if configured else ""),
            "ct": str(record.ct) if record else "1", "pt": str(record.pt) if record else "1",
            "terminal": _channel_terminal(api, channel),
            "latest": {q: reading_doc(r) for q, r in latest.items()}, "relay": relay,
            "account": account_doc(account, now) if account is not None else None,
            "attempts_24h": {"total": len(attempts), "by_outcome": outcomes,
                             "last_ok": iso(last_ok.timestamp) if last_ok else None,
                             "last_failure": None if last_failure is None else {
                                 "at": last_failure.timestamp.isoformat(), "outcome": last_failure.outcome,
                                 "item": last_failure.item, "detail": last_failure.detail}},
            "anomalies": [anomaly_doc(e) for e in api.anomalies.events(state="open", meter=address, limit=50)],
            "pending": [command_doc(c) for c in api.control.commands(meter=address, limit=20)
                        if c.state.value in ("queued", "sent")],
        }
    return JSONResponse(await run_in_threadpool(work))


def _bucket(span: timedelta) -> timedelta:
    """The smallest of the usual steps that keeps a span within :data:`MAX_POINTS` points."""
    for step in (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400):
        if span / timedelta(seconds=step) <= MAX_POINTS:
            return timedelta(seconds=step)
    return timedelta(days=30)


async def meter_curve(api: Api, request: Request, caller: Caller | None) -> Response:
    """A meter's load (mean kW per bucket) and energy (kWh imported per bucket: the register's
    rise) over ``since``..``until`` (default the last 24 h), in at most :data:`MAX_POINTS` buckets."""
    address = address_key(request.path_params["address"])
    until = _query_time(request, "until") or api.clock()
    since = _query_time(request, "since") or until - timedelta(hours=24)
    if since >= until:
        raise ApiError(400, "query parameter since must be before until")
    if until - since > timedelta(days=400):
        raise ApiError(400, "query parameters since..until span at most 400 days")
    step = _bucket(until - since)

    def work() -> dict[str, Any]:
        if not api._meter_exists(address):
            raise ApiError(404, f"unknown meter {address}")
        first = since.timestamp()
        size = step.total_seconds()
        power: dict[int, list[float]] = {}
        for r in api.archive.readings(address, since=since, until=until, quantity=POWER):
            if isinstance(r.value, Decimal):
                power.setdefault(int((r.timestamp.timestamp() - first) // size), []).append(float(r.value))
        last: dict[int, Decimal] = {}
        before = api.archive.readings(address, since=since - timedelta(days=2), until=since, quantity=ENERGY)
        previous = before[-1].value if before and isinstance(before[-1].value, Decimal) else None
        for r in api.archive.readings(address, since=since, until=until, quantity=ENERGY):
            if isinstance(r.value, Decimal):
                last[int((r.timestamp.timestamp() - first) // size)] = r.value
        energy = []
        for index in sorted(last):
            if previous is not None and last[index] >= previous:
                energy.append({"at": iso(since + step * index), "kwh": str(last[index] - previous)})
            previous = last[index]
        return {"meter": address, "since": since.isoformat(), "until": until.isoformat(),
                "step_seconds": int(size),
                "power": [{"at": iso(since + step * i), "kw": round(sum(v) / len(v), 4)} for i, v in sorted(power.items())],
                "energy": energy}
    return JSONResponse(await run_in_threadpool(work))


def _audit_rows(api: Api, subjects: Iterable[str], cursor: int | None, limit: int) -> list[dict[str, Any]]:
    return [{"id": r.id, "at": r.at.astimezone(api.zone).isoformat(), "actor": r.actor, "action": r.action,
             "subject": r.subject, "detail": r.detail}
            for r in api.control.audit_page(list(subjects), before=cursor, limit=limit + 1)]


async def meter_events(api: Api, request: Request, caller: Caller | None) -> Response:
    """What happened to a meter, newest first: its audit trail (commands, calls, protection) and
    its anomalies, opened and closed."""
    address = address_key(request.path_params["address"])
    limit, cursor = _limit(request), _int_cursor(request)

    def work() -> dict[str, Any]:
        if not api._meter_exists(address):
            raise ApiError(404, f"unknown meter {address}")
        rows, nxt = _page(_audit_rows(api, [address, f"meter:{address}"], cursor, limit), limit, lambda r: r["id"])
        anomalies = [anomaly_doc(e) for e in api.anomalies.events(meter=address, limit=50)] if cursor is None else []
        return {"events": rows, "anomalies": anomalies, "next": nxt}
    return JSONResponse(await run_in_threadpool(work))


async def command_list(api: Api, request: Request, caller: Caller | None) -> Response:
    """Relay commands, newest first, a page at a time: all, a meter's, an account's or one state's."""
    limit, cursor = _limit(request), _int_cursor(request)
    q = request.query_params
    meter = address_key(q["meter"]) if q.get("meter") else None

    def work() -> dict[str, Any]:
        commands = api.control.commands(meter=meter, account=q.get("account") or None, state=q.get("state") or None,
                                        before=cursor, limit=limit + 1)
        page, nxt = _page(commands, limit, lambda c: c.id)
        return {"commands": [command_doc(c) for c in page], "next": nxt}
    return JSONResponse(await run_in_threadpool(work))


# --- accounts ----------------------------------------------------------------------------------


async def account_list(api: Api, request: Request, caller: Caller | None) -> Response:
    limit = _limit(request)
    after = request.query_params.get("cursor") or None
    state = request.query_params.get("state") or None
    area = request.query_params.get("area") or None

    def work() -> dict[str, Any]:
        rows = api.control.accounts(area=area, state=state, after=after, limit=limit + 1)
        page, nxt = _page(rows, limit, lambda a: a.account)
        now = api.clock()
        return {"accounts": [account_doc(a, now) for a in page], "next": nxt}
    return JSONResponse(await run_in_threadpool(work))


async def account_page(api: Api, request: Request, caller: Caller | None) -> Response:
    """One account with its balance and remaining energy over ``days`` (default 30; hourly for 2
    days or fewer, else daily: the balance at each bucket's end), its meters' relay state and
    its pending commands."""
    name = request.path_params["account"]
    text = request.query_params.get("days", "30")
    days = small_int(text, 1, 366)
    if days is None:
        raise ApiError(400, f"query parameter days={shown(text)} must be from 1 to 366")

    def work() -> dict[str, Any]:
        found = api.control.account(name)
        if found is None:
            raise ApiError(404, f"unknown account {name}")
        now = api.clock()
        since = max(now - timedelta(days=days), found.opened)  # nothing before the account opened
        step = _bucket(now - since)
        balance, entries = api.control.balance_movements(name, since)
        price = api.control.latest_price(name)
        series, index, edge = [], 0, since + step
        while edge <= now + step:
            while index < len(entries) and entries[index][0] < edge:
                balance += entries[index][1]
                index += 1
            at = min(edge, now)
            series.append({"at": at.isoformat(), "balance": str(balance),
                           "kwh": None if price is None else str((balance / price).quantize(Decimal("0.01")))})
            if edge >= now:
                break
            edge += step
        meters = []
        for meter in found.meters:
            latest = api.archive.latest(meter)
            meters.append({"address": meter, "relay": {q: reading_doc(latest[q]) for q in RELAY_QUANTITIES
                                                       if q in latest},
                           "energy": reading_doc(latest[ENERGY]) if ENERGY in latest else None})
        return {"account": account_doc(found, now), "price": None if price is None else str(price),
                "remaining_kwh": None if price is None else str((found.balance / price).quantize(Decimal("0.01"))),
                "step_seconds": int(step.total_seconds()), "series": series, "meters": meters,
                "override": None if found.protection_override(now) is None else {
                    "reason": found.override.reason, "operator": found.override.operator,
                    "at": found.override.at.isoformat(), "until": iso(found.override.until)} if found.override else None}
    return JSONResponse(await run_in_threadpool(work))


async def account_ledger(api: Api, request: Request, caller: Caller | None) -> Response:
    """The ledger newest first with the balance after each entry, a page at a time; ``kind=payment``
    for the payments only."""
    name = request.path_params["account"]
    limit, cursor = _limit(request), _int_cursor(request)
    kind = request.query_params.get("kind") or None

    def work() -> dict[str, Any]:
        if api.control.account(name) is None:
            raise ApiError(404, f"unknown account {name}")
        rows = api.control.ledger_page(name, kind=kind, before=cursor, limit=limit + 1)
        page, nxt = _page(rows, limit, lambda r: r[0].seq)
        # the balance after each entry: from the whole ledger, whatever kind is listed
        return {"account": name, "entries": [_entry(r, after, api.zone) for r, after in page], "next": nxt}
    return JSONResponse(await run_in_threadpool(work))


def _entry(r: LedgerRow, balance: Decimal, zone: tzinfo) -> dict[str, Any]:
    return {"seq": r.seq, "key": r.key, "kind": r.kind.value, "amount": str(r.amount),
            "at": r.at.astimezone(zone).isoformat(), "actor": r.actor, "detail": r.detail, "meter": r.meter,
            "kwh": None if r.kwh is None else str(r.kwh), "price": None if r.price is None else str(r.price),
            "balance": str(balance)}


# --- areas -------------------------------------------------------------------------------------


async def area_list(api: Api, request: Request, caller: Caller | None) -> Response:
    topology = _units(api)
    units = [] if topology is None else sorted(topology.units.values(), key=lambda u: u.name)
    return JSONResponse({"areas": [{"unit": u.name, "kind": u.kind, "parent": u.parent,
                                    "points": len(topology.points_of(u))} for u in units]})


async def area_page(api: Api, request: Request, caller: Caller | None) -> Response:
    """One area / line / group: its line loss and completeness per day over ``days`` (default 30)
    up to ``day`` (default today), its supply, sales and auxiliary points, the meters missing on
    the last day and its outages."""
    from meterd.analytics.energy import DailyRegisterStore
    from meterd.analytics.lineloss import line_loss_all

    unit = request.path_params["unit"]
    topology = _units(api)
    if topology is None or unit not in topology.units:
        raise ApiError(404, f"unknown area/line {unit!r}" + (" (no topology configured)" if topology is None else ""))
    text = request.query_params.get("days", "30")
    days = small_int(text, 1, 92)
    if days is None:
        raise ApiError(400, f"query parameter days={shown(text)} must be from 1 to 92")
    last = _query_day(request, "day", local_date(api.clock(), api.zone))
    first = last - timedelta(days=days - 1)

    def work() -> dict[str, Any]:
        days = [first + timedelta(days=i) for i in range((last - first).days + 2)]
        with DailyRegisterStore(api.config.store.state) as store:
            registers = store.registers(days)
        series = []
        for day in days[:-1]:
            found = [r for r in line_loss_all(topology, registers, day, day, history={}, kind=None) if r.unit == unit]
            if found:
                series.append(found[0].as_dict())
        points = [{"meter": p.meter, "role": str(p.role), "multiplier": str(p.multiplier), "industry": p.industry,
                   "groups": list(p.groups)} for p in topology.points_of(unit)]
        outages = [outage_doc(o) for o in api.outages.outages(limit=1000) if o.unit == unit][:50]
        u = topology.units[unit]
        return {"unit": unit, "kind": u.kind, "parent": u.parent, "loss_threshold": str(u.loss_threshold),
                "children": sorted(x.name for x in topology.units.values() if x.parent == unit),
                "first": first.isoformat(), "last": last.isoformat(), "series": series, "points": points,
                "missing": series[-1]["missing"] if series else [], "outages": outages}
    return JSONResponse(await run_in_threadpool(work))


# --- terminals ---------------------------------------------------------------------------------


async def terminal_page(api: Api, request: Request, caller: Caller | None) -> Response:
    """One terminal (DTU, MQTT, 1376.1): online now and since when, its online intervals over
    ``days`` (default 7) with the share of time online, the meters behind it (a page) and its
    latest failed attempts."""
    ident = request.path_params["terminal"]
    limit = _limit(request)
    after = request.query_params.get("cursor") or None
    text = request.query_params.get("days", "7")
    span = small_int(text, 1, 92)
    if span is None:
        raise ApiError(400, f"query parameter days={shown(text)} must be from 1 to 92")

    def work() -> dict[str, Any]:
        found = next((t for t in api._terminals() if t["id"] == ident or t["channel"] == ident), None)
        if found is None:
            raise ApiError(404, f"unknown terminal {ident!r}")
        now = api.clock()
        start = now - timedelta(days=span)
        channel = found["channel"]
        q = api.quality
        intervals = q.online_intervals(channel, start, limit=500)
        failures = q.recent_failures(channel, limit=50)
        seconds = q.online([channel], start, now).get(channel)
        meters = [m for m in (api.config.meters_on(channel) if api.config is not None else ())
                  if after is None or m.address > after]
        meters.sort(key=lambda m: m.address)
        page, nxt = _page(meters[:limit + 1], limit, lambda m: m.address)
        owners = _owners(api, (m.address for m in page))
        return {**found, "online_share": None if not seconds or not seconds[1] else round(seconds[0] / seconds[1], 4),
                "intervals": [{"start": a.astimezone(api.zone).isoformat(),
                               "end": None if b is None else b.astimezone(api.zone).isoformat()}
                              for a, b in intervals],
                "meters_page": [{"address": m.address, "name": m.name, "pn": m.pn, "group": m.group,
                                 "account": owners.get(m.address)} for m in page],
                "next": nxt,
                "failures": [{"meter": f.meter, "item": f.item, "at": f.timestamp.astimezone(api.zone).isoformat(),
                              "outcome": f.outcome, "detail": f.detail} for f in failures]}
    return JSONResponse(await run_in_threadpool(work))


_PAGED: Final = (("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, f"page size, default {PAGE}"),
                 ("cursor", STR, "the next of the previous page"))

CONSOLE_ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint("GET", "/api/v1/whoami", Role.VIEWER, "the token's name and role (the console shows the actions "
             "that role may take)", whoami, {200: OBJ}, errors=_AUTH),
    Endpoint("GET", "/api/v1/search", Role.VIEWER, "meters (address, its last digits, name), accounts (name, "
             "customer), terminals and areas matching q", search, {200: OBJ},
             query=(("q", STR, "what was typed"), _PAGED[0]), errors=(*_AUTH, 400)),
    Endpoint("GET", "/api/v1/console/meters", Role.VIEWER, "meters by address, a page at a time", meter_list,
             {200: OBJ}, query=(*_PAGED, ("channel", STR, "only this channel's"), ("group", STR, "only this group's")),
             errors=(*_AUTH, 400)),
    Endpoint("GET", "/api/v1/console/meters/{address}", Role.VIEWER, "a meter's page: latest values, relay and "
             "protection, account, terminal, attempts in 24 h, open anomalies, pending commands", meter_page,
             {200: OBJ}, path_params=("address",), errors=(*_AUTH, 404)),
    Endpoint("GET", "/api/v1/console/meters/{address}/curve", Role.VIEWER, "a meter's load (kW) and energy (kWh "
             "per bucket) over a time range", meter_curve, {200: OBJ}, path_params=("address",),
             query=(("since", TIME, "default until - 24 h"), ("until", TIME, "default now")),
             errors=(*_AUTH, 400, 404, 422)),
    Endpoint("GET", "/api/v1/console/meters/{address}/events", Role.VIEWER, "a meter's audit trail and anomalies, "
             "newest first", meter_events, {200: OBJ}, path_params=("address",), query=_PAGED,
             errors=(*_AUTH, 400, 404)),
    Endpoint("GET", "/api/v1/console/commands", Role.VIEWER, "relay commands newest first, a page at a time",
             command_list, {200: OBJ}, query=(*_PAGED, ("meter", STR, "only this meter's"),
                                               ("account", STR, "only this account's"), ("state", STR, "only this state")),
             errors=(*_AUTH, 400)),
    Endpoint("GET", "/api/v1/console/accounts", Role.VIEWER, "accounts by name, a page at a time", account_list,
             {200: OBJ}, query=(*_PAGED, ("state", STR, "only this state"), ("area", STR, "only this area")),
             errors=(*_AUTH, 400)),
    Endpoint("GET", "/api/v1/console/accounts/{account}", Role.VIEWER, "an account's page: balance and remaining "
             "energy over time, meters, protection", account_page, {200: OBJ}, path_params=("account",),
             query=(("days", {"type": "integer"}, "the chart's span, default 30"),), errors=(*_AUTH, 400, 404)),
    Endpoint("GET", "/api/v1/console/accounts/{account}/ledger", Role.VIEWER, "the ledger newest first with the "
             "balance after each entry, a page at a time", account_ledger, {200: OBJ}, path_params=("account",),
             query=(*_PAGED, ("kind", STR, "only this kind, e.g. payment")), errors=(*_AUTH, 400, 404)),
    Endpoint("GET", "/api/v1/console/areas", Role.VIEWER, "the topology's areas, lines and groups", area_list,
             {200: OBJ}, errors=_AUTH),
    Endpoint("GET", "/api/v1/console/areas/{unit}", Role.VIEWER, "an area's page: line loss and completeness per "
             "day, points, missing meters, outages", area_page, {200: OBJ}, path_params=("unit",),
             query=(("days", {"type": "integer"}, "default 30"), ("day", {"type": "string", "format": "date"},
                                                                   "the last day, default today")),
             errors=(*_AUTH, 400, 404, 422)),
    Endpoint("GET", "/api/v1/console/terminals/{terminal}", Role.VIEWER, "a terminal's page: online history, meters "
             "behind it (a page), recent failures", terminal_page, {200: OBJ}, path_params=("terminal",),
             query=(*_PAGED, ("days", {"type": "integer"}, "online history span, default 7")),
             errors=(*_AUTH, 400, 404)),
)
