"""Tests for sbc.config.parser: the language, the mode stack, the builder API."""

from __future__ import annotations

import ipaddress
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from sbc.config import (
    ROOT,
    Action,
    AdjacencyConfig,
    Authentication,
    ClientCertificate,
    ConfigBuilder,
    DigestAlgorithm,
    Frame,
    Limits,
    Mode,
    ModeKind,
    SbcConfig,
    Security,
    StoreUrl,
    TableKind,
    Transport,
    apply_command,
    commands_for,
    load_config,
    parse_config,
    render_config,
    split_words,
    tokenize,
)
from sbc.errors import ConfigError

HEAD = "sbc s\nsbe\nadjacency sip a\nsignaling-address ipv4 127.0.0.1\n"
"""Four lines that leave the interpreter in adjacency mode of 'a'."""


def parse(text: str) -> SbcConfig:
    return parse_config(textwrap.dedent(text), "test.conf")


class ParseErrorMixin(SynchronousTestCase):
    def refused(self, text: str) -> ConfigError:
        """Parse ``text``, assert it is refused, return the error."""
        return self.assertRaises(ConfigError, parse_config, textwrap.dedent(text), "test.conf")

    def assertRefused(self, text: str, line: int, *fragments: str) -> ConfigError:
        err = self.refused(text)
        self.assertEqual(err.path, "test.conf")
        self.assertEqual(err.line, line, str(err))
        for fragment in fragments:
            self.assertIn(fragment, err.message)
        prefix = f"test.conf:{line}: " if line else "test.conf: "
        self.assertTrue(str(err).startswith(prefix), str(err))
        return err


class LexerTests(SynchronousTestCase):
    def test_split_words(self) -> None:
        self.assertEqual(split_words("  adjacency   sip\tcore  "), ["adjacency", "sip", "core"])
        self.assertEqual(split_words("   "), [])

    def test_tokenize_skips_blank_and_comment_lines(self) -> None:
        lines = list(tokenize("! head\n\nsbc x\n   ! indented comment\n sbe\n\t\n"))
        self.assertEqual(
            [(ln.number, ln.words) for ln in lines], [(3, ("sbc", "x")), (5, ("sbe",))]
        )
        self.assertEqual(lines[1].indent, 1)

    def test_tokenize_counts_crlf_lines(self) -> None:
        lines = list(tokenize("sbc x\r\n\r\nsbe\r\n"))
        self.assertEqual(
            [(ln.number, ln.words) for ln in lines], [(1, ("sbc", "x")), (3, ("sbe",))]
        )


class BehaviourExampleTests(SynchronousTestCase):
    """The reference example configuration, word for word."""

    text = """\
        sbc mysbc
         sbe
          local-domain example.com
          adjacency sip access
           signaling-address ipv4 127.0.0.1
           signaling-port 5060
           remote-address ipv4 127.0.0.0/8
           security untrusted
           attach
          adjacency sip core
           signaling-address ipv4 127.0.0.1
           signaling-peer core.example.net
           security trusted-encrypted
           attach
          call-policy-set 1
           first-call-routing-table main
           rtg-src-adjacency-table main
            entry 1
             match-adjacency access
             dst-adjacency core
             action complete
          active-call-policy-set 1
          routing-policy default
        """

    def test_model(self) -> None:
        cfg = parse(self.text)
        self.assertEqual(cfg.service_name, "mysbc")
        self.assertEqual(cfg.local_domains, ("example.com",))
        self.assertEqual([a.name for a in cfg.adjacencies], ["access", "core"])
        access, core = cfg.adjacencies
        self.assertEqual(access.signaling_address, ipaddress.IPv4Address("127.0.0.1"))
        self.assertEqual(access.signaling_port, 5060)
        self.assertEqual(access.remote_addresses, (ipaddress.IPv4Network("127.0.0.0/8"),))
        self.assertIs(access.security_inbound, Security.UNTRUSTED)
        self.assertTrue(access.attached)
        self.assertEqual(core.signaling_peer, "core.example.net")
        self.assertIsNone(core.signaling_port)
        self.assertEqual(core.port, 5061)
        self.assertEqual(core.peer_port, 5061)
        self.assertIs(core.security_inbound, Security.TRUSTED_ENCRYPTED)
        self.assertIs(core.security_outbound, Security.TRUSTED_ENCRYPTED)
        cps = cfg.call_policy_sets[1]
        self.assertEqual(cps.first_call_routing_table, "main")
        table = cps.tables["main"]
        self.assertIs(table.kind, TableKind.SRC_ADJACENCY)
        (entry,) = table.entries
        self.assertEqual(
            (entry.number, entry.match, entry.dst_adjacency, entry.action, entry.next_table),
            (1, "access", "core", Action.COMPLETE, None),
        )
        self.assertEqual(cfg.active_call_policy_set, 1)
        self.assertEqual(cfg.routing_policy, "default")
        self.assertIs(cfg.active_policy_set, cps)

    def test_indentation_is_optional(self) -> None:
        flat = "\n".join(line.strip() for line in textwrap.dedent(self.text).splitlines())
        self.assertEqual(parse_config(flat), parse(self.text))

    def test_wrong_indentation_is_ignored(self) -> None:
        shuffled = "\n".join(
            ("    " * (i % 3)) + line.strip()
            for i, line in enumerate(textwrap.dedent(self.text).splitlines())
        )
        self.assertEqual(parse_config(shuffled), parse(self.text))

    def test_line_numbers_are_kept(self) -> None:
        cfg = parse(self.text)
        self.assertEqual(cfg.line, 1)
        self.assertEqual([a.line for a in cfg.adjacencies], [4, 10])
        self.assertEqual(cfg.call_policy_sets[1].line, 15)
        self.assertEqual(cfg.call_policy_sets[1].tables["main"].line, 17)
        self.assertEqual(cfg.call_policy_sets[1].tables["main"].entries[0].line, 18)
        self.assertEqual(cfg.adjacencies[1].setting_lines["security inbound"], 13)
        self.assertEqual(cfg.setting_lines["active-call-policy-set"], 22)
        self.assertEqual(cfg.setting_lines["routing-policy"], 23)
        self.assertEqual(cfg.source, "test.conf")


class SeedStepsTests(ParseErrorMixin):
    """The seed's configuration steps 2-5 and 7, as configuration lines."""

    def test_steps(self) -> None:
        cfg = parse(
            """\
            sbc mysbc
            sbe
            adjacency sip test
            signaling-address ipv4 10.1.0.2
            security trusted-encrypted
            exit
            """
        )
        adj = cfg.adjacency("test")
        self.assertIs(adj.security_inbound, Security.TRUSTED_ENCRYPTED)
        self.assertIs(adj.security_outbound, Security.TRUSTED_ENCRYPTED)
        self.assertEqual(adj.port, 5061)
        self.assertFalse(adj.attached)

    def test_exec_steps_are_not_config_lines(self) -> None:
        for word in ("configure", "commit", "show services sbc mysbc sbe adjacencies"):
            err = self.assertRefused(f"{word}\n", 1, "CLI command")
            self.assertIn(word.split()[0], err.message)


