"""Notification sinks: where the policy's :class:`~meterd.control.policy.Notice` s go.

A sink is anything with ``async send(notice)``.  :class:`Notifier` hands every notice to every sink;
each sink takes the notices in order, the sinks run side by side, and a sink that fails (or is slow)
never stops the others.

* :class:`LogFileSink` appends one JSON object per line (JSON Lines).
* :class:`WebhookSink` POSTs to a URL: the notice as JSON, or a body made from a template.  An SMS
  gateway is a webhook with a template.

Wire form of a notice: ``{"account", "kind", "message", "at", "meter", "balance"}``; ``at`` is ISO 8601
with its offset, ``balance`` a string (``"-3.20"``: Decimal, never float), absent values null.

Templates.  ``str.format_map`` does not suit JSON bodies (every JSON brace would have to be doubled),
so templates use :class:`string.Template`: ``$account``, ``$kind``, ``$message``, ``$at``, ``$meter``,
``$balance`` (``${message}`` where a letter follows; ``$$`` for a dollar sign).  Each value is escaped
for the body it lands in -- ``escape="json"`` (the default) escapes it as the inside of a JSON string,
so put the placeholder between quotes; ``"form"`` URL-encodes it for
``application/x-www-form-urlencoded``; ``"none"`` leaves it as is.  A message with quotes, newlines or
Chinese text cannot break the body.  Unknown placeholders are refused when the sink is made::

    WebhookSink("https://sms.example/send",
                template='{"to": "13800000000", "text": "[$kind] $account: $message"}')

Delivery.  ``retries`` more attempts after the first, with a short doubling back-off; an HTTP 4xx
other than 408/429 is not retried (the request itself is wrong).  After the last failure a warning
names the URL (without query string or password) and the notice; ``send`` never raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from string import Template
from typing import Any, Final, Literal, Protocol

from meterd.control.policy import Notice

log = logging.getLogger(__name__)

TEMPLATE_FIELDS: Final = tuple(f.name for f in fields(Notice))
_RETRY_STATUS: Final = frozenset({408, 429})

Escape = Literal["json", "form", "none"]


class NotifySink(Protocol):
    async def send(self, notice: Notice) -> None: ...


def notice_dict(notice: Notice) -> dict[str, Any]:
    """The wire form of a notice (module docstring)."""
    out: dict[str, Any] = {}
    for f in fields(notice):
        value = getattr(notice, f.name)
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[f.name] = value
    return out


def _describe(notice: Notice) -> str:
    meter = f" meter {notice.meter}" if notice.meter else ""
    return f"{notice.kind} notice for account {notice.account!r}{meter} at {notice.at.isoformat()}: {notice.message}"


class LogFileSink:
    """Appends each notice as one JSON line to ``path`` (its folders are made as needed)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # lines from concurrent sends never interleave

    async def send(self, notice: Notice) -> None:
        line = json.dumps(notice_dict(notice), ensure_ascii=False) + "\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)


def _escape(value: str, how: Escape) -> str:
    if how == "json":
        return json.dumps(value, ensure_ascii=False)[1:-1]
    if how == "form":
        return urllib.parse.quote_plus(value)
    return value


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class WebhookSink:
    """POSTs each notice (of the ``kinds`` wanted; all when None) to ``url``."""

    def __init__(self, url: str, *, template: str | None = None, headers: Mapping[str, str] = {},
                 timeout: float = 5.0, retries: int = 2, kinds: frozenset[str] | None = None,
                 escape: Escape = "json", backoff: float = 0.5) -> None:
        if escape not in ("json", "form", "none"):
            raise ValueError(f"webhook {url}: escape must be json, form or none, not {escape!r}")
        self.template: Template | None = None
        if template is not None:
            self.template = Template(template)
            if not self.template.is_valid():
                raise ValueError(f"webhook {url}: template is not valid (a lone '$'? write '$$' for a dollar)")
            unknown = set(self.template.get_identifiers()) - set(TEMPLATE_FIELDS)
            if unknown:
                raise ValueError(f"webhook {url}: unknown template fields {sorted(unknown)}; "
                                 f"known: {', '.join(TEMPLATE_FIELDS)}")
        self.url = url
        self.escape: Escape = escape
        self.headers = dict(headers)
        if not any(k.lower() == "content-type" for k in self.headers):
            self.headers["Content-Type"] = ("application/x-www-form-urlencoded" if escape == "form"
                                            else "application/json; charset=utf-8")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.kinds = kinds
        self.backoff = backoff

    def body(self, notice: Notice) -> bytes:
        wire = notice_dict(notice)
        if self.template is None:
            return json.dumps(wire, ensure_ascii=False).encode()
        values = {k: _escape("" if v is None else str(v), self.escape) for k, v in wire.items()}
        return self.template.substitute(values).encode()

    async def send(self, notice: Notice) -> None:
        if self.kinds is not None and notice.kind not in self.kinds:
            return
        data = self.body(notice)
        attempts = self.retries + 1
        error: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                await asyncio.to_thread(self._post, data)
                return
            except urllib.error.HTTPError as exc:
                error = exc
                if 400 <= exc.code < 500 and exc.code not in _RETRY_STATUS:
                    break
            except (OSError, ValueError) as exc:  # URLError, refused, timeout; ValueError: a bad URL
                error = exc
        log.warning("webhook %s: %s not delivered after %d attempt(s): %s",
                    _redacted(self.url), _describe(notice), attempt + 1, error)

    def _post(self, data: bytes) -> None:
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()


class Notifier:
    """Sends notices to every sink; one failing sink never stops the others."""

    def __init__(self, sinks: Sequence[NotifySink]) -> None:
        self.sinks = tuple(sinks)

    async def publish(self, notices: Iterable[Notice]) -> None:
        batch = list(notices)
        if batch and self.sinks:
            await asyncio.gather(*(self._drain(sink, batch) for sink in self.sinks))

    @staticmethod
    async def _drain(sink: NotifySink, notices: list[Notice]) -> None:
        for notice in notices:
            try:
                await sink.send(notice)
            except Exception:
                log.exception("notify sink %s failed on %s", type(sink).__name__, _describe(notice))
