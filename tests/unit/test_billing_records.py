"""Billing records, pure: encodings (UTF-8, BOM, GBK, garbage), CSV and JSON shapes, and every
kind of bad payment or account record with the reason it is quarantined."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.billing_link.exports import pending_days, reading_rows, render
from meterd.billing_link.records import (
    ACCOUNT_FIELDS,
    PAYMENT_FIELDS,
    BadFileError,
    RawRecord,
    RecordError,
    account_of,
    amount_of,
    decode_text,
    import_conflicts,
    meters_of,
    moment_of,
    parse_records,
    payment_of,
)
from meterd.control.amounts import AmountLimits, JsonNumber
from meterd.clock import CST
from meterd.errors import SyncError

NOW = datetime(2026, 3, 1, 4, 0, tzinfo=timezone.utc)  # 12:00 CST
HEADER = "payment_id,account,amount,paid_at,channel\n"


def rec(**fields) -> RawRecord:
    return RawRecord(2, fields, json.dumps(fields, ensure_ascii=False))


def good_payment(**over) -> RawRecord:
    return rec(**{"payment_id": "P1", "account": "A1001", "amount": "100.50", "paid_at": "2026-03-01 09:30:00",
                  "channel": "wechat", **over})


# --- decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, text, encoding", [
    ("户号,金额\n".encode("utf-8"), "户号,金额\n", "utf-8"),
    (b"\xef\xbb\xbf" + "户号,金额\n".encode("utf-8"), "户号,金额\n", "utf-8-sig"),
    ("户号,金额\n张三\n".encode("gbk"), "户号,金额\n张三\n", "gb18030"),
    ("户号,金额\n𠀀\n".encode("gb18030"), "户号,金额\n𠀀\n", "gb18030"),  # beyond GBK
    (b"account,amount\nA1,1\n", "account,amount\nA1,1\n", "utf-8"),
])
def test_decode_detects_the_encoding(data, text, encoding):
    assert decode_text(data) == (text, encoding)


def test_a_utf8_file_with_one_gbk_line_stays_utf8_and_marks_that_line():
    data = "户号,客户名称\nA1,张三\nA3,王五\n".encode("utf-8") + "A2,李四\n".encode("gbk")
    text, encoding = decode_text(data)
    assert encoding == "utf-8+garbled"
    lines = text.splitlines()
    assert lines[:3] == ["户号,客户名称", "A1,张三", "A3,王五"] and "\ufffd" in lines[3]


def test_a_gbk_file_whose_lines_happen_to_be_valid_utf8_is_read_whole_as_gb18030():
    # 郑伟 is D6A3 CEB0 in GBK, which is also valid UTF-8 (Hebrew and Greek letters); 专业 too.
    # Before: those lines were read as UTF-8, the others replaced, and the file quarantined whole.
    rows = ["户号,客户名称", "A1,郑伟", "A2,郑强", "A3,专业", "A4,张三"]
    data = "\n".join(rows).encode("gbk") + b"\n"
    assert sum(1 for line in data.splitlines() if not line.isascii() and _utf8(line)) == 3
    assert decode_text(data) == ("\n".join(rows) + "\n", "gb18030")


def test_a_utf8_file_with_one_bad_line_that_is_valid_gb18030_as_a_whole_stays_utf8():
    rows = ["户号,客户名称,备注", "A1,张三,缴费", "A2,王五,电费", "A3,赵六,余额"]
    data = "\n".join(rows).encode("utf-8") + b"\nA4,\xc4\xe3\n"  # one GBK-ish line
    assert _valid_gb(data), "the case under test: the whole file reads as GB18030 too"
    text, encoding = decode_text(data)
    assert encoding == "utf-8+garbled" and text.splitlines()[:4] == rows and "\ufffd" in text.splitlines()[4]


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _valid_gb(data: bytes) -> bool:
    try:
        data.decode("gb18030")
    except UnicodeDecodeError:
        return False
    return True


def test_bytes_neither_utf8_nor_gb18030_are_replaced_never_raised():
    text, encoding = decode_text(b"account,amount\nA1,\xff\xfe\x80\n")
    assert encoding.endswith("+garbled") and "\ufffd" in text


# --- files --------------------------------------------------------------------------------------------


def test_csv_gbk_with_chinese_headers_maps_to_fields():
    data = "缴费流水号,户号,缴费金额,缴费时间,缴费渠道\nP1,A1,10.00,2026/3/1 9:05:00,柜台\n".encode("gbk")
    batch = parse_records(data, "csv", PAYMENT_FIELDS)
    assert batch.encoding == "gb18030" and batch.format == "csv"
    [r] = batch.records
    assert r.no == 2 and r.fields["channel"] == "柜台"
    p = payment_of(r, now=NOW)
    assert p.amount == Decimal("10.00") and p.paid_at == datetime(2026, 3, 1, 9, 5, tzinfo=CST)


def test_csv_utf8_bom_and_crlf_and_blank_lines_and_quoted_newline():
    text = HEADER.replace("\n", "\r\n") + 'P1,A1,1,2026-03-01,"two\r\nlines"\r\n\r\nP2,A1,2,2026-03-01,\r\n'
    batch = parse_records(b"\xef\xbb\xbf" + text.encode(), "csv", PAYMENT_FIELDS)
    assert batch.encoding == "utf-8-sig"
    assert [(r.no, r.fields["payment_id"]) for r in batch.records] == [(2, "P1"), (5, "P2")]
    assert batch.records[0].fields["channel"] == "two\r\nlines"


def test_csv_tab_separated_header():
    batch = parse_records(b"payment_id\taccount\tamount\tpaid_at\nP1\tA1\t5\t2026-03-01\n", "csv", PAYMENT_FIELDS)
    assert batch.records[0].fields["amount"] == "5"


def test_csv_row_with_the_wrong_field_count_is_a_bad_record_not_a_bad_file():
    batch = parse_records((HEADER + "P1,A1,1\nP2,A1,1,2026-03-01,x\n").encode(), "csv", PAYMENT_FIELDS)
    assert batch.records[0].problem == "3 fields where the header has 5"
    with pytest.raises(RecordError, match="3 fields"):
        payment_of(batch.records[0], now=NOW)
    assert payment_of(batch.records[1], now=NOW).payment_id == "P2"


@pytest.mark.parametrize("data, fmt, reason", [
    (b"", "csv", "empty file"),
    (b"\n\n  \n", "csv", "empty file"),
    (b"account,amount\nA1,1\n", "csv", "missing required column(s) payment_id, paid_at"),
    (b"payment_id,account,amount,paid_at,amount\n", "csv", "column(s) given twice in the header: amount"),
    (b'[{"payment_id": "P1",', "json", "not valid JSON"),
    (b'{"items": []}', "json", 'JSON must be a list of objects or {"records": [...]}'),
    (b'"just a string"', "json", "JSON must be a list"),
    (b"a,b", "xml", "unknown format"),
])
def test_unreadable_files(data, fmt, reason):
    with pytest.raises(BadFileError) as err:
        parse_records(data, fmt, PAYMENT_FIELDS)
    assert reason in err.value.reason
    assert isinstance(err.value, SyncError)


@pytest.mark.parametrize("doc", [
    [{"payment_id": "P1", "account": "A1", "amount": 10.1, "paid_at": "2026-03-01T09:00:00+08:00"}],
    {"records": [{"payment_id": "P1", "account": "A1", "amount": 10.1, "paid_at": "2026-03-01T09:00:00+08:00"}],
     "next": None},
])
def test_json_shapes_and_exact_numbers(doc):
    batch = parse_records(json.dumps(doc).encode(), "json", PAYMENT_FIELDS)
    [r] = batch.records
    p = payment_of(r, now=NOW)
    assert p.amount == Decimal("10.1") and isinstance(p.amount, Decimal)  # never a float


def test_json_elements_that_are_not_objects_are_bad_records():
    batch = parse_records(b'[1, "x", {"payment_id": "P1"}]', "json", PAYMENT_FIELDS)
    assert [r.problem for r in batch.records] == ["record is a JSON int, not an object",
                                                 "record is a JSON str, not an object", None]
    with pytest.raises(RecordError, match="missing account"):
        payment_of(batch.records[2], now=NOW)


# --- payments -------------------------------------------------------------------------------------------


def test_a_good_payment():
    p = payment_of(good_payment(), now=NOW)
    assert (p.payment_id, p.account, p.amount, p.channel) == ("P1", "A1001", Decimal("100.50"), "wechat")
    assert p.paid_at == datetime(2026, 3, 1, 9, 30, tzinfo=CST)  # naive means CST


@pytest.mark.parametrize("over, reason", [
    ({"payment_id": ""}, "empty payment id"),
    ({"payment_id": "   "}, "empty payment id"),
    ({"account": ""}, "empty account"),
    ({"amount": "abc"}, 'amount "abc" refused: it is not an amount'),
    ({"amount": "1,000.00"}, "separators"),
    ({"amount": "NaN"}, "NaN and infinity"),
    ({"amount": "Infinity"}, "NaN and infinity"),
    ({"amount": "-5"}, 'amount "-5" refused: it takes no sign'),
    ({"amount": "0"}, "zero is not an amount"),
    ({"amount": "0.00"}, "zero is not an amount"),
    ({"amount": "10.001"}, "more than two decimals"),
    ({"amount": "10.500"}, "more than two decimals"),
    ({"amount": "1e-3"}, "exponent"),
    ({"amount": "1e30"}, "exponent"),
    ({"amount": ""}, 'amount "" refused: it is empty'),
    ({"amount": True}, "not a true/false"),
    # issue #14: each of these was applied before (the first drove the balance past int64)
    ({"amount": "92233720368547758.07"}, "more than the limit of 1000000 yuan (set by [prepaid] max_payment)"),
    ({"amount": "100000000"}, "more than the limit of 1000000 yuan"),
    ({"amount": "1e3"}, "exponent"),
    ({"amount": "1E+2"}, "exponent"),
    ({"amount": "1_000"}, "separators"),
    ({"amount": "１０"}, "FULLWIDTH DIGIT ONE"),
    ({"amount": "١٠"}, "ARABIC-INDIC DIGIT ONE"),
    ({"amount": "+10"}, "takes no sign"),
    ({"amount": "-0"}, "takes no sign"),
    ({"amount": " 10"}, "whitespace"),
    ({"amount": "10 "}, "whitespace"),
    ({"amount": ".5"}, "before the point"),
    ({"amount": "10."}, "after the point"),
    ({"amount": "9" * 10_000}, "longer than 24 characters"),
    ({"amount": 10.5}, "floating-point"),  # never from parse_records (JSON numbers come as JsonNumber)
    ({"paid_at": "yesterday"}, "bad date 'yesterday'"),
    ({"paid_at": "2026-02-30 10:00"}, "bad date"),
    ({"paid_at": "2026-03-05 10:00"}, "later than now"),
    ({"paid_at": ""}, "missing paid_at"),
    ({"account": "A1\ufffd"}, "garbled text in account"),
    ({"channel": "柜\x01台"}, "garbled text in channel"),
])
def test_bad_payments(over, reason):
    with pytest.raises(RecordError) as err:
        payment_of(good_payment(**over), now=NOW)
    assert reason in str(err.value)


def test_an_account_name_or_payment_id_longer_than_the_api_takes_is_refused():
    """The API refuses an account or ref over 200 characters; an account imported with a longer
    name could never have been paid through it, and a 60 KB ref went into the ledger and the audit."""
    assert payment_of(good_payment(account="户" * 200, payment_id="P" * 200), now=NOW).account == "户" * 200
    for field, label in (("account", "account"), ("payment_id", "payment id")):
        with pytest.raises(RecordError, match=f"{label} is 201 characters, at most 200"):
            payment_of(good_payment(**{field: "户" * 201}), now=NOW)
    with pytest.raises(RecordError, match="account is 60,000 characters, at most 200"):
        account_of(rec(account="A" * 60_000, tariff="res", meters="000000000001"), known_tariffs={"res"})


@pytest.mark.parametrize("missing", ["payment_id", "account", "amount", "paid_at"])
def test_missing_payment_fields(missing):
    fields = dict(good_payment().fields)
    del fields[missing]
    with pytest.raises(RecordError, match="missing"):
        payment_of(rec(**fields), now=NOW)


@pytest.mark.parametrize("value, expected", [
    ("10", Decimal("10")), ("10.5", Decimal("10.5")), ("10.50", Decimal("10.50")), ("1000000", Decimal(1_000_000)),
    (Decimal("3.10"), Decimal("3.10")), (5, Decimal(5)), (JsonNumber("7.25"), Decimal("7.25")),
])
def test_good_amounts(value, expected):
    assert amount_of(value) == expected and amount_of(value).as_tuple().exponent == -2


def test_the_payment_limit_is_the_sites():
    limits = AmountLimits(max_payment=Decimal(500))
    assert amount_of("500", limits) == 500
    with pytest.raises(RecordError, match=r"more than the limit of 500 yuan \(set by \[prepaid\] max_payment\)"):
        payment_of(good_payment(amount="500.01"), now=NOW, limits=limits)


@pytest.mark.parametrize("literal, says", [("1e3", "exponent"), ("1.5e1", "exponent"), ("10.500", "two decimals"),
                                           ("1" * 30, "longer than")])
def test_json_numbers_are_amounts_only_as_written(literal, says):
    batch = parse_records(('[{"payment_id": "P1", "account": "A1", "amount": %s, "paid_at": "2026-03-01"}]'
                           % literal).encode(), "json", PAYMENT_FIELDS)
    with pytest.raises(RecordError, match=says):
        payment_of(batch.records[0], now=NOW)


def test_an_integer_too_long_for_python_is_a_bad_file_not_a_crash():
    data = ('[{"payment_id": "P1", "account": "A1", "amount": %s, "paid_at": "2026-03-01"}]' % ("9" * 5000)).encode()
    with pytest.raises(BadFileError, match="not valid JSON"):
        parse_records(data, "json", PAYMENT_FIELDS)


@pytest.mark.parametrize("text, expected", [
    ("2026-03-01T09:00:00+08:00", datetime(2026, 3, 1, 1, 0, tzinfo=timezone.utc)),
    ("2026-03-01T01:00:00Z", datetime(2026, 3, 1, 1, 0, tzinfo=timezone.utc)),
    ("2026-03-01 09:00:00", datetime(2026, 3, 1, 9, 0, tzinfo=CST)),
    ("2026/03/01 09:00", datetime(2026, 3, 1, 9, 0, tzinfo=CST)),
    ("2026/3/1 9:00:00", datetime(2026, 3, 1, 9, 0, tzinfo=CST)),
    ("20260301090000", datetime(2026, 3, 1, 9, 0, tzinfo=CST)),
    ("2026-03-01", datetime(2026, 3, 1, tzinfo=CST)),
])
def test_payment_times(text, expected):
    assert moment_of(text, now=NOW) == expected


def test_a_payment_dated_a_little_ahead_is_accepted():
    assert moment_of((NOW + timedelta(hours=20)).isoformat(), now=NOW) == NOW + timedelta(hours=20)


# --- accounts -------------------------------------------------------------------------------------------

TARIFFS = ("residential", "commercial-tou")


def account_rec(**over) -> RawRecord:
    return rec(**{"account": "A1001", "customer": "张三", "area": "TA-001", "tariff": "residential",
                  "meters": "000000000001:50*1;2", "protected": "0", **over})


def test_a_good_account():
    a = account_of(account_rec(), known_tariffs=TARIFFS)
    assert a.account == "A1001" and a.customer == "张三" and a.protected is False
    assert a.meters == {"000000000001": Decimal(50), "000000000002": Decimal(1)}


@pytest.mark.parametrize("meters, expected", [
    ("", {}),
    ("1", {"000000000001": Decimal(1)}),
    ("000000000001:80", {"000000000001": Decimal(80)}),
    ("1:200*10；2:1x1", {"000000000001": Decimal(2000), "000000000002": Decimal(1)}),
    ("1:50×2, 3", {"000000000001": Decimal(100), "000000000003": Decimal(1)}),
    ('[{"meter": "000000000001", "multiplier": "80"}, {"meter": 2}]',
     {"000000000001": Decimal(80), "000000000002": Decimal(1)}),
    ([{"meter": "000000000001", "multiplier": 1.5}], {"000000000001": Decimal("1.5")}),
    (["1:40*1", "MB-7"], {"000000000001": Decimal(40), "MB-7": Decimal(1)}),
])
def test_meter_lists(meters, expected):
    assert meters_of(meters) == expected


@pytest.mark.parametrize("over, reason", [
    ({"tariff": "industrial"}, "unknown tariff 'industrial' (known: commercial-tou, residential)"),
    ({"tariff": ""}, "empty tariff"),
    ({"account": ""}, "empty account"),
    ({"meters": "1:abc"}, "multiplier 'abc' is not a number"),
    ({"meters": "1:0"}, "must be positive"),
    ({"meters": "1:-5*1"}, "must be positive"),
    ({"meters": "1;000000000001"}, "listed twice"),
    ({"meters": "[{\"meter\": "}, "not a valid JSON list"),
    ({"meters": [{"multiplier": 2}]}, "is not {meter, multiplier}"),
    ({"meters": 17}, "neither text nor a list"),
    ({"protected": "maybe"}, "protected 'maybe' is not yes/no"),
    ({"customer": "\ufffd\ufffd"}, "garbled text in customer"),
])
def test_bad_accounts(over, reason):
    with pytest.raises(RecordError) as err:
        account_of(account_rec(**over), known_tariffs=TARIFFS)
    assert reason in str(err.value)


def test_missing_account_fields_and_no_tariffs_configured():
    fields = dict(account_rec().fields)
    del fields["meters"]
    with pytest.raises(RecordError, match="missing meters"):
        account_of(rec(**fields), known_tariffs=TARIFFS)
    with pytest.raises(RecordError, match="no tariffs are configured"):
        account_of(account_rec(), known_tariffs=())


def test_fields_a_file_does_not_carry_are_none_not_empty():
    a = account_of(rec(account="A1", tariff="residential", meters="1"), known_tariffs=TARIFFS)
    assert (a.customer, a.area, a.protected) == (None, None, None)
    b = account_of(account_rec(area="", protected="是"), known_tariffs=TARIFFS)
    assert (b.area, b.protected) == ("", True)


def test_conflicts_inside_one_import_refuse_the_later_record():
    a = account_of(account_rec(), known_tariffs=TARIFFS)
    again = account_of(account_rec(customer="other"), known_tariffs=TARIFFS)
    thief = account_of(account_rec(account="A2", meters="2"), known_tariffs=TARIFFS)
    fine = account_of(account_rec(account="A3", meters="3"), known_tariffs=TARIFFS)
    assert import_conflicts([(2, a), (3, again), (4, thief), (5, fine)]) == {
        3: "account A1001 appears again in this import (first at record 2)",
        4: "meter 000000000002 is also given to account A1001 in this import (record 2)",
    }


def test_account_csv_requires_its_columns():
    with pytest.raises(BadFileError, match="missing required column"):
        parse_records(b"account,customer\nA1,x\n", "csv", ACCOUNT_FIELDS)


# --- export rows ----------------------------------------------------------------------------------------


def test_reading_rows_list_every_account_and_never_drop_missing():
    values = {("000000000001", "ok"): Decimal("1234.56"), ("000000000002", "ok"): (Decimal("7.00"), True)}
    day = NOW.date()

    def register_of(meter, d):
        assert d == day
        return values.get((meter, "ok"))

    rows = reading_rows([("A1", ["000000000002", "000000000001"]), ("A2", ["000000000009"]), ("A3", [])], day,
                        register_of)
    assert [(r["account"], r["meter"], r["register_kwh"], r["estimated"], r["status"]) for r in rows] == [
        ("A1", "000000000001", Decimal("1234.56"), None, "ok"),
        ("A1", "000000000002", Decimal("7.00"), True, "ok"),
        ("A2", "000000000009", None, None, "missing"),
        ("A3", "", None, None, "missing"),
    ]
    csv_text = render(rows, ("account", "meter", "day", "register_kwh", "estimated", "status"), "csv", {})
    assert csv_text.splitlines()[1:] == ["A1,000000000001,2026-03-01,1234.56,,ok",
                                         "A1,000000000002,2026-03-01,7.00,1,ok",
                                         "A2,000000000009,2026-03-01,,,missing", "A3,,2026-03-01,,,missing"]


def test_pending_days():
    today = NOW.date()
    assert pending_days(None, today) == [today]
    assert pending_days(today.isoformat(), today) == []
    assert pending_days((today - timedelta(days=3)).isoformat(), today) == [today - timedelta(days=2),
                                                                            today - timedelta(days=1), today]
    assert len(pending_days("2025-01-01", today)) == 31


# --- anything at all ------------------------------------------------------------------------------------

PREFIXES = st.sampled_from([b"", HEADER.encode(), "户号,缴费流水号,金额,缴费时间\n".encode("gbk"), b"[", b'{"records": ['])


@settings(max_examples=300, deadline=None)
@given(prefix=PREFIXES, body=st.binary(max_size=300), fmt=st.sampled_from(["csv", "json"]))
def test_arbitrary_bytes_raise_only_our_own_errors(prefix, body, fmt):
    try:
        batch = parse_records(prefix + body, fmt, PAYMENT_FIELDS)
    except BadFileError:
        return
    for r in batch.records:
        for check in (lambda: payment_of(r, now=NOW), lambda: account_of(r, known_tariffs=TARIFFS)):
            try:
                check()
            except RecordError:
                pass