class CommentAndBlankTests(ParseErrorMixin):
    def test_comments_and_blanks(self) -> None:
        cfg = parse(
            """\
            ! a comment

            sbc s
             !
             ! another
             sbe

              local-domain x.test
            """
        )
        self.assertEqual(cfg.local_domains, ("x.test",))

    def test_bang_inside_a_line_is_not_a_comment(self) -> None:
        self.assertRefused("sbc s ! name\n", 1, "too many words")

    def test_empty_config(self) -> None:
        self.assertRefused("! nothing\n", 0, "no 'sbc NAME' service")

    def test_sbc_without_sbe(self) -> None:
        cfg = parse("sbc only\n")
        self.assertEqual(cfg, SbcConfig("only"))


class AdjacencyCommandTests(ParseErrorMixin):
    def adj(self, *lines: str) -> AdjacencyConfig:
        return parse(HEAD + "\n".join(lines) + "\n").adjacency("a")

    def test_defaults(self) -> None:
        adj = parse(HEAD).adjacency("a")
        self.assertIsNone(adj.signaling_port)
        self.assertEqual(adj.port, 5060)
        self.assertIs(adj.transport, Transport.UDP_TCP)
        self.assertEqual(adj.remote_addresses, ())
        self.assertIsNone(adj.signaling_peer)
        self.assertIsNone(adj.signaling_peer_port)
        self.assertEqual(adj.peer_port, 5060)
        self.assertIs(adj.security_inbound, Security.UNTRUSTED)
        self.assertIs(adj.security_outbound, Security.UNTRUSTED)
        self.assertFalse(adj.attached)

    def test_signaling_address_ipv6(self) -> None:
        cfg = parse("sbc s\nsbe\nadjacency sip a\nsignaling-address ipv6 ::1\n")
        self.assertEqual(cfg.adjacency("a").signaling_address, ipaddress.IPv6Address("::1"))

    def test_signaling_address_last_wins(self) -> None:
        adj = self.adj("signaling-address ipv4 10.0.0.1")
        self.assertEqual(adj.signaling_address, ipaddress.IPv4Address("10.0.0.1"))

    def test_signaling_address_errors(self) -> None:
        base = "sbc s\nsbe\nadjacency sip a\n"
        self.assertRefused(base + "signaling-address ipv4 300.1.1.1\n", 4, "bad IPv4 address")
        self.assertRefused(base + "signaling-address ipv4 ::1\n", 4, "IPv6 address")
        self.assertRefused(base + "signaling-address ipv6 10.0.0.1\n", 4, "bad IPv6 address")
        self.assertRefused(base + "signaling-address ipv5 10.0.0.1\n", 4, "ipv4 or ipv6")
        self.assertRefused(base + "signaling-address ipv4\n", 4, "incomplete command")
        self.assertRefused(base + "signaling-address ipv4 1.2.3.4 x\n", 4, "too many words")

    def test_missing_signaling_address(self) -> None:
        """Attaching needs an address; the error names the attach line."""
        self.assertRefused(
            "sbc s\nsbe\nadjacency sip a\nattach\nadjacency sip b\n",
            4,
            "adjacency 'a' cannot be attached without a signaling-address",
        )

    def test_detached_adjacency_without_address(self) -> None:
        """The seed's steps create an adjacency and set its security before any address."""
        cfg = parse("sbc s\nsbe\nadjacency sip test\nsecurity trusted-encrypted\n")
        adjacency = cfg.adjacencies[0]
        self.assertIsNone(adjacency.signaling_address)
        self.assertFalse(adjacency.attached)
        self.assertEqual(adjacency.port, 5061)
        self.assertRaises(ValueError, lambda: adjacency.address)
        self.assertEqual(parse(render_config(cfg)), cfg)

    def test_no_signaling_address(self) -> None:
        self.assertRefused(HEAD + "attach\nno signaling-address\n", 5, "cannot be attached without")
        self.assertIsNone(parse(HEAD + "no signaling-address\n").adjacencies[0].signaling_address)

    def test_signaling_port(self) -> None:
        self.assertEqual(self.adj("signaling-port 5070").signaling_port, 5070)
        self.assertIsNone(self.adj("signaling-port 5070", "no signaling-port").signaling_port)

    def test_bad_ports(self) -> None:
        for bad in ("0", "65536", "abc", "-1", "50 60"):
            self.assertRefused(HEAD + f"signaling-port {bad}\n", 5)
        self.assertRefused(HEAD + "signaling-port 70000\n", 5, "bad port '70000'", "1 to 65535")
        self.assertRefused(HEAD + "signaling-peer-port 0\n", 5, "bad port '0'")

    def test_transport(self) -> None:
        for word, value in (("udp", Transport.UDP), ("tcp", Transport.TCP)):
            self.assertIs(self.adj(f"transport {word}").transport, value)
        self.assertIs(self.adj("transport tcp", "no transport").transport, Transport.UDP_TCP)
        self.assertRefused(HEAD + "transport sctp\n", 5, "bad transport 'sctp'")

    def test_remote_address_repeatable(self) -> None:
        adj = self.adj(
            "remote-address ipv4 10.0.0.0/8",
            "remote-address ipv4 192.168.1.0/24",
            "remote-address ipv4 10.0.0.0/8",
        )
        self.assertEqual(
            adj.remote_addresses,
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24")),
        )

    def test_remote_address_bare_address_is_a_host_prefix(self) -> None:
        adj = self.adj("remote-address ipv4 10.1.2.3")
        self.assertEqual(adj.remote_addresses, (ipaddress.ip_network("10.1.2.3/32"),))

    def test_remote_address_ipv6(self) -> None:
        cfg = parse(
            "sbc s\nsbe\nadjacency sip a\nsignaling-address ipv6 ::1\n"
            "remote-address ipv6 2001:db8::/32\n"
        )
        self.assertEqual(
            cfg.adjacency("a").remote_addresses, (ipaddress.ip_network("2001:db8::/32"),)
        )

    def test_no_remote_address(self) -> None:
        adj = self.adj(
            "remote-address ipv4 10.0.0.0/8",
            "remote-address ipv4 192.168.1.0/24",
            "no remote-address ipv4 10.0.0.0/8",
        )
        self.assertEqual(adj.remote_addresses, (ipaddress.ip_network("192.168.1.0/24"),))
        adj = self.adj("remote-address ipv4 10.0.0.0/8", "no remote-address")
        self.assertEqual(adj.remote_addresses, ())
        self.assertRefused(
            HEAD + "no remote-address ipv4 10.0.0.0/8\n", 5, "remote-address 10.0.0.0/8 is not"
        )

    def test_bad_prefixes(self) -> None:
        self.assertRefused(
            HEAD + "remote-address ipv4 10.0.0.1/8\n", 5, "host bits are set", "10.0.0.0/8"
        )
        self.assertRefused(HEAD + "remote-address ipv4 10.0.0.0/33\n", 5, "bad prefix")
        self.assertRefused(HEAD + "remote-address ipv4 2001:db8::/32\n", 5, "not an IPv4 prefix")
        self.assertRefused(HEAD + "remote-address ipv6 10.0.0.0/8\n", 5, "not an IPv6 prefix")
        self.assertRefused(HEAD + "remote-address ipv4 ten/8\n", 5, "bad prefix 'ten/8'")
        self.assertRefused(HEAD + "remote-address 10.0.0.0/8\n", 5, "incomplete command")

    def test_signaling_peer(self) -> None:
        self.assertEqual(
            self.adj("signaling-peer peer.example.net").signaling_peer, "peer.example.net"
        )
        self.assertEqual(self.adj("signaling-peer 192.0.2.1").signaling_peer, "192.0.2.1")
        self.assertEqual(self.adj("signaling-peer 2001:db8::1").signaling_peer, "2001:db8::1")
        self.assertIsNone(self.adj("signaling-peer p.test", "no signaling-peer").signaling_peer)
        for bad in ("a..b", "-x.test", "x_y.test", "1.2.3.400", "a" * 64 + ".test"):
            self.assertRefused(HEAD + f"signaling-peer {bad}\n", 5, "bad signaling-peer")

    def test_signaling_peer_port(self) -> None:
        adj = self.adj("signaling-peer-port 5071")
        self.assertEqual(adj.signaling_peer_port, 5071)
        self.assertEqual(adj.peer_port, 5071)
        adj = self.adj("signaling-peer-port 5071", "no signaling-peer-port")
        self.assertIsNone(adj.signaling_peer_port)

    def test_security_both(self) -> None:
        for word in ("untrusted", "trusted-encrypted", "trusted-unencrypted"):
            adj = self.adj(f"security {word}")
            self.assertEqual(adj.security_inbound, word)
            self.assertEqual(adj.security_outbound, word)

    def test_security_one_side(self) -> None:
        adj = self.adj("security inbound trusted-encrypted")
        self.assertIs(adj.security_inbound, Security.TRUSTED_ENCRYPTED)
        self.assertIs(adj.security_outbound, Security.UNTRUSTED)
        self.assertEqual(adj.port, 5061)
        self.assertEqual(adj.peer_port, 5060)
        adj = self.adj("security trusted-unencrypted", "security outbound trusted-encrypted")
        self.assertIs(adj.security_inbound, Security.TRUSTED_UNENCRYPTED)
        self.assertIs(adj.security_outbound, Security.TRUSTED_ENCRYPTED)
        self.assertEqual(adj.port, 5060)
        self.assertEqual(adj.peer_port, 5061)

    def test_no_security(self) -> None:
        adj = self.adj("security trusted-encrypted", "no security")
        self.assertIs(adj.security_inbound, Security.UNTRUSTED)
        self.assertIs(adj.security_outbound, Security.UNTRUSTED)
        adj = self.adj("security trusted-encrypted", "no security outbound")
        self.assertIs(adj.security_inbound, Security.TRUSTED_ENCRYPTED)
        self.assertIs(adj.security_outbound, Security.UNTRUSTED)
        adj = self.adj("security trusted-encrypted", "no security inbound trusted-encrypted")
        self.assertIs(adj.security_inbound, Security.UNTRUSTED)
        self.assertIs(adj.security_outbound, Security.TRUSTED_ENCRYPTED)

    def test_security_errors(self) -> None:
        self.assertRefused(HEAD + "security secure\n", 5, "bad security type 'secure'")
        self.assertRefused(HEAD + "security inbound\n", 5, "incomplete command")
        self.assertRefused(HEAD + "security\n", 5, "incomplete command")
        self.assertRefused(HEAD + "security sideways untrusted\n", 5, "too many words")

    def test_attach(self) -> None:
        self.assertTrue(self.adj("attach").attached)
        self.assertFalse(self.adj("attach", "no attach").attached)
        self.assertRefused(HEAD + "attach now\n", 5, "too many words", "usage: attach")

    def test_adjacency_errors(self) -> None:
        self.assertRefused("sbc s\nsbe\nadjacency h323 a\n", 3, "only 'adjacency sip NAME'")
        self.assertRefused("sbc s\nsbe\nadjacency sip\n", 3, "incomplete command")
        self.assertRefused("sbc s\nsbe\nadjacency sip bad/name\n", 3, "bad adjacency name")

    def test_duplicate_adjacency(self) -> None:
        self.assertRefused(
            HEAD + "adjacency sip b\nsignaling-address ipv4 127.0.0.2\nadjacency sip a\n",
            7,
            "duplicate adjacency 'a'",
            "line 3",
        )

    def test_no_adjacency(self) -> None:
        cfg = parse(HEAD + "no adjacency sip a\n")
        self.assertEqual(cfg.adjacencies, ())
        self.assertRefused(HEAD + "no adjacency sip b\n", 5, "adjacency 'b' is not configured")

    def test_redefinition_after_no(self) -> None:
        cfg = parse(
            HEAD + "attach\nno adjacency sip a\nadjacency sip a\nsignaling-address ipv4 10.0.0.9\n"
        )
        self.assertFalse(cfg.adjacency("a").attached)
        self.assertEqual(cfg.adjacency("a").line, 7)

    def test_adjacency_order_kept(self) -> None:
        text = "sbc s\nsbe\n" + "".join(
            f"adjacency sip {n}\nsignaling-address ipv4 127.0.0.{i}\n"
            for i, n in enumerate(["zeta", "alpha", "mid"], start=1)
        )
        self.assertEqual([a.name for a in parse(text).adjacencies], ["zeta", "alpha", "mid"])


