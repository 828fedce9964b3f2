"""Read a TOML config file and turn it into a :class:`~meterd.config.model.Config`, or fail with
every problem at once.

Strategy: one pass over the parsed TOML with a :class:`_Checker` that records a problem instead of
raising.  Each ``_xxx`` function validates one section and returns its typed node, or ``None``
when something inside was wrong, so the pass carries on and the cross-checks (meter -> channel,
poll -> group, duplicate addresses) still run on what could be read.  Only when nothing at all was
recorded is a :class:`Config` built; otherwise :class:`~meterd.errors.ConfigError` carries the
list, each entry ``"<file>: <key path>: <what is wrong>"``, e.g.
``site.toml: meters[3].ct: must be a positive number, got "x"``.  Array indexes count from 0, as
in the TOML array of tables.

Unknown keys are errors (with a "did you mean" hint), so a typo never silently leaves a default
in force.  Durations are a number of seconds or a string with units: ``"500ms"``, ``"30s"``,
``"15m"``, ``"1h"``, ``"1h30m"``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import replace
from datetime import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

from meterd.checking import Checker, hint, show
from meterd.config.durations import DURATION_FORMS, parse_duration
from meterd.config.keys import ROOT, keys
from meterd.config.model import (
    KEEP_ATTEMPTS,
    KEEP_READINGS,
    PRUNE_AT,
    ApiConfig,
    ChannelConfig,
    Config,
    DtuLink,
    Framing,
    GdwLink,
    InfluxConfig,
    ListenerConfig,
    MeterConfig,
    MqttConfig,
    MqttLink,
    Parity,
    PollConfig,
    Protocol,
    SerialLink,
    StoreConfig,
    TcpLink,
    TerminalKind,
    Timeouts,
)
from meterd.errors import ConfigError, ProtocolError
from meterd.heap import collector_paused
from meterd.plausibility import DEFAULT_RATING, Rating
from meterd.protocols.dlt645.catalogue import Scaling
from meterd.protocols.dlt645.frame import BROADCAST, normalize_address
from meterd.protocols.dlt645.messages import parse_di
from meterd.protocols.drivers import get_driver
from meterd.protocols.modbus.registermap import builtin_maps, get_map, load_map
from meterd.protocols.modbus.schema import RegisterMap
from meterd.protocols.terminal.dtu import PRESETS, DtuFormat, get_format
from meterd.storage.database import Database, is_postgres_url, redact

BAUD_RATES: Final = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
BYTESIZES: Final = (7, 8)
STOPBITS: Final = (1, 2)
MAX_RETRIES: Final = 10
MAX_PREAMBLE: Final = 4  # DL/T 645-2007 clause 4.1: up to four FE bytes before a frame

# The keys each section accepts: meterd.config.keys, the table docs/config.md is rendered from.
_TOP_KEYS: Final = keys(ROOT)
_MQTT_KEYS: Final = keys("mqtt")
_MQTT_LINK_KEYS: Final = keys("channels.*.mqtt")
_INFLUX_KEYS: Final = keys("store.influxdb")
_TASK_KEYS: Final = keys("tasks[]")
_TASK_DURATIONS: Final = ("every", "jitter", "misfire_grace", "settle")
_LISTENER_KEYS: Final = keys("listeners.*")
_DTU_FORMAT_KEYS: Final = keys("listeners.*.formats[]")
_DTU_KEYS: Final = keys("channels.*.dtu")
_GDW_KEYS: Final = keys("channels.*.gdw1376")
LISTENER_PROTOCOLS: Final = ("dtu", "gdw1376")
MAX_PN: Final = 2040  # Q/GDW 1376.1: DA names points 1..2040
_STORE_KEYS: Final = keys("store")
MAX_POOL_SIZE: Final = 1000  # connections per process; PostgreSQL's own max_connections is usually 100
_CHANNEL_KEYS: Final = keys("channels.*")
_SERIAL_KEYS: Final = keys("channels.*.serial")
_TCP_KEYS: Final = keys("channels.*.tcp")
_RATING_KEYS: Final = keys("plausibility.models.*")
_METER_KEYS: Final = keys("meters[]")
_PLAUSIBILITY_KEYS: Final = keys("plausibility")
MAX_RATIO: Final = Decimal(1_000_000)  # CT x PT of the largest HV metering point is ~10^6 (500 kV/100 V x 2000/1 A)
MAX_RATED_CURRENT: Final = Decimal(1_000_000)  # A (a simulated meter at 3600x speed needs 540,000)
MAX_RATED_VOLTAGE: Final = Decimal(1_000_000)  # V
_POLL_KEYS: Final = keys("polls[]")
_RATING_KEY_SET: Final = frozenset(("rated_current", "rated_voltage", "phases", "overload"))  # _rating_values reads
_ONE: Final = Decimal(1)  # a meter's CT or PT left out: one object shared by every such meter
_PROTOCOL: Final = Protocol.DLT645_2007  # a meter's protocol left out
_API_KEYS: Final = keys("api")

# Bounds on what a config file may be, checked before any of it is used.  A district's config with
# 100,000 meters is ~7 MiB; a city's 1,000,000 meters each with its prepaid account ~190 MB (config
# check: 51 s, 2.7 GB peak); no real config nests more than a handful of levels
# ([channels.c0] serial = {...}; [[topology.units]] ...).
MAX_CONFIG_BYTES: Final = 256 * 2**20
MAX_CONFIG_DEPTH: Final = 32
_TOML_POSITION: Final = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; relative paths inside resolve against its folder."""
    path = Path(path)
    source = str(path)
    raw = read_bounded(path, source)
    # a district's file makes millions of objects in one go, none of them garbage: the cyclic
    # collector would walk them again and again (a fifth of the load) and find nothing
    with collector_paused():
        return _load(raw, path, source)


def _toml_1_0(module: Any) -> bool:
    """Whether ``module``'s ``loads`` reads TOML 1.0 as :mod:`tomllib` does: it refuses what only
    TOML 1.1 allows (a later tomli reads 1.1, which would make a config valid on one machine and
    not on another)."""
    def reads(text: str) -> bool:
        try:
            module.loads(text)
        except Exception:  # noqa: BLE001 -- refused, as TOML 1.0 does
            return False
        return True

    return not any(reads(text) for text in ("a = {b = 1,}", 'a = "\\e"', "a = {\nb = 1\n}", "t = 07:32"))


def _fast_toml() -> Any:
    """tomli where it is installed and reads TOML 1.0 (compiled by mypyc in its wheels for the
    common platforms: a 100,000-meter file in a third of tomllib's time), else None."""
    try:
        import tomli
    except ImportError:
        return None
    return tomli if _toml_1_0(tomli) else None


#: The parser tried first (None: tomllib alone).  Whatever it does not parse, tomllib parses
#: again, so a broken file is refused with tomllib's message and position, as always.
FAST_TOML: Any = _fast_toml()


def parse_toml(text: str) -> dict[str, Any]:
    """``text`` as tomllib parses it, by :data:`FAST_TOML` where there is one."""
    if FAST_TOML is not None:
        try:
            return FAST_TOML.loads(text)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001, S110 -- tomllib says what is wrong, as it always has
            pass
    return tomllib.loads(text)


