"""Real soft phones (baresip 1.0, linphonec 5.1) against the SBC over TLS, strict mode.

What they check is in docs/security-model.md (client certificates, the
SBC's Contact scheme, the registrar, 480 + Warning 380). The phones'
adjacency here is the seed's strict one: ``client-certificate required``, no
digest, only ``sips:`` calls out of it. These tests hold with every phone
setting off; the tests of the phone features (digest, optional client
certificates, ``sip-over-tls``, flows) are in ``test_phones_auth.py``.

Harness: :mod:`tests.interop.phones` (how each phone is run and what its
output looks like).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from sbc.cli.commands import format_table
from tests.interop.calls_harness import start_sipp_uas
from tests.interop.phones import HOST, PhonesTestCase, Registration, parse_registrations

#: What the SBC logs for a TLS client without a certificate (OpenSSL's words).
NO_CERTIFICATE = r"TLS 127\.0\.0\.1:\d+: handshake failed: .*peer did not return a certificate"


class BaresipStrictTests(PhonesTestCase):
    """baresip over TLS to an adjacency that requires client certificates."""

    @defer.inlineCallbacks
    def test_registers_with_client_certificate(self) -> Any:
        """A certificate for sip:lab.test: REGISTER over TLS -> 200; the binding is listed."""
        yield self.start_sbc()
        phone = self.baresip(with_certificate=True)
        yield phone.start()
        yield phone.wait_registered()
        register = next(m for m in phone.sip_messages() if m.sent and m.is_request("REGISTER"))
        contact = register.header("Contact")[0]
        self.assertRegex(
            contact, rf"^<sip:alice-\w+@{re.escape(HOST)}:{phone.tls_port};transport=tls>"
        )
        rows = yield self.bindings()
        self.assertEqual(
            [(r.aor, r.adjacency) for r in rows], [("alice@lab.test", "phones")], self.context()
        )
        self.assertIn(f"@{HOST}:{phone.tls_port};transport=tls", rows[0].contact)

    @defer.inlineCallbacks
    def test_without_client_certificate_refused_at_handshake(self) -> Any:
        """No certificate: the SBC ends the handshake; baresip's REGISTER times out; no binding.

        baresip does not notice the TLS alert: its REGISTER transaction times
        out after about 32 s ("Connection timed out").
        """
        yield self.start_sbc()
        phone = self.baresip(with_certificate=False)
        yield phone.start()
        yield self.sbc_logged(NO_CERTIFICATE)
        reason = yield phone.wait_register_failed(seconds=60.0)
        self.assertIn("timed out", reason, phone.describe())
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())

    @defer.inlineCallbacks
    def test_sip_call_to_phone_refused_without_sip_over_tls(self) -> Any:
        """A sip: call from the trunk to alice (bound over TLS): 480, nothing reaches baresip.

        Without ``sip-over-tls`` a ``sip:`` call never leaves through a
        trusted-encrypted adjacency (§4-§6), registered contact or not.
        """
        yield self.start_sbc()
        phone = self.baresip(with_certificate=True)
        yield phone.start()
        yield phone.wait_registered()
        caller = self.trunk_caller("phones_uac_480.xml", "sip:alice@lab.test")
        yield self.sipp_succeeds(caller)
        yield self.sbc_logged(r"INVITE from trunk \(trusted\) to sip:alice@lab\.test: refused 480")
        invites = [m for m in phone.sip_messages() if m.is_request("INVITE")]
        self.assertEqual(invites, [], phone.describe())

    @defer.inlineCallbacks
    def test_calls_out_to_trunk(self) -> Any:
        """baresip dials sip:bob@trunk.test: the SBC's Contact is sip:...;transport=tls (§5).

        baresip can only ACK and BYE a ``sip:`` Contact in a ``sip:`` dialog
        (a ``sips:`` one ends its call with "Function not implemented").
        """
        callee = yield start_sipp_uas(self, "calls_uas.xml", keys={"contact_scheme": "sip"})
        yield self.start_sbc(trunk_peer_port=callee.port)
        phone = self.baresip(with_certificate=True)
        yield phone.start()
        yield phone.wait_registered()
        yield phone.dial("sip:bob@trunk.test")
        yield phone.wait_call_established()
        yield phone.hangup()
        yield self.sipp_succeeds(callee)
        yield phone.wait_call_closed()
        messages = phone.sip_messages()
        ok = next(m for m in messages if not m.sent and m.is_response(200, "INVITE"))
        self.assertRegex(ok.header("Contact")[0], r"^<sip:[^>]*;transport=tls>", phone.describe())
        self.assertTrue(any(m.sent and m.is_request("ACK") for m in messages), phone.describe())


class LinphonecStrictTests(PhonesTestCase):
    """linphonec over TLS (identity sips:carol@lab.test) with a client certificate."""

    @defer.inlineCallbacks
    def test_registers_with_client_certificate(self) -> Any:
        """REGISTER sips:lab.test with sips: Contacts over TLS -> 200; the bindings are listed.

        linphonec registers twice: first with its listening port in the
        Contact, then (seeing ``rport`` in the 200) again with the port of
        its connection, without removing the first Contact.
        """
        yield self.start_sbc()
        phone = self.linphonec(with_certificate=True)
        yield phone.start()
        yield phone.wait_registered()
        rows = yield self.bindings()
        self.assertEqual({(r.aor, r.adjacency) for r in rows}, {("carol@lab.test", "phones")})
        registers = [m for m in phone.sip_messages() if m.sent and m.is_request("REGISTER")]
        contacts = {re.sub(r"^<([^>]*)>.*", r"\1", m.header("Contact")[0]) for m in registers}
        self.assertEqual({r.contact for r in rows}, contacts, self.context())
        for contact in contacts:
            self.assertRegex(contact, rf"^sips:carol@{re.escape(HOST)}:\d+$")

    @defer.inlineCallbacks
    def test_without_client_certificate_refused_at_handshake(self) -> Any:
        """No certificate: the handshake fails, registration fails, no binding."""
        yield self.start_sbc()
        phone = self.linphonec(with_certificate=False)
        yield phone.start()
        yield self.sbc_logged(NO_CERTIFICATE)
        yield phone.wait_register_failed()
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())

    @defer.inlineCallbacks
    def test_answers_sips_call_from_trunk(self) -> Any:
        """sips:carol@lab.test from the trunk: linphonec answers (sips: Contact); BYE from SIPp."""
        yield self.start_sbc()
        phone = self.linphonec(with_certificate=True)
        yield phone.start()
        yield phone.wait_registered()
        caller = self.trunk_caller(
            "phones_uac.xml", "sips:carol@lab.test", from_uri="sips:dave@trunk.test", scheme="sips"
        )
        yield phone.wait_answered()
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_ended()
        ok = [m for m in phone.sip_messages() if m.sent and m.is_response(200, "INVITE")]
        self.assertEqual(len(ok), 1, phone.tail())
        self.assertRegex(ok[0].header("Contact")[0], r"^<sips:carol@")

    @defer.inlineCallbacks
    def test_sip_contact_answer_torn_down(self) -> Any:
        """A sips: call with sip: From/To: linphonec answers with a sip:...;transport=tls Contact.

        Without ``sip-over-tls`` that is a scheme downgrade (§5): the SBC
        ACKs and BYEs the phone and the caller gets 480 + Warning 380.
        """
        yield self.start_sbc()
        phone = self.linphonec(with_certificate=True)
        yield phone.start()
        yield phone.wait_registered()
        caller = self.trunk_caller(
            "phones_uac_refused.xml", "sips:carol@lab.test", to_uri="sip:carol@lab.test"
        )
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_ended()
        messages = phone.sip_messages()
        ok = [m for m in messages if m.sent and m.is_response(200, "INVITE")]
        self.assertEqual(len(ok), 1, phone.tail())
        self.assertRegex(ok[0].header("Contact")[0], r"^<sip:carol@[^>]*;transport=tls>")
        self.assertTrue(
            any(not m.sent and m.is_request("BYE") for m in messages), "no BYE to the phone"
        )


class RegistrationTableTests(TestCase):
    """The harness reads ``show ... registrations`` by its header and rule, whatever the columns."""

    def test_columns_found_by_header(self) -> None:
        rows = [
            [
                "alice@lab.test",
                "sip:a@127.0.0.1:5;transport=tls",
                "phones",
                "TLS 127.0.0.1:9",
                "9s",
            ],
            ["carol@lab.test", "sips:c@127.0.0.1:7", "phones", "-", "600s"],
        ]
        table = format_table(["AOR", "Contact", "Adjacency", "Flow", "Expires"], rows)
        self.assertEqual(
            parse_registrations("\n".join([*table, "2 binding(s)"])),
            [
                Registration(
                    "alice@lab.test",
                    "sip:a@127.0.0.1:5;transport=tls",
                    "phones",
                    "9s",
                    "TLS 127.0.0.1:9",
                ),
                Registration("carol@lab.test", "sips:c@127.0.0.1:7", "phones", "600s", "-"),
            ],
        )

    def test_no_registrations(self) -> None:
        self.assertEqual(parse_registrations("No registrations."), [])
