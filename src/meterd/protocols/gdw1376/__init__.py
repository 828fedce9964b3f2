"""Q/GDW 1376.1-2013 codec (sans-I/O): the master station <-> terminal protocol of concentrators
and special-transformer terminals (主站与采集终端通信协议).

- :mod:`.frame`: link frames (68 L L 68 C A AFN SEQ ... AUX CS 16), control and SEQ bits, the
  terminal address, PW / EC / Tp, a resyncing stream decoder;
- :mod:`.units`: DA/DT, the pn and Fn of data units;
- :mod:`.formats`: appendix A data formats (BCD numbers with sign bits, dates and times);
- :mod:`.catalogue`: the (AFN, Fn) items meterd supports, with typed values;
- :mod:`.messages`: frames with decoded data units, request/reply builders, multi-frame reassembly;
- :mod:`.explain`: what a frame says, field by field, for ``meterd decode`` and traces.

Imports nothing of meterd but ``meterd.errors`` and ``meterd.protocols`` (the DL/T 645 codec for
addresses and for frames relayed through AFN 10).  Malformed bytes raise ProtocolError; a
terminal's denial (AFN 00 F2 / F3 with errors) is a value.  Times are naive datetimes in the
terminal's clock, which keeps the site's local time (China Standard Time); the caller attaches the
zone.  docs/gdw1376.md lists the supported AFN/Fn.
"""
