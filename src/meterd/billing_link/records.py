"""Billing records: bytes from the billing system -> validated payments and accounts, or a reason.

Pure: no files, sockets or clocks (``now`` is passed in).  Three steps, each with its own failure:

1. :func:`decode_text` -- bytes to text.  A UTF-8 BOM wins; else strict UTF-8; else (the billing
   system may send GBK) GB18030, a superset of GBK, when the whole file is valid GB18030 and its
   lines read as GB18030 more plausibly than as UTF-8 (see :func:`decode_text`).  Otherwise the
   file is decoded in the encoding that won, with U+FFFD for the bytes that are not valid in it:
   those records are then refused as garbled, the rest of the file goes on.  The same decisions
   are made a block at a time (:class:`EncodingScan`, :func:`choose_encoding`) for a file that is
   not held whole, and :func:`open_csv` parses its lines as they are read.
   Both directions are ambiguous: many GBK lines happen to be valid UTF-8 (郑伟 is D6A3 CEB0,
   which UTF-8 reads as Hebrew and Greek letters), and GB18030 reads many UTF-8 byte runs as
   wrong-but-valid Chinese (缴费 becomes 缂磋垂) -- so neither "some line is valid UTF-8" nor "the
   file is valid GB18030" decides alone.
2. :func:`parse_records` -- text to :class:`RawRecord` s.  CSV needs a header row (comma, or tab
   when the header has tabs and no commas); JSON is a list of objects or ``{"records": [...]}``,
   numbers kept exact (:class:`~meterd.control.amounts.JsonNumber`: a ``Decimal`` that remembers
   the text it was written as, so ``1.5e1`` is refused as an amount although it equals 15).  A file that cannot be read at all -- bad JSON, no header,
   required columns missing -- raises :class:`BadFileError` and is quarantined whole.  Headers
   may use the billing system's Chinese column names (:data:`ALIASES`).
3. :func:`payment_of` / :func:`account_of` -- one record to a :class:`Payment` or an
   :class:`AccountRecord`, or :class:`RecordError` with the reason it is quarantined.

Record numbers are what an operator can find in the file: the CSV line a record starts on
(the header is line 1), or the 1-based position in the JSON list.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from meterd.clock import CST, local_text
from meterd.control.amounts import (
    DEFAULT_LIMIT,
    DEFAULT_LIMITS,
    AmountError,
    AmountLimits,
    JsonNumber,
    amount_text,
    parse_amount,
    parse_payment,
)
from meterd.control.model import MAX_KEY
from meterd.errors import SyncError
from meterd.readings import address_key

PAYMENT_FIELDS: Final = ("payment_id", "account", "amount", "paid_at")  # required
ACCOUNT_FIELDS: Final = ("account", "tariff", "meters")  # required; customer, area, protected, opening_balance,
# activate optional

# Column names as the billing system may spell them -> our field names.
ALIASES: Final[Mapping[str, str]] = {
    "id": "payment_id", "paymentid": "payment_id", "缴费流水号": "payment_id", "流水号": "payment_id",
    "收费流水号": "payment_id",
    "account_no": "account", "户号": "account", "用户编号": "account", "客户编号": "account",
    "金额": "amount", "缴费金额": "amount", "实收金额": "amount",
    "paid_time": "paid_at", "缴费时间": "paid_at", "收费时间": "paid_at",
    "缴费渠道": "channel", "渠道": "channel", "缴费方式": "channel",
    "户名": "customer", "用户名称": "customer", "客户名称": "customer",
    "台区": "area", "台区编号": "area",
    "电价": "tariff", "电价码": "tariff",
    "meter": "meters", "电能表": "meters", "表号": "meters",
    "保电": "protected",
    "期初余额": "opening_balance", "初始余额": "opening_balance", "opening": "opening_balance",
    "启用": "activate", "激活": "activate",
}
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "y", "t", "是"})
FALSE_WORDS: Final = frozenset({"", "0", "false", "no", "n", "f", "否"})
FUTURE_SLACK: Final = timedelta(days=1)  # clocks differ; a payment dated later than this is a bad date
_DATE_FORMATS: Final = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y%m%d%H%M%S", "%Y%m%d")


class BadFileError(SyncError):
    """A file that cannot be read as records at all; ``reason`` is written beside it in quarantine."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RecordError(SyncError, ValueError):
    """One record refused; ``str(exc)`` is the reason kept in the quarantine table."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    no: int  # CSV line the record starts on (header = 1) or 1-based JSON position
    fields: Mapping[str, Any]  # our field name -> value (str from CSV; JSON scalars/lists from JSON)
    raw: str  # the record as received
    problem: str | None = None  # unreadable as a record at all (wrong field count, not an object)


@dataclass(frozen=True, slots=True)
class Batch:
    records: list[RawRecord]
    encoding: str  # utf-8 | utf-8-sig | gb18030, "+garbled" when some bytes were undecodable
    format: str  # csv | json


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    account: str
    amount: Decimal  # yuan, > 0, at most two decimals
    paid_at: datetime  # aware; naive times in the file are the site's
    channel: str = ""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An imported account.  ``None`` means the import did not carry the field (keep what the
    archive has); an empty string means it is empty in the billing system."""

    account: str
    tariff: str
    meters: Mapping[str, Decimal]  # address -> CT × PT
    customer: str | None = None
    area: str | None = None
    protected: bool | None = None
    opening_balance: Decimal | None = None  # signed yuan: applied once, activates a pending account
    activate: bool | None = None  # activate without an opening balance (one of 0.00)


