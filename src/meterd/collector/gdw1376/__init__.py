"""Q/GDW 1376.1 terminals (concentrators 集中器, special-transformer terminals 专变终端): the master side.

A terminal dials in over GPRS/4G, logs in (AFN 02 F1), heart-beats (AFN 02 F3) and answers the
master's requests; it reads its meters itself and keeps what it read.  The parts, one module each:

* :class:`GdwListener` (``listener``) -- the TCP server terminals log in to.  The rules are the DTU listener's
  (:mod:`meterd.collector.dtu`): a login from a terminal address that no channel names is refused
  (``unknown_id``) and the connection closed; frames before a login are dropped
  (``unregistered_data``, counted once per connection); no login within ``registration_timeout``
  closes the connection; a second login of a terminal that is online replaces the first connection
  (``replaced``; the terminal stays online); silence past ``heartbeat_timeout`` takes it offline.
  The master confirms every login, heartbeat and logout (AFN 00 F1, C = 0BH) and any other
  terminal-initiated frame that asks for it (CON); the terminal's replies (PRM = 0) go to its
  channel.  Statistics have the DTU listener's shape, so ``/metrics`` and ``meterd status`` show
  both alike.

* :class:`GdwTransport` (``listener``) -- the byte pipe to one terminal, bound to its current connection; it also
  queues the decoded frames beside their bytes so nothing is decoded twice.

* :class:`GdwChannel` (``channel``) -- a :class:`~meterd.collector.channel.Channel` that speaks 1376.1 to its
  terminal: :meth:`GdwChannel.request` sends one AFN with its data units and returns the (joined)
  reply, one request in flight, with the channel's timeouts, retries, statistics and trace.  Its
  :meth:`GdwChannel.transact` carries a DL/T 645 frame to a meter behind the terminal inside AFN 10
  F1 and returns the meter's reply frame, so everything meterd does with DL/T 645 meters -- reads
  of any identifier, relay commands and their read-back, on-demand reads -- works through a
  concentrator unchanged.  Frames that carry PW (AFN 04, 05, 10) get the password from the
  secrets (``password_secret``); without one PW is zeros, and relay commands are refused.

Polling (:func:`gdw_round`, ``rounds``) reads terminal-kept data where the terminal has it and relays the rest:

===========================================  ==========================================================
what a poll asks (DL/T 645 identifier)       read from the terminal
===========================================  ==========================================================
forward active energy, total / rates         AFN 0C F129 (by pn, 8 meters per data unit)
reactive combined 1, quadrant I / IV         AFN 0C F33
voltage, current, power, power factor        AFN 0C F25
daily frozen forward active energy           AFN 0D F161 for the day before the terminal's date (its
                                             clock: F2; Td_d names the day that ended), stamped the
                                             terminal's date 00:00 site time (when it was frozen)
anything else                                AFN 10 F1: the DL/T 645 read relayed to the meter
===========================================  ==========================================================

Values are the meters' own (secondary) and get the meter's CT x PT like a direct read; present
values are stamped with the time the terminal read the meter (never later than the round).
Events: a reply whose EC says important events are waiting (ACD) makes the channel read them by
pointer (AFN 0E F1); ERC14 (terminal power off / on) becomes ``event.power_down.start`` /
``.end`` readings of every meter behind the terminal, which outage detection takes as power-down
reports; every other record becomes an anomaly ``terminal.erc<N>`` of the meter it names or of the
terminal (``events``).  At login the terminal's meter archive (AFN 0A F10) is compared with the config and the
differences downloaded (AFN 04 F10), logged and audited (``archive``).  A special-transformer
terminal's control turn is tripped and released, 保电 and 催费告警 set and cleared, with AFN 05,
each confirmed by the terminal's control state read back (AFN 0C F5 / F6; ``turns``).

Imports: :mod:`meterd.collector.channel`, ``poll``, ``transports`` and ``listener`` (the base the
DTU listener shares), the protocol codecs, storage's reading types and anomaly findings; nothing
of control, analytics or the daemon.
"""

from meterd.collector.gdw1376.archive import archive_entries, read_events, sync_archive
from meterd.collector.gdw1376.channel import GdwChannel, TerminalDenied, password_bytes
from meterd.collector.gdw1376.listener import COUNTERS, REJECT_REASONS, GdwListener, GdwTransport
from meterd.collector.gdw1376.rounds import gdw_round, terminal_values
from meterd.collector.gdw1376.turns import send_turn_command

__all__ = [
    "COUNTERS",
    "REJECT_REASONS",
    "GdwChannel",
    "GdwListener",
    "GdwTransport",
    "TerminalDenied",
    "archive_entries",
    "gdw_round",
    "password_bytes",
    "read_events",
    "send_turn_command",
    "sync_archive",
    "terminal_values",
]
