"""The deployment files in ``deploy/`` do what they claim.

* Mosquitto: a real broker runs ``deploy/mosquitto/meterd.conf`` with only the listener port, the
  file paths and persistence rewritten, and ``deploy/mosquitto/acl`` byte for byte; accounts come
  from ``mosquitto_passwd -b``.  Raw paho clients then play the master and terminals T001/T002.
  "Not delivered" is shown without waiting out a timeout: the forbidden message is followed, on
  the same connection, by an allowed one, and the subscriber's list is checked once the allowed
  one has arrived (one client's messages reach a subscriber in the order they were published).
* systemd: ``deploy/meterd.service`` has the keys the deployment relies on, and
  ``systemd-analyze verify`` accepts it where that tool exists.
* Grafana and Prometheus: tests/integration/test_dashboards.py and test_metrics.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mosquitto import Mosquitto, mosquitto_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOPICS = "meterd/terminals"
PASSWORDS = {"master": "master-secret", "T001": "t001-secret", "T002": "t002-secret"}


def mosquitto_passwd_binary() -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    broker = mosquitto_binary()
    for folder in ("/usr/bin", str(Path(broker).parent) if broker else None):
        if folder and os.access(Path(folder) / "mosquitto_passwd", os.X_OK):
            return str(Path(folder) / "mosquitto_passwd")
    return None


needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None or mosquitto_passwd_binary() is None,
                                     reason="mosquitto / mosquitto_passwd are not installed")


# --- the broker as shipped ---------------------------------------------------------------------


def test_shipped_broker_config_has_the_essentials():
    conf = directives((DEPLOY / "mosquitto" / "meterd.conf").read_text())
    assert conf["allow_anonymous"] == ["false"]
    assert conf["set_tcp_nodelay"] == ["true"]
    assert conf["per_listener_settings"] == ["false"]
    assert len(conf["password_file"]) == len(conf["acl_file"]) == 1
    acl = [line.split() for line in (DEPLOY / "mosquitto" / "acl").read_text().splitlines()
           if line.strip() and not line.lstrip().startswith("#")]
    # the topic tree of docs/mqtt.md, and nothing more for a terminal
    doc = (ROOT / "docs" / "mqtt.md").read_text()
    for kind in ("down", "up", "push", "status"):
        assert f"`<root>/terminals/<tid>/{kind}`" in doc
    assert "`$share/meterd/<root>/terminals/+/push`" in doc
    assert [rule for rule in acl if rule[0] == "pattern"] == [
        ["pattern", "read", f"{TOPICS}/%u/down"], ["pattern", "write", f"{TOPICS}/%u/up"],
        ["pattern", "write", f"{TOPICS}/%u/push"], ["pattern", "write", f"{TOPICS}/%u/status"]]
    # the master's read covers the shared subscription (checked against the published topic)
    assert ["user", "master"] in acl and ["topic", "readwrite", "meterd/#"] in acl
    assert not [rule for rule in acl if "$share" in " ".join(rule)]


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found[key].append(value.strip())
    return found


def derived_config(shipped: str, port: int, passwd: Path, acl: Path) -> str:
    """The shipped config with the test's port, files and no persistence; nothing else changed."""
    rewrites = {
        r"^listener 1883$": f"listener {port} 127.0.0.1",
        r"^password_file .*$": f"password_file {passwd}",
        r"^acl_file .*$": f"acl_file {acl}",
        r"^persistence true$": "persistence false",
    }
    text = shipped
    for pattern, replacement in rewrites.items():
        text, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert n == 1, f"deploy/mosquitto/meterd.conf: expected one line matching {pattern!r}"
    if os.geteuid() == 0:
        # Mosquitto started as root drops to the "mosquitto" user, which cannot read pytest's
        # private temp dir; a real install runs it as that user from the start.
        text += "user root\n"
    return text


