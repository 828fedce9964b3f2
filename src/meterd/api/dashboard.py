"""The built-in operator dashboard: one HTML page, its script and style, and Chart.js, all
served by the daemon itself from package data (``meterd/api/static/``).

Strategy: nothing is built at install time and nothing is fetched from elsewhere.  The page is
plain HTML with a vanilla script that polls the JSON API with the operator's Bearer token (typed
into the page or passed in the URL fragment, which never reaches the server) and draws with the
vendored Chart.js (``static/vendor/``; its README gives the version and checksum).

- ``GET /dashboard`` needs no token: the page holds no data, every data call does.  Its asset
  URLs carry ``?v=<content hash>``, so the page is revalidated (``no-cache``) while the assets may be
  cached for a day and change name when an upgrade changes them.
- ``GET /dashboard/static/<path>`` serves only the files found in the package at start (a fixed
  table: no path is ever joined from the request), with an ETag and 304 on ``If-None-Match``.
- Every answer carries a Content-Security-Policy that allows this origin only (no inline script,
  no external origin, no framing), ``nosniff`` and ``no-referrer``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC_DIR: Final = Path(__file__).with_name("static")
PAGE: Final = "dashboard.html"
PREFIX: Final = "/dashboard/static/"
CONTENT_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
              "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ASSET_CACHE: Final = "public, max-age=86400"
PAGE_CACHE: Final = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # quoted, as sent

    @property
    def version(self) -> str:
        return self.etag.strip('"')[:12]


def _asset(path: Path) -> Asset:
    body = path.read_bytes()
    return Asset(body, CONTENT_TYPES[path.suffix], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


@functools.cache
def assets() -> dict[str, Asset]:
    """The servable files, by their path under ``static/`` (``vendor/chart.umd.min.js``)."""
    found = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.suffix in CONTENT_TYPES and path.name != PAGE:
            found[path.relative_to(STATIC_DIR).as_posix()] = _asset(path)
    return found


@functools.cache
def page() -> Asset:
    """The HTML with ``{{v:NAME}}`` replaced by each asset's content hash."""
    text = (STATIC_DIR / PAGE).read_text(encoding="utf-8")
    for name, asset in assets().items():
        text = text.replace("{{v:" + name + "}}", asset.version)
    if "{{v:" in text:
        raise RuntimeError(f"{PAGE} names an asset that is not in {STATIC_DIR}: {text[text.index('{{v:'):][:60]}")
    body = text.encode("utf-8")
    return Asset(body, CONTENT_TYPES[".html"], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _send(request: Request, asset: Asset, cache: str) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag}
    wanted = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip() for tag in wanted.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(b"" if request.method == "HEAD" else asset.body, media_type=asset.content_type,
                    headers={**headers, "Content-Length": str(len(asset.body))})


async def dashboard_page(request: Request) -> Response:
    return _send(request, page(), PAGE_CACHE)


async def dashboard_asset(request: Request) -> Response:
    found = assets().get(request.path_params["path"])
    if found is None:
        return Response("not found\n", status_code=404, media_type="text/plain; charset=utf-8",
                        headers=SECURITY_HEADERS)
    return _send(request, found, ASSET_CACHE)


async def dashboard_slash(request: Request) -> Response:
    return RedirectResponse("../dashboard", status_code=308)


def dashboard_routes() -> list[BaseRoute]:
    return [
        Route("/dashboard", dashboard_page, methods=["GET", "HEAD"]),
        Route("/dashboard/", dashboard_slash, methods=["GET", "HEAD"]),
        Route(PREFIX + "{path:path}", dashboard_asset, methods=["GET", "HEAD"]),
    ]
