"""The control channel between the supervisor and a worker process (docs/scaling.md).

One UNIX stream socket per worker process (a ``socketpair`` made by the
supervisor; the worker gets its end as file descriptor 3). Frames are
length-prefixed (:class:`~twisted.protocols.basic.Int32StringReceiver`):

- a request: JSON ``{"id": N, "op": NAME, "args": {...}}``; the other end
  calls its handler's ``remote_NAME(**args)`` (a value or a Deferred) and
  answers ``{"id": N, "result": VALUE}`` or ``{"id": N, "error": TEXT}``;
- a log event (worker to supervisor only): ``L`` then the event as
  :func:`twisted.logger.eventAsJSON` writes it.

Values are typed on the wire: an attrs instance of :data:`WIRE_TYPES`
travels as ``{"$": CLASS, field: value...}`` and comes back as the same
class (:func:`to_wire`, :func:`from_wire`); lists, dicts of strings,
strings, numbers, booleans and None travel as themselves. Both ends use
:class:`ControlProtocol`; :meth:`ControlProtocol.call` returns a Deferred
that fails with :class:`RemoteError` when the other end raised, and with
``ConnectionLost`` when the channel closes first.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from sbc.cli.commands import BlockedSourceInfo, CallInfo, OpenConnection, RegistrationInfo
from sbc.cluster.store import Delete, Drop, Put
from sbc.controller import Refused
from sbc.worker import Released, TlsReloaded, UsersReloaded

__all__ = [
    "LOG_FRAME",
    "MAX_FRAME",
    "WIRE_TYPES",
    "ControlProtocol",
    "RemoteError",
    "WorkerSnapshot",
    "WorkerStarted",
    "WorkerStatus",
    "from_wire",
    "to_wire",
]

MAX_FRAME = 256 * 1024 * 1024
"""The largest frame either end accepts (bytes): a snapshot with every registration fits."""

LOG_FRAME = b"L"
"""The first byte of a log event frame."""


@attrs.frozen
class WorkerStarted:
    """A worker process is listening: its process id and its own UDP ports
    (``[address, shared port, own port]`` each)."""

    pid: int
    own_ports: list[list[Any]] = attrs.field(factory=list)


@attrs.frozen
class WorkerStatus:
    """What the supervisor polls every second: live calls per inbound adjacency and the
    counters (kept when the process ends, so that the machine's totals never go back)."""

    active_calls: dict[str, int]
    counters: dict[str, dict[str, int]]


@attrs.frozen
class WorkerSnapshot:
    """Everything ``show services`` and the metrics read from one worker process."""

    counters: dict[str, dict[str, int]]
    calls: list[CallInfo]
    registrations: list[RegistrationInfo]
    blocked: list[BlockedSourceInfo]
    connections: list[OpenConnection]
    transactions: dict[str, int]
    lag: float = 0.0
    share: float = 0.0


WIRE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        BlockedSourceInfo,
        CallInfo,
        Delete,
        Drop,
        OpenConnection,
        Put,
        Refused,
        RegistrationInfo,
        Released,
        TlsReloaded,
        UsersReloaded,
        WorkerSnapshot,
        WorkerStarted,
        WorkerStatus,
    )
}
"""The attrs classes that cross the channel as themselves."""


def to_wire(value: Any) -> Any:
    """``value`` as JSON-ready data (see the module docstring)."""
    if attrs.has(type(value)):
        name = type(value).__name__
        if WIRE_TYPES.get(name) is not type(value):
            raise TypeError(f"{name} does not cross the control channel")
        kind = cast("type[attrs.AttrsInstance]", type(value))
        fields = {f.name: to_wire(getattr(value, f.name)) for f in attrs.fields(kind)}
        return {"$": name, **fields}
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_wire(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} does not cross the control channel")


