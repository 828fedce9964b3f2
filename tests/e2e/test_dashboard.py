"""The dashboard in a real browser: ``meterd demo`` serves the API and the page, headless Chromium
(Debian's ``chromium``) opens it with the token the demo printed, and we read what it drew.

How the browser is checked, without a driver library: ``--dump-dom`` prints the DOM after
``--virtual-time-budget`` milliseconds of page time (timers run fast-forward; page time stands
still while requests are in flight, so the polls really reach the daemon).  The page marks its
state on ``<body>`` (``data-loaded``, ``data-errors``, ``data-curve-points``, ``data-energy-bars``,
``data-token``...), which we parse.  A second run takes a screenshot (``--screenshot``), kept in
the test's temporary directory (and copied to ``$METERD_ARTIFACTS`` when set) for a human to see.
A wrong token must be refused visibly; and the page must still draw for an older daemon without
the summary endpoints (overview, curve, energy...), from the meters and their readings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
import uvicorn

from conftest import free_port
from meterd.api import create_app
from meterd.config.loader import parse_config

CHROMIUM = "/usr/bin/chromium"
WINDOW = (1400, 1800)

# Skipped only on a developer machine without the browser; in CI (.ci/run installs it) a missing
# browser fails instead of passing silently.
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                    reason=f"{CHROMIUM} is not installed (Debian package chromium; .ci/run installs it)")


class Page(HTMLParser):
    """The attributes of <body> and of every element with an id, and the text under each id."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []
        self.feed(dom)

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        found = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in found.items()}
        if tag in ("meta", "link", "input", "br", "img"):
            return
        ident = found.get("id")
        if ident:
            self.by_id[ident] = found
            self.text.setdefault(ident, "")
        self._open.append((tag, ident))

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        for _, ident in self._open:
            if ident:
                self.text[ident] += data


def chromium(tmp_path: Path, url: str, *args: str, budget_ms: int = 12_000) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
         "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         *args, url],
        capture_output=True, text=True, timeout=180, check=False)


