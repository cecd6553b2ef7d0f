"""Every RFC 4475 and RFC 5118 torture message, sent to a running daemon over UDP, TCP and TLS.

Each test starts ``twistd -n sbc`` with an untrusted UDP+TCP adjacency and a
trusted-encrypted one, and a call policy under which nothing routes anywhere
(so valid requests get the SBC's own final answer: 480, 481, 483 and so on,
never a relay towards example.com). Every message of tests/sip/torture/ is
then sent as it is written in the RFC, and gets the outcome the RFC asks
for: a final response for a valid request (not 400/416/505/513), 400 with a
reason naming the problem, 416, 505, 420 listing the unknown option-tags
(bext01), or silence where nothing can be answered (a response sent to the
SBC, a request without From/To/Call-ID: docs/testing.md says why).
After each message a clean OPTIONS to the SBC itself must still be answered
200, on the same connection while it is open.

Over UDP the answers go where RFC 3261 §18.2.2 says: to the source address
and the Via's sent-by port (5060 when it names none). So the test sends from
a 127.x.y.z address of its own with a socket on each port the messages name.
Over TCP and TLS the answers come back on the connection, whatever the Via
says. The TLS client presents a certificate naming every From domain of the
corpus (behaviour.md §3 drops requests whose From domain it does not vouch
for).
"""

from __future__ import annotations

import errno
import os
import random
import re
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from sbc.errors import ParseError
from sbc.sip.framing import StreamFramer
from sbc.sip.message import Request, parse_message
from sbc.sip.transaction import build_ack
from tests.interop.harness import (
    HOST,
    AdjacencySpec,
    Response,
    StreamClient,
    adjacency_lines,
    connect_stream,
    get_reactor,
    launch_sbc,
    make_pki,
    new_call_id,
    parse_response,
    sip_request,
    tls_client_options,
    within,
)
from tests.support.peers import free_port

TORTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sip", "torture")

#: Statuses that say "your request is malformed or unsupported".
REFUSALS = (400, 416, 505, 513)


@attrs.frozen
class Expect:
    """What the RFC expects for one message.

    ``kind``: ``"valid"`` (a final response that is not a refusal),
    ``"either"`` (the RFC allows a 400 or treating the message as valid:
    any final response), ``"refused"`` (one of ``statuses``, with a reason
    phrase that names the problem), ``"silent"`` (nothing can be answered).
    ``stream`` overrides it on TCP/TLS, where framing rules differ:
    ``"closed"`` is a 400 after which the SBC closes the connection,
    ``"incomplete"`` is a message the stream framer is still waiting for,
    ``"reconnect"`` a message whose bytes do not frame cleanly (the probe
    then goes on a new connection). ``unsupported``: the option-tags a 420
    lists.
    """

    kind: str
    statuses: tuple[int, ...] = ()
    stream: str | None = None
    #: for a 420: the option-tags its Unsupported header lists, in order
    unsupported: tuple[str, ...] = ()


VALID = Expect("valid")
EITHER = Expect("either")
SILENT = Expect("silent")


def refused(*statuses: int, stream: str | None = None) -> Expect:
    return Expect("refused", statuses or (400,), stream)


