"""What `make fuzz` feeds, and what counts as a failure (docs/testing.md).

Three targets, each a function of one input (bytes) that returns normally or
raises :class:`BrokenPropertyError` (or any other exception: a bug):

``parse``
    :func:`sbc.sip.message.parse_message`, then every typed accessor, the
    serializer and :func:`~sbc.sip.message.response_to`. Only
    :class:`~sbc.errors.ParseError` may come out, never one that merely wraps
    another exception (the parser's last-resort guard), and a message that is
    accepted must serialize to bytes that parse back to an equal message.

``framer``
    :class:`~sbc.sip.framing.StreamFramer` fed the input whole and in chunks
    (from one byte to the whole input, chosen by the input's first byte): only ParseError, the same
    items either way, and every item a message the parser then handles as
    above.

``sbc``
    A whole SBC in memory (:meth:`sbc.service.SbcService.from_config` on a
    ``MemoryReactorClock``, no socket): the input's first four bytes choose
    the adjacency and transport the rest arrives on and how the far side
    answers, the rest goes through the framer (TCP, TLS) or is one datagram
    (UDP) into :meth:`SipStack.receive`. Next hops are found by a scripted
    DNS (a name is 127.0.0.9, or does not exist), and every request the SBC
    sends is answered by a scripted peer (INVITE with the statuses the input chose,
    anything else 200); then the clock is run past every timer. Nothing may
    escape the stack, and afterwards every table must be empty:
    transactions, calls, dialogs, B2BUA handlers and timers, registrar
    bindings (once expired).

Inputs that make a target take over a second are failures too; libFuzzer
enforces that (``-timeout=1`` in fuzz/run.py).
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogBeginner

from sbc.adjacencies import TCP, TLS, UDP, InboundContext, ListenerKey
from sbc.config import parse_config
from sbc.errors import ParseError
from sbc.identity import PeerIdentities
from sbc.labpki import write_lab_pki
from sbc.service import SbcService, TlsFiles
from sbc.sip.framing import KEEPALIVE_PING, StreamFramer
from sbc.sip.locate import Destination, NextHop, Resolution
from sbc.sip.message import Request, Response, parse_message, response_to
from sbc.sip.stack import Flow, Resolve, Transmit, error_answer
from sbc.sip.uri import host_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ACCESSORS = (
    "vias",
    "top_via",
    "from_",
    "to",
    "call_id",
    "cseq",
    "max_forwards",
    "content_length",
    "expires",
    "contacts",
    "routes",
    "record_routes",
    "warnings",
    "content_type",
)
VALUE_PROPERTIES = ("uri", "tag", "branch", "received", "rport", "host", "port", "params", "q")


class BrokenPropertyError(AssertionError):
    """An input broke a documented property (the message says which)."""


def _guarded(error: ParseError) -> None:
    cause = error.__cause__
    if cause is not None and not isinstance(cause, ParseError):
        raise BrokenPropertyError(
            f"ParseError({error.reason!r}) hides {type(cause).__name__}: {cause}"
        ) from cause


def _touch(value: Any, depth: int = 0) -> None:
    if depth > 2 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _touch(item, depth + 1)
        return
    for name in VALUE_PROPERTIES:
        if not hasattr(type(value), name):
            continue
        if name == "uri" and getattr(value, "is_star", False):
            continue
        try:
            _touch(getattr(value, name), depth + 1)
        except ParseError as error:
            _guarded(error)
    serialize = getattr(value, "serialize", None)
    if callable(serialize):
        serialize()


def check_message(data: bytes) -> Request | Response | None:
    """The ``parse`` target's properties for one message; the message, or None if refused."""
    try:
        message = parse_message(data)
    except ParseError as error:
        _guarded(error)
        if error.request is not None:
            answer = error_answer(error)
            if answer is None:
                raise BrokenPropertyError(
                    f"answerable ParseError({error.reason!r}) gave no answer"
                ) from error
        return None
    names = (*ACCESSORS, "uri", "method") if isinstance(message, Request) else ACCESSORS
    for name in names:
        try:
            _touch(getattr(message, name))
        except ParseError as error:
            _guarded(error)
    wire = message.serialize()
    try:
        again = parse_message(wire)
    except ParseError as error:
        raise BrokenPropertyError(f"serialize() gave bytes that do not parse: {error}") from error
    if again != message:
        raise BrokenPropertyError("parse(serialize(m)) != m")
    if isinstance(message, Request):
        try:
            response_to(message, 400).serialize()
        except ParseError as error:
            _guarded(error)
    return message


