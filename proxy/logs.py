"""Logging set-up and the access log. Credentials never reach a log line: headers are not logged, and
secret query values (`access_token`, `key`, ...) are replaced before a path is written."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from proxy.policy.render import redact_query

access_log = logging.getLogger("egress.access")
Fields = Callable[[], dict[str, Any]]


def redact_target(path: str, query: str) -> str:
    return f"{path}?{redact_query(query)}" if query else path


class _SecondStamp:
    """strftime once per second, not once per line: the access log writes thousands of lines a second."""

    def __init__(self, fmt: str, convert: Any) -> None:
        self._fmt = fmt
        self._convert = convert
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self._fmt, self._convert(created))
        return self._text


class LineFormatter(logging.Formatter):
    """A formatter that can also make a line without a LogRecord: the access log's fast path."""

    def line(self, created: float, level: str, name: str, message: str, fields: Fields | None) -> str:
        """`fields` makes the line's structured fields: called only by a format that shows them."""
        raise NotImplementedError


def _msecs(created: float) -> int:
    return int((created - int(created)) * 1000)  # as LogRecord.msecs


class JsonFormatter(LineFormatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = _SecondStamp("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def _entry(self, created: float, level: str, name: str, message: str, fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": f"{self._stamp(created)}.{_msecs(created):03d}Z",
            "level": level.lower(),
            "logger": name,
            "msg": message,
        }
        if isinstance(fields, dict):
            entry.update(fields)
        return entry

    def line(self, created: float, level: str, name: str, message: str, fields: Fields | None) -> str:
        return json.dumps(self._entry(created, level, name, message, fields and fields()), default=str)

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(
            record.created, record.levelname, record.name, record.getMessage(), getattr(record, "fields", None)
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(LineFormatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._stamp = _SecondStamp("%Y-%m-%d %H:%M:%S", self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created)

    def _time(self, created: float) -> str:
        return f"{self._stamp(created)},{_msecs(created):03d}"

    def line(self, created: float, level: str, name: str, message: str, fields: Fields | None) -> str:
        # The same line as the format string above, without the generic machinery: one per request.
        return f"{self._stamp(created)},{_msecs(created):03d} {level} {name} {message}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), None)


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines are gathered and written at most every `interval` (or per `limit` lines), like nginx's
    `access_log ... buffer=`: one write syscall per burst instead of one per request.

    Access lines wait as their entries (`defer`) and are formatted at the flush, in one batch: formatting is
    the same work either way, but a batch runs it warm, where each request formatting its own line between two
    network events paid for cold caches every time (measured: about 1 µs a request when refusals come by the
    ten thousand a second). The line keeps the time its request was logged at."""

    def __init__(self, stream: Any, interval: float = 0.1, limit: int = 512) -> None:
        super().__init__(stream)
        self.interval = interval
        self.limit = limit
        self._pending: list[str | tuple[float, AccessEntry]] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def defer(self, created: float, entry: AccessEntry) -> None:
        self._add((created, entry))

    def _add(self, item: str | tuple[float, AccessEntry]) -> None:
        self._pending.append(item)
        if len(self._pending) >= self.limit:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.interval, self.flush)
                self._scheduled = True
            except RuntimeError:  # no event loop (start-up, shutdown): write at once
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        try:
            if self._pending:
                pending, self._pending = self._pending, []
                self.stream.write("".join([self._line(item) + self.terminator for item in pending]))
            super().flush()
        except (OSError, ValueError):  # the stream is gone (closed, disk full): the lines are, the requests go on
            pass

    def _line(self, item: str | tuple[float, AccessEntry]) -> str:
        if isinstance(item, str):
            return item
        created, entry = item
        if isinstance(self.formatter, LineFormatter):
            return self.formatter.line(created, "INFO", access_log.name, entry.message(), entry._asdict)
        return self.format(_access_record(entry, created))  # the formatter was replaced since


def configure(level: str = "info", fmt: str = "text") -> None:
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    buffered = BufferedStreamHandler(sys.stderr)
    buffered.setFormatter(formatter)
    access_log.handlers[:] = [buffered]
    access_log.propagate = False
    logging.getLogger("aiohttp.access").disabled = True  # the sidecar writes its own access log
    # Per the logging HOWTO's "Optimization": records need no thread or process names here.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class AccessEntry(NamedTuple):
    """One access-log line: a fixed set of fields, like nginx's `log_format`. One is made per request, so it is
    a tuple, and its text is one f-string; empty fields are left out of the text (a JSON line has them all)."""

    request_id: str
    upstream: str  # "" when the request named no known upstream
    route: str
    method: str
    path: str  # redacted (see redact_target)
    status: int
    duration_ms: float
    bytes: int = 0
    attempts: int = 0
    egress_error: str | None = None
    cache: str | None = None

    def message(self) -> str:
        where = f" upstream={self.upstream} route={self.route}" if self.upstream else ""
        text = (
            f"request_id={self.request_id}{where} method={self.method} path={self.path} status={self.status}"
            f" duration_ms={self.duration_ms} bytes={self.bytes} attempts={self.attempts}"
        )
        if self.egress_error:
            text += f" egress_error={self.egress_error}"
        if self.cache:
            text += f" cache={self.cache}"
        return text


def log_access(entry: AccessEntry) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    sole = _sole_handler()
    if sole is not None:
        # The running sidecar: access lines have one destination, so they need no LogRecord, no handler
        # lookup and no lock (they are only written from the event loop). About half the cost of a record.
        sole.defer(time.time(), entry)
        return
    access_log.handle(_access_record(entry))


def _access_record(entry: AccessEntry, created: float | None = None) -> logging.LogRecord:
    # Made directly: `Logger.info` would walk the stack to find the caller, on every request.
    record = logging.LogRecord(access_log.name, logging.INFO, __file__, 0, entry.message(), None, None)
    if created is not None:
        record.created, record.msecs = created, _msecs(created)
    record.fields = entry._asdict()
    return record


def _sole_handler() -> BufferedStreamHandler | None:
    """The access log's handler when `configure` set it up and nothing was added since (a test's capturing
    handler, a filter, propagation): else records go through `logging` as usual."""
    handlers = access_log.handlers
    if len(handlers) != 1 or access_log.propagate or access_log.filters:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if type(handler) is not BufferedStreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    return handler if isinstance(formatter, LineFormatter) else None
