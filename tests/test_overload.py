"""Overload control: the shedding decision (sbc.overload), the heartbeat (sbc.transport.overload),
and the 503 + Retry-After through the core and the stack. All on a memory clock."""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.config import Limits, parse_config
from sbc.core import SbcCore
from sbc.errors import SipError
from sbc.overload import (
    LOWER_RATE,
    MAX_ELAPSED,
    MAX_SHARE,
    ONSET,
    RAISE_RATE,
    SHED_COUNTER,
    OverloadControl,
)
from sbc.sip import parse_message
from sbc.sip.message import Response
from sbc.sip.stack import Flow, SipStack, Transmit
from sbc.transport.overload import (
    SO_MEMINFO,
    LoadMeter,
    receive_queue_fill,
    untrusted_udp_listeners,
)

MS = 0.001


@implementer(ILogObserver)
class Recorder:
    """Collects the sbc.overload log events."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("sbc.overload"):
            self.events.append(event)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


class ControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.limits = Limits(overload_lag_threshold=50, overload_retry_after=7)
        self.counted: list[tuple[str | None, str]] = []
        self.control = OverloadControl(
            lambda: self.limits, lambda adjacency, name: self.counted.append((adjacency, name))
        )
        self.log = Recorder(self)

    def feed(self, lag: float, samples: int, start: float = 0.0, queue: float = 0.0) -> float:
        now = start
        for _ in range(samples):
            now += 0.05
            self.control.sample(now, lag, queue=queue)
        return now

    def shed_of(self, requests: int, method: str = "INVITE") -> int:
        shed = 0
        for _ in range(requests):
            try:
                self.control.admit(method, "access")
            except SipError:
                shed += 1
        return shed

    def test_a_small_lag_sheds_nothing(self) -> None:
        self.feed(5 * MS, 100)
        self.assertFalse(self.control.shedding)
        self.assertEqual(self.shed_of(1000), 0)
        self.assertEqual(self.log.events, [])

    def test_one_spike_is_smoothed_away_before_it_sheds(self) -> None:
        self.feed(2 * MS, 20)
        self.control.sample(1.1, 60 * MS)  # one stall: smoothed to about 19 ms
        self.feed(2 * MS, 20, 1.1)
        self.assertEqual(self.control.share, 0.0)

    def test_share_rises_while_over_and_falls_when_under_half(self) -> None:
        onset = int(ONSET / 0.05)
        now = self.feed(200 * MS, onset - 1)
        self.assertFalse(self.control.shedding)  # not over for ONSET seconds yet
        now = self.feed(200 * MS, 3, now)
        self.assertTrue(self.control.shedding)
        self.assertAlmostEqual(self.control.share, 3 * 0.05 * RAISE_RATE)
        now = self.feed(200 * MS, 100, now)
        self.assertEqual(self.control.share, MAX_SHARE)
        # between half the threshold and the threshold: the share holds
        self.control.lag = 40 * MS
        self.control.sample(now + 0.05, 40 * MS)
        self.assertEqual(self.control.share, MAX_SHARE)
        self.feed(0.0, 10, now + 0.05)  # on time: 10 steps down
        self.assertAlmostEqual(self.control.share, MAX_SHARE - 10 * 0.05 * LOWER_RATE, places=6)

    def test_stalls_between_heartbeats_on_time_are_no_overload(self) -> None:
        """400 ms stalls (a collection, the CPU taken away) with heartbeats on time between."""
        now = 0.0
        for _ in range(10):
            now = self.feed(2 * MS, 3, now)
            now += 0.45
            self.control.sample(now, 400 * MS, elapsed=0.45)
        self.feed(2 * MS, 40, now)
        self.assertEqual(self.control.shed_total + self.shed_of(1000), 0)
        self.assertEqual(self.log.events, [])

    def test_a_very_late_heartbeat_moves_the_share_a_bounded_step(self) -> None:
        self.control.lag = 100 * MS
        self.control.sample(1.0, 2.0, elapsed=2.05)  # over for 2 s at once: past the onset
        self.assertAlmostEqual(self.control.share, MAX_ELAPSED * RAISE_RATE)

    def test_shed_share_is_exact_and_only_new_invites_and_registers(self) -> None:
        self.control.share = 0.3
        self.assertEqual(self.shed_of(100), 30)
        self.assertEqual(self.shed_of(100, "REGISTER"), 30)
        for method in ("OPTIONS", "MESSAGE", "SUBSCRIBE"):
            self.assertEqual(self.shed_of(50, method), 0)
        self.assertEqual(self.counted, [("access", SHED_COUNTER)] * 60)
        self.assertEqual(self.control.shed_total, 60)

    def test_the_503_has_retry_after(self) -> None:
        self.control.share = MAX_SHARE
        self.control.admit("INVITE", None)  # the credit is at 0.95 now
        with self.assertRaises(SipError) as caught:
            self.control.admit("INVITE", None)
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(caught.exception.headers, (("Retry-After", "7"),))

    def test_start_and_end_are_logged_once_with_what_was_shed(self) -> None:
        now = self.feed(200 * MS, 40)
        self.shed_of(10)
        self.feed(0.0, 200, now)
        self.assertEqual(self.log.names(), ["overload.started", "overload.ended"])
        started, ended = self.log.events
        self.assertEqual(started["log_level"], LogLevel.warn)
        self.assertEqual(started["retry_after"], 7)
        self.assertEqual(ended["shed"], 9)  # 0.95 of 10, deterministically
        self.assertGreater(ended["duration"], 0.0)
        self.assertGreaterEqual(ended["peak_lag_ms"], 190.0)

    def test_a_full_receive_buffer_sheds_though_every_heartbeat_is_on_time(self) -> None:
        """A process fast per message (PyPy) keeps its heartbeats on time while the kernel
        drops: the receive buffer's fill level says it all the same."""
        onset = int(ONSET / 0.05)
        now = self.feed(1 * MS, onset - 1, queue=0.6)
        self.assertFalse(self.control.shedding)  # not for ONSET seconds yet
        now = self.feed(1 * MS, 3, now, queue=0.6)
        self.assertTrue(self.control.shedding)
        self.assertAlmostEqual(self.control.share, 3 * 0.05 * RAISE_RATE)
        [started] = self.log.events
        self.assertEqual(started["queue_pct"], 60.0)
        self.assertIn("receive buffer is 60 % full", started["log_format"].format(**started))
        # between half the threshold (25 %) and the threshold: the share holds
        share = self.control.share
        now = self.feed(1 * MS, 5, now, queue=0.3)
        self.assertEqual(self.control.share, share)
        self.feed(1 * MS, 200, now, queue=0.1)  # emptied every turn again
        self.assertEqual(self.log.names(), ["overload.started", "overload.ended"])
        self.assertEqual(self.log.events[1]["peak_queue_pct"], 60.0)

    def test_a_full_buffer_now_and_then_is_no_overload(self) -> None:
        now = 0.0
        for _ in range(20):
            now = self.feed(1 * MS, 5, now)
            now = self.feed(1 * MS, 1, now, queue=0.9)
        self.assertEqual(self.control.share, 0.0)
        self.assertEqual(self.log.events, [])

    def test_queue_threshold_zero_leaves_the_lag_alone_to_decide(self) -> None:
        self.limits = Limits(overload_lag_threshold=50, overload_queue_threshold=0)
        self.feed(1 * MS, 100, queue=1.0)
        self.assertFalse(self.control.shedding)

    def test_threshold_zero_turns_it_off(self) -> None:
        self.limits = Limits(overload_lag_threshold=0)
        self.feed(500 * MS, 50)
        self.assertFalse(self.control.shedding)
        self.assertFalse(self.control.pause_untrusted)

    def test_turning_it_off_while_shedding_ends_the_period(self) -> None:
        now = self.feed(200 * MS, 30)
        self.limits = Limits(overload_lag_threshold=0)
        self.feed(200 * MS, 1, now)
        self.assertEqual(self.control.share, 0.0)
        self.assertEqual(self.log.names(), ["overload.started", "overload.ended"])

    def test_pause_above_the_pause_lag(self) -> None:
        self.limits = Limits(overload_lag_threshold=50, overload_pause_lag=100)
        now = self.feed(80 * MS, 30)
        self.assertFalse(self.control.pause_untrusted)
        now = self.feed(300 * MS, 10, now)
        self.assertTrue(self.control.pause_untrusted)
        self.feed(0.0, 10, now)
        self.assertFalse(self.control.pause_untrusted)


