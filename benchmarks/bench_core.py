"""CPU per call in the SBC's own code, without sockets: the profiling bench.

Run from the repository root (``make bench-core`` does this)::

    .venv/bin/python benchmarks/bench_core.py [--calls N] [--rate R] [--profile]

A real :class:`~sbc.service.SbcService` (built from a config like the one of
``bench_calls.py``: ``access`` untrusted UDP in, ``core`` trusted-unencrypted
UDP out, an ``rtg-src-adjacency-table``) is fed the datagrams of N basic
calls through :meth:`SipRuntime.datagram_received`-equivalent entry points
(source classification, the stack, the B2BUA, routing, logging) on virtual
time at R calls per second; the stack's timers run as the reactor would run
them. Each call is the 13 messages of ``bench_calls.py``: INVITE, 100, 180,
200, ACK, BYE, 200 on the caller side and INVITE, 180, 200, ACK, BYE, 200 on
the callee side.

Only the SBC's work is timed: building the peers' messages (caller
requests, callee responses) happens outside the timed sections. The figure
is CPU µs per call (``time.process_time``) with the daemon's garbage
collector tuning applied, and the number of objects left behind. Sockets,
the reactor and the kernel are not included: ``bench_calls.py`` measures
those. ``--profile`` prints the top functions by own time (cProfile).

Cold-cache mode: ``--idle-us N`` sleeps N µs before each datagram (outside
the timed sections), so the core idles between datagrams as the daemon's
does at 200 calls/s and the CPU caches and branch predictors cool down;
``--evict-mb M`` also writes M MiB of memory before each datagram, as
another process sharing the core would. ``--mode cold`` is
``--idle-us 400``; ``--mode both`` runs the normal and the cold-cache
measurement in alternating blocks of ``--block`` calls in the same process
and prints both and their ratio (what the daemon's figure at low rates is
made of).

This is a benchmark, not a test: it asserts that every call completed and
nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from sbc.adjacencies import InboundContext, ListenerKey
from sbc.config import parse_config
from sbc.service import SbcService, tune_garbage_collector
from sbc.sip import parse_message
from sbc.sip.message import Request, response_to
from sbc.sip.stack import Flow, Transmit

CONFIG = """
sbc bench
 sbe
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   transport udp
   remote-address ipv4 127.0.0.0/8
   security untrusted
   attach
  adjacency sip core
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   transport udp
   signaling-peer 127.0.0.1
   signaling-peer-port 5080
   remote-address ipv4 127.0.0.1/32
   security trusted-unencrypted
   attach
  call-policy-set 1
   first-call-routing-table by-source
   rtg-src-adjacency-table by-source
    entry 1
     match-adjacency access
     dst-adjacency core
     action complete
  active-call-policy-set 1
"""

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
CALLER = ("127.0.0.2", 6100)
CALLEE = ("127.0.0.1", 5080)
A_LISTENER = ListenerKey("127.0.0.1", 5060, "UDP")
B_LISTENER = ListenerKey("127.0.0.1", 5062, "UDP")


def caller_request(
    method: str, n: int, branch: str, cseq: int, to_tag: str | None, body: bytes = b""
) -> bytes:
    to = "<sip:service@127.0.0.1:5060>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:6100;branch={branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.2:6100>;tag={n}SIPpTag00{n}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {n}-bench@127.0.0.2\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: sip:sipp@127.0.0.2:6100\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def callee_response(request: Request, status: int, tag: str, body: bytes = b"") -> bytes:
    response = response_to(request, status, to_tag=tag)
    response.headers.add("Contact", "<sip:127.0.0.1:5080;transport=UDP>")
    if body:
        response.headers.add("Content-Type", "application/sdp")
        response.body = body
    return response.serialize()


class Bench:
    """The service, a virtual clock, and timed entry points."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = SbcService.from_config(parse_config(CONFIG), reactor=self.reactor)
        self.runtime = self.service.runtime
        self.stack = self.service.stack
        self.now = 0.0
        self.cpu = 0.0
        self.sent: list[Transmit] = []
        #: A cProfile.Profile enabled around the SBC's work only (``--profile``).
        self.profiler: Any = None
        #: Cold-cache mode: seconds to sleep, and a buffer to write, before each datagram.
        self.idle_s = 0.0
        self.evict: bytearray | None = None

    def _cool_down(self) -> None:
        """Idle (and evict the caches) before a datagram, as a real core between datagrams."""
        if self.evict is not None:
            evict = self.evict
            for offset in range(0, len(evict), 64):
                evict[offset] = (evict[offset] + 1) & 0xFF
        if self.idle_s:
            time.sleep(self.idle_s)

    def _run(self, outputs: list[Any]) -> None:
        for output in outputs:
            if isinstance(output, Transmit):
                self.sent.append(output)

    def receive(self, data: bytes, source: tuple[str, int], listener: ListenerKey) -> None:
        """One datagram, as the UDP listener hands it to the runtime (timed)."""
        if self.idle_s or self.evict is not None:
            self._cool_down()
        if self.profiler is not None:
            self.profiler.enable()
        start = time.process_time()
        adjacency = self.runtime.table.classify(listener, source[0])
        assert adjacency is not None
        context = InboundContext(adjacency.name, listener, None)
        flow = Flow("UDP", (listener.address, listener.port), source)
        self._run(self.stack.receive(data, flow, self.now, context))
        self._timers()
        self.cpu += time.process_time() - start
        if self.profiler is not None:
            self.profiler.disable()

    def _timers(self) -> None:
        deadline = self.stack.next_deadline()
        while deadline is not None and deadline <= self.now:
            self._run(self.stack.advance(self.now))
            deadline = self.stack.next_deadline()

    def tick(self, now: float) -> None:
        if self.profiler is not None:
            self.profiler.enable()
        start = time.process_time()
        self.now = now
        self._timers()
        self.cpu += time.process_time() - start
        if self.profiler is not None:
            self.profiler.disable()

    def take(self, to: tuple[str, int]) -> list[Any]:
        """Messages the SBC sent to ``to`` since the last call (parsed: the peer's work)."""
        found = [parse_message(t.data) for t in self.sent if t.flow.remote == to]
        self.sent = [t for t in self.sent if t.flow.remote != to]
        return found