class AccessCommandTests(ParseErrorMixin):
    """client-certificate, authentication, digest-algorithms, sip-over-tls, user-database."""

    def adj(self, *lines: str) -> AdjacencyConfig:
        return parse(HEAD + "\n".join(lines) + "\n").adjacency("a")

    def test_defaults(self) -> None:
        adj = self.adj()
        self.assertIs(adj.client_certificate, ClientCertificate.REQUIRED)
        self.assertIsNone(adj.authentication)
        self.assertIsNone(adj.digest_algorithms)
        self.assertEqual(adj.offered_algorithms, (DigestAlgorithm.SHA256, DigestAlgorithm.MD5))
        self.assertFalse(adj.sip_over_tls)
        self.assertIsNone(parse(HEAD).user_database)

    def test_client_certificate(self) -> None:
        for word, mode in (
            ("optional", ClientCertificate.OPTIONAL),
            ("none", ClientCertificate.NONE),
            ("required", ClientCertificate.REQUIRED),
        ):
            self.assertIs(self.adj(f"client-certificate {word}").client_certificate, mode)
        adj = self.adj("client-certificate none", "no client-certificate")
        self.assertIs(adj.client_certificate, ClientCertificate.REQUIRED)
        self.assertRefused(
            HEAD + "client-certificate maybe\n",
            5,
            "bad client-certificate mode 'maybe'",
            "required, optional, none",
        )
        self.assertRefused(HEAD + "client-certificate\n", 5, "incomplete command")

    def test_authentication_last_one_wins(self) -> None:
        self.assertIs(self.adj("authentication digest").authentication, Authentication.DIGEST)
        adj = self.adj("authentication digest", "authentication delegated")
        self.assertIs(adj.authentication, Authentication.DELEGATED)
        self.assertIsNone(self.adj("authentication digest", "no authentication").authentication)
        self.assertRefused(HEAD + "authentication basic\n", 5, "bad authentication 'basic'")

    def test_digest_algorithms(self) -> None:
        adj = self.adj("digest-algorithms md5")
        self.assertEqual(adj.digest_algorithms, (DigestAlgorithm.MD5,))
        self.assertEqual(adj.offered_algorithms, (DigestAlgorithm.MD5,))
        adj = self.adj("digest-algorithms md5 sha-256")
        self.assertEqual(adj.offered_algorithms, (DigestAlgorithm.MD5, DigestAlgorithm.SHA256))
        self.assertIsNone(
            self.adj("digest-algorithms md5", "no digest-algorithms").digest_algorithms
        )
        self.assertRefused(HEAD + "digest-algorithms md5 md5\n", 5, "given twice")
        self.assertRefused(HEAD + "digest-algorithms sha-512\n", 5, "bad digest algorithm")
        self.assertRefused(HEAD + "digest-algorithms\n", 5, "incomplete command")
        self.assertEqual(DigestAlgorithm.SHA256.token, "SHA-256")

    def test_sip_over_tls(self) -> None:
        self.assertTrue(self.adj("sip-over-tls").sip_over_tls)
        self.assertFalse(self.adj("sip-over-tls", "no sip-over-tls").sip_over_tls)
        self.assertRefused(HEAD + "sip-over-tls yes\n", 5, "too many words")

    def test_store_and_node(self) -> None:
        """store redis://HOST[:PORT][/DB] and node NAME under sbe (docs/scaling.md)."""
        cfg = parse("sbc s\nsbe\n")
        self.assertIsNone(cfg.store)
        self.assertIsNone(cfg.node)
        cfg = parse("sbc s\nsbe\nstore redis://127.0.0.1:6380/2\nnode edge-a\n")
        self.assertEqual(cfg.store, StoreUrl("127.0.0.1", 6380, 2))
        self.assertEqual(cfg.node, "edge-a")
        self.assertEqual(
            parse("sbc s\nsbe\nstore redis://redis.lab\n").store, StoreUrl("redis.lab")
        )
        self.assertEqual(parse("sbc s\nsbe\nstore redis://[::1]:7000\n").store.host, "::1")
        cfg = parse("sbc s\nsbe\nstore redis://r\nnode a\nno store\nno node\n")
        self.assertIsNone(cfg.store)
        self.assertIsNone(cfg.node)
        self.assertRefused("sbc s\nsbe\nstore http://r\n", 3, "expected redis://HOST")
        self.assertRefused("sbc s\nsbe\nstore redis://r:99999\n", 3, "bad port")
        self.assertRefused("sbc s\nsbe\nstore redis://r/x\n", 3, "bad store database")
        self.assertRefused("sbc s\nsbe\nstore redis://bad_host!\n", 3, "bad store host")
        self.assertRefused("sbc s\nsbe\nnode -x\n", 3, "bad node name")
        self.assertRefused("sbc s\nsbe\nstore\n", 3, "incomplete command")

    def test_user_database(self) -> None:
        cfg = parse("sbc s\nsbe\nuser-database /etc/sbc/users\n")
        self.assertEqual(cfg.user_database, "/etc/sbc/users")
        cfg = parse("sbc s\nsbe\nuser-database users\nno user-database\n")
        self.assertIsNone(cfg.user_database)
        self.assertRefused("sbc s\nsbe\nuser-database\n", 3, "incomplete command")

    def test_rendered_and_parsed_back(self) -> None:
        text = (
            HEAD
            + "security trusted-encrypted\nclient-certificate optional\n"
            + "authentication digest\ndigest-algorithms md5\nsip-over-tls\nexit\n"
            + "user-database users.htdigest\n"
        )
        cfg = parse(text)
        rendered = render_config(cfg)
        for line in (
            "   client-certificate optional\n",
            "   authentication digest\n",
            "   digest-algorithms md5\n",
            "   sip-over-tls\n",
            "  user-database users.htdigest\n",
        ):
            self.assertIn(line, rendered)
        self.assertEqual(parse_config(rendered), cfg)