# --- 1. bytes -> text ------------------------------------------------------------------------------


def _valid(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _plausible_unicode(text: str) -> bool:
    """Whether every non-ASCII character of ``text`` is one a Chinese billing file holds: CJK
    ideographs, CJK and full-width punctuation, general punctuation and the Latin-1 signs (¥ · ×).
    GBK bytes that happen to be valid UTF-8 read as Latin, Greek, Cyrillic or Hebrew letters."""
    for c in text:
        o = ord(c)
        if o < 0x80 or 0xA0 <= o <= 0xBF or o in (0xD7, 0xF7) or 0x2000 <= o <= 0x206F:
            continue
        if 0x3000 <= o <= 0x303F or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF:
            continue
        if 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF or 0x20000 <= o <= 0x3FFFF:
            continue
        return False
    return True


def _plausible_gb(text: str) -> bool:
    """Whether ``text`` (a GB18030 reading) uses only GB2312's common characters: UTF-8 read as
    GB18030 mostly lands on rare GBK characters and private-use code points."""
    try:
        text.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


class EncodingScan:
    """The first pass of :func:`decode_text` over a file's bytes, fed a block at a time: whether it
    starts with a UTF-8 BOM, whether it is valid UTF-8 and whether it is blank.  Holds a few bytes,
    never the file."""

    def __init__(self) -> None:
        self._start = b""  # the first bytes, until there are enough to tell a BOM
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.utf8_ok = True
        self.blank = True  # only ASCII whitespace so far (``bytes.strip()`` would leave nothing)
        self.done = False

    def feed(self, block: bytes) -> None:
        if len(self._start) < len(codecs.BOM_UTF8):
            self._start += block[:len(codecs.BOM_UTF8)]
        if self.blank and block.strip():
            self.blank = False
        if self.utf8_ok:
            try:
                self._utf8.decode(block)
            except UnicodeDecodeError:
                self.utf8_ok = False

    def finish(self) -> None:
        if self.utf8_ok:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self.utf8_ok = False
        self.done = True

    @property
    def bom(self) -> bool:
        return self._start.startswith(codecs.BOM_UTF8)


def _byte_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of the bytes in ``blocks`` as ``bytes.splitlines()`` of them joined would give,
    except that a CR LF split between two blocks gives an extra empty line."""
    pending: list[bytes] = []  # a line not yet ended, in pieces (one long line is joined once)
    for block in blocks:
        if b"\n" not in block and b"\r" not in block:
            pending.append(block)
            continue
        parts = (b"".join(pending) + block if pending else block).splitlines(keepends=True)
        pending = []
        if not parts[-1].endswith((b"\n", b"\r")):
            pending.append(parts.pop())
        for part in parts:
            yield part.rstrip(b"\r\n")
    if pending:
        yield b"".join(pending)


def choose_encoding(scan: EncodingScan, blocks: Callable[[], Iterable[bytes]]) -> tuple[str, str, int]:
    """``(codec, name, skip)`` for a file after its :class:`EncodingScan`: decode it from byte
    ``skip`` with ``codec`` and ``errors="replace"``; ``name`` as :func:`decode_text` reports it.
    ``blocks()`` reads the file again from its start (a second pass, only for a file that is
    neither valid UTF-8 nor marked by a BOM): the lines' vote and whether it is valid GB18030."""
    assert scan.done
    if scan.bom:
        return "utf-8", "utf-8-sig" + ("" if scan.utf8_ok else "+garbled"), len(codecs.BOM_UTF8)
    if scan.utf8_ok:
        return "utf-8", "utf-8", 0
    gb_votes = utf8_votes = 0
    gb = codecs.getincrementaldecoder("gb18030")()
    gb_ok = True

    def checked(source: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal gb_ok
        for block in source:
            if gb_ok:
                try:
                    gb.decode(block)
                except UnicodeDecodeError:
                    gb_ok = False
            yield block

    for line in _byte_lines(checked(blocks())):
        if line.isascii():
            continue
        try:
            as_utf8 = line.decode("utf-8")
        except UnicodeDecodeError:
            gb_votes += _valid(line, "gb18030")  # bytes valid in neither are evidence of nothing
            continue
        try:
            as_gb = line.decode("gb18030")
        except UnicodeDecodeError:
            utf8_votes += 1
            continue
        utf8_ok, gb_ok_line = _plausible_unicode(as_utf8), _plausible_gb(as_gb)
        if gb_ok_line and not utf8_ok:
            gb_votes += 1
        elif utf8_ok and not gb_ok_line:
            utf8_votes += 1
    if gb_ok:
        try:
            gb.decode(b"", final=True)
        except UnicodeDecodeError:
            gb_ok = False
    encoding = "gb18030" if gb_votes > utf8_votes else "utf-8"
    if encoding == "gb18030" and gb_ok:
        return "gb18030", "gb18030", 0
    return encoding, encoding + "+garbled", 0


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding used).  Never raises: undecodable bytes become U+FFFD (see the module doc).

    A file that is not valid UTF-8 but is valid GB18030 as a whole is GB18030 unless its lines
    vote otherwise: each non-ASCII line valid in GB18030 and not in UTF-8 votes GB18030; a line valid in
    both votes for the one encoding that reads it plausibly (UTF-8: ideographs and punctuation, not
    stray Greek or Hebrew letters; GB18030: GB2312's common characters), neither when both or
    neither do.  So a GBK file whose lines happen to be valid UTF-8 is read whole as GB18030, and a
    UTF-8 file with one bad line stays UTF-8 with only that line marked garbled.  A file valid in
    neither is decoded in the encoding that won the vote (UTF-8 on a tie), its bad bytes replaced.

    The same decisions are made a block at a time by :class:`EncodingScan` and
    :func:`choose_encoding` (what a drop-folder import uses, never holding the file whole)."""
    scan = EncodingScan()
    scan.feed(data)
    scan.finish()
    codec, name, skip = choose_encoding(scan, lambda: (data,))
    return data[skip:].decode(codec, errors="replace"), name


# --- 2. text -> raw records ------------------------------------------------------------------------


def field_name(header: str) -> str:
    key = header.strip().lstrip("\ufeff").strip()
    return ALIASES.get(key, ALIASES.get(key.lower(), key.lower()))


def parse_records(data: bytes, fmt: str, required: Collection[str]) -> Batch:
    """A whole file -> its records; :class:`BadFileError` when it cannot be read at all."""
    if not data.strip():
        raise BadFileError("empty file")
    text, encoding = decode_text(data)
    if fmt == "json":
        return Batch(json_records(_load_json(text)), encoding, "json")
    if fmt == "csv":
        return Batch(csv_records(text, required), encoding, "csv")
    raise BadFileError(f"unknown format {fmt!r} (csv or json)")


def _load_json(text: str) -> list[Any]:
    try:
        doc = json.loads(text, parse_float=JsonNumber)
    except ValueError as exc:  # JSONDecodeError; also an integer over Python's 4,300-digit limit
        raise BadFileError(f"not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise BadFileError("not valid JSON: nested too deeply") from None
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        return doc["records"]
    if isinstance(doc, list):
        return doc
    raise BadFileError('JSON must be a list of objects or {"records": [...]}')


def json_records(items: Iterable[Any]) -> list[RawRecord]:
    out = []
    for no, item in enumerate(items, 1):
        raw = json.dumps(item, ensure_ascii=False, default=str)
        if not isinstance(item, dict):
            out.append(RawRecord(no, {}, raw, f"record is a JSON {type(item).__name__}, not an object"))
            continue
        out.append(RawRecord(no, {field_name(str(k)): v for k, v in item.items()}, raw))
    return out


def csv_records(text: str, required: Collection[str]) -> list[RawRecord]:
    return list(open_csv(io.StringIO(text, newline=""), required))


def open_csv(lines: Iterable[str], required: Collection[str]) -> Iterator[RawRecord]:
    """The records of CSV ``lines`` (each with its line end, as ``io.StringIO(text, newline="")``
    or a text file opened with ``newline=""`` gives them), read as they are asked for.  The header
    is read and checked here: :class:`BadFileError` when it is missing, unreadable, has a column
    twice or lacks a required one.  Holds one record's lines at a time."""
    source = iter(lines)
    first = 0  # blank lines before the header
    for head in source:
        if head.strip():
            break
        first += 1
    else:
        raise BadFileError("no header row")
    delimiter = "\t" if "\t" in head and "," not in head else ","
    taken: list[str] = [head]  # the physical lines the reader has taken and no record has claimed

    def feed() -> Iterator[str]:
        yield head
        for line in source:
            taken.append(line)
            yield line

    reader = csv.reader(feed(), delimiter=delimiter, strict=False)
    try:
        header = [field_name(h) for h in next(reader)]
    except csv.Error as exc:
        raise BadFileError(f"unreadable header row: {exc}") from None
    doubled = sorted({h for h in header if h and header.count(h) > 1})
    if doubled:
        raise BadFileError(f"column(s) given twice in the header: {', '.join(doubled)}")
    missing = [f for f in required if f not in header]
    if missing:
        raise BadFileError(f"missing required column(s) {', '.join(missing)} (header: {', '.join(header)})")
    taken.clear()
    return _csv_rows(reader, taken, header, first + reader.line_num)


def _csv_rows(reader: Any, taken: list[str], header: list[str], done: int) -> Iterator[RawRecord]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a NUL byte: this line is garbage, the next may not be
            start, done = done, done + len(taken)
            yield RawRecord(start + 1, {}, "".join(taken).rstrip("\r\n"), f"unreadable CSV: {exc}")
            taken.clear()
            continue
        start, done = done, done + len(taken)
        raw = "".join(taken).rstrip("\r\n")
        if not row or not any(cell.strip() for cell in row):
            taken.clear()
            continue  # blank line
        no = start + 1 + next(i for i, line in enumerate(taken) if line.strip())
        taken.clear()
        if len(row) != len(header):
            yield RawRecord(no, dict(zip(header, row)), raw, f"{len(row)} fields where the header has {len(header)}")
            continue
        yield RawRecord(no, dict(zip(header, row)), raw)


# --- 3. raw record -> payment / account ------------------------------------------------------------


_GARBLED: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f\ufffd]")  # U+FFFD: bytes that did not decode


def _garbled(value: str) -> bool:
    return _GARBLED.search(value) is not None


#: Fields kept in ledger entries and audit lines, at most :data:`~meterd.control.model.MAX_KEY`
#: characters (as the API takes them: an account imported with a longer name could not be paid).
_KEYS: Final = frozenset(("account", "payment_id"))


def _text(rec: RawRecord, name: str, *, required: bool, label: str | None = None) -> str | None:
    value = rec.fields.get(name)
    label = label or name
    if value is None:
        if required:
            raise RecordError(f"missing {label}")
        return None
    if isinstance(value, (dict, list, bool)):
        raise RecordError(f"{label} must be text, got {json.dumps(value, default=str)[:40]}")
    text = str(value).strip()
    if required and not text:
        raise RecordError(f"empty {label}")
    if name in _KEYS and len(text) > MAX_KEY:
        raise RecordError(f"{label} is {len(text):,} characters, at most {MAX_KEY} ({text[:40]!r}...)")
    return text


def _check_readable(rec: RawRecord) -> None:
    if rec.problem:
        raise RecordError(rec.problem)
    for name, value in rec.fields.items():
        if isinstance(value, str) and _garbled(value):
            raise RecordError(f"garbled text in {name} (undecodable bytes or control characters: wrong encoding?)")


def amount_of(value: Any, limits: AmountLimits = DEFAULT_LIMITS) -> Decimal:
    """A payment amount in yuan by the one amount grammar (:func:`~meterd.control.amounts.parse_payment`):
    no sign, no spaces, at most two decimals, more than zero, at most ``limits.max_payment``.  A
    JSON number counts as the text it was written as; ``true`` or a list is no amount."""
    if value is None:
        raise RecordError("missing amount")
    try:
        return parse_payment(amount_text(value, what="amount", numbers=True), limits, what="amount")
    except AmountError as exc:
        raise RecordError(str(exc)) from None


def moment_of(value: Any, *, now: datetime, zone: tzinfo = CST) -> datetime:
    """A payment time: ISO 8601 or the usual Chinese spreadsheet forms; naive times are the
    site's (``zone``: the billing system's clock is the site's)."""
    text = "" if value is None else str(value).strip()
    if not text or isinstance(value, (bool, dict, list)):
        raise RecordError("missing paid_at")
    norm = text.replace("/", "-")
    try:
        at = datetime.fromisoformat(norm)
    except ValueError:
        for pattern in _DATE_FORMATS:
            try:
                at = datetime.strptime(norm, pattern)
                break
            except ValueError:
                continue
        else:
            raise RecordError(f"bad date {text!r} in paid_at") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    if at > now + FUTURE_SLACK:
        raise RecordError(f"bad date {text!r} in paid_at: later than now ({local_text(now, zone, timespec='minutes')})")
    return at


def opening_of(value: Any) -> Decimal | None:
    """An opening balance in yuan by the amount grammar: signed, zero allowed, at most
    :data:`~meterd.control.amounts.DEFAULT_LIMIT` either way; an empty cell is none."""
    if value is None or value == "":
        return None
    try:
        return parse_amount(amount_text(value, what="opening_balance", numbers=True), signed=True,
                            limit=DEFAULT_LIMIT, what="opening_balance", zero=True)
    except AmountError as exc:
        raise RecordError(str(exc)) from None


def payment_of(rec: RawRecord, *, now: datetime, limits: AmountLimits = DEFAULT_LIMITS,
               zone: tzinfo = CST) -> Payment:
    _check_readable(rec)
    payment_id = _text(rec, "payment_id", required=True, label="payment id")
    account = _text(rec, "account", required=True)
    amount = amount_of(rec.fields.get("amount"), limits)
    paid_at = moment_of(rec.fields.get("paid_at"), now=now, zone=zone)
    channel = _text(rec, "channel", required=False) or ""
    return Payment(payment_id, account, amount, paid_at, channel)  # type: ignore[arg-type]


address_of = address_key  # a meter address as the archive keys it


def multiplier_of(value: Any, meter: str) -> Decimal:
    """CT × PT: a number, or ``ct*pt`` (also ``x`` / ``×``)."""
    text = str(value).strip().lower().replace("×", "*").replace("x", "*")
    try:
        parts = [Decimal(p) for p in text.split("*")] if text else [Decimal(1)]
    except InvalidOperation:
        raise RecordError(f"meter {meter}: multiplier {value!r} is not a number or CT*PT") from None
    result = Decimal(1)
    for p in parts:
        if not p.is_finite() or p <= 0:
            raise RecordError(f"meter {meter}: multiplier {value!r} must be positive")
        result *= p
    return result


def meters_of(value: Any) -> dict[str, Decimal]:
    """``"addr:ct*pt;addr2"`` (also ``,`` or ``；``), a JSON list of ``{meter, multiplier}`` or of
    such strings, as text or as JSON."""
    if value is None:
        raise RecordError("missing meters")
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise RecordError(f"meters: not a valid JSON list ({exc})") from None
    items: list[tuple[str, Any]] = []
    if isinstance(value, str):
        for part in value.replace("；", ";").replace(",", ";").split(";"):
            if part.strip():
                meter, _, mult = part.partition(":")
                items.append((meter, mult))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("meter"), (str, int)) and not isinstance(
                    item.get("meter"), bool):
                items.append((str(item["meter"]), item.get("multiplier", "")))
            elif isinstance(item, str):
                meter, _, mult = item.partition(":")
                items.append((meter, mult))
            else:
                raise RecordError(f"meters: {json.dumps(item, default=str)[:60]} is not {{meter, multiplier}}")
    else:
        raise RecordError(f"meters: {value!r} is neither text nor a list")
    meters: dict[str, Decimal] = {}
    for meter, mult in items:
        address = address_of(meter)
        if not address or any(c.isspace() for c in address) or _garbled(address):
            raise RecordError(f"meters: bad meter address {meter!r}")
        if address in meters:
            raise RecordError(f"meters: meter {address} listed twice")
        meters[address] = multiplier_of("" if mult is None else mult, address)
    return meters


