"""The shared store's cost (docs/performance.md, "Registrations in Redis").

Run from the repository root (needs ``redis-server``)::

    .venv/bin/python benchmarks/bench_store.py [--registers N] [--bindings M]

1. CPU per REGISTER in the SBC's process: N REGISTERs (distinct AORs,
   parsed beforehand) through a :class:`~sbc.registrar.Registrar` on the
   in-process :class:`~sbc.registrar.LocationService`, then on the shared
   store (:class:`~sbc.cluster.SharedStore` with the real txredisapi client
   and a real ``redis-server`` on 127.0.0.1) until every write has come back
   on the channel; the Redis server's own CPU (``INFO cpu``) separately.
2. M bindings in Redis: ``used_memory`` of ``INFO memory``, the Python
   heap (tracemalloc) of the node that registered them (its own view) and
   of a second node that reads them all at connect (its view of another
   node's bindings), the time that read takes (a third node, without
   tracemalloc), and the time of one lookup in
   each view (the SIP core's path) and of one ``GET`` round trip to Redis.

A benchmark, not a test: it checks that every binding arrived, nothing
about speed. It starts its own ``redis-server --save ''`` on a free port and
stops it by PID.
"""

from __future__ import annotations

import argparse
import gc
import socket
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from twisted.internet import defer, reactor, task

from sbc.cluster import SharedStore, StoreState
from sbc.config import StoreUrl
from sbc.registrar import LocationService, Registrar
from sbc.sip import parse_message
from sbc.sip.message import Request
from sbc.sip.stack import Flow
from sbc.transport.redis import RedisStoreService

