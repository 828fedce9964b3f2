"""Job vocabulary shared by the importers and exporters; re-exported by :mod:`meterd.billing_link.jobs`."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.billing_link.store import Refusal, SyncStore
from meterd.clock import CST
from meterd.control.amounts import DEFAULT_LIMITS, AmountLimits
from meterd.control.state import ControlStore

DETAIL_LINES: Final = 200  # human lines kept in a JobResult; the rest are counted


class JobKind(enum.StrEnum):
    IMPORT_PAYMENTS = "import_payments"
    IMPORT_ACCOUNTS = "import_accounts"
    EXPORT_READINGS = "export_readings"
    EXPORT_BALANCES = "export_balances"

    @property
    def imports(self) -> bool:
        return self in (JobKind.IMPORT_PAYMENTS, JobKind.IMPORT_ACCOUNTS)


#: The largest inbox file or HTTP answer a job reads, in MiB (``max_file_mb``).  A CSV file is read a
#: block at a time (its memory does not grow with its size, its CPU does); a JSON file or HTTP answer
#: is parsed whole, about 15 times its size in memory, inside the daemon that runs prepaid control: a
#: file far past any real delivery must not take it down.
DEFAULT_MAX_FILE_MB: Final = 64
MAX_FILE_MB_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One configured job.  Exactly one of ``folder`` (drop-folder root holding inbox/ outbox/
    processed/ quarantine/) and ``url`` (HTTP JSON).  ``format`` and ``encoding`` apply to exports;
    imports detect both.  ``chunk`` records are applied and committed at a time (an HTTP import
    asks for pages of that size)."""

    name: str
    kind: JobKind
    folder: Path | None = None
    url: str | None = None
    token_env: str | None = None
    schedule: str | None = None  # cron text, for the daemon
    format: str = "csv"
    encoding: str = "utf-8"
    chunk: int = 500
    max_file_mb: int = DEFAULT_MAX_FILE_MB  # a bigger inbox file is quarantined unread, a bigger answer refused


@dataclass(slots=True)
class JobResult:
    """What one run did.  ``applied``: payments entered in the ledger, accounts created or changed,
    export rows written.  ``duplicates``: payment ids already applied from another delivery
    (ignored).  ``replayed``: records this same delivery had already applied before a crash or a
    re-fetched last page (ignored, not duplicates).  ``quarantined``: records refused, plus whole
    files.  ``files``: inbox files handled, or export files / POSTs made.  ``counts`` has the rest
    (created, changed, unchanged, meters_moved, missing, rows_missing, ...)."""

    job: str
    kind: JobKind
    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    files: list[str] = field(default_factory=list)
    watermark: str | None = None
    detail: list[str] = field(default_factory=list)
    replayed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    _dropped: int = field(default=0, repr=False, compare=False)

    def note(self, line: str) -> None:
        if len(self.detail) < DETAIL_LINES:
            self.detail.append(line)
        else:
            self._dropped += 1

    def left_out(self, n: int) -> None:
        """``n`` more lines that were not kept to be noted (more than a result keeps): counted."""
        self._dropped += n

    def add(self, counts: Mapping[str, int]) -> None:
        for k, v in counts.items():
            if v:
                self.counts[k] = self.counts.get(k, 0) + v
        self.applied += counts.get("applied", 0)
        self.duplicates += counts.get("duplicates", 0)
        self.replayed += counts.get("replayed", 0)
        self.quarantined += counts.get("quarantined", 0)

    def finish(self) -> None:
        if self._dropped:
            self.detail.append(f"... and {self._dropped} more line(s) (see the audit log and `meterd sync quarantine`)")
            self._dropped = 0

    def summary(self) -> dict[str, int]:
        return {**self.counts, "applied": self.applied, "duplicates": self.duplicates, "replayed": self.replayed,
                "quarantined": self.quarantined, "files": len(self.files)}

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "kind": str(self.kind), "applied": self.applied, "duplicates": self.duplicates,
                "replayed": self.replayed, "quarantined": self.quarantined, "files": list(self.files),
                "watermark": self.watermark, "counts": dict(self.counts), "detail": list(self.detail)}


RegisterOf = Callable[[str, date], Decimal | tuple[Decimal, bool] | None]


@dataclass(slots=True)
class Run:
    """Everything one run of one job works with; built by :func:`~meterd.billing_link.jobs.run_job`."""

    spec: JobSpec
    now: datetime
    sync: SyncStore
    control: ControlStore
    result: JobResult
    known_tariffs: Collection[str] = ()
    register_of: RegisterOf | None = None
    day: date | None = None
    amounts: AmountLimits = DEFAULT_LIMITS  # [prepaid] max_payment: a larger payment is quarantined
    zone: tzinfo = CST  # the site's ([site] timezone): export days and file names, naive times in files


@dataclass(slots=True)
class Outcome:
    """What applying some records did: refusals for the quarantine, counts, human lines."""

    refused: list[Refusal] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def refuse(self, no: int, raw: str, reason: str) -> None:
        self.refused.append((no, raw, reason))
        self.counts["quarantined"] += 1

    def merge(self, other: Outcome) -> None:
        self.refused += other.refused
        self.counts.update(other.counts)
        self.lines += other.lines