@pytest.fixture
def broker(tmp_path):
    work = tmp_path / "broker"
    b = Mosquitto(work)  # a free port and the log; its config is replaced below
    acl = work / "acl"
    shutil.copyfile(DEPLOY / "mosquitto" / "acl", acl)
    passwd = work / "passwd"
    tool = mosquitto_passwd_binary()
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password], check=True,
                       capture_output=True, timeout=10)
    for path in (acl, passwd):
        path.chmod(0o600)
    b.config.write_text(derived_config((DEPLOY / "mosquitto" / "meterd.conf").read_text(), b.port, passwd, acl))
    with b:
        yield b


class Peer:
    """A paho client on its own network thread, recording what it receives."""

    def __init__(self, broker, username: str | None, password: str | None = None, *, client_id: str,
                 will: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Condition()
        self._connack = threading.Event()
        self._subacks: list = []
        self.reason = None
        # no reconnecting: a refused or dropped client stays out, and its thread ends at once
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        reconnect_on_failure=False)
        if username is not None:
            c.username_pw_set(username, password)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect(broker.host, broker.port, keepalive=30)
        c.loop_start()
        assert self._connack.wait(5), "no CONNACK"
        self.client = c

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.reason = reason
        self._connack.set()

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        with self._lock:
            self._subacks.append(reasons)
            self._lock.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))
            self._lock.notify_all()

    @property
    def connected(self) -> bool:
        return self.reason is not None and not self.reason.is_failure and self.client.is_connected()

    def subscribe(self, *topics: str) -> list:
        with self._lock:
            before = len(self._subacks)
            self.client.subscribe([(t, 1) for t in topics])
            assert self._lock.wait_for(lambda: len(self._subacks) > before, 5), "no SUBACK"
            return self._subacks[-1]

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)  # the PUBACK: the broker has handled it (delivered or dropped)
        assert info.is_published()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        with self._lock:
            assert self._lock.wait_for(lambda: (topic, payload) in self.messages, timeout), \
                f"{topic} {payload!r} not received; got {self.messages}"
            return list(self.messages)

    def drop(self) -> None:
        """Vanish without DISCONNECT (power cut): the broker publishes the will, if allowed."""
        sock = self.client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # paho's thread sees the connection lost and ends

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(broker):
    made: list[Peer] = []

    def make(username: str | None, *, client_id: str | None = None, password: str | None = None,
             will: tuple[str, str] | None = None) -> Peer:
        if password is None and username is not None:
            password = PASSWORDS[username]
        p = Peer(broker, username, password, client_id=client_id or f"{username}-{len(made)}", will=will)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@needs_mosquitto
def test_a_terminal_reaches_the_master_only_on_its_own_topics(peers):
    master = peers("master")
    a, b = peers("T001"), peers("T002")
    assert master.connected and a.connected and b.connected
    assert all(not r.is_failure for r in master.subscribe("meterd/#"))
    b.subscribe(f"{TOPICS}/T002/down")
    a.subscribe(f"{TOPICS}/T001/down")

    # A's replies reach the master; what A publishes as B (up, down, status) is dropped
    a.publish(f"{TOPICS}/T002/up", '{"id":"forged","frame":"68"}')
    a.publish(f"{TOPICS}/T002/down", '{"type":"request","id":"forged","frame":"68"}')
    a.publish(f"{TOPICS}/T002/status", "offline", retain=True)
    a.publish("meterd/elsewhere", "x")
    a.publish(f"{TOPICS}/T001/down", "A may not write its own down either")
    a.publish(f"{TOPICS}/T001/status", "online", retain=True)
    a.publish(f"{TOPICS}/T001/up", '{"id":"s-1","frame":"68"}')
    got = master.wait_for(f"{TOPICS}/T001/up", b'{"id":"s-1","frame":"68"}')
    assert got == [(f"{TOPICS}/T001/status", b"online"), (f"{TOPICS}/T001/up", b'{"id":"s-1","frame":"68"}')]
    assert b.messages == []  # B never saw the forged request

    # the master writes any terminal's down; each terminal gets its own, never the other's
    master.publish(f"{TOPICS}/T002/down", "for B")
    master.publish(f"{TOPICS}/T001/down", "for A")
    b.wait_for(f"{TOPICS}/T002/down", b"for B")
    assert a.wait_for(f"{TOPICS}/T001/down", b"for A") == [(f"{TOPICS}/T001/down", b"for A")]

    # a retained status A tried to forge for B is not there for a master that connects later
    b.publish(f"{TOPICS}/T002/status", "online", retain=True)
    later = peers("master")
    later.subscribe(f"{TOPICS}/+/status")
    later.wait_for(f"{TOPICS}/T002/status", b"online")
    assert sorted(later.wait_for(f"{TOPICS}/T001/status", b"online")) == [
        (f"{TOPICS}/T001/status", b"online"), (f"{TOPICS}/T002/status", b"online")]


