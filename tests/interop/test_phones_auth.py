"""Issue 9's interop tests: real baresip and linphonec through the phone settings.

The configuration lines are those of docs/phones.md: on the phones'
adjacency ``client-certificate optional``, ``authentication digest``,
``digest-algorithms md5``, ``sip-over-tls``; under ``sbe``
``user-database FILE`` with htdigest lines ``user:realm:HA1``.

What they check is described in docs/phones.md and docs/security-model.md
(client-certificate modes, flows, the SBC's Contact scheme, digest,
``sip-over-tls``).

Facts about the phones these tests rely on (measured on Debian 12's packages):

- baresip 1.0 gives up with "Function not implemented" on any challenge
  that lists ``algorithm=SHA-256``, even after an MD5 one; it retries a
  rejected digest three times, then reports ``401 Unauthorized``. It
  appends ``;transport=tls`` to a dialed URI without a transport, and its
  ``Authorization`` carries ``uri="sip:lab.test;transport=tls"`` and no
  ``algorithm`` parameter (MD5).
- linphonec 5.1 answers a ``sips:`` INVITE whose From/To are ``sip:`` with
  ``Contact: <sip:carol@...;transport=tls>``; with sips: From/To it answers
  with a ``sips:`` Contact. Offered SHA-256 and MD5 challenges, it answers
  the MD5 one (``algorithm=MD5``); a SHA-256-only challenge makes it fail.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from twisted.internet import defer

from tests.interop.calls_harness import start_sipp_uas
from tests.interop.harness import get_reactor, within
from tests.interop.phones import HOST, PhonesTestCase, write_user_database
from tests.interop.test_cli import SBC_CLI, cli_socket
from tests.support.peers import run

#: No spaces: baresip cuts ``auth_pass`` at the first space of its account line.
PASSWORD = "correct-horse-42"

#: The phones' adjacency as an operator sets it up for baresip (issue 9, docs/phones.md).
BARESIP_SETTINGS = ("client-certificate optional", "authentication digest", "digest-algorithms md5")


class _DigestTestCase(PhonesTestCase):
    """An SBC whose phones adjacency authenticates with digest against a user database."""

    def user_database(self) -> str:
        """An htdigest file with alice and carol in lab.test (password ``PASSWORD``)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return write_user_database(
            os.path.join(directory, "users.htdigest"),
            [("alice", "lab.test", PASSWORD), ("carol", "lab.test", PASSWORD)],
        )

    def start_digest_sbc(
        self, settings: tuple[str, ...] = BARESIP_SETTINGS, trunk_peer_port: int | None = None
    ) -> defer.Deferred[Any]:
        return self.start_sbc(
            phone_settings=settings,
            sbe_settings=(f"user-database {self.user_database()}",),
            trunk_peer_port=trunk_peer_port,
        )

    @defer.inlineCallbacks
    def registered_baresip(self, **kwargs: Any) -> Any:
        """A baresip without a client certificate, registered with digest."""
        phone = self.baresip(auth_user="alice", auth_pass=PASSWORD, **kwargs)
        yield phone.start()
        yield phone.wait_registered()
        return phone

    @defer.inlineCallbacks
    def sbc_show(self, command: str) -> Any:
        assert self.sbc is not None
        result = yield within(
            run(
                get_reactor(),
                [SBC_CLI, "--socket", cli_socket(self.sbc.child), "-c", command],
                timeout=30.0,
            ),
            40.0,
            "sbc-cli",
        )
        return result.text()


