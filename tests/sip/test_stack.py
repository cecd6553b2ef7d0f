"""The sans-I/O stack: parsing, §18 transport rules, error responses, transactions."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import SipError
from sbc.sip import parse_message, response_to
from sbc.sip.message import Request, Response
from sbc.sip.stack import Dropped, Flow, SipStack, StackOutput, Transmit
from sbc.sip.transaction import ClientTransaction, ServerTransaction

UDP = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.2", 40000))
TCP = Flow("TCP", ("127.0.0.1", 5060), ("127.0.0.2", 40001), connection_id=7)


def options(
    via: str = "SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-1",
    extra: str = "",
    version: str = "SIP/2.0",
    cseq: str = "1 OPTIONS",
) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1 {version}\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:a@lab.test>;tag=f1\r\n"
        "To: <sip:127.0.0.1>\r\n"
        "Call-ID: c1@127.0.0.2\r\n"
        f"CSeq: {cseq}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class RecordingUser:
    """A transaction user that records calls and answers with a programmable status."""

    def __init__(self) -> None:
        self.stack: SipStack
        self.requests: list[tuple[Request, ServerTransaction | None, Flow, object]] = []
        self.responses: list[Response] = []
        self.failures: list[str] = []
        self.answer: int | SipError | None = 200
        self.drop: str | None = None

    def screen(self, request: Request, flow: Flow, context: object) -> str | None:
        return self.drop

    def request_received(
        self,
        request: Request,
        transaction: ServerTransaction | None,
        flow: Flow,
        context: object,
        now: float,
    ) -> list[StackOutput]:
        self.requests.append((request, transaction, flow, context))
        if isinstance(self.answer, SipError):
            raise self.answer
        if self.answer is None or transaction is None:
            return []
        return self.stack.respond(transaction, response_to(request, self.answer), now)

    def response_received(
        self, response: Response, transaction: ClientTransaction, now: float
    ) -> list[StackOutput]:
        self.responses.append(response)
        return []

    def transaction_failed(
        self, transaction: ClientTransaction | ServerTransaction, reason: str, now: float
    ) -> list[StackOutput]:
        self.failures.append(reason)
        return []

    timer_at: float | None = None
    fired: list[float] = []

    def next_deadline(self) -> float | None:
        return self.timer_at

    def advance(self, now: float) -> list[StackOutput]:
        self.fired = [*self.fired, now]
        self.timer_at = None
        return []

    closed_connections: list[int] = []

    def connection_closed(self, connection_id: int, now: float) -> list[StackOutput]:
        self.closed_connections = [*self.closed_connections, connection_id]
        return []


def make_stack() -> tuple[SipStack, RecordingUser]:
    user = RecordingUser()
    stack = SipStack(user)
    user.stack = stack
    return stack, user


def sent(outputs: list[StackOutput]) -> list[tuple[Flow, Response | Request]]:
    return [(o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)]


class ReceiveTests(SynchronousTestCase):
    def test_request_answered_on_sent_by_port(self) -> None:
        """§18.2.2 on UDP without rport: source address, the Via's sent-by port."""
        stack, user = make_stack()
        [(flow, response)] = sent(stack.receive(options(), UDP, 0.0, context="ctx"))
        self.assertEqual(flow.remote, ("127.0.0.2", 5070))
        assert isinstance(response, Response)
        self.assertEqual(response.status, 200)
        self.assertEqual(user.requests[0][3], "ctx")

    def test_rport_answers_to_source_port_and_records_it(self) -> None:
        """RFC 3581: received and rport filled in, answer to the packet's source."""
        stack, _ = make_stack()
        data = options(via="SIP/2.0/UDP 10.9.9.9:5070;rport;branch=z9hG4bK-2")
        [(flow, response)] = sent(stack.receive(data, UDP, 0.0))
        self.assertEqual(flow, UDP)
        via = response.top_via
        self.assertEqual(via.param("received"), "127.0.0.2")
        self.assertEqual(via.param("rport"), "40000")

    def test_received_added_when_host_differs(self) -> None:
        stack, _ = make_stack()
        data = options(via="SIP/2.0/UDP phone.lab.test:5070;branch=z9hG4bK-3")
        [(_, response)] = sent(stack.receive(data, UDP, 0.0))
        self.assertEqual(response.top_via.param("received"), "127.0.0.2")

    def test_stream_answer_on_same_connection(self) -> None:
        stack, _ = make_stack()
        data = options(via="SIP/2.0/TCP 127.0.0.2:5070;branch=z9hG4bK-4")
        [(flow, _)] = sent(stack.receive(data, TCP, 0.0))
        self.assertEqual(flow.connection_id, 7)
        self.assertEqual(flow.remote, ("127.0.0.2", 5070))  # fallback if the connection is gone

    def test_retransmission_gets_the_same_response_without_the_tu(self) -> None:
        stack, user = make_stack()
        first = sent(stack.receive(options(), UDP, 0.0))
        again = sent(stack.receive(options(), UDP, 0.1))
        self.assertEqual(len(user.requests), 1)
        self.assertEqual(first[0][1].serialize(), again[0][1].serialize())

    def test_screened_request_dropped_silently(self) -> None:
        stack, user = make_stack()
        user.drop = "tls-identity-mismatch"
        outputs = stack.receive(options(), UDP, 0.0, context="ctx")
        self.assertEqual(outputs, [Dropped(UDP, "tls-identity-mismatch", "ctx")])
        self.assertEqual(user.requests, [])
        self.assertEqual(len(stack.transactions), 0)

    def test_transactions_counted_by_state(self) -> None:
        stack, user = make_stack()
        user.answer = None  # the TU has not answered yet
        invite = options(cseq="1 INVITE").replace(b"OPTIONS sip", b"INVITE sip")
        stack.receive(invite, UDP, 0.0)
        stack.receive(options(via="SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-9"), UDP, 0.0)
        self.assertEqual(
            stack.transactions_by_state(),
            {"INVITE_SERVER PROCEEDING": 1, "NON_INVITE_SERVER TRYING": 1},
        )

    def test_tu_timers_share_the_one_deadline(self) -> None:
        """The stack's deadline is the earlier of its transactions' and the TU's."""
        stack, user = make_stack()
        stack.receive(options(), UDP, 0.0)  # Timer J at 32 s
        user.timer_at = 4.0
        self.assertEqual(stack.next_deadline(), 4.0)
        stack.advance(3.9)
        self.assertEqual(user.fired, [])
        stack.advance(4.0)
        self.assertEqual(user.fired, [4.0])
        self.assertEqual(stack.next_deadline(), 32.0)

    def test_transactions_removed_after_timer_j(self) -> None:
        stack, _ = make_stack()
        stack.receive(options(), UDP, 0.0)
        deadline = stack.next_deadline()
        assert deadline is not None
        self.assertEqual(deadline, 32.0)  # Timer J = 64*T1 on UDP
        stack.advance(deadline)
        self.assertEqual(len(stack.transactions), 0)
        self.assertIsNone(stack.next_deadline())