@needs_mosquitto
def test_a_terminal_cannot_read_another_terminals_requests(peers):
    master, a, b = peers("master"), peers("T001"), peers("T002")
    # Mosquitto grants the subscriptions (MQTT 3.1.1 has no per-topic refusal it would use
    # here) and filters every message against the ACL on delivery instead
    a.subscribe(f"{TOPICS}/T002/down", f"{TOPICS}/+/down", f"{TOPICS}/+/up", "meterd/#", "#")
    b.subscribe(f"{TOPICS}/T002/down")
    master.publish(f"{TOPICS}/T002/down", "request for B")
    b.publish(f"{TOPICS}/T002/up", "reply from B")
    master.publish(f"{TOPICS}/T001/down", "request for A")
    b.wait_for(f"{TOPICS}/T002/down", b"request for B")
    got = a.wait_for(f"{TOPICS}/T001/down", b"request for A")
    assert {topic for topic, _ in got} == {f"{TOPICS}/T001/down"}  # its own, once per matching subscription


@needs_mosquitto
def test_master_connections_in_the_shared_subscription_get_each_push_once_and_never_a_forged_one(peers):
    """Collector nodes: two master connections in ``$share/meterd/...`` split a terminal's pushes
    between them (each exactly once); a push a terminal forges for another terminal reaches nobody."""
    shared = f"$share/meterd/{TOPICS}/+/push"
    nodes = [peers("master", client_id="meterd-master.n1"), peers("master", client_id="meterd-master.n2")]
    for node in nodes:
        assert all(not r.is_failure for r in node.subscribe(shared))
    spy = peers("master", client_id="spy")  # an ordinary subscription: every message, in order
    spy.subscribe(f"{TOPICS}/+/push")
    a = peers("T001")
    sent = [f"push {i}".encode() for i in range(10)]
    a.publish(f"{TOPICS}/T002/push", "forged")
    for payload in sent:
        a.publish(f"{TOPICS}/T001/push", payload.decode())
    got = spy.wait_for(f"{TOPICS}/T001/push", sent[-1])
    assert got == [(f"{TOPICS}/T001/push", p) for p in sent]  # the forged one was never routed
    deadline = time.monotonic() + 5
    while sum(len(n.messages) for n in nodes) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.01)
    taken = sorted(m for n in nodes for m in n.messages)
    assert taken == sorted((f"{TOPICS}/T001/push", p) for p in sent)  # on the original topic, each once
    assert all(n.messages for n in nodes)  # shared between the two, not all to one


@needs_mosquitto
def test_a_will_only_lands_on_the_terminals_own_status(peers):
    master = peers("master")
    master.subscribe(f"{TOPICS}/+/status")
    impostor = peers("T001", client_id="impostor", will=(f"{TOPICS}/T002/status", "impostor"))
    b = peers("T002", will=(f"{TOPICS}/T002/status", "offline"))
    b.publish(f"{TOPICS}/T002/status", "online", retain=True)
    master.wait_for(f"{TOPICS}/T002/status", b"online")
    impostor.drop()
    b.drop()
    master.wait_for(f"{TOPICS}/T002/status", b"offline")
    master.subscribe("meterd/barrier")
    master.publish("meterd/barrier", "done")  # both disconnects are handled before this comes back
    got = master.wait_for("meterd/barrier", b"done")
    assert [m for m in got if m[0].endswith("/status")] == [(f"{TOPICS}/T002/status", b"online"),
                                                           (f"{TOPICS}/T002/status", b"offline")]


