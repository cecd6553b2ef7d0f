"""``cluster-link [identity NAME]`` (docs/configuration.md): parse, render, rules."""

from __future__ import annotations

import textwrap

from twisted.trial.unittest import SynchronousTestCase

from sbc.config import parse_config, render_config, validate
from sbc.errors import ConfigError
from sbc.labpki import write_lab_pki
from sbc.service import TlsFiles, load_checked

NODE = """\
sbc s
 sbe
  local-domain lab.test
  adjacency sip phones
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   attach
  adjacency sip cluster
   signaling-address ipv4 127.0.0.1
   signaling-port 5070
   remote-address ipv4 127.0.0.0/8
   security trusted-encrypted
   cluster-link identity nodes.lab.test
   attach
  store redis://127.0.0.1:6379/0
  node a
"""
"""Lines: cluster 9, its security 13, cluster-link 14, store 16."""


def parsed(text: str) -> object:
    return parse_config(textwrap.dedent(text), "c.conf")


class ParseRenderTests(SynchronousTestCase):
    def test_identity_is_kept_and_rendered(self) -> None:
        config = parse_config(NODE, "c.conf")
        link = config.adjacency("cluster")
        self.assertEqual((link.cluster_link, link.cluster_identity), (True, "nodes.lab.test"))
        self.assertFalse(config.adjacency("phones").cluster_link)
        text = render_config(config)
        self.assertIn(" cluster-link identity nodes.lab.test\n", text)
        self.assertEqual(parse_config(text), config)

    def test_plain_link_without_identity(self) -> None:
        text = NODE.replace(
            "security trusted-encrypted\n   cluster-link identity nodes.lab.test",
            "security trusted-unencrypted\n   transport tcp\n   cluster-link",
        )
        config = parse_config(text)
        link = config.adjacency("cluster")
        self.assertEqual((link.cluster_link, link.cluster_identity), (True, None))
        self.assertIn(" cluster-link\n", render_config(config))
        validate(config, certificate_configured=True)

    def test_no_cluster_link_removes_it(self) -> None:
        text = NODE.replace("nodes.lab.test\n", "nodes.lab.test\n   no cluster-link\n")
        config = parse_config(text)
        link = config.adjacency("cluster")
        self.assertEqual((link.cluster_link, link.cluster_identity), (False, None))
        self.assertNotIn("cluster-link", render_config(config))

    def test_bad_forms(self) -> None:
        for line, message in (
            ("cluster-link identity", "incomplete command: usage: cluster-link [identity NAME]"),
            ("cluster-link name x.test", "bad cluster-link 'name x.test'"),
            ("cluster-link identity bad_name!", "bad cluster-link identity 'bad_name!'"),
            ("cluster-link identity a b", "too many words"),
        ):
            text = NODE.replace("cluster-link identity nodes.lab.test", line)
            with self.assertRaises(ConfigError) as raised:
                parse_config(text, "c.conf")
            self.assertEqual(raised.exception.line, 14, line)
            self.assertIn(message, raised.exception.message)


