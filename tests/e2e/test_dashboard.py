"""The operator console in a real browser: ``meterd demo`` serves the API and the console, and
Debian's Chromium (``/usr/bin/chromium``) drives it through Playwright for Python.

Why Playwright and not Selenium: its waits are on the page's own state (a selector, a text, an
attribute), so a test waits exactly as long as the daemon takes and no longer; it drives the
system browser without a matching chromedriver (``executable_path``; ``playwright install`` is
never run), and one browser serves the whole module with a fresh context (cookies, storage,
language) per role.

What is checked, against the demo's real daemon: a meter found by the last digits of its address,
opened, tripped by an operator and seen confirmed by the relay read back open; an alarm
acknowledged with a comment (and its history through the API); the language switch (zh-CN from
the browser, English chosen and remembered); a viewer sees no action buttons and the API refuses
the same actions anyway; the account, area, terminal-less lists and reports pages draw; paging
walks the server's cursors.  A screenshot of each page is kept (the module's temporary directory,
copied to ``$METERD_ARTIFACTS`` when set) for a human to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
STATIC = Path(__file__).resolve().parents[2] / "src" / "meterd" / "api" / "static"

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                    reason=f"{CHROMIUM} is not installed (Debian package chromium; .ci/run installs it)")


def call(base: str, method: str, path: str, token: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def demo(meterd_bin, tmp_path_factory):
    """``meterd demo`` with its API on a free port, and tokens of each role: (base, tokens, data dir)."""
    from meterd.api.tokens import TokenStore

    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    data = tmp / "demo-data"
    process = subprocess.Popen(
        [meterd_bin, "demo", "--data-dir", str(data), "--api-port", str(port), "--duration", "400",
         "--interval", "2", "--quiet"],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []

    def drain(stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line)  # noqa: PERF402 -- one by one: the fixture reads the list meanwhile

    for stream in (process.stdout, process.stderr):
        threading.Thread(target=drain, args=(stream,), daemon=True).start()
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None:
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            url = next((x.split(" ", 1)[1].strip() for x in list(lines) if x.startswith("dashboard: ")), None)
            time.sleep(0.1)
        base, _, admin = url.partition("/dashboard#token=")
        tokens = {"admin": admin}
        with TokenStore(data) as store:
            for role in ("viewer", "technician", "operator"):
                tokens[role] = store.create(f"console-{role}", role, datetime.now(UTC))[1]
        while True:  # something to draw: attempts, and meter 2's relay read
            try:
                status, meter = call(base, "GET", "/api/v1/console/meters/2", admin)
            except urllib.error.URLError:  # the API is a moment behind the line that names it
                status = 0
            if status == 200 and "relay.open" in meter["relay"]:  # type: ignore[index]
                break
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        yield base, tokens, data
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the screenshots go; copied to $METERD_ARTIFACTS at the end when it is set."""
    folder = tmp_path_factory.mktemp("console-screenshots")
    yield folder
    target = os.environ.get("METERD_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy(png, Path(target) / png.name)
    print(f"console screenshots: {folder}")


def open_console(browser, base: str, token: str, *, locale: str = "en-US", route: str = "#/"):  # type: ignore[no-untyped-def]
    """A fresh browser context (its own storage and language) on the console with ``token``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale=locale)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{base}/dashboard?refresh=2#token={token}")
    page.wait_for_selector("body[data-loaded='1']", timeout=20_000)
    if route != "#/":
        go(page, route)
    page.problems = problems
    return context, page


def wait_js(page, expression: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Until ``expression`` is true in the page.  (Playwright's wait_for_function evaluates a string
    in the page, which the console's Content-Security-Policy refuses -- as it should.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {timeout} s: {expression}"
        time.sleep(0.1)


def go(page, route: str) -> None:  # type: ignore[no-untyped-def]
    cycles = int(page.evaluate("document.body.dataset.cycles || '0'"))
    page.evaluate(f"location.hash = {route!r}")
    wait_js(page, f"Number(document.body.dataset.cycles) > {cycles} && "
                  f"document.body.dataset.page === {route.split('/')[1].split('?')[0] or 'overview'!r}")


def shot(page, shots: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def demo_meters(data: Path) -> int:
    """The demo's meters: its buses' and terminals' (the MQTT terminal's only where mosquitto runs)."""
    import tomllib

    return len(tomllib.loads((data / "demo.toml").read_text())["meters"])


@needs_chromium
def test_the_overview_draws_the_demo(demo, browser, shots):
    base, tokens, data = demo
    context, page = open_console(browser, base, tokens["admin"])
    try:
        wait_js(page, "Number(document.body.dataset.curvePoints) >= 1")
        body = page.evaluate("({...document.body.dataset})")
        assert body["token"] == "ok" and body["role"] == "admin" and body["errors"] == "", body
        assert page.inner_text("#t-meters").strip() == str(demo_meters(data))
        assert 0 < float(body["successRate"]) <= 1  # one meter never answers, one garbles
        assert "TA-DEMO" in page.inner_text("#areas-table") and "mbtcp6" in page.inner_text("#quality-table")
        assert page.locator("#banner").is_hidden() and page.locator("#token-form").is_hidden()
        assert "demo-dashboard" in page.inner_text("#whoami")
        shot(page, shots, "overview")
        assert not page.problems, page.problems
    finally:
        context.close()


@needs_chromium
def test_search_a_meter_by_its_last_digits_and_trip_it_as_an_operator(demo, browser, shots):
    base, tokens, _ = demo
    context, page = open_console(browser, base, tokens["operator"])
    try:
        page.fill("#search", "2")  # a short form: 000000000002, 000000000012, 000000000022
        hit = page.locator("#search-results a.hit[data-type=meter]", has_text="000000000002").first
        hit.wait_for(timeout=10_000)
        assert page.locator("#search-results a.hit[data-type=meter]").count() >= 3
        shot(page, shots, "search")
        hit.click()
        wait_js(page, "document.body.dataset.page === 'meter'")
        page.wait_for_selector("#relay-state[data-open=false]", timeout=15_000)
        assert "000000000002" in page.inner_text("#page-title")
        page.locator("button[data-action=trip]").click()
        dialog = page.locator("#dialog")
        assert dialog.is_visible()
        what = page.inner_text("#dialog-text")
        assert "TRIP" in what and "000000000002" in what and "read back open" in what
        shot(page, shots, "meter-trip-dialog")
        page.locator("#dialog-ok").click()  # no reason: the form refuses it, nothing is sent
        assert dialog.is_visible() and page.evaluate("!document.querySelector('#dialog-fields input').checkValidity()")
        page.fill("#dialog-fields input[name=reason]", "console test: line work")
        page.locator("#dialog-ok").click()
        page.wait_for_selector("#toast", state="visible", timeout=10_000)
        assert re.search(r"#\d+", page.inner_text("#toast"))
        # confirmed: the command's state and the relay read back open
        page.wait_for_selector("#p-commands .b-confirmed", timeout=30_000)
        page.wait_for_selector("#relay-state[data-open=true]", timeout=15_000)
        page.locator("button[data-range='1h']").click()  # the demo's meters are minutes old: the last hour
        wait_js(page, "document.querySelector('button[data-range=\"1h\"]').classList.contains('on')")
        shot(page, shots, "meter-tripped")
        _, doc = call(base, "GET", "/api/v1/console/commands?meter=000000000002&limit=1", tokens["viewer"])
        command = doc["commands"][0]  # type: ignore[index]
        assert (command["kind"], command["state"], command["requested_by"]) == ("trip", "confirmed", "console-operator")
        assert command["read_back"]["relay.open"] is True
        # an operator ranks above a technician: calling a meter now is theirs too
        assert page.locator("button[data-action=call-now]").count() == 1
        assert not page.problems, page.problems
    finally:
        context.close()


@needs_chromium
def test_a_technician_calls_a_meter_now_and_sees_the_trace(demo, browser, shots):
    base, tokens, _ = demo
    context, page = open_console(browser, base, tokens["technician"], route="#/meter/000000000001")
    try:
        assert page.locator("button[data-action=trip]").count() == 0  # operator's, not a technician's
        page.locator("button[data-action=call-now]").click()
        page.wait_for_selector("[data-trace='1']", timeout=20_000)
        trace = page.inner_text("#trace")
        assert "00010000" in trace and "energy.active.import.total" in trace
        page.wait_for_selector("#p-attempts tbody tr", timeout=10_000)
        shot(page, shots, "meter-call-now")
    finally:
        context.close()


@needs_chromium
def test_an_operator_acknowledges_an_alarm(demo, browser, shots):
    from meterd.storage.anomalies import AnomalyStore, Finding, Kind, Severity

    base, tokens, data = demo
    now = datetime.now(UTC)
    with AnomalyStore(data) as store:  # a finding as the plausibility check records it: it becomes an alarm
        store.record([Finding("000000000003", Kind.IMPLAUSIBLE, Severity.WARNING, now, "voltage.a 9999 V (console test)",
                              ())], now)
    context, page = open_console(browser, base, tokens["operator"], route="#/alarms")
    try:
        row = page.locator("#p-alarms tbody tr", has_text="console test")
        row.wait_for(timeout=40_000)  # the daemon syncs its alarm list every 15 s
        assert page.inner_text("#nav-alarms").strip() not in ("", "0")
        row.locator("button[data-action=acknowledge]").click()
        assert "acknowledged" in page.inner_text("#dialog-text")
        page.fill("#dialog-fields textarea[name=comment]", "crew informed")
        page.locator("#dialog-ok").click()
        page.wait_for_selector("#toast", state="visible", timeout=10_000)
        page.locator("button[data-alarm-state=acknowledged]").click()
        acked = page.locator("#p-alarms tbody tr", has_text="console test")
        acked.wait_for(timeout=10_000)
        acked.locator("summary").click()
        assert "crew informed" in acked.inner_text()
        shot(page, shots, "alarms")
        _, doc = call(base, "GET", "/api/v1/alarms?state=acknowledged", tokens["viewer"])
        alarm = next(a for a in doc["alarms"] if "console test" in json.dumps(a))  # type: ignore[index]
        assert alarm["history"][-1]["by"] == "console-operator" and alarm["history"][-1]["comment"] == "crew informed"
        assert not page.problems, page.problems
        # assigned to someone, then closed with a comment
        acked.locator("button[data-action=assign]").click()
        page.fill("#dialog-fields input[name=to]", "wang")
        page.locator("#dialog-ok").click()
        page.wait_for_selector("#dialog", state="hidden", timeout=10_000)
        page.wait_for_selector("#p-alarms tbody tr:has-text('console test'):has-text('wang')", timeout=10_000)
        page.locator("#p-alarms tbody tr", has_text="console test").locator("button[data-action=close]").click()
        assert "closed with your comment" in page.inner_text("#dialog-text")
        page.locator("#dialog-ok").click()  # a close needs a comment: the form refuses it without
        assert page.locator("#dialog").is_visible()
        page.fill("#dialog-fields textarea[name=comment]", "meter 3 replaced")
        page.locator("#dialog-ok").click()
        page.wait_for_selector("#dialog", state="hidden", timeout=10_000)
        page.locator("button[data-alarm-state=closed]").click()
        page.locator("#p-alarms tbody tr", has_text="console test").wait_for(timeout=10_000)
        _, doc = call(base, "GET", "/api/v1/alarms?state=closed", tokens["viewer"])
        alarm = next(a for a in doc["alarms"] if "console test" in json.dumps(a))  # type: ignore[index]
        assert alarm["assignee"] == "wang" and alarm["history"][-1]["comment"] == "meter 3 replaced"
    finally:
        context.close()


@needs_chromium
def test_an_operator_cancels_a_queued_command(demo, browser, shots):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, tokens, _ = demo
    # meter 12 never answers: a trip to it waits queued between its tries
    status, queued = call(base, "POST", "/api/v1/commands", tokens["operator"],
                          {"meter": "000000000012", "kind": "trip", "reason": "console test: cancel me"})
    assert status == 201, queued
    command = queued["id"]  # type: ignore[index]
    context, page = open_console(browser, base, tokens["operator"], route="#/meter/000000000012")
    try:
        for _ in range(5):  # between two tries it is queued; a try under way answers 409 in the dialog
            button = page.locator("#p-commands tr:has-text('console test: cancel me') button[data-action=cancel]")
            button.wait_for(timeout=20_000)
            button.click()
            assert f"#{command}" in page.inner_text("#dialog-text") and "never sent" in page.inner_text("#dialog-text")
            page.fill("#dialog-fields input[name=reason]", "wrong meter")
            page.locator("#dialog-ok").click()
            try:
                page.wait_for_selector("#dialog", state="hidden", timeout=5_000)
                break
            except sync_api.TimeoutError:  # refused (sent meanwhile): the dialog says why; try again
                assert "409" in page.inner_text("#dialog-error")
                page.locator("#dialog-cancel").click()
        page.wait_for_selector("#p-commands tr:has-text('console test: cancel me') .b-cancelled", timeout=10_000)
        shot(page, shots, "meter-cancelled")
    finally:
        context.close()
    _, doc = call(base, "GET", "/api/v1/console/commands?meter=12&limit=5", tokens["viewer"])
    assert next(c for c in doc["commands"] if c["id"] == command)["state"] == "cancelled"  # type: ignore[index]


@needs_chromium
def test_the_language_follows_the_browser_and_the_switch_is_remembered(demo, browser, shots):
    base, tokens, _ = demo
    context, page = open_console(browser, base, tokens["admin"], locale="zh-CN")
    try:
        assert page.evaluate("document.body.dataset.lang") == "zh"
        assert page.inner_text("[data-nav=areas]") == "台区" and "采集成功率" in page.inner_text("#overview")
        assert "线损" in page.inner_text("#page-overview")
        wait_js(page, "Number(document.body.dataset.curvePoints) >= 1")
        shot(page, shots, "overview-zh")
        go(page, "#/meter/000000000009")
        assert "跳闸" in page.inner_text("#p-state") and "保电" in page.inner_text("#p-state")
        shot(page, shots, "meter-zh")
        page.locator("#lang").click()
        wait_js(page, "document.body.dataset.lang === 'en'")
        assert page.inner_text("[data-nav=areas]") == "Areas"
        page.reload()
        page.wait_for_selector("body[data-loaded='1']", timeout=20_000)
        assert page.evaluate("document.body.dataset.lang") == "en"  # remembered (localStorage)
        assert not page.problems, page.problems
    finally:
        context.close()


@needs_chromium
def test_a_viewer_sees_no_action_buttons_and_the_api_refuses_them_anyway(demo, browser, shots):
    base, tokens, _ = demo
    context, page = open_console(browser, base, tokens["viewer"], route="#/meter/000000000009")
    try:
        for route in ("#/meter/000000000009", "#/account/DEMO-1001", "#/alarms", "#/"):
            if route != "#/meter/000000000009":
                go(page, route)
            assert page.locator("[data-action]").count() == 0, (route, page.locator("[data-action]").all_inner_texts())
            if route == "#/account/DEMO-1001":
                shot(page, shots, "account-viewer")
    finally:
        context.close()
    viewer = tokens["viewer"]
    assert call(base, "POST", "/api/v1/commands", viewer, {"meter": "000000000009", "kind": "trip", "reason": "x"})[0] == 403
    assert call(base, "POST", "/api/v1/payments", viewer, {"account": "DEMO-1001", "amount": "10.00", "ref": "v1"})[0] == 403
    assert call(base, "POST", "/api/v1/commands/1/cancel", viewer, {"reason": "x"})[0] == 403
    assert call(base, "POST", "/api/v1/alarms/1/acknowledge", viewer, {})[0] == 403
    assert call(base, "POST", "/api/v1/meters/000000000009/read", viewer, {"quantities": ["relay.open"]})[0] == 403
    assert call(base, "POST", "/api/v1/accounts/DEMO-1001/protect", tokens["operator"],
                {"protect": True, "reason": "x"})[0] == 403  # admin only


@needs_chromium
def test_the_other_pages_draw_and_lists_page_on_the_server(demo, browser, shots):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, tokens, data = demo
    context, page = open_console(browser, base, tokens["admin"], route="#/account/DEMO-1001")
    try:
        assert "DEMO-1001" in page.inner_text("#page-title")
        assert page.locator("button[data-action=pay]").count() == 1
        assert page.locator("button[data-action=protect], button[data-action=unprotect]").count() == 1
        page.wait_for_selector("#p-ledger tbody tr", timeout=10_000)
        page.locator("button[data-action=pay]").click()  # a counter payment, applied once per receipt
        assert "once per receipt number" in page.inner_text("#dialog-text")
        page.fill("#dialog-fields input[name=amount]", "10.00")
        page.fill("#dialog-fields input[name=ref]", "console-receipt-1")
        page.locator("#dialog-ok").click()
        page.wait_for_selector("#toast.ok", state="visible", timeout=10_000)
        assert "Payment applied" in page.inner_text("#toast")
        page.wait_for_selector("#p-payments tbody tr:has-text('console-receipt-1')", timeout=10_000)
        if page.locator("button[data-action=protect]").count():  # 保电 set (admin), then released again
            for verb, words in (("protect", "never be tripped automatically"), ("unprotect", "loses 保电")):
                page.locator(f"button[data-action={verb}]").click()
                assert words in page.inner_text("#dialog-text")
                page.fill("#dialog-fields input[name=reason]", "console test: hospital visit")
                page.locator("#dialog-ok").click()
                page.wait_for_selector("#dialog", state="hidden", timeout=10_000)
                page.wait_for_selector(f"button[data-action={'unprotect' if verb == 'protect' else 'protect'}]",
                                       timeout=10_000)
        shot(page, shots, "account")
        go(page, "#/area/TA-DEMO")
        assert "000000000005" in page.inner_text("#p-points")
        shot(page, shots, "area")
        go(page, "#/meters")
        first = page.locator("#p-list tbody tr").count()
        assert first == 20
        page.locator("#p-list button[data-page=next]").click()
        wait_js(page, "document.querySelector('#p-list .pager span').textContent.includes('2')")
        assert page.locator("#p-list tbody tr").count() == demo_meters(data) - 20  # 20 + the rest, cut by the server
        assert "000000000024" in page.inner_text("#p-list")
        shot(page, shots, "meters-page-2")
        go(page, "#/commands")  # every command, paged on the server, by state
        assert page.locator("#p-list tbody tr").count() >= 1 and page.locator("#p-list .controls button").count() == 7
        go(page, "#/terminals")
        shot(page, shots, "terminals")
        if page.locator("#p-list tbody a").count():  # the demo's terminals (a concentrator, a DTU, ...)
            cycles = int(page.evaluate("document.body.dataset.cycles"))
            page.locator("#p-list tbody a").first.click()
            wait_js(page, f"document.body.dataset.page === 'terminal' && Number(document.body.dataset.cycles) > {cycles}")
            assert page.locator("#p-meters tbody a").count() >= 1
            shot(page, shots, "terminal-demo")
        go(page, "#/reports")
        assert page.locator("#report-form select[name=kind] option").count() == 4
        try:
            with page.expect_download(timeout=60_000) as got:
                page.locator("#report-form button[type=submit]").click()
        except sync_api.TimeoutError:  # say what the page said instead
            pytest.fail(f"no download; the page says: {page.inner_text('#toast')!r} {page.inner_text('#banner')!r}")
        saved = got.value.path()
        assert got.value.suggested_filename.endswith(".xlsx") and Path(saved).read_bytes()[:2] == b"PK"
        shot(page, shots, "reports")
        assert not page.problems, page.problems
    finally:
        context.close()


TERMINAL_SITE = """
[store]
data_dir = "{data}"
[listeners.gprs]
port = 1
[channels.dtu1]
dtu = {{ listener = "gprs", terminal = "DTU-0001" }}
[[meters]]
address = "000000000005"
channel = "dtu1"
[[meters]]
address = "000000000006"
channel = "dtu1"
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]
"""


@needs_chromium
def test_the_terminal_page_shows_its_online_history_meters_and_failures(browser, shots, tmp_path):
    """The demo has no terminal (yet): a site with a DTU, its online intervals and a failure, served in-process."""
    import tomllib
    from datetime import timedelta

    import uvicorn

    from meterd.api import TokenStore, create_app
    from meterd.config.loader import parse_config
    from meterd.storage.quality import QualityStore
    from meterd.storage.sqlite import Attempt, MeterRecord, SqliteStore

    now = datetime.now(UTC).replace(microsecond=0)
    with SqliteStore(tmp_path) as archive:
        archive.upsert_meters([MeterRecord(a, "dtu1", "dlt645-2007", 1, 1) for a in ("000000000005", "000000000006")])
        archive.record_attempts([Attempt("000000000006", "dtu1", "00010000", now - timedelta(minutes=5), "timeout",
                                         None, "no answer within 2.0 s"),
                                 Attempt("000000000005", "dtu1", "00010000", now - timedelta(minutes=5), "ok", 0.2)])
    with QualityStore(tmp_path) as quality:
        quality.record_watch("dtu1", now - timedelta(hours=6))
        quality.record_online("dtu1", now - timedelta(hours=6), now - timedelta(hours=4))
        quality.record_online("dtu1", now - timedelta(hours=3), None)
    with TokenStore(tmp_path) as tokens:
        token = tokens.create("wall", "viewer", now)[1]
    config = parse_config(tomllib.loads(TERMINAL_SITE.format(data=tmp_path)), source="terminal.toml")
    app = create_app(tmp_path, clock=lambda: datetime.now(UTC), config=config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        base = f"http://127.0.0.1:{server.config.port}"
        context, page = open_console(browser, base, token, route="#/terminal/DTU-0001")
        try:
            assert "online" in page.inner_text("#p-state") and "DTU" in page.inner_text("#p-state")
            assert page.locator("#p-online tbody tr").count() == 2
            assert "000000000006" in page.inner_text("#p-meters") and "timeout" in page.inner_text("#p-failures")
            share = page.inner_text("#p-state")
            assert "83.3 %" in share, share  # online 2 h + 3 h of the 6 h watched
            shot(page, shots, "terminal")
            assert not page.problems, page.problems
        finally:
            context.close()
    finally:
        server.should_exit = True
        thread.join(10)


@needs_chromium
def test_a_refused_token_asks_for_another(demo, browser):
    base, _, _ = demo
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{base}/dashboard#token=00000000.not-a-token")
        page.wait_for_selector("body[data-token=refused]", timeout=10_000)
        assert page.locator("#token-form").is_visible() and "401" in page.inner_text("#banner")
    finally:
        context.close()


def test_both_dictionaries_have_the_same_keys_and_every_key_the_page_names():
    words = json.loads((STATIC / "i18n.json").read_text(encoding="utf-8"))
    assert set(words) == {"en", "zh"}
    assert sorted(words["en"]) == sorted(words["zh"]), set(words["en"]) ^ set(words["zh"])
    assert all(words["zh"][k].strip() for k in words["zh"]), "an empty Chinese word"
    script = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    html = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    named = {m.group(1) for m in re.finditer(r'data-i18n(?:-placeholder)?="([^"]+)"', html)}
    named |= {m.group(1) for m in re.finditer(r'\bt\("([a-z0-9_.]+)"', script)}
    named |= {m.group(1).lstrip("#") for m in re.finditer(r'"(#?(?:col|empty|act|alarm|meter|account|area|terminal|list|ov)'
                                                          r'\.[a-z0-9_.]+)"', script)}
    missing = sorted(named - set(words["en"]) - {"alarm.pre_trip"})  # a quantity's name, not a word
    assert not missing, missing
    for term in ("台区", "线损", "保电", "跳闸", "合闸", "采集成功率"):  # the words operators use
        assert any(term in text for text in words["zh"].values()), term


def test_the_demo_refuses_a_taken_api_port(run_meterd, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = run_meterd("demo", "--data-dir", str(tmp_path / "d"), "--api-port", str(port), "--duration", "1")
    assert p.returncode == 2
    assert f"--api-port {port}" in p.stderr and "choose another port, or 0 for no API" in p.stderr