class FakeSocket:
    """Answers SO_MEMINFO with ``queued`` bytes in a receive buffer of ``size``."""

    def __init__(self, queued: int = 0, size: int = 1000) -> None:
        self.queued = queued
        self.size = size

    def getsockopt(self, level: int, option: int, length: int) -> bytes:
        assert (level, option, length) == (socket.SOL_SOCKET, SO_MEMINFO, 8)
        return struct.pack("2I", self.queued, self.size)


class FakePort:
    def __init__(self, handle: FakeSocket | None = None) -> None:
        self.reading = True
        self.connected = 1
        self.handle = handle

    def getHandle(self) -> object:
        # without a FakeSocket: a handle that cannot answer SO_MEMINFO (not Linux...)
        return self.handle if self.handle is not None else object()

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


TWO_SIDES = """
sbc t
 sbe
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   transport udp
   security untrusted
   attach
  adjacency sip core
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   transport udp
   security trusted-unencrypted
   attach
"""
ACCESS_KEY = ListenerKey("127.0.0.1", 5060, "UDP")
CORE_KEY = ListenerKey("127.0.0.1", 5062, "UDP")


class MeterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.real = [0.0]  # the monotonic clock: how long the reactor really took
        self.table = AdjacencyTable(parse_config(TWO_SIDES).adjacencies)
        self.ports = {ACCESS_KEY: FakePort(), CORE_KEY: FakePort()}
        self.control = OverloadControl(lambda: Limits(overload_pause_lag=100))
        self.meter = LoadMeter(
            self.clock,
            self.control,
            lambda: self.table,
            lambda: self.ports,
            monotonic=lambda: self.real[0],
        )

    def beat(self, late: float = 0.0) -> None:
        """One heartbeat that fires ``late`` seconds after it was due."""
        self.real[0] += 0.05 + late
        self.clock.advance(0.05)

    def test_untrusted_udp_listeners(self) -> None:
        self.assertEqual(untrusted_udp_listeners(self.table), [ACCESS_KEY])

    def test_arms_once_the_reactor_runs_and_measures_the_real_delay(self) -> None:
        self.meter.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.run()  # runs the callWhenRunning hooks
        self.assertTrue(self.meter.running)
        self.beat(late=0.2)
        self.assertAlmostEqual(self.control.lag, 0.3 * 0.2)
        # the memory clock jumping far ahead is no lag: only the real delay counts
        self.real[0] += 0.05
        self.clock.advance(3600)
        self.assertAlmostEqual(self.control.lag, 0.7 * 0.3 * 0.2)

    def test_pauses_untrusted_listeners_then_resumes(self) -> None:
        self.meter.start()
        self.clock.run()
        for _ in range(10):
            self.beat(late=0.5)
        self.assertTrue(self.ports[ACCESS_KEY].reading)  # shedding, but not all it may yet
        for _ in range(10):
            self.beat(late=0.5)
        self.assertFalse(self.ports[ACCESS_KEY].reading)
        self.assertTrue(self.ports[CORE_KEY].reading)
        self.assertEqual(self.meter.pauses, 1)
        for _ in range(20):
            self.beat()
        self.assertTrue(self.ports[ACCESS_KEY].reading)

    def test_the_fullest_buffer_of_the_listeners_being_read_is_sampled(self) -> None:
        self.ports = {
            ACCESS_KEY: FakePort(FakeSocket(100, 1000)),
            CORE_KEY: FakePort(FakeSocket(700, 1000)),
        }
        self.meter.start()
        self.clock.run()
        self.beat()
        self.assertEqual(self.control.queue, 0.7)
        self.assertTrue(self.meter.measures_queues)
        # a paused listener's buffer fills by design: it is left out
        self.meter._paused.append(self.ports[CORE_KEY])
        self.beat()
        self.assertEqual(self.control.queue, 0.1)

    def test_without_queue_figures_the_lag_alone_decides(self) -> None:
        self.meter.start()
        self.clock.run()
        self.beat()
        self.assertFalse(self.meter.measures_queues)  # FakePort without a socket
        self.assertEqual(self.control.queue, 0.0)

    def test_stop_disarms_and_resumes(self) -> None:
        self.meter.start()
        self.clock.run()
        for _ in range(10):
            self.beat(late=0.5)
        self.meter.stop()
        self.assertTrue(self.ports[ACCESS_KEY].reading)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.meter.running)


