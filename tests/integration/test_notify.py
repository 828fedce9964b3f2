"""meterd.control.notify against a real local HTTP server: JSON and templated webhook posts, retries,
an unreachable URL that does not raise, the JSON Lines log, and a Notifier whose sinks fail alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from meterd.clock import CST
from meterd.control.notify import LogFileSink, Notifier, WebhookSink, notice_dict
from meterd.control.policy import Notice

AT = datetime(2024, 5, 15, 22, 30, tzinfo=CST)
TRIP = Notice("acc1", "trip", "balance -3.20 ≤ trip level 0.00: supply cut", AT, balance=Decimal("-3.20"))
TRICKY = Notice("acc2", "held", 'trip held: "quiet hours"\nback at 07:00 {ok} $5 \\ 保电', AT, meter="m7")


class Recorder:
    """A threaded http.server that records POSTs and answers with scripted statuses (then 200)."""

    def __init__(self, statuses: Sequence[int]) -> None:
        self.statuses = list(statuses)
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.posts.append((self.path, dict(self.headers), body))
                status = recorder.statuses.pop(0) if recorder.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.posts]


@pytest.fixture
def make_server():
    made: list[Recorder] = []

    def make(statuses: Sequence[int] = ()) -> Recorder:
        recorder = Recorder(statuses)
        recorder.thread.start()
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.server.shutdown()
        recorder.server.server_close()
        recorder.thread.join(5)


async def test_webhook_posts_the_notice_as_json(make_server):
    srv = make_server()
    await WebhookSink(srv.url, headers={"X-Token": "s3cret"}).send(TRIP)
    [(path, headers, body)] = srv.posts
    assert path == "/hook"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-Token"] == "s3cret"
    assert json.loads(body) == {"account": "acc1", "kind": "trip", "message": TRIP.message,
                                "at": "2024-05-15T22:30:00+08:00", "meter": None, "balance": "-3.20"}


async def test_webhook_template_escapes_values_for_json(make_server):
    srv = make_server()
    template = '{"to": "13800000000", "text": "[$kind] $account/$meter: ${message}", "balance": "$balance"}'
    sink = WebhookSink(srv.url, template=template)
    await sink.send(TRICKY)
    await sink.send(TRIP)
    first, second = (json.loads(b) for b in srv.bodies())
    assert first == {"to": "13800000000", "text": f"[held] acc2/m7: {TRICKY.message}", "balance": ""}
    assert second["text"] == f"[trip] acc1/: {TRIP.message}" and second["balance"] == "-3.20"


async def test_webhook_template_form_encoded(make_server):
    srv = make_server()
    await WebhookSink(srv.url, template="to=13800000000&text=$message&at=$at", escape="form").send(TRICKY)
    [(_, headers, body)] = srv.posts
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = urllib.parse.parse_qs(body.decode(), strict_parsing=True)
    assert form == {"to": ["13800000000"], "text": [TRICKY.message], "at": ["2024-05-15T22:30:00+08:00"]}


@pytest.mark.parametrize("template, error", [
    ('{"to": "$phone"}', "unknown template fields ['phone']"),
    ('{"cost": "5$"}', "not valid"),
])
def test_webhook_template_is_checked_when_made(template, error):
    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        WebhookSink("http://127.0.0.1:9/x", template=template)


async def test_webhook_kinds_filter(make_server):
    srv = make_server()
    sink = WebhookSink(srv.url, kinds=frozenset({"trip", "reclose"}))
    await sink.send(TRICKY)
    await sink.send(TRIP)
    assert [json.loads(b)["kind"] for b in srv.bodies()] == ["trip"]


async def test_webhook_retries_until_the_server_answers(make_server, caplog):
    srv = make_server([500, 503])
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        await WebhookSink(srv.url, retries=2, backoff=0.01).send(TRIP)
    assert len(srv.posts) == 3
    assert len(set(srv.bodies())) == 1
    assert caplog.records == []


async def test_webhook_gives_up_after_the_retries_and_warns(make_server, caplog):
    srv = make_server([500, 500, 500, 500])
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        await WebhookSink(srv.url + "?key=s3cret", retries=2, backoff=0.01).send(TRIP)
    assert len(srv.posts) == 3
    [record] = caplog.records
    assert srv.url in record.getMessage() and "s3cret" not in record.getMessage()
    assert "trip notice for account 'acc1'" in record.getMessage()
    assert "after 3 attempt(s)" in record.getMessage()


async def test_webhook_does_not_retry_a_client_error(make_server, caplog):
    srv = make_server([400])
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        await WebhookSink(srv.url, retries=2, backoff=0.01).send(TRIP)
    assert len(srv.posts) == 1
    assert "HTTP Error 400" in caplog.text


@pytest.mark.parametrize("url", ["refused", "not a url"])
async def test_an_unreachable_url_does_not_raise(url, caplog):
    if url == "refused":
        url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        await WebhookSink(url, retries=1, backoff=0.01, timeout=2).send(TRIP)
    [record] = caplog.records
    assert "not delivered after 2 attempt(s)" in record.getMessage()


async def test_log_file_sink_writes_json_lines(tmp_path):
    path = tmp_path / "deep" / "er" / "notices.jsonl"
    sink = LogFileSink(path)
    await sink.send(TRIP)
    await sink.send(TRICKY)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [notice_dict(TRIP), notice_dict(TRICKY)]
    assert json.loads(lines[1])["message"] == TRICKY.message  # the newline stayed inside its line
    assert "保电" in lines[1]


class Broken:
    async def send(self, notice: Notice) -> None:
        raise RuntimeError("sink is down")


async def test_notifier_sends_to_every_sink_and_survives_a_broken_one(make_server, tmp_path, caplog):
    srv = make_server()
    path = tmp_path / "notices.jsonl"
    notifier = Notifier([Broken(), WebhookSink(srv.url), LogFileSink(path)])
    with caplog.at_level(logging.ERROR, logger="meterd.control.notify"):
        await notifier.publish(iter([TRIP, TRICKY]))
        assert await notifier.flush(10) == 0
    await notifier.close()
    assert [json.loads(b)["account"] for b in srv.bodies()] == ["acc1", "acc2"]
    assert [json.loads(line)["account"] for line in path.read_text(encoding="utf-8").splitlines()] == ["acc1", "acc2"]
    assert caplog.text.count("notify sink Broken failed") == 2


async def test_notifier_with_nothing_to_do():
    await Notifier([]).publish([TRIP])
    await Notifier([Broken()]).publish([])
    await Notifier([Broken()]).close()


class Hanging:
    """A gateway that takes every connection and never answers (or answers a byte at a time, every
    wait shorter than the sink's timeout, the whole far longer)."""

    def __init__(self, dribble: bool = False) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.dribble = dribble
        self.connections: list[socket.socket] = []
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.server.settimeout(0.05)
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections.append(conn)
            if self.dribble:
                threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if self.done.wait(0.2):
                    return
                conn.sendall(bytes([byte]))

    def close(self) -> None:
        self.done.set()
        for conn in self.connections:
            conn.close()
        self.server.close()


@pytest.fixture
def hanging():
    made: list[Hanging] = []

    def make(dribble: bool = False) -> Hanging:
        made.append(Hanging(dribble))
        return made[-1]

    yield make
    for h in made:
        h.close()


async def test_publishing_never_waits_for_a_gateway_that_does_not_answer(hanging, tmp_path):
    """The prepaid pass and the command executor publish; they used to wait for every sink to take
    every notice. A gateway that never answered held them 3 x 5 s per notice (hours on a day of many
    notices). Now publish returns at once and the other sinks go on."""
    gateway = hanging()
    path = tmp_path / "notices.jsonl"
    notifier = Notifier([WebhookSink(gateway.url, timeout=5, retries=2), LogFileSink(path)])
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(notifier.publish([TRIP, TRICKY] * 50), 1.0)
    await asyncio.wait_for(notifier.publish([TRIP]), 1.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    deadline = asyncio.get_running_loop().time() + 10
    while (not path.exists() or len(path.read_text(encoding="utf-8").splitlines()) < 101) \
            and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 101  # the log sink is not held up
    assert notifier.queued() >= 100  # the webhook's notices wait their turn
    await notifier.close(timeout=0.1)


async def test_a_dribbling_answer_is_given_up_after_three_timeouts(hanging, caplog):
    gateway = hanging(dribble=True)
    sink = WebhookSink(gateway.url, timeout=0.5, retries=0)
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        await asyncio.wait_for(sink.send(TRIP), 30)
    took = asyncio.get_running_loop().time() - started
    assert took < 10, took  # 1.5 s of deadline; the dribble alone would go on for 2,000 s
    assert "no answer within 1.5 s" in caplog.text and "not delivered after 1 attempt(s)" in caplog.text


async def test_a_sink_that_falls_far_behind_loses_its_oldest_notices(hanging, caplog):
    gateway = hanging()
    notifier = Notifier([WebhookSink(gateway.url, timeout=5, retries=0)], max_queued=10)
    notices = [Notice(f"acc{i}", "reminder", "low balance", AT) for i in range(25)]
    with caplog.at_level(logging.ERROR, logger="meterd.control.notify"):
        await notifier.publish(notices[:5])
        await asyncio.sleep(0.1)  # the first is in flight, the next four queued
        await notifier.publish(notices[5:])
    assert list(notifier._queues[0]) == notices[15:]  # the newest ten
    assert notifier.dropped == [14]  # 4 queued behind the one in flight, 20 more, 10 kept
    assert caplog.text.count("the oldest are dropped") == 1
    await notifier.close(timeout=0.1)
    assert "notice(s) not sent at stop" in caplog.text


async def test_a_prepaid_pass_is_not_held_by_a_gateway_that_does_not_answer(hanging, tmp_path):
    """The pass published its notices and waited for them before waking the command executor: with
    a gateway that never answered, the trips it had just queued waited 3 x 5 s per notice."""
    from meterd.config.prepaid import NotifyConfig, PrepaidConfig
    from meterd.control.engine import PrepaidSettings
    from meterd.control.policy import SafetyRules, Threshold, Thresholds
    from meterd.control.runtime import PrepaidRuntime
    from meterd.control.state import AccountSpec
    from meterd.control.tariff import Tariff, TariffKind, TariffVersion

    gateway = hanging()
    flat = Tariff("flat", (TariffVersion(datetime(2024, 1, 1).date(), TariffKind.FLAT, price=Decimal("0.50")),))
    accounts = tuple(AccountSpec(f"A{i}", "flat", {f"{i:012d}": Decimal(1)}, area="TA1", opening_balance=Decimal(-1))
                     for i in range(1, 6))
    config = PrepaidConfig(
        PrepaidSettings(Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)),
                                   Threshold(Decimal(5))), SafetyRules(dry_run=True)),
        {"flat": flat}, accounts, notify=(NotifyConfig("webhook", url=gateway.url, timeout=5.0),
                                          NotifyConfig("log", path=tmp_path / "notices.jsonl")))
    runtime = PrepaidRuntime(config, meters=[], where=tmp_path, route=lambda meter: None, clock=lambda: AT)
    try:
        runtime.executor.wake.clear()
        await asyncio.wait_for(runtime.run_pass(), 5.0)
        assert runtime.executor.wake.is_set()  # the trips it queued go now
        assert runtime.notifier.queued() >= 5  # five trip notices for the gateway, waiting their turn
    finally:
        await runtime.notifier.close(timeout=0.1)
        runtime.store.close()
        runtime.anomalies.close()


