"""``meterd demo``: a simulated district polled by the real daemon, readings shown as they arrive.

The district: two RS-485 buses on pseudo-terminals (2400 8E1, with wire time, like real
buses) and two serial servers on TCP ports, each with a handful of DL/T 645 meters -- most speak
DL/T 645-2007, two old ones on the first bus DL/T 645-1997 -- plus a Modbus RTU bus (pty, 9600
8N1) and a Modbus TCP gateway of commercial meters.  Energy registers move (the simulated clock
runs 60x faster than real time so the numbers move visibly).  One meter never answers and one
garbles its replies, so failures show up too.  Every meter is polled by the same quantity names;
each is asked in its own protocol and the readings cannot tell them apart.

Seven of the meters are the customers of one transformer area, TA-DEMO, whose supply meter (台区总表,
meter 5, behind a 400/5 CT) measures them plus a 5 % technical loss
(:class:`~meterd.simulators.area.Area`): the daemon reads the daily freezes, and ``meterd lineloss``
and the dashboard's line-loss panel show the area's loss.  For that to show at once the simulated
clock starts today at 23:55 CST with three days of daily freezes behind it: yesterday's loss is there
from the first read, today's a few seconds later when the meters freeze at midnight.  (The meters'
clocks run ahead of the wall clock, as they would at 60x anyway; relay commands are written with a
long validity for that reason.)

The prepaid story: a household runs out of money and is tripped, pays, and the master permits the
reclose (合闸允许); the relay stays open until the customer presses the button on the meter, which
the demo does for them a moment later -- the relay poll then shows the supply back.

Terminals (:mod:`meterd.cli.demo_terminals`): a Q/GDW 1376.1 concentrator with four meters, a GPRS
DTU with three and -- where ``mosquitto`` is installed -- an MQTT terminal with two on a broker of
the demo's own.  The concentrator's events become anomalies within seconds: the meter archive the
master downloads at login (ERC3) and, 5 s in, a meter behind it that loses power (ERC31).

The billing system: two sync jobs through drop folders under ``<data-dir>/billing`` -- payments in
(one for an unknown account, quarantined with its reason) and balances out -- run 3 s in and then
every minute (``meterd sync status``).

The demo writes the config it generated next to its store (``<data-dir>/demo.toml``) so an
operator can look at it, and everything the daemon read can be listed afterwards with
``meterd readings --meter ADDR --data-dir <data-dir>``.

The demo also serves the HTTP API and the operator dashboard (``--api-port``, default 8645; 0
turns it off): it makes an admin token named ``demo-dashboard`` (stored hashed like any other; the
previous demo's is revoked) and prints the dashboard's address with the token in the URL fragment.
When the default port is taken the demo runs without the API and says so; a port given on the
command line that is taken is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, time
from pathlib import Path
from typing import TypedDict

from meterd.app import build_node
from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error, format_value, print_json
from meterd.cli.demo_terminals import DemoTerminals, start_terminals
from meterd.cli.run import summary, summary_lines
from meterd.clock import CST, local_text, today_cst
from meterd.collector.daemon import describe_plan
from meterd.collector.poll import RoundResult
from meterd.config.loader import parse_config
from meterd.heap import settle_heap
from meterd.simulators.fleet import AreaSpec, FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

DEMO_QUANTITIES = [
    "energy.active.import.total",
    "energy.active.import.rate2",
    "energy.active.import.rate4",
    "voltage.a",
    "current.a",
    "power.active.total",
]
DEFAULT_API_PORT = 8645
DEMO_TOKEN_NAME = "demo-dashboard"
LEGACY_METERS = ("000000000003", "000000000004")  # DL/T 645-1997 meters on the first bus
# The transformer area: its supply meter (on the second bus) and DL/T 645-2007 customers without
# rooftop PV (PV feeding back would need export registers in the balance), injected faults or a prepaid
# account: the daily freezes are read from the area's meters only, and a freeze carries the meter's own
# time -- hours ahead of the wall clock here -- which would hold up charging by the wall clock.
AREA = "TA-DEMO"
AREA_GROUP = "area"
AREA_SUPPLY = "000000000005"
AREA_CUSTOMERS = ("000000000001", "000000000002", "000000000006", "000000000007", "000000000013",
                  "000000000014", "000000000015")
AREA_LOSS = 0.05
AREA_METERS = frozenset({AREA_SUPPLY, *AREA_CUSTOMERS})
SUPPLY_CT = 80  # 400/5
SERVER_CT = 20  # the serial servers' (TCP buses') meters sit behind 100/5 CTs
HISTORY_DAYS = 3
START_TIME = time(23, 55)  # today, CST: midnight (and with it a daily freeze) comes 5 s after the start
GROUPS = {"dlt645-2007": "smart", "dlt645-1997": "legacy", "modbus": "ci"}
SHOWN = [
    ("energy.active.import.total", "energy kWh"),
    ("energy.active.import.rate2", "peak kWh"),
    ("energy.active.import.rate4", "valley kWh"),
    ("voltage.a", "Ua V"),
    ("current.a", "Ia A"),
    ("power.active.total", "P kW"),
    ("relay.open", "relay"),
]


class DemoResult(TypedDict):
    channels: dict[str, dict[str, object]]  # node.stats() per channel
    prepaid: list[str]  # the prepaid story, as watch_prepaid printed it


def _now_text() -> str:
    """The wall clock for the demo's running lines: the site's time of day with its offset (the
    demo's config names no [site], so Asia/Shanghai)."""
    return local_text(datetime.now(UTC), CST)[11:]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the daemon against a simulated district")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--data-dir", default="meterd-data", help="where the demo keeps its store (default ./meterd-data)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between poll rounds (default 5)")
    p.add_argument("--quiet", action="store_true", help="do not print readings, only the prepaid story and totals")
    p.add_argument("--stop-after-story", action="store_true",
                   help="stop once the prepaid account has been tripped, has paid and is reclosed")
    p.add_argument("--api-port", type=int, default=None,
                   help=f"serve the HTTP API and dashboard on this port (default {DEFAULT_API_PORT}; 0: off)")
    p.add_argument("--api-host", default="127.0.0.1", help="address the API listens on (default 127.0.0.1)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary at the end (the readings and story go to stderr)")
    p.set_defaults(func=run)