def flag_of(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise RecordError(f"{name} {value!r} is not yes/no")


def account_of(rec: RawRecord, *, known_tariffs: Collection[str]) -> AccountRecord:
    _check_readable(rec)
    account = _text(rec, "account", required=True)
    tariff = _text(rec, "tariff", required=True)
    if tariff not in known_tariffs:
        raise RecordError(f"unknown tariff {tariff!r}" + (f" (known: {', '.join(sorted(known_tariffs))})"
                                                          if known_tariffs else " (no tariffs are configured)"))
    meters = meters_of(rec.fields.get("meters"))
    protected = flag_of(rec.fields["protected"], "protected") if "protected" in rec.fields else None
    opening = opening_of(rec.fields.get("opening_balance"))
    activate = flag_of(rec.fields["activate"], "activate") if "activate" in rec.fields else None
    return AccountRecord(account, tariff, meters, customer=_text(rec, "customer", required=False),  # type: ignore
                         area=_text(rec, "area", required=False), protected=protected, opening_balance=opening,
                         activate=activate)


class Conflicts:
    """Within one import: an account given twice, or a meter given to two accounts.  The first
    record wins; :meth:`check` gives a later one's reason.  Holds the accounts and meters seen."""

    def __init__(self) -> None:
        self.accounts: dict[str, int] = {}
        self.meters: dict[str, tuple[str, int]] = {}

    def check(self, no: int, rec: AccountRecord) -> str | None:
        if rec.account in self.accounts:
            first = self.accounts[rec.account]
            return f"account {rec.account} appears again in this import (first at record {first})"
        clash = next(((m, self.meters[m]) for m in rec.meters if m in self.meters), None)
        if clash is not None:
            m, (other, at) = clash
            return f"meter {m} is also given to account {other} in this import (record {at})"
        self.accounts[rec.account] = no
        self.meters.update({m: (rec.account, no) for m in rec.meters})
        return None


def import_conflicts(records: Iterable[tuple[int, AccountRecord]]) -> dict[int, str]:
    """:class:`Conflicts` of a whole import: record number -> reason of those refused."""
    conflicts = Conflicts()
    return {no: reason for no, rec in records if (reason := conflicts.check(no, rec)) is not None}