class ErrorResponseTests(SynchronousTestCase):
    def status_of(self, data: bytes) -> list[int]:
        stack, _ = make_stack()
        return [r.status for _, r in sent(stack.receive(data, UDP, 0.0)) if isinstance(r, Response)]

    def test_cseq_method_mismatch_gets_400(self) -> None:
        self.assertEqual(self.status_of(options(cseq="1 INVITE")), [400])

    def test_unsupported_version_gets_505(self) -> None:
        stack, _ = make_stack()
        responses = sent(stack.receive(options(version="SIP/3.0"), UDP, 0.0))
        self.assertEqual(
            [(r.status, r.reason) for _, r in responses if isinstance(r, Response)],
            [(505, "Version Not Supported")],  # RFC 3261 §21.5.7
        )

    def test_warning_agent_is_the_local_host_ipv6_in_brackets(self) -> None:
        stack, _ = make_stack()
        request = parse_message(options())
        assert isinstance(request, Request)
        error = SipError(403, "Forbidden", (380, "SIPS Not Allowed"))
        v6 = Flow("UDP", ("2001:db8::1", 5060), ("2001:db8::2", 5060))
        for flow, agent in ((UDP, "127.0.0.1"), (v6, "[2001:db8::1]")):
            response = stack.error_response(request, error, flow)
            self.assertEqual(response.headers.get("Warning"), f'380 {agent} "SIPS Not Allowed"')

    def test_unanswerable_junk_dropped_and_counted(self) -> None:
        stack, _ = make_stack()
        outputs = stack.receive(b"\x00\x01garbage", UDP, 0.0)
        self.assertEqual(outputs, [Dropped(UDP, "unparseable", None)])

    def test_malformed_answered_and_counted(self) -> None:
        stack, _ = make_stack()
        outputs = stack.receive(options(cseq="1 INVITE"), UDP, 0.0)
        self.assertEqual([type(o) for o in outputs], [Transmit, Dropped])

    def test_sip_error_from_tu_becomes_response_with_warning(self) -> None:
        stack, user = make_stack()
        user.answer = SipError(403, "Forbidden", warning=(380, "SIPS Not Allowed"))
        [(_, response)] = sent(stack.receive(options(), UDP, 0.0))
        assert isinstance(response, Response)
        self.assertEqual((response.status, response.reason), (403, "Forbidden"))
        [warning] = response.warnings
        self.assertEqual(
            (warning.code, warning.agent, warning.text), (380, "127.0.0.1", "SIPS Not Allowed")
        )

    def test_stray_response_dropped(self) -> None:
        stack, _ = make_stack()
        request = parse_message(options())
        assert isinstance(request, Request)
        data = response_to(request, 200).serialize()
        self.assertEqual(stack.receive(data, UDP, 0.0), [Dropped(UDP, "stray-response", None)])


