"""RFC 5922 §7 peer identity rules of sbc.identity (pure, no TLS)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sbc.identity import PeerIdentities, identity_matches, ip_literal


class DomainsTests(SynchronousTestCase):
    """Which certificate names count (RFC 5922 §7.1)."""

    def test_sip_uris_take_precedence_over_dns_names(self) -> None:
        ids = PeerIdentities(sip_domains=("a.test",), dns_names=("b.test",))
        self.assertEqual(ids.domains, ("a.test",))
        self.assertTrue(identity_matches(ids, "a.test"))
        self.assertFalse(identity_matches(ids, "b.test"))

    def test_dns_names_count_without_sip_uri(self) -> None:
        ids = PeerIdentities(dns_names=("b.test", "c.test"))
        self.assertEqual(ids.domains, ("b.test", "c.test"))
        self.assertTrue(identity_matches(ids, "c.test"))

    def test_common_name_only_without_subject_alt_name(self) -> None:
        only_cn = PeerIdentities(common_name="cn.test")
        self.assertEqual(only_cn.domains, ("cn.test",))
        self.assertTrue(identity_matches(only_cn, "cn.test"))

    def test_common_name_ignored_when_names_present(self) -> None:
        with_dns = PeerIdentities(dns_names=("b.test",), common_name="cn.test")
        self.assertEqual(with_dns.domains, ("b.test",))
        self.assertFalse(identity_matches(with_dns, "cn.test"))
        with_uri = PeerIdentities(sip_domains=("a.test",), common_name="cn.test")
        self.assertFalse(identity_matches(with_uri, "cn.test"))

    def test_common_name_ignored_when_only_ip_entries(self) -> None:
        """An iPAddress entry means a subjectAltName exists, so the CN does not count."""
        ids = PeerIdentities(common_name="cn.test", ip_addresses=("192.0.2.1",))
        self.assertEqual(ids.domains, ())
        self.assertFalse(identity_matches(ids, "cn.test"))

    def test_no_names_match_nothing(self) -> None:
        ids = PeerIdentities()
        self.assertEqual(ids.domains, ())
        self.assertFalse(identity_matches(ids, "a.test"))
        self.assertFalse(identity_matches(ids, ""))

    def test_bare_string_refused(self) -> None:
        """A str where a sequence is due would split into letters: refused."""
        self.assertRaises(TypeError, PeerIdentities, sip_domains="a.test")

    def test_lists_frozen_to_tuples(self) -> None:
        ids = PeerIdentities(sip_domains=["a.test"], ip_addresses=["192.0.2.1"])
        self.assertEqual(ids.sip_domains, ("a.test",))
        self.assertEqual(ids.ip_addresses, ("192.0.2.1",))

    def test_matches_method_and_describe(self) -> None:
        ids = PeerIdentities(sip_domains=("a.test",), dns_names=("b.test",))
        self.assertTrue(ids.matches("A.test"))
        self.assertEqual(ids.describe(), "sip:a.test, DNS:b.test")
        self.assertEqual(PeerIdentities().describe(), "(no identity)")


class ComparisonTests(SynchronousTestCase):
    """Exact, case-insensitive comparison (RFC 5922 §7.2)."""

    def test_case_insensitive(self) -> None:
        ids = PeerIdentities(sip_domains=("Example.COM",))
        self.assertTrue(identity_matches(ids, "example.com"))
        self.assertTrue(identity_matches(ids, "EXAMPLE.com"))

    def test_trailing_dot_is_the_same_name(self) -> None:
        ids = PeerIdentities(dns_names=("example.com",))
        self.assertTrue(identity_matches(ids, "example.com."))

    def test_wildcard_is_a_literal(self) -> None:
        ids = PeerIdentities(dns_names=("*.example.com",))
        self.assertFalse(identity_matches(ids, "a.example.com"))
        self.assertFalse(identity_matches(ids, "example.com"))
        self.assertTrue(identity_matches(ids, "*.example.com"))

    def test_no_suffix_or_prefix_matching(self) -> None:
        ids = PeerIdentities(sip_domains=("example.com",))
        self.assertFalse(identity_matches(ids, "a.example.com"))
        self.assertFalse(identity_matches(ids, "com"))
        self.assertFalse(identity_matches(ids, "badexample.com"))
        self.assertFalse(identity_matches(ids, "example.co"))

    def test_internationalised_name_compares_as_a_label(self) -> None:
        ids = PeerIdentities(dns_names=("xn--bcher-kva.example",))
        self.assertTrue(identity_matches(ids, "bücher.example"))
        self.assertFalse(identity_matches(ids, "bucher.example"))


class IpLiteralTests(SynchronousTestCase):
    """IP literals compare with iPAddress entries only."""

    def test_ipv4(self) -> None:
        ids = PeerIdentities(ip_addresses=("192.0.2.1",))
        self.assertTrue(identity_matches(ids, "192.0.2.1"))
        self.assertFalse(identity_matches(ids, "192.0.2.10"))

    def test_ipv6_normalised_and_bracketed(self) -> None:
        ids = PeerIdentities(ip_addresses=("2001:db8::1",))
        self.assertTrue(identity_matches(ids, "2001:DB8:0:0:0:0:0:1"))
        self.assertTrue(identity_matches(ids, "[2001:db8::1]"))
        self.assertFalse(identity_matches(ids, "[2001:db8::2]"))

    def test_entries_normalised_too(self) -> None:
        ids = PeerIdentities(ip_addresses=("2001:0DB8:0000::0001",))
        self.assertTrue(identity_matches(ids, "2001:db8::1"))

    def test_ip_literal_never_matches_a_name_entry(self) -> None:
        ids = PeerIdentities(sip_domains=("192.0.2.1",), dns_names=("192.0.2.1",))
        self.assertFalse(identity_matches(ids, "192.0.2.1"))

    def test_name_never_matches_an_ip_entry(self) -> None:
        ids = PeerIdentities(dns_names=("a.test",), ip_addresses=("192.0.2.1",))
        self.assertFalse(identity_matches(ids, "192.0.2.1.example"))
        self.assertTrue(identity_matches(ids, "a.test"))

    def test_ip_literal_parsing(self) -> None:
        self.assertEqual(str(ip_literal("[::1]")), "::1")
        self.assertEqual(str(ip_literal("10.0.0.1")), "10.0.0.1")
        self.assertIsNone(ip_literal("example.com"))
        self.assertIsNone(ip_literal("[example.com]"))
