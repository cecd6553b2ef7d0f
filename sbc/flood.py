"""Flood and scanner defence for untrusted adjacencies (docs/hardening.md).

Pure: no reactor, no socket; time is an argument (``now``, in seconds).
The transport (:mod:`sbc.transport.runtime`) asks a :class:`SourceGuard`
about every message and every new connection *before* anything is parsed,
and drops silently what it refuses:

- **Per-source rate limit.** Each source IP address on an untrusted
  adjacency has a fixed window of ``source-rate-limit REQUESTS SECONDS``:
  the window opens with the source's first message and holds at most
  REQUESTS SIP messages (requests and responses; CRLF keep-alives never
  count; a new TCP/TLS connection counts as one). The message over the
  limit bans the source for ``source-ban-time`` seconds.
- **User-Agent block list.** A request whose ``User-Agent`` contains one of
  the ``blocked-user-agent`` texts (case-insensitive) is dropped and bans its
  source at once: one scanner request is proof enough.
- **Authentication failures.** :meth:`SourceGuard.note_auth_failure` counts
  failed digest authentications per source in the same way
  (``auth-failure-limit FAILURES SECONDS``); the failure over the limit bans
  the source. The SBC's digest check calls it.
- **Connection rate caps.** :meth:`SourceGuard.allow_connection` caps the
  inbound TCP/TLS connections accepted per second
  (``max-new-connections-per-second``) and, among them, the TLS ones, each a
  handshake (``max-tls-handshakes-per-second``), all sources together.

A banned source's messages and connections are dropped without an answer
until the ban ends (or ``clear services sbc NAME sbe blocked-source ADDRESS``
releases it). Each ban is counted (``bans:REASON`` on the adjacency where it
happened) and logged once (``source.banned``), and so is its end
(``source.released``, with how many messages and connections were dropped
meanwhile). Sources on trusted adjacencies are never counted nor dropped.

Memory is bounded: at most ``max-tracked-sources`` rate windows (the oldest
window is forgotten first, which costs at most one window's count) and as
many bans (the oldest ban is released first, as ``evicted``).
"""

from __future__ import annotations

import enum
import heapq
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.logger import Logger

from sbc.config import Limits
from sbc.counters import Counters

__all__ = [
    "AUTH_FAILURES",
    "RATE_LIMIT",
    "USER_AGENT",
    "Ban",
    "RateCap",
    "RateWindows",
    "SourceGuard",
    "Verdict",
    "user_agent_of",
]

RATE_LIMIT = "rate-limit"
"""Ban reason: the source sent more than ``source-rate-limit`` allows."""
USER_AGENT = "user-agent"
"""Ban reason: a request's User-Agent matched a ``blocked-user-agent`` text."""
AUTH_FAILURES = "auth-failures"
"""Ban reason: more failed digest authentications than ``auth-failure-limit`` allows."""

CONNECTION_RATE = "connection-rate"
"""Refusal reason: over ``max-new-connections-per-second``."""
HANDSHAKE_RATE = "handshake-rate"
"""Refusal reason: over ``max-tls-handshakes-per-second``."""


class Verdict(enum.Enum):
    """What to do with one message or connection from an untrusted source."""

    PASS = "pass"
    BANNED = "banned"
    """The source is banned: drop silently."""
    RATE_LIMIT = RATE_LIMIT
    """This one went over ``source-rate-limit``: the source is banned from now on; drop it."""
    USER_AGENT = USER_AGENT
    """Its User-Agent is blocked: the source is banned from now on; drop it."""


@attrs.define(eq=False)
class Ban:
    """One banned source address: where, why, since and until when, and what it lost."""

    address: str
    adjacency: str | None
    reason: str
    since: float
    until: float
    dropped: int = 0
    """Messages and connections dropped because of this ban (the one that caused it included)."""

    def remaining(self, now: float) -> int:
        """Whole seconds until the ban ends (at least 0)."""
        return max(0, math.ceil(self.until - now))