class SbeCommandTests(ParseErrorMixin):
    def test_local_domains(self) -> None:
        cfg = parse("sbc s\nsbe\nlocal-domain b.test\nlocal-domain a.test\nlocal-domain b.test\n")
        self.assertEqual(cfg.local_domains, ("b.test", "a.test"))
        cfg = parse(
            "sbc s\nsbe\nlocal-domain b.test\nlocal-domain a.test\nno local-domain b.test\n"
        )
        self.assertEqual(cfg.local_domains, ("a.test",))
        self.assertRefused("sbc s\nsbe\nno local-domain b.test\n", 3, "not configured")
        self.assertRefused("sbc s\nsbe\nlocal-domain bad..domain\n", 3, "bad domain")

    def test_dns_servers(self) -> None:
        cfg = parse(
            "sbc s\nsbe\ndns-server 192.0.2.53\ndns-server 127.0.0.1 5353\n"
            "dns-server 2001:db8::53 53\ndns-server 192.0.2.53 53\n"
        )
        self.assertEqual(
            [(str(d.address), d.port) for d in cfg.dns_servers],
            [("192.0.2.53", 53), ("127.0.0.1", 5353), ("2001:db8::53", 53)],
        )
        self.assertEqual(cfg.setting_lines["dns-server 127.0.0.1 5353"], 4)
        again = ConfigBuilder.from_config(cfg).freeze()
        self.assertEqual((again, again.setting_lines), (cfg, cfg.setting_lines))
        cfg = parse("sbc s\nsbe\ndns-server 192.0.2.53\ndns-server ::1\nno dns-server 192.0.2.53\n")
        self.assertEqual([str(d) for d in cfg.dns_servers], ["[::1]:53"])
        cfg = parse("sbc s\nsbe\ndns-server 192.0.2.53\ndns-server ::1\nno dns-server\n")
        self.assertEqual(cfg.dns_servers, ())
        self.assertRefused("sbc s\nsbe\nno dns-server 192.0.2.9\n", 3, "not configured")
        self.assertRefused("sbc s\nsbe\ndns-server ns.lab.test\n", 3, "expected an IP address")
        self.assertRefused("sbc s\nsbe\ndns-server 192.0.2.53 0\n", 3, "bad port")
        self.assertRefused("sbc s\nsbe\ndns-server\n", 3, "usage: dns-server ADDRESS [PORT]")
        self.assertRefused("sbc s\nsbe\ndns-server 1.2.3.4 53 x\n", 3, "too many words")

    def test_second_service(self) -> None:
        self.assertRefused("sbc one\nsbe\nsbc two\n", 3, "only one sbc service", "'one'", "line 1")

    def test_same_service_again(self) -> None:
        cfg = parse("sbc one\nsbe\nlocal-domain a.test\nsbc one\nsbe\nlocal-domain b.test\n")
        self.assertEqual(cfg.local_domains, ("a.test", "b.test"))

    def test_no_sbc(self) -> None:
        self.assertRefused("sbc one\nsbe\nlocal-domain a.test\nno sbc one\n", 0, "no 'sbc NAME'")
        cfg = parse("sbc one\nno sbc one\nsbc two\n")
        self.assertEqual(cfg.service_name, "two")
        self.assertRefused("sbc one\nno sbc two\n", 2, "sbc service 'two' is not configured")

    def test_no_sbe(self) -> None:
        cfg = parse(HEAD + "exit\nlocal-domain a.test\nexit\nno sbe\n")
        self.assertEqual(cfg, SbcConfig("s"))

    def test_active_call_policy_set(self) -> None:
        cfg = parse("sbc s\nsbe\nactive-call-policy-set 7\n")
        self.assertEqual(cfg.active_call_policy_set, 7)
        cfg = parse("sbc s\nsbe\nactive-call-policy-set 7\nno active-call-policy-set\n")
        self.assertIsNone(cfg.active_call_policy_set)
        for bad in ("0", "x", "2147483648"):
            self.assertRefused(
                f"sbc s\nsbe\nactive-call-policy-set {bad}\n", 3, "bad call-policy-set number"
            )

    def test_routing_policy(self) -> None:
        self.assertEqual(parse("sbc s\nsbe\n").routing_policy, "default")
        cfg = parse("sbc s\nsbe\nrouting-policy round-robin\n")
        self.assertEqual(cfg.routing_policy, "round-robin")
        cfg = parse("sbc s\nsbe\nrouting-policy round-robin\nno routing-policy\n")
        self.assertEqual(cfg.routing_policy, "default")
        self.assertRefused("sbc s\nsbe\nrouting-policy\n", 3, "incomplete command")


