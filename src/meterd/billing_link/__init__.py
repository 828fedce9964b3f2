"""The billing link: scheduled, idempotent, resumable jobs between meterd and the billing
(marketing, SG186-style) system, which is the system of record for customers and payments.

Jobs (:mod:`.jobs`): import payments (each applied exactly once, by its ledger key), import
accounts and meter assignments (the archive follows the billing system; report, never delete),
export reading-day readings keyed by account, export balances.  Sources and sinks: a drop folder
(:mod:`.folder`) or HTTP JSON (:mod:`.http`).  Bad records are quarantined with a reason and the
rest of the batch goes on; a file that cannot be read at all is quarantined whole.

Modules: :mod:`.records` (pure parsing and validation), :mod:`.store` (watermarks, file progress,
quarantine in the state database), :mod:`.imports`, :mod:`.exports`, :mod:`.jobs` (``run_job``).

May import: ``meterd.control`` (the ledger and the archive, through ``ControlStore``'s public
methods only), ``meterd.analytics`` (the daily frozen registers, for reading-day exports),
``meterd.storage.sqlite`` (time encoding, file names), ``meterd.errors``, ``meterd.clock``.  Never the
collector or the protocols.  Time is passed in; nothing reads the clock.
"""

from meterd.billing_link.jobs import JobKind, JobResult, JobSpec, SyncStore, run_job

__all__ = ["JobKind", "JobResult", "JobSpec", "SyncStore", "run_job"]