#: RFC 4475 §3 and RFC 5118 §4, message by message.
EXPECTED: dict[str, Expect] = {
    # RFC 4475 3.1.1: valid messages (two of them are responses: never answered)
    "wsinv": VALID,
    "intmeth": VALID,
    "esc01": VALID,
    "escnull": VALID,
    "esc02": VALID,
    "lwsdisp": VALID,
    "longreq": VALID,
    # on a stream the INVITE after the REGISTER is a message of its own; its
    # Content-Length (150) stops 3 octets short of its body, which then lead
    # whatever follows on that connection
    "dblreq": Expect("valid", stream="reconnect"),
    "semiuri": VALID,
    "transports": VALID,
    "mpart01": VALID,
    "unreason": SILENT,
    "noreason": SILENT,
    # 3.1.2: invalid messages
    "badinv01": refused(),
    "clerr": refused(stream="incomplete"),
    "ncl": refused(stream="closed"),
    "scalar02": refused(),
    "scalarlg": SILENT,
    "quotbal": refused(),
    "ltgtruri": refused(),
    "lwsruri": EITHER,
    "lwsstart": EITHER,
    "trws": EITHER,
    "escruri": EITHER,
    "baddate": EITHER,
    "regbadct": EITHER,
    "badaspec": EITHER,
    "baddn": EITHER,
    "badvers": refused(505),
    "mismatch01": refused(),
    "mismatch02": refused(400, 501),
    "bigcode": SILENT,
    # 3.2 and 3.3: transaction and application layer
    "badbranch": VALID,
    "insuf": SILENT,
    "unkscm": refused(416),
    "novelsc": refused(416),
    "unksm2": EITHER,
    # RFC 3261 §8.2.2.3 / §16.3 step 5: 420 listing the unknown option-tags
    "bext01": Expect(
        "refused",
        (420,),
        unsupported=(
            "nothingSupportsThis",
            "nothingSupportsThisEither",
            "noProxiesSupportThis",
            "norDoAnyProxiesSupportThis",
        ),
    ),
    "invut": VALID,
    "regaut01": VALID,
    "multi01": refused(),
    "mcl01": refused(stream="closed"),
    "bcast": SILENT,
    "zeromf": Expect("refused", (483,)),
    "cparam01": VALID,
    "cparam02": VALID,
    "regescrt": VALID,
    "sdp01": VALID,
    # 3.4: RFC 2543 syntax (no Content-Length: on a stream that is a framing error)
    "inv2543": Expect("valid", stream="closed"),
    # RFC 5118: IPv6
    "ipv6-good": VALID,
    "ipv6-bad": refused(),
    "port-ambiguous": VALID,
    "port-unambiguous": VALID,
    "via-received-param-with-delim": VALID,
    "via-received-param-no-delim": VALID,
    "ipv6-in-sdp": VALID,
    "mult-ip-in-header": VALID,
    "mult-ip-in-sdp": VALID,
    "ipv4-mapped-ipv6": VALID,
    "ipv6-bug-abnf-3-colons": VALID,
    "ipv6-correct-abnf-2-colons": VALID,
}

#: The From domains of the corpus: the TLS client's certificate vouches for all of them.
FROM_DOMAINS = ("example.com", "example.net", "example.org", "east.example.com")

_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_VIA_PORT = re.compile(
    rb"^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*\w+\s+"
    rb"(\[[^\]]*\]|[^\s;:,]+)(?::(\d+))?",
    re.IGNORECASE | re.MULTILINE,
)


def load(name: str) -> bytes:
    with open(os.path.join(TORTURE, name + ".sip"), "rb") as handle:
        return handle.read()


def call_id(data: bytes) -> str | None:
    """The first Call-ID of a message as written (compact form too)."""
    match = _CALL_ID.search(data)
    return match.group(1).decode("utf-8", "replace") if match else None


def via_port(data: bytes) -> int:
    """The sent-by port of the first Via line (5060 when it names none)."""
    match = _VIA_PORT.search(data)
    return int(match.group(2)) if match and match.group(2) else 5060


def config(adjacencies: list[AdjacencySpec]) -> str:
    """The adjacencies, and routing that sends nothing anywhere (one table entry for a
    domain no message names)."""
    lines = ["sbc torture", " sbe", "  local-domain lab.test"]
    for adjacency in adjacencies:
        lines += adjacency_lines(adjacency)
    lines += [
        "  call-policy-set 1",
        "   first-call-routing-table nowhere",
        "   rtg-dst-domain-table nowhere",
        "    entry 1",
        "     match-domain nowhere.invalid",
        "     dst-adjacency access",
        "     action complete",
        "  active-call-policy-set 1",
    ]
    return "\n".join(lines) + "\n"


