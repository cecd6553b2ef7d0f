"""Tests for sbc.config.validate: whole-configuration checks and the security-change rule."""

from __future__ import annotations

import textwrap

import attrs
from twisted.trial.unittest import SynchronousTestCase

from sbc.config import (
    SECURITY_CHANGE_MESSAGE,
    AdjacencyConfig,
    SbcConfig,
    Security,
    find_problems,
    parse_config,
    security_changes_while_attached,
    validate,
)
from sbc.errors import ConfigError

GOOD = """\
sbc s
 sbe
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   remote-address ipv4 127.0.0.0/8
   attach
  adjacency sip core
   signaling-address ipv4 127.0.0.1
   security trusted-encrypted
   attach
  adjacency sip trunk
   signaling-address ipv4 127.0.0.1
   remote-address ipv4 10.0.0.0/8
   security trusted-unencrypted
  call-policy-set 1
   first-call-routing-table src
   rtg-src-adjacency-table src
    entry 1
     match-adjacency access
     action next-table num
   rtg-dst-address-table num
    entry 1
     match-address 44
     dst-adjacency core
     action complete
  active-call-policy-set 1
  routing-policy default
"""
"""Valid with a certificate. Lines: access 3, core 7, trunk 11, set 15, table src 17."""


def parsed(text: str) -> SbcConfig:
    return parse_config(textwrap.dedent(text), "v.conf")


class ValidateTestCase(SynchronousTestCase):
    def assertInvalid(
        self,
        text: str,
        line: int,
        *fragments: str,
        certificate_configured: bool = True,
        routing_policies: tuple[str, ...] = ("default", "round-robin", "least-calls"),
    ) -> ConfigError:
        cfg = parsed(text)
        err = self.assertRaises(
            ConfigError,
            validate,
            cfg,
            certificate_configured=certificate_configured,
            routing_policies=routing_policies,
        )
        self.assertEqual(err.path, "v.conf")
        self.assertEqual(err.line, line, str(err))
        for fragment in fragments:
            self.assertIn(fragment, err.message)
        return err


class GoodConfigTests(ValidateTestCase):
    def test_good_config_passes(self) -> None:
        validate(parsed(GOOD), certificate_configured=True)
        self.assertEqual(find_problems(parsed(GOOD), certificate_configured=True), [])

    def test_no_routing_at_all_passes(self) -> None:
        validate(parsed("sbc s\n"), certificate_configured=False)

    def test_validate_returns_none_and_changes_nothing(self) -> None:
        cfg = parsed(GOOD)
        self.assertIsNone(validate(cfg, certificate_configured=True))
        self.assertEqual(cfg, parsed(GOOD))


class CertificateTests(ValidateTestCase):
    def test_trusted_encrypted_needs_a_certificate(self) -> None:
        self.assertInvalid(
            GOOD,
            9,
            "adjacency 'core' is trusted-encrypted but no certificate is configured",
            certificate_configured=False,
        )

    def test_outbound_only_also_needs_it(self) -> None:
        text = GOOD.replace(
            "   security trusted-encrypted\n", "   security outbound trusted-encrypted\n"
        )
        self.assertInvalid(text, 9, "no certificate", certificate_configured=False)

    def test_no_certificate_fine_without_tls(self) -> None:
        text = GOOD.replace("   security trusted-encrypted\n", "   security trusted-unencrypted\n")
        text = text.replace(
            "   remote-address ipv4 10.0.0.0/8\n", "   remote-address ipv4 10.0.0.0/9\n"
        )
        validate(parsed(text), certificate_configured=False)


