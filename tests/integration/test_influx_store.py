"""InfluxStore against a real line-protocol server: VictoriaMetrics' InfluxDB v2 write API.

VictoriaMetrics (Debian package ``victoria-metrics``) accepts ``/api/v2/write`` line protocol and
exports what it stored through ``/api/v1/export``; it names series ``<measurement>_<field>``
(``reading_value``) and keeps numeric fields only (strings come back as 0).  Unlike InfluxDB it
does not replace a point written twice -- it keeps both samples -- which is what lets these tests
see that a replay delivered every reading exactly once.

Each test starts its own server on a free port with its own data directory and stops it after.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import free_port

from meterd.readings import Quality, Reading
from meterd.storage.influx import InfluxStore, encode_reading, meter_tags
from meterd.storage.sqlite import Attempt, SqliteStore
from meterd.storage.writer import BatchWriter

BASE = datetime(2024, 3, 1, tzinfo=timezone.utc)
MAX_LINE = 65536  # the servers' -influx.maxLineSize; a line of twice that is refused with HTTP 400


# --- the server --------------------------------------------------------------------------------


class VictoriaMetrics:
    """One victoria-metrics process; ``start`` again after ``stop`` keeps port and data."""

    def __init__(self, binary: str, data_dir: Path, port: int) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.with_suffix(".log")

    def start(self) -> VictoriaMetrics:
        assert self.proc is None
        args = [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",  # the default (1 month) drops older points silently
            f"-influx.maxLineSize={MAX_LINE}",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"victoria-metrics exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"victoria-metrics did not answer /health within 15 s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def export(self, match: str) -> list[dict]:
        """Every stored sample of the series matching ``match``, duplicates included."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10):
            pass  # make just-written samples searchable
        # export ends at "now" (whole seconds) by default: ask past it so fresh points show
        query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": str(int(time.time()) + 86400)})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    def samples(self, meter: str, field: str = "value") -> dict[str, list[tuple[int, float]]]:
        """quantity -> [(ms, value), ...] sorted by time, for ``reading_<field>`` of ``meter``."""
        out: dict[str, list[tuple[int, float]]] = {}
        for series in self.export(f'{{__name__="reading_{field}",meter="{meter}"}}'):
            pairs = list(zip(series["timestamps"], series["values"]))
            out.setdefault(series["metric"]["quantity"], []).extend(pairs)
        return {q: sorted(v) for q, v in out.items()}