def parse_target(data: bytes) -> None:
    check_message(data)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _frame(data: bytes, size: int) -> tuple[list[Any], bool]:
    framer = StreamFramer(max_header_bytes=8192, max_body_bytes=8192, max_message_bytes=16384)
    items: list[Any] = []
    try:
        for chunk in _chunks(data, size):
            items += framer.feed(chunk)
    except ParseError as error:
        _guarded(error)
        return items, True
    return items, False


def framer_target(data: bytes) -> None:
    if not data:
        return
    payload = data[1:]
    size = (len(payload), 512, 97, 16, 5, 3, 2, 1)[data[0] % 8] or 1
    whole, whole_failed = _frame(payload, max(1, len(payload)))
    chunked, chunked_failed = _frame(payload, size)
    if whole_failed != chunked_failed:
        raise BrokenPropertyError(
            f"framing error whole={whole_failed} but in {size}-byte chunks={chunked_failed}"
        )
    if not whole_failed and whole != chunked:
        raise BrokenPropertyError(f"{size}-byte chunks frame differently from the whole input")
    if whole_failed and whole[: len(chunked)] != chunked[: len(whole)]:
        raise BrokenPropertyError("the items before a framing error differ with chunking")
    for item in chunked:
        if item is not KEEPALIVE_PING:
            check_message(item)


# --- the whole SBC --------------------------------------------------------------------

SBC_CONFIG = """
sbc fuzz
 sbe
  local-domain lab.test
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   remote-address ipv4 127.0.0.0/8
   security untrusted
   attach
  adjacency sip tls
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   remote-address ipv4 127.0.0.0/8
   security trusted-encrypted
   attach
  adjacency sip trunk
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   transport tcp
   signaling-peer 127.0.0.9
   signaling-peer-port 5080
   remote-address ipv4 127.0.0.9/32
   security trusted-unencrypted
   attach
"""

#: (adjacency, transport, local port, peer identities) by the input's first byte.
ENTRIES = (
    ("access", UDP, 5060, None),
    ("access", TCP, 5060, None),
    ("tls", TLS, 5061, PeerIdentities(sip_domains=("lab.test", "example.com", "example.net"))),
    ("trunk", TCP, 5062, None),
)
#: What the scripted callee answers an INVITE with (the input's second and third bytes).
INVITE_ANSWERS: tuple[tuple[int, ...], ...] = (
    (),
    (100,),
    (180,),
    (180, 486),
    (183, 200),
    (200,),
    (302,),
    (404,),
    (500,),
    (503,),
    (100, 180, 603),
    (180, 180, 408),
)
MAX_STEPS = 20000