class TransportTests(ValidateTestCase):
    def test_tls_over_udp_refused(self) -> None:
        text = GOOD.replace(
            "   security trusted-encrypted\n", "   security trusted-encrypted\n   transport udp\n"
        )
        self.assertInvalid(text, 10, "trusted-encrypted but uses transport udp", "TCP only")

    def test_tls_over_tcp_accepted(self) -> None:
        for transport in ("tcp", "udp-tcp"):
            text = GOOD.replace(
                "   security trusted-encrypted\n",
                f"   security trusted-encrypted\n   transport {transport}\n",
            )
            validate(parsed(text), certificate_configured=True)

    def test_outbound_tls_over_udp_refused(self) -> None:
        text = GOOD.replace(
            "   security trusted-encrypted\n",
            "   security outbound trusted-encrypted\n   transport udp\n",
        )
        self.assertInvalid(text, 10, "transport udp")

    def test_inbound_tls_with_plain_outbound_accepted(self) -> None:
        """behaviour.md §2: it listens on TLS and sends over its transport (UDP too)."""
        for transport in ("", "   transport udp\n", "   transport tcp\n"):
            text = GOOD.replace(
                "   security trusted-encrypted\n",
                f"   security trusted-encrypted\n   security outbound untrusted\n{transport}",
            )
            config = parsed(text)
            validate(config, certificate_configured=True)
            [core] = [a for a in config.adjacencies if a.name == "core"]
            self.assertEqual(core.security_display, "inbound Trusted-Encrypted, outbound Untrusted")

    def test_remote_address_family(self) -> None:
        text = GOOD.replace(
            "   remote-address ipv4 127.0.0.0/8\n", "   remote-address ipv6 ::1/128\n"
        )
        self.assertInvalid(text, 5, "remote-address ::1/128 is IPv6", "signaling-address is IPv4")


PHONES = """\
sbc s
 sbe
  user-database users
  adjacency sip phones
   signaling-address ipv4 127.0.0.1
   security trusted-encrypted
   client-certificate optional
   authentication digest
   digest-algorithms md5
   sip-over-tls
   attach
"""
"""Valid with a certificate. Lines: user-database 3, phones 4, client-certificate 7."""


class AccessSettingTests(ValidateTestCase):
    def test_phones_adjacency_is_valid(self) -> None:
        validate(parsed(PHONES), certificate_configured=True)

    def test_client_certificate_needs_inbound_tls(self) -> None:
        text = PHONES.replace(
            "   security trusted-encrypted\n", "   security outbound trusted-encrypted\n"
        )
        self.assertInvalid(
            text, 7, "client-certificate optional applies to an inbound trusted-encrypted"
        )

    def test_sip_over_tls_needs_tls_both_ways(self) -> None:
        text = PHONES.replace(
            "   security trusted-encrypted\n",
            "   security inbound trusted-unencrypted\n   security outbound trusted-encrypted\n",
        ).replace("   client-certificate optional\n", "")
        self.assertInvalid(text, 10, "sip-over-tls needs security trusted-encrypted on both")

    def test_digest_algorithms_need_authentication_digest(self) -> None:
        text = PHONES.replace("   authentication digest\n", "   authentication delegated\n")
        self.assertInvalid(text, 9, "digest-algorithms needs authentication digest")
        text = PHONES.replace("   authentication digest\n", "")
        self.assertInvalid(text, 8, "digest-algorithms needs authentication digest")

    def test_authentication_digest_needs_a_user_database(self) -> None:
        text = PHONES.replace("  user-database users\n", "")
        self.assertInvalid(text, 7, "authentication digest needs a user-database")

    def test_delegated_needs_no_user_database(self) -> None:
        text = PHONES.replace("  user-database users\n", "").replace(
            "   authentication digest\n   digest-algorithms md5\n", "   authentication delegated\n"
        )
        validate(parsed(text), certificate_configured=True)