class BaresipDigestRegistrationTests(_DigestTestCase):
    """baresip without a client certificate registers with digest (§3 optional, §11)."""

    @defer.inlineCallbacks
    def test_registers_with_md5_digest(self) -> Any:
        """401 with one MD5 challenge (qop auth, realm lab.test), then 200; the binding shows."""
        yield self.start_digest_sbc()
        phone = yield self.registered_baresip()
        messages = phone.sip_messages()
        challenges = [m for m in messages if not m.sent and m.is_response(401, "REGISTER")]
        self.assertTrue(challenges, phone.describe())
        headers = challenges[0].header("WWW-Authenticate")
        self.assertEqual(len(headers), 1, headers)
        self.assertRegex(headers[0], r"(?i)algorithm=MD5")
        self.assertRegex(headers[0], r'qop="auth"')
        self.assertRegex(headers[0], r'realm="lab\.test"')
        registers = [m for m in messages if m.sent and m.is_request("REGISTER")]
        self.assertTrue(any(m.header("Authorization") for m in registers), phone.describe())
        rows = yield self.bindings()
        self.assertEqual(
            [(r.aor, r.adjacency) for r in rows], [("alice@lab.test", "phones")], self.context()
        )

    @defer.inlineCallbacks
    def test_default_algorithms_fail_as_baresip_does(self) -> Any:
        """Default ``sha-256 md5``: two challenges, SHA-256 first; baresip gives up; no binding."""
        yield self.start_digest_sbc(("client-certificate optional", "authentication digest"))
        phone = self.baresip(auth_user="alice", auth_pass=PASSWORD)
        yield phone.start()
        reason = yield phone.wait_register_failed(seconds=20.0)
        self.assertIn("Function not implemented", reason, phone.describe())
        challenge = next(
            m for m in phone.sip_messages() if not m.sent and m.is_response(401, "REGISTER")
        )
        algorithms = [
            re.search(r"(?i)algorithm=([\w-]+)", h)[1].upper()  # type: ignore[index]
            for h in challenge.header("WWW-Authenticate")
        ]
        self.assertEqual(algorithms, ["SHA-256", "MD5"])
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())

    @defer.inlineCallbacks
    def test_wrong_password_refused_no_binding(self) -> Any:
        """A wrong password: REGISTER refused (401/403), no binding, counted as auth-failures."""
        yield self.start_digest_sbc()
        phone = self.baresip(auth_user="alice", auth_pass="not-the-password")
        yield phone.start()
        reason = yield phone.wait_register_failed(seconds=30.0)
        self.assertRegex(reason, r"^40[13] ", phone.describe())
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())
        shown = yield self.sbc_show("show services sbc phones sbe statistics")
        self.assertRegex(shown, r"auth-failures\s+[1-9]", shown)
        self.assertNotIn("not-the-password", self.sbc.output() if self.sbc else "")

    @defer.inlineCallbacks
    def test_optional_certificate_without_digest_is_403(self) -> Any:
        """``client-certificate optional`` alone: an unauthenticated REGISTER gets 403 (§3)."""
        yield self.start_digest_sbc(("client-certificate optional",))
        phone = self.baresip(auth_user="alice", auth_pass=PASSWORD)
        yield phone.start()
        reason = yield phone.wait_register_failed(seconds=30.0)
        self.assertRegex(reason, r"^403 ", phone.describe())
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())


