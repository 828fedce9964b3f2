"""The dashboard's routes over real HTTP (uvicorn on a free port, the app the daemon serves):

- the page needs no token, is HTML, names its assets with content hashes, and holds no inline
  script or style (the CSP forbids them) nor any external origin;
- every answer (page, assets, 404) carries a CSP that allows this origin only, nosniff, no-referrer;
- assets have their content types, an ETag, a day's cache and 304 on If-None-Match; nothing outside
  the static folder is served, however the path is spelled;
- the vendored Chart.js is the one its README names (version and sha256), with its licence;
- the data behind the page still needs a token;
- the static files are package data: setuptools copies them into a build.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import uvicorn

from conftest import free_port
from meterd.api import create_app
from meterd.api.dashboard import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    app = create_app(data_dir, clock=lambda: NOW)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def check_security_headers(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp and "http" not in csp and "*" not in csp
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"


def test_the_page_is_served_without_a_token(base):
    status, headers, body = fetch(base + "/dashboard")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["etag"]
    check_security_headers(headers)
    html = body.decode()
    assert "<title>meterd" in html and 'id="curve-chart"' in html and 'id="energy-chart"' in html
    assert "{{" not in html  # every asset version filled in
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', html) if not a.startswith("#")]  # "#/...": pages
    assert sorted(a.split("?")[0] for a in assets) == [
        "dashboard/static/dashboard.css", "dashboard/static/dashboard.js", "dashboard/static/vendor/chart.umd.min.js"]
    for asset in assets:  # relative (works behind a path prefix), versioned by content
        name = asset.split("?")[0].removeprefix("dashboard/static/")
        digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()
        assert asset.endswith(f"?v={digest[:12]}"), asset
    assert "<script>" not in html and " style=" not in html and "<style" not in html  # CSP: none inline
    assert "://" not in html  # no external origin
    status, headers, body = fetch(base + "/dashboard", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] != "0"
    status, headers, _ = fetch(base + "/dashboard/")
    assert status == 200 and headers["content-type"].startswith("text/html")  # redirected to /dashboard


@pytest.mark.parametrize("name, content_type", [
    ("dashboard.js", "text/javascript; charset=utf-8"),
    ("dashboard.css", "text/css; charset=utf-8"),
    ("vendor/chart.umd.min.js", "text/javascript; charset=utf-8"),
])
def test_assets_with_types_cache_and_etag(base, name, content_type):
    status, headers, body = fetch(f"{base}/dashboard/static/{name}")
    assert status == 200 and headers["content-type"] == content_type
    assert body == (STATIC_DIR / name).read_bytes()
    assert headers["cache-control"] == "public, max-age=86400"
    check_security_headers(headers)
    status, again, body = fetch(f"{base}/dashboard/static/{name}", {"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["etag"] == headers["etag"]
    status, _, _ = fetch(f"{base}/dashboard/static/{name}", {"If-None-Match": '"something-else"'})
    assert status == 200


@pytest.mark.parametrize("path", [
    "/dashboard/static/nothing.js", "/dashboard/static/../dashboard.py", "/dashboard/static/%2e%2e/dashboard.py",
    "/dashboard/static/..%2fdashboard.py", "/dashboard/static/vendor/README.md", "/dashboard/static/dashboard.html",
    "/dashboard/static/", "/dashboard/static//etc/passwd",
])
def test_nothing_else_is_served(base, path):
    status, _, body = fetch(base + path)
    assert status == 404, (path, body[:100])
    assert b"import" not in body and b"root:" not in body


def test_the_data_still_needs_a_token(base):
    status, headers, _ = fetch(base + "/api/v1/meters")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")


def test_the_script_never_puts_api_text_into_html():
    script = (STATIC_DIR / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "http://" not in script and "https://" not in script  # same origin only


def test_the_vendored_chart_js_matches_its_readme():
    vendor = STATIC_DIR / "vendor"
    readme = (vendor / "README.md").read_text()
    library = (vendor / "chart.umd.min.js").read_bytes()
    version = re.search(r"npm `chart\.js@(\d+\.\d+\.\d+)`", readme).group(1)
    assert version.startswith("4.")
    assert library.startswith(f"/*!\n * Chart.js v{version}\n".encode())
    assert hashlib.sha256(library).hexdigest() in readme
    assert "MIT License" in (vendor / "chart.js.LICENSE.md").read_text()
    assert b"window.Chart=" in library  # the UMD build: a plain <script> defines Chart


def test_the_static_files_are_package_data(tmp_path):
    """setuptools' build_py (what a wheel or ``pip install .`` copies) picks up the static files."""
    tree = tmp_path / "tree"  # a copy: building writes build/ and egg-info next to the sources
    shutil.copytree(ROOT / "src" / "meterd", tree / "src" / "meterd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    out = tmp_path / "lib"
    built = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                            "--build-lib", str(out)], cwd=tree, timeout=300, capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr
    for name in ("dashboard.html", "dashboard.js", "dashboard.css", "vendor/chart.umd.min.js",
                 "vendor/chart.js.LICENSE.md", "vendor/README.md"):
        assert (out / "meterd" / "api" / "static" / name).is_file(), name
    assert (out / "meterd" / "api" / "dashboard.py").is_file()