class RuleTests(SynchronousTestCase):
    def assertRefused(self, text: str, line: int, fragment: str) -> None:
        config = parse_config(text, "c.conf")
        with self.assertRaises(ConfigError) as raised:
            validate(config, certificate_configured=True)
        self.assertEqual(raised.exception.line, line, raised.exception.message)
        self.assertIn(fragment, raised.exception.message)

    def test_the_node_config_is_valid(self) -> None:
        validate(parse_config(NODE), certificate_configured=True)

    def test_needs_a_store(self) -> None:
        text = NODE.replace("  store redis://127.0.0.1:6379/0\n", "")
        self.assertRefused(text, 14, "cluster-link but no store is configured")

    def test_worker_processes_share_a_store_without_a_store_line(self) -> None:
        """--workers N: the workers find each other's link ports in the supervisor's store."""
        text = NODE.replace("  store redis://127.0.0.1:6379/0\n", "")
        validate(parse_config(text), certificate_configured=True, shared_store=True)

    def test_worker_processes_need_a_stream_link(self) -> None:
        """Each worker takes calls on a TCP port of its own: a UDP-only link is refused."""
        text = NODE.replace(
            "   security trusted-encrypted\n   cluster-link identity nodes.lab.test",
            "   transport udp\n   security trusted-unencrypted\n   cluster-link",
        )
        validate(parse_config(text), certificate_configured=True)  # one process: fine
        with self.assertRaises(ConfigError) as raised:
            validate(parse_config(text), certificate_configured=True, shared_store=True)
        self.assertIn("with --workers it must carry TCP", raised.exception.message)

    def test_must_be_trusted_and_the_same_both_ways(self) -> None:
        for security in (
            "security untrusted",
            "security inbound trusted-encrypted\n   security outbound trusted-unencrypted",
        ):
            text = NODE.replace(
                "   security trusted-encrypted\n   cluster-link", f"   {security}\n   cluster-link"
            )
            self.assertRefused(text, 13, "its security must be trusted-encrypted (mutual TLS)")

    def test_tls_needs_an_identity_plain_takes_none(self) -> None:
        text = NODE.replace("cluster-link identity nodes.lab.test", "cluster-link")
        self.assertRefused(text, 14, "name the identity every node's certificate carries")
        text = NODE.replace(
            "   security trusted-encrypted\n   cluster-link",
            "   security trusted-unencrypted\n   cluster-link",
        )
        self.assertRefused(text, 14, "identity applies to a trusted-encrypted cluster-link only")

    def test_settings_that_do_not_apply(self) -> None:
        for setting in (
            "signaling-peer 127.0.0.2",
            "signaling-peer-port 5070",
            "client-certificate optional",
            "sip-over-tls",
        ):
            text = NODE.replace(
                "   cluster-link identity", f"   {setting}\n   cluster-link identity"
            )
            self.assertRefused(text, 14, f"{setting.split()[0]} does not apply to it")

    def test_only_one_link(self) -> None:
        second = (
            "  adjacency sip cluster2\n   signaling-address ipv4 127.0.0.1\n"
            "   signaling-port 5071\n   security trusted-unencrypted\n   cluster-link\n"
        )
        self.assertRefused(NODE + second, 22, "are both cluster-links")

    def test_a_listener_of_its_own(self) -> None:
        text = NODE.replace("   signaling-port 5070\n", "   signaling-port 5061\n")
        self.assertRefused(text, 14, "cannot share 127.0.0.1:5061 with adjacency 'phones'")

    def test_no_routing_entry_sends_calls_to_it(self) -> None:
        routing = (
            "  call-policy-set 1\n   first-call-routing-table t\n   rtg-src-adjacency-table t\n"
            "    entry 1\n     match-adjacency phones\n     dst-adjacency cluster\n"
            "     action complete\n"
        )
        self.assertRefused(NODE + routing, 23, "sends calls to cluster-link 'cluster'")


class OwnCertificateTests(SynchronousTestCase):
    """At start (and ``--check-config``) this node's certificate must carry the link's name."""

    def files(self, directory: str) -> TlsFiles:
        write_lab_pki(directory)  # the sbc certificate: sip:sbc.lab.test, sbc.lab.test
        return TlsFiles(f"{directory}/sbc.pem", f"{directory}/sbc.key", f"{directory}/ca.pem")

    def test_certificate_without_the_name_is_refused_with_the_line(self) -> None:
        tls = self.files(self.mktemp())
        with self.assertRaises(ConfigError) as caught:
            load_checked(parse_config(NODE, "c.conf"), tls, None)
        self.assertEqual(caught.exception.line, 14)
        self.assertIn("cluster-link identity nodes.lab.test", str(caught.exception))
        self.assertIn("does not carry that name", str(caught.exception))

    def test_certificate_with_the_name_is_accepted(self) -> None:
        tls = self.files(self.mktemp())
        config = parse_config(NODE.replace("nodes.lab.test", "sbc.lab.test"), "c.conf")
        identity, _ = load_checked(config, tls, None)
        self.assertIsNotNone(identity)
