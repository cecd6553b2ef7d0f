"""Issue 10's interop tests: the access SBC in front of a real Kamailio registrar.

Topology (docs/phones.md, "Deployment 2: access SBC")::

    baresip --TLS, no client certificate--> phones   SBC   pbx (UDP) --> Kamailio
                                            trusted-encrypted          registrar for core.test
                                            client-certificate optional   (digest, usrloc)
                                            authentication delegated
                                            sip-over-tls

Kamailio (tests/interop/registrar.py) challenges REGISTERs with 401 and
INVITEs from its users with 407, ties each nonce to the Call-ID and From
tag of the challenged request, and logs every request it receives: the
tests count REGISTERs there and read its location table with
``kamcmd ul.dump``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet import ssl as twisted_ssl
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import FailTest

from tests.interop.calls_harness import SippProcess, start_sipp, start_sipp_uas
from tests.interop.harness import (
    HOST,
    SBC_NAME,
    Response,
    SbcProcess,
    StreamClient,
    connect_stream,
    get_reactor,
    launch_sbc,
    parse_response,
    pause,
    within,
)
from tests.interop.phones import (
    PhoneAdjacency,
    PhonesTestCase,
    poll_until,
    registrations,
    render_phones_config,
)
from tests.interop.registrar import LogEvent, launch_kamailio, start_registrar
from tests.interop.test_cli import SBC_CLI, cli_socket
from tests.support.peers import free_port, run

#: No spaces: baresip cuts ``auth_pass`` at the first space of its account line.
PASSWORDS = {"alice": "alice-core-42", "bob": "bob-core-42", "mallory": "mallory-core-42"}

#: The phones' adjacency of an access SBC (docs/phones.md, Deployment 2).
PHONE_SETTINGS = ("client-certificate optional", "authentication delegated", "sip-over-tls")

#: Everything from the phones goes to the registrar/PBX behind the SBC.
ACCESS_ROUTING = (
    "call-policy-set 1",
    " first-call-routing-table by-source",
    " rtg-src-adjacency-table by-source",
    "  entry 1",
    "   match-adjacency phones",
    "   dst-adjacency pbx",
    "   action complete",
    "active-call-policy-set 1",
)

SERVICE = "access"


class AccessTestCase(PhonesTestCase):
    """A Kamailio registrar for core.test behind an access SBC, and baresip in front."""

    timeout = 120

    @defer.inlineCallbacks
    def start_access(
        self,
        *,
        kamailio: Any = None,
        refresh_min: int = 0,
        bob: str | None = None,
        pbx_transport: str = "udp",
        min_expires: int = 60,
        interval_too_brief: bool = False,
    ) -> Any:
        """Kamailio (``bob``: a fixed next hop for bob), then the SBC relaying to it.

        ``pbx_transport`` is the ``pbx`` adjacency's (``udp`` or ``tcp``);
        ``refresh_min`` sets ``register-refresh-min``; ``min_expires`` is
        Kamailio's shortest registration. ``kamailio``: a Deferred firing
        with a Kamailio started otherwise (the other Kamailio settings unused).
        """
        if kamailio is None:
            kamailio = start_registrar(
                self,
                passwords=PASSWORDS,
                forbidden=("mallory",),
                static_users={"bob": bob} if bob else None,
                min_expires=min_expires,
                interval_too_brief=interval_too_brief,
            )
        self.kamailio = yield kamailio
        adjacencies = [
            PhoneAdjacency(
                "phones", "trusted-encrypted", port=free_port(), settings=PHONE_SETTINGS
            ),
            PhoneAdjacency(
                "pbx",
                "trusted-unencrypted",
                pbx_transport,
                port=_free_udp_port() if pbx_transport == "udp" else free_port(),
                signaling_peer=HOST,
                signaling_peer_port=self.kamailio.port,
            ),
        ]
        sbe: tuple[str, ...] = ()
        if refresh_min:
            sbe = ("limits", f" register-refresh-min {refresh_min}")
        config = render_phones_config(
            SERVICE, adjacencies, ACCESS_ROUTING, local_domains=(), sbe_settings=sbe
        )
        self.sbc = yield launch_sbc(self, self.pki, adjacencies, config)
        return self.sbc

    @defer.inlineCallbacks
    def registered_baresip(
        self, user: str = "alice", password: str | None = None, **kwargs: Any
    ) -> Any:
        """baresip for ``sip:USER@core.test`` (no client certificate), registered."""
        phone = self.baresip(
            aor=f"sip:{user}@core.test",
            auth_user=user,
            auth_pass=PASSWORDS[user] if password is None else password,
            **kwargs,
        )
        yield phone.start()
        yield phone.wait_registered()
        return phone

    @property
    def sbc_process(self) -> SbcProcess:
        """The running SBC (after :meth:`start_access`)."""
        assert self.sbc is not None
        return self.sbc

    @defer.inlineCallbacks
    def bindings(self) -> Any:
        """The SBC's registrations (``show services sbc access sbe registrations``)."""
        rows = yield registrations(self.sbc_process, SERVICE)
        return rows

    def context(self, *peers: Any) -> str:
        """The phones', SIPp's and the SBC's output, and Kamailio's log tail."""
        text = super().context(*peers)
        kamailio = getattr(self, "kamailio", None)
        return text if kamailio is None else text + "\n" + kamailio.tail()

    def kamailio_caller(self, scenario: str, seconds: int = 20) -> SippProcess:
        """A SIPp UAC calling sip:alice@core.test at Kamailio (UDP), from sip:dave@trunk.test."""
        keys = {
            "ruri": "sip:alice@core.test",
            "to_uri": "sip:alice@core.test",
            "from_uri": "sip:dave@trunk.test",
            "contact_scheme": "sip",
        }
        return start_sipp(
            self,
            scenario,
            remote_port=self.kamailio.port,
            transport="u1",
            keys=keys,
            seconds=seconds,
        )


