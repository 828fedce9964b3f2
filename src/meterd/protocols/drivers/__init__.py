"""One driver per meter protocol, looked up by name: the only place that knows which protocols exist.

A meter's ``protocol`` (from the config, the CLI or a simulator) is a name in :data:`BACKENDS`;
:func:`get_driver` turns it into a :class:`~meterd.protocols.drivers.base.Driver`, importing the
driver's module the first time it is asked for (python-can's ``BACKENDS`` pattern).  Callers never
switch on the name: they ask the driver -- which quantities it can read, what a poll asks of a meter
(:meth:`~.base.Driver.plan`), how an item is named, which relay commands it takes.  Resolve the
driver once per meter (when the poll plan is compiled), not per read.

Adding a protocol is a new driver module plus one line here.  Editions that differ a little
(DL/T 645-2007 and -1997) are one driver class with the edition as a parameter.

Sans-I/O like the rest of :mod:`meterd.protocols`: imports nothing of meterd but ``meterd.errors``
and ``meterd.protocols``.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any, Final

from meterd.errors import ConfigError
from meterd.protocols.drivers.base import Driver, LinkKind

# name -> (module, class, keyword arguments): imported on first use.
BACKENDS: Final[dict[str, tuple[str, str, dict[str, Any]]]] = {
    "dlt645-2007": ("meterd.protocols.drivers.dlt645", "Dlt645Driver", {"edition": 2007}),
    "dlt645-1997": ("meterd.protocols.drivers.dlt645", "Dlt645Driver", {"edition": 1997}),
    "modbus": ("meterd.protocols.drivers.modbus", "ModbusDriver", {}),
}


class UnknownProtocolError(ConfigError):
    """A protocol name no driver is registered for."""

    def __init__(self, name: object, where: str = "protocol") -> None:
        self.name = name
        known = ", ".join(BACKENDS)
        super().__init__(f"{where}: no driver for protocol {name!r} (known: {known})")


def protocol_names() -> tuple[str, ...]:
    """Every registered protocol name, in registry order."""
    return tuple(BACKENDS)


def get_driver(name: str) -> Driver:
    """The driver for protocol ``name``; UnknownProtocolError (a ConfigError) naming it if none.

    One instance per name, whether it is asked for by a config enum or a plain string."""
    return _load(str(name))


@cache
def _load(name: str) -> Driver:
    try:
        module, cls, kwargs = BACKENDS[name]
    except KeyError:
        raise UnknownProtocolError(name) from None
    driver = getattr(importlib.import_module(module), cls)(name=name, **kwargs)
    assert isinstance(driver, Driver)
    return driver


def all_quantities() -> frozenset[str]:
    """Every canonical quantity some protocol can read (a poll's ``quantities`` must be among them)."""
    return frozenset().union(*(get_driver(n).known_quantities() for n in BACKENDS))


__all__ = ["BACKENDS", "Driver", "LinkKind", "UnknownProtocolError", "all_quantities", "get_driver", "protocol_names"]