class GcStats:
    """Garbage collections seen through ``gc.callbacks``: count, time and longest per generation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.thread_time()
            return
        took = time.thread_time() - self.started
        generation = info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)

    def report(self, calls: int) -> None:
        for generation in range(3):
            if self.count[generation]:
                print(
                    f"gc generation {generation}: {self.count[generation]} collections, "
                    f"{self.seconds[generation] * 1e3:.0f} ms in all "
                    f"({self.seconds[generation] / calls * 1e6:.1f} µs per call), "
                    f"longest {self.longest[generation] * 1e3:.1f} ms"
                )
        tracked = len(gc.get_objects())
        print(f"tracked objects at the end: {tracked}, thresholds {gc.get_threshold()}")


def one_call(bench: Bench, n: int) -> None:
    bench.receive(caller_request("INVITE", n, f"z9hG4bK-{n}-1", 1, None, SDP), CALLER, A_LISTENER)
    [b_invite] = [m for m in bench.take(CALLEE) if isinstance(m, Request)]
    statuses = [m.status for m in bench.take(CALLER)]
    assert statuses == [100], statuses
    bench.receive(callee_response(b_invite, 180, f"b{n}"), CALLEE, B_LISTENER)
    bench.receive(callee_response(b_invite, 200, f"b{n}", SDP), CALLEE, B_LISTENER)
    a_responses = bench.take(CALLER)
    assert [m.status for m in a_responses] == [180, 200], a_responses
    a_tag = a_responses[-1].to.tag
    bench.receive(caller_request("ACK", n, f"z9hG4bK-{n}-2", 1, a_tag), CALLER, A_LISTENER)
    [b_ack] = bench.take(CALLEE)
    assert b_ack.method == "ACK"
    bench.receive(caller_request("BYE", n, f"z9hG4bK-{n}-3", 2, a_tag), CALLER, A_LISTENER)
    [b_bye] = bench.take(CALLEE)
    bench.receive(callee_response(b_bye, 200, f"b{n}"), CALLEE, B_LISTENER)
    [bye_ok] = bench.take(CALLER)
    assert bye_ok.status == 200, bye_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per virtual second")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumtime)")
    parser.add_argument(
        "--mode",
        choices=("normal", "cold", "both"),
        default="normal",
        help="normal: back to back; cold: --idle-us 400 unless given; both: one after the other",
    )
    parser.add_argument("--idle-us", type=float, default=None, help="sleep before each datagram")
    parser.add_argument("--block", type=int, default=500, help="calls per block (--mode both)")
    parser.add_argument("--evict-mb", type=float, default=0.0, help="MiB written before each")
    parser.add_argument(
        "--gc-stats",
        action="store_true",
        help="report the garbage collections during the timed calls (count, time, longest)",
    )
    args = parser.parse_args(argv)
    if args.mode != "normal" and args.idle_us is None:
        args.idle_us = 400.0

    bench = Bench()
    for n in range(args.warmup):
        bench.tick(n / args.rate)
        one_call(bench, n)
    tune_garbage_collector()
    modes = {"normal": [False], "cold": [True], "both": [False, True]}[args.mode]
    evict = bytearray(int(args.evict_mb * 2**20)) if args.evict_mb else None
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    cpu = dict.fromkeys(modes, 0.0)
    done = dict.fromkeys(modes, 0)
    collections = GcStats() if args.gc_stats else None
    if collections is not None:
        gc.callbacks.append(collections.callback)
    # Blocks of calls alternate between the modes, so drift in the machine's
    # speed while the run lasts falls on both figures alike.
    next_call = args.warmup
    block = 0
    while min(done.values()) < args.calls:
        cold = modes[block % len(modes)]
        block += 1
        count = min(args.block, args.calls - done[cold])
        bench.idle_s = (args.idle_us or 0.0) / 1e6 if cold else 0.0
        bench.evict = evict if cold else None
        bench.profiler = profiler
        bench.cpu = 0.0
        for n in range(next_call, next_call + count):
            bench.tick(n / args.rate)
            one_call(bench, n)
        next_call += count
        bench.profiler = None
        cpu[cold] += bench.cpu
        done[cold] += count
    if collections is not None:
        gc.callbacks.remove(collections.callback)
    live = len(bench.service.core.calls.calls)
    for cold in modes:
        per_call_us = cpu[cold] / done[cold] * 1e6
        label = "normal"
        if cold:
            label = f"cold cache (idle {args.idle_us:g} µs"
            label += f", evict {args.evict_mb:g} MiB)" if args.evict_mb else ")"
        print(
            f"{label}: {done[cold]} calls at {args.rate:g}/s virtual: {per_call_us:.0f} µs "
            f"CPU per call in the SBC ({1e6 / per_call_us:,.0f} calls/s per core at this "
            f"cost); live calls {live}, gc objects {len(gc.get_objects())}",
            flush=True,
        )
    if len(modes) == 2:
        print(f"cold / normal: {cpu[True] / done[True] / (cpu[False] / done[False]):.2f}x")
    if collections is not None:
        collections.report(sum(done.values()))
    if profiler is not None:
        import pstats

        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