def _free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


@defer.inlineCallbacks
def sbc_counters(sbc: SbcProcess, adjacency: str) -> Any:
    """``show services sbc access sbe statistics``: the counters of ``adjacency`` (name -> int)."""
    command = f"show services sbc {SERVICE} sbe statistics"
    result = yield within(
        run(get_reactor(), [SBC_CLI, "--socket", cli_socket(sbc.child), "-c", command], 30.0),
        40.0,
        "sbc-cli show statistics",
    )
    if result.exit_code != 0:
        raise FailTest(f"sbc-cli {command!r} failed (exit {result.exit_code}):\n{result.text()}")
    counters: dict[str, int] = {}
    inside = False
    for line in result.text().splitlines():
        if line.startswith("Adjacency: "):
            inside = line.split(": ", 1)[1].strip() == adjacency
        elif inside and line.strip():
            name, _, value = line.strip().rpartition(" ")
            if value.isdigit():
                counters[name.strip()] = int(value)
    return counters


def digest_response(
    user: str, realm: str, password: str, method: str, uri: str, nonce: str, nc: str, cnonce: str
) -> str:
    """The MD5 ``response`` of RFC 2617 with ``qop=auth``."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


class ScriptedPhone:
    """A phone written out by hand: REGISTERs over one TLS connection to the SBC.

    Used where baresip cannot go fast enough: it registers
    ``sip:alice@core.test`` (answering the registrar's MD5 digest challenge)
    and then refreshes back to back on the same Call-ID and From tag, each
    refresh with the next CSeq and the credentials of the challenge (``nc``
    counted up), as a phone that keeps its nonce does.
    """

    def __init__(self, client: StreamClient, user: str, password: str, expires: int) -> None:
        self.client = client
        self.expires = expires
        self.user = user
        self.password = password
        self.call_id = f"{random.getrandbits(64):016x}@scripted.test"
        self.from_tag = f"{random.getrandbits(32):08x}"
        self.cseq = random.randrange(1, 1000)
        port = client.local_port()
        self.contact = f"<sip:{user}@{HOST}:{port};transport=tls>"
        self.uri = "sip:core.test"
        self.challenge: dict[str, str] | None = None
        self.nc = 0

    def request(self) -> bytes:
        self.cseq += 1
        branch = f"z9hG4bK{random.getrandbits(48):012x}"
        lines = [
            f"REGISTER {self.uri} SIP/2.0",
            f"Via: SIP/2.0/TLS {HOST}:{self.client.local_port()};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@core.test>;tag={self.from_tag}",
            f"To: <sip:{self.user}@core.test>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: {self.contact};expires={self.expires}",
            "User-Agent: scripted-phone",
        ]
        if self.challenge is not None:
            self.nc += 1
            nc = f"{self.nc:08x}"
            cnonce = f"{random.getrandbits(32):08x}"
            realm, nonce = self.challenge["realm"], self.challenge["nonce"]
            response = digest_response(
                self.user, realm, self.password, "REGISTER", self.uri, nonce, nc, cnonce
            )
            lines.append(
                f'Authorization: Digest username="{self.user}", realm="{realm}", '
                f'nonce="{nonce}", uri="{self.uri}", response="{response}", '
                f'cnonce="{cnonce}", qop=auth, nc={nc}, algorithm=MD5'
            )
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def responses(self) -> list[Response]:
        """Every response received so far (they carry no body)."""
        found = []
        for chunk in self.client.received.split(b"\r\n\r\n"):
            parsed = parse_response(chunk.lstrip(b"\r\n"))
            if parsed is not None:
                found.append(parsed)
        return found

    def final_for(self, cseq: int) -> Response | None:
        for response in self.responses():
            numbers = response.header("CSeq")
            if response.status >= 200 and numbers and numbers[0].split()[0] == str(cseq):
                return response
        return None

    @defer.inlineCallbacks
    def transact(self) -> Any:
        """Send one REGISTER; fires with its final response."""
        self.client.write(self.request())
        cseq = self.cseq
        yield self.client.wait(
            lambda _: self.final_for(cseq) is not None, 15.0, f"the response to CSeq {cseq}"
        )
        return self.final_for(cseq)

    @defer.inlineCallbacks
    def register(self) -> Any:
        """REGISTER, 401 from the registrar, REGISTER with credentials, 200."""
        first = yield self.transact()
        if first.status != 401:
            raise FailTest(f"expected the registrar's 401, got {first.status} {first.reason}")
        [header] = first.header("WWW-Authenticate")
        self.challenge = dict(re.findall(r'(\w+)="([^"]*)"', header))
        second = yield self.transact()
        return second


TOKEN_CONTACT = r"sip:sbcr-[A-Za-z0-9_-]+@127\.0\.0\.1:{port}"


def _field(event: LogEvent, name: str) -> str:
    """A ``name VALUE`` field of a Kamailio log line (``call-id``, ``cseq``, ``from-tag``)."""
    match = re.search(rf"\b{re.escape(name)} (\S+)", event.text)
    return match[1] if match else ""


class RegistrationRelayTests(AccessTestCase):
    """baresip registers sip:alice@core.test through the SBC with Kamailio (§11)."""

    @defer.inlineCallbacks
    def test_registers_with_kamailio_through_the_sbc(self) -> Any:
        """401 from Kamailio, baresip's retry accepted; Kamailio binds the SBC's Contact.

        Kamailio's location table holds ``sip:sbcr-TOKEN@127.0.0.1:PBX`` (not
        baresip's address); the SBC lists baresip's Contact ``relayed to pbx``.
        """
        yield self.start_access()
        phone = yield self.registered_baresip()
        pbx_port = self.sbc_process.port("pbx")
        messages = phone.sip_messages()
        challenges = [m for m in messages if not m.sent and m.is_response(401, "REGISTER")]
        self.assertEqual(len(challenges), 1, phone.describe())
        [challenge] = challenges[0].header("WWW-Authenticate")
        self.assertRegex(challenge, r'^Digest realm="core\.test", nonce="[^"]+", qop="auth"')
        self.assertFalse([m for m in messages if m.is_response(407)], phone.describe())
        registers = [m for m in messages if m.sent and m.is_request("REGISTER")]
        phone_contact = re.match(r"<([^>]+)>", registers[0].header("Contact")[0])[1]  # type: ignore[index]
        ok = next(m for m in messages if not m.sent and m.is_response(200, "REGISTER"))
        # the phone is told about its own Contact only, with the expiry granted
        self.assertEqual(ok.header("Contact"), [f"<{phone_contact}>;expires=600"])

        # what Kamailio received: the SBC's Contact, on one Call-ID, baresip's credentials
        yield self.kamailio.settle()
        received = self.kamailio.requests("REGISTER")
        self.assertEqual(len(received), 2, self.context())
        self.assertIn("auth [<null>]", received[0].text)
        self.assertIn("auth [alice]", received[1].text)
        for event in received:
            self.assertRegex(event.text, rf"contact <{TOKEN_CONTACT.format(port=pbx_port)}>")
            self.assertNotIn(phone_contact, event.text)
        self.assertEqual(len({_field(e, "call-id") for e in received}), 1)
        self.assertEqual(len({_field(e, "from-tag") for e in received}), 1)
        self.assertEqual(int(_field(received[1], "cseq")), int(_field(received[0], "cseq")) + 1)
        self.assertNotEqual(_field(received[0], "call-id"), registers[0].header("Call-ID")[0])
        self.assertEqual(len(self.kamailio.log_events("challenge")), 1, self.context())

        location = yield self.kamailio.location()
        self.assertEqual(len(location), 1, location)
        [binding] = location
        self.assertEqual(binding.aor, "alice")
        self.assertRegex(binding.address, "^" + TOKEN_CONTACT.format(port=pbx_port) + "$")
        self.assertEqual(binding.call_id, _field(received[0], "call-id"))
        self.assertTrue(binding.user_agent.startswith("baresip"), binding)

        rows = yield self.bindings()
        self.assertEqual(
            [(r.aor, r.contact, r.adjacency, r.registrar) for r in rows],
            [("alice@core.test", phone_contact, "phones", "relayed to pbx")],
        )
        self.assertEqual(rows[0].flow, f"TLS {registers[0].source}")
        counters = yield sbc_counters(self.sbc_process, "phones")
        self.assertEqual(counters.get("auth-challenges", 0), 0, counters)
        self.assertEqual(counters.get("register-forwarded"), 2, counters)

    @defer.inlineCallbacks
    def test_instance_and_reg_id_reach_kamailio(self) -> Any:
        """baresip with RFC 5626 outbound: Kamailio stores its ``+sip.instance`` and ``reg-id``."""
        yield self.start_access()
        phone = yield self.registered_baresip(
            account_params=("sipnat=outbound",), modules=("uuid.so",)
        )
        register = next(m for m in phone.sip_messages() if m.sent and m.is_request("REGISTER"))
        [contact] = register.header("Contact")
        instance = re.search(r'\+sip\.instance="<([^>]+)>"', contact)
        assert instance is not None, contact
        location = yield self.kamailio.location()
        self.assertEqual(
            [(b.instance, b.reg_id) for b in location], [(f"<{instance[1]}>", "1")], location
        )
        self.assertRegex(
            location[0].address, TOKEN_CONTACT.format(port=self.sbc_process.port("pbx"))
        )
        ok = next(m for m in phone.sip_messages() if not m.sent and m.is_response(200, "REGISTER"))
        [answered] = ok.header("Contact")
        self.assertIn(f'+sip.instance="<{instance[1]}>"', answered)
        self.assertIn("reg-id=1", answered)

    @defer.inlineCallbacks
    def test_call_from_kamailio_reaches_baresip_over_its_connection(self) -> Any:
        """SIPp -> Kamailio (lookup) -> SBC's token -> baresip over its REGISTER connection."""
        yield self.call_from_kamailio("udp")

    def test_call_from_kamailio_over_tcp(self) -> Any:
        """The same with a TCP ``pbx`` adjacency: Kamailio opens a connection to the token."""
        return self.call_from_kamailio("tcp")

    @defer.inlineCallbacks
    def call_from_kamailio(self, pbx_transport: str) -> Any:
        yield self.start_access(pbx_transport=pbx_transport)
        phone = yield self.registered_baresip()
        location = yield self.kamailio.location()
        suffix = "" if pbx_transport == "udp" else ";transport=tcp"
        token = TOKEN_CONTACT.format(port=self.sbc_process.port("pbx")) + re.escape(suffix)
        self.assertRegex(location[0].address, f"^{token}$")
        caller = self.kamailio_caller("phones_uac.xml")
        yield phone.wait_call_established()
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_closed()
        yield self.kamailio.settle()
        relays = [e.text for e in self.kamailio.log_events("relay") if e.text.startswith("INVITE")]
        self.assertEqual(len(relays), 1, self.context())
        self.assertRegex(relays[0], f"^INVITE {token} ")
        messages = phone.sip_messages()
        register = next(m for m in messages if m.sent and m.is_request("REGISTER"))
        invite = next(m for m in messages if not m.sent and m.is_request("INVITE"))
        phone_contact = re.match(r"<([^>]+)>", register.header("Contact")[0])[1]  # type: ignore[index]
        self.assertEqual(invite.first_line, f"INVITE {phone_contact} SIP/2.0")
        # over the connection baresip opened to register, not to its listening port
        self.assertEqual(invite.destination, register.source, phone.describe())
        self.assertNotEqual(invite.destination, f"{HOST}:{phone.tls_port}")
        byes = [m for m in messages if not m.sent and m.is_request("BYE")]
        self.assertEqual(len(byes), 1, phone.describe())
        self.assertEqual(byes[0].destination, register.source)

    @defer.inlineCallbacks
    def test_phone_calls_phone_through_kamailio(self) -> Any:
        """alice -> SBC -> Kamailio (407, lookup bob) -> SBC's token for bob -> bob's phone."""
        yield self.start_access()
        alice = yield self.registered_baresip()
        bob = yield self.registered_baresip("bob")
        yield alice.dial("sip:bob@core.test")
        yield bob.wait_call_established()
        yield alice.wait_call_established()
        yield alice.hangup()
        yield bob.wait_call_closed()
        yield alice.wait_call_closed()
        yield self.kamailio.settle()
        relays = [e.text for e in self.kamailio.log_events("relay") if e.text.startswith("INVITE")]
        self.assertEqual(len(relays), 1, self.context())
        self.assertRegex(
            relays[0], "^INVITE " + TOKEN_CONTACT.format(port=self.sbc_process.port("pbx"))
        )
        messages = bob.sip_messages()
        register = next(m for m in messages if m.sent and m.is_request("REGISTER"))
        invite = next(m for m in messages if not m.sent and m.is_request("INVITE"))
        self.assertEqual(invite.destination, register.source, bob.describe())
        self.assertIn("From: <sip:alice@core.test>", invite.text)

    @defer.inlineCallbacks
    def test_linphonec_registers_and_answers_through_the_sbc(self) -> Any:
        """linphonec: it changes its Contact after the 401; one binding at Kamailio and the SBC.

        linphonec learns its connection's port from the 401 and retries with a
        Contact on that port: the relay gives the new Contact a token of its
        own; Kamailio saves only that one, and a call through it connects.
        """
        yield self.start_access()
        phone = self.linphonec(
            identity="sip:alice@core.test",
            username="alice",
            password=PASSWORDS["alice"],
            realm="core.test",
        )
        yield phone.start()
        yield phone.wait_registered()
        location = yield self.kamailio.location()
        token = TOKEN_CONTACT.format(port=self.sbc_process.port("pbx"))
        self.assertEqual(len(location), 1, location)
        self.assertRegex(location[0].address, f"^{token}$")
        self.assertTrue(location[0].user_agent.startswith("Linphone"), location)
        rows = yield self.bindings()
        self.assertEqual(
            [(r.aor, r.registrar) for r in rows], [("alice@core.test", "relayed to pbx")]
        )
        caller = self.kamailio_caller("phones_uac.xml")
        yield phone.wait_answered()
        yield self.sipp_succeeds(caller)
        yield phone.wait_call_ended()

    @defer.inlineCallbacks
    def test_unregister_removes_the_binding_at_kamailio_and_the_sbc(self) -> Any:
        """baresip deletes its account (``uadel``): expires=0 through the 401, nothing left."""
        yield self.start_access()
        phone = yield self.registered_baresip()
        response = yield phone.command("uadel", phone.aor)
        self.assertTrue(response.get("ok"), response)
        yield self.sbc_logged(r"removed \S+ for alice@core\.test .*: unregistered \(expires 0\)")
        location = yield self.kamailio.location()
        self.assertEqual(location, [], self.context())
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())
        yield self.kamailio.settle()
        received = self.kamailio.requests("REGISTER")
        self.assertEqual(
            [("auth [alice]" in e.text, "expires=0" in e.text) for e in received],
            [(False, False), (True, False), (False, True), (True, True)],
            self.context(),
        )
        # the connection is still up: the binding went with the unregistration
        self.assertNotIn("connection closed", self.sbc_process.output())

    @defer.inlineCallbacks
    def test_stale_binding_at_kamailio_gets_404_from_the_sbc(self) -> Any:
        """baresip killed: its binding ends at the SBC, Kamailio's stays; a call to it gets 404."""
        yield self.start_access()
        phone = yield self.registered_baresip()
        assert phone.child is not None
        yield phone.child.stop(signal.SIGKILL)
        yield self.sbc_logged(r"removed \S+ for alice@core\.test .*: connection closed")
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())
        location = yield self.kamailio.location()
        self.assertEqual(len(location), 1, location)
        caller = self.kamailio_caller("access_uac_404.xml")
        yield self.sipp_succeeds(caller)
        yield self.kamailio.settle()
        replies = [e.text for e in self.kamailio.log_events("reply") if e.text.startswith("404")]
        sbc = f"{HOST}:{self.sbc_process.port('pbx')}"
        self.assertEqual(replies, [f"404 Not Found - registration ended to INVITE from {sbc}"])

    @defer.inlineCallbacks
    def test_expired_binding_gets_404_from_the_sbc(self) -> Any:
        """baresip frozen (``regint=2``): its binding expires at the SBC after 2 s.

        Kamailio raised the 2 s to its minimum of 60 and still holds the
        binding; the SBC told the phone 2 s (what it asked) and ends its own
        binding then, with its connection still open: a call gets 404.
        """
        yield self.start_access()
        phone = yield self.registered_baresip(regint=2)
        assert phone.child is not None
        process = phone.child.process
        process.signalProcess(signal.SIGSTOP)

        def resume() -> None:
            with contextlib.suppress(ProcessExitedAlready):
                process.signalProcess(signal.SIGCONT)

        self.addCleanup(resume)
        yield self.sbc_logged(r"expired \S+ for alice@core\.test .*relayed to pbx")
        location = yield self.kamailio.location()
        self.assertEqual(len(location), 1, location)
        assert location[0].expires is not None
        self.assertGreater(location[0].expires, 50)
        caller = self.kamailio_caller("access_uac_404.xml")
        yield self.sipp_succeeds(caller)
        self.assertNotIn("connection closed", self.sbc_process.output())

    @defer.inlineCallbacks
    def test_interval_too_brief_retry_keeps_the_call_id(self) -> Any:
        """Kamailio wants 120 s at least (423): baresip's retry passes without a new challenge.

        Kamailio ties its nonce to the Call-ID and From tag: the SBC must send
        the retry after the 423 on the same outbound dialog as the challenged
        REGISTER, or the credentials are refused with another 401.
        """
        yield self.start_access(min_expires=120, interval_too_brief=True)
        phone = self.baresip(
            aor="sip:alice@core.test", auth_user="alice", auth_pass=PASSWORDS["alice"], regint=60
        )
        yield phone.start()
        yield phone.wait_registered()
        answers = [
            m for m in phone.sip_messages() if not m.sent and m.first_line.startswith("SIP/2.0")
        ]
        self.assertEqual(
            [m.first_line for m in answers],
            ["SIP/2.0 401 Unauthorized", "SIP/2.0 423 Interval Too Brief", "SIP/2.0 200 OK"],
            phone.describe(),
        )
        self.assertEqual(answers[1].header("Min-Expires"), ["120"])
        yield self.kamailio.settle()
        received = self.kamailio.requests("REGISTER")
        self.assertEqual(len(received), 3, self.context())
        self.assertEqual(len({_field(e, "call-id") for e in received}), 1, self.context())
        self.assertEqual(len({_field(e, "from-tag") for e in received}), 1, self.context())
        self.assertEqual(len(self.kamailio.log_events("challenge")), 1, self.context())
        location = yield self.kamailio.location()
        self.assertEqual([b.aor for b in location], ["alice"])
        rows = yield self.bindings()
        self.assertEqual([r.expires for r in rows], ["120s"], rows)

    @defer.inlineCallbacks
    def test_refused_register_leaves_nothing(self) -> Any:
        """Kamailio refuses mallory (403 after her digest): baresip sees 403; no binding left."""
        yield self.start_access()
        phone = self.baresip(
            aor="sip:mallory@core.test", auth_user="mallory", auth_pass=PASSWORDS["mallory"]
        )
        yield phone.start()
        reason = yield phone.wait_register_failed(seconds=20.0)
        self.assertRegex(reason, r"^403 Forbidden", phone.describe())
        statuses = [
            m.first_line for m in phone.sip_messages() if not m.sent and m.is_response(401)
        ] + [m.first_line for m in phone.sip_messages() if not m.sent and m.is_response(403)]
        self.assertEqual(statuses, ["SIP/2.0 401 Unauthorized", "SIP/2.0 403 Forbidden"])
        yield self.kamailio.settle()
        received = self.kamailio.requests("REGISTER")
        self.assertEqual(len(received), 2, self.context())
        self.assertEqual(self.kamailio.log_events("saved"), [])
        location = yield self.kamailio.location()
        self.assertEqual(location, [], self.context())
        rows = yield self.bindings()
        self.assertEqual(rows, [], self.context())
        self.assertNotRegex(self.sbc_process.output(), r"sbc\.registrar#info\] added")