def api(base: str, path: str, token: str) -> object:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def demo(meterd_bin, tmp_path):
    """``meterd demo`` with its API on a free port: (base URL, token, data dir, process)."""
    port = free_port()
    data = tmp_path / "demo-data"
    process = subprocess.Popen(
        [meterd_bin, "demo", "--data-dir", str(data), "--api-port", str(port), "--duration", "240",
         "--interval", "2", "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    errors: list[str] = []

    def drain(stream, into: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            into.append(line)  # noqa: PERF402 -- one by one: the test reads the list meanwhile

    threading.Thread(target=drain, args=(process.stdout, lines), daemon=True).start()
    threading.Thread(target=drain, args=(process.stderr, errors), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines + errors)[-3000:]
            url = next((line.split(" ", 1)[1].strip() for line in list(lines) if line.startswith("dashboard: ")), None)
            time.sleep(0.1)
        base, _, token = url.partition("/dashboard#token=")
        assert base == f"http://127.0.0.1:{port}" and token
        # wait until there is something to draw: collection attempts and a point on meter 1's curve
        while True:
            try:
                overview = api(base, "/api/v1/overview", token)
                curve = api(base, "/api/v1/curve?meter=000000000001&step=1m", token)
                if overview["collection"]["attempts"] and curve["points"]:  # type: ignore[index]
                    break
            except (OSError, urllib.error.HTTPError):
                pass
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines + errors)[-3000:]
            time.sleep(0.5)
        yield base, token, data, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@needs_chromium
def test_the_dashboard_draws_the_demo_in_headless_chromium(demo, tmp_path):
    base, token, data, process = demo
    url = f"{base}/dashboard?refresh=2&step=1m#token={token}"

    shown = chromium(tmp_path, url, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-3000:]
    page = Page(shown.stdout)
    body = page.body
    assert body.get("data-loaded") == "1", (body, shown.stderr[-2000:])
    assert body["data-token"] == "ok"
    assert body["data-errors"] == "", body["data-errors"]
    assert "hidden" in page.by_id["banner"]  # no error banner
    assert "hidden" in page.by_id["token-form"]  # the token from the fragment was taken
    assert int(body["data-cycles"]) >= 2  # it polled again: live
    assert int(body["data-curve-points"]) >= 1  # the load curve has data
    assert int(body["data-energy-bars"]) >= 1  # so has the energy chart
    assert 0 < float(body["data-success-rate"]) <= 1  # one meter never answers, one garbles: below 1
    assert body["data-timezone"] == "Asia/Shanghai"  # the demo's config names no [site]
    assert page.text["updated"].count(":") == 2 and "Asia/Shanghai (UTC+08:00)" in shown.stdout
    assert page.text["t-meters"].strip() == "24"
    assert "%" in page.text["t-success"] and "target 97 %" in page.text["t-success-detail"]
    assert "mbtcp" in page.text["quality-rows"] and "TA-DEMO" in page.text["areas-rows"]  # the demo's area
    assert page.text["curve-note"].startswith("unit TA-DEMO")  # with a topology: the area's load
    assert "Chart.js did not load" not in shown.stdout

    shot = tmp_path / "dashboard.png"
    taken = chromium(tmp_path, url, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    assert taken.returncode == 0, taken.stderr[-3000:]
    picture = shot.read_bytes()
    assert png_size(picture) == WINDOW
    assert len(picture) > 50_000  # charts, tables and text; a blank page is a few kB
    if os.environ.get("METERD_ARTIFACTS"):
        shutil.copy(shot, Path(os.environ["METERD_ARTIFACTS"]) / "dashboard.png")
    print(f"dashboard screenshot: {shot}")

    refused = Page(chromium(tmp_path, f"{base}/dashboard#token=00000000.not-a-token", "--dump-dom",
                            budget_ms=5_000).stdout)
    assert refused.body["data-token"] == "refused" and refused.body["data-loaded"] == "0"
    assert "hidden" not in refused.by_id["banner"] and "401" in refused.text["banner"]
    assert "hidden" not in refused.by_id["token-form"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    for f in data.iterdir():  # the demo's token is stored hashed, like any other
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f

    # an older daemon, without the summary endpoints: the page draws from what is there
    older = {"/api/v1/overview", "/api/v1/curve", "/api/v1/energy", "/api/v1/lineloss", "/api/v1/quality",
             "/api/v1/terminals"}
    with serve(data, without=older) as old_base:
        page = Page(chromium(tmp_path, f"{old_base}/dashboard?step=1m#token={token}", "--dump-dom").stdout)
    assert page.body["data-loaded"] == "1" and page.body["data-errors"] == "", page.body
    assert int(page.body["data-curve-points"]) >= 1 and int(page.body["data-energy-bars"]) >= 1
    assert "has no /api/v1/curve" in page.text["curve-note"] and page.text["t-meters"].strip() == "24"
    assert "does not serve /api/v1/lineloss" in page.text["areas-rows"]

    # a site in another zone: the page takes it from the overview and shows its times in it
    site = parse_config(tomllib.loads(f'[site]\ntimezone = "America/Sao_Paulo"\n[store]\ndata_dir = "{data}"\n'))
    with serve(data, without=set(), config=site) as elsewhere:
        shown = chromium(tmp_path, f"{elsewhere}/dashboard#token={token}", "--dump-dom")
    page = Page(shown.stdout)
    assert page.body["data-loaded"] == "1" and page.body["data-errors"] == "", page.body
    assert page.body["data-timezone"] == "America/Sao_Paulo"
    assert "America/Sao_Paulo (UTC-03:00)" in shown.stdout and "UTC+08:00" not in shown.stdout

    # an endpoint the page needs fails: the banner says which, the rest is still drawn
    with serve(data, without={"/api/v1/anomalies"}) as broken:
        page = Page(chromium(tmp_path, f"{broken}/dashboard#token={token}", "--dump-dom").stdout)
    assert page.body["data-loaded"] == "1" and page.body["data-errors"] == "anomalies: 404 Not Found"
    assert "hidden" not in page.by_id["banner"] and "anomalies: 404 Not Found" in page.text["banner"]
    assert page.text["t-meters"].strip() == "24" and int(page.body["data-energy-bars"]) >= 1


@contextlib.contextmanager
def serve(data_dir: Path, *, without: set[str], config: object = None):
    """The API app over ``data_dir`` in this process, minus the routes ``without``."""
    app = create_app(data_dir, clock=lambda: datetime.now(timezone.utc), config=config)
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in without]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_demo_refuses_a_taken_api_port(run_meterd, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = run_meterd("demo", "--data-dir", str(tmp_path / "d"), "--api-port", str(port), "--duration", "1")
    assert p.returncode == 2
    assert f"--api-port {port}" in p.stderr and "choose another port, or 0 for no API" in p.stderr