@pytest.fixture
def victoria(tmp_path):
    """A factory of VictoriaMetrics servers (not started); all stopped at the end of the test."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail(
            "the victoria-metrics binary is not installed; these tests need a real line-protocol server."
            " .ci/run must install it: apt-get update && apt-get install -y victoria-metrics"
        )
    servers: list[VictoriaMetrics] = []

    def make(port: int | None = None) -> VictoriaMetrics:
        server = VictoriaMetrics(binary, tmp_path / f"vm{len(servers)}", port or free_port())
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_for(url: str, spool_dir: Path, **kwargs) -> InfluxStore:
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("keep_free", 0)  # the spool tests do not depend on the free space of the machine's disk
    return InfluxStore(url, "meterd", "readings", "test-token", spool_dir, **kwargs)


def energy(meter: str, n: int, start: int = 0) -> list[Reading]:
    """n readings of one series, one second apart, value = index (exact decimals)."""
    quantity = "energy.active.import.total"
    return [
        Reading(meter, quantity, BASE + timedelta(seconds=i), Decimal(i) / 100 + Decimal("1000.00"), "kWh")
        for i in range(start, start + n)
    ]


def expected_samples(n: int, start: int = 0) -> list[tuple[int, float]]:
    base_ms = int(BASE.timestamp()) * 1000
    return [(base_ms + i * 1000, float(Decimal(i) / 100 + Decimal("1000.00"))) for i in range(start, start + n)]


def spy_posts(store: InfluxStore) -> list[list[bytes]]:
    """Record the lines of every request the store makes, in order."""
    posts: list[list[bytes]] = []
    real = store._write_api.write

    def write(*args, **kwargs):
        posts.append(kwargs["record"].split(b"\n"))
        return real(*args, **kwargs)

    store._write_api.write = write  # type: ignore[method-assign]
    return posts


# --- encoding (no server) ----------------------------------------------------------------------


def test_line_protocol_for_every_kind_of_value():
    ts = BASE  # 1709251200000 ms
    place = meter_tags({"area": "TA-001", "group": "north", "channel": "bus 1", "role": "sales"})
    # Tags sorted by key; the unit is a tag; the value alone when a float holds it exactly.
    assert encode_reading(Reading("000000000001", "energy.active.import.total", ts, Decimal("12345.60"), "kWh"),
                          place) == (
        b"reading,area=TA-001,channel=bus\\ 1,group=north,meter=000000000001,quantity=energy.active.import.total,"
        b'role=sales,unit=kWh value=12345.6,quality="good" 1709251200000'
    )
    assert encode_reading(Reading("m", "relay.open", ts, True, quality=Quality.SUSPECT)) == (
        b'reading,meter=m,quantity=relay.open value=1.0,state=true,quality="suspect" 1709251200000'
    )
    assert encode_reading(Reading("m", "status", ts, 7)) == (
        b'reading,meter=m,quantity=status value=7.0,quality="good" 1709251200000'
    )
    assert encode_reading(Reading("m", "clock", ts, datetime(2024, 2, 29, 23, 59, 58))) == (
        b'reading,meter=m,quantity=clock time_value="2024-02-29T23:59:58",quality="good" 1709251200000'
    )
    assert encode_reading(Reading("m", "model", ts, 'DDS "1"\\x\n', quality=Quality.ESTIMATED)) == (
        b'reading,meter=m,quantity=model text="DDS \\"1\\"\\\\x\\n",quality="estimated" 1709251200000'
    )
    # Tags escape separators; NaN has no float field but keeps its exact text.
    assert encode_reading(Reading("a b,c=d", "q", ts, Decimal("NaN"))) == (
        b'reading,meter=a\\ b\\,c\\=d,quantity=q exact="NaN",quality="good" 1709251200000'
    )
    # Milliseconds are kept, finer parts cut off, like SqliteStore.
    assert encode_reading(Reading("m", "q", ts + timedelta(microseconds=1999), 1)).endswith(b" 1709251200001")
    with pytest.raises(ValueError, match="no time zone"):
        encode_reading(Reading("m", "q", datetime(2024, 1, 1), 1))


@pytest.mark.parametrize(("value", "exact"), [
    (Decimal("99999999.99") * 10000, False),  # an 8-digit register times CT x PT 10,000: 14 digits
    (Decimal("123456789012.345"), False),  # 15 significant digits: float64 keeps them
    (Decimal("1234567890123.4567"), True),  # 17: it does not
    (2**53, False),
    (2**53 + 1, True),
    (-(2**64), True),
    (Decimal("1E-400"), True),  # a float would say 0.0
    (Decimal("Infinity"), True),  # no value field at all
])
def test_exact_text_only_where_a_float_loses_digits(value, exact):
    line = encode_reading(Reading("m", "q", BASE, value)).decode()
    assert ('exact="' in line) is exact, line
    if "value=" in line and not exact:  # the float alone gives the number back
        assert Decimal(line.split("value=")[1].split(",")[0]) == value


def test_meter_tags_are_area_channel_group_and_role_only():
    assert meter_tags({"group": "g", "area": "", "channel": "c"}) == (("channel", "c"), ("group", "g"))
    with pytest.raises(ValueError, match="not unit"):
        meter_tags({"unit": "kWh"})


# --- round trip --------------------------------------------------------------------------------


def test_readings_are_written_and_read_back_exactly(victoria, tmp_path):
    server = victoria().start()
    meter = "00000000 0001,x=y"  # separators in a tag value survive
    ms = int(BASE.timestamp() * 1000)
    readings = [
        Reading(meter, "energy.active.import.total", BASE, Decimal("98765.43"), "kWh"),
        Reading(meter, "voltage.a", BASE + timedelta(milliseconds=1), Decimal("220.1"), "V"),
        Reading(meter, "status", BASE + timedelta(milliseconds=2), 4660),
        Reading(meter, "relay.open", BASE + timedelta(milliseconds=3), True),
        Reading(meter, "relay.open", BASE + timedelta(milliseconds=4), False, quality=Quality.SUSPECT),
        Reading(meter, "clock", BASE + timedelta(milliseconds=5), datetime(2024, 2, 29, 23, 59, 58)),
        Reading(meter, "model", BASE + timedelta(milliseconds=6), "DDSY666"),
    ]
    with store_for(server.url, tmp_path / "spool") as store:
        assert store.healthy()
        assert store.write_readings(readings) == len(readings)
        assert store.spool_size() == (0, 0)
        assert store.stats.written == len(readings) and store.stats.spooled == 0

    assert server.samples(meter) == {
        "energy.active.import.total": [(ms, 98765.43)],
        "voltage.a": [(ms + 1, 220.1)],
        "status": [(ms + 2, 4660.0)],
        "relay.open": [(ms + 3, 1.0), (ms + 4, 0.0)],
    }
    assert server.samples(meter, "exact") == {}  # every number here fits a float exactly
    assert server.samples(meter, "state") == {"relay.open": [(ms + 3, 1.0), (ms + 4, 0.0)]}
    # String fields arrive (VictoriaMetrics stores them as 0): one point per reading, right time.
    assert server.samples(meter, "time_value") == {"clock": [(ms + 5, 0.0)]}
    assert server.samples(meter, "text") == {"model": [(ms + 6, 0.0)]}
    assert len(server.samples(meter, "quality")["relay.open"]) == 2
    # Identity and place are tags (unit where the quantity has one); no kind or unit field.
    labels = {frozenset(s["metric"]) for s in server.export(f'{{meter="{meter}"}}')}
    assert labels == {frozenset({"__name__", "meter", "quantity"}), frozenset({"__name__", "meter", "quantity", "unit"})}
    assert not server.export(f'{{__name__=~"reading_(kind|unit)",meter="{meter}"}}')


# --- server down -------------------------------------------------------------------------------


def test_server_not_started_spools_then_replay_delivers_everything_once_in_order(victoria, tmp_path):
    server = victoria()  # port chosen, nothing listening yet
    with store_for(server.url, tmp_path / "spool", batch=100) as store:
        assert not store.healthy()
        posts = spy_posts(store)
        for start in range(0, 1000, 250):
            assert store.write_readings(energy("m-down", 250, start)) == 250  # no exception
        assert store.spool_size()[0] == 1000
        assert store.spool_size()[1] > 1000 * 50
        assert store.unavailable
        assert len(posts) == 1  # then backing off: straight to the spool

        server.start()
        assert store.healthy()
        posts.clear()
        assert store.replay() == 1000
        assert store.spool_size() == (0, 0)
        assert not store.unavailable
        assert list((tmp_path / "spool").glob("*.seg")) == []
    assert all(len(p) <= 100 for p in posts)
    sent = [int(line.rsplit(b" ", 1)[1]) for p in posts for line in p]
    assert sent == sorted(sent) and len(sent) == 1000  # in order, each once
    assert server.samples("m-down") == {"energy.active.import.total": expected_samples(1000)}


def test_the_spool_never_takes_the_last_of_its_disk_readings_are_dropped_and_counted(victoria, tmp_path, caplog):
    # an InfluxDB down for days must not fill the disk the state database (balances, commands) is on:
    # the spool keeps keep_free bytes free on its file system; past that readings are dropped, loudly
    server = victoria()  # nothing listening
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    with store_for(server.url, tmp_path / "tight", batch=100, keep_free=free + 2**30) as tight:
        assert tight.write_readings(energy("m-full", 250)) == 0  # none written, none spooled
        assert tight.write_readings(energy("m-full", 250, 250)) == 0
        assert tight.spool_size() == (0, 0) and tight.stats.dropped == 500 and tight.stats.spooled == 0
    assert "spool" in caplog.text and "reading(s) dropped" in caplog.text
    with store_for(server.url, tmp_path / "roomy", batch=100, keep_free=0) as roomy:  # room: spooled as before
        assert roomy.write_readings(energy("m-room", 250)) == 250
        assert roomy.spool_size()[0] == 250 and roomy.stats.dropped == 0


def test_server_stopped_mid_run_then_writes_resume_through_the_spool(victoria, tmp_path):
    server = victoria().start()
    clock = FakeClock()
    with store_for(server.url, tmp_path / "spool", batch=50, retry_interval=30, clock=clock) as store:
        posts = spy_posts(store)
        store.write_readings(energy("m-mid", 100, 0))
        assert store.spool_size() == (0, 0)

        server.stop()
        store.write_readings(energy("m-mid", 100, 100))  # fails, spooled
        store.write_readings(energy("m-mid", 100, 200))  # backing off: spooled without trying
        assert store.spool_size()[0] == 200
        assert store.stats.failures == 1

        server.start()
        clock.now += 10
        store.write_readings(energy("m-mid", 100, 300))  # still backing off (30 s)
        assert store.spool_size()[0] == 300
        clock.now += 25
        # Retry due: this write goes behind the backlog and pushes up to 4 batches of it.
        assert store.write_readings(energy("m-mid", 100, 400)) == 100
        assert store.spool_size()[0] == 400 - 4 * 50
        assert store.replay() == 200
        assert store.spool_size() == (0, 0)
        store.write_readings(energy("m-mid", 100, 500))  # straight to the server again
        assert store.spool_size() == (0, 0)
        assert store.stats.written == 600 and store.stats.replayed == 400
    failed = posts.pop(2)  # after two batches of 50 went through, the server was gone
    assert [int(line.rsplit(b" ", 1)[1]) for line in failed] == [ms for ms, _ in expected_samples(50, 100)]
    sent = [int(line.rsplit(b" ", 1)[1]) for p in posts for line in p]
    assert sent == [ms for ms, _ in expected_samples(600)]  # delivered in order, each once
    assert server.samples("m-mid") == {"energy.active.import.total": expected_samples(600)}


def test_backoff_follows_the_injected_clock(tmp_path):
    clock = FakeClock()
    url = f"http://127.0.0.1:{free_port()}"
    with store_for(url, tmp_path / "spool", retry_interval=5, clock=clock) as store:
        posts = spy_posts(store)
        store.write_readings(energy("m", 1))
        store.write_readings(energy("m", 1, 1))
        assert (len(posts), store.stats.failures) == (1, 1)
        clock.now += 5
        store.write_readings(energy("m", 1, 2))
        assert (len(posts), store.stats.failures) == (2, 2)
        assert store.replay() == 0  # an explicit replay tries regardless of the backoff
        assert (len(posts), store.spool_size()[0]) == (3, 3)


# --- crashes -----------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta, timezone
    from decimal import Decimal
    from pathlib import Path
    from meterd.readings import Reading
    from meterd.storage.influx import InfluxStore

    url, spool = sys.argv[1], Path(sys.argv[2])
    base = datetime(2024, 3, 1, tzinfo=timezone.utc)
    store = InfluxStore(url, "meterd", "readings", "t", spool, timeout=2)
    i = 0
    while True:
        batch = [
            Reading("m-kill", "energy.active.import.total", base + timedelta(seconds=n),
                    Decimal(n) / 100 + Decimal("1000.00"), "kWh")
            for n in range(i, i + 100)
        ]
        store.write_readings(batch)
        i += 100
        print(i, flush=True)  # acknowledged: spooled (fsync'ed)
    """
)


