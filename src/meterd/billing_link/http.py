"""HTTP JSON to and from the billing system, on ``urllib.request`` (no extra dependency).

Import is paged: ``GET url?since=<watermark>&limit=N`` answers ``{"records": [...], "next": "<w>"}``;
the caller applies a page, then commits ``next`` as the watermark, and asks again until ``next``
is null or absent.  Export is one ``POST`` of a JSON document, with an ``Idempotency-Key`` (the
export's file name) so a receiver can drop a repeated delivery.

The bearer token comes from an environment variable named in the job; it is never logged and
never part of an error.  Errors are :class:`HttpSyncError` with the URL as shown by
:func:`shown_url` (no user info, secret-looking query values masked) and the HTTP status.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

from meterd.control.amounts import JsonNumber
from meterd.errors import SyncError

TIMEOUT: Final = 30.0
MAX_ANSWER: Final = 64 * 1024 * 1024  # bytes of an answer read at most (a job passes its max_file_mb)
#: Seconds one answer may take from the request to its last byte.  TIMEOUT bounds each wait for
#: bytes; a server trickling a byte every few seconds would otherwise hold the job (one run of a job
#: at a time) for hours.
ANSWER_DEADLINE: Final = 600.0
_READ: Final = 64 * 1024
_SECRET_WORDS: Final = ("token", "key", "secret", "pass", "auth", "sig", "credential")


class HttpSyncError(SyncError):
    """An HTTP exchange with the billing system failed; ``status`` is None when no answer came."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(f"{message}: {url}" + (f" (HTTP {status})" if status is not None else ""))


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Any]
    next: str | None


def shown_url(url: str) -> str:
    """The URL fit for logs and errors: no ``user:password@``, secret-looking query values masked."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = urllib.parse.urlencode(
        [(k, "***" if any(w in k.lower() for w in _SECRET_WORDS) else v)
         for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, ""))


def token_from_env(name: str | None) -> str | None:
    if name is None:
        return None
    from meterd import secrets

    token = secrets.lookup(name)
    if not token:
        raise SyncError(f"{secrets.where(name)} (the billing system's token) is not set")
    return token


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k not in params] + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "meterd-billing-link"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _send(request: urllib.request.Request, shown: str, timeout: float, max_bytes: int = MAX_ANSWER) -> bytes:
    """The answer's body, at most ``max_bytes`` of it, within :data:`ANSWER_DEADLINE`: a longer or
    slower one is an error, read no further."""
    deadline = time.monotonic() + ANSWER_DEADLINE
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            parts: list[bytes] = []
            size = 0
            while chunk := response.read1(_READ):  # what one wait brings, so the deadline is checked
                parts.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise HttpSyncError(f"{request.get_method()} answer is longer than {max_bytes:,} bytes (the "
                                        "job's max_file_mb); nothing of it applied", url=shown, status=response.status)
                if time.monotonic() > deadline:
                    raise HttpSyncError(f"{request.get_method()} answer took longer than {ANSWER_DEADLINE:g} s "
                                        f"({size:,} bytes came); nothing of it applied", url=shown,
                                        status=response.status)
            return b"".join(parts)
    except urllib.error.HTTPError as exc:
        raise HttpSyncError(f"{request.get_method()} refused", url=shown, status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timeout, TLS
        reason = getattr(exc, "reason", exc)
        raise HttpSyncError(f"{request.get_method()} failed ({reason})", url=shown) from None


def get_page(url: str, *, since: str | None, limit: int, token: str | None, timeout: float = TIMEOUT,
             max_bytes: int = MAX_ANSWER) -> Page:
    params = {"limit": str(limit)}
    if since is not None:
        params = {"since": since, **params}
    full = _with_query(url, params)
    shown = shown_url(full)
    body = _send(urllib.request.Request(full, headers=_headers(token)), shown, timeout, max_bytes)
    try:
        doc = json.loads(body.decode("utf-8-sig"), parse_float=JsonNumber)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, a 4,300-digit integer
        raise HttpSyncError(f"answer is not JSON ({str(exc)[:200]})", url=shown, status=200) from None
    if isinstance(doc, list):  # a bare list: one page, nothing more
        return Page(doc, None)
    if not isinstance(doc, dict) or not isinstance(doc.get("records", []), list):
        raise HttpSyncError('answer is not {"records": [...], "next": ...}', url=shown, status=200)
    nxt = doc.get("next")
    return Page(doc.get("records", []), None if nxt is None or nxt == "" else str(nxt))


def post_json(url: str, doc: Any, *, token: str | None, key: str, timeout: float = TIMEOUT) -> None:
    body = json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8")
    headers = {**_headers(token), "Content-Type": "application/json; charset=utf-8", "Idempotency-Key": key}
    _send(urllib.request.Request(url, data=body, headers=headers, method="POST"), shown_url(url), timeout)
