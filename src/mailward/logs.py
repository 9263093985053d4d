"""JSON-lines logging with ECS field names, so Filebeat ships it to Elastic as is.

Only entry points call :func:`configure_logging`. Per-message context (queue ID,
connection ID, incident ID, direction) is set once where a message's work begins
(:func:`log_context`: the milter callbacks, the screener, the scanning worker) and
the formatter adds it to every line logged within; ``extra`` carries only what is
not context, such as ``event`` (a ready ECS document fragment) on the one summary
line per message.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import logging.handlers
import os
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .config import LoggingSettings
from .errors import MailwardError
from .textsafe import safe_json, valid_text

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


@dataclass(frozen=True)
class LogContext:
    """What every line logged about one message carries."""

    queue_id: str = ""  # the MTA's queue ID (ECS email.local_id)
    connection_id: str = ""  # ours, per SMTP connection
    incident_id: str = ""  # the ID the sender's reply and the summary line name
    direction: str = ""  # inbound | outbound


# Per thread (and per asyncio task): a value set by one message's callbacks is never seen by another's.
_NO_CONTEXT = LogContext()
_CONTEXT: ContextVar[LogContext] = ContextVar("mailward_log_context", default=_NO_CONTEXT)


class log_context:  # noqa: N801  (used as a function: ``with log_context(...)``)
    """Add these fields (of :class:`LogContext`) to every line logged in this block; empty values keep the outer ones.

    A class rather than a ``@contextmanager`` generator, and no ``dataclasses.replace``: entered
    several times per message.
    """

    __slots__ = ("_direction", "_connection_id", "_incident_id", "_queue_id", "_token")

    def __init__(self, *, queue_id: str = "", connection_id: str = "", incident_id: str = "", direction: str = ""):
        self._queue_id, self._connection_id = queue_id, connection_id
        self._incident_id, self._direction = incident_id, direction

    def __enter__(self) -> LogContext:
        outer = _CONTEXT.get()
        context = LogContext(
            self._queue_id or outer.queue_id,
            self._connection_id or outer.connection_id,
            self._incident_id or outer.incident_id,
            self._direction or outer.direction,
        )
        self._token = _CONTEXT.set(context)
        return context

    def __exit__(self, *exc: object) -> None:
        _CONTEXT.reset(self._token)


def current_log_context() -> LogContext:
    return _CONTEXT.get()


class EcsJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "@timestamp": _dt.datetime.fromtimestamp(record.created, _dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "log": {"level": record.levelname.lower(), "logger": record.name},
            "message": record.getMessage(),
            "process": {"pid": record.process, "thread": {"name": record.threadName}},
            "service": {"name": "mailward"},
            "ecs": {"version": "8.11.0"},
        }
        context = _CONTEXT.get()
        queue_id = getattr(record, "queue_id", "") or context.queue_id
        connection_id = getattr(record, "connection_id", "") or context.connection_id
        if queue_id:
            doc.setdefault("email", {})["local_id"] = queue_id
        if context.direction:
            doc.setdefault("email", {})["direction"] = context.direction
        if connection_id:
            doc.setdefault("labels", {})["connection_id"] = connection_id
        if context.incident_id:
            doc["mailward"] = {"incident_id": context.incident_id}
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            _merge(doc, event)
        if record.exc_info and record.exc_info[0] is not None:  # exc_info=True outside an except block: no error
            doc["error"] = {
                "type": record.exc_info[0].__name__,
                "message": str(record.exc_info[1]),
                "stack_trace": self.formatException(record.exc_info),
            }
        # An undecodable byte loses no line; a bidi override or line separator from a message acts on no terminal.
        return safe_json(valid_text(json.dumps(doc, ensure_ascii=False, default=str)))


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


LOG_FILE_MODE = 0o640  # lines carry addresses and content clues: never world-readable


class PrivateLogFile(logging.handlers.WatchedFileHandler):
    """Appends to a file created 0640 (a file found readable by others is narrowed to that).

    Reopens the file by name when logrotate renames it, so rotation needs no restart. The name
    is checked at most every :data:`RECHECK` seconds rather than per line (the stdlib stats it
    for every record, a system call per summary line); lines written in between still reach the
    renamed file, which logrotate's ``delaycompress`` or ``copytruncate`` keep.
    """

    RECHECK = 1.0  # seconds between checks that the file still has its name

    _checked = float("-inf")

    def reopenIfNeeded(self) -> None:  # noqa: N802  (the stdlib's name)
        now = time.monotonic()
        if now - self._checked < self.RECHECK:
            return
        self._checked = now
        super().reopenIfNeeded()

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o007 and st.st_uid == os.geteuid():
                os.fchmod(fd, st.st_mode & 0o7770 & ~0o007)
            return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


def configure_logging(settings: LoggingSettings) -> None:
    """Send every log line as one JSON object to the configured file or stderr."""
    install_log_handler(log_handler(settings), settings)


def log_handler(settings: LoggingSettings) -> logging.Handler:
    """The handler :func:`configure_logging` installs, opened (:class:`LogFileError` if the file cannot
    be): a reload opens it before anything else and installs it only once the rest has loaded."""
    handler = _file_handler(settings.file) if settings.file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(EcsJsonFormatter())
    return handler


def install_log_handler(handler: logging.Handler, settings: LoggingSettings) -> None:
    _install(handler, logging.getLevelName(settings.level.upper()))


CLI_TERMINAL_FORMAT = "mailward: %(levelname)s: %(message)s"


def _not_an_event(record: logging.LogRecord) -> bool:
    """ECS event lines (a block added, an alert sent) are for the log file and the SIEM; on a
    terminal the command's own output already says what happened, and the stores keep the history."""
    return not isinstance(getattr(record, "event", None), dict)


def configure_cli_logging(settings: LoggingSettings) -> None:
    """The CLI's lines: JSON into the configured log file, like the milter's; without one,
    only warnings and errors that are not event records, on stderr, in a short form a
    person reads (the command's own output is what its user asked for)."""
    if settings.file:
        configure_logging(settings)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(CLI_TERMINAL_FORMAT))
    handler.setLevel(logging.WARNING)
    handler.addFilter(_not_an_event)
    _install(handler, logging.getLevelName(settings.level.upper()))


def _file_handler(path: str) -> logging.Handler:
    """The log file's handler; a file that cannot be opened is a :class:`LogFileError` naming the setting."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return PrivateLogFile(path, encoding="utf-8")
    except OSError as exc:
        raise LogFileError(f"logging.file {path}: {exc}") from exc


class LogFileError(MailwardError):
    """The configured log file cannot be opened: a start, a reload and a CLI command stop with one line."""


def _install(handler: logging.Handler, level: int) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old.formatter, EcsJsonFormatter):
            old.close()  # ours: a reconfigured log file is not left open (others' are theirs)
    root.addHandler(handler)
    root.setLevel(level)