class SbcHarness:
    """One in-memory SBC and the scripted peers around it.

    Built once per fuzzing process (a service takes milliseconds to build);
    every input must leave its tables empty, so the next one starts clean.
    """

    def __init__(self) -> None:
        self.pki = tempfile.mkdtemp(prefix="sbc-fuzz-pki-")
        write_lab_pki(self.pki)
        tls = TlsFiles(
            os.path.join(self.pki, "sbc.pem"),
            os.path.join(self.pki, "sbc.key"),
            os.path.join(self.pki, "ca.pem"),
        )
        self.reactor = MemoryReactorClock()
        self.service = SbcService.from_config(
            parse_config(SBC_CONFIG), reactor=self.reactor, tls=tls
        )
        self.stack = self.service.stack
        self.core = self.service.core
        self.now = 1000.0
        self.connection_ids = iter(range(1000, 10**9))
        self.answers: tuple[int, ...] = ()
        self.bye_answer = 200
        self.broken_contact = False
        self.dns_fails = False

    def context_for(self, flow: Flow) -> InboundContext:
        listener = ListenerKey(flow.local[0], flow.local[1], flow.transport)
        adjacency = self.service.runtime.table.classify(listener, flow.remote[0])
        if adjacency is None:
            for candidate in self.service.runtime.table.attached:
                if candidate.port == flow.local[1]:
                    return InboundContext(candidate.name, listener, None)
            return InboundContext("access", listener, None)
        return InboundContext(adjacency.name, listener, None)

    def deliver(self, data: bytes, flow: Flow, context: InboundContext) -> None:
        self.process(self.stack.receive(data, flow, self.now, context))

    def process(self, outputs: list[Any]) -> None:
        pending = list(outputs)
        steps = 0
        while pending:
            steps += 1
            if steps > MAX_STEPS:
                raise BrokenPropertyError("the SBC and its peers never stop talking")
            output = pending.pop(0)
            if isinstance(output, Resolve):
                pending += output.reply(self.resolve(output.hop), self.now)
                continue
            if not isinstance(output, Transmit):
                continue
            try:
                message = parse_message(output.data)
            except ParseError as error:
                if output.data[:8] == b"SIP/2.0 " and output.data[8:9] in (b"4", b"5"):
                    continue  # an error answer copies a malformed request's headers as received
                raise BrokenPropertyError(f"the SBC sent what it cannot parse: {error}") from None
            if not isinstance(message, Request) or message.method == "ACK":
                continue
            pending += self.answer(message, output.flow)

    def resolve(self, hop: NextHop) -> Resolution:
        """The scripted DNS: an address is itself; a name is 127.0.0.9, or nothing."""
        if hop.numeric:
            return Resolution(hop, (hop.default_destination(),))
        if self.dns_fails:
            return Resolution(hop, (), error=f"{hop.host}: no such domain (fuzz)")
        port = hop.port or 5060
        return Resolution(hop, (Destination(hop.transports[0], "127.0.0.9", port, hop.host),))

    def answer(self, request: Request, flow: Flow) -> list[Any]:
        """The scripted peer's answers to a request the SBC sent."""
        if flow.transport != UDP and flow.connection_id is None:
            flow = Flow(flow.transport, flow.local, flow.remote, next(self.connection_ids))
        statuses = self.answers if request.method == "INVITE" else (self.bye_answer,)
        outputs: list[Any] = []
        context = self.context_for(flow)
        for status in statuses:
            response = response_to(request, status, to_tag="fuzzpeer")
            if 100 < status < 300:
                host = host_text(flow.remote[0]) if not self.broken_contact else flow.remote[0]
                response.headers.add("Contact", f"<sip:peer@{host}:{flow.remote[1]}>")
            if 300 <= status < 400:
                moved = "mailto:moved@lab.test" if self.broken_contact else "sip:moved@127.0.0.9"
                response.headers.add("Contact", f"<{moved}>")
            outputs += self.stack.receive(response.serialize(), flow, self.now, context)
        return outputs

    def settle(self) -> None:
        """Run the clock past every timer, then check that nothing is left."""
        steps = 0
        while True:
            deadline = self.stack.next_deadline()
            if deadline is None:
                break
            steps += 1
            if steps > MAX_STEPS:
                raise BrokenPropertyError("timers keep firing: the SBC never settles")
            self.now = max(self.now, deadline)
            self.reactor.advance(max(0.0, self.now - self.reactor.seconds()))
            self.process(self.stack.advance(self.now))
        location = self.core.registrar.location
        expiry = getattr(location, "next_expiry", lambda: None)()
        while expiry is not None:
            self.now = max(self.now, expiry + 1)
            location.purge(self.now)  # type: ignore[attr-defined]
            expiry = location.next_expiry()  # type: ignore[attr-defined]
        left = {
            "transactions": len(self.stack.transactions),
            "calls": len(self.core.calls.calls),
            "dialogs": len(self.core.calls.dialogs),
            "client handlers": len(self.core.calls.clients),
            "server handlers": len(self.core.calls.servers),
            "B2BUA timers": int(self.core.calls.next_deadline() is not None),
            "registrations": len(location),  # type: ignore[arg-type]
        }
        busy = {name: count for name, count in left.items() if count}
        if busy:
            raise BrokenPropertyError(f"tables left non-empty after every timer: {busy}")


_HARNESS: list[SbcHarness] = []


