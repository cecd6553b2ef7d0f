"""The call decision log: one ``twisted.logger`` event per decision (docs/logging.md).

Every event is emitted by :data:`log` (namespace ``sbc.calls``) with an
``event`` name and structured fields, so the text log reads well and the
JSON log (:mod:`sbc.logs`) carries the fields:

========================  =====  =============================================
event                     level  when
========================  =====  =============================================
``call.refused``          info   a new request is refused before routing or by
                                 routing (403 SIPS from an untrusted caller,
                                 480 no (secure) route, 483)
``call.routed``           info   the first candidate of a new call is chosen
``call.hunt``             debug  a candidate failed and the next one is tried,
                                 or a candidate was skipped
``call.outcome``          info   the final response to the caller is decided,
                                 unless it is a 2xx to an INVITE
``call.ended``            info   an answered INVITE call is over: its answer
                                 (the outcome), duration and why it ended
========================  =====  =============================================

A basic call costs two events: ``call.routed`` and either ``call.outcome``
or, once answered, ``call.ended``. (Through twistd's text log observer an
event costs about 15-40 µs of CPU, most of it Twisted's own rendering and
file handling; the SBC's budget is about 600 µs per call.) The fields are
plain values (``int``, ``str``, ``bool``, ``float``, tuples) or objects whose
text is only made when an observer formats the event (the Request-URI), so
nothing is formatted on the call path itself.

The text of an event is its ``log_text`` (``log_format`` is ``{log_text}``):
a :class:`LazyText` that renders the message with ``str.format_map`` when an
observer asks for it. Twisted's own format-string rendering is pure Python
and costs about 1.5 µs per placeholder; a text log observer (twistd's) renders
every event, so this keeps the call log cheap without formatting anything
before an observer wants it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from twisted.logger import Logger, LogLevel

from sbc import security
from sbc.b2bua.nexthop import Target
from sbc.config import AdjacencyConfig
from sbc.errors import SipError
from sbc.sip.message import Request

__all__ = [
    "CALL_LOG_NAMESPACE",
    "REFUSED_COUNTER",
    "LazyText",
    "LoggedCall",
    "Names",
    "RoutePath",
    "log",
    "log_ended",
    "log_hunt",
    "log_outcome",
    "log_refused",
    "log_routed",
    "refusal_rule",
    "refused_counter",
    "trust_of",
    "warning_text",
]

CALL_LOG_NAMESPACE = "sbc.calls"

log = Logger(namespace=CALL_LOG_NAMESPACE)
"""The logger of every call event (tests may replace its ``observer``)."""

TRUSTED = "trusted"
UNTRUSTED = "untrusted"
TEXT_FORMAT = "{log_text}"


class LazyText:
    """An event's text: ``format.format_map(fields)``, made only when asked for."""

    __slots__ = ("fields", "format")

    def __init__(self, format: str, fields: Mapping[str, object]) -> None:
        self.format = format
        self.fields = fields

    def __str__(self) -> str:
        return self.format.format_map(self.fields)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _emit(level: LogLevel, text: str, fields: dict[str, object]) -> None:
    log.emit(level, TEXT_FORMAT, log_text=LazyText(text, fields), **fields)


class Names(tuple[str, ...]):
    """Adjacency names: a list in JSON, ``a, b`` in text."""

    __slots__ = ()

    def __str__(self) -> str:
        return ", ".join(self) if self else "-"


class RoutePath(tuple[str, ...]):
    """A matched routing path: a list in JSON, ``a > b`` in text."""

    __slots__ = ()

    def __str__(self) -> str:
        return " > ".join(self) if self else "-"


def trust_of(inbound: AdjacencyConfig) -> str:
    """``trusted`` or ``untrusted``: how the caller's adjacency is trusted."""
    return _trust(security.caller_is_trusted(inbound))


def _trust(trusted: bool) -> str:
    return TRUSTED if trusted else UNTRUSTED


def warning_text(error: SipError) -> str | None:
    """The error's warn-code and text (``380 SIPS Not Allowed``), or None."""
    if error.warning is None:
        return None
    code, text = error.warning
    return f"{code} {text}"


_RULES: dict[tuple[int, int | None], tuple[str, str]] = {
    (403, 380): ("sips-from-untrusted", "SIPS Not Allowed: untrusted caller"),
    (480, 380): ("no-secure-route", "SIPS Not Allowed: no secure route"),
    (480, None): ("no-route", "no route"),
    (483, None): ("max-forwards", "Max-Forwards exhausted"),
    (403, None): ("unauthenticated", "no certificate and no authentication"),
}


def refusal_rule(error: SipError) -> tuple[str, str]:
    """``(rule, explanation)``: which rule an error of admission or routing stands for."""
    warning = error.warning[0] if error.warning is not None else None
    found = _RULES.get((error.status, warning))
    if found is not None:
        return found
    return ("routing", error.reason)


