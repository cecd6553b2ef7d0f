"""sbc's log observers: the text log (:class:`TextLogFile`) and JSON Lines (``--log-json``).

The text log
------------

:class:`TextLogFile` is what ``twistd sbc`` writes its text log with (it
replaces twistd's own file and stdout observers, see :func:`text_log_for`).
Each line is exactly what twistd writes (``TIME [NAMESPACE#LEVEL] TEXT``,
:func:`twisted.logger.formatEventAsClassicLogText`), but:

- the time prefix is formatted once per second, not per event (twistd's
  ``formatTime`` builds a time zone and a datetime for every line);
- the events of calls (namespace ``sbc.calls``, below warn) are buffered and
  written by a writer thread every :data:`FLUSH_INTERVAL` seconds or
  :data:`FLUSH_BYTES` bytes, so the reactor never waits for the disk and a
  busy SBC makes a few large writes instead of two per call; when the disk
  cannot keep up, at most :data:`MAX_PENDING_BYTES` wait and further call
  lines are dropped and counted (a line says how many);
- every other event (start-up, commits, refusals of connections, warnings,
  errors) is written at once, after the call lines buffered before it, so
  the order is kept and what operators look for is there when it happens;
- the file rotates by size: past ``max_size`` bytes (default
  :data:`DEFAULT_MAX_SIZE`) it becomes ``FILE.1`` (``FILE.1`` becomes
  ``FILE.2``... up to ``keep`` old files, default :data:`DEFAULT_KEEP`); and
  :meth:`TextLogFile.reopen` (SIGUSR1 in ``twistd sbc``) reopens the file
  for logrotate (``create`` mode, ``postrotate kill -USR1``).

JSON Lines
----------

Log events as JSON Lines, for log shippers (``twistd sbc --log-json PATH``).

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

import atexit
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_SIZE",
    "HELD_FORMAT_KEY",
    "JsonLinesObserver",
    "TextLogFile",
    "classic_line",
    "event_as_json_line",
    "flush_text_logs",
    "json_log_observer",
    "text_log_for",
]

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


# ---------------------------------------------------------------------------
# The text log
# ---------------------------------------------------------------------------

#: Size at which the text log file rotates (bytes).
DEFAULT_MAX_SIZE: Final = 100 * 1024 * 1024
#: Rotated files kept (FILE.1 ... FILE.N).
DEFAULT_KEEP: Final = 10
#: The writer thread writes buffered call lines at least this often (seconds)...
FLUSH_INTERVAL: Final = 0.2
#: ... or as soon as this many bytes wait.
FLUSH_BYTES: Final = 64 * 1024
#: Call lines waiting beyond this (a stalled disk) are dropped and counted.
MAX_PENDING_BYTES: Final = 8 * 1024 * 1024
#: Events of this namespace below warn are buffered (the per-call log).
BUFFERED_NAMESPACE: Final = "sbc.calls"

_INFO_AND_BELOW = frozenset({LogLevel.debug, LogLevel.info})


class _SecondCache:
    """``twisted.logger.formatTime`` of whole seconds, computed once per second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            # the format has whole seconds (and the UTC offset, which only
            # changes on a second boundary): one text per second is exact
            self._text = formatTime(second)
            self._second = second
        return self._text


def classic_line(event: LogEvent, time_text: Callable[[float | None], str]) -> str | None:
    """The line twistd's text log writes for ``event`` (None: nothing to write).

    Events whose text is all in ``log_text`` (sbc's call log) take a short
    path; every other event goes through Twisted's own formatter, so each line
    is byte for byte what ``twisted.logger.textFileLogObserver`` writes.
    """
    if (
        event.get("log_format") == _TEXT_ONLY
        and "log_failure" not in event
        and "log_system" not in event
        and "log_text" in event
    ):
        try:
            text = str(event["log_text"])
        except Exception:
            return formatEventAsClassicLogText(event, formatTime=time_text)
        if not text:
            return None
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        worker = event.get("worker")
        if worker is not None:  # a worker process's line (twistd sbc --workers N)
            system = f"worker {worker} {system}"
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return f"{time_text(event.get('log_time'))} [{system}] {text}\n"
    return formatEventAsClassicLogText(event, formatTime=time_text)


_OPEN_LOGS: weakref.WeakSet[TextLogFile] = weakref.WeakSet()


def flush_text_logs() -> None:
    """Write out every :class:`TextLogFile`'s buffered lines now (before ``os._exit``)."""
    for observer in list(_OPEN_LOGS):
        observer.flush()


def _flush_before_fork() -> None:
    flush_text_logs()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_flush_before_fork)
atexit.register(flush_text_logs)