def sbc_target(data: bytes) -> None:
    if len(data) < 4:
        return
    control, payload = data[:4], data[4:]
    adjacency, transport, port, identities = ENTRIES[control[0] % len(ENTRIES)]
    if not _HARNESS:
        _HARNESS.append(SbcHarness())
    harness = _HARNESS[0]
    harness.answers = INVITE_ANSWERS[control[1] % len(INVITE_ANSWERS)]
    harness.bye_answer = (200, 481, 408, 500)[control[2] % 4]
    harness.broken_contact = bool(control[2] & 8)
    harness.dns_fails = bool(control[2] & 16)
    source = ("127.0.0.9" if adjacency == "trunk" else "127.0.0.2", 40000 + control[3])
    listener = ListenerKey("127.0.0.1", port, transport)
    context = InboundContext(adjacency, listener, identities)
    if transport == UDP:
        flow = Flow(UDP, ("127.0.0.1", port), source)
        harness.deliver(payload, flow, context)
    else:
        flow = Flow(transport, ("127.0.0.1", port), source, next(harness.connection_ids))
        framer = StreamFramer()
        size = 1 + control[3] % 64 if control[2] & 4 else max(1, len(payload))
        try:
            for chunk in _chunks(payload, size):
                for item in framer.feed(chunk):
                    if isinstance(item, bytes):
                        harness.deliver(item, flow, context)
        except ParseError as error:
            _guarded(error)
    harness.settle()


TARGETS = {"parse": parse_target, "framer": framer_target, "sbc": sbc_target}


# --- seeds -------------------------------------------------------------------------


_KEYWORDS = {
    "local_ip": "127.0.0.2",
    "remote_ip": "127.0.0.1",
    "sbc_host": "127.0.0.1",
    "local_port": "6100",
    "remote_port": "5060",
    "sbc_port": "5060",
    "media_port": "6000",
    "media_ip": "127.0.0.2",
    "media_ip_type": "4",
    "local_ip_type": "4",
    "transport": "UDP",
    "via_transport": "UDP",
    "call_number": "1",
    "pid": "4242",
    "call_id": "1-4242@127.0.0.2",
    "branch": "z9hG4bK-4242-1-0",
    "ruri": "sip:service@lab.test",
    "from_uri": "sip:sipp@lab.test",
    "contact_scheme": "sip",
    "routes": "",
    "next_url": "sip:service@127.0.0.1:5060",
    "peer_tag_param": ";tag=peer",
    "redirect": "sip:moved@127.0.0.9",
}


_LAST = {
    "via": "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-sbc.1",
    "from": "<sip:sipp@lab.test>;tag=1",
    "to": "<sip:service@lab.test>",
    "call-id": "b-leg-1@127.0.0.1",
    "cseq": "1 INVITE",
    "record-route": "<sip:127.0.0.1:5062;lr>",
}


def scenario_messages() -> Iterator[bytes]:
    """The ``<send>`` messages of the interop SIPp scenarios, keywords filled in."""
    pattern = os.path.join(REPO, "tests", "interop", "scenarios", "*.xml")
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for block in re.findall(r"<send[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", text, re.DOTALL):
            lines = [line.strip() for line in block.strip("\n").splitlines()]
            body_at = lines.index("") if "" in lines else len(lines)
            head, body = lines[:body_at], "\r\n".join(lines[body_at + 1 :])
            body = body + "\r\n" if body else ""
            message = "\r\n".join(head) + "\r\n\r\n" + body

            def fill(match: re.Match[str], body: str = body) -> str:
                word = match.group(1)
                if word == "len":
                    return str(len(body.encode()))
                if word.startswith("last_"):  # a header copied from the request
                    name = word[5:].rstrip(":")
                    return f"{name}: " + _LAST.get(name.lower(), "1")
                return _KEYWORDS.get(word, "1")

            yield re.sub(r"\[([A-Za-z_$0-9:+\-]+)\]", fill, message).encode()


def torture_messages() -> Iterator[bytes]:
    """The RFC 4475 and RFC 5118 messages of tests/sip/torture/."""
    for path in sorted(glob.glob(os.path.join(REPO, "tests", "sip", "torture", "*.sip"))):
        with open(path, "rb") as handle:
            yield handle.read()


def seeds(target: str) -> Iterator[bytes]:
    """The seed inputs of ``target``: the corpus, shaped as the target reads its input."""
    messages = [*torture_messages(), *scenario_messages()]
    for message in messages:
        if target == "parse":
            yield message
        elif target == "framer":
            yield b"\x02" + message
            yield b"\x03" + message + b"\r\n\r\n" + message
        else:
            for entry in range(len(ENTRIES)):
                yield bytes([entry, 5, 0, 0]) + message
            yield bytes([0, 3, 1, 4]) + message


def quiet_logs() -> None:
    """Send the SBC's log events nowhere (the fuzzer prints its own progress)."""
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