class ThrottlingTests(AccessTestCase):
    """``register-refresh-min``: refreshes answered by the SBC while Kamailio's binding lasts."""

    REFRESHES = 10

    @defer.inlineCallbacks
    def scripted_phone(self) -> Any:
        client = yield connect_stream(
            self, self.sbc_process.port("phones"), _server_only_tls(self.pki.cert("ca"))
        )
        # a phone behind NAT asks for little: it refreshes often to keep its pinhole open
        phone = ScriptedPhone(client, "alice", PASSWORDS["alice"], expires=60)
        ok = yield phone.register()
        self.assertEqual(ok.status, 200, self.context())
        return phone

    @defer.inlineCallbacks
    def refresh(self, phone: ScriptedPhone) -> Any:
        """``REFRESHES`` refreshes back to back, each answered 200 with the phone's Contact."""
        for _ in range(self.REFRESHES):
            response = yield phone.transact()
            self.assertEqual(response.status, 200, self.context())
            [contact] = response.header("Contact")
            self.assertRegex(contact, rf"^{re.escape(phone.contact)};expires=\d+$")

    @defer.inlineCallbacks
    def test_without_throttling_every_refresh_reaches_kamailio(self) -> Any:
        """The baseline: 10 refreshes on one connection, 10 more REGISTERs at Kamailio."""
        yield self.start_access()
        phone = yield self.scripted_phone()
        yield self.kamailio.settle()
        before = len(self.kamailio.requests("REGISTER"))
        yield self.refresh(phone)
        self.assertEqual(before, 2)
        yield self.kamailio.settle()
        self.assertEqual(len(self.kamailio.requests("REGISTER")) - before, self.REFRESHES)
        counters = yield sbc_counters(self.sbc_process, "phones")
        self.assertEqual(counters.get("register-forwarded"), 2 + self.REFRESHES, counters)
        self.assertEqual(counters.get("register-answered-locally", 0), 0, counters)

    @defer.inlineCallbacks
    def test_with_throttling_refreshes_are_answered_by_the_sbc(self) -> Any:
        """``register-refresh-min 60``: Kamailio asked for 120 s; 10 refreshes reach it 0 times."""
        yield self.start_access(refresh_min=60)
        phone = yield self.scripted_phone()
        yield self.kamailio.settle()
        received = self.kamailio.requests("REGISTER")
        self.assertEqual(len(received), 2)
        self.assertRegex(received[1].text, r"contact <[^>]+>;expires=120 ")
        yield self.refresh(phone)
        yield self.kamailio.settle()
        self.assertEqual(len(self.kamailio.requests("REGISTER")), 2, self.context())
        counters = yield sbc_counters(self.sbc_process, "phones")
        self.assertEqual(counters.get("register-forwarded"), 2, counters)
        self.assertEqual(counters.get("register-answered-locally"), self.REFRESHES, counters)
        location = yield self.kamailio.location()
        self.assertEqual(len(location), 1, location)
        assert location[0].expires is not None
        self.assertGreater(location[0].expires, 60)

    @defer.inlineCallbacks
    def test_baresip_refreshes_reach_kamailio_at_most_once(self) -> Any:
        """baresip with ``regint=3`` refreshes every 2.7 s: of 10, at most one reaches Kamailio.

        Measured: none does (Kamailio sees the first REGISTER and its retry
        with credentials, then nothing). At most one rather than none: a
        refresh that comes after the phone's 3 s have run out (a loaded
        machine) starts a new registration, which goes to Kamailio, as it must.
        """
        yield self.start_access(refresh_min=60)
        phone = yield self.registered_baresip(regint=3)

        def refreshed() -> bool:
            oks = [m for m in phone.sip_messages() if not m.sent and m.is_response(200, "REGISTER")]
            return len(oks) >= 1 + self.REFRESHES

        yield poll_until(refreshed, 90.0, "baresip's refreshes", phone.describe)
        yield self.kamailio.settle()
        saved = self.kamailio.log_events("saved")
        self.assertLessEqual(len(saved) - 1, 1, self.context())
        counters = yield sbc_counters(self.sbc_process, "phones")
        self.assertGreaterEqual(
            counters.get("register-answered-locally", 0), self.REFRESHES - 1, counters
        )

    @defer.inlineCallbacks
    def test_refresh_forwarded_before_kamailio_binding_ends(self) -> Any:
        """``register-refresh-min 3``, Kamailio grants 6 s: refreshes go on when 3 s or less remain.

        baresip (``regint=2``) refreshes every 1.8 s; the SBC answers some
        itself and forwards the others in time: Kamailio's binding never lapses.
        """
        yield self.start_access(refresh_min=3, min_expires=1)
        yield self.registered_baresip(regint=2)
        for _ in range(16):  # 8 s: longer than one binding of Kamailio's
            location = yield self.kamailio.location()
            self.assertEqual([b.aor for b in location], ["alice"], self.context())
            assert location[0].expires is not None
            self.assertLessEqual(location[0].expires, 6)
            yield pause(0.5)
        counters = yield sbc_counters(self.sbc_process, "phones")
        self.assertGreaterEqual(counters.get("register-answered-locally", 0), 1, counters)
        # the first registration (2: the 401 and the retry), then at least one refresh (2)
        self.assertGreaterEqual(counters.get("register-forwarded", 0), 4, counters)