def from_wire(data: Any) -> Any:
    """The value :func:`to_wire` made ``data`` from (tuples come back as tuples)."""
    if isinstance(data, list):
        return [from_wire(item) for item in data]
    if isinstance(data, dict):
        name = data.get("$")
        if name is None:
            return {key: from_wire(item) for key, item in data.items()}
        cls = WIRE_TYPES.get(name)
        if cls is None:
            raise ValueError(f"unknown type {name!r} on the control channel")
        values = {}
        for field in attrs.fields(cast("type[attrs.AttrsInstance]", cls)):
            if field.name in data:
                value = from_wire(data[field.name])
                if isinstance(field.default, tuple) or _is_tuple(field.type):
                    value = tuple(value)
                values[field.name] = value
        return cls(**values)
    return data


def _is_tuple(annotation: Any) -> bool:
    return isinstance(annotation, str) and annotation.startswith("tuple[")


class RemoteError(Exception):
    """The other end of the control channel failed to carry out a request."""


class ControlProtocol(Int32StringReceiver):
    """One end of the control channel (see the module docstring).

    ``handler`` answers the other end's requests (``remote_NAME`` methods);
    ``on_log`` receives the log events the other end sends (as the text of
    their JSON); ``on_lost`` is called once when the channel closes.
    """

    MAX_LENGTH = MAX_FRAME
    log = Logger()

    def __init__(
        self,
        handler: object = None,
        on_log: Callable[[str], object] | None = None,
        on_lost: Callable[[Failure], object] | None = None,
    ) -> None:
        self.handler = handler
        self.on_log = on_log
        self.on_lost = on_lost
        self.connected_now = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, Deferred[Any]] = {}

    # -- requests to the other end ----------------------------------------------------

    def call(self, op: str, **args: Any) -> Deferred[Any]:
        """Ask the other end to run ``op``; fires with its (typed) result."""
        result: Deferred[Any] = Deferred()
        if not self.connected_now:
            result.errback(ConnectionLost("the control channel is closed"))
            return result
        request_id = next(self._ids)
        self._waiting[request_id] = result
        self._send({"id": request_id, "op": op, "args": to_wire(args)})
        return result

    def send_log(self, event_json: str) -> None:
        """Send one log event (the text :func:`twisted.logger.eventAsJSON` made)."""
        if self.connected_now:
            self.sendString(LOG_FRAME + event_json.encode("utf-8"))

    # -- the protocol -------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_now = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_now = False
        waiting, self._waiting = self._waiting, {}
        for result in waiting.values():
            result.errback(ConnectionLost("the control channel closed"))
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(reason)

    def lengthLimitExceeded(self, length: int) -> None:
        self.log.error("control channel: a {length}-byte frame is too long", length=length)
        if self.transport is not None:
            self.transport.loseConnection()

    def stringReceived(self, frame: bytes) -> None:
        if frame[:1] == LOG_FRAME:
            if self.on_log is not None:
                self.on_log(frame[1:].decode("utf-8", errors="replace"))
            return
        try:
            message = json.loads(frame)
        except ValueError:
            self.log.error("control channel: a frame that is not JSON, dropped")
            return
        if "op" in message:
            self._request(message)
            return
        result = self._waiting.pop(message.get("id"), None)
        if result is None:
            return
        if "error" in message:
            result.errback(RemoteError(str(message["error"])))
            return
        try:
            value = from_wire(message.get("result"))
        except (TypeError, ValueError) as error:
            result.errback(RemoteError(f"bad answer: {error}"))
            return
        result.callback(value)

    def _request(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op = str(message.get("op"))
        method = getattr(self.handler, f"remote_{op}", None)
        if method is None:
            self._send({"id": request_id, "error": f"unknown operation {op!r}"})
            return
        try:
            args = from_wire(message.get("args") or {})
        except (TypeError, ValueError) as error:
            self._send({"id": request_id, "error": f"bad arguments: {error}"})
            return
        running = maybeDeferred(method, **args)

        def answered(value: Any) -> None:
            try:
                self._send({"id": request_id, "result": to_wire(value)})
            except TypeError as error:
                self._send({"id": request_id, "error": str(error)})

        def failed(failure: Failure) -> None:
            self.log.failure("control channel: {op} failed", failure, op=op)
            self._send({"id": request_id, "error": failure.getErrorMessage()})

        running.addCallbacks(answered, failed)

    def _send(self, message: dict[str, Any]) -> None:
        if self.connected_now:
            self.sendString(json.dumps(message, separators=(",", ":")).encode("utf-8"))
