"""Overload control: measure the SBC's own load, shed new work before it collapses.

The load measure is the **event-loop lag**: how late a timer that should
fire every :data:`SAMPLE_INTERVAL` seconds actually fires
(:class:`sbc.transport.overload.LoadMeter` measures it and calls
:meth:`OverloadControl.sample`). An SBC that keeps up handles what arrived
since its last turn in a few milliseconds, so its heartbeats are on time,
with a late one now and then (a garbage collection, a burst of timers);
one that cannot keep up reads full socket buffers every turn and every
heartbeat is late by 100 ms and more. The same happens when another
process takes the SBC's CPU: then too the SBC answers late, and shedding is
what keeps the calls it accepts alive.

The lag misses one kind of overload: a process fast per message (PyPy's
JIT) reads a few hundred datagrams per turn in less than the threshold,
while the kernel already drops what does not fit in the receive buffer. So
each heartbeat also looks at the **receive queues**: how full the fullest
UDP listener's kernel buffer is (``SO_MEMINFO``). A heartbeat that finds
it at ``overload-queue-threshold`` percent or more counts as late, however
punctual it was. An SBC that keeps up empties its buffers every turn.

When every heartbeat for :data:`ONSET` seconds was later than
``overload-lag-threshold`` (milliseconds, the ``limits`` block), or found a
receive buffer that full, the SBC sheds: a share of the **new** INVITEs and
REGISTERs (out of a dialog) is answered ``503 Service Unavailable`` with
``Retry-After`` (``overload-retry-after`` seconds) by the stack's ordinary
error path, before the B2BUA or the
registrar does any work for them. The share rises by :data:`RAISE_RATE` per
second of late heartbeats and falls by :data:`LOWER_RATE` per second of
heartbeats later than half the threshold at most (a loss-based control loop
as in RFC 7339 §3.5, applied locally), never above :data:`MAX_SHARE`, so the
loop keeps seeing how the SBC fares with new calls. Which requests are shed
is deterministic (a running credit), not random: at a share of 0.3 exactly 3
of every 10 new requests get the 503.

Everything else always goes through: ACKs, CANCELs, BYEs and every other
request inside a dialog, responses, and out-of-dialog requests other than
INVITE and REGISTER (OPTIONS keep-alives...). So calls already set up are
never lost to shedding.

When shedding all it may and the smoothed lag is still above
``overload-pause-lag``, the SBC also stops reading its UDP listeners that
serve only untrusted adjacencies for one sample at a time (the kernel
keeps their datagrams in the receive buffer), so that the trusted side, whose
responses finish the calls already under way, is served first.

Counters (on the inbound adjacency): ``overload-shed`` for each request
answered 503 here. Log events: ``overload.started`` (warn) when shedding
starts, ``overload.ended`` (info) when the share is back to 0, with what was
shed meanwhile (docs/logging.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Optional

from twisted.logger import Logger

from sbc.config import Limits
from sbc.errors import SipError

__all__ = [
    "LOWER_RATE",
    "MAX_SHARE",
    "ONSET",
    "RAISE_RATE",
    "SAMPLE_INTERVAL",
    "SHED_COUNTER",
    "SHED_METHODS",
    "OverloadControl",
]

#: Seconds between two lag samples.
SAMPLE_INTERVAL: Final = 0.05
#: Weight of the newest sample in the smoothed lag.
SMOOTHING: Final = 0.3
#: Share of new requests shed added per second above the threshold ...
RAISE_RATE: Final = 1.0
#: ... and taken away per second under half of it.
LOWER_RATE: Final = 0.4
#: Seconds of heartbeats that are all late (each over the threshold) before
#: shedding starts: one stall (a collection, a burst of timers, another
#: process taking the CPU for a few hundred ms) is no overload.
ONSET: Final = 1.0
#: A single late heartbeat moves the share by at most this many seconds' worth.
MAX_ELAPSED: Final = 2 * SAMPLE_INTERVAL
#: The most that is ever shed: some new calls always get through.
MAX_SHARE: Final = 0.95
#: The requests that are shed (outside a dialog only).
SHED_METHODS: Final = frozenset({"INVITE", "REGISTER"})
#: Counter of the requests answered 503 by overload control.
SHED_COUNTER: Final = "overload-shed"

CountFunction = Callable[[Optional[str], str], None]


class OverloadControl:
    """The shedding decision: see the module docstring.

    ``limits`` returns the limits in force (a commit may change them);
    ``count`` counts a shed request on an adjacency. Time is an argument.
    """

    log = Logger(namespace="sbc.overload")

    def __init__(
        self, limits: Callable[[], Limits] = Limits, count: CountFunction | None = None
    ) -> None:
        #: Returns the limits in force (a commit may change them).
        self.limits = limits
        self._count = count
        #: The smoothed event-loop lag, seconds.
        self.lag = 0.0
        #: How full the fullest UDP receive buffer was at the last heartbeat (0 to 1).
        self.queue = 0.0
        #: The share of new INVITEs and REGISTERs answered 503 now (0 to MAX_SHARE).
        self.share = 0.0
        #: True while the untrusted UDP listeners should not be read.
        self.pause_untrusted = False
        self._credit = 0.0
        self._late_for = 0.0
        self._started_at: float | None = None
        self._shed_since_start = 0
        self._pauses_since_start = 0
        self._peak_lag = 0.0
        self._peak_queue = 0.0
        #: Requests shed since start-up.
        self.shed_total = 0

    @property
    def shedding(self) -> bool:
        """True while some new INVITEs and REGISTERs are answered 503."""
        return self.share > 0.0

    def sample(
        self, now: float, lag: float, elapsed: float = SAMPLE_INTERVAL, queue: float = 0.0
    ) -> None:
        """One heartbeat at ``now``, ``elapsed`` seconds after the last one.

        ``lag``: how late it fired (seconds); ``queue``: how full the fullest
        UDP receive buffer was (0 to 1). Updates the smoothed lag, the share
        shed and the pause; the share moves by :data:`RAISE_RATE` /
        :data:`LOWER_RATE` per second of ``elapsed`` (at most
        :data:`MAX_ELAPSED` per sample).
        """
        limits = self.limits()
        threshold = limits.overload_lag_threshold / 1000.0
        queue_threshold = limits.overload_queue_threshold / 100.0
        lag = max(0.0, lag)
        self.lag += SMOOTHING * (lag - self.lag)
        self.queue = queue
        # Decisions use each heartbeat's own lag: an SBC that cannot keep up
        # is late at every heartbeat; a collection or a timer burst makes one
        # heartbeat late and the next one on time.
        queued = queue_threshold > 0.0 and queue >= queue_threshold
        late = lag > threshold or queued
        self._late_for = self._late_for + elapsed if late else 0.0
        elapsed = min(elapsed, MAX_ELAPSED)
        if threshold <= 0.0:  # turned off
            if self.shedding:
                self.share = 0.0
                self._ended(now)
            self.pause_untrusted = False
            return
        was_shedding = self.shedding
        if late and (self.shedding or self._late_for >= ONSET):
            self.share = min(MAX_SHARE, self.share + RAISE_RATE * elapsed)
        elif lag < threshold / 2 and (queue_threshold <= 0.0 or queue < queue_threshold / 2):
            self.share = max(0.0, self.share - LOWER_RATE * elapsed)
            if self.share < 1e-9:
                self.share = 0.0
        # Pausing the untrusted side is the last resort: shedding all it may
        # and still far behind.
        pause_lag = limits.overload_pause_lag / 1000.0
        pause = pause_lag > 0.0 and self.share >= MAX_SHARE and self.lag > pause_lag
        if pause and not self.pause_untrusted:
            self._pauses_since_start += 1
        self.pause_untrusted = pause
        if self.shedding:
            self._peak_lag = max(self._peak_lag, self.lag)
            self._peak_queue = max(self._peak_queue, queue)
        if self.shedding and not was_shedding:
            self._started(now, threshold, queued)
        elif was_shedding and not self.shedding:
            self._ended(now)

    def admit(self, method: str, adjacency: str | None) -> None:
        """Let a new request through, or raise the 503 that sheds it (see the module docstring).

        Call it for requests outside a dialog only; methods other than
        INVITE and REGISTER always pass.
        """
        if self.share <= 0.0 or method not in SHED_METHODS:
            return
        self._credit += self.share
        if self._credit < 1.0 - 1e-9:  # (a share of 0.3 sheds 3 of 10, rounding aside)
            return
        self._credit -= 1.0
        self.shed_total += 1
        self._shed_since_start += 1
        if self._count is not None:
            self._count(adjacency, SHED_COUNTER)
        retry_after = self.limits().overload_retry_after
        raise SipError(503, "Service Unavailable", headers=(("Retry-After", str(retry_after)),))

    def _started(self, now: float, threshold: float, queued: bool) -> None:
        self._started_at = now
        self._shed_since_start = 0
        self._pauses_since_start = 1 if self.pause_untrusted else 0
        self._peak_lag = self.lag
        self._peak_queue = self.queue
        cause = (
            "a UDP receive buffer is {queue_pct:.0f} % full"
            if queued
            else "event-loop lag {lag_ms:.0f} ms is over {threshold_ms:.0f} ms"
        )
        self.log.warn(
            "overload: " + cause + ": answering part of the new INVITEs and REGISTERs 503 "
            "(Retry-After {retry_after} s)",
            event="overload.started",
            lag_ms=round(self.lag * 1000.0, 1),
            threshold_ms=threshold * 1000.0,
            queue_pct=round(self.queue * 100.0, 1),
            retry_after=self.limits().overload_retry_after,
        )

    def _ended(self, now: float) -> None:
        started = self._started_at if self._started_at is not None else now
        self.log.info(
            "overload over after {duration:.1f} s: {shed} new requests answered 503, "
            "untrusted listeners paused {pauses} times, peak lag {peak_lag_ms:.0f} ms, "
            "fullest receive buffer {peak_queue_pct:.0f} %",
            event="overload.ended",
            duration=round(now - started, 3),
            shed=self._shed_since_start,
            pauses=self._pauses_since_start,
            peak_lag_ms=round(self._peak_lag * 1000.0, 1),
            peak_queue_pct=round(self._peak_queue * 100.0, 1),
        )
        self._started_at = None
        self._credit = 0.0