def simulated_rating(speed: float) -> list[str]:
    """``[plausibility]`` for simulated meters whose clocks, and so their energy, run ``speed``
    times faster than the wall clock the master stamps readings with: their rating is scaled by
    the same factor (and half again for the jitter between the two clocks), else every advance
    would be more than a real meter could carry."""
    if speed <= 1:
        return []
    return ["[plausibility]  # the simulated meters run " + f"{speed:g}x faster than the wall clock",
            f"rated_current = {int(150 * speed)}", ""]


def meter_ct(address: str, kind: str) -> int:
    """The CT ratio of a demo meter: the config's ``ct`` and the area model's agree on it."""
    if address == AREA_SUPPLY:
        return SUPPLY_CT
    return 1 if kind == "pty" else SERVER_CT


def demo_area(spec_kinds: dict[str, str]) -> AreaSpec:
    """TA-DEMO, with each member's CT ratio (``spec_kinds``: address -> bus kind)."""
    members = (AREA_SUPPLY, *AREA_CUSTOMERS)
    return AreaSpec(AREA, AREA_SUPPLY, AREA_CUSTOMERS, loss=AREA_LOSS,
                    ct={a: meter_ct(a, spec_kinds[a]) for a in members if meter_ct(a, spec_kinds[a]) != 1})


