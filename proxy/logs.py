"""Logging set-up and the access log. Credentials never reach a log line: headers are not logged, and
secret query values (`access_token`, `key`, `X-Amz-Signature`, ... and the policy's `redact.query`) are replaced
before a path is written, in the access log and in every other line that names a request target."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from proxy.memo import Memo
from proxy.policy.model import SECRET_QUERY_NAMES
from proxy.policy.render import redact_query


class Occasional:
    """A warning for a backend that fails every request (the cache's, pacing's Redis): written at most once per
    `every` seconds, with what failed said the same way everywhere."""

    __slots__ = ("_at", "every")

    def __init__(self, every: float) -> None:
        self.every = every
        self._at = float("-inf")

    def due(self) -> bool:
        """Whether to write it now (and then not again for `every` seconds)."""
        now = time.monotonic()
        if now - self._at < self.every:
            return False
        self._at = now
        return True

    @staticmethod
    def failure(exc: BaseException) -> str:
        return "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"


def iso(at: float, timespec: str = "seconds") -> str:
    """Epoch seconds as the admin port and JSON answers write times: `2026-12-03T17:30:20Z`."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")

access_log = logging.getLogger("egress.access")
Fields = Callable[[], dict[str, Any]]


def redact_target(path: str, query: str, names: Collection[str] = SECRET_QUERY_NAMES) -> str:
    """`names`: the running policy's `redact.query` (the defaults plus its additions)."""
    return f"{path}?{redact_query(query, names)}" if query else path


class _SecondStamp:
    """strftime once per second, not once per line: the access log writes thousands of lines a second (timeit: 1.1 µs
    a strftime, 0.5 µs remembered). Two seconds remembered: a batch's lines may straddle a second boundary."""

    def __init__(self, fmt: str, convert: Any) -> None:
        self._fmt = fmt
        self._convert = convert
        self._seconds: Memo[int, str] = Memo(2)

    def __call__(self, created: float) -> str:
        return self._seconds.get(int(created), self._format)

    def _format(self, second: int) -> str:
        return time.strftime(self._fmt, self._convert(second))


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
        return f"{self._time(created)} {level} {name} {message}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), None)


class AccessLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: `proxy.account` hands it a batch of lines at a time, written with one write
    syscall (like nginx's `access_log ... buffer=`), so it holds nothing back itself. A stream that is gone
    (closed, a full disk) loses the lines, never the requests."""

    def write_lines(self, lines: Sequence[str]) -> None:
        if lines:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(self.terminator.join(lines) + self.terminator)
            self.flush()

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # also at exit, when logging flushes every handler
            super().flush()


def configure(level: str = "info", fmt: str = "text") -> None:
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = AccessLogHandler(sys.stderr)
    access.setFormatter(formatter)
    access_log.handlers[:] = [access]
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
    duration_ms: float  # written with 2 decimals
    bytes: int = 0
    attempts: int = 0
    egress_error: str | None = None
    cache: str | None = None
    hedges: int = 0
    egress_detail: str | None = None  # the sidecar's own answer's `detail`: JSON lines and the status page only

    def message(self) -> str:
        # One f-string (a line per request): `:.2f`, as `round()` with digits costs as much as the rest.
        return (
            f"request_id={self.request_id}{f' upstream={self.upstream} route={self.route}' if self.upstream else ''}"
            f" method={self.method} path={self.path} status={self.status} duration_ms={self.duration_ms:.2f}"
            f" bytes={self.bytes} attempts={self.attempts}"
            f"{f' egress_error={self.egress_error}' if self.egress_error else ''}"
            f"{f' cache={self.cache}' if self.cache else ''}"
            f"{f' hedges={self.hedges}' if self.hedges else ''}"
        )

    def fields(self) -> dict[str, Any]:
        return {**self._asdict(), "duration_ms": round(self.duration_ms, 2)}


def log_accesses(entries: Sequence[tuple[float, AccessEntry]]) -> None:
    """Access-log lines, each stamped with its time."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    sole = _sole_handler()
    if sole is not None:
        # The running sidecar: access lines have one destination, so they need no LogRecord, no handler
        # lookup and no lock (they are only written from the event loop). About half the cost of a record.
        line, name = sole[1].line, access_log.name
        sole[0].write_lines([line(created, "INFO", name, entry.message(), entry.fields) for created, entry in entries])
        return
    for created, entry in entries:
        # A record made directly: `Logger.info` would walk the stack to find the caller, on every request.
        record = logging.LogRecord(access_log.name, logging.INFO, __file__, 0, entry.message(), None, None)
        record.created, record.msecs = created, _msecs(created)
        record.fields = entry.fields()
        access_log.handle(record)


def _sole_handler() -> tuple[AccessLogHandler, LineFormatter] | None:
    """The access log's handler and formatter when `configure` set them up and nothing was added since (a test's
    capturing handler, a filter, propagation): else records go through `logging` as usual."""
    handlers = access_log.handlers
    if len(handlers) != 1 or access_log.propagate or access_log.filters:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if type(handler) is not AccessLogHandler or handler.filters or handler.level > logging.INFO:
        return None
    return (handler, formatter) if isinstance(formatter, LineFormatter) else None