INVITE = (
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-{n}\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@lab.test>;tag=a{n}\r\n"
    "To: <sip:bob@example.com>{to_tag}\r\n"
    "Call-ID: shed-{n}\r\n"
    "CSeq: 1 {method}\r\n"
    "Content-Length: 0\r\n\r\n"
)
FLOW = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.2", 5070))
CONTEXT = InboundContext("access", ACCESS_KEY)


class ReceiveQueueTests(SynchronousTestCase):
    """SO_MEMINFO on a real UDP socket on 127.0.0.1 (Linux)."""

    def test_fill_follows_the_datagrams_waiting(self) -> None:
        if not sys.platform.startswith("linux"):
            self.assertIsNone(receive_queue_fill(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))
            return
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        self.assertEqual(receive_queue_fill(receiver), 0.0)
        for _ in range(20):
            sender.sendto(b"x" * 500, receiver.getsockname())
        some = receive_queue_fill(receiver)
        assert some is not None
        self.assertGreater(some, 0.0)
        for _ in range(200):  # past the buffer: the fill is capped at 1
            sender.sendto(b"x" * 1400, receiver.getsockname())
        full = receive_queue_fill(receiver)
        assert full is not None
        self.assertGreater(full, some)
        self.assertLessEqual(full, 1.0)
        while True:
            try:
                receiver.recv(2048)
            except BlockingIOError:
                break
        self.assertEqual(receive_queue_fill(receiver), 0.0)

    def test_a_socket_that_cannot_say_gives_none(self) -> None:
        self.assertIsNone(receive_queue_fill(object()))