@implementer(ILogObserver)
class TextLogFile:
    """twistd's text log, cheaper and rotating by size; see the module docstring.

    ``path`` is the file to append to; ``stream`` a text stream to write to
    instead (stdout: no rotation, nothing to reopen). ``max_size`` 0 turns
    size rotation off (for an external tool such as logrotate); ``keep`` is
    how many rotated files stay.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        stream: IO[str] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        keep: int = DEFAULT_KEEP,
        flush_interval: float = FLUSH_INTERVAL,
        flush_bytes: int = FLUSH_BYTES,
        max_pending: int = MAX_PENDING_BYTES,
        threaded: bool = True,
    ) -> None:
        if (path is None) == (stream is None):
            raise ValueError("give either a path or a stream")
        if max_size < 0 or keep < 0:
            raise ValueError("max_size and keep must not be negative")
        self.path = os.path.abspath(path) if path is not None else None
        self.max_size = max_size
        self.keep = keep
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.max_pending = max_pending
        self.threaded = threaded
        #: Call lines dropped because the disk did not keep up; write failures.
        self.dropped = 0
        self.failures = 0
        #: Rotations done (by size).
        self.rotations = 0
        self._time = _SecondCache()
        # _lock guards the pending lines; _write_lock orders writes to the file.
        # Both are re-entrant: a signal handler that logs (twistd's "Received
        # SIGTERM") may run in the middle of a write, in the same thread.
        self._lock = threading.RLock()
        self._write_lock = threading.RLock()
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._dropped_unreported = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self._closed = False
        self._closing = threading.Event()
        if stream is not None:
            self._stream = stream
            self._size = 0
        else:
            self._stream = self._open()
        _OPEN_LOGS.add(self)

    # -- the observer ---------------------------------------------------------

    def __call__(self, event: LogEvent) -> None:
        try:
            line = classic_line(event, self._time)
        except Exception:
            self.failures += 1
            return
        if not line:
            return
        if (
            self.threaded
            and not self._closed
            and event.get("log_namespace") == BUFFERED_NAMESPACE
            and event.get("log_level") in _INFO_AND_BELOW
        ):
            self._buffer(line)
        else:
            self._write_now(line)

    def _buffer(self, line: str) -> None:
        with self._lock:
            if self._pending_bytes >= self.max_pending:
                self.dropped += 1
                self._dropped_unreported += 1
                return
            self._pending.append(line)
            self._pending_bytes += len(line)
            first = len(self._pending) == 1
            full = self._pending_bytes >= self.flush_bytes
        if first or full:
            if self._thread is None or self._thread_pid != os.getpid():
                self._start_writer()
            self._wake.set()

    def _take(self) -> str:
        """The pending lines as one text (and a line for dropped ones); empties the buffer."""
        with self._lock:
            lines = self._pending
            dropped = self._dropped_unreported
            self._pending = []
            self._pending_bytes = 0
            self._dropped_unreported = 0
        if dropped:
            note = classic_line(
                {
                    "log_format": _TEXT_ONLY,
                    "log_text": f"{dropped} call log lines dropped: the log file did not keep up",
                    "log_namespace": __name__,
                    "log_level": LogLevel.warn,
                    "log_time": time.time(),
                },
                self._time,
            )
            lines.append(note or "")
        return "".join(lines)

    def _write_now(self, line: str) -> None:
        with self._write_lock:
            self._write(self._take() + line)

    def flush(self) -> None:
        """Write every buffered line now, in the calling thread."""
        with self._write_lock:
            text = self._take()
            if text:
                self._write(text)

    # -- the writer thread ----------------------------------------------------

    def _start_writer(self) -> None:
        self._thread_pid = os.getpid()
        self._wake = threading.Event()  # a fresh one after a fork
        self._thread = threading.Thread(target=self._writer, name="sbc-log-writer", daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        wake = self._wake
        while not self._closed:
            wake.wait()
            wake.clear()
            if self._closed:
                break
            if self._pending_bytes < self.flush_bytes:
                # gather: a busy SBC then writes a few large chunks per second
                self._closing.wait(self.flush_interval)
            self.flush()

    # -- the file ---------------------------------------------------------------

    def _open(self) -> IO[str]:
        assert self.path is not None
        stream = open(self.path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self._size = stream.tell()
        return stream

    def _write(self, text: str) -> None:
        """Write ``text`` (whole lines), rotating first when it would pass max_size."""
        if not text:
            return
        try:
            if (
                self.path is not None
                and self.max_size
                and self._size
                and self._size + len(text) > self.max_size
            ):
                self._rotate()
            self._stream.write(text)
            self._stream.flush()
            self._size += len(text)
        except Exception:
            self.failures += 1

    def _rotate(self) -> None:
        assert self.path is not None
        self._stream.close()
        if self.keep:
            for number in range(self.keep - 1, 0, -1):
                older = f"{self.path}.{number}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{number + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)
        self.rotations += 1
        self._stream = self._open()

    def reopen(self) -> None:
        """Close and reopen the file (logrotate moved it away); a no-op for a stream."""
        if self.path is None:
            return
        with self._write_lock:
            text = self._take()
            if text:
                self._write(text)
            try:
                old, self._stream = self._stream, self._open()
                old.close()
            except Exception:
                self.failures += 1

    def close(self) -> None:
        """Write what is buffered and stop the writer; later events are written at once."""
        self._closed = True
        self._closing.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self.flush()


def text_log_for(twistd_options: Mapping[str, Any], max_size: int, keep: int) -> TextLogFile | None:
    """The text log twistd would open for ``twistd_options``, as a :class:`TextLogFile`.

    None when twistd's options ask for something else (``--syslog``,
    ``--logger``): twistd then logs as it always does. ``--logfile -`` or no
    ``--logfile`` with ``-n``: stdout; else ``--logfile`` (``twistd.log``
    when not given), as twistd does.
    """
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    name = twistd_options.get("logfile") or ""
    if name == "-" or (not name and twistd_options.get("nodaemon")):
        # the real stdout: twistd replaces sys.stdout by a log writer later
        return TextLogFile(stream=sys.stdout, max_size=0, keep=0)
    return TextLogFile(name or "twistd.log", max_size=max_size, keep=keep)
