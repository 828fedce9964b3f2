"""Analytics: line loss (线损), abnormal usage (异常用电), outages (停电) and energy statistics.

What lives here:

- :mod:`.topology` -- supply, sales and auxiliary points of areas (台区), lines and groups.
- :mod:`.lineloss` -- loss reports from daily frozen registers, with completeness and flags (pure).
- :mod:`.stats` -- energy by unit, industry or group; calendar periods; summed load curves (pure).
- :mod:`.anomalies` -- detectors over one meter's readings (pure) and the anomaly event store.
- :mod:`.outages` -- areas gone dark together (pure) and the outage store.
- :mod:`.alarms` -- what becomes an operator's alarm: anomalies, outages, terminals, spool (pure).
- :mod:`.energy` -- the daily register store and the line-loss history, in ``state.sqlite3``.

May import: ``meterd.readings``, ``meterd.storage.sqlite`` (file name, time encoding) and
``meterd.clock`` (the zones, day cuts, site-time text) only -- never ``collector``, ``config`` (but for its section's type,
annotation only) or ``cli``: analytics works on what was stored, whoever stored it.

Contract:

- Pure parts take time as an argument and never read a clock; energy is ``Decimal`` kWh on the
  primary side, never a float; the calendar (which day, month, quarter) is China Standard Time.
- Estimated values are never mixed silently with measured ones: they are left out or named.
- Every figure is shown with its completeness; nothing missing is silently treated as zero.
- Stores share ``state.sqlite3`` with the rest of meterd (WAL, 30 s busy timeout, one lock per
  connection, writes in ``BEGIN IMMEDIATE`` transactions) and are safe across threads.
"""

from meterd.analytics.anomalies import AnomalyStore, Event, Finding, Kind, Limits, Severity, detect
from meterd.analytics.energy import DailyRegisterStore, LossHistory
from meterd.analytics.lineloss import LossReport, line_loss, line_loss_all, period_energy
from meterd.analytics.outages import Outage, OutageFinding, OutageStore, detect_outages
from meterd.analytics.stats import energy_by, load_curve, periods
from meterd.analytics.topology import Point, Role, Topology, Unit

__all__ = [
    "AnomalyStore",
    "DailyRegisterStore",
    "Event",
    "Finding",
    "Kind",
    "Limits",
    "LossHistory",
    "LossReport",
    "Outage",
    "OutageFinding",
    "OutageStore",
    "Point",
    "Role",
    "Severity",
    "Topology",
    "Unit",
    "detect",
    "detect_outages",
    "energy_by",
    "line_loss",
    "line_loss_all",
    "load_curve",
    "period_energy",
    "periods",
]
