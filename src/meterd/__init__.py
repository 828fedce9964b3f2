"""meterd: meter data acquisition and prepaid-control master station.

Subpackages (imports point downwards): ``protocols`` (sans-I/O codecs, imports nothing else of
meterd), ``collector`` (transports, channels, poll rounds), ``storage``, ``config``, ``control``,
``analytics``, ``billing_link``, ``simulators`` (use ``protocols`` and ``collector.transports``
only), ``api`` and ``cli`` on top; :mod:`meterd.app` (the composition root) builds a node and is the
only place that wires parts together.  The rules: docs/architecture.md, checked by
tests/unit/test_import_rules.py.
"""

__version__ = "0.1.0"
