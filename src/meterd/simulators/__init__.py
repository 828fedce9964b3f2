"""Simulated DL/T 645-2007 meters, buses and fleets, with fault injection, for tests and demos.

Layers, bottom up: :mod:`.profile` (load profiles, TOU schedules, seeded noise), :mod:`.model`
(one meter's moving state, pure, time passed in),
:mod:`.dlt645` (a sans-I/O bus of meters: request bytes in, reply bytes out, faults injected by
a seeded RNG), :mod:`.serve` (a bus served over a real pseudo-terminal with RS-485 wire timing,
or over TCP like a serial server / transparent DTU) and :mod:`.fleet` (many buses from a few
parameters, for ``meterd simulate`` and ``meterd demo``).

May import ``meterd.protocols``, ``meterd.errors`` and ``meterd.readings`` only -- never the
collector's polling engine, so a simulator and the master can never share a bug.
"""
