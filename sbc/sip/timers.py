"""SIP timer values (RFC 3261 §17 and Table 4 of Appendix A, RFC 6026 §8.11).

Every timer a transaction runs is derived from three settings, T1 (the RTT
estimate), T2 (the cap for retransmission intervals of non-INVITE requests
and INVITE responses) and T4 (the longest time a message stays in the
network), held in one frozen :class:`TimerSettings`. Durations are seconds
(floats); the caller adds them to its ``now`` to get an ``_at`` time.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["LINGER_TIMERS", "RETRANSMIT_TIMERS", "Timer", "TimerSettings"]


class Timer(enum.Enum):
    """The transaction timers, named as in RFC 3261 Table 4 and RFC 6026."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    A = "A"  # INVITE request retransmit interval (unreliable only)
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait time for response retransmits (INVITE client, Completed)
    E = "E"  # non-INVITE request retransmit interval (unreliable only)
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE response retransmit interval (unreliable only)
    H = "H"  # wait time for ACK receipt
    I = "I"  # wait time for ACK retransmits  # noqa: E741
    J = "J"  # wait time for non-INVITE request retransmits
    K = "K"  # wait time for response retransmits (non-INVITE client)
    L = "L"  # RFC 6026: wait time for accepted INVITE request retransmits (server)
    M = "M"  # RFC 6026: wait time for retransmission of 2xx to INVITE (client)


#: Timers that drive retransmissions; they never run on reliable transports.
RETRANSMIT_TIMERS: frozenset[Timer] = frozenset({Timer.A, Timer.E, Timer.G})
LINGER_TIMERS: frozenset[Timer] = frozenset({Timer.D, Timer.I, Timer.J, Timer.K, Timer.L, Timer.M})
"""Timers whose expiry only ends a transaction that absorbs retransmissions."""


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class TimerSettings:
    """T1, T2, T4 and the durations of timers A-M derived from them.

    ``t1`` (default 500 ms) is the round-trip estimate, ``t2`` (4 s) the
    longest retransmit interval for non-INVITE requests and INVITE
    responses, ``t4`` (5 s) the longest time a message lives in the network.
    ``timer_d`` is Timer D on unreliable transports (RFC 3261 asks for at
    least 32 s; on reliable transports it is 0). ``timer_c`` (> 3 min) is the
    proxy INVITE timer of §16.6; no transaction runs it, it is here for the
    transaction user. ``linger_granularity`` (seconds, 0 = exact) rounds up
    the timers that only end a transaction waiting for retransmissions (D,
    I, J, K, L, M: :data:`LINGER_TIMERS`) to a multiple of itself, so that a
    busy SBC ends many transactions in one wake-up instead of one each;
    ending a little later than the RFC's minimum is always allowed.
    """

    t1: float = attrs.field(default=0.5, validator=_positive)
    t2: float = attrs.field(default=4.0, validator=_positive)
    t4: float = attrs.field(default=5.0, validator=_positive)
    timer_d: float = attrs.field(default=32.0, validator=_positive)
    timer_c: float = attrs.field(default=180.0, validator=_positive)
    linger_granularity: float = attrs.field(default=0.0)

    def __attrs_post_init__(self) -> None:
        if self.linger_granularity < 0:
            raise ValueError(
                f"linger_granularity must not be negative: {self.linger_granularity!r}"
            )
        if self.t2 < self.t1:
            raise ValueError(f"t2 ({self.t2!r}) must not be smaller than t1 ({self.t1!r})")

    def initial(self, timer: Timer, reliable: bool) -> float:
        """The duration *timer* starts with, on a reliable transport or not.

        A, E, G: T1 (the caller does not start them on reliable transports).
        B, F, H, L, M: 64*T1. D: ``timer_d`` (0 when reliable). I, K: T4
        (0 when reliable). J: 64*T1 (0 when reliable).
        """
        if timer in RETRANSMIT_TIMERS:
            return self.t1
        if timer in (Timer.B, Timer.F, Timer.H, Timer.L, Timer.M):
            return 64 * self.t1
        if reliable:
            return 0.0
        if timer is Timer.D:
            return self.timer_d
        if timer is Timer.J:
            return 64 * self.t1
        return self.t4  # I, K

    def doubled(self, timer: Timer, interval: float) -> float:
        """The next retransmit interval after one of *interval*.

        Timer A doubles without bound (§17.1.1.2; Timer B ends it); E and G
        double up to T2 (§17.1.2.2, §17.2.1).
        """
        if timer is Timer.A:
            return 2 * interval
        return min(2 * interval, self.t2)
