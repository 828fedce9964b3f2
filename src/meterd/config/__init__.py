"""Configuration: TOML files -> validated, immutable, typed objects.

What lives here: the model (:mod:`.model`, frozen dataclasses and ``StrEnum`` choices that the
collector, storage and CLI code against), the loader (:mod:`.loader`, ``tomllib`` plus
validation), and the table of every key (:mod:`.keys`) that the loader's unknown-key checks use and
``docs/config.md`` is rendered from (:mod:`.reference`).  May import: ``meterd.errors`` and the DL/T 645 codec helpers in
``meterd.protocols`` (address normalisation, DI parsing, the catalogues, Modbus register maps,
the quantity resolver), and the value types of ``meterd.control``, ``meterd.analytics``,
``meterd.billing_link`` and ``meterd.storage`` that it builds (tariffs, thresholds, topology, sync
job specs, the PostgreSQL :class:`~meterd.storage.database.Database` the stores open on: a setting
and its domain value are one type; those parts never import config at run time); nothing that
does I/O beyond reading the one file.

Contract: :func:`load_config` either returns a :class:`Config` in which every cross-reference
holds, or raises :class:`~meterd.errors.ConfigError` listing *every* problem, each as
``"<file>: <key path>: <what is wrong>"``.  Unknown keys are problems too.  Config errors happen at
startup only; nothing here is re-read at run time.
"""

from meterd.config.loader import load_config, parse_config
from meterd.config.model import (
    ChannelConfig,
    Config,
    Framing,
    MeterConfig,
    Parity,
    PollConfig,
    Protocol,
    SerialLink,
    StoreConfig,
    TcpLink,
    Timeouts,
)

__all__ = [
    "ChannelConfig",
    "Config",
    "Framing",
    "MeterConfig",
    "Parity",
    "PollConfig",
    "Protocol",
    "SerialLink",
    "StoreConfig",
    "TcpLink",
    "Timeouts",
    "load_config",
    "parse_config",
]
