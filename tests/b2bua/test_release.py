"""``no attach`` releases the calls using the adjacency (CallManager.release_adjacency)."""

from __future__ import annotations

from tests.b2bua.test_call import (
    A_FLOW,
    ACCESS,
    B2_FLOW,
    B_FLOW,
    CORE,
    CORE2,
    SDP,
    T_FLOW,
    TRUSTED,
    CallTestCase,
    Net,
    answer,
    invite,
)


class ReleaseTests(CallTestCase):
    def test_established_call_gets_bye_on_both_legs(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        sent = self.net._collect(self.net.core.calls.release_adjacency("core", self.net.now))
        byes = {flow: bye for flow, bye in self.net.requests(sent, "BYE")}
        self.assertEqual(set(byes), {A_FLOW, B_FLOW})
        self.assertEqual(self.net.responses(sent), [])
        a_bye, b_bye = byes[A_FLOW], byes[B_FLOW]
        self.assertEqual((a_bye.call_id, a_bye.to.tag), ("a-call-1", "atag"))
        self.assertEqual(a_bye.from_.tag, ok.to.tag)
        self.assertEqual((b_bye.call_id, b_bye.to.tag), (b_invite.call_id, "btag"))
        counters = self.net.core.calls.counters
        self.assertEqual(counters.get("core", "calls-released:detach"), 1)
        self.assertEqual(counters.get("access", "calls-released:detach"), 0)
        self.assertEqual(self.net.core.calls.active_calls("core"), 0)
        self.assertEqual(self.net.core.calls.active_calls("access"), 0)
        # a BYE arriving afterwards finds no dialog
        late = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKlate", cseq=2, body=b"")
        [(_, response)] = self.net.responses(self.net.feed(late, A_FLOW, ACCESS))
        self.assertEqual(response.status, 481)
        self.net.feed(answer(a_bye, 200, contact=None), A_FLOW, ACCESS)
        self.net.feed(answer(b_bye, 200, contact=None), B_FLOW, CORE)
        self.assertIdle()

    def test_release_of_the_inbound_adjacency_unanswered_bye(self) -> None:
        """Releasing the caller's side; the detached side never answers its BYE."""
        _a_invite, _b_invite, _ok = self.establish()
        sent = self.net._collect(self.net.core.calls.release_adjacency("access", self.net.now))
        byes = {flow: bye for flow, bye in self.net.requests(sent, "BYE")}
        self.assertEqual(set(byes), {A_FLOW, B_FLOW})
        self.net.feed(answer(byes[B_FLOW], 200, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.core.calls.counters.get("access", "calls-released:detach"), 1)
        self.assertIdle()  # the A-leg BYE times out

    def test_ringing_call_gets_503_and_cancel(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        sent = self.net._collect(self.net.core.calls.release_adjacency("core", self.net.now))
        [(flow, final)] = self.net.responses(sent)
        self.assertEqual((flow, final.status, final.cseq.method), (A_FLOW, 503, "INVITE"))
        self.assertIn("adjacency core detached", final.reason)
        [(flow, b_cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(b_cancel.top_via.branch, b_invite.top_via.branch)
        self.assertEqual(self.net.requests(sent, "BYE"), [])
        self.assertEqual(self.net.core.calls.counters.get("core", "calls-released:detach"), 1)
        self.net.feed(answer(b_cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.responses(sent), [])  # nothing more to the caller
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        self.assertIdle()

    def test_call_before_provisional_cancels_on_the_first_1xx(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net._collect(self.net.core.calls.release_adjacency("access", self.net.now))
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 503)
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])  # not before a 1xx (§9.1)
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        [(flow, b_cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(self.net.responses(sent), [])
        self.net.feed(answer(b_cancel, 200, contact=None), B_FLOW, CORE)
        self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        self.assertIdle()

    def test_unrelated_call_is_untouched(self) -> None:
        self.net = Net({"remote.test": ["core"], "other.test": ["core2"]})
        self.establish()
        # a second call: trusted -> core2
        other = invite(
            uri="sip:carol@other.test",
            call_id="t-call-1",
            branch="z9hG4bKt1",
            via_host="127.0.0.3",
            contact="sip:alice@127.0.0.3:5070",
        )
        sent = self.net.feed(other, T_FLOW, TRUSTED)
        [(flow, other_b)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        sent = self.net.feed(
            answer(other_b, 200, contact="sip:carol@10.0.0.6:5060", body=SDP), B2_FLOW, CORE2
        )
        [(_, other_ok)] = self.net.responses(sent)
        ack = invite(
            uri="sip:carol@other.test",
            method="ACK",
            call_id="t-call-1",
            to_tag=other_ok.to.tag,
            branch="z9hG4bKtack",
            via_host="127.0.0.3",
            body=b"",
        )
        self.net.feed(ack, T_FLOW, TRUSTED)

        sent = self.net._collect(self.net.core.calls.release_adjacency("core", self.net.now))
        self.assertEqual({flow for flow, _ in sent}, {A_FLOW, B_FLOW})
        byes = dict(self.net.requests(sent, "BYE"))
        for flow, bye in byes.items():
            context = ACCESS if flow == A_FLOW else CORE
            self.net.feed(answer(bye, 200, contact=None), flow, context)
        manager = self.net.core.calls
        self.assertEqual(manager.active_calls("core"), 0)
        self.assertEqual((manager.active_calls("trusted"), manager.active_calls("core2")), (1, 1))
        self.assertEqual(manager.counters.get("core2", "calls-released:detach"), 0)
        self.assertEqual(len(manager.calls), 1)
        self.assertEqual(len(manager.dialogs), 2)
        # the other call still works: its caller hangs up
        bye = invite(
            uri="sip:carol@other.test",
            method="BYE",
            call_id="t-call-1",
            to_tag=other_ok.to.tag,
            branch="z9hG4bKtbye",
            cseq=2,
            via_host="127.0.0.3",
            body=b"",
        )
        sent = self.net.feed(bye, T_FLOW, TRUSTED)
        [(flow, b_bye)] = self.net.requests(sent, "BYE")
        self.assertEqual(flow, B2_FLOW)
        self.net.feed(answer(b_bye, 200, contact=None), B2_FLOW, CORE2)
        self.assertIdle()

    def test_release_with_no_calls_sends_nothing(self) -> None:
        self.assertEqual(self.net.core.calls.release_adjacency("core", 0.0), [])
        self.assertIdle()
