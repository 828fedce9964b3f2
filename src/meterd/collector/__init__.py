"""The polling engine: transports (byte pipes), channels (one request in flight per link), poll
rounds (identifiers -> readings) and the daemon that runs every channel in one event loop.

May import ``meterd.protocols``, ``meterd.storage``, ``meterd.config``, ``meterd.readings``,
``meterd.clock`` and ``meterd.errors``.  A failing meter is recorded and the round goes on.
"""
