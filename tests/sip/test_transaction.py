"""Tests for sbc.sip.transaction: the four RFC 3261 §17 machines (+ RFC 6026).

Time is virtual: every call takes ``now`` as a float. Each scenario ends by
checking that the layer's table is empty and no deadline is left.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import SbcError
from sbc.sip.message import Request, Response, parse_message, response_to
from sbc.sip.timers import Timer, TimerSettings
from sbc.sip.transaction import (
    MAGIC_COOKIE,
    STATE_TIMERS,
    TABLES,
    Action,
    ClientTransaction,
    DeliverRequest,
    DeliverResponse,
    DuplicateTransactionError,
    Event,
    IllegalTransitionError,
    Machine,
    Output,
    Send,
    ServerTransaction,
    StrayResponse,
    Terminated,
    Transaction,
    TransactionKey,
    TransactionLayer,
    TransactionState,
    TransactionTimeout,
    TransportError,
    build_ack,
    build_cancel,
    transition,
)

S = TransactionState


# ---------------------------------------------------------------------------
# Message builders (parsed from bytes, as the transport would hand them over)
# ---------------------------------------------------------------------------


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK776asdhds",
    via_host: str = "pc33.atlanta.example.com",
    via_port: int | None = 5060,
    transport: str = "UDP",
    uri: str = "sip:bob@biloxi.example.com",
    call_id: str = "a84b4c76e66710@pc33.atlanta.example.com",
    from_tag: str = "1928301774",
    to_tag: str | None = None,
    cseq: int = 314159,
    cseq_method: str | None = None,
    routes: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Request:
    """A request as parsed from the wire."""
    port = "" if via_port is None else f":{via_port}"
    branch_param = "" if branch is None else f";branch={branch}"
    to = "<sip:bob@biloxi.example.com>" + ("" if to_tag is None else f";tag={to_tag}")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host}{port}{branch_param}",
        "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKlower",
        "Max-Forwards: 70",
        *(f"Route: {r}" for r in routes),
        f"To: Bob {to}",
        f"From: Alice <sip:alice@atlanta.example.com>;tag={from_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@pc33.atlanta.example.com>",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def reply(req: Request, status: int, to_tag: str = "a6c85cf") -> Response:
    """A response to *req* as parsed from the wire."""
    msg = parse_message(response_to(req, status, to_tag=to_tag).serialize())
    assert isinstance(msg, Response)
    return msg


def answer(req: Request, status: int, to_tag: str = "a6c85cf") -> Response:
    """A response the TU builds for *req*."""
    return response_to(req, status, to_tag=to_tag)


def kinds(outputs: list[Output]) -> list[str]:
    """A compact picture of outputs: 'Send INVITE', 'Send 100 again', ..."""
    out = []
    for o in outputs:
        if isinstance(o, Send):
            m = o.message
            what = m.method if isinstance(m, Request) else str(m.status)
            out.append(f"Send {what}" + (" again" if o.retransmission else ""))
        elif isinstance(o, DeliverRequest):
            out.append(f"DeliverRequest {o.request.method}")
        elif isinstance(o, DeliverResponse):
            out.append(f"DeliverResponse {o.response.status}")
        elif isinstance(o, TransactionTimeout):
            out.append(f"Timeout {o.timer.value}")
        else:
            out.append(type(o).__name__)
    return out


class LayerTestCase(SynchronousTestCase):
    settings = TimerSettings()

    def setUp(self) -> None:
        self.layer = TransactionLayer(self.settings)

    def assertEmpty(self, layer: TransactionLayer | None = None) -> None:
        layer = layer or self.layer
        self.assertEqual(len(layer), 0)
        self.assertEqual(list(layer), [])
        self.assertIsNone(layer.next_deadline())

    def run_until_empty(self, limit: float = 1000.0) -> list[tuple[float, list[str]]]:
        """Advance to each deadline in turn; return (time, outputs) per step."""
        steps = []
        while (at := self.layer.next_deadline()) is not None:
            self.assertLessEqual(at, limit)
            steps.append((at, kinds(self.layer.advance(at))))
        return steps

    def client(
        self, req: Request, reliable: bool = False, now: float = 0.0, peer: Any = None
    ) -> tuple[ClientTransaction, list[Output]]:
        return self.layer.client_request(req, reliable, now, peer)

    def server(
        self, req: Request, reliable: bool = False, now: float = 0.0
    ) -> tuple[ServerTransaction, list[Output]]:
        outputs = self.layer.receive_request(req, reliable, now)
        first = outputs[0]
        assert isinstance(first, DeliverRequest) and first.transaction is not None
        return first.transaction, outputs


# ---------------------------------------------------------------------------
# Timer settings
# ---------------------------------------------------------------------------


class TimerSettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        s = TimerSettings()
        self.assertEqual((s.t1, s.t2, s.t4, s.timer_d), (0.5, 4.0, 5.0, 32.0))

    def test_unreliable_durations(self) -> None:
        s = TimerSettings()
        expected = {
            Timer.A: 0.5,
            Timer.B: 32.0,
            Timer.D: 32.0,
            Timer.E: 0.5,
            Timer.F: 32.0,
            Timer.G: 0.5,
            Timer.H: 32.0,
            Timer.I: 5.0,
            Timer.J: 32.0,
            Timer.K: 5.0,
            Timer.L: 32.0,
            Timer.M: 32.0,
        }
        self.assertEqual({t: s.initial(t, reliable=False) for t in Timer}, expected)

    def test_reliable_durations(self) -> None:
        s = TimerSettings()
        for t in (Timer.D, Timer.I, Timer.J, Timer.K):
            self.assertEqual(s.initial(t, reliable=True), 0.0, t)
        for t in (Timer.B, Timer.F, Timer.H, Timer.L, Timer.M):
            self.assertEqual(s.initial(t, reliable=True), 32.0, t)

    def test_derived_from_t1_t4(self) -> None:
        s = TimerSettings(t1=0.1, t2=1.0, t4=2.0)
        self.assertEqual(s.initial(Timer.B, False), 6.4)
        self.assertEqual(s.initial(Timer.J, False), 6.4)
        self.assertEqual(s.initial(Timer.K, False), 2.0)
        self.assertEqual(s.initial(Timer.I, False), 2.0)
        self.assertEqual(s.initial(Timer.D, False), 32.0)

    def test_doubling(self) -> None:
        s = TimerSettings()
        self.assertEqual(s.doubled(Timer.A, 4.0), 8.0)  # A is not capped
        self.assertEqual(s.doubled(Timer.E, 1.0), 2.0)
        self.assertEqual(s.doubled(Timer.E, 4.0), 4.0)  # capped at T2
        self.assertEqual(s.doubled(Timer.G, 2.0), 4.0)
        self.assertEqual(s.doubled(Timer.G, 4.0), 4.0)

    def test_validation(self) -> None:
        self.assertRaises(ValueError, TimerSettings, t1=0)
        self.assertRaises(ValueError, TimerSettings, t4=-1)
        self.assertRaises(ValueError, TimerSettings, t1=5.0, t2=4.0)

    def test_frozen(self) -> None:
        s = TimerSettings()
        with self.assertRaises(AttributeError):
            s.t1 = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------
# The tables, row by row
# ---------------------------------------------------------------------------

# How a row's actions show up in the outputs.
_ACTION_OUTPUT = {
    Action.SEND_REQUEST: Send,
    Action.SEND_ACK: Send,
    Action.SEND_RESPONSE: Send,
    Action.RESEND_RESPONSE: Send,
    Action.SEND_100: Send,
    Action.REQUEST_TO_TU: DeliverRequest,
    Action.ACK_TO_TU: DeliverRequest,
    Action.RESPONSE_TO_TU: DeliverResponse,
    Action.TIMEOUT_TO_TU: TransactionTimeout,
    Action.ERROR_TO_TU: TransportError,
}


class TableTests(LayerTestCase):
    """Every row of every table, driven through the public API on UDP."""

    def reach(self, machine: Machine, state: TransactionState) -> Transaction:
        """A fresh transaction of *machine* in *state* (unreliable transport)."""
        self.layer = TransactionLayer()
        layer = self.layer
        if machine.is_client:
            method = "INVITE" if machine is Machine.INVITE_CLIENT else "OPTIONS"
            req = request(method)
            ctx, _ = layer.client_request(req, False, 0.0)
            path = {
                S.CALLING: [],
                S.TRYING: [],
                S.PROCEEDING: [180],
                S.COMPLETED: [486] if method == "INVITE" else [200],
                S.ACCEPTED: [200],
            }[state]
            for status in path:
                layer.receive_response(reply(req, status), 0.1)
            txn: Transaction = ctx
        else:
            method = "INVITE" if machine is Machine.INVITE_SERVER else "OPTIONS"
            req = request(method)
            stx, _ = self.server(req)
            path = {
                S.PROCEEDING: [180] if method == "INVITE" else [100],
                S.TRYING: [],
                S.COMPLETED: [486],
                S.CONFIRMED: [486],
                S.ACCEPTED: [200],
            }[state]
            for status in path:
                layer.send_response(stx, answer(req, status), 0.1)
            if state is S.CONFIRMED:
                layer.receive_request(build_ack(req, reply(req, 486)), False, 0.2)
            txn = stx
        self.assertEqual(txn.state, state)
        return txn

    def inject(self, txn: Transaction, event: Event) -> list[Output]:
        layer = self.layer
        req = txn.request
        now = 0.2
        if event in (Event.RESPONSE_1XX, Event.RESPONSE_2XX, Event.RESPONSE_300_699):
            status = {Event.RESPONSE_1XX: 183, Event.RESPONSE_2XX: 200}.get(event, 486)
            return layer.receive_response(reply(req, status), now)
        if event in (Event.TU_1XX, Event.TU_2XX, Event.TU_300_699):
            status = {Event.TU_1XX: 183, Event.TU_2XX: 200}.get(event, 486)
            assert isinstance(txn, ServerTransaction)
            return layer.send_response(txn, answer(req, status), now)
        if event is Event.RETRANSMISSION:
            return layer.receive_request(request(req.method), False, now)
        if event is Event.ACK:
            sent = txn.last_response or reply(req, 100)
            return layer.receive_request(build_ack(req, sent), False, now)
        if event is Event.TRANSPORT_ERROR:
            return layer.transport_error(txn.key, now)
        if event is Event.TU_ABANDON:
            assert isinstance(txn, ClientTransaction)
            return layer.abandon(txn, now)
        timer = Timer[event.name[-1]]
        # run the earlier timers (retransmissions) first, then this one alone
        while (at := layer.next_deadline()) is not None and at < txn.timers[timer]:
            layer.advance(at)
        at = txn.timers[timer]
        self.assertGreater(at, 0.1)  # no zero-length wait on UDP
        return layer.advance(at)

    def check_row(self, machine: Machine, state: TransactionState, event: Event) -> None:
        tr = TABLES[machine][(state, event)]
        txn = self.reach(machine, state)
        outputs = self.inject(txn, event)
        expected: list[type] = []
        for action in tr.actions:
            if action in _ACTION_OUTPUT:
                if action is Action.RESEND_RESPONSE and txn.last_response is None:
                    continue
                expected.append(_ACTION_OUTPUT[action])
        if tr.next_state is S.TERMINATED:
            expected.append(Terminated)
            self.assertEmpty()
        else:
            self.assertIn(txn.key, self.layer)
        where = f"{machine.name} {state.name} x {event.name}"
        self.assertEqual([type(o) for o in outputs], expected, where)
        self.assertEqual(txn.state, tr.next_state, where)
        # only the timers of the new state run
        self.assertLessEqual(set(txn.timers), set(STATE_TIMERS[machine].get(txn.state, ())))

    def test_every_row(self) -> None:
        count = 0
        for machine, table in TABLES.items():
            for state, event in table:
                if state is None:
                    continue
                self.check_row(machine, state, event)
                count += 1
        self.assertEqual(count, sum(len(t) - 1 for t in TABLES.values()))

    def test_creation_rows(self) -> None:
        req = request("INVITE")
        _, out = self.layer.client_request(req, False, 0.0)
        self.assertEqual(kinds(out), ["Send INVITE"])
        req = request("OPTIONS", branch="z9hG4bKopt")
        _, out = self.layer.client_request(req, False, 0.0)
        self.assertEqual(kinds(out), ["Send OPTIONS"])
        _, out = self.server(request("INVITE", branch="z9hG4bKsrv"))
        self.assertEqual(kinds(out), ["DeliverRequest INVITE", "Send 100"])
        _, out = self.server(request("OPTIONS", branch="z9hG4bKsrv"))
        self.assertEqual(kinds(out), ["DeliverRequest OPTIONS"])
        self.assertEqual(len(self.layer), 4)

    def test_one_creation_row_per_machine(self) -> None:
        for machine, table in TABLES.items():
            creations = [event for state, event in table if state is None]
            self.assertEqual(len(creations), 1, machine)

    def test_missing_row_raises(self) -> None:
        e = self.assertRaises(
            IllegalTransitionError,
            transition,
            Machine.INVITE_SERVER,
            S.COMPLETED,
            Event.TU_2XX,
        )
        self.assertEqual(
            (e.machine, e.state, e.event), (Machine.INVITE_SERVER, S.COMPLETED, Event.TU_2XX)
        )
        self.assertIsInstance(e, SbcError)
        self.assertRaises(
            IllegalTransitionError, transition, Machine.INVITE_CLIENT, S.PROCEEDING, Event.TIMER_A
        )
        self.assertRaises(
            IllegalTransitionError, transition, Machine.NON_INVITE_CLIENT, None, Event.REQUEST
        )

    def test_timer_rows_match_state_timers(self) -> None:
        # a timer that may run in a state has a row for when it fires there
        for machine, states in STATE_TIMERS.items():
            for state, timers in states.items():
                for timer in timers:
                    transition(machine, state, Event["TIMER_" + timer.value])


# ---------------------------------------------------------------------------
# INVITE client transaction (Figure 5, RFC 6026)
# ---------------------------------------------------------------------------


class InviteClientTests(LayerTestCase):
    def test_timer_a_schedule_and_timer_b_on_udp(self) -> None:
        req = request()
        txn, out = self.client(req, peer=("192.0.2.10", 5060))
        self.assertEqual(kinds(out), ["Send INVITE"])
        send = out[0]
        assert isinstance(send, Send)
        self.assertIs(send.message, req)
        self.assertEqual(send.peer, ("192.0.2.10", 5060))
        self.assertEqual(send.key, txn.key)
        self.assertEqual(txn.state, S.CALLING)
        self.assertEqual(txn.timers, {Timer.A: 0.5, Timer.B: 32.0})
        steps = self.run_until_empty()
        # retransmissions at intervals 0.5, 1, 2, 4, 8, 16 (A doubles, uncapped)
        self.assertEqual(
            steps,
            [
                (0.5, ["Send INVITE again"]),
                (1.5, ["Send INVITE again"]),
                (3.5, ["Send INVITE again"]),
                (7.5, ["Send INVITE again"]),
                (15.5, ["Send INVITE again"]),
                (31.5, ["Send INVITE again"]),
                (32.0, ["Timeout B", "Terminated"]),
            ],
        )
        self.assertEqual(txn.state, S.TERMINATED)
        self.assertEmpty()

    def test_abandon_after_cancel(self) -> None:
        """§9.1: the TU destroys an INVITE that got no final response; later ones are strays."""
        req = request()
        txn, _ = self.client(req)
        self.layer.receive_response(reply(req, 180), 0.1)
        self.assertEqual(txn.state, S.PROCEEDING)
        self.assertEqual(kinds(self.layer.abandon(txn, 40.0)), ["Terminated"])
        self.assertEmpty()
        late = reply(req, 487)
        self.assertEqual(self.layer.receive_response(late, 41.0), [StrayResponse(late)])
        self.assertEqual(self.layer.abandon(txn, 42.0), [])  # once is enough

    def test_abandon_leaves_finished_and_non_invite_transactions_alone(self) -> None:
        req = request()
        txn, _ = self.client(req)
        self.layer.receive_response(reply(req, 486), 0.1)
        self.assertEqual(txn.state, S.COMPLETED)
        self.assertEqual(self.layer.abandon(txn, 0.2), [])
        self.assertEqual(txn.state, S.COMPLETED)
        options, _ = self.client(request("OPTIONS", branch="z9hG4bKopt"))
        self.assertEqual(self.layer.abandon(options, 0.2), [])
        self.assertEqual(options.state, S.TRYING)
        self.run_until_empty()
        self.assertEmpty()

    def test_no_retransmission_on_tcp(self) -> None:
        txn, out = self.client(request(transport="TCP"), reliable=True)
        self.assertEqual(kinds(out), ["Send INVITE"])
        self.assertEqual(txn.timers, {Timer.B: 32.0})
        self.assertEqual(self.run_until_empty(), [(32.0, ["Timeout B", "Terminated"])])
        self.assertEmpty()

    def test_timer_b_follows_t1(self) -> None:
        layer = TransactionLayer(TimerSettings(t1=0.25))
        layer.client_request(request(), True, 10.0)
        self.assertEqual(layer.next_deadline(), 10.0 + 16.0)
        out = layer.advance(26.0)
        self.assertEqual(kinds(out), ["Timeout B", "Terminated"])
        self.assertEmpty(layer)

    def test_advance_before_deadline_does_nothing(self) -> None:
        txn, _ = self.client(request())
        self.assertEqual(self.layer.advance(0.49), [])
        self.assertEqual(txn.state, S.CALLING)
        self.assertEqual(kinds(self.layer.advance(0.5)), ["Send INVITE again"])
        self.layer.receive_response(reply(txn.request, 603), 0.6)
        self.run_until_empty()
        self.assertEmpty()

    def test_provisional_stops_retransmissions(self) -> None:
        req = request()
        txn, _ = self.client(req)
        self.layer.advance(0.5)
        out = self.layer.receive_response(reply(req, 100), 0.7)
        self.assertEqual(kinds(out), ["DeliverResponse 100"])
        self.assertEqual(txn.state, S.PROCEEDING)
        self.assertEqual(txn.timers, {})  # neither A nor B runs in Proceeding
        self.assertIsNone(self.layer.next_deadline())
        out = self.layer.receive_response(reply(req, 180), 2.0)
        self.assertEqual(kinds(out), ["DeliverResponse 180"])
        out = self.layer.receive_response(reply(req, 486), 5.0)
        self.assertEqual(kinds(out), ["Send ACK", "DeliverResponse 486"])
        self.assertEqual(self.run_until_empty(), [(37.0, ["Terminated"])])
        self.assertEmpty()

    def test_non_2xx_ack_and_timer_d_on_udp(self) -> None:
        req = request(routes=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"))
        txn, _ = self.client(req, peer="peer")
        resp = reply(req, 486, to_tag="8321234356")
        out = self.layer.receive_response(resp, 1.0)
        self.assertEqual(kinds(out), ["Send ACK", "DeliverResponse 486"])
        send, deliver = out
        assert isinstance(send, Send) and isinstance(deliver, DeliverResponse)
        self.assertIs(deliver.response, resp)
        self.assertIs(deliver.transaction, txn)
        self.assertEqual(send.peer, "peer")
        ack = send.message
        assert isinstance(ack, Request)
        self.assertIs(txn.ack, ack)
        # §17.1.1.3
        self.assertEqual(ack.method, "ACK")
        self.assertEqual(ack.uri_text, req.uri_text)
        self.assertEqual(ack.call_id, req.call_id)
        self.assertEqual(ack.headers.get("From"), req.headers.get("From"))
        self.assertEqual(ack.to.tag, "8321234356")
        self.assertEqual(ack.headers.get("To"), resp.headers.get("To"))
        self.assertEqual((ack.cseq.seq, ack.cseq.method), (314159, "ACK"))
        self.assertEqual(ack.vias, [req.top_via])
        self.assertEqual(ack.top_via.branch, req.top_via.branch)
        self.assertEqual(ack.headers.get_all("Route"), req.headers.get_all("Route"))
        self.assertEqual(ack.max_forwards, 70)
        self.assertEqual(ack.body, b"")
        parsed = parse_message(ack.serialize())
        assert isinstance(parsed, Request)
        self.assertEqual(parsed.cseq.method, "ACK")

        self.assertEqual(txn.state, S.COMPLETED)
        self.assertEqual(txn.timers, {Timer.D: 33.0})
        # a retransmitted final response: the same ACK again, nothing to the TU
        out = self.layer.receive_response(reply(req, 486, to_tag="8321234356"), 2.0)
        self.assertEqual(kinds(out), ["Send ACK again"])
        assert isinstance(out[0], Send)
        self.assertIs(out[0].message, ack)
        self.assertEqual(self.layer.receive_response(reply(req, 180), 3.0), [])
        self.assertEqual(self.run_until_empty(), [(33.0, ["Terminated"])])
        self.assertEmpty()

    def test_timer_d_zero_on_tcp(self) -> None:
        req = request(transport="TCP")
        txn, _ = self.client(req, reliable=True)
        out = self.layer.receive_response(reply(req, 404), 1.0)
        self.assertEqual(kinds(out), ["Send ACK", "DeliverResponse 404", "Terminated"])
        self.assertEqual(txn.state, S.TERMINATED)
        self.assertEmpty()
        # a late retransmission matches nothing any more
        self.assertEqual(
            kinds(self.layer.receive_response(reply(req, 404), 1.1)), ["StrayResponse"]
        )

    def test_2xx_accepted_and_timer_m(self) -> None:
        req = request()
        txn, _ = self.client(req)
        self.layer.receive_response(reply(req, 180), 0.2)
        ok = reply(req, 200)
        out = self.layer.receive_response(ok, 1.0)
        self.assertEqual(kinds(out), ["DeliverResponse 200"])  # no ACK: the TU sends it
        self.assertEqual(txn.state, S.ACCEPTED)
        self.assertEqual(txn.timers, {Timer.M: 33.0})
        self.assertIsNone(txn.ack)
        # 2xx retransmissions (and other forks' 2xx) go to the TU
        self.assertEqual(
            kinds(self.layer.receive_response(reply(req, 200), 1.5)), ["DeliverResponse 200"]
        )
        other = reply(req, 200, to_tag="fork2")
        self.assertEqual(kinds(self.layer.receive_response(other, 2.0)), ["DeliverResponse 200"])
        self.assertEqual(self.layer.receive_response(reply(req, 183), 2.5), [])
        self.assertEqual(self.layer.receive_response(reply(req, 500), 2.6), [])
        self.assertEqual(self.run_until_empty(), [(33.0, ["Terminated"])])
        self.assertEmpty()

    def test_2xx_in_calling_on_tcp_keeps_timer_m(self) -> None:
        req = request(transport="TCP")
        txn, _ = self.client(req, reliable=True)
        self.layer.receive_response(reply(req, 200), 0.3)
        self.assertEqual(txn.state, S.ACCEPTED)
        self.assertEqual(txn.timers, {Timer.M: 32.3})  # M is 64*T1 on any transport
        self.assertEqual(self.run_until_empty(), [(32.3, ["Terminated"])])
        self.assertEmpty()

    def test_transport_error_in_calling(self) -> None:
        txn, _ = self.client(request())
        out = self.layer.transport_error(txn.key, 0.1)
        self.assertEqual(kinds(out), ["TransportError", "Terminated"])
        assert isinstance(out[0], TransportError)
        self.assertIs(out[0].transaction, txn)
        self.assertEmpty()
        # reported again once the transaction is gone: ignored
        self.assertEqual(self.layer.transport_error(txn.key, 0.2), [])

    def test_transport_error_in_completed(self) -> None:
        req = request()
        txn, _ = self.client(req)
        self.layer.receive_response(reply(req, 486), 1.0)
        out = self.layer.transport_error(txn.key, 1.1)
        self.assertEqual(kinds(out), ["TransportError", "Terminated"])
        self.assertEmpty()

    def test_late_transport_error_in_proceeding_is_ignored(self) -> None:
        req = request()
        txn, _ = self.client(req)
        self.layer.receive_response(reply(req, 100), 0.1)
        self.assertEqual(self.layer.transport_error(txn.key, 0.2), [])
        self.assertEqual(txn.state, S.PROCEEDING)
        self.layer.receive_response(reply(req, 200), 1.0)
        self.run_until_empty()
        self.assertEmpty()

    def test_late_advance_fires_everything_due(self) -> None:
        self.client(request())
        out = self.layer.advance(100.0)
        self.assertEqual(kinds(out), ["Send INVITE again", "Timeout B", "Terminated"])
        self.assertEmpty()


# ---------------------------------------------------------------------------
# Non-INVITE client transaction (Figure 6)
# ---------------------------------------------------------------------------


class NonInviteClientTests(LayerTestCase):
    def test_timer_e_schedule_capped_at_t2_and_timer_f(self) -> None:
        txn, out = self.client(request("OPTIONS"))
        self.assertEqual(kinds(out), ["Send OPTIONS"])
        self.assertEqual(txn.machine, Machine.NON_INVITE_CLIENT)
        self.assertEqual(txn.state, S.TRYING)
        steps = self.run_until_empty()
        times = [at for at, _ in steps]
        # intervals 0.5, 1, 2, 4 (T2), 4, 4, ...
        self.assertEqual(times, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0])
        for _, what in steps[:-1]:
            self.assertEqual(what, ["Send OPTIONS again"])
        self.assertEqual(steps[-1][1], ["Timeout F", "Terminated"])
        self.assertEmpty()

    def test_timer_e_at_t2_in_proceeding(self) -> None:
        req = request("REGISTER")
        txn, _ = self.client(req)
        self.assertEqual(kinds(self.layer.advance(0.5)), ["Send REGISTER again"])
        out = self.layer.receive_response(reply(req, 100), 0.7)
        self.assertEqual(kinds(out), ["DeliverResponse 100"])
        self.assertEqual(txn.state, S.PROCEEDING)
        # E keeps its deadline (1.5), then runs every T2; F still ends it at 32
        self.assertEqual(txn.timers, {Timer.E: 1.5, Timer.F: 32.0})
        steps = self.run_until_empty()
        self.assertEqual(
            [at for at, _ in steps],
            [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5, 32.0],
        )
        self.assertEqual(steps[0][1], ["Send REGISTER again"])
        self.assertEqual(steps[-1][1], ["Timeout F", "Terminated"])
        self.assertEmpty()

    def test_small_t2_in_trying(self) -> None:
        layer = TransactionLayer(TimerSettings(t1=0.5, t2=1.0))
        layer.client_request(request("OPTIONS"), False, 0.0)
        times = []
        while (at := layer.next_deadline()) is not None and at < 6:
            layer.advance(at)
            times.append(at)
        self.assertEqual(times, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
        layer.advance(32.0)
        self.assertEmpty(layer)

    def test_timeout_wins_over_retransmission_at_the_same_instant(self) -> None:
        # t1=1, t2=16.5: E fires at 1, 3, 7, 15, 31, 47.5, 64 = 64*T1 = F
        layer = TransactionLayer(TimerSettings(t1=1.0, t2=16.5))
        layer.client_request(request("OPTIONS"), False, 0.0)
        for at in (1.0, 3.0, 7.0, 15.0, 31.0, 47.5):
            self.assertEqual(layer.next_deadline(), at)
            self.assertEqual(kinds(layer.advance(at)), ["Send OPTIONS again"])
        self.assertEqual(layer.next_deadline(), 64.0)
        self.assertEqual(kinds(layer.advance(64.0)), ["Timeout F", "Terminated"])
        self.assertEmpty(layer)

    def test_final_then_timer_k_on_udp(self) -> None:
        req = request("BYE", to_tag="314159")
        txn, _ = self.client(req)
        out = self.layer.receive_response(reply(req, 200, to_tag="314159"), 0.2)
        self.assertEqual(kinds(out), ["DeliverResponse 200"])
        self.assertEqual(txn.state, S.COMPLETED)
        self.assertEqual(txn.timers, {Timer.K: 5.2})  # T4; E and F stopped
        self.assertEqual(self.layer.receive_response(reply(req, 200), 1.0), [])
        self.assertEqual(self.run_until_empty(), [(5.2, ["Terminated"])])
        self.assertEmpty()

    def test_final_on_tcp_terminates_at_once(self) -> None:
        req = request("MESSAGE", transport="TCP")
        txn, out = self.client(req, reliable=True)
        self.assertEqual(txn.timers, {Timer.F: 32.0})  # no E on TCP
        out = self.layer.receive_response(reply(req, 404), 0.2)
        self.assertEqual(kinds(out), ["DeliverResponse 404", "Terminated"])
        self.assertEmpty()

    def test_transport_errors(self) -> None:
        req = request("OPTIONS")
        txn, _ = self.client(req)
        out = self.layer.transport_error(txn.key, 0.1)
        self.assertEqual(kinds(out), ["TransportError", "Terminated"])
        self.assertEmpty()
        txn, _ = self.client(req)
        self.layer.receive_response(reply(req, 100), 0.1)
        out = self.layer.transport_error(txn.key, 0.6)
        self.assertEqual(kinds(out), ["TransportError", "Terminated"])
        self.assertEmpty()


# ---------------------------------------------------------------------------
# INVITE server transaction (Figure 7, RFC 6026)
# ---------------------------------------------------------------------------


class InviteServerTests(LayerTestCase):
    def test_100_trying_and_retransmissions(self) -> None:
        req = request(extra=("Timestamp: 54",))
        txn, out = self.server(req)
        self.assertEqual(kinds(out), ["DeliverRequest INVITE", "Send 100"])
        self.assertEqual(txn.machine, Machine.INVITE_SERVER)
        self.assertEqual(txn.state, S.PROCEEDING)
        trying = out[1]
        assert isinstance(trying, Send) and isinstance(trying.message, Response)
        self.assertIsNone(trying.message.to.tag)
        self.assertEqual(trying.message.headers.get("Timestamp"), "54")
        self.assertEqual(txn.timers, {})
        # the INVITE again: the last response again, nothing to the TU
        out = self.layer.receive_request(request(extra=("Timestamp: 54",)), False, 0.3)
        self.assertEqual(kinds(out), ["Send 100 again"])
        assert isinstance(out[0], Send)
        self.assertIs(out[0].message, trying.message)
        ringing = answer(req, 180)
        self.assertEqual(kinds(self.layer.send_response(txn, ringing, 0.4)), ["Send 180"])
        out = self.layer.receive_request(request(), False, 0.5)
        self.assertEqual(kinds(out), ["Send 180 again"])
        assert isinstance(out[0], Send)
        self.assertIs(out[0].message, ringing)
        self.layer.send_response(txn, answer(req, 480), 1.0)
        self.layer.receive_request(build_ack(req, answer(req, 480)), False, 1.1)
        self.run_until_empty()
        self.assertEmpty()

    def test_no_100_when_the_tu_answers_at_once(self) -> None:
        req = request()
        out = self.layer.receive_request(req, False, 0.0, send_trying=False)
        self.assertEqual(kinds(out), ["DeliverRequest INVITE"])
        # a retransmission before any response: nothing to resend
        self.assertEqual(self.layer.receive_request(request(), False, 0.1), [])
        txn = self.layer.find_server(req)
        assert txn is not None
        self.layer.send_response(txn, answer(req, 200), 0.15)
        self.run_until_empty()
        self.assertEmpty()

    def test_non_2xx_timer_g_schedule_and_timer_h_on_udp(self) -> None:
        req = request()
        txn, _ = self.server(req)
        busy = answer(req, 486)
        out = self.layer.send_response(txn, busy, 0.0)
        self.assertEqual(kinds(out), ["Send 486"])
        self.assertEqual(txn.state, S.COMPLETED)
        self.assertEqual(txn.timers, {Timer.G: 0.5, Timer.H: 32.0})
        steps = self.run_until_empty()
        times = [at for at, _ in steps]
        # intervals 0.5, 1, 2, 4 (T2), 4, ... until H at 64*T1
        self.assertEqual(times, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0])
        for _, what in steps[:-1]:
            self.assertEqual(what, ["Send 486 again"])
        self.assertEqual(steps[-1][1], ["Timeout H", "Terminated"])
        self.assertEmpty()

    def test_ack_confirms_and_timer_i_on_udp(self) -> None:
        req = request()
        txn, _ = self.server(req)
        busy = answer(req, 486)
        self.layer.send_response(txn, busy, 0.0)
        self.assertEqual(kinds(self.layer.advance(0.5)), ["Send 486 again"])
        # the INVITE again in Completed: the final response again
        self.assertEqual(
            kinds(self.layer.receive_request(request(), False, 0.6)), ["Send 486 again"]
        )
        ack = build_ack(req, busy)
        self.assertEqual(self.layer.receive_request(ack, False, 0.7), [])  # absorbed
        self.assertEqual(txn.state, S.CONFIRMED)
        self.assertEqual(txn.timers, {Timer.I: 5.7})  # T4; G and H stopped
        self.assertEqual(self.layer.receive_request(build_ack(req, busy), False, 1.0), [])
        self.assertEqual(self.layer.receive_request(request(), False, 1.1), [])
        self.assertEqual(self.run_until_empty(), [(5.7, ["Terminated"])])
        self.assertEmpty()

    def test_tcp_no_timer_g_and_timer_i_zero(self) -> None:
        req = request(transport="TCP")
        txn, _ = self.server(req, reliable=True)
        self.layer.send_response(txn, answer(req, 603), 0.0)
        self.assertEqual(txn.timers, {Timer.H: 32.0})
        out = self.layer.receive_request(build_ack(req, answer(req, 603)), True, 0.1)
        self.assertEqual(kinds(out), ["Terminated"])
        self.assertEmpty()

    def test_tcp_timer_h(self) -> None:
        req = request(transport="TCP")
        txn, _ = self.server(req, reliable=True)
        self.layer.send_response(txn, answer(req, 500), 1.0)
        self.assertEqual(self.run_until_empty(), [(33.0, ["Timeout H", "Terminated"])])
        self.assertEmpty()

    def test_2xx_accepted_and_timer_l(self) -> None:
        req = request()
        txn, _ = self.server(req)
        ok = answer(req, 200)
        self.assertEqual(kinds(self.layer.send_response(txn, ok, 1.0)), ["Send 200"])
        self.assertEqual(txn.state, S.ACCEPTED)
        self.assertEqual(txn.timers, {Timer.L: 33.0})
        # INVITE retransmissions are absorbed; the TU retransmits the 2xx itself
        self.assertEqual(self.layer.receive_request(request(), False, 1.2), [])
        self.assertEqual(kinds(self.layer.send_response(txn, ok, 1.5)), ["Send 200"])
        # an ACK with the INVITE's branch matches and goes to the TU
        ack = build_ack(req, ok)
        out = self.layer.receive_request(ack, False, 1.6)
        self.assertEqual(out, [DeliverRequest(ack, txn)])
        # the usual 2xx ACK has a branch of its own: no transaction, to the TU
        ack2 = request("ACK", branch="z9hG4bKnew", to_tag="a6c85cf")
        self.assertEqual(self.layer.receive_request(ack2, False, 1.7), [DeliverRequest(ack2, None)])
        self.assertEqual(self.run_until_empty(), [(33.0, ["Terminated"])])
        self.assertEmpty()

    def test_transport_errors_keep_absorbing(self) -> None:
        # RFC 6026 Figure 7: Proceeding, Completed and Accepted inform the TU and stay
        req = request()
        txn, _ = self.server(req)
        self.assertEqual(kinds(self.layer.transport_error(txn.key, 0.1)), ["TransportError"])
        self.assertEqual(txn.state, S.PROCEEDING)
        self.layer.send_response(txn, answer(req, 486), 0.2)
        self.assertEqual(kinds(self.layer.transport_error(txn.key, 0.3)), ["TransportError"])
        self.assertEqual(txn.state, S.COMPLETED)
        self.assertEqual(
            kinds(self.layer.receive_request(request(), False, 0.4)), ["Send 486 again"]
        )
        self.layer.receive_request(build_ack(req, answer(req, 486)), False, 0.5)
        self.assertEqual(self.layer.transport_error(txn.key, 0.6), [])
        self.run_until_empty()
        self.assertEmpty()

    def test_second_final_response_raises(self) -> None:
        req = request()
        txn, _ = self.server(req)
        self.layer.send_response(txn, answer(req, 486), 0.0)
        e = self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 200), 0.1
        )
        self.assertEqual((e.state, e.event), (S.COMPLETED, Event.TU_2XX))
        self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 180), 0.1
        )
        self.assertEqual(txn.state, S.COMPLETED)
        self.layer.receive_request(build_ack(req, answer(req, 486)), False, 0.2)
        self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 500), 0.3
        )
        self.run_until_empty()
        self.assertEmpty()

    def test_non_2xx_after_2xx_raises(self) -> None:
        req = request()
        txn, _ = self.server(req)
        self.layer.send_response(txn, answer(req, 200), 0.0)
        self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 487), 0.1
        )
        self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 180), 0.1
        )
        self.run_until_empty()
        self.assertEmpty()

    def test_response_after_termination_raises(self) -> None:
        req = request(transport="TCP")
        txn, _ = self.server(req, reliable=True)
        self.layer.send_response(txn, answer(req, 486), 0.0)
        self.layer.receive_request(build_ack(req, answer(req, 486)), True, 0.1)
        self.assertEmpty()
        e = self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 486), 0.2
        )
        self.assertIs(e.state, S.TERMINATED)


# ---------------------------------------------------------------------------
# Non-INVITE server transaction (Figure 8)
# ---------------------------------------------------------------------------


class NonInviteServerTests(LayerTestCase):
    def test_trying_proceeding_completed_timer_j_on_udp(self) -> None:
        req = request("REGISTER")
        txn, out = self.server(req)
        self.assertEqual(kinds(out), ["DeliverRequest REGISTER"])  # no automatic 100
        self.assertEqual(txn.state, S.TRYING)
        self.assertEqual(self.layer.receive_request(request("REGISTER"), False, 0.1), [])
        self.assertEqual(kinds(self.layer.send_response(txn, answer(req, 100), 0.2)), ["Send 100"])
        self.assertEqual(txn.state, S.PROCEEDING)
        self.assertEqual(
            kinds(self.layer.receive_request(request("REGISTER"), False, 0.3)), ["Send 100 again"]
        )
        self.assertEqual(kinds(self.layer.send_response(txn, answer(req, 200), 1.0)), ["Send 200"])
        self.assertEqual(txn.state, S.COMPLETED)
        self.assertEqual(txn.timers, {Timer.J: 33.0})
        out = self.layer.receive_request(request("REGISTER"), False, 2.0)
        self.assertEqual(kinds(out), ["Send 200 again"])
        # other final responses from the TU are discarded (§17.2.2)
        self.assertEqual(self.layer.send_response(txn, answer(req, 500), 2.5), [])
        self.assertRaises(
            IllegalTransitionError, self.layer.send_response, txn, answer(req, 180), 2.6
        )
        self.assertEqual(self.run_until_empty(), [(33.0, ["Terminated"])])
        self.assertEmpty()
        # after J, the same request is a new transaction
        _, out = self.server(request("REGISTER"), now=40.0)
        self.assertEqual(kinds(out), ["DeliverRequest REGISTER"])

    def test_lingering_transaction_forgets_parsed_header_values(self) -> None:
        """In Completed only retransmissions matter: the typed values are dropped (memory)."""
        req = request("REGISTER")
        via = req.top_via
        txn, _ = self.server(req)
        response = answer(req, 200)
        to = response.to
        self.layer.send_response(txn, response, 1.0)
        self.assertEqual(txn.state, S.COMPLETED)
        self.assertIsNot(req.top_via, via)  # parsed again, equal
        self.assertEqual(req.top_via, via)
        self.assertIsNot(response.to, to)
        self.assertEqual(response.to, to)
        out = self.layer.receive_request(request("REGISTER"), False, 2.0)
        self.assertEqual(kinds(out), ["Send 200 again"])

    def test_final_on_tcp_terminates_at_once(self) -> None:
        req = request("OPTIONS", transport="TCP")
        txn, _ = self.server(req, reliable=True)
        out = self.layer.send_response(txn, answer(req, 200), 0.1)
        self.assertEqual(kinds(out), ["Send 200", "Terminated"])
        self.assertEmpty()

    def test_transport_errors(self) -> None:
        req = request("OPTIONS")
        txn, _ = self.server(req)
        self.layer.send_response(txn, answer(req, 183), 0.1)
        out = self.layer.transport_error(txn.key, 0.2)
        self.assertEqual(kinds(out), ["TransportError", "Terminated"])
        self.assertEmpty()
        txn, _ = self.server(req)
        self.layer.send_response(txn, answer(req, 200), 0.1)
        out = self.layer.transport_error(txn.key, 0.2)
        self.assertEqual(kinds(out), ["TransportError", "Terminated"])
        self.assertEmpty()

    def test_transport_error_before_any_send_raises(self) -> None:
        txn, _ = self.server(request("OPTIONS"))
        self.assertRaises(IllegalTransitionError, self.layer.transport_error, txn.key, 0.1)
        self.layer.send_response(txn, answer(txn.request, 200), 0.2)
        self.run_until_empty()
        self.assertEmpty()


# ---------------------------------------------------------------------------
# Matching (§17.1.3, §17.2.3, §9.2, RFC 2543 fallback)
# ---------------------------------------------------------------------------


class ClientMatchingTests(LayerTestCase):
    def test_branch_and_cseq_method(self) -> None:
        invite = request()
        itx, _ = self.client(invite)
        self.layer.receive_response(reply(invite, 180), 0.1)
        cancel = build_cancel(invite)
        ctx, out = self.client(cancel)
        self.assertEqual(kinds(out), ["Send CANCEL"])
        self.assertEqual(itx.key.branch, ctx.key.branch)
        self.assertNotEqual(itx.key, ctx.key)
        # the 200 to the CANCEL goes to the CANCEL's transaction (same branch)
        out = self.layer.receive_response(reply(cancel, 200), 0.2)
        self.assertEqual(out, [DeliverResponse(out[0].response, ctx)])  # type: ignore[union-attr]
        # the 487 to the INVITE goes to the INVITE's
        out = self.layer.receive_response(reply(invite, 487), 0.3)
        self.assertEqual(kinds(out), ["Send ACK", "DeliverResponse 487"])
        self.assertIs(out[1].transaction, itx)  # type: ignore[union-attr]
        self.assertIs(self.layer.get(itx.key), itx)
        self.run_until_empty()
        self.assertEmpty()

    def test_unknown_branch_is_stray(self) -> None:
        req = request()
        txn, _ = self.client(req)
        other = reply(request(branch="z9hG4bKother"), 200)
        out = self.layer.receive_response(other, 0.1)
        self.assertEqual(out, [StrayResponse(other)])
        self.assertEqual(txn.state, S.CALLING)
        # same branch, other CSeq method: no match either
        bye = reply(request("BYE"), 200)
        self.assertEqual(kinds(self.layer.receive_response(bye, 0.2)), ["StrayResponse"])
        self.layer.transport_error(txn.key, 0.3)
        self.assertEmpty()

    def test_duplicate_and_invalid_requests(self) -> None:
        req = request("OPTIONS")
        self.client(req)
        self.assertRaises(DuplicateTransactionError, self.client, request("OPTIONS"))
        self.assertRaises(ValueError, self.client, request("ACK"))
        self.assertRaises(ValueError, self.client, request("OPTIONS", branch=None))
        self.run_until_empty()
        self.assertEmpty()


class ServerMatchingTests(LayerTestCase):
    def test_branch_sent_by_and_method(self) -> None:
        txn, _ = self.server(request())
        self.assertIs(self.layer.find_server(request()), txn)
        # sent-by compared host case-insensitively
        self.assertIs(self.layer.find_server(request(via_host="PC33.Atlanta.Example.COM")), txn)
        self.assertIsNone(self.layer.find_server(request(via_port=5070)))
        self.assertIsNone(self.layer.find_server(request(via_port=None)))
        self.assertIsNone(self.layer.find_server(request(via_host="pc34.atlanta.example.com")))
        self.assertIsNone(self.layer.find_server(request(branch="z9hG4bK776asdhdX")))
        self.assertIsNone(self.layer.find_server(request("OPTIONS")))
        # a different sent-by with the same branch is a new transaction
        other, _ = self.server(request(via_port=5070))
        self.assertIsNot(other, txn)
        self.assertEqual(len(self.layer), 2)
        for t in (txn, other):
            self.layer.send_response(t, answer(t.request, 200), 1.0)
        self.run_until_empty()
        self.assertEmpty()

    def test_ack_matches_the_invite_transaction(self) -> None:
        req = request()
        txn, _ = self.server(req)
        ack = build_ack(req, answer(req, 486))
        self.assertEqual(ack.method, "ACK")
        self.assertIs(self.layer.find_server(ack), txn)
        # an ACK before any final response is absorbed
        self.assertEqual(self.layer.receive_request(ack, False, 0.1), [])
        self.assertEqual(txn.state, S.PROCEEDING)
        # an ACK with another branch is not the transaction's: to the TU
        stray = request("ACK", branch="z9hG4bKack2", to_tag="x")
        self.assertEqual(
            self.layer.receive_request(stray, False, 0.2), [DeliverRequest(stray, None)]
        )
        self.assertRaises(ValueError, self.layer.server_request, stray, False, 0.2)
        self.layer.send_response(txn, answer(req, 486), 0.3)
        self.layer.receive_request(ack, False, 0.4)
        self.assertEqual(txn.state, S.CONFIRMED)
        self.run_until_empty()
        self.assertEmpty()

    def test_cancel_is_its_own_transaction(self) -> None:
        invite = request()
        itx, _ = self.server(invite)
        cancel = build_cancel(invite)
        self.assertEqual(cancel.method, "CANCEL")
        out = self.layer.receive_request(cancel, False, 0.5)
        self.assertEqual(kinds(out), ["DeliverRequest CANCEL"])
        ctx = out[0].transaction  # type: ignore[union-attr]
        assert isinstance(ctx, ServerTransaction)
        self.assertIsNot(ctx, itx)
        self.assertEqual(ctx.machine, Machine.NON_INVITE_SERVER)
        self.assertIs(self.layer.find_cancelled(cancel), itx)
        self.assertIs(self.layer.find_server(cancel), ctx)
        # the TU: 200 to the CANCEL, 487 to the INVITE
        self.assertEqual(
            kinds(self.layer.send_response(ctx, answer(cancel, 200), 0.6)), ["Send 200"]
        )
        self.assertEqual(
            kinds(self.layer.send_response(itx, answer(invite, 487), 0.6)), ["Send 487"]
        )
        # a CANCEL retransmission gets the 200 again
        self.assertEqual(
            kinds(self.layer.receive_request(build_cancel(invite), False, 0.7)), ["Send 200 again"]
        )
        self.layer.receive_request(build_ack(invite, answer(invite, 487)), False, 0.8)
        self.run_until_empty()
        self.assertEmpty()

    def test_cancel_that_matches_nothing(self) -> None:
        invite = request()
        self.server(invite)
        cancel = request("CANCEL", branch="z9hG4bKunknown")
        self.assertIsNone(self.layer.find_cancelled(cancel))
        other_host = request("CANCEL", via_host="pc34.atlanta.example.com")
        self.assertIsNone(self.layer.find_cancelled(other_host))
        self.layer.advance(100.0)
        txn = self.layer.find_server(invite)
        assert txn is not None
        self.layer.send_response(txn, answer(invite, 200), 100.0)
        self.run_until_empty()
        self.assertEmpty()

    def test_duplicate_server_request(self) -> None:
        req = request("OPTIONS")
        self.layer.server_request(req, False, 0.0)
        self.assertRaises(
            DuplicateTransactionError, self.layer.server_request, request("OPTIONS"), False, 0.1
        )
        legacy = request("OPTIONS", branch=None)
        self.layer.server_request(legacy, False, 0.0)
        self.assertRaises(DuplicateTransactionError, self.layer.server_request, legacy, False, 0.1)
        for txn in list(self.layer):
            assert isinstance(txn, ServerTransaction)
            self.layer.send_response(txn, answer(txn.request, 200), 1.0)
        self.run_until_empty()
        self.assertEmpty()

    def test_keys(self) -> None:
        txn, _ = self.server(request())
        self.assertEqual(
            txn.key,
            TransactionKey(
                True,
                "INVITE",
                "z9hG4bK776asdhds",
                ("pc33.atlanta.example.com", 5060),
                request_id=(txn.request.call_id, txn.request.cseq.seq, txn.request.uri_text),
            ),
        )
        self.assertEqual(
            str(txn.key), "server/INVITE/z9hG4bK776asdhds@pc33.atlanta.example.com:5060"
        )
        ctx, _ = self.client(request("OPTIONS"))
        self.assertEqual(ctx.key, TransactionKey(False, "OPTIONS", "z9hG4bK776asdhds"))
        self.assertEqual(str(ctx.key), "client/OPTIONS/z9hG4bK776asdhds")
        self.assertTrue(ctx.is_client)
        self.assertFalse(ctx.is_invite)
        self.assertTrue(txn.is_invite)
        self.assertIn("INVITE", repr(txn))
        self.layer.send_response(txn, answer(txn.request, 200), 0.0)
        self.run_until_empty()
        self.assertEmpty()


class Rfc2543MatchingTests(LayerTestCase):
    """§17.2.3 fallback for requests whose branch lacks the magic cookie."""

    def legacy(self, method: str = "INVITE", **kw: Any) -> Request:
        kw.setdefault("branch", "0a1b2c")
        return request(method, **kw)

    def test_cookie(self) -> None:
        self.assertEqual(MAGIC_COOKIE, "z9hG4bK")

    def test_retransmission_matches_by_fields(self) -> None:
        req = self.legacy()
        txn, out = self.server(req)
        self.assertIsNotNone(txn.key.legacy)
        self.assertIn("rfc2543", str(txn.key))
        self.assertIs(self.layer.find_server(self.legacy()), txn)
        self.assertIs(self.layer.find_server(self.legacy(branch=None)), None)  # top Via differs
        self.assertIs(self.layer.find_server(self.legacy(uri="sip:bob@BILOXI.example.com")), txn)
        for changed in (
            {"uri": "sip:carol@biloxi.example.com"},
            {"from_tag": "other"},
            {"to_tag": "other"},
            {"call_id": "other@x"},
            {"cseq": 314160},
            {"via_port": 5070},
        ):
            self.assertIsNone(self.layer.find_server(self.legacy(**changed)), changed)
        # same fields, other method: another transaction
        self.assertIsNone(self.layer.find_server(self.legacy("OPTIONS", cseq_method="OPTIONS")))
        out = self.layer.receive_request(self.legacy(), False, 0.2)
        self.assertEqual(kinds(out), ["Send 100 again"])
        self.layer.send_response(txn, answer(req, 200), 0.3)
        self.run_until_empty()
        self.assertEmpty()

    def test_no_branch_at_all(self) -> None:
        req = self.legacy(branch=None)
        txn, _ = self.server(req)
        self.assertIs(self.layer.find_server(self.legacy(branch=None)), txn)
        self.layer.send_response(txn, answer(req, 200), 0.3)
        self.run_until_empty()
        self.assertEmpty()

    def test_ack_needs_the_to_tag_of_the_response(self) -> None:
        req = self.legacy()
        txn, _ = self.server(req)
        busy = answer(req, 486, to_tag="srv-tag")
        self.layer.send_response(txn, busy, 0.1)
        wrong = self.legacy("ACK", cseq_method="ACK", to_tag="other")
        self.assertEqual(
            self.layer.receive_request(wrong, False, 0.2), [DeliverRequest(wrong, None)]
        )
        self.assertEqual(txn.state, S.COMPLETED)
        # the 2543 ACK has its own (non-cookie) branch: matched by the other fields
        ack = self.legacy("ACK", cseq_method="ACK", to_tag="srv-tag")
        self.assertIs(self.layer.find_server(ack), txn)
        self.assertEqual(self.layer.receive_request(ack, False, 0.3), [])
        self.assertEqual(txn.state, S.CONFIRMED)
        self.run_until_empty()
        self.assertEmpty()

    def test_cancel(self) -> None:
        invite = self.legacy()
        itx, _ = self.server(invite)
        cancel = self.legacy("CANCEL", cseq_method="CANCEL")
        out = self.layer.receive_request(cancel, False, 0.1)
        self.assertEqual(kinds(out), ["DeliverRequest CANCEL"])
        ctx = out[0].transaction  # type: ignore[union-attr]
        self.assertIsNot(ctx, itx)
        self.assertIs(self.layer.find_cancelled(cancel), itx)
        self.assertIs(self.layer.find_server(self.legacy("CANCEL", cseq_method="CANCEL")), ctx)
        self.assertIsNone(self.layer.find_cancelled(self.legacy("CANCEL", from_tag="x")))
        assert isinstance(ctx, ServerTransaction)
        self.layer.send_response(ctx, answer(cancel, 200), 0.2)
        self.layer.send_response(itx, answer(invite, 487), 0.2)
        self.layer.receive_request(
            self.legacy("ACK", cseq_method="ACK", to_tag="a6c85cf"), False, 0.3
        )
        self.assertEqual(itx.state, S.CONFIRMED)
        self.run_until_empty()
        self.assertEmpty()

    def test_many_in_one_call(self) -> None:
        # several legacy transactions sharing Call-ID and CSeq number
        a, _ = self.server(self.legacy())
        b, _ = self.server(self.legacy(via_host="pc34.atlanta.example.com"))
        self.assertIsNot(a, b)
        self.assertIs(self.layer.find_server(self.legacy(via_host="pc34.atlanta.example.com")), b)
        for t in (a, b):
            self.layer.send_response(t, answer(t.request, 200), 0.1)
        self.run_until_empty()
        self.assertEmpty()


# ---------------------------------------------------------------------------
# Building CANCEL; the whole layer
# ---------------------------------------------------------------------------


class BuildTests(SynchronousTestCase):
    def test_build_cancel(self) -> None:
        req = request(routes=("<sip:p1.example.com;lr>",))
        cancel = build_cancel(req)
        self.assertEqual(cancel.method, "CANCEL")
        self.assertEqual(cancel.uri_text, req.uri_text)
        self.assertEqual(cancel.call_id, req.call_id)
        self.assertEqual(cancel.headers.get("From"), req.headers.get("From"))
        self.assertEqual(cancel.headers.get("To"), req.headers.get("To"))
        self.assertEqual((cancel.cseq.seq, cancel.cseq.method), (req.cseq.seq, "CANCEL"))
        self.assertEqual(cancel.vias, [req.top_via])
        self.assertEqual(cancel.headers.get_all("Route"), ["<sip:p1.example.com;lr>"])
        self.assertEqual(cancel.max_forwards, 70)
        parsed = parse_message(cancel.serialize())
        assert isinstance(parsed, Request)
        self.assertEqual(parsed.method, "CANCEL")


class LayerTests(LayerTestCase):
    def test_empty(self) -> None:
        self.assertEmpty()
        self.assertEqual(self.layer.advance(1e9), [])
        self.assertIsNone(self.layer.get(TransactionKey(False, "INVITE", "z9hG4bKx")))

    def test_next_deadline_is_the_earliest(self) -> None:
        invite = request()
        self.client(invite, reliable=True, now=0.0)  # B at 32
        self.client(request("OPTIONS", branch="z9hG4bKo"), now=1.0)  # E at 1.5
        self.assertEqual(self.layer.next_deadline(), 1.5)
        self.layer.advance(1.5)
        self.assertEqual(self.layer.next_deadline(), 2.5)
        steps = self.run_until_empty()
        self.assertIn((32.0, ["Timeout B", "Terminated"]), steps)
        self.assertEqual(steps[-1], (33.0, ["Timeout F", "Terminated"]))
        self.assertEqual([at for at, _ in steps], sorted(at for at, _ in steps))
        self.assertEmpty()

    def test_stopped_timers_do_not_fire(self) -> None:
        req = request()
        self.client(req)
        self.layer.receive_response(reply(req, 200), 0.1)
        # A (0.5) and B (32) were stopped: only M (32.1) is left
        self.assertEqual(self.layer.next_deadline(), 32.1)
        self.assertEqual(self.layer.advance(32.0), [])
        self.assertEqual(kinds(self.layer.advance(32.1)), ["Terminated"])
        self.assertEmpty()

    def test_terminated_output_names_the_transaction(self) -> None:
        req = request(transport="TCP")
        txn, _ = self.client(req, reliable=True)
        out = self.layer.receive_response(reply(req, 404), 0.0)
        self.assertEqual(out[-1], Terminated(txn))
        self.assertNotIn(txn.key, self.layer)
        self.assertEmpty()

    def test_busy_layer_drains(self) -> None:
        # many transactions of every kind at once, then only timers
        for i in range(20):
            inv = request(branch=f"z9hG4bKc{i}")
            self.client(inv, now=i * 0.1)
            self.layer.receive_response(reply(inv, 180 if i % 2 else 486), i * 0.1 + 0.05)
            srv = request("OPTIONS", branch=f"z9hG4bKs{i}")
            stx, _ = self.server(srv, now=i * 0.1)
            self.layer.send_response(stx, answer(srv, 200), i * 0.1)
        for txn in list(self.layer):
            if txn.state is S.PROCEEDING:
                self.layer.receive_response(reply(txn.request, 200), 3.0)
        self.assertEqual(len(self.layer), 40)
        steps = self.run_until_empty()
        self.assertEqual(sum(s.count("Terminated") for _, s in steps), 40)
        self.assertEmpty()


class LingerGranularityTests(LayerTestCase):
    """Timers that only end a lingering transaction fire on whole multiples of the granularity."""

    settings = TimerSettings(linger_granularity=1.0)

    def test_timer_j_rounded_up_retransmission_timers_exact(self) -> None:
        req = request("REGISTER")
        txn, _ = self.server(req, now=0.25)
        self.layer.send_response(txn, answer(req, 200), 1.3)
        self.assertEqual(txn.timers, {Timer.J: 34.0})  # 1.3 + 32 = 33.3 -> 34
        client, _ = self.client(request("OPTIONS"), now=2.1)
        self.assertEqual(client.timers, {Timer.E: 2.6, Timer.F: 34.1})  # exact

    def test_many_transactions_end_in_one_advance(self) -> None:
        for n in range(1, 6):
            req = request("REGISTER", branch=f"z9hG4bK-linger-{n}")
            txn, _ = self.server(req, now=n * 0.1)
            self.layer.send_response(txn, answer(req, 200), n * 0.1)
        self.assertEqual(self.run_until_empty(), [(33.0, ["Terminated"] * 5)])

    def test_zero_wait_on_reliable_transports_still_ends_at_once(self) -> None:
        req = request("OPTIONS", transport="TCP")
        txn, _ = self.server(req, reliable=True)
        out = self.layer.send_response(txn, answer(req, 200), 0.1)
        self.assertEqual(kinds(out), ["Send 200", "Terminated"])

    def test_negative_refused(self) -> None:
        self.assertRaises(ValueError, TimerSettings, linger_granularity=-1.0)