@attrs.define(eq=False, slots=True)
class _Window:
    start: float
    count: int = 0


class RateWindows:
    """Fixed-window event counters per key, at most ``capacity`` keys.

    A key's window opens with its first event and lasts ``seconds``; the
    next event after that opens a new one. Opening a window moves the key to
    the end of the table, so the first key is the one whose window is the
    oldest: it is the one forgotten when the table is full (:attr:`evicted`
    counts them).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evicted = 0
        self._windows: dict[str, _Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, key: object) -> bool:
        return key in self._windows

    def hit(self, key: str, now: float, limit: int, seconds: float) -> bool:
        """Count one event for ``key``; True when its window now holds more than ``limit``."""
        window = self._windows.get(key)
        if window is None or not window.start <= now < window.start + seconds:
            if window is not None:
                del self._windows[key]
            else:
                self._make_room(self.capacity - 1)
            window = _Window(now)
            self._windows[key] = window
        window.count += 1
        return window.count > limit

    def count(self, key: str) -> int:
        """Events in ``key``'s current window (0 when it has none)."""
        window = self._windows.get(key)
        return 0 if window is None else window.count

    def forget(self, key: str) -> None:
        """Drop ``key``'s window."""
        self._windows.pop(key, None)

    def resize(self, capacity: int) -> None:
        """Change the capacity, forgetting the oldest windows if there are too many."""
        self.capacity = capacity
        self._make_room(capacity)

    def _make_room(self, size: int) -> None:
        while len(self._windows) > max(0, size):
            del self._windows[next(iter(self._windows))]
            self.evicted += 1


class RateCap:
    """At most N events per one-second window, all sources together."""

    def __init__(self) -> None:
        self._start = -math.inf
        self._count = 0

    def allow(self, now: float, per_second: int) -> bool:
        """Count one event unless the current window is full (then False, not counted)."""
        if not self._start <= now < self._start + 1.0:
            self._start = now
            self._count = 0
        if self._count >= per_second:
            return False
        self._count += 1
        return True

    def full(self, now: float, per_second: int) -> bool:
        """True when :meth:`allow` would refuse now (nothing is counted)."""
        return self._start <= now < self._start + 1.0 and self._count >= per_second


# Header names are case-insensitive; explicit classes are twice as fast as re.IGNORECASE here.
_USER_AGENT = re.compile(rb"\n[Uu][Ss][Ee][Rr]-[Aa][Gg][Ee][Nn][Tt][ \t]*:[ \t]*([^\r\n]*)")
_RESPONSE_PREFIX = b"SIP/"


def user_agent_of(data: bytes) -> str | None:
    """The ``User-Agent`` value of the request in ``data`` (raw bytes, not parsed), or None.

    None for a response (it carries ``Server`` instead) and for a request
    without the header. Only the header section is searched; the text is
    decoded as UTF-8 with replacement characters.
    """
    if data.startswith(_RESPONSE_PREFIX):
        return None
    end = data.find(b"\r\n\r\n")
    match = _USER_AGENT.search(data, 0, len(data) if end < 0 else end)
    if match is None:
        return None
    return match.group(1).strip().decode("utf-8", errors="replace")