class ThroughTheStackTests(SynchronousTestCase):
    def setUp(self) -> None:
        table = AdjacencyTable(parse_config(TWO_SIDES).adjacencies)
        self.core = SbcCore(lambda: table)
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.core.overload.share = MAX_SHARE
        self.core.overload.admit("INVITE", None)  # the running credit is now at 0.95

    def finals(self, n: int, method: str = "INVITE", to_tag: str = "") -> list[Response]:
        data = INVITE.format(n=n, method=method, to_tag=to_tag).replace(
            "INVITE sip:", f"{method} sip:"
        )
        outputs = self.stack.receive(data.encode(), FLOW, 0.0, CONTEXT)
        messages = [parse_message(o.data) for o in outputs if isinstance(o, Transmit)]
        return [m for m in messages if isinstance(m, Response) and m.status >= 200]

    def test_a_shed_invite_gets_503_with_retry_after_at_once(self) -> None:
        [response] = self.finals(1)
        self.assertEqual((response.status, response.reason), (503, "Service Unavailable"))
        self.assertEqual(response.headers.get("Retry-After"), "10")
        self.assertEqual(self.core.calls.counters.snapshot()["access"][SHED_COUNTER], 1)
        self.assertEqual(self.core.calls.calls, {})

    def test_in_dialog_requests_always_go_through(self) -> None:
        for n, method in enumerate(("BYE", "INVITE", "INFO"), start=10):
            [response] = self.finals(n, method, ";tag=b1")
            self.assertEqual(response.status, 481)  # no such dialog: not shed
        self.assertNotIn(SHED_COUNTER, self.core.calls.counters.snapshot().get("access", {}))
