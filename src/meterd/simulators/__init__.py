"""Simulated DL/T 645 (2007 and 1997) and Modbus meters, buses and fleets, with fault injection,
for tests and demos.

Layers, bottom up: :mod:`.profile` (load profiles, TOU schedules, seeded noise), :mod:`.model`
(one meter's moving state, pure, time passed in),
:mod:`.dlt645` (a sans-I/O bus of DL/T 645 meters: request bytes in, reply bytes out, faults
injected by a seeded RNG), :mod:`.modbus` (the same meters as Modbus units behind a register map:
request ADU in, reply bytes out, on pymodbus' server core -- framers, request PDUs, their
datastore execution), :mod:`.serve` (either bus served over a real pseudo-terminal with RS-485
wire timing, or over TCP like a serial server / transparent DTU / Modbus TCP gateway) and
:mod:`.fleet` (many buses from a few parameters, for ``meterd simulate`` and ``meterd demo``).
Terminals in front of buses: :mod:`.dtu` (transparent GPRS DTUs), :mod:`.mqtt_terminal`, and
:mod:`.gdw_terminal` / :mod:`.concentrator` (Q/GDW 1376.1 concentrators: the terminal's own
collections, frozen data, events and control, and its dial-in link); :mod:`.dialler` is the dial-in
(connect, back off, dial again) the DTUs and concentrators share, :mod:`.lifecycle` how the terminals
and their fleets start and stop, :mod:`.faults` what every fault plan checks; :mod:`.shard` starts
fleets.

May import ``meterd.protocols``, ``meterd.errors``, ``meterd.clock`` and ``meterd.readings`` only -- never the
collector's polling engine, so a simulator and the master can never share a bug.
"""