class SourceGuard:
    """Per-source rate limits, bans and the connection rate caps (see the module docstring).

    ``counters`` receives ``bans:REASON`` per adjacency; ``log`` the
    ``source.banned`` / ``source.released`` events. Set :attr:`on_ban` to be
    told of each new ban (the transport then closes the source's
    connections) and :attr:`on_change` to be told whenever the earliest ban
    end may have moved (the transport re-arms its timer for
    :meth:`expire`). :attr:`trusted` names the adjacencies whose sources are
    never counted (the transport keeps it current).
    """

    log = Logger()

    def __init__(
        self,
        limits: Limits | None = None,
        user_agents: Iterable[str] = (),
        *,
        counters: Counters | None = None,
        log: Logger | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self.counters = counters if counters is not None else Counters()
        if log is not None:
            self.log = log
        self.trusted: frozenset[str] = frozenset()
        self.on_ban: Callable[[Ban], None] | None = None
        self.on_change: Callable[[], None] | None = None
        self._user_agents: tuple[str, ...] = ()
        self._bans: dict[str, Ban] = {}
        self._ends: list[tuple[float, str]] = []  # (until, address), stale entries skipped
        self._messages = RateWindows(self.limits.max_tracked_sources)
        self._auth_failures = RateWindows(self.limits.max_tracked_sources)
        self._connections = RateCap()
        self._handshakes = RateCap()
        self.configure(self.limits, user_agents)

    # -- configuration ---------------------------------------------------------

    def configure(self, limits: Limits, user_agents: Iterable[str] = ()) -> None:
        """Use new limits and User-Agent block list (a commit); current bans keep their end."""
        self.limits = limits
        self._user_agents = tuple(dict.fromkeys(text.lower() for text in user_agents if text))
        self._messages.resize(limits.max_tracked_sources)
        self._auth_failures.resize(limits.max_tracked_sources)

    @property
    def user_agents(self) -> tuple[str, ...]:
        """The blocked User-Agent texts, lower case."""
        return self._user_agents

    # -- messages and connections ----------------------------------------------

    def screen(self, source: str, adjacency: str | None, data: bytes | None, now: float) -> Verdict:
        """One message (``data``, raw) or new connection (``data`` None) from ``source``.

        Counts it against the source's rate window and checks the User-Agent
        of a request. Anything but :attr:`Verdict.PASS` must be dropped
        without an answer.
        """
        ban = self._bans.get(source)
        if ban is not None:
            if now < ban.until:
                ban.dropped += 1
                return Verdict.BANNED
            self._release(ban, now, "expired")
        limits = self.limits
        if self._messages.hit(source, now, limits.source_rate_requests, limits.source_rate_seconds):
            what = "messages or connections" if data is None else "messages"
            detail = (
                f"more than {limits.source_rate_requests} {what} within "
                f"{limits.source_rate_seconds} s (source-rate-limit)"
            )
            self.ban(source, adjacency, RATE_LIMIT, now, detail=detail).dropped = 1
            return Verdict.RATE_LIMIT
        if data is not None and self._user_agents:
            agent = user_agent_of(data)
            if agent is not None:
                lowered = agent.lower()
                for text in self._user_agents:
                    if text in lowered:
                        detail = f"User-Agent {agent!r} contains blocked-user-agent {text!r}"
                        self.ban(source, adjacency, USER_AGENT, now, detail=detail).dropped = 1
                        return Verdict.USER_AGENT
        return Verdict.PASS

    def allow_connection(self, tls: bool, now: float) -> str | None:
        """A new inbound connection (TLS: also a handshake): None to accept, else the reason.

        Refused connections do not count against the caps.
        """
        limits = self.limits
        if self._connections.full(now, limits.max_new_connections_per_second):
            return CONNECTION_RATE
        if tls and not self._handshakes.allow(now, limits.max_tls_handshakes_per_second):
            return HANDSHAKE_RATE
        self._connections.allow(now, limits.max_new_connections_per_second)
        return None

    def note_auth_failure(self, source: str, adjacency: str | None, now: float) -> bool:
        """One failed digest authentication from ``source`` on ``adjacency``.

        Counts it against ``auth-failure-limit FAILURES SECONDS``; the
        failure over the limit bans the source (True is returned then).
        Failures on a trusted adjacency, and from a source already banned,
        are ignored.
        """
        if adjacency in self.trusted:
            return False
        ban = self._bans.get(source)
        if ban is not None and now < ban.until:
            return False
        limits = self.limits
        if self._auth_failures.hit(
            source, now, limits.auth_failure_limit, limits.auth_failure_seconds
        ):
            detail = (
                f"more than {limits.auth_failure_limit} failed authentications within "
                f"{limits.auth_failure_seconds} s (auth-failure-limit)"
            )
            self.ban(source, adjacency, AUTH_FAILURES, now, detail=detail)
            return True
        return False

    # -- bans --------------------------------------------------------------------

    def banned(self, source: str, now: float) -> Ban | None:
        """The ban in force on ``source``, if any."""
        ban = self._bans.get(source)
        return ban if ban is not None and now < ban.until else None

    def bans(self, now: float) -> list[Ban]:
        """The bans in force, oldest first."""
        return sorted(
            (b for b in self._bans.values() if now < b.until), key=lambda b: (b.since, b.address)
        )

    def ban(
        self, source: str, adjacency: str | None, reason: str, now: float, *, detail: str = ""
    ) -> Ban:
        """Ban ``source`` for ``source-ban-time`` from ``now`` (a ban in force is replaced)."""
        previous = self._bans.pop(source, None)
        capacity = self.limits.max_tracked_sources
        while len(self._bans) >= capacity:
            self._release(self._bans[next(iter(self._bans))], now, "evicted")
        seconds = self.limits.source_ban_time
        ban = Ban(source, adjacency, reason, now, now + seconds)
        if previous is not None:
            ban.dropped = previous.dropped
        self._bans[source] = ban
        heapq.heappush(self._ends, (ban.until, source))
        self._messages.forget(source)
        self._auth_failures.forget(source)
        self.counters.increment(adjacency, f"bans:{reason}")
        self.log.warn(
            "source {address} banned for {ban_time} s on adjacency {adjacency}: {detail}",
            event="source.banned",
            address=source,
            adjacency=adjacency,
            reason=reason,
            ban_time=seconds,
            detail=detail or reason,
        )
        if self.on_ban is not None:
            self.on_ban(ban)
        self._changed()
        return ban

    def release(self, source: str, now: float, why: str = "cleared") -> Ban | None:
        """End the ban on ``source`` now (``clear ... blocked-source``); the ban, or None."""
        ban = self._bans.get(source)
        if ban is None:
            return None
        self._release(ban, now, why)
        return ban

    def release_all(self, now: float, why: str = "cleared") -> int:
        """End every ban; how many there were."""
        bans = list(self._bans.values())
        for ban in bans:
            self._release(ban, now, why)
        return len(bans)

    def expire(self, now: float) -> int:
        """Release every ban whose time is up; how many."""
        released = 0
        ends = self._ends
        while ends and ends[0][0] <= now:
            until, address = heapq.heappop(ends)
            ban = self._bans.get(address)
            if ban is not None and ban.until == until:
                self._release(ban, now, "expired")
                released += 1
        return released

    def next_expiry(self) -> float | None:
        """When the earliest ban ends (None without bans)."""
        ends = self._ends
        while ends:
            until, address = ends[0]
            ban = self._bans.get(address)
            if ban is not None and ban.until == until:
                return until
            heapq.heappop(ends)
        return None

    def _release(self, ban: Ban, now: float, why: str) -> None:
        if self._bans.get(ban.address) is not ban:
            return
        del self._bans[ban.address]
        self._messages.forget(ban.address)
        self._auth_failures.forget(ban.address)
        if len(self._ends) > 2 * len(self._bans) + 64:
            self._ends = [(b.until, b.address) for b in self._bans.values()]
            heapq.heapify(self._ends)
        self.log.info(
            "source {address} released ({why}) after {banned_for} s; "
            "{dropped} messages or connections dropped",
            event="source.released",
            address=ban.address,
            adjacency=ban.adjacency,
            reason=ban.reason,
            why=why,
            banned_for=max(0, round(now - ban.since)),
            dropped=ban.dropped,
        )
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- for tests and show commands ----------------------------------------------

    def tracked(self) -> dict[str, Any]:
        """Sizes of the tables: ``windows``, ``auth_windows``, ``bans`` and evictions."""
        return {
            "windows": len(self._messages),
            "auth_windows": len(self._auth_failures),
            "bans": len(self._bans),
            "evicted": self._messages.evicted + self._auth_failures.evicted,
        }