def test_spool_survives_kill_9_of_the_writer(victoria, tmp_path):
    server = victoria()
    spool_dir = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, server.url, str(spool_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged = 0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            acknowledged = int(line)
            if acknowledged >= 3000:
                break
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: it is writing the next batch
    finally:
        child.kill()
        _, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, err
    assert acknowledged >= 3000, err

    server.start()
    with store_for(server.url, spool_dir) as store:
        spooled, _ = store.spool_size()
        assert acknowledged <= spooled <= acknowledged + 100  # at most the batch in flight
        assert store.replay() == spooled
        assert store.spool_size() == (0, 0)
    assert server.samples("m-kill") == {"energy.active.import.total": expected_samples(spooled)}


def test_torn_last_record_is_skipped_and_the_rest_replayed(victoria, tmp_path, caplog):
    server = victoria()
    spool_dir = tmp_path / "spool"
    with store_for(server.url, spool_dir) as store:
        store.write_readings(energy("m-torn", 50))
    (segment,) = spool_dir.glob("*.seg")
    segment.write_bytes(segment.read_bytes()[:-7])  # the crash cut the last record short

    server.start()
    with caplog.at_level(logging.WARNING, logger="meterd.storage.spool"):
        store = store_for(server.url, spool_dir)
    with store:
        assert "failed its checksum, at the end" in caplog.text
        assert store.spool_size()[0] == 49
        assert store.replay() == 49
        assert list(spool_dir.glob("*.seg")) == []
    assert server.samples("m-torn") == {"energy.active.import.total": expected_samples(49)}


# --- refused points ----------------------------------------------------------------------------


def test_a_rejected_point_is_quarantined_and_the_rest_goes_through(victoria, tmp_path):
    server = victoria().start()
    spool_dir = tmp_path / "spool"
    bad = Reading("m-bad", "nameplate", BASE + timedelta(seconds=30), "x" * (2 * MAX_LINE))
    readings = energy("m-bad", 30) + [bad] + energy("m-bad", 30, 31)
    clock = FakeClock()
    with store_for(server.url, spool_dir, clock=clock, wall_clock=lambda: BASE) as store:
        assert store.write_readings(readings) == 60
        assert store.stats.rejected == 1
        assert store.spool_size() == (0, 0)

        # The same from the spool: the bad point must not block what is behind it.
        server.stop()
        later = energy("m-bad", 5, 100)
        store.write_readings([bad] + later)
        assert store.spool_size()[0] == 6
        server.start()
        assert store.replay() == 5
        assert store.spool_size() == (0, 0)
        assert store.stats.rejected == 2

    quarantined = [json.loads(line) for line in (spool_dir / "rejected.jsonl").read_text().splitlines()]
    assert len(quarantined) == 2
    for entry in quarantined:
        assert entry["status"] == 400
        assert "too long line" in entry["reason"]
        assert entry["line"].encode() == encode_reading(bad)
        assert entry["rejected_at"] == BASE.isoformat()
    # Splitting the refused request re-posts some good points: harmless on InfluxDB (it replaces
    # them); VictoriaMetrics keeps the copies, so compare distinct samples.
    stored = server.samples("m-bad")["energy.active.import.total"]
    assert sorted(set(stored)) == expected_samples(30) + expected_samples(30, 31) + expected_samples(5, 100)
    assert server.samples("m-bad", "text") == {}  # the refused point is not there


# --- the rest of the sink ----------------------------------------------------------------------


async def test_batch_writer_writes_readings_to_influx_and_attempts_to_the_state_store(victoria, tmp_path):
    server = victoria().start()
    state = SqliteStore(tmp_path / "state")
    store = store_for(server.url, tmp_path / "spool", state=state)
    try:
        writer = BatchWriter(store, batch_size=100)
        writer.add_many(energy("m-bw", 250))
        writer.add_attempts([Attempt("m-bw", "bus1", "00010000", BASE, "ok", 0.05)])
        await writer.flush()
        assert writer.written == 250 and writer.attempts_written == 1
        assert [a.item for a in state.attempts()] == ["00010000"]
    finally:
        store.close()
        state.close()
    assert server.samples("m-bw") == {"energy.active.import.total": expected_samples(250)}


def test_attempts_need_a_state_store(tmp_path):
    with store_for(f"http://127.0.0.1:{free_port()}", tmp_path / "spool") as store:
        with pytest.raises(RuntimeError, match="state="):
            store.record_attempts([Attempt("m", "c", "i", BASE, "ok")])


def test_closed_store_refuses_writes(tmp_path):
    store = store_for(f"http://127.0.0.1:{free_port()}", tmp_path / "spool")
    store.close()
    store.close()
    assert not store.healthy()
    with pytest.raises(RuntimeError, match="closed"):
        store.write_readings(energy("m", 1))