class DelegatedAuthenticationCallTests(AccessTestCase):
    """baresip calls through the SBC; Kamailio's 407 reaches it, its retry is accepted (§3)."""

    @defer.inlineCallbacks
    def test_baresip_calls_bob_kamailio_challenges_once(self) -> Any:
        """INVITE -> 407 (Kamailio), retry on the same outbound Call-ID and From tag -> bob."""
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="u1", keys={"contact_scheme": "sip"}
        )
        yield self.start_access(bob=f"sip:{HOST}:{callee.port}")
        phone = yield self.registered_baresip()
        yield phone.dial("sip:bob@core.test")
        yield phone.wait_call_established()
        yield phone.hangup()
        yield self.sipp_succeeds(callee)
        yield phone.wait_call_closed()

        messages = phone.sip_messages()
        invites = [m for m in messages if m.sent and m.is_request("INVITE")]
        self.assertEqual(len(invites), 2, phone.describe())
        self.assertFalse(invites[0].header("Proxy-Authorization"))
        self.assertTrue(invites[1].header("Proxy-Authorization"))
        challenges = [
            m for m in messages if not m.sent and (m.is_response(401) or m.is_response(407))
        ]
        # one 401 on the REGISTER, one 407 on the first INVITE: never two on one request
        self.assertEqual(
            [(m.first_line, m.header("CSeq")[0]) for m in challenges],
            [
                ("SIP/2.0 401 Unauthorized", registers_cseq(messages)),
                ("SIP/2.0 407 Proxy Authentication Required", invites[0].header("CSeq")[0]),
            ],
        )
        [proxy_challenge] = challenges[1].header("Proxy-Authenticate")
        self.assertRegex(proxy_challenge, r'^Digest realm="core\.test", nonce="[^"]+"')

        # what Kamailio received: one dialog (Call-ID, From tag), CSeq + 1, the nonce accepted
        yield self.kamailio.settle()
        received = self.kamailio.requests("INVITE")
        self.assertEqual(len(received), 2, self.context())
        self.assertEqual(len({_field(e, "call-id") for e in received}), 1, self.context())
        self.assertEqual(len({_field(e, "from-tag") for e in received}), 1, self.context())
        self.assertEqual(int(_field(received[1], "cseq")), int(_field(received[0], "cseq")) + 1)
        self.assertEqual(
            [e.text.split()[0] for e in self.kamailio.log_events("challenge")], ["401", "407"]
        )
        # baresip dials sip:bob@core.test;transport=tls; the SBC keeps the Request-URI
        # (the digest's uri covers it) on the UDP leg too
        relays = [e.text for e in self.kamailio.log_events("relay") if e.text.startswith("INVITE")]
        self.assertEqual(
            relays, [f"INVITE sip:bob@core.test;transport=tls to [sip:{HOST}:{callee.port}]"]
        )
        [credentials] = invites[1].header("Proxy-Authorization")
        self.assertIn('uri="sip:bob@core.test;transport=tls"', credentials)
        counters = yield sbc_counters(self.sbc_process, "phones")
        self.assertEqual(counters.get("auth-challenges", 0), 0, counters)


