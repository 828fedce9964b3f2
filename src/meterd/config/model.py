"""The typed, validated configuration: what the rest of meterd codes against.

Every node is a frozen dataclass built only by :mod:`meterd.config.loader` after the whole file
has been checked, so code holding a :class:`Config` may trust it: addresses are 12-digit
normalised, data identifiers are in the catalogue, every meter's channel exists and every poll
reaches at least one meter.  Durations are seconds (``float``), transformer ratios ``Decimal``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterd.config.site import SiteConfig
from meterd.plausibility import DEFAULT_RATING, Rating
from meterd.protocols.modbus.schema import RegisterMap
from meterd.protocols.terminal.dtu import DtuFormat
from meterd.storage.database import Database, Location


class Parity(enum.StrEnum):
    NONE = "N"
    EVEN = "E"
    ODD = "O"


class Protocol(enum.StrEnum):
    """The config's names of :data:`meterd.protocols.drivers.BACKENDS` (a test keeps them equal);
    code asks the driver, never compares these."""

    DLT645_2007 = "dlt645-2007"
    DLT645_1997 = "dlt645-1997"
    MODBUS = "modbus"


class Framing(enum.StrEnum):
    """How Modbus meters on a channel are framed: RTU (serial, or RTU passed through TCP by a
    serial server / DTU) or Modbus TCP (MBAP).  DL/T 645 meters ignore it."""

    RTU = "rtu"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class SerialLink:
    device: str
    baud: int = 2400
    bytesize: int = 8
    parity: Parity = Parity.EVEN  # DL/T 645 buses run 8E1
    stopbits: int = 1


@dataclass(frozen=True, slots=True)
class TcpLink:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DtuLink:
    """A bus behind a GPRS/4G DTU that connects in to one of the master's listeners."""

    listener: str
    terminal: str  # the id the DTU registers with
    connect_wait: float = 0.0  # how long a round waits for an offline DTU before failing the link


class TerminalKind(enum.StrEnum):
    """What a Q/GDW 1376.1 terminal is: its meters' relays are reached differently."""

    CONCENTRATOR = "concentrator"  # 集中器: meter relays through AFN 10 (DL/T 645 1C)
    SPECIAL = "special"  # 专变采集终端: its control turns through AFN 05 F1 / F2


@dataclass(frozen=True, slots=True)
class GdwLink:
    """The meters behind a Q/GDW 1376.1 terminal (concentrator, special-transformer terminal) that
    logs in to one of the master's ``protocol = "gdw1376"`` listeners."""

    listener: str
    terminal: str  # RRRR-TTTT, as the terminal's address prints
    kind: TerminalKind = TerminalKind.CONCENTRATOR
    password_secret: str | None = None  # the secret holding the 16-byte PW (32 hex digits)
    port: int = 2  # the terminal's RS-485 port its meters are on (AFN 10 relays, the archive)
    archive: bool = True  # download the meter archive (AFN 04 F10) at login when it differs
    turn: int = 1  # special terminals: the control turn (轮次) AFN 05 trips and recloses
    connect_wait: float = 0.0


