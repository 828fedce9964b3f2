"""Imports: payments into the ledger, accounts into the archive, from a drop folder or HTTP.

A *sink* applies records of one kind (:class:`PaymentSink`, :class:`AccountSink`); a *driver*
feeds it chunks from a source (:func:`import_folder`, :func:`import_http`) and commits progress
after each chunk (see :mod:`meterd.billing_link.store` for why that survives kill -9).  An inbox
CSV file is read in passes from one open file, :data:`BLOCK` bytes at a time, never whole (see
:func:`_import_file`); a JSON file is parsed whole, bounded by ``max_file_mb``.

Payments take the bulk path: a chunk is one :meth:`ControlStore.apply` of ``payment:ID`` entries --
the key :meth:`ControlStore.pay` uses, so a payment made at the counter and the same id imported
later (or the other way round) is applied once.  An entry the ledger skipped is looked up:

- same account and amount, and the ledger line came from this very delivery (its detail names the
  same file row / HTTP page and record) -> *replayed*: the chunk was applied before a kill, or the
  last HTTP page was fetched again;
- same account and amount, other delivery -> *duplicate*: ignored with its reason, counted;
- another account or amount -> quarantined, "duplicate payment id with a different amount/account".

Accounts: the billing system is the system of record.  Each record is diffed against the archive
(created, changed fields, meters assigned / moved / unassigned / multiplier) and upserted with
actor ``billing``; fields a file does not carry (no ``area`` column) keep the archive's value, and
per-account threshold overrides (local policy, not billing data) are kept.  Accounts in the
archive but missing from a full import are reported, never deleted.  A new account is ``pending``
(charged, never alarmed or tripped) until a record carries its ``opening_balance`` (applied once
as ``opening:ACCOUNT``) or ``activate`` = yes (an opening balance of 0.00); a later, different
opening balance is reported and not applied, and one for an account that was active without one
(live before opening balances existed) is counted (``opening_ignored``) and not applied.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from meterd.billing_link.folder import FORMATS, PROCESSED, QUARANTINE, DropFolder
from meterd.billing_link.http import HttpSyncError, get_page, shown_url, token_from_env
from meterd.billing_link.model import DETAIL_LINES, Outcome, Run
from meterd.billing_link.records import (
    ACCOUNT_FIELDS,
    PAYMENT_FIELDS,
    AccountRecord,
    BadFileError,
    Conflicts,
    EncodingScan,
    Payment,
    RawRecord,
    RecordError,
    account_of,
    choose_encoding,
    json_records,
    open_csv,
    parse_records,
    payment_of,
)
from meterd.billing_link.store import FileRow
from meterd.clock import local_text
from meterd.control.model import EntryKind, LedgerEntry
from meterd.control.state import PENDING, Account, AccountSpec, ControlStore, LedgerRow
from meterd.errors import LedgerError, SyncError

DIFFERENT_DUPLICATE: Final = "duplicate payment id with a different amount/account"
MIB: Final = 1024 * 1024
BLOCK: Final = MIB  # bytes an import reads of an inbox file at a time
#: Pages one HTTP import run reads at most (10,000 pages of the default 500 records: 5 million); the
#: rest waits for the next run, the watermark keeping the place.  A billing system whose ``next``
#: never ends must not keep a run going for ever.
MAX_PAGES: Final = 10_000
HEAD_BYTES: Final = 500  # of a quarantined file, kept with its record
MISSING_SHOWN: Final = 20  # account names listed in the "missing from the import" line


class Sink(Protocol):
    @property
    def required(self) -> Sequence[str]: ...  # the fields a record must carry

    @property
    def identical_is_duplicate(self) -> bool: ...

    def start(self) -> None: ...  # a new full import (file, HTTP run) begins

    def prepare(self, records: Iterable[RawRecord]) -> None: ...  # a whole file or page, before chunks

    def apply(self, records: Sequence[RawRecord], tag: str) -> Outcome: ...

    def end(self, source: str, *, full: bool) -> Outcome: ...


# --- payments ----------------------------------------------------------------------------------------


class PaymentSink:
    required = PAYMENT_FIELDS
    # A file byte-for-byte equal to one finished without quarantined records can only hold
    # duplicates now (ledger keys are never removed): it is counted so, without the lookups.
    identical_is_duplicate = True

    def __init__(self, run: Run) -> None:
        self.run = run
        self.control: ControlStore = run.control
        self.known = {a.account for a in self.control.accounts()}
        self.unknown: set[str] = set()
        self.ledgers: dict[str, dict[str, LedgerRow]] = {}

    def start(self) -> None:
        pass

    def prepare(self, records: Iterable[RawRecord]) -> None:
        pass  # reads none of them

    def end(self, source: str, *, full: bool) -> Outcome:
        return Outcome()

    def _exists(self, account: str) -> bool:
        if account in self.known:
            return True
        if account in self.unknown:
            return False
        found = self.control.account(account) is not None  # created since the run began?
        (self.known if found else self.unknown).add(account)
        return found

    def _detail(self, p: Payment, tag: str, no: int) -> str:
        via = f" via {p.channel}" if p.channel else ""
        return f"billing payment {p.payment_id}{via}, paid {p.paid_at.isoformat()}; {tag} record {no}"

    def apply(self, records: Sequence[RawRecord], tag: str) -> Outcome:
        out = Outcome()
        todo: list[tuple[RawRecord, Payment, LedgerEntry]] = []
        for rec in records:
            try:
                p = payment_of(rec, now=self.run.now, limits=self.run.amounts, zone=self.run.zone)
                if not self._exists(p.account):
                    raise RecordError(f"unknown account {p.account}")
            except RecordError as exc:
                out.refuse(rec.no, rec.raw, str(exc))
                continue
            todo.append((rec, p, LedgerEntry(key=f"{EntryKind.PAYMENT}:{p.payment_id}", account=p.account,
                                             kind=EntryKind.PAYMENT, amount=p.amount, at=self.run.now,
                                             detail=self._detail(p, tag, rec.no))))
        skipped = self._enter(todo, out)
        self._classify(skipped, out, tag)
        return out

    def _enter(self, todo: list[tuple[RawRecord, Payment, LedgerEntry]],
               out: Outcome) -> list[tuple[RawRecord, Payment, LedgerEntry]]:
        """Apply the chunk in one transaction; returns the entries the ledger skipped (key known)."""
        if not todo:
            return []
        try:
            applied = {e.key for e in self.control.apply([e for _, _, e in todo], actor="billing", now=self.run.now)}
        except LedgerError:
            # Something in the chunk cannot go in (an account gone meanwhile): one by one, so the
            # rest still does.
            skipped = []
            for item in todo:
                rec, _, entry = item
                try:
                    if self.control.apply([entry], actor="billing", now=self.run.now):
                        out.counts["applied"] += 1
                    else:
                        skipped.append(item)
                except LedgerError as exc:
                    out.refuse(rec.no, rec.raw, str(exc))
            return skipped
        skipped, first = [], set()
        for item in todo:
            key = item[2].key
            if key in applied and key not in first:  # the same id twice in a chunk: the first went in
                first.add(key)
                out.counts["applied"] += 1
            else:
                skipped.append(item)
        return skipped

    def _payment_row(self, account: str, key: str) -> LedgerRow | None:
        """The ledger line of payment ``key`` on ``account``.  Ledger lines never change, so an
        account's payments are read once per run and again only when a key is not among them."""
        rows = self.ledgers.get(account)
        if rows is None or key not in rows:
            rows = self.ledgers[account] = {r.key: r for r in self.control.ledger(account)
                                            if r.kind == EntryKind.PAYMENT}
        return rows.get(key)

    def _classify(self, skipped: list[tuple[RawRecord, Payment, LedgerEntry]], out: Outcome, tag: str) -> None:
        if not skipped:
            return
        duplicates: list[str] = []
        for rec, p, entry in skipped:
            row = self._payment_row(p.account, entry.key)
            if row is None:
                out.refuse(rec.no, rec.raw, f"{DIFFERENT_DUPLICATE}: payment {p.payment_id} was already applied to "
                                            f"another account, not {p.account}")
            elif row.amount != p.amount:
                out.refuse(rec.no, rec.raw, f"{DIFFERENT_DUPLICATE}: payment {p.payment_id} was applied to "
                                            f"{p.account} for {row.amount}, this record says {p.amount}")
            elif row.detail == entry.detail:
                out.counts["replayed"] += 1
            else:
                out.counts["duplicates"] += 1
                duplicates.append(p.payment_id)
                out.lines.append(f"payment {p.payment_id} (record {rec.no}): duplicate ignored, already applied "
                                 f"{local_text(row.recorded, self.run.zone, timespec='minutes')} ({row.detail})")
        if duplicates:
            # pay() audits each duplicate; here one line per chunk says which ids were ignored.
            self.control.audit("billing", "payment-duplicates", "*",
                               {"source": tag, "count": len(duplicates), "ids": duplicates[:50]}, now=self.run.now)