ROUTING = """\
sbc s
sbe
adjacency sip a
signaling-address ipv4 127.0.0.1
adjacency sip b
signaling-address ipv4 127.0.0.2
call-policy-set 1
first-call-routing-table src
"""
"""Leaves the interpreter in call-policy-set 1 (line 8)."""


class RoutingCommandTests(ParseErrorMixin):
    def test_every_table_kind(self) -> None:
        cfg = parse(
            ROUTING
            + textwrap.dedent(
                """\
                rtg-src-adjacency-table src
                 entry 1
                  match-adjacency a
                  action next-table dom
                rtg-dst-domain-table dom
                 entry 1
                  match-domain example.com
                  action next-table num
                rtg-dst-address-table num
                 entry 10
                  match-address +4420
                  action next-table rr
                 entry 5
                  match-address 44
                  dst-adjacency a
                  action complete
                rtg-round-robin-table rr
                 entry 1
                  dst-adjacency a
                  action complete
                 entry 2
                  dst-adjacency b
                  action complete
                """
            )
        )
        tables = cfg.call_policy_sets[1].tables
        self.assertEqual(list(tables), ["src", "dom", "num", "rr"])
        self.assertEqual(
            [t.kind for t in tables.values()],
            [
                TableKind.SRC_ADJACENCY,
                TableKind.DST_DOMAIN,
                TableKind.DST_ADDRESS,
                TableKind.ROUND_ROBIN,
            ],
        )
        self.assertEqual(tables["src"].entries[0].next_table, "dom")
        self.assertIs(tables["src"].entries[0].action, Action.NEXT_TABLE)
        self.assertEqual(tables["dom"].entries[0].match, "example.com")
        self.assertEqual([e.number for e in tables["num"].entries], [5, 10])
        self.assertEqual([e.match for e in tables["num"].entries], ["44", "+4420"])
        self.assertEqual([e.dst_adjacency for e in tables["rr"].entries], ["a", "b"])
        self.assertEqual([e.match for e in tables["rr"].entries], [None, None])

    def test_match_command_must_fit_the_table(self) -> None:
        err = self.assertRefused(
            ROUTING + "rtg-src-adjacency-table src\nentry 1\nmatch-domain x.test\n",
            11,
            "'match-domain' is not valid in mode config-sbc-sbe-rtgpolicy-rtgtable-entry",
            "rtg-dst-domain-table",
        )
        self.assertNotIn("unknown command", err.message)
        self.assertRefused(
            ROUTING + "rtg-round-robin-table rr\nentry 1\nmatch-address 12\n",
            11,
            "'match-address' is not valid",
        )

    def test_bad_match_values(self) -> None:
        self.assertRefused(
            ROUTING + "rtg-dst-address-table n\nentry 1\nmatch-address 12a\n",
            11,
            "bad digit prefix",
        )
        self.assertRefused(
            ROUTING + "rtg-dst-domain-table n\nentry 1\nmatch-domain a..b\n", 11, "bad domain"
        )
        self.assertRefused(
            ROUTING + "rtg-src-adjacency-table n\nentry 1\nmatch-adjacency a/b\n",
            11,
            "bad adjacency name",
        )

    def test_no_match_dst_action(self) -> None:
        cfg = parse(
            ROUTING
            + "rtg-src-adjacency-table src\nentry 1\nmatch-adjacency a\ndst-adjacency b\n"
            + "action next-table src\nno match-adjacency\nno dst-adjacency\nno action\n"
            + "action complete\n"
        )
        entry = cfg.call_policy_sets[1].tables["src"].entries[0]
        self.assertEqual(
            (entry.match, entry.dst_adjacency, entry.action, entry.next_table),
            (None, None, "complete", None),
        )

    def test_action_errors(self) -> None:
        base = ROUTING + "rtg-src-adjacency-table src\nentry 1\n"
        self.assertRefused(base + "action\n", 11, "incomplete command")
        self.assertRefused(base + "action next-table\n", 11, "incomplete command")
        self.assertRefused(base + "action drop\n", 11, "bad action 'drop'")
        self.assertRefused(base + "action complete now\n", 11, "too many words")

    def test_entry_without_action(self) -> None:
        self.assertRefused(
            ROUTING
            + "rtg-src-adjacency-table src\nentry 1\nmatch-adjacency a\nentry 2\naction complete\n",
            10,
            "entry 1 of table 'src' has no action",
        )

    def test_entries_sorted_and_no_entry(self) -> None:
        cfg = parse(
            ROUTING
            + "rtg-round-robin-table src\nentry 3\naction complete\nentry 1\naction complete\n"
            + "entry 2\naction complete\nno entry 3\n"
        )
        self.assertEqual([e.number for e in cfg.call_policy_sets[1].tables["src"].entries], [1, 2])
        self.assertRefused(
            ROUTING + "rtg-round-robin-table src\nno entry 3\n",
            10,
            "entry 3 of table 'src' is not configured",
        )

    def test_duplicates(self) -> None:
        self.assertRefused(
            ROUTING + "rtg-round-robin-table src\nentry 1\naction complete\nentry 1\n",
            12,
            "duplicate entry 1",
            "line 10",
        )
        self.assertRefused(
            ROUTING + "rtg-round-robin-table src\nrtg-round-robin-table src\n",
            10,
            "duplicate table 'src'",
        )
        self.assertRefused(
            ROUTING + "rtg-round-robin-table src\nrtg-dst-domain-table src\n",
            10,
            "already a rtg-round-robin-table",
        )
        self.assertRefused(
            ROUTING + "call-policy-set 1\n", 9, "duplicate call-policy-set 1", "line 7"
        )

    def test_no_table_and_no_set(self) -> None:
        cfg = parse(
            ROUTING
            + "rtg-round-robin-table t\nno rtg-round-robin-table t\nno first-call-routing-table\n"
        )
        self.assertEqual(cfg.call_policy_sets[1].tables, {})
        self.assertIsNone(cfg.call_policy_sets[1].first_call_routing_table)
        self.assertRefused(
            ROUTING + "rtg-round-robin-table t\nno rtg-dst-domain-table t\n", 10, "not configured"
        )
        cfg = parse(ROUTING + "no call-policy-set 1\n")
        self.assertEqual(cfg.call_policy_sets, {})
        self.assertRefused(
            ROUTING + "no call-policy-set 2\n", 9, "call-policy-set 2 is not configured"
        )

    def test_bad_entry_number(self) -> None:
        self.assertRefused(
            ROUTING + "rtg-round-robin-table t\nentry zero\n", 10, "bad entry number 'zero'"
        )