def finals(messages: list[Response], wanted: str) -> list[Response]:
    return [m for m in messages if m.status >= 200 and wanted in m.header("Call-ID", "i")]


def ack_for(request_bytes: bytes, response: Response) -> bytes | None:
    """The ACK a client sends for a non-2xx final answer to an INVITE, when it can build one."""
    try:
        request = parse_message(request_bytes)
        answer = parse_message(response.raw)
    except ParseError:
        return None
    if not isinstance(request, Request) or request.method != "INVITE":
        return None
    try:
        return build_ack(request, answer).serialize()  # type: ignore[arg-type]
    except ParseError:
        return None


class MultiPortUdp(protocol.DatagramProtocol):
    """One of the sockets on the test's own address; every datagram goes to ``inbox``."""

    def __init__(self, inbox: list[bytes], wake: list[defer.Deferred[None]]) -> None:
        self.inbox = inbox
        self.wake = wake

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.inbox.append(datagram)
        waiting, self.wake[:] = list(self.wake), []
        for waiter in waiting:
            waiter.callback(None)


class _TortureTestCase(TestCase):
    """A fresh daemon per transport; one pass over the whole corpus."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.access_port = free_port()
        self.tls_port = free_port()
        adjacencies = [
            AdjacencySpec("access", "untrusted", "udp-tcp", self.access_port),
            AdjacencySpec("tls", "trusted-encrypted", None, self.tls_port),
        ]
        self.sbc = yield launch_sbc(self, self.pki, adjacencies, config(adjacencies))
        self.outcomes: list[str] = []

    def names(self) -> Iterator[str]:
        files = sorted(f[:-4] for f in os.listdir(TORTURE) if f.endswith(".sip"))
        self.assertEqual(sorted(EXPECTED), files)
        yield from files

    def check(self, name: str, expect: Expect, answers: list[Response]) -> None:
        """Compare the final answers to one message with what the RFC expects."""
        shown = [f"{a.status} {a.reason}" for a in answers]
        self.outcomes.append(f"{name}: {shown or 'nothing'}")
        where = f"{name}: {shown}\n{self.sbc.tail(15)}"
        if expect.kind == "silent":
            self.assertEqual(answers, [], where)
            return
        self.assertTrue(answers, f"{name}: no final response\n{self.sbc.tail(15)}")
        answer = answers[0]
        if expect.kind == "valid":
            self.assertNotIn(answer.status, REFUSALS, where)
        elif expect.kind == "refused":
            self.assertIn(answer.status, expect.statuses, where)
            self.assertTrue(answer.reason.strip(), where)
            if answer.status == 400:
                self.assertNotEqual(answer.reason, "Bad Request", f"no problem named: {where}")
            if expect.unsupported:
                listed = [t.strip() for v in answer.header("Unsupported") for t in v.split(",")]
                self.assertEqual(listed, list(expect.unsupported), where)


class _UdpTestCase(_TortureTestCase):
    """Sockets on an address of the test's own, towards the untrusted adjacency."""

    @defer.inlineCallbacks
    def bind(self) -> Any:
        """Sockets on a 127.x.y.z of our own, on every port a Via of the corpus names."""
        reactor = get_reactor()
        ports = sorted({via_port(load(name)) for name in EXPECTED} | {5060})
        for _ in range(20):
            address = ".".join(["127", *(str(random.randint(1, 254)) for _ in range(3))])
            listening: list[Any] = []
            try:
                for port in ports:
                    receiver = MultiPortUdp(self.inbox, self.wake)
                    listening.append(reactor.listenUDP(port, receiver, interface=address))
            except CannotListenError as error:
                for port in listening:
                    yield port.stopListening()
                if getattr(error.socketError, "errno", None) != errno.EADDRINUSE:
                    raise
                continue
            for port in listening:
                self.addCleanup(port.stopListening)
            self.address = address
            self.sender = listening[ports.index(5060)]
            return
        self.fail("no free 127.x.y.z address with ports " + repr(ports))

    def send(self, data: bytes) -> None:
        self.sender.write(data, (HOST, self.access_port))

    @defer.inlineCallbacks
    def wait_for(self, wanted: str, resend: bytes | None, seconds: float = 8.0) -> Any:
        """Final answers with Call-ID ``wanted``; resend ``resend`` per timer E while waiting."""
        reactor = get_reactor()
        interval = 0.5
        deadline = reactor.seconds() + seconds
        while True:
            found = finals([r for r in map(parse_response, self.inbox) if r], wanted)
            if found or reactor.seconds() >= deadline:
                return found
            waiter: defer.Deferred[None] = defer.Deferred()
            self.wake.append(waiter)
            timer = reactor.callLater(interval, lambda w=waiter: w.called or w.callback(None))
            yield waiter
            if timer.active():
                timer.cancel()
            elif resend is not None:
                self.send(resend)
                interval = min(interval * 2, 4.0)

    @defer.inlineCallbacks
    def probe(self) -> Any:
        """OPTIONS to the SBC itself (rport: the answer comes to the sending socket)."""
        probe_id = new_call_id()
        request = sip_request(
            uri=f"sip:{HOST}:{self.access_port}", via_transport="UDP", local_port=5060,
            call_id=probe_id,
        ).replace(f"{HOST}:5060;rport".encode(), f"{self.address}:5060;rport".encode())  # fmt: skip
        self.send(request)
        answers = yield self.wait_for(probe_id, request)
        self.assertTrue(answers, f"no answer to the OPTIONS probe\n{self.sbc.tail(15)}")
        self.assertEqual(answers[0].status, 200, answers[0].raw)