@needs_mosquitto
@pytest.mark.parametrize("who", ["wrong password", "another terminal's password", "unknown user", "anonymous"])
def test_only_known_accounts_get_in(peers, who):
    username, password = {
        "wrong password": ("T001", "guess"),
        "another terminal's password": ("T001", PASSWORDS["T002"]),
        "unknown user": ("T999", "t999-secret"),
        "anonymous": (None, None),
    }[who]
    peer = peers(username, password=password or "", client_id="intruder") if username else \
        peers(None, client_id="anonymous")
    assert peer.reason is not None and peer.reason.is_failure
    assert str(peer.reason) == "Not authorized"
    assert not peer.connected


@needs_mosquitto
async def test_meterd_reads_a_meter_through_the_shipped_acl(broker):
    """meterd's own hub and simulated terminal, each with its account: the ACL fits their topics."""
    from meterd.collector.channel import Channel, Timing
    from meterd.collector.mqtt import MqttHub
    from meterd.clock import CST
    from meterd.collector.poll import MeterTarget, poll_meter
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.model import MeterModel
    from meterd.simulators.mqtt_terminal import MqttTerminal

    start = datetime(2025, 6, 1, 8, 0)
    bus = Dlt645Bus([MeterModel("000000000001", start=start, seed=1)])
    hub = MqttHub(broker.host, broker.port, client_id="meterd-master", username="master",
                  password=PASSWORDS["master"], reconnect_min=0.1, reconnect_max=0.5)
    term = MqttTerminal("T001", bus, broker.host, broker.port, clock=lambda: start, username="T001",
                        password=PASSWORDS["T001"], reconnect_min=0.1, reconnect_max=0.5)
    assert await hub.start(5)
    try:
        assert await term.start(5)
        assert await hub.wait_status("T001", "online", 3)  # the retained status passed the ACL
        channel = Channel("gw-T001", hub.transport("T001"), timing=Timing(2.0, 0.5), retries=0)
        readings, attempts = await poll_meter(channel, MeterTarget("000000000001"), [0x00010000],
                                              start.replace(tzinfo=CST))
        assert [a.outcome for a in attempts] == ["ok"]
        assert [r.quantity for r in readings] == ["energy.active.import.total"]
        assert term.push_readings() > 0  # on its push topic, which the ACL lets it write
        for _ in range(300):
            if hub.stats.pushed_messages:
                break
            await asyncio.sleep(0.01)
        assert hub.stats.pushed_messages == 1 and hub.stats.pushed_on_up == 0
        await term.close()
        assert await hub.wait_status("T001", "offline", 3)
    finally:
        await term.close()
        await hub.close()


@needs_mosquitto
async def test_meterd_collector_nodes_take_each_push_once_through_the_shipped_acl(broker):
    """Two hubs as collector nodes (``shared``) with the master's account: the shared subscription
    passes the ACL and each push of the simulated terminal is taken by exactly one of them."""
    from meterd.collector.mqtt import MqttHub
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.model import MeterModel
    from meterd.simulators.mqtt_terminal import MqttTerminal

    start = datetime(2025, 6, 1, 8, 0)
    taken: list[tuple[str, str, str]] = []
    hubs = [MqttHub(broker.host, broker.port, client_id=f"meterd-master.n{i}", username="master",
                    password=PASSWORDS["master"], reconnect_min=0.1, reconnect_max=0.5, shared=True,
                    on_readings=lambda tid, rs, i=i: taken.extend((f"n{i}", r.meter, r.quantity) for r in rs))
            for i in (1, 2)]
    bus = Dlt645Bus([MeterModel("000000000001", start=start, seed=1)])
    term = MqttTerminal("T001", bus, broker.host, broker.port, clock=lambda: start, username="T001",
                        password=PASSWORDS["T001"], reconnect_min=0.1, reconnect_max=0.5)
    try:
        for hub in hubs:
            assert await hub.start(5)
        assert await term.start(5)
        pushes = 20
        for _ in range(pushes):
            assert term.push_readings(quantities=["energy.active.import.total"]) == 1
        for _ in range(500):
            if sum(h.stats.pushed_messages for h in hubs) >= pushes:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # nothing more comes
        assert sum(h.stats.pushed_messages for h in hubs) == len(taken) == pushes
        assert {node for node, _, _ in taken} == {"n1", "n2"}
    finally:
        await term.close()
        for hub in hubs:
            await hub.close()