class ClientSideTests(SynchronousTestCase):
    def test_request_retransmitted_then_times_out(self) -> None:
        stack, user = make_stack()
        request = parse_message(
            options(via=f"SIP/2.0/UDP 127.0.0.1:5060;branch={stack.new_branch()}")
        )
        assert isinstance(request, Request)
        destination = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5060))
        _, outputs = stack.send_request(request, destination, 0.0)
        self.assertEqual([o.flow for o in outputs if isinstance(o, Transmit)], [destination])
        retransmits = 0
        while (deadline := stack.next_deadline()) is not None:
            retransmits += len([o for o in stack.advance(deadline) if isinstance(o, Transmit)])
        self.assertEqual(user.failures, ["timeout"])
        self.assertGreater(retransmits, 5)  # Timer E on UDP: 0.5, 1, 2, 4, 4, ...
        self.assertEqual(len(stack.transactions), 0)

    def test_response_delivered_to_tu(self) -> None:
        stack, user = make_stack()
        request = parse_message(
            options(via=f"SIP/2.0/UDP 127.0.0.1:5060;branch={stack.new_branch()}")
        )
        assert isinstance(request, Request)
        destination = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5060))
        stack.send_request(request, destination, 0.0)
        stack.receive(response_to(request, 200).serialize(), destination, 0.1)
        self.assertEqual([r.status for r in user.responses], [200])

    def test_branches_are_unique_and_rfc3261(self) -> None:
        stack, _ = make_stack()
        branches = {stack.new_branch() for _ in range(1000)}
        self.assertEqual(len(branches), 1000)
        self.assertTrue(all(b.startswith("z9hG4bK") for b in branches))


