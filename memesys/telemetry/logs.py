"""Structured logs, the same in every process: ``[log]`` format, level, file and rotation.

Thespian sends every record an actor process makes, pickled, to its one logger process, which
writes it with the handlers of the logging dict the system was started with (``logDefs``:
:func:`config_dict`, the same dict :func:`setup` applies in the daemon's own process). So what
a line says of its context is put on the record where the record is made, not where it is
written: a record factory (:func:`setup`, inherited by every forked process) stamps each
record with the trace and span ids of the current OpenTelemetry span, else the ids that
:func:`bind` set for the task at hand (a meme's trace id, its id, its task's id), and
:mod:`actors.process_logs` adds the actor's path in an actor process. The formatters only
read the record.

Two loggers have a job of their own: ``memesys.access`` (one line per HTTP request,
:mod:`memesys.http.access`) follows ``[log] level``; ``memesys.audit`` (erasures) is at INFO
whatever the level, so an erasure is always on record.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import logging.config
import logging.handlers
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any

from opentelemetry import trace

from memesys.config import LogConfig

AUDIT = "memesys.audit"
ACCESS = "memesys.access"

_bound: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "memesys_log_ids", default=MappingProxyType({})
)
# What a LogRecord has of its own: everything else on it came from ``extra=`` (or is ours).
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "context",  # set by the record factory
    "actor_path",  # set in an actor process (actors.process_logs)
    "actorAddress",  # set by Thespian's forwarding (the actor's socket address)
}


@contextlib.contextmanager
def bind(
    *, trace_id: str | None = None, meme_id: str | None = None, task_id: str | None = None
) -> Iterator[None]:
    """Every record made inside (in this task or thread, and in the tasks it starts) carries
    these ids; None or "" leaves an id as it was."""
    given = {"trace_id": trace_id, "meme_id": meme_id, "task_id": task_id}
    token = _bound.set({**_bound.get(), **{k: v for k, v in given.items() if v}})
    try:
        yield
    finally:
        _bound.reset(token)


def current_ids() -> dict[str, str]:
    """The ids a record made here and now carries: the current span's trace and span ids
    (OpenTelemetry) over the bound trace id, and the bound meme and task ids."""
    ids = dict(_bound.get())
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        ids["trace_id"] = trace.format_trace_id(span.trace_id)
        ids["span_id"] = trace.format_span_id(span.span_id)
    return ids


_stamping = False


def _stamp_records() -> None:
    """Every record made in this process (and in the processes forked from it) gets
    ``record.context``: :func:`current_ids` when it is made."""
    global _stamping
    if _stamping:
        return
    make = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.context = current_ids()
        return record

    logging.setLogRecordFactory(stamped)
    _stamping = True


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ids and its own fields (``extra=``; these win: an access line's trace
    id is the request's, whatever task writes the line)."""
    found = dict(getattr(record, "context", None) or {})
    found.update(
        (k, v)
        for k, v in record.__dict__.items()
        if k not in _RECORD_ATTRIBUTES and not k.startswith("_")
    )
    return found


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback, formatted once (Thespian's forwarding formats it in the actor process
    and sends only the text)."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid, actor (in an
    actor's process), message, the ids, the record's own fields, exception (the traceback).
    ASCII only, so no character of a message can split the line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        actor = getattr(record, "actor_path", "")
        if actor:
            line["actor"] = actor
        line["message"] = record.getMessage()
        line.update(fields(record))
        exception = _exception(self, record)
        if exception:
            line["exception"] = exception
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [pid N ACTOR] MESSAGE key=value ...``, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        actor = getattr(record, "actor_path", "")
        text = (
            f"{self.formatTime(record)} {record.levelname} {record.name} "
            f"[pid {record.process}{' ' + actor if actor else ''}] {record.getMessage()}"
        )
        for key, value in fields(record).items():
            shown = str(value)
            text += f" {key}={json.dumps(shown) if not shown or ' ' in shown else shown}"
        exception = _exception(self, record)
        if exception:
            text += "\n" + exception
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class LevelGate(logging.Filter):
    """On the handler: a record passes if its logger's level lets it through. Thespian's
    logger process hands each forwarded record to its logger without that check (an actor
    process forwards what passes the config's lowest level: the audit logger's INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger(record.name).isEnabledFor(record.levelno)


class SharedFileHandler(logging.handlers.RotatingFileHandler):
    """A log file that several processes append to and any of them may rotate.

    The daemon's process and Thespian's logger process (every actor's records) write the same
    file. A plain RotatingFileHandler in each would rotate the file under the other, which
    would go on writing into the renamed backup. Here every write holds an exclusive lock
    (``flock`` on ``FILE.lock``), reopens the file if another process has rotated it, and
    only then checks the size, rotates if the line would pass ``max_bytes`` and writes.
    """

    def __init__(self, filename: str, max_bytes: int, backups: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_fd = -1
        self._lock_pid = 0

    def _lock(self) -> int:
        """This process's own descriptor of the lock file: a forked copy of the parent's
        would share the parent's lock, not exclude it."""
        if self._lock_pid != os.getpid():
            self._lock_fd = os.open(self.baseFilename + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lock = self._lock()
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            self.handleError(record)
            return
        try:
            self._follow_rotation()
            super().emit(record)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _follow_rotation(self) -> None:
        if self.stream is None:
            return
        try:
            now = os.stat(self.baseFilename)
        except FileNotFoundError:
            now = None
        held = os.fstat(self.stream.fileno())
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            self.stream.close()
            self.stream = None  # reopened by emit, as with delay


class LogFileError(OSError):
    """``[log] file`` cannot be opened for appending."""


def config_dict(cfg: LogConfig) -> dict[str, Any]:
    """The logging dict of ``cfg``, for ``logging.config.dictConfig`` in this process and as
    Thespian's ``logDefs`` (its logger process applies it to every actor's records)."""
    handler: dict[str, Any] = (
        {
            "()": f"{__name__}.SharedFileHandler",
            "filename": cfg.file,
            "max_bytes": cfg.max_bytes,
            "backups": cfg.backups,
        }
        if cfg.file
        else {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    )
    formatter = JsonFormatter if cfg.format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"memesys": {"()": f"{__name__}.{formatter.__name__}"}},
        "filters": {"levels": {"()": f"{__name__}.LevelGate"}},
        "handlers": {"main": {**handler, "formatter": "memesys", "filters": ["levels"]}},
        "root": {"handlers": ["main"], "level": cfg.level},
        "loggers": {AUDIT: {"level": "INFO"}},
    }


def setup(cfg: LogConfig) -> dict[str, Any]:
    """Log as ``cfg`` says in this process; returns the dict for the actor system's
    processes (start it after this: they are forked, and inherit the record factory).
    Python warnings and uncaught exceptions become records too. Raises :class:`LogFileError`
    if ``cfg.file`` cannot be opened for appending."""
    defs = config_dict(cfg)
    try:
        logging.config.dictConfig(defs)
    except ValueError as exc:  # dictConfig's wrapping of the handler's OSError
        raise LogFileError(f"log.file {cfg.file!r} cannot be written: {exc.__cause__}") from exc
    _stamp_records()
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
    return defs


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("memesys").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    logging.getLogger("memesys").critical(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