# --- accounts ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """The archive's view of one account, kept current as the import goes."""

    customer: str
    area: str
    tariff: str
    protected: bool
    thresholds: dict[str, str]
    meters: dict[str, object]
    pending: bool = False
    opening: Decimal | None = None  # the opening balance applied, if any

    @classmethod
    def of(cls, a: Account, opening: Decimal | None = None) -> _Held:
        return cls(a.customer, a.area, a.tariff, a.protected, dict(a.thresholds), dict(a.meters),
                   a.state == PENDING, opening)


class AccountSink:
    required = ACCOUNT_FIELDS
    identical_is_duplicate = False  # applied again: the archive follows the billing system

    def __init__(self, run: Run) -> None:
        self.run = run
        self.known_tariffs: Collection[str] = run.known_tariffs
        openings = run.control.opening_balances()
        self.held = {a.account: _Held.of(a, openings.get(a.account)) for a in run.control.accounts()}
        self.owner = {m: name for name, h in self.held.items() for m in h.meters}
        self.seen: set[str] = set()
        self.conflicting: dict[int, str] = {}  # record number -> why another record of the import wins

    def start(self) -> None:
        self.seen = set()

    def prepare(self, records: Iterable[RawRecord]) -> None:
        """Read a whole file or page first (as it streams by; only the accounts and meters are
        kept): an account or meter given twice is a conflict across chunks, and a resumed file must
        decide the same way."""
        self.conflicting = {}
        conflicts = Conflicts()
        for rec in records:
            name = rec.fields.get("account")
            if isinstance(name, (str, int)) and str(name).strip():
                self.seen.add(str(name).strip())
            try:
                parsed = account_of(rec, known_tariffs=self.known_tariffs)
            except RecordError:
                continue  # refused again, with its reason, when its chunk is applied
            reason = conflicts.check(rec.no, parsed)
            if reason is not None:
                self.conflicting[rec.no] = reason

    def apply(self, records: Sequence[RawRecord], tag: str) -> Outcome:
        out = Outcome()
        specs = []
        for rec in records:
            try:
                parsed = account_of(rec, known_tariffs=self.known_tariffs)
            except RecordError as exc:
                out.refuse(rec.no, rec.raw, str(exc))
                continue
            if rec.no in self.conflicting:
                out.refuse(rec.no, rec.raw, self.conflicting[rec.no])
                continue
            spec = self._diff(parsed, out, ref=f"billing {tag} record {rec.no}")
            if spec is not None:
                specs.append(spec)
        if specs:
            changes = self.run.control.upsert_accounts(specs, actor="billing", now=self.run.now)
            # what the opening balances did (applied, activated, a different one refused) is known here,
            # and which operators' 保电 overrides a new protected flag superseded
            out.lines += [line for line in changes if "opening balance" in line or "activated" in line
                          or "supersedes the operator's override" in line]
            out.counts["activated"] += sum(1 for line in changes if line.endswith("activated (was pending)"))
        return out

    def _diff(self, rec: AccountRecord, out: Outcome, *, ref: str = "") -> AccountSpec | None:
        old = self.held.get(rec.account)
        customer = rec.customer if rec.customer is not None else (old.customer if old else "")
        area = rec.area if rec.area is not None else (old.area if old else "")
        protected = rec.protected if rec.protected is not None else (old.protected if old else False)
        opens = rec.opening_balance is not None or bool(rec.activate)
        amount = rec.opening_balance if rec.opening_balance is not None else Decimal(0)
        opening = old.opening if old and (old.opening is not None or not old.pending) else (amount if opens else None)
        new = _Held(customer, area, rec.tariff, protected, old.thresholds if old else {}, dict(rec.meters),
                    (old.pending if old else True) and not opens, opening)
        # the store applies it, once, and says what it did (apply() reports its lines)
        opening_news = opens and (old is None or old.pending or (
            old.opening is not None and rec.opening_balance is not None and old.opening != rec.opening_balance))
        if opens and old is not None and not old.pending and old.opening is None and rec.opening_balance is not None:
            out.counts["opening_ignored"] += 1  # live before opening balances: its balance is its ledger's
        lines = []
        if old is None:
            lines.append(f"account {rec.account}: created (tariff {rec.tariff}, area {area!r}, "
                         f"{len(rec.meters)} meter(s))" + ("" if opens else ", pending: no opening balance"))
        else:
            changed = [f"{what} {a!r} -> {b!r}" for what, a, b in (
                ("customer", old.customer, customer), ("area", old.area, area), ("tariff", old.tariff, rec.tariff),
                ("protected", old.protected, protected)) if a != b]
            if changed:
                lines.append(f"account {rec.account}: changed {', '.join(changed)}")
        old_meters = old.meters if old else {}
        for meter, multiplier in rec.meters.items():
            was = self.owner.get(meter)
            if was is None:
                lines.append(f"meter {meter}: assigned to account {rec.account} (×{multiplier})")
            elif was != rec.account:
                lines.append(f"meter {meter}: moved from account {was} to {rec.account} (×{multiplier})")
                out.counts["meters_moved"] += 1
                del self.held[was].meters[meter]
            elif old_meters[meter] != multiplier:
                lines.append(f"meter {meter}: multiplier ×{old_meters[meter]} -> ×{multiplier} "
                             f"(account {rec.account})")
            self.owner[meter] = rec.account
        for meter in old_meters:
            if meter not in rec.meters:
                lines.append(f"meter {meter}: unassigned from account {rec.account}")
                self.owner.pop(meter, None)
        self.held[rec.account] = new
        if not lines and not opening_news:
            out.counts["unchanged"] += 1
            return None
        if not lines and old is not None and not old.pending:
            out.counts["unchanged"] += 1  # only a different opening balance: refused and reported by the store
        else:
            out.counts["created" if old is None else "changed"] += 1
            out.counts["applied"] += 1
        out.lines += lines
        return AccountSpec(account=rec.account, tariff=rec.tariff, meters=dict(rec.meters), customer=customer,
                           area=area, protected=protected, thresholds=dict(new.thresholds),
                           opening_balance=rec.opening_balance, activate=bool(rec.activate),
                           opening_ref=ref if opens else "")

    def end(self, source: str, *, full: bool) -> Outcome:
        out = Outcome()
        if not full:
            return out
        missing = sorted(set(self.held) - self.seen)
        if missing:
            out.counts["missing"] += len(missing)
            shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
            out.lines.append(f"{len(missing)} account(s) in the archive are not in {source} (kept, never deleted by "
                             f"an import): {shown}")
        return out