class ArrivalFlowTests(SynchronousTestCase):
    """§18.2.2: an answer goes back where its request arrived, whatever the Via says."""

    def test_stream_request_with_a_udp_via_answered_on_the_connection(self) -> None:
        stack, _ = make_stack()
        [(flow, response)] = sent(stack.receive(options(), TCP, 0.0, context="tcp"))
        self.assertEqual((flow.transport, flow.connection_id), ("TCP", 7))
        assert isinstance(response, Response)
        self.assertEqual(response.status, 200)

    def test_same_request_in_another_context_is_a_request_of_its_own(self) -> None:
        """Over UDP first, then the same bytes over TCP: the TCP one is answered on TCP."""
        stack, user = make_stack()
        [(first, _)] = sent(stack.receive(options(), UDP, 0.0, context="udp"))
        self.assertEqual(first.transport, "UDP")
        [(second, _)] = sent(stack.receive(options(), TCP, 0.1, context="tcp"))
        self.assertEqual((second.transport, second.connection_id), ("TCP", 7))
        self.assertEqual([context for *_, context in user.requests], ["udp", "tcp"])

    def test_retransmission_on_a_new_connection_is_answered_there(self) -> None:
        stack, user = make_stack()
        user.answer = None  # the TU answers later
        stack.receive(options(), TCP, 0.0, context="tcp")
        other = Flow("TCP", TCP.local, ("127.0.0.2", 40002), connection_id=8)
        self.assertEqual(sent(stack.receive(options(), other, 0.1, context="tcp")), [])
        [(_, transaction, _, _)] = user.requests
        assert transaction is not None
        [(flow, _)] = sent(stack.respond(transaction, response_to(transaction.request, 200), 0.2))
        self.assertEqual(flow.connection_id, 8)

    def test_default_port_is_the_arrival_transports(self) -> None:
        """A Via naming TLS without a port, over UDP: the answer goes to 5060, not 5061."""
        stack, _ = make_stack()
        data = options(via="SIP/2.0/TLS 127.0.0.2;branch=z9hG4bK-tls")
        [(flow, _)] = sent(stack.receive(data, UDP, 0.0))
        self.assertEqual(flow.remote, ("127.0.0.2", 5060))

    def test_requests_sharing_a_branch_by_mistake_are_two_transactions(self) -> None:
        """RFC 4475 reuses z9hG4bKkdjuw: other Call-ID or Request-URI, another request."""
        stack, user = make_stack()
        stack.receive(options(), UDP, 0.0)
        stack.receive(options().replace(b"c1@127.0.0.2", b"c2@127.0.0.2"), UDP, 0.1)
        other_uri = options().replace(b"OPTIONS sip:127.0.0.1 ", b"OPTIONS sip:h.test ")
        stack.receive(other_uri, UDP, 0.2)
        self.assertEqual(len(user.requests), 3)


