"""A bounded SIP request flood over UDP from one source address (standard library only).

Run from the repository root::

    python benchmarks/flood.py --target 127.0.0.1:5060 [--bind 127.0.0.2]
        [--rate 5000] [--seconds 20] [--method OPTIONS] [--user-agent TEXT]

It sends ``--rate`` requests per second for ``--seconds`` seconds (never
more), each with its own Call-ID and branch, from one UDP socket bound to
``--bind`` (any 127.0.0.0/8 address works on Linux without configuration).
It counts the responses that come back but never answers anything. At the
end it prints one JSON object: ``sent``, ``received`` (responses),
``not_sent`` (the local socket refused them: its buffer was full),
``seconds`` (wall time of the sending), ``rate`` (requests per second
actually sent) and ``late_batches`` (sending rounds that started more than
10 ms late: the machine could not keep up).

Used by ``tests/interop/test_flood.py`` (a few seconds) and
``benchmarks/bench_flood.py`` (the 20-second run). Only ever aim it at an
SBC you started on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Sequence

#: Sending rounds per second: each round sends rate / ROUNDS requests.
ROUNDS = 200

TEMPLATE = (
    "{method} sip:{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {source}:{local_port};branch=z9hG4bK-flood-{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:flood@{source}>;tag=flood{n}\r\n"
    "To: <sip:{host}:{port}>\r\n"
    "Call-ID: flood-{n}@{source}\r\n"
    "CSeq: 1 {method}\r\n"
    "{user_agent}"
    "Content-Length: 0\r\n"
    "\r\n"
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the SBC (127.0.0.0/8)")
    parser.add_argument("--bind", default="127.0.0.2", help="source address (default 127.0.0.2)")
    parser.add_argument("--rate", type=int, default=5000, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long (at most 600)")
    parser.add_argument("--method", default="OPTIONS")
    parser.add_argument("--user-agent", default="", help="a User-Agent header to send")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    loopback = ipaddress.ip_address(host).is_loopback
    if not loopback or not ipaddress.ip_address(args.bind).is_loopback:
        parser.error("the flood only goes from and to 127.0.0.0/8")
    if not 0 < args.seconds <= 600 or not 0 < args.rate <= 100000:
        parser.error("--seconds must be in (0, 600] and --rate in (0, 100000]")
    args.host, args.port = host, int(port)
    return args


def flood(args: argparse.Namespace) -> dict[str, float]:
    """Send the flood; the figures printed at the end."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, 0))
    sock.setblocking(False)
    local_port = sock.getsockname()[1]
    user_agent = f"User-Agent: {args.user_agent}\r\n" if args.user_agent else ""
    fields = {
        "method": args.method,
        "host": args.host,
        "port": args.port,
        "source": args.bind,
        "local_port": local_port,
        "user_agent": user_agent,
    }
    target = (args.host, args.port)
    per_round = max(1, round(args.rate / ROUNDS))
    interval = per_round / args.rate
    total = int(args.rate * args.seconds)
    tried = sent = received = late = 0
    start = time.monotonic()
    next_round = start
    while tried < total:
        now = time.monotonic()
        if now < next_round:
            time.sleep(next_round - now)
        elif now - next_round > 0.010:
            late += 1
        for _ in range(min(per_round, total - tried)):
            data = TEMPLATE.format(n=tried, **fields).encode()
            tried += 1
            try:
                sock.sendto(data, target)
            except (BlockingIOError, ConnectionRefusedError):
                continue  # not sent: the socket buffer is full (counted as not sent)
            sent += 1
        next_round += interval
        while True:
            try:
                sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                break
            received += 1
    elapsed = time.monotonic() - start
    # responses still in flight
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            sock.recv(65535)
        except (BlockingIOError, ConnectionRefusedError):
            time.sleep(0.01)
            continue
        received += 1
    sock.close()
    return {
        "sent": sent,
        "not_sent": tried - sent,
        "received": received,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed) if elapsed else 0,
        "late_batches": late,
    }


def main(argv: Sequence[str]) -> int:
    print(json.dumps(flood(parse_args(argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
