"""Process logging, configured once by the CLI: to stderr only (stdout belongs to the stdio transport), as
text lines or, with ``MSM_LOG_FORMAT=json``, one JSON object per line for log collectors.

Messages are written by this package's code, which never logs content or credentials on purpose; the JSON
formatter still passes each message and traceback through the secret redaction rules (``redaction.py``), so
a driver's error text quoting a connection string cannot reach a log store with its password."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from .redaction import Redactor

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Chatty libraries stay at WARNING or above whatever the level chosen for this package.
QUIET_LOGGERS = ("httpx", "httpx2", "mcp", "uvicorn.access")

_secrets = Redactor(secrets=True, pii=False)


def scrub(text: str) -> str:
    """``text`` with secrets (API keys, tokens, URL passwords, ...) redacted."""
    return _secrets.text(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and for a record
    with an exception ``exc_type`` and ``exception`` (the traceback text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exception"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = scrub(record.exc_text)
        # json.dumps escapes newlines, so a multi-line message or traceback stays on one line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Route the root logger to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