class ModeStackTests(ParseErrorMixin):
    def test_command_pops_to_the_accepting_mode(self) -> None:
        # 'local-domain' after an entry pops entry, table, call-policy-set.
        cfg = parse(
            ROUTING
            + "rtg-round-robin-table t\nentry 1\ndst-adjacency a\naction complete\n"
            + "local-domain x.test\nadjacency sip c\nsignaling-address ipv4 127.0.0.3\n"
        )
        self.assertEqual(cfg.local_domains, ("x.test",))
        self.assertEqual([a.name for a in cfg.adjacencies], ["a", "b", "c"])

    def test_setting_after_pop_goes_to_the_new_block(self) -> None:
        cfg = parse(HEAD + "adjacency sip b\nsignaling-address ipv4 127.0.0.2\nattach\n")
        self.assertFalse(cfg.adjacency("a").attached)
        self.assertTrue(cfg.adjacency("b").attached)

    def test_exit(self) -> None:
        cfg = parse(HEAD + "exit\nlocal-domain x.test\nexit\nexit\nexit\nexit\nsbc s\n")
        self.assertEqual(cfg.local_domains, ("x.test",))

    def test_exit_then_setting_of_the_left_mode_is_refused(self) -> None:
        self.assertRefused(
            HEAD + "exit\nattach\n",
            6,
            "'attach' is not valid in mode config-sbc-sbe",
            "adjacency sip mode",
        )

    def test_end(self) -> None:
        self.assertRefused(HEAD + "end\nattach\n", 6, "not valid in mode config:")
        self.assertRefused(HEAD + "exit now\n", 5, "too many words")

    def test_unknown_command_names_word_and_mode(self) -> None:
        err = self.assertRefused(HEAD + "signalling-address ipv4 1.2.3.4\n", 5)
        self.assertEqual(
            err.message, "unknown command 'signalling-address' in mode config-sbc-sbe-adj-sip"
        )
        self.assertEqual(
            str(err),
            "test.conf:5: unknown command 'signalling-address' in mode config-sbc-sbe-adj-sip",
        )
        self.assertRefused("frobnicate\n", 1, "unknown command 'frobnicate' in mode config")
        self.assertRefused("sbc s\nsbe\nno frob\n", 3, "unknown command 'no frob'")
        self.assertRefused("sbc s\nno\n", 2, "'no' must be followed")

    def test_command_of_a_mode_never_entered(self) -> None:
        self.assertRefused(
            "sbc s\nsbe\nsignaling-port 5060\n",
            3,
            "'signaling-port' is not valid",
            "adjacency sip mode",
        )
        self.assertRefused("sbe\n", 1, "'sbe' is not valid in mode config", "sbc mode")

    def test_bad_arguments_do_not_pop(self) -> None:
        # 'entry' is known in table mode: bad arguments are reported there.
        self.assertRefused(
            ROUTING + "rtg-round-robin-table t\nentry 1\nentry x\n", 11, "bad entry number"
        )