# --- systemd -----------------------------------------------------------------------------------


def unit_file(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate, ``#``/``;`` comments, no continuation lines here."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {n}: keep unit lines unwrapped"
        if line.startswith("["):
            assert line.endswith("]"), f"line {n}: {raw!r}"
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        key, eq, value = line.partition("=")
        assert eq and current is not None, f"line {n} is not KEY=value in a section: {raw!r}"
        current[key.strip()].append(value.strip())
    return sections


def test_systemd_unit_has_what_the_deployment_relies_on():
    unit = unit_file((DEPLOY / "meterd.service").read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    u, s = unit["Unit"], unit["Service"]
    assert {"network-online.target", "mosquitto.service"} <= set(" ".join(u["After"]).split())
    assert "network-online.target" in " ".join(u["Wants"]).split()
    (exec_start,) = s["ExecStart"]
    program, *args = exec_start.split()
    assert program.endswith("/meterd") and args == ["run", "-c", "/etc/meterd/site.toml"]
    expected = {
        "User": "meterd", "EnvironmentFile": "/etc/meterd/secrets.env", "Restart": "on-failure",
        "KillSignal": "SIGTERM", "StateDirectory": "meterd", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "LimitNOFILE": "65536",  # 2,000 API clients and the DTUs must not exhaust 1,024 descriptors
    }
    for key, value in expected.items():
        assert s[key] == [value], key
    assert "TimeoutStopSec" in s or "TimeoutSec" in s
    assert "/var/lib/meterd" in " ".join(s["ReadWritePaths"]).split()
    assert "dialout" in " ".join(s["SupplementaryGroups"]).split()
    assert "2" in " ".join(s["RestartPreventExitStatus"]).split()  # bad config: exit 2, no restart loop
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # no secret is set in the unit itself
    for value in s.get("Environment", []):
        assert not re.search(r"METERD_\w+=", value), value


def test_secrets_example_lists_every_secret_the_config_names():
    example = (DEPLOY / "secrets.env.example").read_text()
    names = [line.split("=", 1)[0] for line in example.splitlines() if line.strip() and not line.startswith("#")]
    assert names == ["METERD_METER_PASSWORD", "METERD_OPERATOR_CODE", "METERD_MQTT_PASSWORD",
                     "METERD_DB_PASSWORD", "METERD_INFLUX_TOKEN", "METERD_BILLING_TOKEN"]
    for line in example.splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z_]+=\S+", line), f"systemd EnvironmentFile line: {line!r}"
    # each is the name meterd's config and docs use for that secret
    sources = "\n".join(p.read_text(errors="replace") for folder in ("src/meterd/config", "docs", "examples")
                        for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml"))
    sources += (ROOT / "README.md").read_text()
    for name in names:
        assert name in sources, f"{name} is not named anywhere in the config code or docs"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, meterd_bin):
    # verify checks that ExecStart's binary exists: point it at the meterd installed here
    text = (DEPLOY / "meterd.service").read_text()
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={meterd_bin}", text, flags=re.MULTILINE)
    assert n == 1
    unit = tmp_path / "meterd.service"
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "meterd.service" in line]
    # unknown keys and bad values are only warnings (exit 0): fail on any line about our unit
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr
