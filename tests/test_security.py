"""The seed's security rules as decision tables (docs/security-model.md)."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from sbc import security
from sbc.config import AdjacencyConfig, Security
from sbc.errors import SipError
from sbc.identity import PeerIdentities

U = Security.UNTRUSTED
TE = Security.TRUSTED_ENCRYPTED
TU = Security.TRUSTED_UNENCRYPTED


def adjacency(name: str, inbound: Security, outbound: Security, attached: bool) -> AdjacencyConfig:
    return AdjacencyConfig(
        name=name,
        signaling_address="127.0.0.1",
        security_inbound=inbound,
        security_outbound=outbound,
        attached=attached,
    )


# (inbound security of the caller's adjacency, outbound security of the only
#  candidate, Request-URI scheme, candidate attached) -> outcome.
# "routed": the call may leave through the candidate.
# "403/380", "480/380", "480": the response the caller gets.
def expected(inbound: Security, outbound: Security, scheme: str, attached: bool) -> str:
    secure = scheme == "sips"
    if secure and inbound is U:
        return "403/380"  # untrusted caller, secure target: rejected before routing
    if not attached:
        return "480/380" if secure else "480"  # only attached adjacencies count
    if secure:
        return "routed" if outbound in (TE, TU) else "480/380"
    return "routed" if outbound in (U, TU) else "480"


# The same table, written out by hand as the seed states it, for the cases an
# operator asks about first. The generated table above must agree with it.
SEED_ROWS = [
    # inbound, outbound, scheme, attached, outcome
    (U, U, "sip", True, "routed"),  # insecure call out of an untrusted adjacency
    (U, TE, "sip", True, "480"),  # trusted-encrypted carries only secure calls
    (U, TU, "sip", True, "routed"),  # trusted-unencrypted carries both
    (U, TE, "sips", True, "403/380"),  # untrusted caller may not reach a secure target
    (TE, TE, "sips", True, "routed"),
    (TE, TU, "sips", True, "routed"),  # endpoints without TLS may join secure calls
    (TE, U, "sips", True, "480/380"),  # a secure call never leaks onto an insecure hop
    (TU, U, "sips", True, "480/380"),
    (TU, TE, "sip", True, "480"),
    (TE, TE, "sips", False, "480/380"),  # detached adjacencies are never candidates
]


def outcome(inbound: Security, outbound: Security, scheme: str, attached: bool) -> str:
    caller = adjacency("in", inbound, inbound, True)
    candidate = adjacency("out", outbound, outbound, attached)
    try:
        chosen = security.secure_destinations(caller, scheme, [candidate])
    except SipError as error:
        return f"{error.status}/{error.warning[0]}" if error.warning else str(error.status)
    assert chosen == [candidate]
    return "routed"


class DecisionTableTests(SynchronousTestCase):
    def test_every_combination(self) -> None:
        """3 inbound x 3 outbound x 2 schemes x attached or not: 36 exact outcomes."""
        rows = list(itertools.product((U, TE, TU), (U, TE, TU), ("sip", "sips"), (True, False)))
        self.assertEqual(len(rows), 36)
        for row in rows:
            self.assertEqual(outcome(*row), expected(*row), row)

    def test_seed_rows(self) -> None:
        for inbound, outbound, scheme, attached, result in SEED_ROWS:
            row = (inbound, outbound, scheme, attached)
            self.assertEqual(outcome(*row), result, row)
            self.assertEqual(expected(*row), result, row)

    def test_independent_inbound_and_outbound_sides(self) -> None:
        """Caller trust follows the inbound side; the filter follows the outbound side."""
        caller = adjacency("in", TE, U, True)  # trusted inbound, untrusted outbound
        self.assertTrue(security.caller_is_trusted(caller))
        self.assertFalse(security.may_send_out_of(caller, secure_target=True))
        self.assertTrue(security.may_send_out_of(caller, secure_target=False))
        other = adjacency("x", U, TE, True)
        self.assertFalse(security.caller_is_trusted(other))
        self.assertTrue(security.may_send_out_of(other, secure_target=True))

    def test_candidate_order_is_kept(self) -> None:
        candidates = [adjacency(n, TU, TU, True) for n in ("c", "a", "b")]
        caller = adjacency("in", TE, TE, True)
        chosen = security.secure_destinations(caller, "sips", candidates)
        self.assertEqual([a.name for a in chosen], ["c", "a", "b"])

    def test_responses_carry_the_rfc5630_warnings(self) -> None:
        with self.assertRaises(SipError) as caught:
            security.admit(caller_trusted=False, secure_target=True)
        self.assertEqual(
            (caught.exception.status, caught.exception.reason, caught.exception.warning),
            (403, "Forbidden", (380, "SIPS Not Allowed")),
        )
        self.assertEqual(security.no_route(True).warning, (380, "SIPS Not Allowed"))
        self.assertIsNone(security.no_route(False).warning)
        self.assertEqual(security.no_route(False).status, 480)


class SchemeTests(SynchronousTestCase):
    def test_target_security_from_scheme(self) -> None:
        self.assertTrue(security.requires_secure_target("sips"))
        self.assertTrue(security.requires_secure_target("SIPS"))
        self.assertFalse(security.requires_secure_target("sip"))
        self.assertFalse(security.requires_secure_target("tel"))

    def test_outbound_keeps_scheme(self) -> None:
        self.assertEqual(security.outbound_scheme("sips"), "sips")
        self.assertEqual(security.outbound_scheme("SIP"), "sip")


class RedirectTests(SynchronousTestCase):
    def status(self, error: SipError | None) -> str | None:
        if error is None:
            return None
        return f"{error.status}/{error.warning[0]}" if error.warning else str(error.status)

    def test_secure_call_redirected_to_sip_contact(self) -> None:
        self.assertEqual(self.status(security.check_redirect(["sips", "sip"], True)), "480/380")

    def test_insecure_call_redirected_to_sips_contact(self) -> None:
        self.assertEqual(self.status(security.check_redirect(["sip", "sips"], False)), "480/381")

    def test_same_scheme_contacts_followed(self) -> None:
        self.assertIsNone(security.check_redirect(["sips", "SIPS"], True))
        self.assertIsNone(security.check_redirect(["sip"], False))

    def test_target_refresh_scheme_change(self) -> None:
        error = security.check_target_refresh("sips", "sip")
        self.assertEqual(error.status if error else None, 400)
        self.assertIsNotNone(security.check_target_refresh("sip", "sips"))
        self.assertIsNone(security.check_target_refresh("sip", "SIP"))


class RegistrationTests(SynchronousTestCase):
    def test_sips_aor_with_sip_contact_refused(self) -> None:
        error = security.check_registration("sips", ["sips", "sip"])
        self.assertEqual(error.status if error else None, 400)

    def test_sips_aor_with_sips_contacts_and_sip_aor_accepted(self) -> None:
        self.assertIsNone(security.check_registration("sips", ["sips"]))
        self.assertIsNone(security.check_registration("sips", []))  # "*" or a query
        self.assertIsNone(security.check_registration("sip", ["sip", "sips"]))


class FromDomainTests(SynchronousTestCase):
    def test_plain_transport_has_nothing_to_check(self) -> None:
        self.assertTrue(security.from_domain_matches(None, "anything.test"))

    def test_tls_peer_must_vouch_for_from_domain(self) -> None:
        peer = PeerIdentities(sip_domains=("lab.test",), dns_names=("other.test",))
        self.assertTrue(security.from_domain_matches(peer, "LAB.test"))
        self.assertFalse(security.from_domain_matches(peer, "other.test"))
        self.assertFalse(security.from_domain_matches(peer, "sub.lab.test"))


class SipOverTlsTests(SynchronousTestCase):
    """sip-over-tls (docs/security-model.md): sip: over a TLS adjacency, seed rules kept."""

    def phones(self, sip_over_tls: bool = True) -> AdjacencyConfig:
        return AdjacencyConfig(
            name="phones",
            signaling_address="127.0.0.1",
            security_inbound=TE,
            security_outbound=TE,
            attached=True,
            sip_over_tls=sip_over_tls,
        )

    def test_insecure_call_from_a_trusted_caller_may_leave(self) -> None:
        self.assertTrue(security.may_send_out_of(self.phones(), False, caller_trusted=True))
        self.assertTrue(security.may_send_out_of(self.phones(), True, caller_trusted=True))

    def test_untrusted_caller_never_leaves_through_trusted_encrypted(self) -> None:
        self.assertFalse(security.may_send_out_of(self.phones(), False, caller_trusted=False))
        caller = adjacency("in", U, U, True)
        with self.assertRaises(SipError) as raised:
            security.secure_destinations(caller, "sip", [self.phones()])
        self.assertEqual(raised.exception.status, 480)

    def test_without_the_flag_the_seed_rule_holds(self) -> None:
        self.assertFalse(security.may_send_out_of(self.phones(False), False, caller_trusted=True))

    def test_reached_over_tls(self) -> None:
        self.assertTrue(security.reached_over_tls(self.phones(), "TLS"))
        self.assertFalse(security.reached_over_tls(self.phones(), "TCP"))
        self.assertFalse(security.reached_over_tls(self.phones(False), "TLS"))
        self.assertFalse(security.reached_over_tls(None, "TLS"))

    def test_sip_contact_over_tls_is_no_downgrade(self) -> None:
        self.assertIsNone(security.check_redirect(["sip"], True, over_tls=True))
        self.assertIsNotNone(security.check_redirect(["sip"], True, over_tls=False))
        self.assertIsNone(security.check_target_refresh("sips", "sip", over_tls=True))
        self.assertIsNotNone(security.check_target_refresh("sips", "sip", over_tls=False))
        self.assertIsNone(security.check_registration("sips", ["sip"], over_tls=True))
        # an insecure call still refuses a SIPS Contact (481 Warning 381)
        error = security.check_redirect(["sips"], False, over_tls=True)
        self.assertEqual(error.warning if error else None, security.SIPS_REQUIRED)
        # other schemes are never secure
        self.assertIsNotNone(security.check_redirect(["tel"], True, over_tls=True))

    def test_registered_contact_usable(self) -> None:
        self.assertTrue(security.registered_contact_usable("sip", "sip", False))
        self.assertTrue(security.registered_contact_usable("sips", "sips", False))
        self.assertFalse(security.registered_contact_usable("sips", "sip", False))
        self.assertTrue(security.registered_contact_usable("sips", "sip", True))
        self.assertFalse(security.registered_contact_usable("sip", "sips", True))


def link(
    security_level: Security, attached: bool = True, identity: str | None = None
) -> AdjacencyConfig:
    return AdjacencyConfig(
        name="cluster",
        signaling_address="127.0.0.1",
        security_inbound=security_level,
        security_outbound=security_level,
        attached=attached,
        cluster_link=True,
        cluster_identity=identity,
    )


class ClusterLinkTests(SynchronousTestCase):
    """The cluster hop between SBC nodes (docs/security-model.md, "The cluster link")."""

    def test_never_a_routing_destination(self) -> None:
        for level in (TE, TU):
            for secure, trusted in itertools.product((False, True), (False, True)):
                self.assertFalse(security.may_send_out_of(link(level), secure, trusted))

    def test_which_calls_may_cross(self) -> None:
        rows = [
            # link security, attached, secure target, may cross
            (TE, True, True, True),
            (TE, True, False, True),  # an insecure call rides the TLS link (the holder decides)
            (
                TU,
                True,
                True,
                True,
            ),  # a private link carries secure calls, as any trusted-unencrypted
            (TU, True, False, True),
            (U, True, True, False),  # an insecure link never carries a SIPS call
            (U, True, False, False),  # nor anything (the configuration refuses one anyway)
            (TE, False, True, False),  # detached
        ]
        for level, attached, secure, allowed in rows:
            self.assertEqual(
                security.may_cross_cluster(link(level, attached), secure),
                allowed,
                (level, attached, secure),
            )
        plain = adjacency("phones", TE, TE, True)
        self.assertFalse(security.may_cross_cluster(plain, True))

    def test_the_caller_class_is_carried_never_raised(self) -> None:
        self.assertTrue(security.cluster_caller_trusted(link(TE), True))
        self.assertFalse(security.cluster_caller_trusted(link(TE), False))
        self.assertFalse(security.cluster_caller_trusted(link(TU), False))
        self.assertFalse(security.cluster_caller_trusted(link(U), True))
        self.assertFalse(security.cluster_caller_trusted(adjacency("x", TE, TE, True), True))

    def test_the_peer_certificate_names_the_cluster(self) -> None:
        nodes = PeerIdentities(sip_domains=("nodes.lab.test",))
        other = PeerIdentities(sip_domains=("lab.test",))
        tls = link(TE, identity="nodes.lab.test")
        self.assertTrue(security.cluster_peer_matches(tls, nodes))
        self.assertFalse(security.cluster_peer_matches(tls, other))
        self.assertFalse(security.cluster_peer_matches(tls, None))
        self.assertFalse(security.cluster_peer_matches(link(TE), nodes))  # no identity: nothing
        self.assertTrue(security.cluster_peer_matches(link(TU), None))

    def test_no_authentication_step_on_the_link(self) -> None:
        step = security.authentication_step(link(TE, identity="n"), False, anonymous_tls=True)
        self.assertIs(step, security.AuthenticationStep.NONE)
