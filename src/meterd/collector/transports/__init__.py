"""Thin async byte pipes: open, write, read with a timeout, close.  Nothing else.

A transport knows nothing of frames.  Third-party errors (pyserial, OSError from sockets) are
translated here, once, into :mod:`meterd.errors` link errors.  Simulators may use these pipes too.
"""

from meterd.collector.transports.base import Transport
from meterd.collector.transports.serial import SerialTransport
from meterd.collector.transports.tcp import TcpTransport

__all__ = ["SerialTransport", "TcpTransport", "Transport"]