async def test_a_single_waits_timeout_is_named_as_such_not_as_the_whole_deadline(hanging, caplog):
    gateway = hanging()  # takes the request, never answers: the socket's own timeout comes first
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        await WebhookSink(gateway.url, timeout=0.3, retries=0).send(TRIP)
    assert "timed out" in caplog.text and "no answer within" not in caplog.text


async def test_a_gateway_holding_posts_open_gets_at_most_four_threads_and_never_holds_the_exit(hanging, caplog):
    gateway = hanging(dribble=True)  # a byte every 0.2 s: every wait short, the whole endless
    sink = WebhookSink(gateway.url, timeout=0.3, retries=0)
    with caplog.at_level(logging.WARNING, logger="meterd.control.notify"):
        for _ in range(6):
            await sink.send(TRIP)
    held = [t for t in threading.enumerate() if t.name == "webhook" and t.is_alive()]
    assert len(held) == 4 and all(t.daemon for t in held)  # the process may exit whatever they do
    assert caplog.text.count("no answer within 0.9 s") == 4
    assert caplog.text.count("4 earlier POSTs still held open by the gateway") == 2


async def test_closing_cut_short_still_ends_the_sinks_tasks(hanging):
    gateway = hanging()
    notifier = Notifier([WebhookSink(gateway.url, timeout=5, retries=0)])
    await notifier.publish([TRIP, TRICKY])
    closing = asyncio.create_task(notifier.close(timeout=30))
    await asyncio.sleep(0.1)
    closing.cancel()  # the daemon's grace for its services ran out
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.sleep(0)
    assert all(t is None for t in notifier._tasks)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("notify-") and not t.done()]