REFUSED_COUNTER = "calls-refused"
"""The counter family of refused requests: ``calls-refused:RULE`` on the inbound adjacency."""


def refused_counter(error: SipError) -> str:
    """The counter of a refusal: ``calls-refused:`` + its :func:`refusal_rule` (the event's
    ``rule``), e.g. ``calls-refused:sips-from-untrusted``."""
    return f"{REFUSED_COUNTER}:{refusal_rule(error)[0]}"


_REFUSED = (
    "call {call_id} {method} from {adjacency} ({trust}) to {target}: "
    "refused {status} {reason} ({why})"
)


REFUSALS_PER_WINDOW = 20
"""``call.refused`` events logged per adjacency and rule in each :data:`REFUSAL_WINDOW`."""
REFUSAL_WINDOW = 10.0
"""Seconds of one refusal-logging window; the rest of a flood is only counted."""
AUTH_FAILURES_PER_WINDOW = 5
"""``auth.failed`` events logged per adjacency and failure reason in each window (a phone
with a wrong password retries a dozen times a second; a password guesser far more)."""


class RefusalLimiter:
    """Caps ``call.refused`` events per (adjacency, rule) so a flood cannot flood the log.

    The first :data:`REFUSALS_PER_WINDOW` of each :data:`REFUSAL_WINDOW`
    seconds are logged; the next one logged after that says how many were
    left out (``suppressed``). Counters and metrics still count every one.
    """

    def __init__(self, per_window: int = REFUSALS_PER_WINDOW) -> None:
        self.per_window = per_window
        self._windows: dict[tuple[str, str], list[float]] = {}  # [start, logged, held]

    def admit(self, key: tuple[str, str], now: float) -> int | None:
        """None to leave this refusal out, else the number left out before it."""
        window = self._windows.get(key)
        if window is None or now - window[0] >= REFUSAL_WINDOW:
            held = 0 if window is None else int(window[2])
            if len(self._windows) >= 4096:
                self._windows.clear()
            self._windows[key] = [now, 1, 0]
            return held
        if window[1] < self.per_window:
            window[1] += 1
            return 0
        window[2] += 1
        return None


def _admitted(limiter: RefusalLimiter | None, key: tuple[str, str], now: float) -> int | None:
    """None when ``limiter`` leaves this event out, else how many it left out before it."""
    return 0 if limiter is None else limiter.admit(key, now)


def log_refused(
    call_id: int,
    request: Request,
    inbound: AdjacencyConfig,
    secure: bool,
    error: SipError,
    limiter: RefusalLimiter | None = None,
    now: float = 0.0,
    trusted: bool | None = None,
) -> None:
    """A new request refused by admission or routing, with the rule that refused it.

    With a ``limiter``, floods are capped (see :class:`RefusalLimiter`).
    ``trusted``: the caller's class when it is not its adjacency's (a call
    from the cluster link carries the class the node it entered gave it).
    """
    rule, why = refusal_rule(error)
    suppressed = _admitted(limiter, (inbound.name, rule), now)
    if suppressed is None:
        return
    _emit(
        LogLevel.info,
        _REFUSED if not suppressed else _REFUSED + _SUPPRESSED,
        {
            "event": "call.refused",
            "call_id": call_id,
            "method": request.method,
            "adjacency": inbound.name,
            "trust": trust_of(inbound) if trusted is None else _trust(trusted),
            "secure": secure,
            "target": request.uri,
            "status": error.status,
            "reason": error.reason,
            "sip_warning": warning_text(error),
            "rule": rule,
            "why": why,
            "suppressed": suppressed,
        },
    )


_SUPPRESSED = " ({suppressed} similar refusals before this one were not logged)"

_AUTH_FAILED = (
    "{method} from {adjacency} ({source}): digest authentication failed for user "
    "{user} realm {realm}: {failure}, answered {status}"
)


def log_auth_failure(
    request: Request,
    inbound: AdjacencyConfig,
    source: str,
    realm: str,
    user: str | None,
    failure: str,
    status: int,
    limiter: RefusalLimiter | None = None,
    now: float = 0.0,
) -> None:
    """``auth.failed``: credentials that did not pass (never the password or a hash).

    ``user`` is the user name the credentials claimed; ``failure`` the
    authenticator's reason (``wrong-response``, ``stale-nonce``...). Capped
    like refusals per (adjacency, failure).
    """
    suppressed = _admitted(limiter, (inbound.name, "auth:" + failure), now)
    if suppressed is None:
        return
    _emit(
        LogLevel.info,
        _AUTH_FAILED if not suppressed else _AUTH_FAILED + _SUPPRESSED,
        {
            "event": "auth.failed",
            "method": request.method,
            "adjacency": inbound.name,
            "source": source,
            "user": user or "-",
            "realm": realm,
            "failure": failure,
            "status": status,
            "suppressed": suppressed,
        },
    )