def demo_config(fleet, data_dir: Path, interval: float, api: tuple[str, int] | None = None,
                terminals: DemoTerminals | None = None) -> str:
    lines = ["[store]", f'data_dir = "{data_dir.resolve()}"', 'flush_interval = "1s"', ""]
    if api is not None:
        lines += ["[api]", f"host = {json.dumps(api[0])}", f"port = {api[1]}", ""]
    lines += simulated_rating(fleet.clock.speed)
    for i, bus in enumerate(fleet.buses):
        name = f"{'mb' if bus.protocol == 'modbus' else ''}{bus.kind}{i + 1}"
        if bus.kind == "pty":
            line = bus.running.line
            lines += [f"[channels.{name}]",
                      f'serial = {{ device = "{bus.endpoint}", baud = {line.baud}, parity = "{line.parity}" }}',
                      'response_timeout = "1s"', 'inter_byte_timeout = "200ms"', "retries = 1", ""]
        else:
            host, _, port = bus.endpoint.rpartition(":")
            lines += [f"[channels.{name}]", f'tcp = {{ host = "{host}", port = {port} }}',
                      'response_timeout = "500ms"', "retries = 1"]
            if bus.framing:
                lines.append(f'framing = "{bus.framing}"')
            lines.append("")
        units = dict(zip(bus.meters, bus.units))
        for address, protocol in bus.protocols.items():
            lines += ["[[meters]]", f'address = "{address}"', f'channel = "{name}"', f'protocol = "{protocol}"',
                      f'group = "{AREA_GROUP if address in AREA_METERS else GROUPS[protocol]}"',
                      f"ct = {meter_ct(address, bus.kind)}"]
            if protocol == "modbus":
                lines += [f"unit = {units[address]}", f'model = "{bus.model}"']
            lines.append("")
    if terminals is not None:  # the concentrator, DTU and MQTT terminal with their meters
        lines += terminals.config_lines()
    lines += ["[[polls]]", 'name = "realtime"', f"interval = {interval}",
              "quantities = [" + ", ".join(f'"{q}"' for q in DEMO_QUANTITIES) + "]", ""]
    # DL/T 645-1997 has no relay state to read: the relay poll goes to the other meters
    lines += ["[[polls]]", 'name = "relay"', f"interval = {interval}", f'groups = ["smart", "ci", "{AREA_GROUP}"]',
              'quantities = ["relay.open"]', ""]
    # the area's latest three daily freezes, for line loss: today's start and yesterday's whether the
    # first read comes before the meters' midnight or after
    lines += ["[[polls]]", 'name = "frozen"', f"interval = {max(interval, 5.0)}", f'groups = ["{AREA_GROUP}"]',
              'items = ["05060101", "05060102", "05060103"]', ""]
    lines += [f"[[topology.units]]\nname = \"{AREA}\"\nloss_threshold = \"8\"\n"]
    lines += [f'[[topology.points]]\nmeter = "{AREA_SUPPLY}"\nunit = "{AREA}"\nrole = "supply"\n']
    lines += [f'[[topology.points]]\nmeter = "{m}"\nunit = "{AREA}"\nrole = "sales"\n' for m in AREA_CUSTOMERS]
    lines += ['[analytics]\ncheck_every = "5s"\n']
    lines += sync_config(data_dir)
    lines += PREPAID_CONFIG.splitlines()
    return "\n".join(lines)


# The billing system's side of the demo (SG186-style sync jobs through drop folders under the data
# directory): payments come in (one for an account the archive does not know: quarantined with its
# reason), balances go out.  Both run a few seconds after the start and then every minute.
SYNC_PAYMENTS, SYNC_BALANCES = "billing-payments", "billing-balances"
SYNC_AFTER = 3.0


def sync_config(data_dir: Path) -> list[str]:
    billing = data_dir.resolve() / "billing"
    return [(f'[[sync.jobs]]\nname = "{SYNC_PAYMENTS}"\nkind = "import_payments"\nfolder = "{billing / "payments"}"\n'
            'schedule = "* * * * *"\n'),
            (f'[[sync.jobs]]\nname = "{SYNC_BALANCES}"\nkind = "export_balances"\nfolder = "{billing / "balances"}"\n'
            'schedule = "* * * * *"\n')]


