"""Collector nodes: several ``meterd run`` processes sharing one PostgreSQL split the work by lease.

- :mod:`.leases` -- the lease table and the node table in PostgreSQL, and every statement on
  them (acquire, renew, steal, release, fence); expiry is judged by PostgreSQL's clock only;
- :mod:`.balance` -- pure: a node's fair share of the channels, and how many to take or give back
  (with hysteresis, so nothing flaps);
- :mod:`.node` -- the node loop inside the daemon: heartbeat, renewals, balancing, the local
  deadline after which a node that cannot reach PostgreSQL stops sending, leadership of the
  global jobs; it tells the collector which channels to start and stop through callbacks;
- :mod:`.status` -- what ``meterd cluster status`` shows.

May import ``storage`` (the :class:`~meterd.storage.database.Database` location), ``config``
(its section's type) and the core modules; never the collector or the parts above it: the
composition root (:mod:`meterd.app`) hands the node loop the callbacks it drives.
"""
