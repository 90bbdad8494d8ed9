"""Logging: one line per event, as text or JSON lines, on stderr or stdout.

Configured by `logging: {level, type, stderr}` (Litestream's keys) or the legacy top-level
`log-level`; `-v` forces debug whatever the file says. Every line passes through a
redaction step that replaces the config's credentials with `***`: no message is meant to
carry one, and this keeps a future mistake from reaching a log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sys
from typing import Iterable

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
TYPES = ("text", "json")
NOISY = ("botocore", "boto3", "urllib3", "watchdog", "s3transfer")  # their debug is per request
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_HANDLER_NAME = "replicator"


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = "info"  # a key of LEVELS
    type: str = "text"  # text | json
    stderr: bool = True  # False: stdout (Litestream's default is stdout; ours stays stderr)


class _Redacting(logging.Formatter):
    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]):
        super().__init__()
        self.inner = inner
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg"} per line (plus "exc" when there is a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        doc = {"ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
               "level": "warn" if record.levelno == logging.WARNING else record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _StdHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr/sys.stdout is at the time of the event (like
    logging.lastResort), so a replaced stream (a test runner's capture) is never written
    after it was closed."""

    def __init__(self, stream_name: str):
        logging.Handler.__init__(self)
        self._stream_name = stream_name

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self._stream_name)


_forced_debug = False


def setup(settings: LogSettings = LogSettings(), *, verbose: bool | None = None,
          secrets: Iterable[str] = ()) -> None:
    """(Re)configure the root logger: safe to call again once the config is known."""
    global _forced_debug
    if verbose is not None:
        _forced_debug = verbose
    level = logging.DEBUG if _forced_debug else LEVELS[settings.level]
    inner = JsonFormatter() if settings.type == "json" else logging.Formatter(TEXT_FORMAT)
    handler = _StdHandler("stderr" if settings.stderr else "stdout")
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Redacting(inner, secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