def drop_payments(data_dir: Path, day: str) -> Path:
    """The billing system's payment file in the import job's inbox (written and renamed, as producers
    do); the same ids every run, so a demo started again on its data applies nothing twice."""
    inbox = data_dir / "billing" / "payments" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / "payments-demo.csv"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("payment_id,account,amount,paid_at,channel\n"
                   f"DEMO-BILL-0001,DEMO-1002,20.00,{day},营业厅柜台\n"
                   f"DEMO-BILL-0002,DEMO-9999,30.00,{day},网上国网\n", encoding="utf-8")
    tmp.replace(path)
    return path


async def run_sync_jobs(node, stop: asyncio.Event, say: Callable[[str], None]) -> None:
    """Both sync jobs once, :data:`SYNC_AFTER` seconds in (their schedule runs them every minute)."""
    try:
        await asyncio.wait_for(stop.wait(), SYNC_AFTER)
        return
    except TimeoutError:
        pass
    if node.sync is None:
        return
    for name in (SYNC_PAYMENTS, SYNC_BALANCES):
        result = await node.sync.run_once(name)
        if result is not None:
            say(f"sync job {name}: {result.applied} applied, {result.duplicates} duplicate(s), "
                f"{result.quarantined} quarantined (meterd sync status / meterd sync quarantine)")


# Prepaid control in the demo: a household that runs out of money (a steep demo price so it happens
# within a minute), a tiered household with money still pending (no opening balance: charged, never
# tripped), and a protected one (保电) that is never tripped.  The notice period between the alarm and
# the trip is seconds here so the story fits in a minute; a site keeps the default of a day.
PREPAID_ACCOUNT, PROTECTED_ACCOUNT = "DEMO-1001", "DEMO-1003"
PREPAID_METER = "000000000009"
OPENING, TOP_UP = "0.70", "200.00"  # the story runs at night (low load): a small opening, below the alarm level
PREPAID_CONFIG = f"""
[prepaid]
check_every = "2s"
retry_every = "5s"
command_ttl = "10m"
valid_for = "30d"   # the simulated meters' clocks start up to a day ahead and run 60x fast: 12 real hours
reclose = "allowed"
trip_notice = "6s"
thresholds = {{ reminder = "2", alarm = "1", trip = "0", reclose = "1" }}

[[prepaid.tariffs]]
name = "demo-flat"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "0.60"

[[prepaid.tariffs]]
name = "demo-tiered"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "tiered"
tier_period = "year"
tiers = [{{ upto = "2160", price = "0.4883" }}, {{ upto = "4800", price = "0.5383" }}, {{ price = "0.7883" }}]

[[prepaid.accounts]]
account = "{PREPAID_ACCOUNT}"
customer = "Zhang Wei (demo: runs out of money)"
area = "TA-DEMO"
tariff = "demo-flat"
meters = ["{PREPAID_METER}"]
opening_balance = "0"

[[prepaid.accounts]]
account = "DEMO-1002"
customer = "Li Na (tiered)"
area = "TA-DEMO"
tariff = "demo-tiered"
meters = ["000000000010"]

[[prepaid.accounts]]
account = "{PROTECTED_ACCOUNT}"
customer = "Clinic (保电: never tripped automatically)"
area = "TA-DEMO"
tariff = "demo-flat"
meters = ["000000000011"]
protected = true
opening_balance = "0"
"""
DEMO_SECRETS = {"METERD_METER_PASSWORD": "02123456", "METERD_OPERATOR_CODE": "00000001"}  # the simulators' own


