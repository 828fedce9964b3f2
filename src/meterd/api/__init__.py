"""The HTTP API (issue 8): a self-contained Starlette app the daemon mounts, with role tokens.

What lives here:

- :mod:`.tokens` -- API tokens with a role (viewer < technician < operator < admin), kept hashed in
  ``state.sqlite3``.
- :mod:`.app` -- :func:`create_app`: JSON endpoints under ``/api/v1``, Bearer auth, role checks,
  and the OpenAPI 3.1 document built from the same route table.
- :mod:`.alarms` -- the alarm list operators work (``/api/v1/alarms``: acknowledge, assign, close)
  and 保电 from the API; :class:`~meterd.api.alarms.AlarmWatch` syncs the list from the stores.

May import: ``meterd.control`` (state, engine, model), ``meterd.storage.sqlite``,
``meterd.analytics``, ``meterd.billing_link`` (sync runs), ``meterd.config`` (argument grammar),
``meterd.clock`` -- never ``collector`` or ``cli``: the API works on the stores, whoever writes
them, so it runs inside the daemon or beside it; what only a running node can do (on-demand
reads, live channel figures) it is handed by ``meterd.app`` (:mod:`.live`).

Contract: bad input is a 4xx with a JSON ``{"error": ...}`` and changes nothing; every write is
audited with the token's name and id; a secret is shown once at creation and never stored or logged.
"""

from meterd.api.app import create_app
from meterd.api.tokens import Role, TokenStore

__all__ = ["Role", "TokenStore", "create_app"]
