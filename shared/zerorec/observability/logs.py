"""Structured logs: one JSON object per line, with the request's trace id on every line logged
while a request is handled (`zerorec.observability.trace`), so `grep <trace_id>` over the logs of
every function follows one recommendation through the BFF, user, recall, ranking, reranking and item.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from zerorec.observability.trace import current

# LogRecord attributes that are not `extra=` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "function", "trace_id", "span_id", ...extra, "exc"}`."""

    def __init__(self, function: str | None = None) -> None:
        super().__init__()
        self.function = function

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.function:
            doc["function"] = self.function
        ctx = current.get()
        if ctx is not None:
            doc["trace_id"] = ctx.trace_id
            doc["span_id"] = ctx.span_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "warning", fmt: str = "json", function: str | None = None) -> None:
    """Root logger to stderr at `level`, as JSON lines (`fmt='json'`) or plain text; every library
    logger (uvicorn's included, when uvicorn is given `log_config=None`) propagates to it."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(function))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