class LoggedCall(Protocol):
    """What the call log reads of a call (:class:`sbc.b2bua.call.Call` is one).

    The call module logs through this one; this protocol keeps the log from
    importing the call module back.
    """

    @property
    def id(self) -> int:
        """The number naming the call in the log."""
        ...

    @property
    def method(self) -> str:
        """INVITE, or the method of a relayed out-of-dialog request."""
        ...

    @property
    def inbound(self) -> AdjacencyConfig:
        """The caller's adjacency."""
        ...

    @property
    def secure(self) -> bool:
        """The call requires outbound security (SIPS)."""
        ...

    @property
    def trusted(self) -> bool:
        """The caller is trusted (for a call from the cluster link: as the node it entered said)."""
        ...

    @property
    def request(self) -> Request:
        """The caller's request."""
        ...

    @property
    def route_path(self) -> tuple[str, ...]:
        """The routing path matched."""
        ...

    @property
    def started_at(self) -> float:
        """When the caller's request arrived."""
        ...

    @property
    def last_outbound(self) -> str | None:
        """The adjacency of the latest B-leg."""
        ...

    @property
    def answer(self) -> tuple[int, str]:
        """The 2xx the caller got: status and reason."""
        ...

    @property
    def end_why(self) -> str:
        """Why an answered call ended."""
        ...


_ROUTED = (
    "call {call_id} {method} from {adjacency} ({trust}) to {target}: routed to {outbound} "
    "(candidates {candidates}; route {route_path})"
)
_NOT_ROUTED = (
    "call {call_id} {method} from {adjacency} ({trust}) to {target}: no candidate passed "
    "the security re-check (candidates {candidates}; route {route_path})"
)


def log_routed(call: LoggedCall, candidates: Iterable[Target], outbound: str | None) -> None:
    """Where a new call goes: route path, candidates and the adjacency tried first."""
    _emit(
        LogLevel.info,
        _ROUTED if outbound is not None else _NOT_ROUTED,
        {
            "event": "call.routed",
            "call_id": call.id,
            "method": call.method,
            "adjacency": call.inbound.name,
            "trust": _trust(call.trusted),
            "secure": call.secure,
            "target": call.request.uri,
            "route_path": RoutePath(call.route_path),
            "candidates": Names([t.adjacency for t in candidates]),
            "outbound": outbound,
        },
    )


_HUNT_NEXT = "call {call_id}: {failed} failed ({why}); trying {outbound} for {target}"
_HUNT_SKIP = "call {call_id}: candidate {outbound} skipped ({why})"


def log_hunt(
    call: LoggedCall,
    failed: str | None,
    why: str,
    outbound: str,
    target: object,
    skipped: bool = False,
) -> None:
    """A hunting step: the next candidate tried after ``failed``, or one skipped."""
    _emit(
        LogLevel.debug,
        _HUNT_SKIP if skipped else _HUNT_NEXT,
        {
            "event": "call.hunt",
            "call_id": call.id,
            "failed": failed,
            "why": why,
            "outbound": outbound,
            "target": target,
            "skipped": skipped,
        },
    )


_OUTCOME = (
    "call {call_id} {method} from {adjacency}: {outcome} {status} {reason} "
    "(adjacency {outbound}) after {setup_time:.3f} s"
)
_OUTCOME_WARNED = (
    "call {call_id} {method} from {adjacency}: {outcome} {status} {reason} "
    "(adjacency {outbound}; warning {sip_warning}) after {setup_time:.3f} s"
)


def log_outcome(
    call: LoggedCall,
    outcome: str,
    status: int,
    reason: str,
    outbound: str | None,
    warning: str | None,
    setup_time: float,
) -> None:
    """The final response the caller gets: answered, rejected, cancelled, failed, released."""
    _emit(
        LogLevel.info,
        _OUTCOME if warning is None else _OUTCOME_WARNED,
        {
            "event": "call.outcome",
            "call_id": call.id,
            "method": call.method,
            "adjacency": call.inbound.name,
            "outcome": outcome,
            "status": status,
            "reason": reason,
            "outbound": outbound,
            "sip_warning": warning,
            "setup_time": setup_time,
        },
    )


_ENDED = (
    "call {call_id} {method} from {adjacency}: answered {status} {reason} (adjacency "
    "{outbound}) after {setup_time:.3f} s, ended after {duration:.3f} s ({why})"
)


def log_ended(call: LoggedCall, answered_at: float, now: float) -> None:
    """An answered call is over: its answer, how long it was up and why it ended."""
    status, reason = call.answer
    _emit(
        LogLevel.info,
        _ENDED,
        {
            "event": "call.ended",
            "call_id": call.id,
            "method": call.method,
            "adjacency": call.inbound.name,
            "outcome": "answered",
            "status": status,
            "reason": reason,
            "outbound": call.last_outbound,
            "setup_time": answered_at - call.started_at,
            "duration": now - answered_at,
            "why": call.end_why,
        },
    )
