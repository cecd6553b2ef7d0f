"""The REGISTER relay's per-message bookkeeping with many relayed phones.

Run from the repository root::

    .venv/bin/python benchmarks/bench_relay.py [--phones 10000] [--code DIR]

Registers ``--phones`` phones through the relay of an in-memory SBC (the
set-up of ``tests/registrar/test_relay.py``: each phone its own Call-ID and
Contact, the registrar answering 200 with ``expires=600``), then times what
the runtime does after every message and on every timer: the core's
``next_deadline()`` and an ``advance()`` with nothing due. Before the relay
kept its deadlines in a heap, both walked every relayed binding and
session. Each phone registers over its own TLS connection; the last
figures are the close of one phone's connection (``connection_closed``,
which walked every binding before the relay indexed them by connection)
and the expiry of one binding among them all (``advance`` when one is due,
which walked every binding and session too). ``--code DIR`` times another
checkout (put first on the path). ``--memory`` instead measures the Python
memory each relayed phone holds (tracemalloc) once the REGISTER
transactions have ended. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--code", default=None, help="another sbc checkout to time")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the Python memory per relayed phone (tracemalloc, slower), after the "
        "REGISTER transactions have ended",
    )
    args = parser.parse_args(argv)
    if args.code:
        sys.path.insert(0, args.code)
    import attrs

    from sbc.sip.message import Request, response_to
    from tests.registrar.test_relay import CORE, CORE_FLOW, PHONE, PHONES, RelayNet, register

    if args.memory:
        gc.collect()
        tracemalloc.start()
    net = RelayNet()
    before = tracemalloc.get_traced_memory()[0] if args.memory else 0
    for i in range(args.phones):
        phone = register(
            1, expires=600, contact=f"<sip:p{i}@10.1.1.1:5061;transport=tls>", call_id=f"c{i}"
        )
        flow = attrs.evolve(PHONE, connection_id=1000 + i)
        [relayed] = [m for _, m in net.feed(phone, flow, PHONES) if isinstance(m, Request)]
        ok = response_to(relayed, 200)
        ok.headers.add("Contact", f"<{relayed.contacts[0].uri.serialize()}>;expires=600")
        net.feed(ok, CORE_FLOW, CORE)
    print(f"relayed bindings: {len(net.core.relay.bindings())}")
    if args.memory:
        net.tick(net.now + 40.0)  # the REGISTER transactions linger 32 s (Timer K, J)
        assert len(net.stack.transactions) == 0
        gc.collect()
        per = (tracemalloc.get_traced_memory()[0] - before) / args.phones / 1024
        print(f"Python memory per relayed phone: {per:.1f} KiB")
        return 0
    started = time.process_time()
    net.core.next_deadline()
    print(f"first core.next_deadline: {(time.process_time() - started) * 1e3:.2f} ms")
    started = time.process_time()
    for _ in range(args.repeat):
        net.core.next_deadline()
    per = (time.process_time() - started) / args.repeat * 1e6
    print(f"core.next_deadline (after every message): {per:.1f} µs")
    started = time.process_time()
    for _ in range(args.repeat):
        net.core.advance(net.now)
    per = (time.process_time() - started) / args.repeat * 1e6
    print(f"core.advance with nothing due (every timer): {per:.1f} µs")
    closes = min(args.repeat, args.phones // 2)
    started = time.process_time()
    for i in range(closes):
        net.core.connection_closed(1000 + i, net.now)
    per = (time.process_time() - started) / closes * 1e6
    print(f"core.connection_closed of one phone's connection: {per:.1f} µs")
    # one more phone with a short expiry: the first advance after it is due
    short = register(1, expires=60, contact="<sip:short@10.1.1.1:5061;transport=tls>", call_id="s")
    flow = attrs.evolve(PHONE, connection_id=999)
    [relayed] = [m for _, m in net.feed(short, flow, PHONES) if isinstance(m, Request)]
    ok = response_to(relayed, 200)
    ok.headers.add("Contact", f"<{relayed.contacts[0].uri.serialize()}>;expires=60")
    net.feed(ok, CORE_FLOW, CORE)
    left = len(net.core.relay.bindings())
    due = net.core.next_deadline()
    assert due is not None
    started = time.process_time()
    net.core.advance(due)
    per = (time.process_time() - started) * 1e6
    assert len(net.core.relay.bindings()) == left - 1
    print(f"core.advance ending one binding of {left}: {per:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