class ListenerTests(ValidateTestCase):
    def test_tls_and_plain_cannot_share_a_port(self) -> None:
        text = GOOD.replace(
            "   security trusted-encrypted\n",
            "   security trusted-encrypted\n   signaling-port 5060\n",
        )
        self.assertInvalid(
            text,
            7,
            "'access' and 'core' cannot share 127.0.0.1:5060",
            "'core' is trusted-encrypted",
        )

    def test_inbound_security_decides_the_listener(self) -> None:
        # Outbound-only TLS listens plain on 5060 beside 'access' and 'trunk',
        # whose remote-address sets differ from its own (any address).
        text = GOOD.replace(
            "   security trusted-encrypted\n", "   security outbound trusted-encrypted\n"
        )
        cfg = parsed(text)
        self.assertEqual(cfg.adjacency("core").port, 5060)
        validate(cfg, certificate_configured=True)

    def test_same_remote_sets_clash(self) -> None:
        # core moved to plain: core (any) and trunk (10/8) differ, access (127/8) differs;
        # giving trunk no remote-address makes it clash with core (both "any address").
        text = GOOD.replace("   security trusted-encrypted\n", "").replace(
            "   remote-address ipv4 10.0.0.0/8\n", ""
        )
        self.assertInvalid(
            text, 10, "'core' and 'trunk' share 127.0.0.1:5060", "(any address)", "told apart"
        )

    def test_same_remote_sets_in_another_order_clash(self) -> None:
        text = textwrap.dedent(
            """\
            sbc s
            sbe
            adjacency sip a
            signaling-address ipv4 127.0.0.1
            remote-address ipv4 10.0.0.0/8
            remote-address ipv4 192.168.0.0/16
            adjacency sip b
            signaling-address ipv4 127.0.0.1
            remote-address ipv4 192.168.0.0/16
            remote-address ipv4 10.0.0.0/8
            """
        )
        self.assertInvalid(text, 7, "'a' and 'b' share 127.0.0.1:5060")

    def test_different_ports_or_addresses_do_not_clash(self) -> None:
        text = textwrap.dedent(
            """\
            sbc s
            sbe
            adjacency sip a
            signaling-address ipv4 127.0.0.1
            adjacency sip b
            signaling-address ipv4 127.0.0.1
            signaling-port 5070
            adjacency sip c
            signaling-address ipv4 127.0.0.2
            adjacency sip d
            signaling-address ipv6 ::1
            security trusted-encrypted
            signaling-port 5060
            """
        )
        validate(parsed(text), certificate_configured=True)

    def test_default_port_counts(self) -> None:
        # A TLS adjacency on the default 5061 and a plain one configured on 5061.
        text = textwrap.dedent(
            """\
            sbc s
            sbe
            adjacency sip tls
            signaling-address ipv6 ::1
            security trusted-encrypted
            adjacency sip plain
            signaling-address ipv6 ::1
            signaling-port 5061
            """
        )
        self.assertInvalid(text, 6, "cannot share [::1]:5061")

    def test_duplicate_names_in_a_built_model(self) -> None:
        a = AdjacencyConfig("a", "127.0.0.1", line=1)  # type: ignore[arg-type]
        b = AdjacencyConfig("a", "127.0.0.2", line=2)  # type: ignore[arg-type]
        err = self.assertRaises(
            ConfigError, validate, SbcConfig("s", adjacencies=[a, b]), certificate_configured=True
        )
        self.assertEqual((err.path, err.line), ("<string>", 2))
        self.assertIn("duplicate adjacency 'a'", err.message)


ROUTING = """\
sbc s
sbe
adjacency sip a
signaling-address ipv4 127.0.0.1
call-policy-set 1
first-call-routing-table t1
rtg-src-adjacency-table t1
entry 1
match-adjacency a
dst-adjacency a
action complete
"""
"""Valid. The set is at line 5, table t1 at 7, its entry at 8."""


class RoutingTests(ValidateTestCase):
    def test_base_is_valid(self) -> None:
        validate(parsed(ROUTING), certificate_configured=False)

    def test_unknown_dst_adjacency(self) -> None:
        text = ROUTING.replace("dst-adjacency a", "dst-adjacency nowhere")
        self.assertInvalid(text, 10, "entry 1 of table 't1' names unknown adjacency 'nowhere'")

    def test_unknown_match_adjacency(self) -> None:
        text = ROUTING.replace("match-adjacency a", "match-adjacency ghost")
        self.assertInvalid(text, 9, "names unknown adjacency 'ghost'")

    def test_unknown_next_table(self) -> None:
        text = ROUTING.replace("action complete", "action next-table t9")
        self.assertInvalid(text, 11, "entry 1 of table 't1' names unknown table 't9'")

    def test_next_table_loop(self) -> None:
        text = ROUTING.replace("action complete", "action next-table t2") + textwrap.dedent(
            """\
            rtg-dst-domain-table t2
            entry 1
            match-domain x.test
            action next-table t3
            rtg-dst-address-table t3
            entry 4
            match-address 1
            action next-table t1
            """
        )
        self.assertInvalid(text, 19, "next-table loop in call-policy-set 1: t1 -> t2 -> t3 -> t1")

    def test_self_loop(self) -> None:
        text = ROUTING.replace("action complete", "action next-table t1")
        self.assertInvalid(text, 11, "next-table loop in call-policy-set 1: t1 -> t1")

    def test_loop_reported_once(self) -> None:
        text = ROUTING.replace("action complete", "action next-table t1")
        problems = find_problems(parsed(text), certificate_configured=False)
        self.assertEqual(len([p for p in problems if "loop" in p.message]), 1)

    def test_diamond_is_not_a_loop(self) -> None:
        text = ROUTING.replace("action complete", "action next-table t2") + textwrap.dedent(
            """\
            entry 2
            match-adjacency a
            action next-table t3
            rtg-round-robin-table t2
            entry 1
            action next-table t3
            rtg-round-robin-table t3
            entry 1
            dst-adjacency a
            action complete
            """
        )
        validate(parsed(text), certificate_configured=False)

    def test_complete_without_dst_adjacency(self) -> None:
        text = ROUTING.replace("dst-adjacency a\n", "")
        self.assertInvalid(text, 10, "has action complete but no dst-adjacency")

    def test_entry_without_match(self) -> None:
        text = ROUTING.replace("match-adjacency a\n", "")
        self.assertInvalid(text, 8, "entry 1 of table 't1' has no match-adjacency")

    def test_first_call_routing_table_unknown(self) -> None:
        text = ROUTING.replace("first-call-routing-table t1", "first-call-routing-table zz")
        self.assertInvalid(
            text, 6, "first-call-routing-table 'zz' is not a table of call-policy-set 1"
        )

    def test_first_call_routing_table_missing(self) -> None:
        text = ROUTING.replace("first-call-routing-table t1\n", "")
        self.assertInvalid(text, 5, "call-policy-set 1 has no first-call-routing-table")

    def test_active_set_unknown(self) -> None:
        self.assertInvalid(
            ROUTING + "active-call-policy-set 2\n",
            12,
            "active-call-policy-set 2: no call-policy-set 2 is configured",
        )

    def test_active_set_known(self) -> None:
        validate(parsed(ROUTING + "active-call-policy-set 1\n"), certificate_configured=False)

    def test_unknown_routing_policy(self) -> None:
        err = self.assertInvalid(
            ROUTING + "routing-policy fastest\n", 12, "unknown routing-policy 'fastest'"
        )
        self.assertIn("default, least-calls, round-robin", err.message)

    def test_plugin_routing_policy_accepted_when_known(self) -> None:
        validate(
            parsed(ROUTING + "routing-policy weighted\n"),
            certificate_configured=False,
            routing_policies=("default", "weighted"),
        )

    def test_first_problem_by_line_wins(self) -> None:
        text = ROUTING.replace("dst-adjacency a", "dst-adjacency x") + "routing-policy zz\n"
        text = text.replace("first-call-routing-table t1", "first-call-routing-table q")
        problems = find_problems(parsed(text), certificate_configured=False)
        self.assertEqual([p.line for p in problems], [6, 10, 12])
        self.assertInvalid(text, 6)


