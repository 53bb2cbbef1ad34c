"""Log lines to stderr, as text or as one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import LoggingSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(settings: LoggingSettings) -> None:
    """Send every log line to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # The client library's own log is noise below DEBUG: it reports a dropped
    # connection as an ERROR, and the session logs every disconnect with its reason.
    logging.getLogger("gateway.broker.aiomqtt_transport.client").setLevel(
        logging.DEBUG if settings.level == "DEBUG" else logging.CRITICAL
    )


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: for client input in logs."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Throttle:
    """Lets at most ``burst`` log lines through per ``interval`` seconds.

    For lines a client can cause at will (a refused Response Topic): a flood of
    them must not fill the disk. The first line after a quiet spell says how
    many were held back.
    """

    def __init__(self, interval: float = 60.0, burst: int = 5) -> None:
        """Allow ``burst`` lines per ``interval`` seconds."""
        self._interval = interval
        self._burst = burst
        self._window_start = float("-inf")
        self._in_window = 0
        self._suppressed = 0

    def allow(self) -> int | None:
        """None to drop this line; else how many were dropped since the last one let through."""
        now = time.monotonic()
        if now - self._window_start >= self._interval:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self._burst:
            self._suppressed += 1
            return None
        self._in_window += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