def registers_cseq(messages: list[Any]) -> str:
    """The CSeq of baresip's first REGISTER (the one Kamailio challenged)."""
    first = next(m for m in messages if m.sent and m.is_request("REGISTER"))
    return str(first.header("CSeq")[0])


def _server_only_tls(ca: str) -> Any:
    """Client TLS that verifies the SBC (sbc.lab.test) and presents no certificate."""
    with open(ca, "rb") as f:
        trust = twisted_ssl.Certificate.loadPEM(f.read())
    return twisted_ssl.optionsForClientTLS(SBC_NAME, trustRoot=trust)


#: docs/phones.md, whose Kamailio example the last tests run as it is written.
PHONES_DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "docs",
    "phones.md",
)
#: The passwords in that example.
DOCUMENTED_PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}


def documented_kamailio_config(port: int, ctl_socket: str, modules: str) -> str:
    """docs/phones.md's Kamailio registrar, moved to 127.0.0.1:``port`` and ``core.test``.

    Only the address, the module path, the domain and the ctl socket (its
    default is under /run) change; the test fails if the example no longer
    has them where they were.
    """
    with open(PHONES_DOC, encoding="utf-8") as f:
        blocks = re.findall(r"^```\n(#!KAMAILIO\n.*?)^```", f.read(), re.M | re.S)
    if len(blocks) != 1:
        raise FailTest(f"docs/phones.md has {len(blocks)} Kamailio examples, expected 1")
    text = blocks[0]
    changes = (
        ("listen=udp:10.0.0.20:5060", f"listen=udp:{HOST}:{port}"),
        ('alias="example.com"', 'alias="core.test"'),
        (
            'loadmodule "ctl.so"\n',
            f'loadmodule "ctl.so"\nmodparam("ctl", "binrpc", "unix:{ctl_socket}")\n',
        ),
    )
    for old, new in changes:
        if old not in text:
            raise FailTest(f"docs/phones.md's Kamailio example has no {old!r}")
        text = text.replace(old, new)
    text, found = re.subn(r'^mpath=".*"$', f'mpath="{modules}/"', text, flags=re.M)
    if found != 1:
        raise FailTest("docs/phones.md's Kamailio example has no mpath line")
    return text


