"""Logging set-up and the access log. Credentials never reach a log line: headers are not logged, and
secret query values (`access_token`, `key`, ...) are replaced before a path is written."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from proxy.policy.render import redact_query

access_log = logging.getLogger("egress.access")


def redact_target(path: str, query: str) -> str:
    return f"{path}?{redact_query(query)}" if query else path


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # the sidecar writes its own access log


def log_access(fields: dict[str, Any]) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and v != "")
    access_log.info(text, extra={"fields": fields})