@dataclass(frozen=True, slots=True)
class MqttLink:
    """The meters behind one MQTT terminal (gateway / concentrator) on the site's broker."""

    terminal: str


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The site's MQTT broker (``[mqtt]``).  The password is never in the file: ``password_env``
    names the environment variable holding it."""

    host: str
    port: int = 1883
    client_id: str = "meterd-master"
    username: str | None = None
    password_env: str | None = None
    keepalive: int = 30
    root: str = "meterd"
    request_ttl: float = 30.0
    max_payload_kb: int = 1024


@dataclass(frozen=True, slots=True)
class InfluxConfig:
    """``[store.influxdb]``: readings go to InfluxDB (v2 write API); ``token_env`` names the
    environment variable holding the API token; undeliverable readings wait in ``spool_dir``."""

    url: str
    org: str
    bucket: str
    token_env: str
    spool_dir: Path
    timeout: float = 10.0
    batch: int = 5000
    spool_keep_free_mb: int = 1024  # the spool never takes the last MiB of its disk


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """A TCP server DTUs connect to (``[listeners.NAME]``)."""

    name: str
    host: str = "0.0.0.0"
    port: int = 9000
    # registration / heartbeat formats, tried in order: preset names, or formats built from a table
    # of fields (``{ name = "...", preset = "usr-ascii", data_carries_registration = true }``)
    formats: tuple[str | DtuFormat, ...] = ("usr-ascii",)
    heartbeat_timeout: float = 120.0
    registration_timeout: float = 10.0
    protocol: str = "dtu"  # "dtu" (transparent DTUs) or "gdw1376" (Q/GDW 1376.1 terminals log in)
    max_waiting: int = 1024  # connections at a time that have not registered yet


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    response: float = 2.0  # request sent -> first byte of the reply
    inter_byte: float = 0.5  # longest silence inside one reply


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    link: SerialLink | TcpLink | DtuLink | MqttLink | GdwLink
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: int = 1
    preamble: int = 4  # FE wake-up bytes before each request
    turnaround: float = 0.0  # pause between transactions on the bus
    framing: Framing = Framing.RTU  # Modbus framing; the loader defaults it to TCP on tcp links


@dataclass(frozen=True, slots=True)
class MeterConfig:
    address: str
    channel: str
    protocol: Protocol = Protocol.DLT645_2007
    ct: Decimal = Decimal(1)
    pt: Decimal = Decimal(1)
    name: str = ""
    group: str = "default"
    unit: int | None = None  # Modbus unit id (slave address), Modbus meters only
    regmap: RegisterMap | None = field(default=None, repr=False)  # Modbus meters only
    pn: int | None = None  # measuring point number behind a Q/GDW 1376.1 terminal (gdw1376 channels only)
    rating: Rating = DEFAULT_RATING  # what its circuit can carry: meter keys > [plausibility] model > site




@dataclass(frozen=True, slots=True)
class PollConfig:
    """A routine read: the meters of ``groups`` and the addresses in ``meters`` (both empty: every
    meter), asked for ``quantities`` and the identifiers of ``items`` / ``items_1997``."""

    name: str
    interval: float
    groups: tuple[str, ...]  # empty (and no meters): every meter
    items: tuple[int, ...] = ()  # DL/T 645-2007 data identifiers (2007 meters)
    items_1997: tuple[int, ...] = ()  # DL/T 645-1997 data identifiers (1997 meters)
    quantities: tuple[str, ...] = ()  # canonical quantities: every protocol, see meterd.protocols.readspec
    meters: tuple[str, ...] = ()  # 12-digit addresses read besides the groups' meters
    # the same as sets: a district's poll may list thousands of meters, asked about for every meter
    _groups: frozenset[str] = field(init=False, repr=False, compare=False)
    _meters: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_groups", frozenset(self.groups))
        object.__setattr__(self, "_meters", frozenset(self.meters))

    def selects(self, meter: MeterConfig) -> bool:
        if not self.groups and not self.meters:
            return True
        return meter.group in self._groups or meter.address in self._meters


#: Retention defaults: raw readings 400 days (a billing dispute or a line-loss question about the
#: same month last year still finds the load curves and registers behind it), attempts 90 days
#: (diagnostics only: collection quality keeps its daily rollup for ever).  Pruned at 03:30 site
#: time, after the 00:10 daily-frozen reads and their re-reads, before the morning's billing runs.
KEEP_READINGS: float = 400 * 86400.0
KEEP_ATTEMPTS: float = 90 * 86400.0
PRUNE_AT: time = time(3, 30)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where the state lives and how readings are written.

    ``data_dir`` always holds the files (spools, sync inboxes and locks); the state stores and
    the archive live there as SQLite files unless ``database`` names a PostgreSQL database, whose
    password comes from the environment or the secrets file (``password_env``), never the config.
    Every store opens on :attr:`state`."""

    data_dir: Path  # the SQLite state store (and readings, unless influxdb is set)
    batch_size: int = 500
    flush_interval: float = 1.0
    influxdb: InfluxConfig | None = None  # readings to InfluxDB instead of the state location
    database: Database | None = None  # PostgreSQL instead of the SQLite files of data_dir
    password_env: str | None = None  # where database's password came from (None: libpq's own PGPASSWORD)
    # Retention (meterd.storage.retention): raw readings and collection attempts older than these
    # many seconds are pruned once a day at prune_at (site time) and shortly after start; None:
    # kept for ever.  Daily registers, the ledger, the audit log and commands are never pruned.
    keep_readings: float | None = KEEP_READINGS
    keep_attempts: float | None = KEEP_ATTEMPTS
    prune_at: time = PRUNE_AT

    @property
    def state(self) -> Location:
        """Where every store opens: the PostgreSQL database if configured, else ``data_dir``."""
        return self.database if self.database is not None else self.data_dir


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    header_timeout: float = 10.0  # seconds a client has to send a whole request (meterd.api.guard)
    keep_alive_timeout: float = 5.0  # seconds an idle kept-alive connection stays open after an answer
    max_connections: int = 1024  # open connections; at the cap the longest-waiting idle one makes room


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file it came from, for messages
    store: StoreConfig
    channels: tuple[ChannelConfig, ...] = ()
    meters: tuple[MeterConfig, ...] = ()
    polls: tuple[PollConfig, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
    mqtt: MqttConfig | None = None
    tasks: tuple[Any, ...] = ()  # meterd.config.tasks.TaskSpec, built by the loader
    prepaid: Any = None  # meterd.config.prepaid.PrepaidConfig: tariffs, accounts, policy, limits
    analytics: Any = None  # meterd.config.analytics.AnalyticsConfig: topology, anomaly limits, outages
    sync: Any = None  # meterd.config.analytics.SyncConfig: billing-system jobs
    api: ApiConfig | None = None  # the HTTP API the daemon serves
    cluster: Any = None  # meterd.config.cluster.ClusterConfig: this process as one of several collector nodes
    site: SiteConfig = field(default_factory=SiteConfig)  # [site]: the site's time zone (meterd.clock)
    # channel name -> its meters in config order, built once: the daemon, the API and the
    # scheduler ask per channel, and a district has thousands of channels and 100,000 meters
    _on_channel: dict[str, tuple[MeterConfig, ...]] = field(init=False, repr=False, compare=False)
    _channels: dict[str, ChannelConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        on: dict[str, list[MeterConfig]] = {}
        for m in self.meters:
            on.setdefault(m.channel, []).append(m)
        object.__setattr__(self, "_on_channel", {name: tuple(ms) for name, ms in on.items()})
        channels: dict[str, ChannelConfig] = {}
        for c in self.channels:
            channels.setdefault(c.name, c)  # the first of a name, as a search in order finds it
        object.__setattr__(self, "_channels", channels)

    def channel(self, name: str) -> ChannelConfig:
        """The channel called ``name``; KeyError if there is none."""
        return self._channels[name]

    def meters_on(self, channel_name: str) -> tuple[MeterConfig, ...]:
        """The meters on ``channel_name``, in config order (empty for an unknown channel)."""
        return self._on_channel.get(channel_name, ())

    def meters_for(self, poll: PollConfig) -> tuple[MeterConfig, ...]:
        """The meters a poll reads: those in its groups and those it lists, or all meters if it
        names neither."""
        return tuple(m for m in self.meters if poll.selects(m))