def _load(raw: bytes, path: Path, source: str) -> Config:
    try:
        data = parse_toml(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        where = _toml_position(exc)
        raise ConfigError(f"{source}: {where}invalid TOML: {_toml_message(exc)}") from exc
    except RecursionError:  # tomllib recurses per level: ``a = [[[[...`` 100,000 deep
        raise ConfigError(f"{source}: nested too deeply (more than {MAX_CONFIG_DEPTH} levels of arrays or "
                          "tables)") from None
    check_depth(data, source)
    return parse_config(data, source=source, base_dir=path.parent)


def read_bounded(path: Path, source: str, limit: int | None = None) -> bytes:
    """A file's bytes, at most ``limit`` (default :data:`MAX_CONFIG_BYTES`): ConfigError past it,
    before more is read, and for a missing or unreadable file."""
    limit = MAX_CONFIG_BYTES if limit is None else limit
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size  # a file that says it is too large is refused unread
            raw = f.read(limit + 1) if size <= limit else b""
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > limit or size > limit:
        raise ConfigError(f"{source}: larger than {limit // 2**20} MiB: not a config file")
    return raw


def check_depth(data: Any, source: str, limit: int | None = None) -> None:
    """ConfigError naming the key where ``data`` nests deeper than ``limit`` (default
    :data:`MAX_CONFIG_DEPTH`) arrays or tables; walked without recursion."""
    limit = MAX_CONFIG_DEPTH if limit is None else limit
    # only tables and arrays go on the stack (a scalar nests nothing): a 100,000-meter file has
    # ten times more scalars than containers, and each would cost a path string
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > limit and isinstance(node, (dict, list)):
            raise ConfigError(f"{source}: {where}: nested more than {limit} levels deep")
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in node.items()
                         if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node) if isinstance(v, (dict, list)))


def _toml_position(exc: tomllib.TOMLDecodeError) -> str:
    # tomllib (3.11) only puts the position into the message text.
    match = _TOML_POSITION.search(str(exc))
    if match is None:
        return ""
    if match.group(1) is None:
        return "at end of file: "
    return f"line {match.group(1)}, column {match.group(2)}: "


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    return _TOML_POSITION.sub("", str(exc))