class BuilderApiTests(SynchronousTestCase):
    def run_lines(self, builder: ConfigBuilder, *lines: str) -> Mode:
        mode = ROOT
        for number, line in enumerate(lines, start=1):
            mode = apply_command(builder, mode, split_words(line), number)
        return mode

    def test_modes_and_prompts(self) -> None:
        b = ConfigBuilder("<cli>")
        mode = ROOT
        self.assertEqual(mode.prompt, "config")
        prompts = []
        for line in [
            "sbc s",
            "sbe",
            "adjacency sip a",
            "exit",
            "call-policy-set 1",
            "rtg-dst-domain-table t",
            "entry 1",
        ]:
            mode = b.apply(mode, split_words(line), 0)
            prompts.append(mode.prompt)
        self.assertEqual(
            prompts,
            [
                "config-sbc",
                "config-sbc-sbe",
                "config-sbc-sbe-adj-sip",
                "config-sbc-sbe",
                "config-sbc-sbe-rtgpolicy",
                "config-sbc-sbe-rtgpolicy-rtgtable",
                "config-sbc-sbe-rtgpolicy-rtgtable-entry",
            ],
        )
        self.assertEqual(mode.top, Frame(ModeKind.ENTRY, number=1, table_kind=TableKind.DST_DOMAIN))
        self.assertEqual(mode.find(ModeKind.ROUTING_TABLE).name, "t")
        self.assertEqual(b.apply(mode, ["end"], 0), ROOT)
        self.assertEqual(b.apply(ROOT, ["exit"], 0), ROOT)
        self.assertEqual(b.apply(mode, [], 0), mode)

    def test_cli_builder_reenters_blocks(self) -> None:
        b = ConfigBuilder("<cli>")
        self.run_lines(
            b,
            "sbc s",
            "sbe",
            "adjacency sip a",
            "signaling-address ipv4 127.0.0.1",
            "adjacency sip a",
            "attach",
        )
        self.assertTrue(b.freeze().adjacency("a").attached)

    def test_failed_command_changes_nothing(self) -> None:
        b = ConfigBuilder("<cli>")
        mode = self.run_lines(
            b, "sbc s", "sbe", "adjacency sip a", "signaling-address ipv4 127.0.0.1"
        )
        before = b.freeze()
        for bad in (
            "signaling-port 99999",
            "security inbound bogus",
            "remote-address ipv4 10.0.0.1/8",
            "adjacency sip a b",
            "sbc other",
            "bogus",
        ):
            with self.assertRaises(ConfigError) as caught:
                b.apply(mode, split_words(bad), 42)
            self.assertEqual(caught.exception.path, "<cli>")
            self.assertEqual(caught.exception.line, 42)
        self.assertEqual(b.freeze(), before)

    def test_from_config_round_trip(self) -> None:
        cfg = parse(BehaviourExampleTests.text)
        b = ConfigBuilder.from_config(cfg)
        self.assertEqual(b.freeze(), cfg)
        mode = b.apply(ROOT, ["sbc", "mysbc"], 1)
        mode = b.apply(mode, ["sbe"], 2)
        mode = b.apply(mode, ["adjacency", "sip", "core"], 3)
        b.apply(mode, ["no", "attach"], 4)
        self.assertFalse(b.freeze().adjacency("core").attached)
        self.assertTrue(cfg.adjacency("core").attached)

    def test_mode_of_a_removed_block(self) -> None:
        # A CLI session that aborts its candidate may still hold a mode inside a block
        # the fresh candidate lacks: commands there are refused, not applied elsewhere.
        paths = {
            "attach": ["sbc s", "sbe", "adjacency sip a"],
            "first-call-routing-table t": ["sbc s", "sbe", "call-policy-set 1"],
            "entry 1": ["sbc s", "sbe", "call-policy-set 1", "rtg-round-robin-table t"],
            "action complete": [
                "sbc s",
                "sbe",
                "call-policy-set 1",
                "rtg-round-robin-table t",
                "entry 1",
            ],
        }
        for command, path in paths.items():
            mode = self.run_lines(ConfigBuilder(), *path)
            fresh = ConfigBuilder("<cli>")
            fresh.apply(ROOT, ["sbc", "s"], 1)
            err = self.assertRaises(ConfigError, fresh.apply, mode, split_words(command), 5)
            self.assertIn("no longer exists", err.message)
            self.assertEqual(err.line, 5)
        self.assertRaises(KeyError, ROOT.find, ModeKind.SBE)

    def test_from_config_keeps_line_numbers(self) -> None:
        cfg = parse(BehaviourExampleTests.text)
        again = ConfigBuilder.from_config(cfg).freeze()
        self.assertEqual(again.setting_lines, cfg.setting_lines)
        self.assertEqual(again.setting_lines["local-domain example.com"], 3)
        self.assertEqual(
            [a.setting_lines for a in again.adjacencies], [a.setting_lines for a in cfg.adjacencies]
        )
        self.assertEqual(again.call_policy_sets[1].tables["main"].entries[0].line, 18)

    def test_copy_is_independent(self) -> None:
        b = ConfigBuilder("<cli>")
        self.run_lines(b, "sbc s", "sbe", "local-domain a.test")
        c = b.copy()
        c.apply(
            ROOT.push(Frame(ModeKind.SBC, name="s")).push(Frame(ModeKind.SBE)),
            ["local-domain", "b.test"],
            9,
        )
        self.assertEqual(b.freeze().local_domains, ("a.test",))
        self.assertEqual(c.freeze().local_domains, ("a.test", "b.test"))

    def test_commands_for(self) -> None:
        def keywords(mode_lines: list[str]) -> set[str]:
            b = ConfigBuilder()
            mode = ROOT
            for line in mode_lines:
                mode = b.apply(mode, split_words(line), 0)
            return {h.keyword for h in commands_for(mode)}

        self.assertEqual(keywords([]), {"sbc", "exit", "end"})
        self.assertEqual(keywords(["sbc s"]), {"sbe", "exit", "end"})
        self.assertEqual(
            keywords(["sbc s", "sbe"]),
            {
                "local-domain",
                "dns-server",
                "adjacency",
                "call-policy-set",
                "active-call-policy-set",
                "routing-policy",
                "user-database",
                "blocked-user-agent",
                "store",
                "node",
                "limits",
                "exit",
                "end",
            },
        )
        self.assertEqual(
            keywords(["sbc s", "sbe", "limits"]),
            {
                "max-message-size",
                "max-connections-per-adjacency",
                "max-connections-per-source",
                "tls-handshake-timeout",
                "tcp-idle-timeout",
                "partial-message-timeout",
                "outbound-idle-timeout",
                "outbound-connect-timeout",
                "udp-receive-buffer",
                "no-answer-timeout",
                "overload-lag-threshold",
                "overload-retry-after",
                "overload-pause-lag",
                "overload-queue-threshold",
                "detach-drain-time",
                "cli-idle-timeout",
                "ssh-login-timeout",
                "ssh-max-auth-tries",
                "nonce-lifetime",
                "register-refresh-min",
                "commit-history",
                "dns-timeout",
                "dns-negative-cache-time",
                "dns-cache-entries",
                "source-rate-limit",
                "source-ban-time",
                "auth-failure-limit",
                "max-tracked-sources",
                "max-new-connections-per-second",
                "max-tls-handshakes-per-second",
                "exit",
                "end",
            },
        )
        self.assertEqual(
            keywords(["sbc s", "sbe", "adjacency sip a"]),
            {
                "signaling-address",
                "signaling-port",
                "transport",
                "remote-address",
                "signaling-peer",
                "signaling-peer-port",
                "security",
                "client-certificate",
                "authentication",
                "digest-algorithms",
                "sip-over-tls",
                "cluster-link",
                "attach",
                "exit",
                "end",
            },
        )
        self.assertEqual(
            keywords(["sbc s", "sbe", "call-policy-set 1"]),
            {"first-call-routing-table", *(str(k) for k in TableKind), "exit", "end"},
        )
        cps = ["sbc s", "sbe", "call-policy-set 1"]
        self.assertEqual(keywords([*cps, "rtg-src-adjacency-table t"]), {"entry", "exit", "end"})
        entry_base = {"dst-adjacency", "action", "exit", "end"}
        for kind, match in (
            ("rtg-src-adjacency-table", {"match-adjacency"}),
            ("rtg-dst-domain-table", {"match-domain"}),
            ("rtg-dst-address-table", {"match-address"}),
            ("rtg-round-robin-table", set()),
        ):
            self.assertEqual(keywords([*cps, f"{kind} t", "entry 1"]), entry_base | match)

    def test_help_text(self) -> None:
        mode = (
            ROOT.push(Frame(ModeKind.SBC, name="s"))
            .push(Frame(ModeKind.SBE))
            .push(Frame(ModeKind.ADJACENCY, name="a"))
        )
        helps = {h.keyword: h for h in commands_for(mode)}
        self.assertIn("trusted-encrypted", helps["security"].syntax)
        self.assertEqual(helps["attach"].no_syntax, "no attach")
        self.assertTrue(all(h.description for h in helps.values()))