FLOW = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5070))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def traced() -> int:
    """Python heap in use (tracemalloc), after a collection, bytes."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def requests(count: int, offset: int = 0) -> list[Request]:
    out = []
    for n in range(offset, offset + count):
        data = (
            "REGISTER sip:lab.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.3:5070;branch=z9hG4bK{n}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:user{n}@lab.test>;tag=t{n}\r\n"
            f"To: <sip:user{n}@lab.test>\r\n"
            f"Call-ID: reg-{n}@bench\r\n"
            "CSeq: 1 REGISTER\r\n"
            f"Contact: <sip:user{n}@127.0.0.3:{10000 + n % 50000};transport=udp>\r\n"
            "Expires: 3600\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        request = parse_message(data)
        assert isinstance(request, Request)
        out.append(request)
    return out


def redis_info(port: int, section: str) -> dict[str, str]:
    text = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", section], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def redis_cpu(port: int) -> float:
    info = redis_info(port, "cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@defer.inlineCallbacks
def wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.001, lambda: None)


def node(name: str, port: int) -> tuple[SharedStore, RedisStoreService]:
    store = SharedStore(name, reactor.seconds)
    service = RedisStoreService(reactor, StoreUrl("127.0.0.1", port, 0), store)
    service.startService()
    return store, service


@defer.inlineCallbacks
def run(args: argparse.Namespace, port: int) -> Any:
    n = args.registers
    # 1. in process, with the same reactor turns as below
    memory = Registrar(LocationService())
    print(f"REGISTERs: {n}")
    for per_turn, offset in ((1, 0), (500, 30_000_000)):
        batch = requests(n, offset=offset)
        gc.collect()
        start = time.process_time()
        for first in range(0, n, per_turn):
            now = reactor.seconds()
            for request in batch[first : first + per_turn]:
                memory.register(request, FLOW, "access", now)
            yield task.deferLater(reactor, 0, lambda: None)
        in_process = (time.process_time() - start) / n
        print(
            f"  in-process store:  {in_process * 1e6:8.1f} us CPU per REGISTER, "
            f"{per_turn} per reactor turn"
        )
    # 1. shared store: one REGISTER per reactor turn (a quiet node: one write each),
    # then 500 per turn (a busy node: the writes of a turn go together)
    store_a, service_a = node("A", port)
    yield wait_for(lambda: store_a.state == StoreState.UP, 10, "node A")
    registrar = Registrar(store_a.location)
    for per_turn, offset in ((1, 10_000_000), (500, 20_000_000)):
        batch = requests(n, offset=offset)
        gc.collect()
        redis_before = redis_cpu(port)
        start = time.process_time()
        for first in range(0, n, per_turn):
            now = reactor.seconds()
            for request in batch[first : first + per_turn]:
                registrar.register(request, FLOW, "access", now)
            yield task.deferLater(reactor, 0, lambda: None)
        yield wait_for(lambda: not store_a._pending, 60, "the writes")
        shared = (time.process_time() - start) / n
        redis_per = (redis_cpu(port) - redis_before) / n
        print(
            f"  Redis store:       {shared * 1e6:8.1f} us CPU per REGISTER in the SBC "
            f"(+{redis_per * 1e6:.1f} us in redis-server), {per_turn} per reactor turn"
        )
    # 2. M bindings
    m = args.bindings
    yield service_a.stopService()
    subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], check=True, capture_output=True)
    del registrar, store_a, service_a, memory, batch
    gc.collect()
    empty = int(redis_info(port, "memory")["used_memory"])
    # Python heap (tracemalloc) rather than RSS: freed memory stays in the process
    tracemalloc.start()
    base = traced()
    store_a, service_a = node("A", port)
    yield wait_for(lambda: store_a.state == StoreState.UP, 10, "node A")
    registrar = Registrar(store_a.location)
    for first in range(0, m, 5000):
        chunk = requests(min(5000, m - first), offset=first)
        now = reactor.seconds()
        for request in chunk:
            registrar.register(request, FLOW, "access", now)
        yield wait_for(lambda: not store_a._pending, 120, "the writes")
    del chunk
    a_memory = traced() - base
    used = int(redis_info(port, "memory")["used_memory"]) - empty
    keys = int(redis_info(port, "keyspace").get("db0", "keys=0").split(",")[0].split("=")[1])
    base = traced()
    store_b, service_b = node("B", port)
    yield wait_for(lambda: store_b.state == StoreState.UP, 300, "node B's read")
    b_memory = traced() - base
    tracemalloc.stop()
    assert len(store_b.location) == m, (len(store_b.location), m)
    # the read's time, without tracemalloc
    start = time.monotonic()
    store_c, service_c = node("C", port)
    yield wait_for(lambda: store_c.state == StoreState.UP, 120, "node C's read")
    load = time.monotonic() - start
    yield service_c.stopService()
    now = reactor.seconds()
    aors = [f"user{i}@lab.test" for i in range(0, m, max(1, m // 1000))]
    loops = 100
    start = time.perf_counter()
    for _ in range(loops):
        for aor in aors:
            store_a.location.lookup(aor, now)
    own_lookup = (time.perf_counter() - start) / (loops * len(aors))
    start = time.perf_counter()
    for _ in range(loops):
        for aor in aors:
            store_b.location.lookup(aor, now)
    remote_lookup = (time.perf_counter() - start) / (loops * len(aors))
    assert store_b.location.lookup(aors[-1], now)[0].node == "A"
    key = next(k for k, a in store_a.location.own_keys.items() if a == aors[-1])
    start = time.perf_counter()
    for _ in range(200):
        yield service_a.commands.get(key)
    get = (time.perf_counter() - start) / 200
    print(f"bindings in Redis: {keys} keys")
    print(f"  Redis used_memory:           {used / 2**20:8.1f} MiB ({used / m:.0f} bytes each)")
    print(f"  node A, its own bindings:    {a_memory / 2**20:8.1f} MiB ({a_memory / m:.0f} B each)")
    print(f"  node B, its view of them:    {b_memory / 2**20:8.1f} MiB ({b_memory / m:.0f} B each)")
    print(f"  node B's read at connect:    {load:8.2f} s")
    print(f"  lookup in A's view:          {own_lookup * 1e6:8.2f} us")
    print(f"  lookup in B's view:          {remote_lookup * 1e6:8.2f} us")
    print(f"  GET round trip to Redis:     {get * 1e6:8.1f} us (lookups never wait for it)")
    yield service_b.stopService()
    yield service_a.stopService()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registers", type=int, default=20_000)
    parser.add_argument("--bindings", type=int, default=100_000)
    args = parser.parse_args(argv)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    status = [0]
    try:
        time.sleep(0.5)

        def done(result: Any) -> None:
            if hasattr(result, "printTraceback"):
                result.printTraceback()
                status[0] = 1
            reactor.stop()

        reactor.callWhenRunning(lambda: run(args, port).addBoth(done))
        reactor.run()
    finally:
        server.terminate()
        server.wait(10)
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
