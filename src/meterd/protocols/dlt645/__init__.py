"""DL/T 645 codecs (sans-I/O): link frames (:mod:`.frame`), typed messages (:mod:`.messages`),
the data-identifier catalogue (:mod:`.catalogue`).

Imports nothing of meterd but ``meterd.errors`` and ``meterd.protocols``.  Bytes in, frozen
dataclasses out; a meter's abnormal reply is a value, malformed bytes raise ProtocolError.
"""
