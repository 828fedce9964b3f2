"""meterd: meter data acquisition and prepaid-control master station.

Subpackages (imports point downwards): ``protocols`` (sans-I/O codecs, imports nothing else of
meterd), ``collector`` (transports, channels, poll rounds), ``storage``, ``config``, ``simulators``
(use ``protocols`` and ``collector.transports`` only), ``cli`` on top.
"""

__version__ = "0.1.0"
