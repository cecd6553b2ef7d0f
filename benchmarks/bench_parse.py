"""Micro benchmark: SIP parse + typed access + serialize, sbc against sippy.

Run from the repository root::

    .venv/bin/python benchmarks/bench_parse.py [--runs N] [--number N]

For four typical messages (INVITE with SDP, 200 OK to it with SDP, ACK and
BYE) it times, per message: parse the bytes, read the common headers (top
Via branch, From tag, To tag, Call-ID, CSeq, Max-Forwards, Content-Length)
and serialize back to wire form. sippy (``sippy.SipRequest`` /
``sippy.SipResponse``) does the same work on the same messages in the same
run: parse, the same headers read its way, ``str(msg)``. sippy is handed
already decoded ``str`` text (the decode is not timed), sbc the raw bytes.

Timing is timeit-style: the best of ``--runs`` runs of ``--number`` loops.
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SIPLOG_LVL", "WARN")

from sbc.sip.message import Request, parse_message

SDP_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)
SDP_ANSWER = (
    b"v=0\r\n"
    b"o=bob 2808844564 2808844564 IN IP4 192.0.2.201\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.201\r\n"
    b"t=0 0\r\n"
    b"m=audio 3456 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)


def _msg(start: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [start, *headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


INVITE = _msg(
    b"INVITE sip:bob@biloxi.example.com SIP/2.0",
    [
        b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9a8c1e;rport",
        b"Max-Forwards: 70",
        b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
        b"To: Bob <sip:bob@biloxi.example.com>",
        b"Call-ID: 3848276298220188511@atlanta.example.com",
        b"CSeq: 31862 INVITE",
        b"Contact: <sip:alice@192.0.2.101:5060;transport=udp>",
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY",
        b"Supported: replaces, timer, 100rel",
        b"User-Agent: ExamplePhone/4.2.1",
        b"Content-Type: application/sdp",
    ],
    SDP_OFFER,
)
OK_200 = _msg(
    b"SIP/2.0 200 OK",
    [
        b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9a8c1e;rport=5060"
        b";received=192.0.2.101",
        b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
        b"To: Bob <sip:bob@biloxi.example.com>;tag=8321234356",
        b"Call-ID: 3848276298220188511@atlanta.example.com",
        b"CSeq: 31862 INVITE",
        b"Contact: <sip:bob@192.0.2.201:5060;transport=udp>",
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY",
        b"Supported: replaces, timer",
        b"Server: ExampleGateway/1.0",
        b"Content-Type: application/sdp",
    ],
    SDP_ANSWER,
)
ACK = _msg(
    b"ACK sip:bob@192.0.2.201:5060;transport=udp SIP/2.0",
    [
        b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK5d6e7f8a9b;rport",
        b"Max-Forwards: 70",
        b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
        b"To: Bob <sip:bob@biloxi.example.com>;tag=8321234356",
        b"Call-ID: 3848276298220188511@atlanta.example.com",
        b"CSeq: 31862 ACK",
        b"User-Agent: ExamplePhone/4.2.1",
    ],
)
BYE = _msg(
    b"BYE sip:alice@192.0.2.101:5060;transport=udp SIP/2.0",
    [
        b"Via: SIP/2.0/UDP 192.0.2.201:5060;branch=z9hG4bKnashds7a1;rport",
        b"Max-Forwards: 70",
        b"From: Bob <sip:bob@biloxi.example.com>;tag=8321234356",
        b'To: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
        b"Call-ID: 3848276298220188511@atlanta.example.com",
        b"CSeq: 231 BYE",
        b"User-Agent: ExampleGateway/1.0",
    ],
)

MESSAGES: list[tuple[str, bytes]] = [
    ("INVITE", INVITE),
    ("200 OK", OK_200),
    ("ACK", ACK),
    ("BYE", BYE),
]


def sbc_work(data: bytes) -> bytes:
    """Parse, read the common headers, serialize (sbc)."""
    msg = parse_message(data)
    msg.top_via.branch  # noqa: B018
    msg.from_.tag  # noqa: B018
    msg.to.tag  # noqa: B018
    msg.call_id  # noqa: B018
    cseq = msg.cseq
    cseq.seq  # noqa: B018
    cseq.method  # noqa: B018
    msg.max_forwards  # noqa: B018
    msg.content_length  # noqa: B018
    return msg.serialize()


def make_sippy_work(text: str, is_request: bool) -> Callable[[], object]:
    """The same work done with sippy (imported lazily: optional dependency)."""
    from sippy.SipRequest import SipRequest
    from sippy.SipResponse import SipResponse

    has_mf = "max-forwards" in text.lower()

    def work() -> str:
        msg = SipRequest(buf=text) if is_request else SipResponse(buf=text)
        msg.getHFBody("via").getBranch()
        msg.getHFBody("from").getTag()
        msg.getHFBody("to").getTag()
        msg.getHFBody("call-id").body  # noqa: B018
        msg.getHFBody("cseq").getCSeq()
        if has_mf:
            msg.getHFBody("max-forwards").getNum()
        # sippy checks Content-Length while parsing and keeps only the body
        msg.body  # noqa: B018
        return str(msg)

    return work


def best_per_call(func: Callable[[], object], number: int, runs: int) -> float:
    """Best time of one call in seconds, timeit-style."""
    timer = timeit.Timer(func)
    return min(timer.repeat(repeat=runs, number=number)) / number


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="repeats; the best counts")
    parser.add_argument("--number", type=int, default=5000, help="loops per repeat")
    parser.add_argument("--no-sippy", action="store_true", help="time sbc only")
    args = parser.parse_args(argv)

    print("SIP parse + typed access + serialize benchmark")
    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu:     {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"python:  {platform.python_implementation()} {platform.python_version()}")
    print(f"timing:  best of {args.runs} runs x {args.number} loops per message")
    print()

    sippy_ok = not args.no_sippy
    if sippy_ok:
        try:
            import sippy  # noqa: F401
        except ImportError:
            print("sippy is not installed: timing sbc only\n")
            sippy_ok = False

    header = f"{'message':<8} {'bytes':>6} {'sbc µs':>8} {'sbc msg/s':>11}"
    if sippy_ok:
        header += f" {'sippy µs':>9} {'sippy msg/s':>12} {'sbc/sippy':>10}"
    print(header)
    print("-" * len(header))
    total_sbc = total_sippy = 0.0
    for name, data in MESSAGES:
        sbc_work(data)  # warm up, and fail loudly if the message does not parse
        t_sbc = best_per_call(lambda d=data: sbc_work(d), args.number, args.runs)
        total_sbc += t_sbc
        row = f"{name:<8} {len(data):>6} {t_sbc * 1e6:>8.2f} {1 / t_sbc:>11,.0f}"
        if sippy_ok:
            text = data.decode()
            work = make_sippy_work(text, isinstance(parse_message(data), Request))
            work()
            t_sippy = best_per_call(work, max(1, args.number // 4), args.runs)
            total_sippy += t_sippy
            row += f" {t_sippy * 1e6:>9.2f} {1 / t_sippy:>12,.0f} {t_sippy / t_sbc:>9.1f}x"
        print(row)
    print("-" * len(header))
    n = len(MESSAGES)
    row = f"{'mean':<8} {'':>6} {total_sbc / n * 1e6:>8.2f} {n / total_sbc:>11,.0f}"
    if sippy_ok:
        row += (
            f" {total_sippy / n * 1e6:>9.2f} {n / total_sippy:>12,.0f}"
            f" {total_sippy / total_sbc:>9.1f}x"
        )
    print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