def parse_config(
    data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> Config:
    """Validate already-parsed TOML.  ``base_dir`` anchors relative paths (none: left relative)."""
    check = _Checker(source)
    _inline_secrets(check, "", data)
    check.known_keys("", data, _TOP_KEYS)
    if "secrets_file" in data:
        _secrets_file(check, data["secrets_file"], base_dir)

    store = _store(check, data.get("store"), base_dir)
    listeners_raw = check.table("listeners", data.get("listeners", {})) or {}
    listeners = [_listener(check, f"listeners.{name}", name, raw) for name, raw in listeners_raw.items()]
    channels_raw = check.table("channels", data.get("channels", {}))
    channels = [
        _channel(check, f"channels.{name}", name, raw) for name, raw in (channels_raw or {}).items()
    ]
    # A broken [channels] table is reported once; do not also blame every meter that uses it.
    channel_names = set(channels_raw) if channels_raw is not None else None
    ratings = _plausibility(check, data.get("plausibility", {}))
    meters = _meters(check, data.get("meters", []), channel_names=channel_names, base_dir=base_dir, ratings=ratings)
    polls = _polls(check, data.get("polls", []), meters)
    _check_dtu_links(check, [c for c in channels if c is not None], set(listeners_raw))
    _check_dtu_terminals(check, [c for c in channels if c is not None], [lc for lc in listeners if lc is not None])
    _check_gdw(check, [c for c in channels if c is not None], [lc for lc in listeners if lc is not None], meters)
    mqtt = _mqtt(check, data["mqtt"]) if "mqtt" in data else None
    if "mqtt" not in data:
        for c in channels:
            if c is not None and isinstance(c.link, MqttLink):
                check.problem(f"channels.{c.name}.mqtt", "an MQTT channel needs the [mqtt] broker section")
    tasks = _tasks(check, data.get("tasks", []), meters)
    prepaid = None
    if "prepaid" in data:
        from meterd.config.prepaid import parse_prepaid  # the control package is only loaded when used

        ratios = {m.address: m.ct * m.pt for _, m in meters if m is not None}
        prepaid = parse_prepaid(check, data["prepaid"], meters=ratios, base_dir=base_dir, secret_env=_secret_env)

    analytics = sync = None
    if "topology" in data or "analytics" in data:
        from meterd.config.analytics import parse_analytics

        analytics = parse_analytics(check, data.get("topology"), data.get("analytics"),
                                    meters={m.address for _, m in meters if m is not None})
    if "sync" in data:
        from meterd.config.analytics import parse_sync

        sync = parse_sync(check, data["sync"], base_dir=base_dir, secret_env=_secret_env)

    api = _api(check, data["api"]) if "api" in data else None
    from meterd.config.cluster import parse_cluster

    cluster = None if store is None else parse_cluster(check, data.get("cluster"), postgres=store.database is not None)
    from meterd.config.site import SiteConfig, parse_site

    site = parse_site(check, data.get("site"))

    if check.problems:
        raise ConfigError(check.problems)
    assert store is not None
    return Config(
        source=source,
        store=store,
        channels=tuple(c for c in channels if c is not None),
        meters=tuple(m for _, m in meters if m is not None),
        polls=tuple(p for p in polls if p is not None),
        listeners=tuple(x for x in listeners if x is not None),
        mqtt=mqtt,
        tasks=tuple(tasks),
        prepaid=prepaid,
        analytics=analytics,
        sync=sync,
        api=api,
        cluster=cluster,
        site=site or SiteConfig(),
    )


# --- sections ----------------------------------------------------------------------------------


def _store(check: _Checker, raw: Any, base_dir: Path | None) -> StoreConfig | None:
    if raw is None:
        check.problem("store", "missing: the [store] table with data_dir is required")
        return None
    table = check.table("store", raw)
    if table is None:
        return None
    # a password here is refused by _inline_secrets: put it in the environment, named by password_env
    check.known_keys("store", {k: v for k, v in table.items() if k != "password"}, _STORE_KEYS)
    data_dir: Path | None = None
    if "data_dir" not in table:
        check.problem("store.data_dir", "missing: required")
    elif (text := check.string("store.data_dir", table["data_dir"])) is not None:
        data_dir = Path(text).expanduser()
        if base_dir is not None and not data_dir.is_absolute():
            data_dir = base_dir / data_dir
    batch_size = check.integer("store.batch_size", table.get("batch_size", 500), low=1)
    flush_interval = check.duration("store.flush_interval", table.get("flush_interval", 1.0))
    influx = None
    if "influxdb" in table and data_dir is not None:
        influx = _influx(check, table["influxdb"], data_dir)
        if influx is None:
            return None
    database = _database(check, table)
    keep_readings = _keep(check, "store.keep_readings", table.get("keep_readings", KEEP_READINGS), MIN_KEEP_READINGS,
                          "the re-read tasks look back to yesterday's readings")
    keep_attempts = _keep(check, "store.keep_attempts", table.get("keep_attempts", KEEP_ATTEMPTS), MIN_KEEP_ATTEMPTS,
                          "the API shows a meter's recent attempts")
    prune_at = _time_of_day(check, "store.prune_at", table.get("prune_at", PRUNE_AT))
    if (data_dir is None or batch_size is None or flush_interval is None or database is False or keep_readings is False
            or keep_attempts is False or prune_at is None):
        return None
    return StoreConfig(data_dir=data_dir, batch_size=batch_size, flush_interval=flush_interval, influxdb=influx,
                       database=database, password_env=table.get("password_env") if database else None,
                       keep_readings=keep_readings, keep_attempts=keep_attempts, prune_at=prune_at)


MIN_KEEP_READINGS: Final = 2 * 86400.0
MIN_KEEP_ATTEMPTS: Final = 86400.0
_FOREVER: Final = "forever"
_TIME_OF_DAY: Final = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def _keep(check: _Checker, path: str, raw: Any, least: float, why: str) -> float | None | Literal[False]:
    """A retention: a duration of at least ``least`` seconds, or ``"forever"`` / ``0`` for no
    limit (None); False when it is wrong (said with the key)."""
    if not isinstance(raw, bool) and (raw == 0 or isinstance(raw, str) and raw.strip().lower() in (_FOREVER, "0")):
        return None
    seconds = parse_duration(raw)
    if seconds is None or seconds < 0:
        check.problem(path, f'must be a duration ("400d", "90d", "12h"), or "forever" (or 0) to keep everything, '
                      f"got {show(raw)}")
        return False
    if seconds < least:
        check.problem(path, f"must be at least {least / 86400:g}d ({why}), or \"forever\" to keep everything, "
                      f"got {show(raw)}")
        return False
    return seconds


def _time_of_day(check: _Checker, path: str, raw: Any) -> time | None:
    """A site-local time of day: ``"03:30"``, or a TOML local time (``03:30:00``)."""
    if isinstance(raw, time) and raw.tzinfo is None:
        return raw
    if isinstance(raw, str) and (m := _TIME_OF_DAY.fullmatch(raw.strip())):
        return time(int(m.group(1)), int(m.group(2)))
    check.problem(path, f'must be a time of day in the site\'s time zone, "HH:MM" (e.g. "03:30"), got {show(raw)}')
    return None


def _database(check: _Checker, table: dict[str, Any]) -> Database | None | Literal[False]:
    """``[store] database = "postgresql://user@host:port/dbname"``, ``password_env``, ``pool_size``:
    the state in PostgreSQL (None: the SQLite files of data_dir; False: something was wrong).

    The password is looked up now, in the environment or the secrets file: under the variable
    ``password_env`` names (which must then be set), else under libpq's own ``PGPASSWORD`` (none:
    libpq's other ways, ``~/.pgpass`` or a server that asks for none)."""
    from meterd import secrets

    path = "store.database"
    if "database" not in table:
        for key in ("password_env", "pool_size"):
            if key in table:
                check.problem(f"store.{key}", "only with store.database (the PostgreSQL database it is for)")
        return None
    url = check.string(path, table["database"])
    password_env = _secret_env(check, "store", table, "password_env", required=False)
    pool_size = check.integer("store.pool_size", table.get("pool_size", 8), low=1, high=MAX_POOL_SIZE)
    if url is None or pool_size is None or ("password_env" in table and password_env is None):
        return False
    problem = _database_url_problem(url)
    if problem:
        check.problem(path, problem)
        return False
    name = password_env or "PGPASSWORD"
    password = secrets.lookup(name)
    if password_env is not None and password is None:
        check.problem("store.password_env", f"{secrets.where(password_env)} (the database password) is not set")
        return False
    return Database(url, password=password, pool_size=pool_size)


def _database_url_problem(url: str) -> str | None:
    """What is wrong with a ``postgresql://`` URL for ``store.database``, or None.  The message never
    repeats a password the URL holds."""
    if not is_postgres_url(url):
        return f"must be a PostgreSQL URL such as postgresql://meterd@db.example:5432/meterd, got {show(redact(url))}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"not a valid URL ({exc}): {show(redact(url))}"
    query = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if parts.password is not None or "password" in query:
        return ("a password must not be written in the URL: put it in the environment or the secrets file and "
                "name the variable with store.password_env")
    if not parts.path.strip("/"):
        return f"names no database (postgresql://user@host:port/DBNAME), got {show(redact(url))}"
    return None


def _api(check: _Checker, raw: Any) -> ApiConfig | None:
    """``[api] host = "127.0.0.1", port = 8080``: the HTTP API the daemon serves (tokens: ``meterd token``),
    with its connection limits (``header_timeout``, ``keep_alive_timeout``, ``max_connections``)."""
    table = check.table("api", raw)
    if table is None:
        return None
    check.known_keys("api", table, _API_KEYS)
    host = check.string("api.host", table.get("host", "127.0.0.1"))
    port = check.integer("api.port", table.get("port", 8080), low=1, high=65535)
    header_timeout = check.duration("api.header_timeout", table.get("header_timeout", 10.0))
    keep_alive = check.duration("api.keep_alive_timeout", table.get("keep_alive_timeout", 5.0))
    max_connections = check.integer("api.max_connections", table.get("max_connections", 1024),
                                    low=1, high=1_000_000)
    if host is None or port is None or header_timeout is None or keep_alive is None or max_connections is None:
        return None
    return ApiConfig(host=host, port=port, header_timeout=header_timeout, keep_alive_timeout=keep_alive,
                     max_connections=max_connections)


def _inline_secrets(check: _Checker, path: str, node: Any) -> None:
    """A secret written in the config itself is refused wherever it is (the specific sections
    also say so; this catches the rest, e.g. a password under a notify webhook)."""
    from meterd.secrets import INLINE_SECRET_KEYS

    # the path of a key is only made for a secret's key or a table or array to look into: a
    # 100,000-meter file is mostly scalars, which hold no key
    if isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _inline_secrets(check, f"{path}[{i}]", item)
    elif isinstance(node, dict):
        for key, value in node.items():
            secret = str(key).lower() in INLINE_SECRET_KEYS
            if not secret and not isinstance(value, (dict, list)):
                continue
            where = f"{path}.{key}" if path else str(key)
            if secret and where not in _SECRETS_CHECKED_BY_SECTION:
                check.problem(where, "a secret must not be written in the config: put it in the environment or "
                              f"the secrets file and name the variable with {key}_env")
            else:
                _inline_secrets(check, where, value)


_SECRETS_CHECKED_BY_SECTION: Final = frozenset({"mqtt.password", "store.influxdb.token", "prepaid.password"})


def _secrets_file(check: _Checker, raw: Any, base_dir: Path | None) -> None:
    from meterd.secrets import load_secrets_file

    text = check.string("secrets_file", raw)
    if text is None:
        return
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        load_secrets_file(path)
    except ConfigError as exc:
        for problem in exc.problems:
            check.problem("secrets_file", problem.removeprefix("secrets_file: "))


def _secret_env(check: _Checker, path: str, table: dict[str, Any], key: str, *, required: bool) -> str | None:
    """The *name* of the environment variable holding a secret; a secret itself is never in the file."""
    if key not in table:
        if required:
            check.problem(f"{path}.{key}", "missing: the name of the environment variable holding the secret")
        return None
    name = check.string(f"{path}.{key}", table[key])
    if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        check.problem(f"{path}.{key}", f"must be an environment variable name such as METERD_TOKEN, got {show(name)}")
        return None
    return name


def _influx(check: _Checker, raw: Any, data_dir: Path) -> InfluxConfig | None:
    path = "store.influxdb"
    table = check.table(path, raw)
    if table is None:
        return None
    if "token" in table:
        check.problem(f"{path}.token", "a secret must not be written in the config: put it in an environment "
                      "variable and name that with token_env")
    check.known_keys(path, {k: v for k, v in table.items() if k != "token"}, _INFLUX_KEYS)
    url = check.required_string(path, table, "url")
    if url is not None and not re.match(r"https?://", url):
        check.problem(f"{path}.url", f"must start with http:// or https://, got {show(url)}")
        url = None
    org = check.required_string(path, table, "org")
    bucket = check.required_string(path, table, "bucket")
    token_env = _secret_env(check, path, table, "token_env", required=True)
    spool = Path(str(table.get("spool_dir", "influx-spool"))).expanduser()
    if not spool.is_absolute():
        spool = data_dir / spool
    timeout = check.duration(f"{path}.timeout", table.get("timeout", 10.0))
    batch = check.integer(f"{path}.batch", table.get("batch", 5000), low=1)
    keep_free = check.integer(f"{path}.spool_keep_free_mb", table.get("spool_keep_free_mb", 1024), low=0)
    if None in (url, org, bucket, token_env, timeout, batch, keep_free):
        return None
    return InfluxConfig(url, org, bucket, token_env, spool, timeout, batch, keep_free)  # type: ignore[arg-type]


def _mqtt(check: _Checker, raw: Any) -> MqttConfig | None:
    table = check.table("mqtt", raw)
    if table is None:
        return None
    if "password" in table:
        check.problem("mqtt.password", "a secret must not be written in the config: put it in an environment "
                      "variable and name that with password_env")
    check.known_keys("mqtt", {k: v for k, v in table.items() if k != "password"}, _MQTT_KEYS)
    host = check.required_string("mqtt", table, "host")
    port = check.integer("mqtt.port", table.get("port", 1883), low=1, high=65535)
    client_id = check.string("mqtt.client_id", table.get("client_id", "meterd-master"))
    username = check.string("mqtt.username", table["username"]) if "username" in table else None
    password_env = _secret_env(check, "mqtt", table, "password_env", required=False)
    keepalive = check.integer("mqtt.keepalive", table.get("keepalive", 30), low=5, high=3600)
    root = check.string("mqtt.root", table.get("root", "meterd"))
    ttl = check.duration("mqtt.request_ttl", table.get("request_ttl", 30.0))
    max_payload_kb = check.integer("mqtt.max_payload_kb", table.get("max_payload_kb", 1024), low=1, high=262144)
    if None in (host, port, client_id, keepalive, root, ttl, max_payload_kb):
        return None
    return MqttConfig(host, port, client_id, username, password_env, keepalive, root, ttl,  # type: ignore[arg-type]
                      max_payload_kb)  # type: ignore[arg-type]


def _tasks(check: _Checker, raw: Any, meters: list[tuple[dict[str, Any], MeterConfig | None]]) -> list[Any]:
    from meterd.config.tasks import TaskSpec, TaskSpecError, task_kind

    out: list[Any] = []
    names: dict[str, int] = {}
    for index, table in check.array_of_tables("tasks", raw):
        path = f"tasks[{index}]"
        check.known_keys(path, table, _TASK_KEYS)
        name = check.required_string(path, table, "name")
        if name is not None and (first := names.setdefault(name, index)) != index:
            check.problem(f"{path}.name", f"{show(name)} is already the name of tasks[{first}]")
        kind = check.required_string(path, table, "kind")
        groups = check.string_list(f"{path}.groups", table.get("groups", []))
        items = _poll_items(check, f"{path}.items", table["items"]) if "items" in table else ()
        items_1997 = _poll_items_1997(check, f"{path}.items_1997", table["items_1997"]) if "items_1997" in table else ()
        quantities = _poll_quantities(check, f"{path}.quantities", table["quantities"]) if "quantities" in table else ()
        durations: dict[str, float | None] = {}
        for key in _TASK_DURATIONS:
            if key in table:
                durations[key] = check.duration(f"{path}.{key}", table[key], allow_zero=key != "every")
        cron = check.string(f"{path}.cron", table["cron"]) if "cron" in table else None
        if None in (name, kind, groups, items, items_1997, quantities) or None in durations.values():
            continue
        assert name is not None and kind is not None  # both checked just above
        options: dict[str, Any] = {k: table[k] for k in ("curve_points", "curve_interval", "day", "time", "tasks", "lookback_days",
                                          "max_points") if k in table}
        if "settle" in durations:
            options["settle"] = durations["settle"]
        try:
            spec = TaskSpec(name, task_kind(name, kind), groups=tuple(groups or ()), quantities=quantities or (), items=items or (),
                            items_1997=items_1997 or (), every=durations.get("every"), cron=cron,
                            jitter=durations.get("jitter") or 0.0, options=options,
                            misfire_grace=durations.get("misfire_grace"))
        except TaskSpecError as exc:
            check.problem(path, str(exc))
            continue
        if spec.kind.value != "reread":
            probe = PollConfig(name=spec.name, interval=1.0, groups=spec.groups, items=spec.items,
                               items_1997=spec.items_1997, quantities=spec.quantities)
            _poll_reaches(check, path, probe, meters)
        out.append(spec)
    return out


def _channel(check: _Checker, path: str, name: str, raw: Any) -> ChannelConfig | None:
    table = check.table(path, raw)
    if table is None:
        return None
    check.known_keys(path, table, _CHANNEL_KEYS)
    if not name.strip():
        check.problem(path, "channel name must not be empty")

    link: SerialLink | TcpLink | DtuLink | MqttLink | GdwLink | None = None
    kinds = [k for k in ("serial", "tcp", "dtu", "mqtt", "gdw1376") if k in table]
    if len(kinds) != 1:
        check.problem(path, "needs exactly one of serial = {...}, tcp = {...}, dtu = {...}, mqtt = {...} or "
                      "gdw1376 = {...}")
    elif "serial" in table:
        link = _serial(check, f"{path}.serial", table["serial"])
    elif "tcp" in table:
        link = _tcp(check, f"{path}.tcp", table["tcp"])
    elif "dtu" in table:
        link = _dtu(check, f"{path}.dtu", table["dtu"])
    elif "gdw1376" in table:
        link = _gdw(check, f"{path}.gdw1376", table["gdw1376"])
    else:
        mtable = check.table(f"{path}.mqtt", table["mqtt"])
        if mtable is not None:
            check.known_keys(f"{path}.mqtt", mtable, _MQTT_LINK_KEYS)
            terminal = check.required_string(f"{path}.mqtt", mtable, "terminal")
            link = MqttLink(terminal) if terminal is not None else None

    connect = check.duration(f"{path}.connect_timeout", table.get("connect_timeout", 5.0))
    response = check.duration(f"{path}.response_timeout", table.get("response_timeout", 2.0))
    inter_byte = check.duration(f"{path}.inter_byte_timeout", table.get("inter_byte_timeout", 0.5))
    retries = check.integer(f"{path}.retries", table.get("retries", 1), low=0, high=MAX_RETRIES)
    preamble = check.integer(f"{path}.preamble", table.get("preamble", 4), low=0, high=MAX_PREAMBLE)
    turnaround = check.duration(f"{path}.turnaround", table.get("turnaround", 0.0), allow_zero=True)
    default_framing = Framing.TCP if "tcp" in table and "serial" not in table else Framing.RTU
    framing = check.choice(f"{path}.framing", table.get("framing", str(default_framing)), Framing)

    values = (link, connect, response, inter_byte, retries, preamble, turnaround, framing)
    if any(v is None for v in values):
        return None
    assert link is not None and connect is not None and response is not None
    assert inter_byte is not None and retries is not None and preamble is not None
    assert turnaround is not None
    return ChannelConfig(
        name=name,
        link=link,
        timeouts=Timeouts(connect=connect, response=response, inter_byte=inter_byte),
        retries=retries,
        preamble=preamble,
        turnaround=turnaround,
        framing=framing,
    )


def _dtu(check: _Checker, path: str, raw: Any) -> DtuLink | None:
    table = check.table(path, raw)
    if table is None:
        return None
    check.known_keys(path, table, _DTU_KEYS)
    listener = check.required_string(path, table, "listener")
    terminal = check.required_string(path, table, "terminal")
    wait = check.duration(f"{path}.connect_wait", table.get("connect_wait", 0), allow_zero=True)
    if listener is None or terminal is None or wait is None:
        return None
    return DtuLink(listener=listener, terminal=terminal, connect_wait=wait)


def _gdw(check: _Checker, path: str, raw: Any) -> GdwLink | None:
    """``gdw1376 = { listener = "gw", terminal = "4401-0001", ... }``: a Q/GDW 1376.1 terminal."""
    from meterd.protocols.gdw1376.frame import parse_terminal_address

    table = check.table(path, raw)
    if table is None:
        return None
    check.known_keys(path, table, _GDW_KEYS)
    listener = check.required_string(path, table, "listener")
    terminal = check.required_string(path, table, "terminal")
    if terminal is not None:
        try:
            terminal = parse_terminal_address(terminal).key
        except ProtocolError as exc:
            check.problem(f"{path}.terminal", str(exc))
            terminal = None
        else:
            if terminal.endswith("-0000"):
                check.problem(f"{path}.terminal", "terminal address 0 (A2 = 0000) is invalid in Q/GDW 1376.1")
                terminal = None
    kind = check.choice(f"{path}.kind", table.get("kind", "concentrator"), TerminalKind)
    secret = _secret_env(check, path, table, "password_secret", required=False)
    port = check.integer(f"{path}.port", table.get("port", 2), low=1, high=31)
    turn = check.integer(f"{path}.turn", table.get("turn", 1), low=1, high=8)
    archive = table.get("archive", True)
    if not isinstance(archive, bool):
        check.problem(f"{path}.archive", f"must be true or false, got {show(archive)}")
    wait = check.duration(f"{path}.connect_wait", table.get("connect_wait", 0), allow_zero=True)
    if None in (listener, terminal, kind, port, turn, wait) or not isinstance(archive, bool):
        return None
    assert listener is not None and terminal is not None and port is not None and turn is not None
    assert wait is not None
    return GdwLink(listener, terminal, kind, secret, port, archive, turn, wait)


def _check_gdw(check: _Checker, channels: list[ChannelConfig], listeners: list[ListenerConfig],
               meters: list[tuple[dict[str, Any], MeterConfig | None]]) -> None:
    """A gdw1376 channel names a gdw1376 listener and a terminal no other channel has; its meters
    have a ``pn``, unique on the channel; meters elsewhere have none."""
    protocols = {lc.name: lc.protocol for lc in listeners}
    seen: dict[tuple[str, str], str] = {}
    gdw_channels = set()
    for ch in channels:
        link = ch.link
        if isinstance(link, DtuLink) and protocols.get(link.listener) == "gdw1376":
            check.problem(f"channels.{ch.name}.dtu.listener", f"listener {show(link.listener)} is for Q/GDW 1376.1 "
                          "terminals (protocol = \"gdw1376\"): write gdw1376 = { listener = ..., terminal = ... }")
        if not isinstance(link, GdwLink):
            continue
        gdw_channels.add(ch.name)
        path = f"channels.{ch.name}.gdw1376"
        if link.listener not in protocols:
            check.problem(f"{path}.listener", f"no listener named {show(link.listener)}{hint(link.listener, protocols)}")
        elif protocols[link.listener] != "gdw1376":
            check.problem(f"{path}.listener", f"listener {show(link.listener)} is for DTUs: give it "
                          "protocol = \"gdw1376\" or name a gdw1376 listener")
        first = seen.setdefault((link.listener, link.terminal), ch.name)
        if first != ch.name:
            check.problem(f"{path}.terminal", f"terminal {link.terminal} is already channel {show(first)}")
    points: dict[tuple[str, int], int] = {}
    for index, (table, meter) in enumerate(meters):
        channel = table.get("channel")
        path = f"meters[{index}]"
        if channel in gdw_channels:
            if "pn" not in table:
                check.problem(f"{path}.pn", f"missing: a meter behind Q/GDW 1376.1 terminal channel {show(channel)} "
                              f"needs its measuring point number (1..{MAX_PN})")
            elif meter is not None and meter.pn is not None:
                first_index = points.setdefault((channel, meter.pn), index)
                if first_index != index:
                    check.problem(f"{path}.pn", f"pn {meter.pn} is already meters[{first_index}] on channel "
                                  f"{show(channel)}")
            if meter is not None and get_driver(meter.protocol).by_unit_and_map:
                check.problem(f"{path}.protocol", "a meter behind a Q/GDW 1376.1 terminal speaks DL/T 645 "
                              "(dlt645-2007 or dlt645-1997)")
        elif "pn" in table and isinstance(channel, str):
            check.problem(f"{path}.pn", f"only meters behind a Q/GDW 1376.1 terminal (a gdw1376 channel) have a pn; "
                          f"channel {show(channel)} is not one")


def _listener(check: _Checker, path: str, name: str, raw: Any) -> ListenerConfig | None:
    table = check.table(path, raw)
    if table is None:
        return None
    check.known_keys(path, table, _LISTENER_KEYS)
    host = check.string(f"{path}.host", table.get("host", "0.0.0.0"))
    port = check.integer(f"{path}.port", table.get("port", 9000), low=0, high=65535)
    formats = _dtu_formats(check, f"{path}.formats", table.get("formats", ["usr-ascii"]))
    heartbeat = check.duration(f"{path}.heartbeat_timeout", table.get("heartbeat_timeout", 120))
    registration = check.duration(f"{path}.registration_timeout", table.get("registration_timeout", 10))
    protocol = table.get("protocol", "dtu")
    if protocol not in LISTENER_PROTOCOLS:
        check.problem(f"{path}.protocol", f"must be one of {', '.join(LISTENER_PROTOCOLS)}, got {show(protocol)}")
        protocol = None
    elif protocol == "gdw1376" and "formats" in table:
        check.problem(f"{path}.formats", "Q/GDW 1376.1 terminals log in with AFN 02 F1: a gdw1376 listener has no "
                      "DTU formats")
    max_waiting = check.integer(f"{path}.max_waiting", table.get("max_waiting", 1024), low=1, high=1_000_000)
    if None in (host, port, formats, heartbeat, registration, protocol, max_waiting):
        return None
    assert host is not None and port is not None and formats is not None and max_waiting is not None
    assert heartbeat is not None and registration is not None and protocol is not None
    return ListenerConfig(name, host, port, tuple(formats), heartbeat, registration, protocol, max_waiting)


def _dtu_formats(check: _Checker, path: str, raw: Any) -> list[str | DtuFormat] | None:
    """A listener's ``formats``: preset names, or tables of format fields (``name``, optional
    ``preset`` to start from, and the keys of :meth:`DtuFormat.from_dict`)."""
    if not isinstance(raw, list):
        check.problem(path, f"must be a list of DTU format names or tables, got {show(raw)}")
        return None
    if not raw:
        check.problem(path, f"must name at least one format: {', '.join(PRESETS)}")
        return None
    formats: list[str | DtuFormat] = []
    seen: dict[str, int] = {}
    good = True
    for i, entry in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(entry, str):
            if entry not in PRESETS:
                check.problem(where, f"unknown DTU format {show(entry)}{hint(entry, PRESETS)}; "
                              f"shipped: {', '.join(PRESETS)}")
                good = False
                continue
            fname: str = entry
            formats.append(entry)
        elif isinstance(entry, dict):
            check.known_keys(where, entry, _DTU_FORMAT_KEYS)  # the keys docs/config.md lists, no other
            fields = {k: v for k, v in entry.items() if k != "name" and k in _DTU_FORMAT_KEYS}
            given = entry.get("name", f"formats[{i}]")
            if not isinstance(given, str) or not given.strip():
                check.problem(f"{where}.name", f"must be a non-empty string, got {show(given)}")
                good = False
                continue
            fname = given
            fmt, problems = DtuFormat.from_config(fname, fields)
            for key, message in problems:
                if message == "unknown key":
                    message += hint(key, _DTU_FORMAT_KEYS)
                check.problem(f"{where}.{key}" if key else where, message)
            if fmt is None:
                good = False
                continue
            formats.append(fmt)
        else:
            check.problem(where, f"must be a DTU format name or a table of format fields, got {show(entry)}")
            good = False
            continue
        if fname in seen:
            check.problem(where, f"format {show(fname)} is already formats[{seen[fname]}]")
            good = False
        seen.setdefault(fname, i)
    return formats if good else None


def _check_dtu_terminals(check: _Checker, channels: list[ChannelConfig], listeners: list[ListenerConfig]) -> None:
    """Every DTU channel's terminal can register in a format of its listener, and no two terminals
    of a listener register with the same bytes (``AA:BB:..`` and ``aa-bb-..`` are one MAC)."""
    by_name = {lc.name: [get_format(f) for f in lc.formats] for lc in listeners}
    packets: dict[tuple[str, str, bytes], str] = {}
    for ch in channels:
        link = ch.link
        if not isinstance(link, DtuLink) or link.listener not in by_name:
            continue
        path = f"channels.{ch.name}.dtu.terminal"
        refused = []
        for fmt in by_name[link.listener]:
            reason = fmt.id_problem(link.terminal)
            if reason is not None:
                refused.append(f"{fmt.name}: {reason}")
                continue
            first = packets.setdefault((link.listener, fmt.name, fmt.encode_registration(link.terminal)), ch.name)
            if first != ch.name:
                check.problem(path, f"terminal {show(link.terminal)} registers with the same bytes as channel "
                              f"{show(first)}'s terminal in DTU format {fmt.name}")
        if len(refused) == len(by_name[link.listener]):
            check.problem(path, f"terminal {show(link.terminal)} cannot register in any format of listener "
                          f"{show(link.listener)}: {'; '.join(refused)}")


def _check_dtu_links(check: _Checker, channels: list[ChannelConfig], listeners: set[str]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for ch in channels:
        link = ch.link
        if not isinstance(link, DtuLink):
            continue
        path = f"channels.{ch.name}.dtu"
        if link.listener not in listeners:
            check.problem(f"{path}.listener", f"no listener named {show(link.listener)}{hint(link.listener, listeners)}")
            continue
        first = seen.setdefault((link.listener, link.terminal), ch.name)
        if first != ch.name:
            check.problem(f"{path}.terminal", f"terminal {show(link.terminal)} is already channel {show(first)}")


def _serial(check: _Checker, path: str, raw: Any) -> SerialLink | None:
    table = check.table(path, raw)
    if table is None:
        return None
    check.known_keys(path, table, _SERIAL_KEYS)
    device = check.required_string(path, table, "device")
    baud = check.integer(f"{path}.baud", table.get("baud", 2400), choices=BAUD_RATES)
    bytesize = check.integer(f"{path}.bytesize", table.get("bytesize", 8), choices=BYTESIZES)
    parity = check.choice(f"{path}.parity", table.get("parity", "E"), Parity, upper=True)
    stopbits = check.integer(f"{path}.stopbits", table.get("stopbits", 1), choices=STOPBITS)
    if device is None or baud is None or bytesize is None or parity is None or stopbits is None:
        return None
    return SerialLink(device=device, baud=baud, bytesize=bytesize, parity=parity, stopbits=stopbits)


def _tcp(check: _Checker, path: str, raw: Any) -> TcpLink | None:
    table = check.table(path, raw)
    if table is None:
        return None
    check.known_keys(path, table, _TCP_KEYS)
    host = check.required_string(path, table, "host")
    port: int | None = None
    if "port" not in table:
        check.problem(f"{path}.port", "missing: required")
    else:
        port = check.integer(f"{path}.port", table["port"], low=1, high=65535)
    if host is None or port is None:
        return None
    return TcpLink(host=host, port=port)


def _rating_values(check: _Checker, path: str, table: dict[str, Any]) -> dict[str, Any] | None:
    """The rating keys present in ``table``, checked; None when one is wrong."""
    values: dict[str, Any] = {}
    ok = True
    for key, high in (("rated_current", MAX_RATED_CURRENT), ("rated_voltage", MAX_RATED_VOLTAGE)):
        if key in table:
            number = check.ratio(f"{path}.{key}", table[key])
            if number is not None and number > high:
                check.problem(f"{path}.{key}", f"must be at most {high}, got {show(table[key])}")
                number = None
            ok = ok and number is not None
            values[key] = number
    if "phases" in table:
        phases = table["phases"]
        if phases not in (1, 3) or isinstance(phases, bool):
            check.problem(f"{path}.phases", f"must be 1 or 3, got {show(phases)}")
            ok = False
        values["phases"] = phases
    if "overload" in table:
        overload = check.ratio(f"{path}.overload", table["overload"])
        if overload is not None and not 1 <= overload <= 10:
            check.problem(f"{path}.overload", f"must be between 1 and 10, got {show(table['overload'])}")
            overload = None
        ok = ok and overload is not None
        values["overload"] = overload
    return values if ok else None


def _plausibility(check: _Checker, raw: Any) -> tuple[Rating, dict[str, Rating]]:
    """``[plausibility]``: the site's default rating and per-model ratings (``models.<model>``,
    the meters' ``model`` key)."""
    table = check.table("plausibility", raw) or {}
    check.known_keys("plausibility", table, _PLAUSIBILITY_KEYS)
    site = Rating(**(_rating_values(check, "plausibility", table) or {}))
    models: dict[str, Rating] = {}
    for name, model_raw in (check.table("plausibility.models", table.get("models", {})) or {}).items():
        path = f"plausibility.models.{name}"
        model_table = check.table(path, model_raw)
        if model_table is None:
            continue
        check.known_keys(path, model_table, _RATING_KEYS)
        models[name] = replace(site, **(_rating_values(check, path, model_table) or {}))
    return site, models


def _meters(
    check: _Checker, raw: Any, *, channel_names: set[str] | None, base_dir: Path | None = None,
    ratings: tuple[Rating, dict[str, Rating]] = (DEFAULT_RATING, {}),
) -> list[tuple[dict[str, Any], MeterConfig | None]]:
    """Each meter's raw table (for the poll cross-check) with its typed node, if it is valid."""
    items = check.array_of_tables("meters", raw)
    result: list[tuple[dict[str, Any], MeterConfig | None]] = []
    seen: dict[tuple[str, str], int] = {}  # (channel, address) -> index of first meter
    units: dict[tuple[str, int], int] = {}  # (channel, Modbus unit) -> index of first meter
    maps: dict[str, RegisterMap | None] = {}
    # A district's file has 100,000 meters on a few thousand channels in a few groups: a key left
    # out takes its default (valid: nothing to check, and one shared object for every meter), and
    # a channel or group name is kept once, not once per meter that names it.
    names: dict[str, str] = {}
    known_keys = frozenset(_METER_KEYS)
    for index, table in items:
        path = f"meters[{index}]"
        if not known_keys.issuperset(table):
            check.known_keys(path, table, _METER_KEYS)
        address = _meter_address(check, f"{path}.address", table)
        channel = check.required_string(path, table, "channel")
        if channel is not None:
            channel = names.setdefault(channel, channel)
        if channel is not None and channel_names is not None and channel not in channel_names:
            suggestion = hint(channel, channel_names)
            check.problem(f"{path}.channel", f"no channel named {show(channel)}{suggestion}")
        if address is not None and channel is not None:
            first = seen.setdefault((channel, address), index)
            if first != index:
                check.problem(
                    f"{path}.address",
                    f"{address} is already meters[{first}] on channel {show(channel)}",
                )
        protocol = check.choice(f"{path}.protocol", table["protocol"], Protocol) if "protocol" in table else _PROTOCOL
        ct = check.ratio(f"{path}.ct", table["ct"]) if "ct" in table else _ONE
        pt = check.ratio(f"{path}.pt", table["pt"]) if "pt" in table else _ONE
        name = check.string(f"{path}.name", table["name"], allow_empty=True) if "name" in table else ""
        group = check.string(f"{path}.group", table["group"]) if "group" in table else "default"
        if group is not None:
            group = names.setdefault(group, group)
        unit: int | None = None
        regmap: RegisterMap | None = None
        modbus_ok = True
        if protocol is not None and get_driver(protocol).by_unit_and_map:
            if "unit" not in table:
                check.problem(f"{path}.unit", "missing: a Modbus meter needs its unit id (1..247)")
                modbus_ok = False
            else:
                unit = check.integer(f"{path}.unit", table["unit"], low=1, high=247)
                modbus_ok = unit is not None
                if unit is not None and channel is not None:
                    first = units.setdefault((channel, unit), index)
                    if first != index:
                        check.problem(f"{path}.unit", f"unit {unit} is already meters[{first}] on channel {show(channel)}")
            if "model" not in table:
                check.problem(f"{path}.model", "missing: a Modbus meter needs its register map: a shipped "
                              f"model ({', '.join(sorted(builtin_maps()))}) or a map file *.toml")
                modbus_ok = False
            else:
                regmap = _register_map(check, f"{path}.model", table["model"], base_dir, maps)
                modbus_ok = modbus_ok and regmap is not None
        elif protocol is not None:
            for key in ("unit", "model"):
                if key in table:
                    check.problem(f"{path}.{key}", f"only Modbus meters have a {key}; this meter speaks {protocol}")
        for key, value in (("ct", ct), ("pt", pt)):
            if value is not None and value is not _ONE and value > MAX_RATIO:
                check.problem(f"{path}.{key}", f"must be at most {MAX_RATIO}, got {show(table[key])}")
        if ct is not None and pt is not None and (ct is not _ONE or pt is not _ONE) and ct * pt > MAX_RATIO:
            check.problem(f"{path}.ct", f"ct x pt = {ct * pt} is more than any metering point ({MAX_RATIO})")
            ct = None
        if regmap is not None:
            ct, pt = _ratios_on_primary_map(check, path, address, regmap, ct, pt)
        site, models = ratings
        model_name = table.get("model")
        rating = models.get(model_name, site) if isinstance(model_name, str) else site
        own = _rating_values(check, path, table) if not _RATING_KEY_SET.isdisjoint(table) else {}
        if own:
            rating = replace(rating, **own)
        pn: int | None = None
        pn_ok = True
        if "pn" in table:
            pn = check.integer(f"{path}.pn", table["pn"], low=1, high=MAX_PN)
            pn_ok = pn is not None
        values = (address, channel, protocol, ct, pt, name, group)
        meter = None
        if None not in values and modbus_ok and own is not None and pn_ok:
            meter = MeterConfig(*values, unit=unit, regmap=regmap, rating=rating, pn=pn)  # type: ignore[arg-type]
        result.append((table, meter))
    return result


def _ratios_on_primary_map(
    check: _Checker, path: str, address: str | None, regmap: RegisterMap, ct: Decimal | None, pt: Decimal | None
) -> tuple[Decimal | None, Decimal | None]:
    """A CT or PT ratio on a meter whose map reports every value on the primary side (the meter
    applies its own ratios: ``primary = true``) would never be applied: an error naming the meter,
    never a silent no-op."""
    used = {e.scaling for e in regmap.entries}
    for key, value, scalings in (("ct", ct, (Scaling.CT, Scaling.CTPT)), ("pt", pt, (Scaling.PT, Scaling.CTPT))):
        if value is not None and value != 1 and not used.intersection(scalings):
            check.problem(f"{path}.{key}", f"meter {address or '?'}: model {regmap.name} reports primary-side "
                          f"values (its map says primary = true: the meter applies its own {key.upper()} ratio), so "
                          f"{key} = {show(value)} would never be applied; set the ratio in the meter and remove "
                          f"{key} here, or use a map with primary = false")
            if key == "ct":
                ct = None
            else:
                pt = None
    return ct, pt


def _register_map(
    check: _Checker, path: str, raw: Any, base_dir: Path | None, cache: dict[str, RegisterMap | None]
) -> RegisterMap | None:
    if not isinstance(raw, str) or not raw.strip():
        check.problem(path, f"must be a shipped model name or a map file path, got {show(raw)}")
        return None
    if raw in cache:
        return cache[raw]
    regmap: RegisterMap | None = None
    try:
        if raw.endswith(".toml") or "/" in raw:
            file = Path(raw)
            if base_dir is not None and not file.is_absolute():
                file = base_dir / file
            regmap = load_map(file)
        else:
            regmap = get_map(raw)
    except ConfigError as exc:
        for problem in exc.problems:
            check.problem(path, problem)
    cache[raw] = regmap
    return regmap


def _meter_address(check: _Checker, path: str, table: dict[str, Any]) -> str | None:
    if "address" not in table:
        check.problem(path, "missing: required")
        return None
    raw = table["address"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        check.problem(path, f"must be a string of up to 12 digits, got {show(raw)}")
        return None
    text = str(raw).strip()
    # Wildcard (AA) and broadcast addresses reach several meters; a configured meter is one meter.
    if not text.isdigit():
        check.problem(path, f"must be 1 to 12 decimal digits, got {show(raw)}")
        return None
    if text.isascii() and len(text) <= 12:
        address = text.zfill(12)  # what normalize_address makes of 1..12 ASCII digits, without its BCD round trip
    else:
        try:
            address = normalize_address(text)
        except ProtocolError:
            check.problem(path, f"must be 1 to 12 decimal digits, got {show(raw)}")
            return None
    if address == BROADCAST:
        check.problem(path, f"{BROADCAST} is the broadcast address, not a meter")
        return None
    return address


def _polls(
    check: _Checker, raw: Any, meters: list[tuple[dict[str, Any], MeterConfig | None]]
) -> list[PollConfig | None]:
    known_groups = set()
    known_addresses = set()
    for table, meter in meters:
        group = table.get("group", "default")
        if isinstance(group, str):
            known_groups.add(group)
        # a valid meter's address is normalised already; an invalid meter's still counts as known
        address = meter.address if meter is not None else _address_or_none(table.get("address"))
        if address is not None:
            known_addresses.add(address)
    names: dict[str, int] = {}
    result: list[PollConfig | None] = []
    for index, table in check.array_of_tables("polls", raw):
        path = f"polls[{index}]"
        check.known_keys(path, table, _POLL_KEYS)
        name = check.required_string(path, table, "name")
        if name is not None and (first := names.setdefault(name, index)) != index:
            check.problem(f"{path}.name", f"{show(name)} is already the name of polls[{first}]")
        interval: float | None = None
        if "interval" not in table:
            check.problem(f"{path}.interval", "missing: required")
        else:
            interval = check.duration(f"{path}.interval", table["interval"])

        groups = check.string_list(f"{path}.groups", table.get("groups", []))
        listed = _poll_meters(check, f"{path}.meters", table.get("meters", []), known_addresses)
        if groups is not None:
            unknown = [g for g in groups if g not in known_groups]
            for group in unknown:
                check.problem(
                    f"{path}.groups",
                    f"no meter is in group {show(group)}{hint(group, known_groups)}",
                )
            wanted = set(groups)
            # (a group that is not a string is its meter's problem, and selects nothing)
            selected = any(not wanted or (isinstance(g := t.get("group", "default"), str) and g in wanted)
                           for t, _ in meters)
            if not unknown and not selected and not listed:
                check.problem(path, "selects no meters")

        items: tuple[int, ...] | None = ()
        items_1997: tuple[int, ...] | None = ()
        quantities: tuple[str, ...] | None = ()
        if not any(k in table for k in ("items", "items_1997", "quantities")):
            check.problem(path, "missing: what to read: quantities = [...] (any protocol), "
                          "items = [...] (DL/T 645-2007 identifiers) or items_1997 = [...]")
        if "items" in table:
            items = _poll_items(check, f"{path}.items", table["items"])
        if "items_1997" in table:
            items_1997 = _poll_items_1997(check, f"{path}.items_1997", table["items_1997"])
        if "quantities" in table:
            quantities = _poll_quantities(check, f"{path}.quantities", table["quantities"])

        if (name is None or interval is None or groups is None or listed is None
                or None in (items, items_1997, quantities)):
            result.append(None)
        else:
            assert items is not None and items_1997 is not None and quantities is not None
            poll = PollConfig(name=name, interval=interval, groups=tuple(groups), items=items,
                              items_1997=items_1997, quantities=quantities, meters=listed)
            _poll_reaches(check, path, poll, meters)
            result.append(poll)
    return result


def _poll_reaches(
    check: _Checker, path: str, poll: PollConfig, meters: list[tuple[dict[str, Any], MeterConfig | None]]
) -> None:
    """Every meter the poll selects can be asked for what the poll wants, in its own protocol.

    The answer depends on the meter's protocol and register map only: it is worked out once per
    kind of meter (not per meter), and a problem still names each meter it applies to."""
    kinds: dict[tuple[str, int], tuple[list[str], bool]] = {}  # (protocol, map) -> (missing, reads something)
    for index, (_, meter) in enumerate(meters):
        if meter is None or not poll.selects(meter):
            continue
        kind = (str(meter.protocol), id(meter.regmap))  # a map lives as long as the meters that use it
        known = kinds.get(kind)
        if known is None:
            driver = get_driver(meter.protocol)
            reads, missing = driver.plan(poll.quantities, driver.explicit_items(poll), meter.regmap)
            known = kinds[kind] = (missing, reads is not None and bool(driver.item_labels(reads)))
        missing, reads_something = known
        if not missing and reads_something:
            continue
        driver = get_driver(meter.protocol)
        who = f"meters[{index}] ({meter.address}, {driver.describe_meter(meter.regmap)})"
        if missing:
            check.problem(f"{path}.quantities", f"{who} has no {driver.missing_noun} for {', '.join(missing)}")
        else:
            check.problem(path, f"reads nothing from {who}: {driver.nothing_to_read()}")


def _address_or_none(raw: Any) -> str | None:
    """A meter address as the loader normalises it (``"1"`` -> ``000000000001``), or None for
    anything that is not one (the meter's own check says why)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip().isdigit():
        return None
    try:
        return normalize_address(str(raw).strip())
    except ProtocolError:
        return None


def _poll_meters(check: _Checker, path: str, raw: Any, known: set[str]) -> tuple[str, ...] | None:
    """A poll's ``meters``: addresses of configured meters, short forms allowed (``"1"``)."""
    if not isinstance(raw, list):
        check.problem(path, f'must be a list of meter addresses such as ["000000000001", "2"], got {show(raw)}')
        return None
    out: dict[str, int] = {}
    ok = True
    for i, entry in enumerate(raw):
        address = _address_or_none(entry)
        if address is None:
            check.problem(f"{path}[{i}]", f"must be a meter address of 1 to 12 decimal digits, got {show(entry)}")
            ok = False
        elif address == BROADCAST:
            check.problem(f"{path}[{i}]", f"{BROADCAST} is the broadcast address, not a meter")
            ok = False
        elif address not in known:
            check.problem(f"{path}[{i}]", f"no meter {address} in [[meters]]")
            ok = False
        elif address in out:
            check.problem(f"{path}[{i}]", f"meter {address} is listed twice")
            ok = False
        else:
            out[address] = i
    return tuple(out) if ok else None


def _poll_quantities(check: _Checker, path: str, raw: Any) -> tuple[str, ...] | None:
    from meterd.protocols.drivers import all_quantities

    if not isinstance(raw, list) or not raw:
        check.problem(path, f"must be a non-empty list of quantity names, got {show(raw)}")
        return None
    known = all_quantities()
    out: list[str] = []
    ok = True
    for i, q in enumerate(raw):
        if not isinstance(q, str):
            check.problem(f"{path}[{i}]", f"must be a quantity name such as \"voltage.a\", got {show(q)}")
            ok = False
        elif q not in known:
            check.problem(f"{path}[{i}]", f"unknown quantity {show(q)}{hint(q, known)}")
            ok = False
        elif q in out:
            check.problem(f"{path}[{i}]", f"{q} is listed twice")
            ok = False
        else:
            out.append(q)
    return tuple(out) if ok else None


def _poll_items_1997(check: _Checker, path: str, raw: Any) -> tuple[int, ...] | None:
    from meterd.protocols.dlt645.catalogue1997 import lookup97
    from meterd.protocols.dlt645.v1997 import parse_di97

    if not isinstance(raw, list) or not raw:
        check.problem(path, f'must be a non-empty list of 1997 data identifiers such as "9010", got {show(raw)}')
        return None
    out: list[int] = []
    ok = True
    for i, entry in enumerate(raw):
        try:
            if isinstance(entry, bool) or not isinstance(entry, (str, int)):
                raise ProtocolError(f'must be 4 hex digits such as "9010", got {show(entry)}')
            di = parse_di97(entry)
            lookup97(di)
        except ProtocolError as exc:
            check.problem(f"{path}[{i}]", str(exc))
            ok = False
            continue
        if di in out:
            check.problem(f"{path}[{i}]", f"{di:04X} is listed twice")
            ok = False
            continue
        out.append(di)
    return tuple(out) if ok else None


def _poll_items(check: _Checker, path: str, raw: Any) -> tuple[int, ...] | None:
    from meterd.protocols.dlt645 import catalogue  # lazily: the catalogue is large

    if not isinstance(raw, list):
        check.problem(path, f"must be a list of data identifiers, got {show(raw)}")
        return None
    if not raw:
        check.problem(path, "must name at least one data identifier")
        return None
    items: list[int] = []
    ok = True
    for i, entry in enumerate(raw):
        item_path = f"{path}[{i}]"
        if isinstance(entry, bool) or not isinstance(entry, (str, int)):
            check.problem(item_path, f'must be 8 hex digits such as "00010000", got {show(entry)}')
            ok = False
            continue
        try:
            di = parse_di(entry)
            catalogue.lookup(di)
        except ProtocolError as exc:
            check.problem(item_path, str(exc))
            ok = False
            continue
        if di in items:
            check.problem(item_path, f"{di:08X} is listed twice")
            ok = False
            continue
        items.append(di)
    return tuple(items) if ok else None


# --- the checker -------------------------------------------------------------------------------


class _Checker(Checker):
    """The shared checker plus the value kinds this file needs."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        # a district's thousands of channels say "3s" and take the defaults again and again:
        # each distinct valid duration is parsed once (a wrong one is parsed and named every time)
        self._durations: dict[tuple[type, str | int | float, bool], float] = {}

    def string_list(self, path: str, value: Any) -> list[str] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(path, f"must be a list of strings, got {show(value)}")
            return None
        return value

    def integer(
        self,
        path: str,
        value: Any,
        *,
        low: int | None = None,
        high: int | None = None,
        choices: tuple[int, ...] | None = None,
    ) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer, got {show(value)}")
            return None
        if choices is not None and value not in choices:
            self.problem(path, f"must be one of {', '.join(map(str, choices))}, got {value}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                self.problem(path, f"must be at least {low}, got {value}")
            else:
                self.problem(path, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def choice(self, path: str, value: Any, enum_type: type[Any], *, upper: bool = False) -> Any:
        if isinstance(value, str):
            try:
                return enum_type(value.upper() if upper else value)
            except ValueError:
                pass
        listed = ", ".join(show(member.value) for member in enum_type)
        self.problem(path, f"must be one of {listed}, got {show(value)}")
        return None

    def duration(self, path: str, value: Any, *, allow_zero: bool = False) -> float | None:
        key = (type(value), value, allow_zero) if type(value) in (str, int, float) else None
        if key is not None and (known := self._durations.get(key)) is not None:
            return known
        seconds = self._duration(path, value, allow_zero)
        if key is not None and seconds is not None:
            self._durations[key] = seconds
        return seconds

    def _duration(self, path: str, value: Any, allow_zero: bool) -> float | None:
        seconds = parse_duration(value)
        what = "a duration of zero or more" if allow_zero else "a positive duration"
        if seconds is None:
            self.problem(path, f"must be {what} ({DURATION_FORMS}), got {show(value)}")
            return None
        if seconds < 0 or (seconds == 0 and not allow_zero):
            self.problem(path, f"must be {what}, got {show(value)}")
            return None
        return seconds

    def ratio(self, path: str, value: Any) -> Decimal | None:
        number = _decimal(value)
        if number is None or not number.is_finite() or number <= 0:
            self.problem(path, f"must be a positive number, got {show(value)}")
            return None
        return number


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, (float, str)):
        # str(float) keeps what the operator wrote (0.1 stays 0.1, not 0.1000000000000000055...).
        try:
            return Decimal(str(value).strip())
        except InvalidOperation:
            return None
    return None