def sink_for(run: Run) -> Sink:
    from meterd.billing_link.model import JobKind

    return PaymentSink(run) if run.spec.kind is JobKind.IMPORT_PAYMENTS else AccountSink(run)


# --- drivers -------------------------------------------------------------------------------------------


def _report(run: Run, out: Outcome) -> None:
    run.result.add(out.counts)
    for line in out.lines:
        run.result.note(line)


class FileChangedError(SyncError):
    """An inbox file's bytes changed between two passes over it (written in place, against the
    drop-folder rule of writing NAME.tmp and renaming)."""


@dataclass(frozen=True, slots=True)
class _Scan:
    """The first pass over an inbox file: its hash and size, its first bytes, what its encoding
    needs to be told (unless it is over the limit: then only hashed)."""

    sha: str
    size: int
    head: bytes
    over: bool
    encoding: EncodingScan


def _scan(f: BinaryIO, limit: int) -> _Scan:
    """Read ``f`` through once, :data:`BLOCK` bytes at a time, holding none of it (a file still growing is
    measured as it is read, not by an earlier ``stat``)."""
    digest, encoding = hashlib.sha256(), EncodingScan()
    head, size = b"", 0
    while block := f.read(BLOCK):
        digest.update(block)
        if len(head) < HEAD_BYTES:
            head += block[:HEAD_BYTES - len(head)]
        size += len(block)
        if size <= limit:
            encoding.feed(block)
    encoding.finish()
    return _Scan(digest.hexdigest(), size, head, size > limit, encoding)