class SecurityChangeTests(SynchronousTestCase):
    def configs(self, running_lines: str, candidate_lines: str) -> tuple[SbcConfig, SbcConfig]:
        base = "sbc s\nsbe\nadjacency sip a\nsignaling-address ipv4 127.0.0.1\n"
        other = (
            "adjacency sip b\nsignaling-address ipv4 127.0.0.2\nattach\n"
            "security trusted-unencrypted\n"
        )
        return (
            parse_config(base + running_lines + other),
            parse_config(base + candidate_lines + other),
        )

    def test_change_while_attached(self) -> None:
        running, candidate = self.configs("attach\n", "attach\nsecurity trusted-encrypted\n")
        self.assertEqual(security_changes_while_attached(running, candidate), ["a"])
        self.assertEqual(
            SECURITY_CHANGE_MESSAGE.format(name="a"),
            "% Security policy cannot be changed while adjacency a is attached",
        )

    def test_one_side_change_counts(self) -> None:
        running, candidate = self.configs(
            "attach\n", "attach\nsecurity outbound trusted-unencrypted\n"
        )
        self.assertEqual(security_changes_while_attached(running, candidate), ["a"])

    def test_detached_in_running_is_free(self) -> None:
        running, candidate = self.configs("", "attach\nsecurity trusted-encrypted\n")
        self.assertEqual(security_changes_while_attached(running, candidate), [])

    def test_detaching_in_the_same_commit_is_not_enough(self) -> None:
        """The seed: changed only "when the adjacency is detached": detach first, then change."""
        running, candidate = self.configs("attach\n", "security trusted-encrypted\n")
        self.assertEqual(security_changes_while_attached(running, candidate), ["a"])

    def test_same_security_and_new_adjacencies(self) -> None:
        running, candidate = self.configs("attach\n", "attach\nsecurity untrusted\n")
        self.assertEqual(security_changes_while_attached(running, candidate), [])
        new = attrs.evolve(
            candidate,
            adjacencies=(
                *candidate.adjacencies,
                AdjacencyConfig(
                    "c", "127.0.0.3", attached=True, security_inbound=Security.TRUSTED_ENCRYPTED
                ),  # type: ignore[arg-type]
            ),
        )
        self.assertEqual(security_changes_while_attached(running, new), [])

    def test_several_in_candidate_order(self) -> None:
        running, _ = self.configs("attach\n", "")
        candidate = attrs.evolve(
            running,
            adjacencies=tuple(
                attrs.evolve(a, security_inbound=Security.TRUSTED_ENCRYPTED)
                for a in reversed(running.adjacencies)
            ),
        )
        self.assertEqual(security_changes_while_attached(running, candidate), ["b", "a"])


class DnsServerTests(ValidateTestCase):
    def with_dns(self, text: str, line: str) -> str:
        return text.replace("  routing-policy default\n", f"  routing-policy default\n  {line}\n")

    def test_dns_server_on_an_own_udp_listener_refused(self) -> None:
        self.assertInvalid(
            self.with_dns(GOOD, "dns-server 127.0.0.1 5060"),
            28,
            "dns-server 127.0.0.1 5060 is the SIP listener of adjacency 'access'",
        )

    def test_other_ports_and_addresses_are_fine(self) -> None:
        for line in ("dns-server 127.0.0.1 5353", "dns-server 10.0.0.53", "dns-server ::1 5060"):
            validate(parsed(self.with_dns(GOOD, line)), certificate_configured=True)

    def test_detached_or_tcp_only_adjacencies_do_not_count(self) -> None:
        text = """\
        sbc s
         sbe
          dns-server 127.0.0.1 5060
          adjacency sip spare
           signaling-address ipv4 127.0.0.1
           remote-address ipv4 10.0.0.0/8
          adjacency sip tcp-only
           signaling-address ipv4 127.0.0.1
           transport tcp
           attach
        """
        validate(parsed(text), certificate_configured=False)