class _StreamTortureTests(_TortureTestCase):
    """Over one connection, reopened only when the SBC closes it (or a message leaves it
    waiting for bytes that never come)."""

    tls = False

    @defer.inlineCallbacks
    def connect(self) -> Any:
        if self.tls:
            cert, key = self.pki.issue(
                "torture-client", "torture client",
                sip_uris=[f"sip:{domain}" for domain in FROM_DOMAINS],
            )  # fmt: skip
            options = tls_client_options(self.pki.cert("ca"), cert, key)
            client = yield connect_stream(self, self.tls_port, options)
            yield client.wait_handshake()
        else:
            client = yield connect_stream(self, self.access_port)
        return client

    def responses(self, client: StreamClient) -> list[Response]:
        framer = StreamFramer()
        items = framer.feed(client.received)
        return [r for r in (parse_response(i) for i in items if isinstance(i, bytes)) if r]

    @defer.inlineCallbacks
    def wait_for(self, client: StreamClient, wanted: str, seconds: float = 8.0) -> Any:
        yield client.wait(
            lambda c: bool(finals(self.responses(c), wanted)) or c.lost is not None,
            seconds,
            f"a final answer to {wanted}",
        )
        return finals(self.responses(client), wanted)

    @defer.inlineCallbacks
    def probe(self, client: StreamClient) -> Any:
        probe_id = new_call_id()
        transport = "TLS" if self.tls else "TCP"
        port = self.tls_port if self.tls else self.access_port
        client.write(
            sip_request(
                uri=f"sip:{HOST}:{port}", via_transport=transport, local_port=client.local_port(),
                call_id=probe_id, from_uri="sip:probe@example.com",
            )
        )  # fmt: skip
        try:
            answers = yield self.wait_for(client, probe_id)
        except Exception as error:
            self.fail(
                f"OPTIONS probe: {error}; after {self.outcomes[-3:]}; received "
                f"{client.received[-600:]!r}\n{self.sbc.tail(15)}"
            )
        self.assertTrue(answers, f"no answer to the OPTIONS probe\n{self.sbc.tail(15)}")
        self.assertEqual(answers[0].status, 200, answers[0].raw)

    @defer.inlineCallbacks
    def run_corpus(self) -> Any:
        client = yield self.connect()
        for name in self.names():
            expect = EXPECTED[name]
            behaviour = expect.stream or expect.kind
            data = load(name)
            wanted = call_id(data) or "(none)"
            client.received = b""
            client.write(data)
            if behaviour == "incomplete":
                # the framer waits for the rest of the body: a fresh connection for the probe
                fresh = yield self.connect()
                yield self.probe(fresh)
                answers = finals(self.responses(client), wanted)
                self.assertIsNone(client.lost, f"{name}: the SBC closed a connection mid-message")
                client.close()
                client = fresh
                self.check(name, SILENT, answers)
                continue
            if behaviour == "silent":
                yield self.probe(client)
                answers = finals(self.responses(client), wanted)
                self.check(name, expect, answers)
                continue
            try:
                answers = yield self.wait_for(client, wanted)
            except Exception as error:
                self.fail(f"{name}: {error}\n{self.sbc.tail(15)}")
            if behaviour == "closed":
                self.check(name, refused(400), answers[:1])
                yield client.wait_closed()
                client = yield self.connect()
            elif behaviour == "reconnect":
                self.check(name, Expect(expect.kind, expect.statuses), answers[:1])
                client.close()
                client = yield self.connect()
            else:
                self.check(name, expect, answers[:1])
                ack = ack_for(data, answers[0])
                if ack is not None:
                    client.write(ack)
            yield self.probe(client)
        client.close()