class _Part(io.RawIOBase):
    """The first ``size`` bytes of the open file ``f`` again, from its start, hashed as they are read."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        f.seek(0)
        self.f, self.left, self.digest = f, size, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.f.read(min(len(b), self.left))
        b[:len(data)] = data
        self.left -= len(data)
        self.digest.update(data)
        return len(data)

    def blocks(self) -> Iterator[bytes]:
        while block := self.read(BLOCK):
            yield block


@dataclass(frozen=True, slots=True)
class _Parsed:
    """An inbox file that can be read as records: ``records()`` reads them from its start, each
    call a new pass (a CSV file is parsed as it is read, never held whole)."""

    encoding: str
    format: str
    records: Callable[[], Iterator[RawRecord]]


def _open_file(f: BinaryIO, name: str, scan: _Scan, fmt: str, required: Sequence[str]) -> _Parsed:
    """:class:`BadFileError` when ``f`` cannot be read as records at all (a CSV file's header is
    checked by the first pass of ``records()``)."""
    if fmt != "csv":  # JSON is read whole (json has no incremental parser): bounded by max_file_mb
        part = _Part(f, scan.size)
        data = part.read()
        if part.digest.hexdigest() != scan.sha:
            raise FileChangedError(f"{name}: changed while it was being read")
        batch = parse_records(data, fmt, required)
        return _Parsed(batch.encoding, batch.format, lambda: iter(batch.records))
    if scan.encoding.blank:
        raise BadFileError("empty file")
    codec, encoding, skip = choose_encoding(scan.encoding, lambda: _Part(f, scan.size).blocks())

    def records() -> Iterator[RawRecord]:
        part = _Part(f, scan.size)
        part.read(skip)  # the byte-order mark
        text = io.TextIOWrapper(io.BufferedReader(part, BLOCK), encoding=codec, errors="replace", newline="")
        yield from open_csv(text, required)
        if part.digest.hexdigest() != scan.sha:
            raise FileChangedError(f"{name}: changed while it was being read")

    return _Parsed(encoding, "csv", records)


def _prepare(sink: Sink, records: Iterator[RawRecord]) -> int:
    """The first pass over a file's records: the sink's :meth:`~Sink.prepare`, and how many there are."""
    count = 0

    def counted() -> Iterator[RawRecord]:
        nonlocal count
        for rec in records:
            count += 1
            yield rec

    rest = counted()
    sink.prepare(rest)
    for _ in rest:  # what prepare did not read
        pass
    return count


def _keep(done: Outcome, out: Outcome) -> int:
    """Add ``out`` (a chunk's) to ``done`` (the file's), its refusals already committed: the counts,
    and its lines while the file has fewer than a JobResult keeps; returns how many lines were left out."""
    done.counts.update(out.counts)
    room = max(0, DETAIL_LINES - len(done.lines))
    done.lines += out.lines[:room]
    return len(out.lines) - min(room, len(out.lines))


def import_folder(run: Run, sink: Sink) -> None:
    spec = run.spec
    assert spec.folder is not None
    folder = DropFolder(Path(spec.folder))
    folder.ensure()
    limit = spec.max_file_mb * MIB
    for path in folder.incoming():
        with path.open("rb") as f:
            _import_file(run, sink, folder, path, f, limit)


def _import_file(run: Run, sink: Sink, folder: DropFolder, path: Path, f: BinaryIO, limit: int) -> None:
    """One inbox file, read from the open ``f`` in passes (hash and encoding; a GBK file's vote;
    records counted and prepared; records applied a chunk at a time), each a MiB at a time, so
    that the memory a CSV file takes does not grow with its size."""
    spec, sync, result, name = run.spec, run.sync, run.result, path.name
    scan = _scan(f, limit)
    sha = scan.sha
    prev = sync.latest_file(spec.name, name, sha)
    if prev is not None and prev.status in ("done", "quarantined") and prev.moved_to \
            and not Path(prev.moved_to).exists():
        folder.move(path, Path(prev.moved_to))  # handled before a crash, not yet moved
        result.note(f"{name}: was {prev.status} before an interruption; moved to {prev.moved_to}")
        return
    result.files.append(name)
    if scan.over:  # bigger than the job reads: quarantined unread, the next file goes on
        _quarantine_file(run, folder, path, sha, f"{scan.size:,} bytes, over the job's limit of {spec.max_file_mb} "
                         "MiB (max_file_mb)", head=scan.head)
        return
    try:
        parsed = _open_file(f, name, scan, FORMATS[path.suffix.lower()], sink.required)
        sink.start()
        total = _prepare(sink, parsed.records())
    except BadFileError as exc:
        _quarantine_file(run, folder, path, sha, exc.reason, head=scan.head)
        return
    except FileChangedError as exc:
        result.note(f"{exc}; left in the inbox for the next run")
        return
    twin = sync.finished_twin(spec.name, sha) if sink.identical_is_duplicate else None
    if twin is not None and not twin.counts.get("quarantined") and twin.records_total == total and not (
            prev is not None and prev.status == "running"):
        _identical(run, folder, path, sha, total, parsed.encoding, twin)
        return
    if prev is not None and prev.status == "running" and prev.records_total == total:
        file_id, start = prev.id, prev.records_done
    else:
        file_id, start = sync.start_file(spec.name, name, sha, total=total, encoding=parsed.encoding,
                                         now=run.now), 0
    done, left_out = Outcome(), 0
    records = parsed.records()
    for _ in islice(records, start):  # applied before an interruption
        pass
    i = start
    while part := list(islice(records, spec.chunk)):
        out = sink.apply(part, f"file {name} #{file_id}")
        i += len(part)
        sync.commit_chunk(file_id, spec.name, name, records_done=i, refused=out.refused,
                          counts=out.counts, now=run.now)
        left_out += _keep(done, out)
    left_out += _keep(done, sink.end(name, full=True))
    target = folder.stamped(PROCESSED, name, run.now)
    sync.finish_file(file_id, status="done", moved_to=str(target), now=run.now)
    folder.move(path, target)
    sync.set_watermark(spec.name, str(spec.kind), name)
    result.watermark = name
    c = done.counts
    result.note(f"{name}: {total} record(s), {parsed.format} {parsed.encoding}"
                + (f", resumed at record {start + 1}" if start else "")
                + f": {c['applied']} applied, {c['duplicates']} duplicate(s), {c['replayed']} replayed, "
                  f"{c['quarantined']} quarantined -> {target.name}")
    _report(run, done)
    result.left_out(left_out)


def _quarantine_file(run: Run, folder: DropFolder, path: Path, sha: str, reason: str, *, head: bytes) -> None:
    """Move a whole inbox file to quarantine/ with a ``.reason.txt`` beside it, and record it."""
    spec, sync, result, name = run.spec, run.sync, run.result, path.name
    target = folder.stamped(QUARANTINE, name, run.now)
    folder.write_atomic(QUARANTINE, target.name + ".reason.txt",
                        f"{name}: {reason}\nsha256 {sha}\njob {spec.name}\n".encode())
    sync.reject_file(spec.name, name, sha, reason=reason, raw=head.decode("utf-8", errors="replace"),
                     moved_to=str(target), now=run.now)
    folder.move(path, target)
    result.add({"quarantined": 1, "files_quarantined": 1})
    result.note(f"{name}: quarantined whole ({reason}) -> {target.name}")


def _identical(run: Run, folder: DropFolder, path: Path, sha: str, total: int, encoding: str, twin: FileRow) -> None:
    spec, sync = run.spec, run.sync
    file_id = sync.start_file(spec.name, path.name, sha, total=total, encoding=encoding, now=run.now)
    sync.commit_chunk(file_id, spec.name, path.name, records_done=total, refused=(),
                      counts={"duplicates": total}, now=run.now)
    target = folder.stamped(PROCESSED, path.name, run.now)
    sync.finish_file(file_id, status="done", moved_to=str(target), now=run.now)
    folder.move(path, target)
    sync.set_watermark(spec.name, str(spec.kind), path.name)
    run.result.watermark = path.name
    run.result.add({"duplicates": total})
    run.result.note(f"{path.name}: identical to {twin.name} (file #{twin.id}, imported before): all {total} "
                    f"record(s) are duplicates, ignored -> {target.name}")


def import_http(run: Run, sink: Sink) -> None:
    spec, sync, result = run.spec, run.sync, run.result
    assert spec.url is not None
    token = token_from_env(spec.token_env)
    since = sync.watermark(spec.name)
    full = since is None
    sink.start()
    shown = shown_url(spec.url)
    pages = 0
    seen = {since}  # the watermarks this run has asked with: a next among them is a cycle
    stopped = False
    while True:
        page = get_page(spec.url, since=since, limit=spec.chunk, token=token, max_bytes=spec.max_file_mb * MIB)
        records = json_records(page.records)
        source = f"{shown} since={since or '-'}"
        sink.prepare(records)
        done = Outcome()
        for i in range(0, len(records), spec.chunk):
            done.merge(sink.apply(records[i:i + spec.chunk], source))
        watermark = page.next if page.next is not None else since
        known = sync.commit_page(spec.name, str(spec.kind), watermark=watermark, source=source,
                                 refused=done.refused, now=run.now)
        if known:
            done.counts["quarantined"] -= known
            done.counts["already_quarantined"] += known
        _report(run, done)
        pages += 1
        result.watermark = watermark
        if page.next is None or page.next == since:
            break
        if page.next in seen:
            raise HttpSyncError(f"the answer's next {page.next!r} names a page this run has already read (a cycle): "
                                f"stopped after {pages} page(s), the watermark at {watermark!r}", url=source, status=200)
        if pages >= MAX_PAGES:
            stopped = True
            result.note(f"{shown}: stopped after {pages} pages (at most {MAX_PAGES:,} a run); the next run goes on "
                        f"from watermark {watermark}")
            break
        seen.add(page.next)
        since = page.next
    result.files.append(shown)
    result.note(f"{shown}: {pages} page(s), watermark {result.watermark}")
    # the accounts missing from a full import are reported only when the whole of it was read
    _report(run, sink.end(shown, full=full and not stopped))