class LoadConfigTests(SynchronousTestCase):
    def test_load(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("sbc s\n sbe\n  local-domain a.test\n")
        cfg = load_config(path)
        self.assertEqual(cfg.local_domains, ("a.test",))
        self.assertEqual(cfg.source, path)

    def test_errors_name_the_file(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("sbc s\n sbe\n  bogus\n")
        err = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((err.path, err.line), (path, 3))

    def test_missing_file(self) -> None:
        path = self.mktemp()
        err = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((err.path, err.line), (path, 0))
        self.assertIn("cannot read", err.message)

    def test_not_utf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"sbc s\nsbe\nlocal-domain \xff.test\n")
        err = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(err.line, 3)
        self.assertIn("UTF-8", err.message)


class LimitsCommandTests(ParseErrorMixin):
    def test_block(self) -> None:
        cfg = parse(
            """\
            sbc s
             sbe
              limits
               max-message-size 4096
               max-connections-per-adjacency 10
               max-connections-per-source 2
               tls-handshake-timeout 3
               tcp-idle-timeout 60
               partial-message-timeout 5
               outbound-idle-timeout 30
               outbound-connect-timeout 4
            """
        )
        self.assertEqual(
            cfg.limits,
            Limits(
                max_message_size=4096,
                max_connections_per_adjacency=10,
                max_connections_per_source=2,
                tls_handshake_timeout=3,
                tcp_idle_timeout=60,
                partial_message_timeout=5,
                outbound_idle_timeout=30,
                outbound_connect_timeout=4,
            ),
        )
        self.assertEqual(cfg.limits.line, 3)
        self.assertEqual(cfg.limits.setting_lines["tcp-idle-timeout"], 8)

    def test_missing_block_gives_defaults(self) -> None:
        self.assertEqual(parse("sbc s\nsbe\n").limits, Limits())

    def test_block_then_adjacency_without_indentation(self) -> None:
        cfg = parse(
            HEAD.replace("adjacency sip a\n", "limits\ntcp-idle-timeout 7\nadjacency sip a\n")
        )
        self.assertEqual(cfg.limits.tcp_idle_timeout, 7)
        self.assertEqual([a.name for a in cfg.adjacencies], ["a"])

    def test_out_of_range(self) -> None:
        self.assertRefused(
            "sbc s\nsbe\nlimits\nmax-message-size 100\n",
            4,
            "bad max-message-size '100': expected a number from 1024 to 16777216",
        )
        self.assertRefused(
            "sbc s\nsbe\nlimits\ntcp-idle-timeout 0\n", 4, "bad tcp-idle-timeout '0'"
        )
        self.assertRefused("sbc s\nsbe\nlimits\ntcp-idle-timeout x\n", 4, "bad tcp-idle-timeout")

    def test_arity(self) -> None:
        self.assertRefused(
            "sbc s\nsbe\nlimits\ntcp-idle-timeout\n",
            4,
            "incomplete command: usage: tcp-idle-timeout N",
        )
        self.assertRefused("sbc s\nsbe\nlimits 3\n", 3, "too many words: usage: limits")

    def test_limit_outside_limits_mode(self) -> None:
        self.assertRefused(
            "sbc s\nsbe\ntcp-idle-timeout 5\n", 3, "'tcp-idle-timeout' is not valid", "limits mode"
        )

    def test_no_setting_restores_default(self) -> None:
        cfg = parse("sbc s\nsbe\nlimits\ntcp-idle-timeout 5\nno tcp-idle-timeout\n")
        self.assertEqual(cfg.limits, Limits())
        self.assertNotIn("tcp-idle-timeout", cfg.limits.setting_lines)

    def test_no_limits_restores_all(self) -> None:
        cfg = parse(
            "sbc s\nsbe\nlimits\ntcp-idle-timeout 5\nmax-message-size 2000\nexit\nno limits\n"
        )
        self.assertEqual(cfg.limits, Limits())

    def test_no_sbe_clears_limits(self) -> None:
        cfg = parse("sbc s\nsbe\nlimits\ntcp-idle-timeout 5\nexit\nexit\nno sbe\n")
        self.assertEqual(cfg.limits, Limits())

    def test_cli_builder_keeps_limits(self) -> None:
        running = parse("sbc s\nsbe\nlimits\ntcp-idle-timeout 5\n")
        builder = ConfigBuilder.from_config(running)
        mode = ROOT
        for line in ("sbc s", "sbe", "limits", "max-message-size 2048"):
            mode = builder.apply(mode, split_words(line), 0)
        self.assertEqual(mode.kind, ModeKind.LIMITS)
        self.assertEqual(mode.prompt, "config-sbc-sbe-limits")
        candidate = builder.freeze()
        self.assertEqual(candidate.limits, Limits(tcp_idle_timeout=5, max_message_size=2048))
        self.assertEqual(ConfigBuilder.from_config(running).freeze(), running)


class FloodDefenceSettingsTests(ParseErrorMixin):
    """source-rate-limit REQUESTS SECONDS (two numbers) and blocked-user-agent TEXT."""

    def test_two_number_limit(self) -> None:
        cfg = parse("sbc s\nsbe\nlimits\nsource-rate-limit 50 5\nauth-failure-limit 3 120\n")
        self.assertEqual((cfg.limits.source_rate_requests, cfg.limits.source_rate_seconds), (50, 5))
        self.assertEqual((cfg.limits.auth_failure_limit, cfg.limits.auth_failure_seconds), (3, 120))
        self.assertEqual(cfg.limits.setting_lines["source-rate-limit"], 4)
        self.assertIn(" source-rate-limit 50 5\n", render_config(cfg))

    def test_one_number_changed_renders_both(self) -> None:
        cfg = parse("sbc s\nsbe\nlimits\nsource-rate-limit 200 60\n")
        self.assertIn(" source-rate-limit 200 60\n", render_config(cfg))
        self.assertEqual(parse(render_config(cfg)), cfg)
        # back at both defaults: not rendered
        self.assertNotIn(
            "limits", render_config(parse("sbc s\nsbe\nlimits\nsource-rate-limit 200 10\n"))
        )

    def test_two_number_refusals(self) -> None:
        self.assertRefused(
            "sbc s\nsbe\nlimits\nsource-rate-limit 50\n",
            4,
            "incomplete command: usage: source-rate-limit REQUESTS SECONDS",
        )
        self.assertRefused("sbc s\nsbe\nlimits\nsource-rate-limit 50 5 5\n", 4, "too many words")
        self.assertRefused(
            "sbc s\nsbe\nlimits\nsource-rate-limit 50 0\n",
            4,
            "bad source-rate-limit SECONDS '0': expected a number from 1 to 3600",
        )
        self.assertRefused(
            "sbc s\nsbe\nlimits\nsource-rate-limit 0 10\n",
            4,
            "bad source-rate-limit REQUESTS '0': expected a number from 1 to 1000000",
        )

    def test_no_two_number_limit(self) -> None:
        for line in ("no source-rate-limit", "no source-rate-limit 50 5"):
            cfg = parse(f"sbc s\nsbe\nlimits\nsource-rate-limit 50 5\n{line}\n")
            self.assertEqual(cfg.limits, Limits(), line)
            self.assertNotIn("source-rate-limit", cfg.limits.setting_lines)

    def test_help_shows_both_defaults(self) -> None:
        builder = ConfigBuilder()
        mode = ROOT
        for line in ("sbc s", "sbe", "limits"):
            mode = builder.apply(mode, split_words(line), 0)
        [help] = [h for h in commands_for(mode) if h.keyword == "source-rate-limit"]
        self.assertEqual(help.syntax, "source-rate-limit REQUESTS SECONDS")
        self.assertIn("(messages, seconds, default 200 10)", help.description)

    def test_cli_builder_keeps_two_number_limit(self) -> None:
        running = parse("sbc s\nsbe\nlimits\nsource-rate-limit 200 60\n")
        self.assertEqual(ConfigBuilder.from_config(running).freeze(), running)

    def test_blocked_user_agents(self) -> None:
        cfg = parse(
            "sbc s\nsbe\nblocked-user-agent friendly-scanner\nblocked-user-agent sip  cli\n"
            "blocked-user-agent friendly-scanner\n"
        )
        self.assertEqual(cfg.blocked_user_agents, ("friendly-scanner", "sip cli"))
        self.assertEqual(cfg.setting_lines["blocked-user-agent sip cli"], 4)
        text = render_config(cfg)
        self.assertIn("  routing-policy default\n  blocked-user-agent friendly-scanner\n", text)
        self.assertEqual(parse(text), cfg)
        self.assertEqual(ConfigBuilder.from_config(cfg).freeze(), cfg)

    def test_no_blocked_user_agent(self) -> None:
        head = "sbc s\nsbe\nblocked-user-agent a\nblocked-user-agent b\n"
        self.assertEqual(parse(head + "no blocked-user-agent a\n").blocked_user_agents, ("b",))
        self.assertEqual(parse(head + "no blocked-user-agent\n").blocked_user_agents, ())
        self.assertEqual(parse(head + "exit\nno sbe\n").blocked_user_agents, ())
        self.assertRefused(
            head + "no blocked-user-agent c\n", 5, "blocked-user-agent 'c' is not configured"
        )

    def test_blocked_user_agent_refusals(self) -> None:
        self.assertRefused(
            "sbc s\nsbe\nblocked-user-agent\n",
            3,
            "incomplete command: usage: blocked-user-agent TEXT",
        )
        self.assertRefused(
            "sbc s\nsbe\nblocked-user-agent " + "x" * 129 + "\n",
            3,
            "use printable text of at most 128 characters",
        )