class MalformedAnswerTests(SynchronousTestCase):
    """Behaviour.md §8: a malformed request that can be answered gets 400 naming the problem."""

    def answer(self, data: bytes, flow: Flow = UDP) -> tuple[Flow, bytes]:
        stack, user = make_stack()
        outputs = stack.receive(data, flow, 0.0)
        self.assertEqual(user.requests, [])
        [transmit] = [o for o in outputs if isinstance(o, Transmit)]
        self.assertIn(Dropped(flow, "malformed", None), outputs)
        return transmit.flow, transmit.data

    def test_broken_top_via_answered_to_the_source(self) -> None:
        flow, data = self.answer(options(via="SIP/2.0/UDP 192.0.2.15;;,;,,"))
        self.assertEqual(flow, UDP)
        self.assertTrue(data.startswith(b"SIP/2.0 400 Malformed Via header parameter\r\n"))
        self.assertIn(b"\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n", data)

    def test_malformed_to_copied_as_received(self) -> None:
        bad = options().replace(b"To: <sip:127.0.0.1>", b'To: "Bob <sip:127.0.0.1>')
        flow, data = self.answer(bad, TCP)
        self.assertEqual(flow.connection_id, 7)
        self.assertTrue(data.startswith(b"SIP/2.0 400 Unterminated quoted string in To header"))
        self.assertIn(b'\r\nTo: "Bob <sip:127.0.0.1>\r\n', data)

    def test_max_forwards_out_of_range_and_request_line_spacing(self) -> None:
        for bad, reason in (
            (options().replace(b"Max-Forwards: 70", b"Max-Forwards: 300"), b"Max-Forwards"),
            (options().replace(b"OPTIONS sip:", b"OPTIONS  sip:"), b"request line"),
            (options().replace(b"sip:127.0.0.1 SIP", b"<sip:127.0.0.1> SIP"), b"Request-URI"),
        ):
            _, data = self.answer(bad)
            self.assertTrue(data.startswith(b"SIP/2.0 400 "), data)
            self.assertIn(reason, data.partition(b"\r\n")[0])

    def test_unsupported_scheme_in_a_header_is_400_not_416(self) -> None:
        """416 is for the Request-URI (§21.4.14); an http: From is a malformed request."""
        data = options().replace(b"From: <sip:a@lab.test>", b"From: <http://www.example.com>")

        class FromChecker(RecordingUser):
            def screen(self, request: Request, flow: Flow, context: object) -> str | None:
                return None if request.from_.uri.host else "no-host"

        user = FromChecker()
        stack = SipStack(user)
        user.stack = stack
        [transmit] = [o for o in stack.receive(data, UDP, 0.0) if isinstance(o, Transmit)]
        self.assertTrue(transmit.data.startswith(b"SIP/2.0 400 Unsupported URI scheme 'http'"))


class AddressCheckTests(SynchronousTestCase):
    """Every address is read before the TU sees a message (fuzzing found half-made calls)."""

    def test_bad_to_uri_answered_400_before_the_tu(self) -> None:
        stack, user = make_stack()
        data = options().replace(b"To: <sip:127.0.0.1>", b"To: <sackip:127.0.0.1>")
        outputs = stack.receive(data, UDP, 0.0)
        self.assertEqual(user.requests, [])
        [transmit] = [o for o in outputs if isinstance(o, Transmit)]
        self.assertTrue(transmit.data.startswith(b"SIP/2.0 400 Unsupported URI scheme 'sackip'"))
        self.assertEqual(len(stack.transactions), 0)

    def test_bad_contact_of_an_ack_never_answered(self) -> None:
        stack, user = make_stack()
        ack = (
            options()
            .replace(b"OPTIONS", b"ACK")
            .replace(b"Content-Length", b"Contact: <sip:a@[1::2::3]>\r\nContent-Length")
        )
        self.assertEqual(stack.receive(ack, UDP, 0.0), [Dropped(UDP, "malformed", None)])
        self.assertEqual(user.requests, [])

    def test_unknown_request_uri_scheme_is_416(self) -> None:
        stack, _ = make_stack()
        data = options().replace(b"OPTIONS sip:127.0.0.1 ", b"OPTIONS soap.beep://127.0.0.1 ")
        [transmit] = [o for o in stack.receive(data, UDP, 0.0) if isinstance(o, Transmit)]
        self.assertTrue(transmit.data.startswith(b"SIP/2.0 416 Unsupported URI Scheme\r\n"))

    def test_2xx_with_an_unreadable_contact_is_dropped_as_lost(self) -> None:
        """The INVITE's transaction goes on (its timers end it), the TU never sees the 2xx."""
        stack, user = make_stack()
        request = parse_message(options().replace(b"OPTIONS", b"INVITE"))
        assert isinstance(request, Request)
        request.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={stack.new_branch()}")
        transaction, _ = stack.send_request(request, UDP, 0.0)
        answer = response_to(request, 200, to_tag="t")
        answer.headers.add("Contact", "<sip:b@2001:db8::1:5060>")
        self.assertEqual(
            stack.receive(answer.serialize(), UDP, 0.1),
            [Dropped(UDP, "malformed-response", None)],
        )
        self.assertEqual(user.responses, [])
        self.assertIn(transaction, list(stack.transactions))
