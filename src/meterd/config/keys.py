"""Every key of the site config, once: its section, type, default and meaning.

This table is the one source of truth for which keys the loader accepts: each section's
``check.known_keys(...)`` call takes its list from here (:func:`keys`), and ``docs/config.md`` is
rendered from it (:mod:`meterd.config.reference`; a test renders it again and compares, and
another loads a config that uses every key listed here and checks that a key not listed is
refused in every section).  A key added to the loader without a line here is an "unknown key";
a line here the loader does not read fails the tests.

A section is named by its path with ``*`` for a name the operator chooses and ``[]`` for an
entry of an array: ``channels.*.serial``, ``prepaid.tariffs[].versions[]``.  ``shape`` says how the
parent key holds it:

==========  ==========================================================================
``table``   one table: ``[store]``, ``serial = { ... }``
``tables``  an array of tables: ``[[meters]]``, ``tiers = [{ ... }, ...]``
``named``   tables by a name of the operator's: ``[channels.NAME]``
``list``    a list whose entries are a name or a table (``formats``)
==========  ==========================================================================

Defaults are written as TOML (a test checks that writing the default changes nothing); ``None``
means the key has no default: it is required, or leaving it out means something the text says.

To add a key: one :class:`Key` line in its section here, the code that reads it in the loader,
a use of it in ``tests/unit/data/every_key.toml``, and ``python -m meterd.config.reference >
docs/config.md``.  A new section: a :class:`Section` in :data:`SECTIONS` and a :class:`Key` with
``section=`` in its parent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from meterd.config.durations import DURATION_FORMS
from meterd.protocols.terminal.dtu import CONFIG_KEYS as DTU_FORMAT_KEYS
from meterd.protocols.terminal.dtu import DEFAULT_ID_PATTERN
from meterd.protocols.terminal.dtu import PRESETS as DTU_PRESETS

Shape = Literal["table", "tables", "named", "list"]

ROOT: Final = ""


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    type: str
    doc: str
    default: str | None = None  # TOML text; None: none (required, or absent has a meaning of its own)
    required: bool = False
    section: str | None = None  # the section its value's table(s) are, if any


@dataclass(frozen=True, slots=True)
class Section:
    id: str  # "channels.*.serial"
    shape: Shape
    doc: str
    keys: tuple[Key, ...] = ()
    free: bool = False  # the keys are the operator's own (HTTP headers): any key is accepted

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(f"{self.id or '(top level)'}: no key {name!r}")


def _choices(values: Iterable[str]) -> str:
    return " | ".join(f'"{v}"' for v in values)


D: Final = "duration"  # the grammar is explained once, at the top of the reference
_RATING = (
    Key("rated_current", "number (A)", "the meter's maximum current per phase (Imax), secondary side; at most "
        "1000000", "100"),
    Key("rated_voltage", "number (V)", "phase-to-neutral voltage (57.7 for a 3 x 100 V PT meter); at most 1000000",
        "220"),
    Key("phases", "1 | 3", "phases the meter measures", "3"),
)

_SECTIONS: tuple[Section, ...] = (
    Section(ROOT, "table", "The top level of the file: the sections below, and where secrets may be read from.", (
        Key("secrets_file", "path", "a file of NAME=value lines (mode 600) where the `*_env` names are also looked "
            "up (the environment wins); relative to the config's folder"),
        Key("store", "table", "where the state lives", required=True, section="store"),
        Key("channels", "tables by name", "the buses and links meters are reached through", section="channels.*"),
        Key("meters", "array of tables", "the meters", section="meters[]"),
        Key("polls", "array of tables", "what the daemon reads from which meters, on an interval", section="polls[]"),
        Key("listeners", "tables by name", "TCP servers GPRS/4G DTUs connect in to", section="listeners.*"),
        Key("mqtt", "table", "the broker MQTT terminals use", section="mqtt"),
        Key("tasks", "array of tables", "scheduled collection tasks (cron or interval, China Standard Time)",
            section="tasks[]"),
        Key("prepaid", "table", "remote fee control: tariffs, accounts, thresholds, safety rules", section="prepaid"),
        Key("topology", "table", "areas and lines with their metering points (line loss, outages)",
            section="topology"),
        Key("analytics", "table", "line-loss flags, anomaly limits and outage detection", section="analytics"),
        Key("sync", "table", "jobs that exchange data with the billing system", section="sync"),
        Key("api", "table", "the HTTP API and dashboard the daemon serves (none without this section)",
            section="api"),
        Key("plausibility", "table", "what meters' circuits can carry: readings beyond it are flagged implausible",
            section="plausibility"),
        Key("cluster", "table", "this process as one of several collector nodes sharing one PostgreSQL",
            section="cluster"),
        Key("site", "table", "facts about the site as a whole: its time zone", section="site"),
    )),
    Section("store", "table", "Where the state lives and how readings are written.  The state is SQLite files in "
            "`data_dir` unless `database` names a PostgreSQL database; readings go to InfluxDB when "
            "`[store.influxdb]` is there.  Retention prunes raw readings and attempts once a day; daily registers, "
            "the ledger, the audit log and commands are never pruned.", (
        Key("data_dir", "path", "the data directory (SQLite files, spools, drop-folder inboxes, locks); relative "
            "to the config's folder; `~` expanded", required=True),
        Key("batch_size", "integer >= 1", "readings written in one batch", "500"),
        Key("flush_interval", D, "the longest a reading waits before its batch is written", '"1s"'),
        Key("influxdb", "table", "send readings to InfluxDB instead", section="store.influxdb"),
        Key("database", "PostgreSQL URL", "the state in PostgreSQL: `postgresql://user@host:port/dbname`; no "
            "password in the URL"),
        Key("password_env", "variable name", "the environment variable (or secrets_file name) holding the database "
            "password, which must then be set; without it libpq's own PGPASSWORD or ~/.pgpass apply; only with "
            "`database`"),
        Key("pool_size", "integer 1..1000", "database connections per process; only with `database`", "8"),
        Key("keep_readings", f"{D}, or \"forever\" / 0", "raw readings older than this are pruned (at least "
            "2d: the re-read tasks look back to yesterday); the newest of each meter and quantity stays", '"400d"'),
        Key("keep_attempts", f"{D}, or \"forever\" / 0", "collection attempts older than this are pruned (at "
            "least 1d); the quality rollup is kept", '"90d"'),
        Key("prune_at", '"HH:MM"', "when the daily prune runs, site time (the first runs a minute after the daemon starts)",
            '"03:30"'),
    )),
    Section("store.influxdb", "table", "Readings go to InfluxDB through its v2 write API; the state stays in "
            "`[store]`.  While InfluxDB is down readings wait in a durable spool.", (
        Key("url", "http(s) URL", "the InfluxDB server", required=True),
        Key("org", "string", "organisation", required=True),
        Key("bucket", "string", "bucket", required=True),
        Key("token_env", "variable name", "the environment variable holding the API token (start-up stops if it "
            "is not set)", required=True),
        Key("spool_dir", "path", "where undeliverable readings wait; relative to data_dir", '"influx-spool"'),
        Key("timeout", D, "per write request", '"10s"'),
        Key("batch", "integer >= 1", "readings per write request", "5000"),
        Key("spool_keep_free_mb", "integer >= 0", "the spool leaves at least this many MiB free on its disk: past "
            "that, readings InfluxDB cannot take are dropped (counted, logged) rather than fill the disk the state "
            "database is written to", "1024"),
    )),
    Section("channels.*", "named", "One bus or link: requests on a channel go one at a time, channels run in "
            "parallel.  Exactly one of `serial`, `tcp`, `dtu`, `mqtt` and `gdw1376`.", (
        Key("serial", "inline table", "a local RS-485 port", section="channels.*.serial"),
        Key("tcp", "inline table", "a serial server or transparent DTU the master connects to",
            section="channels.*.tcp"),
        Key("dtu", "inline table", "a bus behind a GPRS/4G DTU that connects in to a listener",
            section="channels.*.dtu"),
        Key("mqtt", "inline table", "the meters behind an MQTT terminal (needs `[mqtt]`)", section="channels.*.mqtt"),
        Key("gdw1376", "inline table", "the meters behind a Q/GDW 1376.1 concentrator or special-transformer "
            "terminal that logs in to a `protocol = \"gdw1376\"` listener (docs/gdw1376.md)",
            section="channels.*.gdw1376"),
        Key("connect_timeout", D, "to open a TCP connection", '"5s"'),
        Key("response_timeout", D, "from the request sent to the first byte of the reply", '"2s"'),
        Key("inter_byte_timeout", D, "the longest silence inside one reply (a reply may take at most 16 KiB or 60 s in all, 2 MiB or 120 s from a Q/GDW 1376.1 terminal: past that with no reply among the bytes, a babbling device, the try fails as garbled)", '"500ms"'),
        Key("retries", "integer 0..10", "further tries of a request that failed", "1"),
        Key("preamble", "integer 0..4", "FE wake-up bytes before each DL/T 645 request", "4"),
        Key("turnaround", D, "pause between transactions on the bus (0 allowed)", "0"),
        Key("framing", '"rtu" | "tcp"', 'how Modbus meters on it are framed: RTU, or Modbus TCP (MBAP); the '
            'default is "tcp" on a tcp link.  DL/T 645 meters ignore it', '"rtu"'),
    )),
    Section("channels.*.serial", "table", "`serial = { device = \"/dev/ttyUSB0\", baud = 2400 }`", (
        Key("device", "path", "the serial device", required=True),
        Key("baud", "300 | 600 | 1200 | 2400 | 4800 | 9600 | 19200 | 38400 | 57600 | 115200", "line speed", "2400"),
        Key("bytesize", "7 | 8", "data bits", "8"),
        Key("parity", '"N" | "E" | "O"', "parity (DL/T 645 buses run 8E1)", '"E"'),
        Key("stopbits", "1 | 2", "stop bits", "1"),
    )),
    Section("channels.*.tcp", "table", "`tcp = { host = \"10.0.0.7\", port = 8899 }`", (
        Key("host", "string", "host name or address", required=True),
        Key("port", "integer 1..65535", "port", required=True),
    )),
    Section("channels.*.dtu", "table", "`dtu = { listener = \"gprs\", terminal = \"DTU00000001\" }`: the terminal "
            "id must register in a format of the listener, and no two terminals of a listener register with the "
            "same bytes.", (
        Key("listener", "listener name", "the `[listeners.NAME]` the DTU connects to", required=True),
        Key("terminal", "string", "the id the DTU registers with", required=True),
        Key("connect_wait", D, "how long a round waits for an offline DTU before the link fails (0 allowed)", "0"),
    )),
    Section("channels.*.gdw1376", "table", "`gdw1376 = { listener = \"gw\", terminal = \"4401-0001\" }`: a Q/GDW "
            "1376.1 terminal; its meters are `[[meters]]` with `channel` and `pn` (docs/gdw1376.md).", (
        Key("listener", "listener name", "the `[listeners.NAME]` (with `protocol = \"gdw1376\"`) the terminal logs "
            "in to", required=True),
        Key("terminal", '"RRRR-TTTT"', "the terminal's address: region code A1, then A2 in 4 hex digits",
            required=True),
        Key("kind", '"concentrator" | "special"', "a concentrator (集中器: meter relays through AFN 10 with DL/T 645 "
            "1C) or a special-transformer terminal (专变终端: trip / reclose its control turn with AFN 05)",
            '"concentrator"'),
        Key("password_secret", "variable name", "the environment variable (or secrets_file name) holding the "
            "terminal's 16-byte password PW as 32 hex digits, sent in AFN 04, 05 and 10 frames; without it PW is "
            "zeros and relay commands are refused"),
        Key("port", "integer 1..31", "the terminal's RS-485 port its meters are on (AFN 10 relays, the archive)",
            "2"),
        Key("archive", "boolean", "compare the terminal's meter archive (AFN 0A F10) with the config's at login and "
            "download the differences (AFN 04 F10)", "true"),
        Key("turn", "integer 1..8", "special terminals: the control turn (轮次) AFN 05 F1 / F2 trips and recloses",
            "1"),
        Key("connect_wait", D, "how long a round waits for an offline terminal before the link fails (0 allowed)",
            "0"),
    )),
    Section("channels.*.mqtt", "table", "`mqtt = { terminal = \"T001\" }`", (
        Key("terminal", "string", "the terminal's id (its topics are under `[mqtt] root`)", required=True),
    )),
    Section("listeners.*", "named", "A TCP server DTUs connect in to, register (their terminal id) and heart-beat "
            "on (docs/dtu.md).", (
        Key("host", "string", "address to listen on", '"0.0.0.0"'),
        Key("port", "integer 0..65535", "port (0: any free port)", "9000"),
        Key("formats", "list of preset names or tables", "registration / heartbeat formats, tried in order: "
            f"presets {_choices(DTU_PRESETS)}, or tables of fields", '["usr-ascii"]',
            section="listeners.*.formats[]"),
        Key("heartbeat_timeout", D, "a DTU silent this long is offline and its connection closed", '"120s"'),
        Key("registration_timeout", D, "a connection that has not registered (DTU) or logged in (AFN 02 F1) by "
            "then is closed", '"10s"'),
        Key("max_waiting", "integer 1..1000000", "connections at a time that have not registered yet; a new one "
            "past it is reset at once and counted (`too_many_waiting`): a flood of connections cannot use up the "
            "daemon's file descriptors", "1024"),
        Key("protocol", '"dtu" | "gdw1376"', "transparent DTUs, or Q/GDW 1376.1 terminals that log in with AFN 02 "
            "F1 and heart-beat with F3 (then no `formats`)", '"dtu"'),
    )),
    Section("listeners.*.formats[]", "list", "A DTU format as a table of fields, e.g. `{ name = \"usr-mac-data\", "
            "preset = \"usr-mac\", data_carries_registration = true }`; docs/dtu.md explains each.  Byte strings "
            "are ASCII text, or hex digits under the `_hex` name.", (
        Key("name", "string", "shown in the status and logs (default: `formats[i]`); unique per listener"),
        Key("preset", _choices(DTU_PRESETS), "start from a preset and change only the keys given"),
        Key("framing", '"text" | "frame"', "`prefix + id + suffix`, or `header type len id checksum tail`",
            '"text"'),
        Key("description", "string", "free text shown with the format"),
        Key("id_encoding", '"ascii" | "hex" | "mac"', "how the id is sent: text, raw bytes (shown as hex digits), "
            "six MAC bytes (shown aa:bb:cc:dd:ee:ff)", '"ascii"'),
        Key("id_pattern", "regular expression", "an ASCII or hex id must match it", f"'{DEFAULT_ID_PATTERN}'"),
        Key("checksum", '"sum8" | "xor8" | "none"', "a frame format's checksum", '"sum8"'),
        Key("id_length", "integer", "a fixed id length in bytes (without it the id is variable)"),
        Key("max_id_length", "integer", "the longest variable id, bytes", "40"),
        Key("registration_type", "integer", "a frame format's registration packet type", "1"),
        Key("heartbeat_type", "integer", "a frame format's heartbeat packet type", "2"),
        Key("data_carries_registration", "boolean", "the DTU puts its registration in front of every data packet",
            "false"),
        Key("prefix", "ASCII text", "bytes before the id (text format)"),
        Key("suffix", "ASCII text", "bytes after the id (text format)"),
        Key("header", "ASCII text", "a frame format's first bytes"),
        Key("tail", "ASCII text", "a frame format's last bytes"),
        Key("prefix_hex", "hex digits", "`prefix` as hex"),
        Key("suffix_hex", "hex digits", "`suffix` as hex"),
        Key("header_hex", "hex digits", "`header` as hex", '"AA55"'),
        Key("tail_hex", "hex digits", "`tail` as hex"),
        Key("heartbeat", "ASCII text", "the fixed heartbeat packet of a text format"),
        Key("heartbeat_hex", "hex digits", "`heartbeat` as hex"),
        Key("heartbeats", "list of ASCII text", "several heartbeat packets"),
        Key("heartbeats_hex", "list of hex digits", "`heartbeats` as hex"),
    )),
    Section("mqtt", "table", "The broker MQTT terminals (gateways, concentrators) talk through; each terminal has its "
            "own topics under `root` (docs/mqtt.md).", (
        Key("host", "string", "broker host", required=True),
        Key("port", "integer 1..65535", "broker port", "1883"),
        Key("client_id", "string", "the master's client id (collector nodes append `.NODE`)", '"meterd-master"'),
        Key("username", "string", "user name at the broker"),
        Key("password_env", "variable name", "the environment variable holding the broker password (start-up "
            "stops if it is not set)"),
        Key("keepalive", "integer 5..3600 (s)", "MQTT keep-alive", "30"),
        Key("root", "string", "the topic root", '"meterd"'),
        Key("request_ttl", D, "a request no reply has come for by then is a timeout", '"30s"'),
        Key("max_payload_kb", "integer 1..262144", "a message from a terminal larger than this many KiB is dropped "
            "unread and counted (`oversized`); also cap the broker's `max_packet_size`", "1024"),
    )),
    Section("meters[]", "tables", "One meter.  Its address is its identity in the store; the same address may "
            "not be used twice on a channel.", (
        Key("address", "1 to 12 digits", 'the meter address (asset number); short forms are padded: "1" is '
            "000000000001", required=True),
        Key("channel", "channel name", "the `[channels.NAME]` it is on", required=True),
        Key("protocol", '"dlt645-2007" | "dlt645-1997" | "modbus"', "the meter's protocol", '"dlt645-2007"'),
        Key("ct", "number > 0", "current-transformer ratio (energy, demand and power are multiplied by ct x pt, "
            "current by ct); ct x pt at most 1000000", "1"),
        Key("pt", "number > 0", "voltage-transformer ratio (voltage is multiplied by pt)", "1"),
        Key("name", "string", "a name shown with the meter", '""'),
        Key("group", "string", "the meter group polls and tasks select by", '"default"'),
        Key("unit", "integer 1..247", "Modbus unit id (Modbus meters only, required there; unique per channel)"),
        Key("pn", "integer 1..2040", "measuring point number behind a Q/GDW 1376.1 terminal (meters on a gdw1376 "
            "channel only, required there; unique per channel)"),
        Key("model", "model name or `*.toml` path", "Modbus register map: a shipped model or a map file relative to "
            "the config (Modbus meters only, required there)"),
        *_RATING,
    )),
    Section("plausibility", "table", "What meters' circuits can carry, for plausibility: an energy register that "
            "advances faster than rated_current x rated_voltage x phases x overload x ct x pt allows is stored "
            "flagged implausible and never charged.  A meter's own keys win over its model's, its model's over "
            "these.", (
        *_RATING,
        Key("overload", "number 1..10", "how far past its rating a meter may be driven", "1.2"),
        Key("models", "tables by model name", "ratings for the meters of one `model`",
            section="plausibility.models.*"),
    )),
    Section("plausibility.models.*", "named", "`[plausibility.models.eastron-sdm630]`: the rating of the meters "
            "whose `model` is this name.", _RATING),
    Section("polls[]", "tables", "A routine read on an interval.  It reads the meters of its `groups` and the "
            "meters it lists in `meters` (every meter when it names neither), and asks each for what it wants in "
            "its own protocol: `quantities` (any protocol) and/or `items` / `items_1997` (DL/T 645 identifiers). "
            "A quantity a meter cannot deliver is an error naming the poll, the quantity and the meter.", (
        Key("name", "string", "unique among polls", required=True),
        Key("interval", D, "how often", required=True),
        Key("groups", "list of group names", "the meter groups it reads", "[]"),
        Key("meters", "list of addresses", 'meters it reads besides its groups\' ("1" is 000000000001); each '
            "must be in [[meters]]", "[]"),
        Key("quantities", "list of quantity names", "canonical quantities (`energy.active.import.total`, "
            "`voltage.a`, ...); the `frozen.daily.*` and `frozen.hourly.*` ones read the meter's last freeze, "
            "stamped with its freeze time"),
        Key("items", "list of 8 hex digits", "DL/T 645-2007 data identifiers, read as they are"),
        Key("items_1997", "list of 4 hex digits", "DL/T 645-1997 data identifiers, read as they are"),
    )),
    Section("tasks[]", "tables", "A scheduled collection task (APScheduler).  `kind` says what a run reads; a "
            "task has `every` or `cron` (the kinds `hourly`, `daily_frozen` and `reread` have a default cron, "
            "`reading_day` builds one from `day` and `time`).  Schedules are China Standard Time.", (
        Key("name", "string", "unique among tasks", required=True),
        Key("kind", '"realtime" | "hourly" | "daily_frozen" | "reading_day" | "reread"', "what a run reads: "
            "present values and curves; the same hourly; the meters' daily freeze (05060101 unless told); the "
            "settlement-day data (0001FF01); what routine tasks missed today", required=True),
        Key("groups", "list of group names", "the meter groups it reads (empty: every meter)", "[]"),
        Key("quantities", "list of quantity names", "as for polls"),
        Key("items", "list of 8 hex digits", "DL/T 645-2007 identifiers (daily_frozen: 05060101 by default, "
            "reading_day: 0001FF01)"),
        Key("items_1997", "list of 4 hex digits", "DL/T 645-1997 identifiers"),
        Key("every", D, "run on this interval (instead of cron)"),
        Key("cron", "five cron fields", "minute hour day month weekday, CST; defaults: hourly `0 * * * *`, "
            "daily_frozen `15 0 * * *`, reread `0 10,16,22 * * *`"),
        Key("jitter", D, "spread each run's start by up to this much (a fleet does not start at one instant)", "0"),
        Key("misfire_grace", D, "how late a run may still start (default: half the interval; cron tasks 5 min "
            "realtime, 10 min hourly, 6 h daily_frozen, 12 h reading_day, 30 min reread)"),
        Key("curve_points", "integer 1..384", "load-curve records per curve read (routine kinds)", "4"),
        Key("curve_interval", "integer (minutes), divides 60", "minutes between curve records (routine kinds)", "15"),
        Key("day", "integer 1..31", "reading_day: the day of the month", "1"),
        Key("time", '"HH:MM"', "reading_day: the time of day", '"01:00"'),
        Key("tasks", "list of task names", "reread: the routine tasks it checks (empty: all)", "[]"),
        Key("lookback_days", "integer 0..60", "reread: also check that many days before today", "0"),
        Key("max_points", "integer 1..384", "reread: curve records per back-fill request", "24"),
        Key("settle", D, "reread: how old a slot or run must be before it counts as missing", '"300s"'),
    )),
    Section("prepaid", "table", "Remote fee control (远程费控): the master keeps each account's balance, charges "
            "energy by tariff and sends alarm, trip and reclose commands subject to the safety rules "
            "(docs/prepaid.md).  Amounts are yuan written as strings.  Secrets are never inline: `password` or "
            "`operator` here is refused.", (
        Key("dry_run", "boolean", "record what would be sent, send nothing", "false"),
        Key("check_every", D, "the charging and policy pass", '"60s"'),
        Key("command_ttl", D, "a command not delivered by then expires (an offline meter)", '"2h"'),
        Key("retry_every", D, "an unreachable meter is tried again this often", '"5m"'),
        Key("valid_for", D, "the DL/T 645 relay command's validity window", '"10m"'),
        Key("settle", D, "pause before the relay read-back (0 allowed)", "0"),
        Key("manual_hold", D, "after an operator's reclose, no automatic trip for this long (0 allowed)", '"24h"'),
        Key("trip_notice", D, "from the first alarm to the earliest automatic trip (0: none)", '"24h"'),
        Key("reclose", '"allowed" | "direct"', "reclose by 合闸允许 (the customer presses the button) or directly",
            '"allowed"'),
        Key("quiet_hours", 'list of "HH:MM-HH:MM"', "no automatic trips in these windows (CST; may pass midnight)",
            "[]"),
        Key("no_trip_weekends", "boolean", "no automatic trips on Saturdays and Sundays", "false"),
        Key("holidays", "list of dates", "no automatic trips on these days", "[]"),
        Key("workdays", "list of dates", "weekend days that are workdays (调休)", "[]"),
        Key("max_trips_per_area_hour", "integer >= 0", "a cap on automatic trips per area and hour (none without "
            "it)"),
        Key("password_env", "variable name", "holds the DL/T 645 password, 8 hex digits: level + 3 bytes (default: "
            "METERD_METER_PASSWORD); needed at start when the site has DL/T 645 meters, unless dry_run"),
        Key("operator_env", "variable name", "holds the DL/T 645 operator code, 8 hex digits (default: "
            "METERD_OPERATOR_CODE)"),
        Key("thresholds", "table", "the site's balance thresholds (accounts may override)",
            '{ reminder = "50", alarm = "20", trip = "0", reclose = "10" }', section="prepaid.thresholds"),
        Key("max_payment", "amount", "the most one payment may be (CLI, API, billing imports); at most "
            "10000000000", '"1000000"'),
        Key("max_adjustment", "amount", "the most one adjustment may be, either sign", '"1000000"'),
        Key("tariffs", "array of tables", "the tariffs", section="prepaid.tariffs[]"),
        Key("accounts", "array of tables", "prepaid accounts and their meters", section="prepaid.accounts[]"),
        Key("power_limits", "array of tables", "定值控制: power limits of large customers",
            section="prepaid.power_limits[]"),
        Key("notify", "array of tables", "where customer notices go", section="prepaid.notify[]"),
    )),
    Section("prepaid.thresholds", "table", "Balance levels in yuan (signed: a trip level may be an overdraft, "
            '"-10"), or days of average use ("3d").  Also an account\'s `thresholds`, which override the site\'s '
            "key by key.", (
        Key("reminder", "amount or days", "a reminder notice at or below", '"50"'),
        Key("alarm", "amount or days", "the meter's alarm command at or below", '"20"'),
        Key("trip", "amount or days", "an automatic trip at or below", '"0"'),
        Key("reclose", "amount or days", "reclose when a payment lifts the balance over this", '"10"'),
    )),
    Section("prepaid.tariffs[]", "tables", "A tariff: versions by effective date.", (
        Key("name", "string", "what accounts call it", required=True),
        Key("versions", "array of tables", "at least one", required=True, section="prepaid.tariffs[].versions[]"),
    )),
    Section("prepaid.tariffs[].versions[]", "tables", "The tariff from a date on.  `kind = \"flat\"` takes `price`; "
            "`\"tou\"` takes `rates` and `tou_source` (and `schedule` when the source is the schedule); "
            "`\"tiered\"` takes `tiers` and `tier_period`.  Prices are yuan per kWh written as strings.", (
        Key("effective", "date", "the day (CST) this version takes effect", required=True),
        Key("kind", '"flat" | "tou" | "tiered"', "how energy is priced", required=True),
        Key("price", "price", "flat: the price"),
        Key("rates", "table", "tou: the price of each rate", section="prepaid.tariffs[].versions[].rates"),
        Key("tou_source", '"registers" | "schedule"', "tou: charge the meter's own rate registers, or split "
            "total energy by `schedule`"),
        Key("schedule", "array of tables", "tou: the day's periods", section="prepaid.tariffs[].versions[].schedule[]"),
        Key("tiers", "array of tables", "tiered: ladder steps by cumulative energy",
            section="prepaid.tariffs[].versions[].tiers[]"),
        Key("tier_period", '"year" | "month"', "tiered: what cumulative energy counts from"),
        Key("fixed_monthly", "price", "a fixed charge per month (yuan)"),
    )),
    Section("prepaid.tariffs[].versions[].rates", "table", "`rates = { sharp = \"1.0\", peak = \"0.8\", flat = "
            "\"0.6\", valley = \"0.3\" }` (尖 峰 平 谷).", (
        Key("sharp", "price", "rate 1 (尖)"),
        Key("peak", "price", "rate 2 (峰)"),
        Key("flat", "price", "rate 3 (平)"),
        Key("valley", "price", "rate 4 (谷)"),
    )),
    Section("prepaid.tariffs[].versions[].schedule[]", "tables", "`schedule = [{ start = \"08:00\", rate = \"peak\" "
            "}, ...]`: each period lasts until the next one starts.", (
        Key("start", '"HH:MM"', "when the period starts (CST)", required=True),
        Key("rate", '"sharp" | "peak" | "flat" | "valley"', "the rate charged in it", required=True),
    )),
    Section("prepaid.tariffs[].versions[].tiers[]", "tables", "`tiers = [{ upto = \"2160\", price = \"0.4883\" }, "
            "{ price = \"0.7883\" }]`: the last tier has no `upto`.", (
        Key("upto", "number (kWh)", "the tier ends at this cumulative energy"),
        Key("price", "price", "the price in the tier", required=True),
    )),
    Section("prepaid.accounts[]", "tables", "A prepaid account.  Accounts may also come from the billing system "
            "(`[[sync.jobs]]` import_accounts).", (
        Key("account", "string", "the account number", required=True),
        Key("customer", "string", "the customer's name", '""'),
        Key("area", "string", "the area (trip caps count per area)", '""'),
        Key("tariff", "tariff name", "a `[[prepaid.tariffs]]` name", required=True),
        Key("meters", "list of addresses", "its meters (in [[meters]]; one account per meter); CT x PT comes from "
            "the meter", required=True),
        Key("protected", "boolean", "保电: never tripped automatically", "false"),
        Key("thresholds", "table", "overrides of `[prepaid] thresholds`", section="prepaid.thresholds"),
        Key("opening_balance", "amount, signed", "applied once; without it the account is pending until a "
            "balance is set"),
    )),
    Section("prepaid.power_limits[]", "tables", "定值控制: a large customer's meter whose power stays above its "
            "limit for `hold` gets an alarm or a trip.", (
        Key("meter", "address", "the meter (in [[meters]])", required=True),
        Key("account", "string", "accepted and ignored: the limit belongs to the account that has the meter"),
        Key("limit_kw", "number (kW)", "the limit at all times (limit_kw, windows or both)"),
        Key("hold", D, "how long power must stay above the limit", '"5m"'),
        Key("action", '"alarm" | "trip"', "what happens then", '"alarm"'),
        Key("windows", "array of tables", "时段控: other limits in windows of the day",
            section="prepaid.power_limits[].windows[]"),
    )),
    Section("prepaid.power_limits[].windows[]", "tables", "`windows = [{ start = \"08:00\", end = \"11:00\", "
            "limit_kw = \"60\" }]`", (
        Key("start", '"HH:MM"', "the window's start (CST)", required=True),
        Key("end", '"HH:MM"', "the window's end", required=True),
        Key("limit_kw", "number (kW)", "the limit in the window", required=True),
    )),
    Section("prepaid.notify[]", "tables", "Where notices (reminder, alarm, trip, reclose, held, anomaly, "
            "power-limit) go: `kind = \"log\"` appends to a file, `\"webhook\"` POSTs them (an SMS gateway is a "
            "webhook with a template).", (
        Key("kind", '"log" | "webhook"', "the sink", required=True),
        Key("path", "path", "log: the file (relative to the config)"),
        Key("url", "http(s) URL", "webhook: where to POST"),
        Key("template", "string", "webhook: the body, with $account, $kind, $message, $at, $meter ... (without it: "
            "the notice as JSON)"),
        Key("kinds", "list of notice kinds", "only these kinds (default: all)"),
        Key("headers", "table of strings", "webhook: extra HTTP headers", "{}", section="prepaid.notify[].headers"),
        Key("timeout", D, "webhook: per request", '"5s"'),
    )),
    Section("prepaid.notify[].headers", "table", "HTTP header names and values of the operator's choice.", free=True),
    Section("topology", "table", "Areas (台区) and lines with their metering points, for line loss, outages and "
            "the quality figures per area.", (
        Key("units", "array of tables", "areas, lines and groups", section="topology.units[]"),
        Key("points", "array of tables", "which meter measures what where", section="topology.points[]"),
    )),
    Section("topology.units[]", "tables", "An area, a line or a group of them.", (
        Key("name", "string", "unique", required=True),
        Key("kind", '"area" | "line" | "group"', "a transformer area, a feeder line, or a group", '"area"'),
        Key("parent", "unit name", "the unit it hangs on (e.g. the line of an area)"),
        Key("loss_threshold", "percent", "loss rates above it are flagged (default `[analytics] loss_threshold`)"),
        Key("jump_threshold", "percentage points", "a rate this far from the unit's recent average is flagged "
            "(default `[analytics] jump_threshold`)"),
    )),
    Section("topology.points[]", "tables", "A meter's place in a unit.", (
        Key("meter", "address", "a meter in [[meters]]", required=True),
        Key("unit", "unit name", "a `[[topology.units]]` name", required=True),
        Key("role", '"supply" | "sales" | "auxiliary"', "supply (考核表), a customer's meter, or auxiliary",
            '"sales"'),
        Key("multiplier", "number >= 0", "an extra factor (readings already carry CT x PT)", '"1"'),
        Key("industry", "string", "for statistics by industry", '""'),
        Key("groups", "list of strings", "statistics groups", "[]"),
    )),
    Section("analytics", "table", "Line-loss flags, anomaly limits and outage detection (docs/analytics.md). "
            "Numbers are written as strings.", (
        Key("loss_threshold", "percent", "units' default: loss rates above it are flagged", '"10"'),
        Key("jump_threshold", "percentage points", "units' default: a jump against the recent average", '"5"'),
        Key("check_every", D, "how often anomalies and outages are checked", '"60s"'),
        Key("voltage_nominal", "number (V)", "the nominal voltage the band is around (GB/T 12325: 220 V)", '"220"'),
        Key("voltage_low_pct", "percent", "below nominal by more than this is a voltage anomaly", '"-10"'),
        Key("voltage_high_pct", "percent", "above nominal by more than this", '"7"'),
        Key("imbalance_pct", "percent", "three-phase current imbalance (Imax - Imin) / Imax above this", '"30"'),
        Key("no_data_after", D, "a meter without a good reading for this long is a no-data anomaly", '"24h"'),
        Key("clock_drift", D, "a meter clock off by more than this", '"5m"'),
        Key("outage_silent_after", D, "a meter silent this long counts as down (longer than the poll interval)",
            '"30m"'),
        Key("outage_min_share", "number >= 0 (a share)", "an area is out when this share of its meters went down "
            "together (0.6: 60 %)",
            '"0.6"'),
        Key("outage_min_meters", "integer >= 1", "... and at least this many", "3"),
        Key("generators", "list of addresses", "meters that may export (PV): no reverse-energy anomaly", "[]"),
    )),
    Section("sync", "table", "The billing-system link: scheduled, idempotent jobs.", (
        Key("jobs", "array of tables", "the jobs", section="sync.jobs[]"),
    )),
    Section("sync.jobs[]", "tables", "A job exchanges records with the billing system through a drop folder "
            "(`folder`: inbox/ outbox/ processed/ quarantine/) or an HTTP JSON endpoint (`url`): exactly one. "
            "Tokens are never inline: `token` here is refused.", (
        Key("name", "string", "unique; `meterd sync run NAME`", required=True),
        Key("kind", '"import_payments" | "import_accounts" | "export_readings" | "export_balances"',
            "what it exchanges", required=True),
        Key("folder", "path", "the drop folder (relative to the config)"),
        Key("url", "http(s) URL", "the HTTP JSON endpoint"),
        Key("token_env", "variable name", "holds the endpoint's bearer token (start-up stops if it is not set)"),
        Key("schedule", "five cron fields", "when it runs (CST); without it only `meterd sync run NAME`"),
        Key("format", '"csv" | "json"', "exports: the file format", '"csv"'),
        Key("encoding", '"utf-8" | "gbk"', "exports: the text encoding", '"utf-8"'),
        Key("chunk", "integer >= 1", "records applied and committed at a time", "500"),
        Key("max_file_mb", "integer 1..1024", "imports: an inbox file larger than this many MiB is quarantined "
            "whole, unread; an HTTP answer larger fails the run (parsing takes ~15x the size in memory, in the "
            "daemon)", "64"),
    )),
    Section("api", "table", "The HTTP API and the built-in dashboard (tokens: `meterd token`).", (
        Key("host", "string", "address to listen on", '"127.0.0.1"'),
        Key("port", "integer 1..65535", "port", "8080"),
        Key("header_timeout", D, "a client has this long to send a whole request", '"10s"'),
        Key("keep_alive_timeout", D, "an idle kept-alive connection stays open this long after an answer", '"5s"'),
        Key("max_connections", "integer 1..1000000", "open connections; at the cap the longest-idle one makes room",
            "1024"),
    )),
    Section("cluster", "table", "This process as one collector node of several sharing the PostgreSQL of "
            "`[store] database` (docs/cluster.md).  On by default with PostgreSQL; on SQLite the section must say "
            "`enabled = false`.", (
        Key("node", "string", "this node's name, unique among live nodes (default: hostname-pid)"),
        Key("lease_time", D, "a dead node's channels are free again after at most this long", '"15s"'),
        Key("heartbeat", D, "leases renewed and work rebalanced this often (at most lease_time / 3)", '"3s"'),
        Key("slack", "integer >= 0", "channels a node may hold above its fair share before it gives some back "
            "(default: 1 or 10 % of the share, whichever is larger)"),
        Key("enabled", "boolean", "run as a cluster node", "true"),
    )),
    Section("site", "table", "Facts about the site as a whole.  The meters' own clocks and the tariffs stay on "
            "Beijing time whatever this says.  The zone is also recorded in the state database (table "
            "`site_settings`, SQLite or PostgreSQL) by the daemon (`meterd run`, `meterd demo`) and by every command "
            "given the config, so a command run on the data directory alone (`meterd readings --data-dir "
            "/var/lib/meterd ...`) shows the site's times too.  The config always wins: a zone it changed replaces "
            "the recorded one (the daemon logs `site zone ... recorded in the state database ... (it recorded ...)` "
            "at INFO).  A data directory that records none -- the daemon never ran there with this meterd -- shows "
            "Asia/Shanghai (+08:00) and says so once on stderr: `meterd: note: times in +08:00 (Asia/Shanghai): no "
            "config given and the data directory DIR records no site zone`.", (
        Key("timezone", "IANA zone name", "the operators' zone: every time shown to a person is in it with its "
            "offset, and the master's daily figures cut at its midnight (Asia/Shanghai: UTC+8 all year)",
            '"Asia/Shanghai"'),
    )),
)

#: Every section by its id, in the order the reference shows them.
SECTIONS: Final[dict[str, Section]] = {s.id: s for s in _SECTIONS}


def keys(section: str) -> tuple[str, ...]:
    """The keys the loader accepts in ``section`` (an id of :data:`SECTIONS`)."""
    return SECTIONS[section].names


__all__ = ["DTU_FORMAT_KEYS", "DURATION_FORMS", "ROOT", "SECTIONS", "Key", "Section", "keys"]
