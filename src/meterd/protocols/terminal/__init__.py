"""The terminal protocols, sans-I/O: how terminals that carry meter frames talk besides those frames.

* :mod:`~meterd.protocols.terminal.dtu`: GPRS/4G DTU registration and heartbeat packets
  (:class:`~meterd.protocols.terminal.dtu.DtuFormat` and its presets);
* :mod:`~meterd.protocols.terminal.mqtt`: the MQTT topic tree and the JSON request, reply and
  pushed-readings payloads of MQTT terminals.

Both sides use them: the collector's I/O (:mod:`meterd.collector.dtu`, :mod:`meterd.collector.mqtt`)
and the simulators.  No sockets, clocks or logging; times are passed in.

May import only ``meterd.errors`` and ``meterd.protocols``, like every codec: pushed readings are
read into the codec's own :class:`~meterd.protocols.terminal.mqtt.PushedReading`, from which the
collector makes its :class:`~meterd.readings.Reading`.
"""
