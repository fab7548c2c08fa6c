"""What the API's and the worker's log lines share: the id of the request a line belongs to, and its format.

Each HTTP request has an id (its sane `X-Request-ID`, or a new one), kept in a context variable for as long as the
request runs; a booking job carries the id of the request that queued it (core/queue.py) and sets it again in the
worker, so one id finds a booking's lines in both processes. A filter puts the id on every record, and lines are
text or JSON (LOG_FORMAT). Each process sets its logging up in one place: service/api/logs.py, worker/arq_ext.py.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
# Printable ASCII without spaces, at most 64 characters: safe in a header, a log line and a JSON string. Anything
# else a client sends is replaced, not cleaned up, so an id is either the client's exactly or ours.
SANE_REQUEST_ID = re.compile(r"[!-~]{1,64}")

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(sent: str | None) -> str:
    """The client's id if it is sane, else a new one."""
    return sent if sent is not None and SANE_REQUEST_ID.fullmatch(sent) else new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on each record, in the thread that logs it (a queue handler formats later,
    elsewhere, where the context variable is not set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """`time level logger [request id]: message`; the brackets only when there is an id."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ms), level, logger, message, request_id, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Not ASCII-escaped: a line keeps the characters it logs (arq's ● and →), and stays one line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(json_lines: bool) -> dict[str, Any]:
    """The one formatter of a process, for logging.config.dictConfig."""
    return {"()": JsonFormatter if json_lines else TextFormatter}


FILTERS: dict[str, Any] = {"request_id": {"()": RequestIdFilter}}