async def watch_prepaid(data_dir: Path, stop: asyncio.Event, *, poll: float = 1.0,
                        stop_after_story: bool = False, press: Callable[[], bool] | None = None,
                        interval: float = 5.0) -> list[str]:
    """Print the prepaid story as it happens, and play the customer: pay when the supply is cut,
    and press the meter's button (``press``) once the master has permitted the reclose.

    Uses the same paths an operator would: the state database and ``ControlStore.pay`` (what
    ``meterd pay`` calls).  Returns the lines printed, for the demo's test.  With
    ``stop_after_story`` the demo stops a little over two poll ``interval`` s after the press, so the
    relay poll has read the supply back.
    """
    from meterd.control.state import ControlStore

    printed: list[str] = []

    def say(line: str) -> None:
        line = f"{_now_text()} prepaid: {line}"
        printed.append(line)
        print(line)
        sys.stdout.flush()

    store = ControlStore(data_dir)
    try:
        opening = store.pay(PREPAID_ACCOUNT, OPENING, "DEMO-OPENING", actor="demo", now=_utcnow())
        if opening.applied:
            say(f"{PREPAID_ACCOUNT} opens with a payment of {OPENING} (flat tariff, trips at 0.00)")
        store.pay("DEMO-1002", "500.00", "DEMO-OPENING-1002", actor="demo", now=_utcnow())
        seen_states: dict[str, str] = {}
        seen_commands: dict[int, str] = {}
        paid = False
        while not stop.is_set():
            for account in store.accounts():
                if seen_states.get(account.account) != account.state:
                    if account.account in seen_states or account.state != "normal":
                        say(f"{account.account} balance {account.balance}: state {account.state}"
                            + (f" (trip held: {account.held})" if account.held else ""))
                    seen_states[account.account] = account.state
            for command in reversed(store.commands(limit=50)):
                if seen_commands.get(command.id) != command.state.value:
                    seen_commands[command.id] = command.state.value
                    relay = ""
                    if command.read_back:
                        relay = " | read back from the meter: " + ", ".join(
                            f"{k}={'yes' if v else 'no'}" for k, v in sorted(command.read_back.items()))
                    say(f"command #{command.id} {command.kind.value} -> meter {command.meter}: {command.state.value}"
                        f" ({command.reason})" + relay)
                    if (command.kind.value == "trip" and command.state.value == "confirmed"
                            and command.account == PREPAID_ACCOUNT and not paid):
                        await asyncio.sleep(2 * poll)
                        result = store.pay(PREPAID_ACCOUNT, TOP_UP, "DEMO-TOPUP-1", actor="demo", now=_utcnow())
                        paid = True
                        say(f"the customer pays {TOP_UP} at the counter (meterd pay {PREPAID_ACCOUNT} {TOP_UP} "
                            f"--ref DEMO-TOPUP-1): balance {result.balance}")
                    if (paid and command.account == PREPAID_ACCOUNT and command.kind.value.startswith("reclose")
                            and command.state.value == "confirmed"):
                        if command.read_back.get("relay.open") and press is not None:
                            say(f"meter {command.meter} permits the reclose (合闸允许) and waits for the customer "
                                "to press its button")
                            await asyncio.sleep(2 * poll)
                            closed = press()
                            say(f"the customer presses the button on meter {command.meter}: "
                                + ("the relay closes, the supply is back" if closed else "nothing happens"))
                        if stop_after_story:
                            say("the story is told: stopping")
                            asyncio.get_running_loop().call_later(max(2 * poll, 2.5 * interval), stop.set)
            try:
                await asyncio.wait_for(stop.wait(), poll)
            except TimeoutError:
                pass
    finally:
        store.close()
    return printed


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RoundPrinter:
    """One line per meter and round, with the latest value of each column from any poll."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet  # only the prepaid story
        self.header_done = False
        self.latest: dict[str, dict[str, object]] = defaultdict(dict)

    def __call__(self, result: RoundResult) -> None:
        by_meter = self.latest
        for r in result.readings:
            by_meter[r.meter][r.quantity] = r.value
        if self.quiet:
            return
        failed: dict[str, str] = {}
        for a in result.attempts:
            if a.outcome != "ok":
                failed.setdefault(a.meter, a.outcome)
        stamp = _now_text()
        if not self.header_done:
            print(f"{'time':<14} {'channel':<6} {'meter':<12} " + " ".join(f"{h:>11}" for _, h in SHOWN))
            self.header_done = True
        meters = sorted({r.meter for r in result.readings} | set(failed))
        for m in meters:
            if m in by_meter and m not in failed:
                cells = []
                for q, _ in SHOWN:
                    v = by_meter[m].get(q, "-")
                    if q == "relay.open":
                        v = "open" if v is True else "closed" if v is False else "-"
                    cells.append(f"{format_value(v) if not isinstance(v, str) else v:>11}")
                print(f"{stamp:<14} {result.channel:<6} {m:<12} " + " ".join(cells))
            else:
                print(f"{stamp:<14} {result.channel:<6} {m:<12} {'FAILED: ' + failed[m]:>11}")
        sys.stdout.flush()


def demo_token(data_dir: Path) -> str:
    """A fresh admin token for the demo's dashboard; the previous demo's is revoked.  Audited as
    ``meterd token`` does, with the demo as the operator."""
    from meterd.api.tokens import Role, TokenStore
    from meterd.control.state import ControlStore

    now = _utcnow()
    with TokenStore(data_dir) as tokens, ControlStore(data_dir) as audit:
        for old in tokens.list():
            if old.name == DEMO_TOKEN_NAME and old.revoked is None and tokens.revoke(old.id, now):
                audit.audit("demo", "api-token-revoked", f"token:{old.id}", {}, now=now)
        token_id, secret = tokens.create(DEMO_TOKEN_NAME, Role.ADMIN, now)
        audit.audit("demo", "api-token-created", f"token:{token_id}",
                    {"name": DEMO_TOKEN_NAME, "role": Role.ADMIN.value}, now=now)
        return secret


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on ``host:port`` (bound and released at once, as uvicorn will
    bind it: with SO_REUSEADDR), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def api_base(host: str, port: int) -> str:
    """Where a browser on this machine reaches the API (a wildcard address is not one to open)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