class BaresipDigestCallTests(_DigestTestCase):
    """Calls to and from a digest-registered baresip (§3 flows, §5 Contact, §11 sip-over-tls)."""

    SETTINGS = (*BARESIP_SETTINGS, "sip-over-tls")

    def assert_over_registration_flow(self, phone: Any) -> None:
        """The INVITE reached baresip over the connection its REGISTER used, not a new one."""
        messages = phone.sip_messages()
        register = next(m for m in messages if m.sent and m.is_request("REGISTER"))
        invite = next(m for m in messages if not m.sent and m.is_request("INVITE"))
        self.assertEqual(invite.destination, register.source, phone.describe())
        self.assertNotEqual(invite.destination, f"{HOST}:{phone.tls_port}")

    @defer.inlineCallbacks
    def test_trunk_calls_baresip_trunk_hangs_up(self) -> Any:
        """SIPp -> sip:alice@lab.test: baresip answers over its own connection; BYE from SIPp."""
        yield self.start_digest_sbc(self.SETTINGS)
        phone = yield self.registered_baresip()
        caller = self.trunk_caller("phones_uac.xml", "sip:alice@lab.test")
        yield phone.wait_call_established()
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_closed()
        self.assert_over_registration_flow(phone)

    @defer.inlineCallbacks
    def test_trunk_calls_baresip_baresip_hangs_up(self) -> Any:
        """SIPp -> sip:alice@lab.test: baresip answers, then hangs up; SIPp gets the BYE."""
        yield self.start_digest_sbc(self.SETTINGS)
        phone = yield self.registered_baresip()
        caller = self.trunk_caller("calls_uac_bye.xml", "sip:alice@lab.test")
        yield phone.wait_call_established()
        yield phone.hangup()
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_closed()
        self.assert_over_registration_flow(phone)

    @defer.inlineCallbacks
    def test_baresip_calls_trunk(self) -> Any:
        """baresip dials sip:bob@trunk.test: 200 with a sip:...;transport=tls Contact, ACK, BYE."""
        callee = yield start_sipp_uas(self, "calls_uas.xml", keys={"contact_scheme": "sip"})
        yield self.start_digest_sbc(self.SETTINGS, trunk_peer_port=callee.port)
        phone = yield self.registered_baresip()
        yield phone.dial("sip:bob@trunk.test")
        yield phone.wait_call_established()
        yield phone.hangup()
        yield self.sipp_succeeds(callee)
        yield phone.wait_call_closed()
        messages = phone.sip_messages()
        ok = next(m for m in messages if not m.sent and m.is_response(200, "INVITE"))
        self.assertRegex(ok.header("Contact")[0], r"^<sip:[^>]*;transport=tls>", phone.describe())
        self.assertTrue(any(m.sent and m.is_request("ACK") for m in messages))

    @defer.inlineCallbacks
    def test_baresip_calls_trunk_callee_hangs_up(self) -> Any:
        """baresip dials sip:bob@trunk.test; the callee hangs up; baresip's call closes."""
        callee = yield start_sipp_uas(self, "calls_uas_bye.xml", keys={"contact_scheme": "sip"})
        yield self.start_digest_sbc(self.SETTINGS, trunk_peer_port=callee.port)
        phone = yield self.registered_baresip()
        yield phone.dial("sip:bob@trunk.test")
        yield phone.wait_call_established()
        yield self.sipp_succeeds(callee)
        yield phone.wait_call_closed()

    @defer.inlineCallbacks
    def test_binding_goes_with_its_connection(self) -> Any:
        """baresip is killed (no un-REGISTER): its connection closes, its binding goes (§3 flows).

        A call to alice then gets 480, and the SBC opens no connection to
        the Contact's address (baresip's TLS port).
        """
        yield self.start_digest_sbc(self.SETTINGS)
        phone = yield self.registered_baresip()
        assert phone.child is not None
        yield phone.child.stop(signal.SIGKILL)
        yield self.sbc_logged(r"removed \S+ for alice@lab\.test .*: connection closed")
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())
        caller = self.trunk_caller("phones_uac_480.xml", "sip:alice@lab.test", seconds=15)
        yield self.sipp_succeeds(caller)


class LinphonecSipOverTlsTests(_DigestTestCase):
    """linphonec (digest, no client certificate) answering a sips: call with a sip: Contact."""

    @defer.inlineCallbacks
    def registered_linphonec(self) -> Any:
        phone = self.linphonec(username="carol", password=PASSWORD)
        yield phone.start()
        yield phone.wait_registered()
        return phone

    @defer.inlineCallbacks
    def test_sip_contact_answer_accepted_with_sip_over_tls(self) -> Any:
        """``sip-over-tls`` on: the call connects and ends with the trunk's BYE, not torn down."""
        yield self.start_digest_sbc(
            ("client-certificate optional", "authentication digest", "sip-over-tls")
        )
        phone = yield self.registered_linphonec()
        caller = self.trunk_caller(
            "phones_uac.xml", "sips:carol@lab.test", to_uri="sip:carol@lab.test"
        )
        yield phone.wait_answered()
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_ended()
        messages = phone.sip_messages()
        ok = next(m for m in messages if m.sent and m.is_response(200, "INVITE"))
        self.assertRegex(ok.header("Contact")[0], r"^<sip:carol@[^>]*;transport=tls>")
        byes = [m for m in messages if not m.sent and m.is_request("BYE")]
        self.assertEqual(len(byes), 1, phone.tail())

    @defer.inlineCallbacks
    def test_sip_contact_answer_torn_down_without_sip_over_tls(self) -> Any:
        """``sip-over-tls`` off: the same call is torn down, 480 + Warning 380 to the caller."""
        yield self.start_digest_sbc(("client-certificate optional", "authentication digest"))
        phone = yield self.registered_linphonec()
        caller = self.trunk_caller(
            "phones_uac_refused.xml", "sips:carol@lab.test", to_uri="sip:carol@lab.test"
        )
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_ended()
        messages = phone.sip_messages()
        self.assertTrue(any(not m.sent and m.is_request("BYE") for m in messages), phone.tail())
