"""Log events as JSON Lines, for log shippers (``twistd sbc --log-json PATH``).

:func:`json_log_observer` returns a ``twisted.logger`` observer that writes
every event it sees as one JSON object on one line (JSON Lines, not
Twisted's record-separated ``jsonFileLogObserver`` format). Each object has:

- ``time``: the event time, ISO 8601 UTC with milliseconds
  (``2024-05-01T12:00:00.123Z``);
- ``level``: ``debug``, ``info``, ``warn``, ``error`` or ``critical``;
- ``namespace``: the logger's namespace (``sbc.calls``, ``sbc.transport.runtime``...);
- ``message``: the text of the event, as the text log shows it
  (``twisted.logger.formatEvent``);
- ``event``: the event's short machine name (``call.routed``,
  ``connection.refused``...) when the log call gave one (sbc's convention:
  an ``event`` keyword in every log call meant for machines);
- ``traceback``: the formatted traceback of a failure event;
- every other key of the event that does not start with ``log_``, as JSON
  when it can be (tuples become lists), else as its ``str()``. A key that
  would overwrite one of the names above is left out, and so are the keys
  ``format``, ``isError``, ``system`` and ``failure`` that Twisted adds for
  legacy (``twisted.python.log``) observers.

An event that the text log leaves out on purpose (``log_format`` is None,
e.g. a rate-limited line held back) still gets its ``message`` from the
format in its ``held_format`` key, when it carries one.

The observer never raises: an event that cannot be serialised is written
with the values it could serialise, and a failed write is counted in
:attr:`JsonLinesObserver.failures` and otherwise ignored.

Rotation: the file is opened for appending and written line by line, so
``logrotate`` with ``copytruncate`` works without signalling the process.
Embedders may call :meth:`JsonLinesObserver.reopen` after moving the file
instead. (twistd's own text log rotates itself, see ``--logfile``.)
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["HELD_FORMAT_KEY", "JsonLinesObserver", "event_as_json_line", "json_log_observer"]

HELD_FORMAT_KEY = "held_format"
"""The key of the text format of an event kept out of the text log (``log_format`` None)."""

_TEXT_ONLY = "{log_text}"


def _text_of(value: object) -> str:
    """``str(value)``, or something that says it could not be made."""
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


_ENCODER = json.JSONEncoder(default=_text_of, allow_nan=False)
_TOP_LEVEL = frozenset({"time", "level", "namespace", "message", "event", "traceback"})
# HELD_FORMAT_KEY, and what twisted.logger's bridge to legacy observers adds to an event
_SKIPPED = frozenset({HELD_FORMAT_KEY, "format", "isError", "system", "failure"})


def _iso_time(when: float) -> str:
    """``when`` (seconds since the epoch) as ISO 8601 UTC with milliseconds."""
    seconds, millis = divmod(round(when * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _event_time(event: LogEvent) -> float:
    when = event.get("log_time")
    if isinstance(when, (int, float)) and when == when and abs(when) < 1e11:
        return float(when)
    return time.time()


def _json_value(value: object) -> object:
    """``value`` when ``json.dumps`` takes it whole, else its text."""
    try:
        _ENCODER.encode(value)
    except Exception:
        return _text_of(value)
    return value


def _message(event: LogEvent) -> str:
    format = event.get("log_format")
    if format == _TEXT_ONLY and "log_text" in event:
        # sbc's call log and legacy events: the text is all there is to render
        try:
            return str(event["log_text"])
        except Exception:
            return formatEvent(event)
    if format is None:
        held = event.get(HELD_FORMAT_KEY)
        if isinstance(held, str):
            return formatEvent({**event, "log_format": held})
    return formatEvent(event)


def _traceback(failure: object) -> str:
    if isinstance(failure, Failure):
        try:
            return failure.getTraceback()
        except Exception:
            return _text_of(failure)
    return _text_of(failure)


def event_as_json_line(event: LogEvent) -> str:
    """One event as one line of JSON (no newline at the end); see the module docstring."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _iso_time(_event_time(event)),
        "level": getattr(level, "name", None) if level is not None else None,
        "namespace": event.get("log_namespace"),
        "message": _message(event),
    }
    name = event.get("event")
    if name is not None:
        record["event"] = name if isinstance(name, str) else _text_of(name)
    if "log_failure" in event:
        record["traceback"] = _traceback(event["log_failure"])
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_"):
            continue
        if key in _TOP_LEVEL or key in _SKIPPED:
            continue
        record[key] = value
    try:
        return _ENCODER.encode(record)
    except Exception:
        # a key that is not a string, a cycle, NaN...: one field at a time
        safe = {key: _json_value(value) for key, value in record.items()}
        return _ENCODER.encode(safe)


@implementer(ILogObserver)
class JsonLinesObserver:
    """Writes each event as one JSON line to a text stream (see the module docstring).

    ``path`` is the file it appends to (``None`` for a stream given as
    ``stream``, e.g. stdout). Each line is written and flushed at once.
    """

    def __init__(self, stream: IO[str], path: str | None = None) -> None:
        self.stream = stream
        self.path = path
        self.failures = 0
        self._writing = False

    @classmethod
    def open(cls, path: str) -> JsonLinesObserver:
        """An observer appending to ``path`` (``"-"``: the current ``sys.stdout``)."""
        if path == "-":
            return cls(sys.stdout)
        return cls(_open(path), path)

    def __call__(self, event: LogEvent) -> None:
        if self._writing:  # writing made an event (e.g. stdout redirected to the log)
            return
        self._writing = True
        try:
            line = event_as_json_line(event)
            self.stream.write(line + "\n")
            self.stream.flush()
        except Exception:
            self.failures += 1
        finally:
            self._writing = False

    def reopen(self) -> None:
        """Close and reopen the file (after it was moved away); a no-op for stdout."""
        if self.path is None:
            return
        old = self.stream
        self.stream = _open(self.path)
        try:
            old.close()
        except Exception:
            self.failures += 1

    def close(self) -> None:
        """Close the file (not stdout)."""
        if self.path is not None:
            self.stream.close()


def _open(path: str) -> IO[str]:
    return open(path, "a", buffering=1, encoding="utf-8")


def json_log_observer(path: str) -> ILogObserver:
    """An observer writing every event as a JSON line to ``path`` (``"-"``: stdout)."""
    observer: ILogObserver = JsonLinesObserver.open(path)
    return observer