class DocumentedKamailioTests(AccessTestCase):
    """docs/phones.md's Kamailio example, run as written, behind the access SBC."""

    @defer.inlineCallbacks
    def test_documented_registrar_registers_and_calls(self) -> Any:
        """alice and bob register through the SBC; SIPp -> alice; alice -> bob (407 once)."""
        yield self.start_access(kamailio=launch_kamailio(self, documented_kamailio_config))
        alice = yield self.registered_baresip(password=DOCUMENTED_PASSWORDS["alice"])
        bob = yield self.registered_baresip("bob", DOCUMENTED_PASSWORDS["bob"])
        location = yield self.kamailio.location()
        token = TOKEN_CONTACT.format(port=self.sbc_process.port("pbx"))
        self.assertEqual(sorted(b.aor for b in location), ["alice", "bob"], location)
        for binding in location:
            self.assertRegex(binding.address, f"^{token}$")

        caller = self.kamailio_caller("phones_uac.xml")
        yield alice.wait_call_established()
        yield self.sipp_succeeds(caller)
        yield alice.wait_call_closed()

        yield alice.dial("sip:bob@core.test")
        yield bob.wait_call_established()
        yield alice.wait_call_established()
        yield alice.hangup()
        yield bob.wait_call_closed()
        challenges = [
            m.first_line
            for m in alice.sip_messages()
            if not m.sent and (m.is_response(401) or m.is_response(407))
        ]
        self.assertEqual(
            challenges, ["SIP/2.0 401 Unauthorized", "SIP/2.0 407 Proxy Authentication Required"]
        )

    @defer.inlineCallbacks
    def test_documented_registrar_refuses_a_wrong_user(self) -> Any:
        """bob's password used to register alice: 403 from the example's user check."""
        yield self.start_access(kamailio=launch_kamailio(self, documented_kamailio_config))
        phone = self.baresip(
            aor="sip:alice@core.test", auth_user="bob", auth_pass=DOCUMENTED_PASSWORDS["bob"]
        )
        yield phone.start()
        reason = yield phone.wait_register_failed(seconds=20.0)
        self.assertRegex(reason, r"^403 ", phone.describe())
        location = yield self.kamailio.location()
        self.assertEqual(location, [])