class TcpTortureTests(_StreamTortureTests):
    """Over TCP to the untrusted adjacency (most Vias say UDP: the answer still comes back
    on the connection)."""

    @defer.inlineCallbacks
    def test_every_message_over_tcp(self) -> Any:
        yield within(self.run_corpus(), 90.0, "the corpus over TCP")


class TlsTortureTests(_StreamTortureTests):
    """Over TLS to the trusted-encrypted adjacency, with a client certificate."""

    tls = True

    @defer.inlineCallbacks
    def test_every_message_over_tls(self) -> Any:
        yield within(self.run_corpus(), 90.0, "the corpus over TLS")


class UdpTortureTests(_UdpTestCase):
    """Over UDP to the untrusted adjacency."""

    @defer.inlineCallbacks
    def test_every_message_over_udp(self) -> Any:
        self.inbox: list[bytes] = []
        self.wake: list[defer.Deferred[None]] = []
        yield self.bind()
        for name in self.names():
            expect = EXPECTED[name]
            data = load(name)
            wanted = call_id(data) or "(none)"
            self.inbox.clear()
            self.send(data)
            if expect.kind == "silent":
                yield self.probe()
                answers = finals([r for r in map(parse_response, self.inbox) if r], wanted)
            else:
                answers = yield self.wait_for(wanted, data)
                for answer in answers[:1]:
                    ack = ack_for(data, answer)
                    if ack is not None:
                        self.send(ack)
                yield self.probe()
            self.check(name, expect, answers[:1])


class AcrossTransportsTests(_UdpTestCase):
    """The same request over UDP, then at once over TCP (a client that changes transport)."""

    @defer.inlineCallbacks
    def test_tcp_copy_of_a_udp_request_answered_on_the_connection(self) -> Any:
        """unkscm's Via says TCP, the first copy comes by UDP: each is answered where it came."""
        self.inbox = []
        self.wake = []
        yield self.bind()
        data = load("unkscm")
        self.send(data)
        [over_udp] = yield self.wait_for(call_id(data) or "", data)
        self.assertEqual(over_udp.status, 416)
        client = yield connect_stream(self, self.access_port)
        client.write(data)
        yield client.wait(lambda c: b"\r\n\r\n" in c.received, 8.0, "the answer over TCP")
        over_tcp = parse_response(client.received)
        assert over_tcp is not None
        self.assertEqual((over_tcp.status, over_tcp.header("Call-ID", "i")), (416, [call_id(data)]))
