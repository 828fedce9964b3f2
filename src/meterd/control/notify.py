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
names the URL (without query string or password) and the notice; ``send`` never raises.  Each wait
is bounded by the sink's ``timeout`` and a whole POST by three times it; the answer's body is not read.

Queueing.  :meth:`Notifier.publish` queues and returns at once; each sink drains a queue of its own
(at most :data:`MAX_QUEUED` notices, the oldest dropped past that), so a slow gateway delays only
its own notices, never a prepaid pass or a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from string import Template
from typing import Any, Final, Literal, Protocol

from meterd.control.policy import Notice
from meterd.logthrottle import LogThrottle

log = logging.getLogger(__name__)

TEMPLATE_FIELDS: Final = tuple(f.name for f in fields(Notice))
_RETRY_STATUS: Final = frozenset({408, 429})
#: Notices a sink may have queued; past that its oldest are dropped (:class:`Notifier`).
MAX_QUEUED: Final = 10_000
#: One POST may take at most this many times the sink's ``timeout`` in all (each wait is bounded by
#: the timeout itself; a gateway dribbling its answer a byte a wait is not).
POST_DEADLINE: Final = 3
#: Seconds the queued notices get to go out when the daemon stops (within the services' 5 s grace).
CLOSE_WAIT: Final = 3.0
#: A webhook's POSTs the gateway may hold open at once (each past its deadline); past that the next
#: fails at once instead of starting one more thread.
MAX_POSTS: Final = 4

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
        # POSTs run on daemon threads of the sink's own, at most MAX_POSTS at once: a gateway that
        # holds connections past every deadline holds these, never the threads the prepaid pass and
        # the stores run on, nor the process's exit.
        self._posting = 0

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
            deadline = asyncio.timeout(self.timeout * POST_DEADLINE)
            try:
                async with deadline:
                    await self._post_on_thread(data)
                return
            except urllib.error.HTTPError as exc:
                error = exc
                if 400 <= exc.code < 500 and exc.code not in _RETRY_STATUS:
                    break
            except TimeoutError as exc:
                # the whole POST's deadline (a gateway dribbling its answer's head: every wait short,
                # the whole long), or one wait's own timeout
                error = (TimeoutError(f"no answer within {self.timeout * POST_DEADLINE:g} s")
                         if deadline.expired() else exc)
            except (OSError, ValueError) as exc:  # URLError, refused, timeout; ValueError: a bad URL
                error = exc
        log.warning("webhook %s: %s not delivered after %d attempt(s): %s",
                    _redacted(self.url), _describe(notice), attempt + 1, error)

    async def _post_on_thread(self, data: bytes) -> None:
        """:meth:`_post` on a daemon thread of its own; refused at once while :data:`MAX_POSTS` of
        this sink's POSTs are still held by the gateway."""
        if self._posting >= MAX_POSTS:
            raise OSError(f"{self._posting} earlier POSTs still held open by the gateway")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            self._posting -= 1
            if done.done():
                return  # given up on: its deadline passed
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def work() -> None:
            error: BaseException | None = None
            try:
                self._post(data)
            except Exception as exc:  # noqa: BLE001 -- handed to the awaiting task, which sorts it out
                error = exc
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                    loop.call_soon_threadsafe(settle, error)

        self._posting += 1
        threading.Thread(target=work, name="webhook", daemon=True).start()
        await done

    def _post(self, data: bytes) -> None:
        """One POST; its status is the answer (an HTTPError when it is not 2xx/3xx). The body is not
        read: a gateway's answer, however long or slow, holds nothing meterd needs."""
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout):
            pass


class Notifier:
    """Sends notices to every sink; one failing or slow sink never stops the others, nor whoever
    publishes.

    :meth:`publish` queues and returns at once: the prepaid pass and the command executor that publish
    never wait for an SMS gateway (a gateway that took its 5 s timeout three times over per notice held
    the pass, and the trips it had queued, for hours on a day of many notices). Each sink has a queue
    of its own, at most ``max_queued`` notices, drained in order by a task of its own. A sink that
    falls that far behind loses its oldest notices, counted in :attr:`dropped` and logged once a
    minute; the newest say where each account stands now. The notices are in the ledger and the
    audit whatever becomes of them here.
    """

    def __init__(self, sinks: Sequence[NotifySink], *, max_queued: int = MAX_QUEUED) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        self.sinks = tuple(sinks)
        self.max_queued = max_queued
        self.dropped = [0] * len(self.sinks)  # per sink: notices dropped from a full queue
        self._queues: list[deque[Notice]] = [deque() for _ in self.sinks]
        self._wake = [asyncio.Event() for _ in self.sinks]
        self._busy = [False] * len(self.sinks)
        self._tasks: list[asyncio.Task[None] | None] = [None] * len(self.sinks)
        self._log = LogThrottle()

    async def publish(self, notices: Iterable[Notice]) -> None:
        """Queue ``notices`` for every sink; returns at once."""
        batch = list(notices)
        if not batch:
            return
        for i, sink in enumerate(self.sinks):
            queue = self._queues[i]
            queue.extend(batch)
            over = len(queue) - self.max_queued
            if over > 0:
                for _ in range(over):
                    queue.popleft()
                self.dropped[i] += over
                admit, earlier, _ = self._log.admit(log.name, f"dropped-{i}", logging.ERROR)
                if admit:
                    log.error("notify sink %s: %d notice(s) queued, its most (%d); the oldest are dropped "
                              "(%d so far; %d more drops since the last such line)", _name(sink), len(queue),
                              self.max_queued, self.dropped[i], earlier)
            task = self._tasks[i]
            if task is None or task.done():
                self._tasks[i] = asyncio.create_task(self._drain(i), name=f"notify-{_name(sink)}")
            self._wake[i].set()

    def queued(self) -> int:
        """Notices queued or being sent, over all sinks."""
        return sum(len(q) for q in self._queues) + sum(self._busy)

    async def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued notice to be sent (or given up); how many
        were still queued or in flight then."""
        deadline = time.monotonic() + timeout
        while self.queued() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.queued()

    async def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Give the queued notices ``timeout`` seconds, then stop the sinks' tasks; logs what was
        not sent."""
        left = self.queued()
        tasks = [t for t in self._tasks if t is not None]
        try:
            if tasks:
                left = await self.flush(timeout)
        finally:  # cancelled meanwhile (the daemon's grace ran out): the sinks' tasks end all the same
            self._tasks = [None] * len(self.sinks)
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if left:
            log.warning("notify: %d notice(s) not sent at stop (still queued after %g s)", left, timeout)

    async def _drain(self, i: int) -> None:
        sink, queue, wake = self.sinks[i], self._queues[i], self._wake[i]
        while True:
            while queue:
                notice = queue.popleft()
                self._busy[i] = True
                try:
                    await sink.send(notice)
                except Exception:
                    log.exception("notify sink %s failed on %s", _name(sink), _describe(notice))
                finally:
                    self._busy[i] = False
            wake.clear()
            await wake.wait()


def _name(sink: NotifySink) -> str:
    url = getattr(sink, "url", None)
    return f"{type(sink).__name__} {_redacted(url)}" if isinstance(url, str) else type(sink).__name__
