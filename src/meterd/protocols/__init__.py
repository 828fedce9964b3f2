"""Protocol codecs, sans-I/O: no sockets, clocks or logging.  Bytes in, typed values out.

May import only ``meterd.errors`` and itself.  Decoders raise only ``meterd.errors.ProtocolError``
subclasses on malformed input; a device's refusal is returned as a value.
"""
