"""JSON-lines logging with session and turn ids taken from context variables.

Content (transcripts, reply text, audio) is never put in a log record unless the
`log_content` setting is on: call sites pass it through `content()`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

session_var: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="")
turn_var: contextvars.ContextVar[int] = contextvars.ContextVar("turn_id", default=-1)
request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Credentials must never reach a log line, even through an exception message or a header dump:
# configured secrets are replaced wherever they appear, and so is anything shaped like a bearer
# token or a JWT.
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_secrets: list[str] = []

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_log_content = False


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None) or session_var.get()
        if session_id:
            entry["session_id"] = session_id
        turn_id = getattr(record, "turn_id", None)
        turn_id = turn_var.get() if turn_id is None else turn_id
        if turn_id >= 0:
            entry["turn_id"] = turn_id
        request_id = getattr(record, "request_id", None) or request_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str, ensure_ascii=False))


def register_secrets(secrets: list[str]) -> None:
    """Values to mask in every log line (API keys, the JWT secret)."""
    _secrets[:] = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)


def scrub(line: str) -> str:
    for secret in _secrets:
        line = line.replace(secret, "***")
    return _JWT.sub("***", _BEARER.sub(r"\1***", line))


def _no_frame_dumps(record: logging.LogRecord) -> bool:
    """websockets logs every frame at DEBUG ("< TEXT '{...}' [50 bytes]"): client messages,
    start tokens and transcripts included. Those lines are content: kept only with log_content
    (and even then scrubbed of secrets like every other line)."""
    return _log_content or record.msg not in ("< %s", "> %s")


def setup(process_name: str, level: str = "INFO", log_content: bool = False) -> None:
    global _log_content
    _log_content = log_content
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name))
    handler.addFilter(_no_frame_dumps)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def content(text: str) -> str:
    """What may be logged of user or assistant content: the text itself only when enabled."""
    return text if _log_content else f"<{len(text)} chars>"