async def run_demo(data_dir: Path, duration: float | None, interval: float, *, quiet: bool = False,
                   stop_after_story: bool = False, api: tuple[str, int] | None = None) -> DemoResult:
    spec = FleetSpec(
        pty_buses=2,
        tcp_buses=2,
        meters_per_bus=4,
        modbus_pty_buses=1,
        modbus_tcp_buses=1,
        v1997=LEGACY_METERS,
        speed=60.0,
        faults={"000000000012": "no_answer", "000000000016": "garble"},
        seed=7,
        start=datetime.combine(today_cst(), START_TIME),
        history_days=HISTORY_DAYS,
    )
    kinds = {a: kind for (_, kind), bus in zip(spec.bus_layout(), spec.addresses()) for a in bus}
    spec = dataclasses.replace(spec, areas=[demo_area(kinds)])
    fleet = await run_fleet(spec)
    terminals: DemoTerminals | None = None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        assert spec.start is not None
        terminals = await start_terminals(data_dir, spec.start, spec.speed)
        text = demo_config(fleet, data_dir, interval, api, terminals)
        drop_payments(data_dir, today_cst().isoformat())
        (data_dir / "demo.toml").write_text(text)
        import tomllib

        config = parse_config(tomllib.loads(text), source=str(data_dir / "demo.toml"), base_dir=data_dir)
        print(f"meterd demo: {len(config.meters)} simulated meters on {len(config.channels)} channels "
              f"(config: {data_dir / 'demo.toml'}, store: {data_dir})")
        print("meter 000000000012 never answers and 000000000016 garbles its replies, to show failures; "
              f"{' and '.join(LEGACY_METERS)} speak DL/T 645-1997; the mb* channels are Modbus meters.")
        clocks = local_text(fleet.clock.start.replace(tzinfo=CST), CST, timespec="minutes")  # meters: Beijing time
        print(f"area {AREA}: supply meter {AREA_SUPPLY} measures {len(AREA_CUSTOMERS)} customers plus a "
              f"{AREA_LOSS:.0%} technical loss; the meters' clocks start at {clocks} "
              f"with {HISTORY_DAYS} days of daily freezes (try: meterd lineloss -c {data_dir / 'demo.toml'})")
        for line in terminals.describe():
            print(line)
        for name, value in DEMO_SECRETS.items():
            os.environ.setdefault(name, value)
        if api is not None:
            base = api_base(*api)
            print(f"dashboard: {base}/dashboard#token={demo_token(config.store.data_dir)}")
            print(f"API: {base}/api/v1/openapi.json (the dashboard's token is an admin token, "
                  f"{DEMO_TOKEN_NAME}; the next demo revokes it)")
        sys.stdout.flush()
        with SqliteStore(config.store.data_dir) as store:
            node = build_node(config, store, on_round=RoundPrinter(quiet=quiet))
            for line in describe_plan(node.collector.plan):
                print("plan:", line)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if duration is not None:
                loop.call_later(duration, stop.set)
            def press() -> bool:  # the customer at the meter: the simulator's button
                return fleet.meter(PREPAID_METER).press_button(fleet.clock())

            watcher = asyncio.create_task(watch_prepaid(config.store.data_dir, stop, stop_after_story=stop_after_story,
                                                        press=press, interval=interval))

            def say(line: str) -> None:
                print(f"{_now_text()} terminals: {line}")
                sys.stdout.flush()

            cut = asyncio.create_task(terminals.cut(say, stop))

            def billing(line: str) -> None:
                print(f"{_now_text()} billing: {line}")
                sys.stdout.flush()

            syncs = asyncio.create_task(run_sync_jobs(node, stop, billing))
            dial = asyncio.create_task(terminals.dial_dtus(spec.speed, spec.start, stop))
            settle_heap()  # this command owns the process: start-up's objects are out of the collector's way
            await node.run(stop)
            story = await watcher
            await cut
            await syncs
            await dial
            stats = node.stats()
            total = store.count_readings()
        print(f"stored {total} readings in {data_dir}; try: meterd readings --meter 000000000001 "
              f"--data-dir {data_dir} --since -10m")
        print(f"prepaid: try meterd account show {PREPAID_ACCOUNT} --data-dir {data_dir}; "
              f"meterd ledger {PREPAID_ACCOUNT} --data-dir {data_dir}; meterd commands --data-dir {data_dir}")
        return {"channels": stats, "prepaid": story}
    finally:
        if terminals is not None:
            await terminals.close()
        await fleet.close()


