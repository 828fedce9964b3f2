"""The durable spool: order, acknowledgement, segment deletion, torn and corrupt records, locking."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.storage.spool import MAGIC, Spool, SpoolBatch, SpoolLockedError, encode_record


def lines(n: int, start: int = 0) -> list[bytes]:
    return [f"line {i}".encode() for i in range(start, start + n)]


def drain(spool: Spool, max_records: int = 5000) -> list[bytes]:
    """Everything waiting, acked batch by batch."""
    out: list[bytes] = []
    for batch in spool.batches(max_records=max_records):
        out += batch.lines
        spool.ack(batch)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_come_back_in_order_and_ack_deletes_the_segment(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(3))
        spool.append(lines(4, start=3))
        assert spool.size() == (7, sum(len(encode_record(x)) for x in lines(7)))
        batches = list(spool.batches(max_records=3))
        assert [b.lines for b in batches] == [lines(3), lines(3, start=3), lines(1, start=6)]
        assert len(segments(tmp_path)) == 1
        spool.ack(batches[0])
        assert spool.records == 4
        spool.ack(batches[1])
        assert len(segments(tmp_path)) == 1  # not everything in it is delivered yet
        spool.ack(batches[2])
        assert spool.size() == (0, 0)
        assert segments(tmp_path) == []
        # Appending after the active segment was deleted starts a new one.
        spool.append(lines(2, start=100))
        assert drain(spool) == lines(2, start=100)


def test_bytes_counts_unacknowledged_record_bytes(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(5))
        expected = sum(len(encode_record(x)) for x in lines(5))
        assert spool.size_bytes == expected
        first = next(spool.batches(max_records=2))
        spool.ack(first)
        assert spool.size_bytes == expected - sum(len(encode_record(x)) for x in lines(2))


def test_an_unacknowledged_batch_is_offered_again(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(5))
        first = next(spool.batches(max_records=2))
        assert first.lines == lines(2)  # "delivery failed": no ack
        assert drain(spool, max_records=2) == lines(5)


def test_acks_go_in_order_and_a_repeated_ack_is_harmless(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(4))
        a, b = list(spool.batches(max_records=2))
        with pytest.raises(ValueError, match="out of order"):
            spool.ack(b)
        spool.ack(a)
        spool.ack(a)
        assert spool.records == 2
        spool.ack(b)
        assert spool.records == 0


def test_records_survive_reopening_and_a_new_run_appends_to_a_new_segment(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(3))
    with Spool(tmp_path) as spool:
        assert spool.size()[0] == 3
        spool.append(lines(2, start=3))
        assert len(segments(tmp_path)) == 2
        assert drain(spool) == lines(5)
        assert segments(tmp_path) == []


def test_segments_rotate_and_only_fully_acknowledged_ones_are_deleted(tmp_path):
    big = [b"x" * 600, b"y" * 600, b"z" * 600, b"w" * 600]
    with Spool(tmp_path, segment_bytes=1024) as spool:
        for line in big:
            spool.append([line])
        assert len(segments(tmp_path)) == 2  # rotated once the first passed 1024 bytes
        batches = list(spool.batches(max_records=1))
        assert [b.lines[0] for b in batches] == big
        assert batches[0].segment == batches[1].segment != batches[2].segment
        spool.ack(batches[0])
        assert len(segments(tmp_path)) == 2
        spool.ack(batches[1])
        assert len(segments(tmp_path)) == 1
        spool.ack(batches[2])
        spool.ack(batches[3])
        assert segments(tmp_path) == []


def test_records_appended_while_iterating_are_included(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(2))
        seen: list[bytes] = []
        for batch in spool.batches(max_records=1):
            seen += batch.lines
            spool.ack(batch)
            if len(seen) == 1:
                spool.append(lines(1, start=2))
        assert seen == lines(3)


def test_a_torn_last_record_is_logged_and_skipped(tmp_path, caplog):
    with Spool(tmp_path) as spool:
        spool.append(lines(3))
        spool.append([b"the record a crash tore"])
    (seg,) = segments(tmp_path)
    seg.write_bytes(seg.read_bytes()[:-5])  # the last write never completed
    with caplog.at_level(logging.WARNING, logger="meterd.storage.spool"):
        spool = Spool(tmp_path)
    with spool:
        assert "failed its checksum, at the end" in caplog.text
        assert spool.records == 3
        assert drain(spool) == lines(3)
        assert segments(tmp_path) == []  # the torn bytes went with the acknowledged segment
    assert caplog.text.count("failed its checksum") == 1  # logged once, not again on replay


def test_zeros_after_a_crash_are_skipped(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(lines(2))
    (seg,) = segments(tmp_path)
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)  # the file system extended the file but never wrote the data
    with Spool(tmp_path) as spool:
        assert drain(spool) == lines(2)


def test_a_corrupt_record_in_the_middle_costs_only_that_record(tmp_path, caplog):
    with Spool(tmp_path) as spool:
        spool.append(lines(5))
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    third = len(MAGIC) + sum(len(encode_record(x)) for x in lines(2))
    data[third + 9] ^= 0xFF  # a payload byte of "line 2"
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="meterd.storage.spool"):
        spool = Spool(tmp_path)
    with spool:
        assert "in the middle (corruption)" in caplog.text
        assert spool.records == 4
        assert drain(spool) == lines(2) + lines(2, start=3)


def test_a_segment_without_a_valid_header_is_garbage_to_acknowledge(tmp_path):
    (tmp_path / f"{1:020d}.seg").write_bytes(b"MDS")  # crashed while creating the segment
    (tmp_path / f"{2:020d}.seg").write_bytes(b"")
    with Spool(tmp_path) as spool:
        assert spool.records == 0
        batches = list(spool.batches())
        assert batches == [SpoolBatch(1, 0, 3, [])]
        spool.ack(batches[0])
        assert segments(tmp_path) == []


def test_other_files_in_the_directory_are_left_alone(tmp_path):
    (tmp_path / "rejected.jsonl").write_text("{}\n")
    with Spool(tmp_path) as spool:
        spool.append(lines(1))
        assert drain(spool) == lines(1)
    assert (tmp_path / "rejected.jsonl").read_text() == "{}\n"


def test_one_spool_per_directory(tmp_path):
    with Spool(tmp_path):
        with pytest.raises(SpoolLockedError, match="already open"):
            Spool(tmp_path)
    Spool(tmp_path).close()  # free again once closed


def test_a_failed_append_leaves_no_partial_record(tmp_path, monkeypatch):
    real_write = os.write
    with Spool(tmp_path) as spool:
        spool.append(lines(2))

        def half_then_enospc(fd: int, data) -> int:
            if len(data) > 8:  # the record batch, not the segment header
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", half_then_enospc)
        with pytest.raises(OSError):
            spool.append(lines(3, start=2))
        monkeypatch.setattr(os, "write", real_write)
        assert spool.records == 2
        spool.append(lines(1, start=5))
    with Spool(tmp_path) as spool:
        assert drain(spool) == lines(2) + lines(1, start=5)


def test_closed_spool_refuses_work(tmp_path):
    spool = Spool(tmp_path)
    spool.close()
    spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        spool.append(lines(1))


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), min_size=1, max_size=6),
    cut=st.integers(min_value=0, max_value=10_000),
)
def test_any_truncation_replays_exactly_the_complete_records(records, cut):
    """Whatever point a crash cut the file at, every complete record before it comes back."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with Spool(directory) as spool:
            for appended in records:
                spool.append(appended)
        (seg,) = segments(directory)
        data = seg.read_bytes()
        cut = min(cut, len(data))
        seg.write_bytes(data[:cut])
        expected: list[bytes] = []
        pos = len(MAGIC)
        for line in [line for appended in records for line in appended]:
            pos += len(encode_record(line))
            if pos <= cut:
                expected.append(line)
        logging.disable(logging.WARNING)
        try:
            with Spool(directory) as spool:
                assert spool.records == len(expected)
                assert drain(spool, max_records=3) == expected
                assert segments(directory) == []
        finally:
            logging.disable(logging.NOTSET)