def run(args: argparse.Namespace) -> int:
    api = None
    port = DEFAULT_API_PORT if args.api_port is None else args.api_port
    if not 0 <= port <= 65535:
        error(f"--api-port {port}: a port is 1..65535 (0: no API)")
        return EXIT_BAD_INPUT
    if port:
        problem = port_problem(args.api_host, port)
        if problem is None:
            api = (args.api_host, port)
        elif args.api_port is None:
            print(f"meterd demo: the API and dashboard are off: port {port} on {args.api_host} is not free "
                  f"({problem}); choose one with --api-port PORT", file=sys.stderr)
        else:
            error(f"--api-port {port}: cannot listen on {args.api_host}:{port} ({problem}); "
                  "choose another port, or 0 for no API")
            return EXIT_BAD_INPUT
    started = datetime.now(UTC)
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = asyncio.run(run_demo(Path(args.data_dir), args.duration, args.interval,
                                      quiet=args.quiet or args.json, stop_after_story=args.stop_after_story, api=api))
    doc = summary("demo", started, datetime.now(UTC), result["channels"])
    if args.json:
        print_json({**doc, "data_dir": str(args.data_dir), "prepaid": result["prepaid"]})
        return EXIT_OK
    for line in summary_lines(doc):
        print(line)
    return EXIT_OK
