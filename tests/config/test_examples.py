"""The shipped examples, the documentation's examples and the checker command."""

from __future__ import annotations

import io
import ipaddress
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from sbc.auth import load_user_database
from sbc.config import (
    ROOT,
    Authentication,
    ClientCertificate,
    ConfigBuilder,
    DigestAlgorithm,
    Security,
    TableKind,
    Transport,
    commands_for,
    load_config,
    parse_config,
    split_words,
    validate,
)
from sbc.config.__main__ import main
from sbc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "examples" / "lab.conf"
BAD = REPO / "examples" / "bad.conf"
DOC = REPO / "docs" / "configuration.md"


def doc_blocks() -> list[str]:
    return re.findall(r"^```\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


class LabConfigTests(SynchronousTestCase):
    def test_lab_config(self) -> None:
        cfg = load_config(str(LAB))
        validate(cfg, certificate_configured=True)
        self.assertEqual(cfg.local_domains, ("lab.test",))
        self.assertEqual(
            [a.name for a in cfg.adjacencies], ["access", "core-tls", "phones", "trunk"]
        )
        loopback = ipaddress.ip_address("127.0.0.1")
        for adj in cfg.adjacencies:
            self.assertEqual(adj.signaling_address, loopback)
            self.assertTrue(adj.attached)
            self.assertTrue(5000 <= adj.port < 5100)
            self.assertTrue(5000 <= adj.peer_port < 5100)
        access, core, phones, trunk = cfg.adjacencies
        self.assertEqual(
            (phones.port, phones.client_certificate, phones.authentication, phones.sip_over_tls),
            (5063, ClientCertificate.OPTIONAL, Authentication.DIGEST, True),
        )
        self.assertEqual(phones.offered_algorithms, (DigestAlgorithm.MD5,))
        self.assertEqual(cfg.user_database, "lab-users.htdigest")
        users = load_user_database(str(LAB.parent / cfg.user_database))
        self.assertIn(("alice", "lab.test"), users)
        self.assertEqual(
            (access.security_inbound, access.security_outbound, access.transport, access.port),
            (Security.UNTRUSTED, Security.UNTRUSTED, Transport.UDP_TCP, 5060),
        )
        self.assertEqual(access.remote_addresses, (ipaddress.ip_network("127.0.0.0/8"),))
        self.assertEqual(
            (core.security_inbound, core.security_outbound, core.port),
            (Security.TRUSTED_ENCRYPTED, Security.TRUSTED_ENCRYPTED, 5061),
        )
        self.assertEqual((core.signaling_peer, core.peer_port), ("sbc-peer.lab.test", 5071))
        self.assertEqual(
            (trunk.security_inbound, trunk.security_outbound, trunk.transport),
            (Security.TRUSTED_UNENCRYPTED, Security.TRUSTED_UNENCRYPTED, Transport.TCP),
        )
        self.assertEqual(
            (trunk.port, trunk.signaling_peer, trunk.peer_port), (5062, "127.0.0.1", 5070)
        )
        self.assertEqual(cfg.active_call_policy_set, 1)
        self.assertEqual(cfg.routing_policy, "default")
        cps = cfg.active_policy_set
        assert cps is not None
        first = cps.tables[cps.first_call_routing_table or ""]
        self.assertIs(first.kind, TableKind.SRC_ADJACENCY)
        routes = {e.match: e.dst_adjacency for e in first.entries}
        self.assertEqual(routes["access"], "trunk")
        self.assertEqual(routes["phones"], "trunk")

    def test_lab_config_needs_the_certificate(self) -> None:
        cfg = load_config(str(LAB))
        err = self.assertRaises(ConfigError, validate, cfg, certificate_configured=False)
        self.assertIn("'core-tls' is trusted-encrypted but no certificate", err.message)
        lines = LAB.read_text().splitlines()
        self.assertEqual(lines[err.line - 1].strip(), "security trusted-encrypted")


class BadConfigTests(SynchronousTestCase):
    def test_bad_config_has_exactly_one_problem(self) -> None:
        cfg = load_config(str(BAD))
        err = self.assertRaises(ConfigError, validate, cfg, certificate_configured=True)
        self.assertEqual(err.line, 14)
        self.assertEqual(BAD.read_text().splitlines()[13].strip(), "transport udp")
        fixed = BAD.read_text().replace("   transport udp\n", "")
        validate(parse_config(fixed), certificate_configured=True)

    def test_docs_show_the_real_message(self) -> None:
        cfg = load_config(str(BAD))
        err = self.assertRaises(ConfigError, validate, cfg, certificate_configured=True)
        shown = f"examples/bad.conf:{err.line}: {err.message}"
        self.assertIn(shown, DOC.read_text(encoding="utf-8"))

    def test_docs_block_is_the_file_without_comments(self) -> None:
        body = "".join(
            line + "\n" for line in BAD.read_text().splitlines() if not line.startswith("!")
        )
        self.assertIn(body, doc_blocks())


class DocumentationTests(SynchronousTestCase):
    def test_config_blocks_parse_and_validate(self) -> None:
        configs = [b for b in doc_blocks() if re.match(r"(!.*\n)*sbc ", b)]
        self.assertGreaterEqual(len(configs), 3)
        for block in configs:
            cfg = parse_config(block, "doc")
            if "core-tls" not in block:
                validate(cfg, certificate_configured=True)

    def test_typo_example(self) -> None:
        text = "sbc s\nsbe\nadjacency sip a\nsignaling-address ipv4 127.0.0.1\nsecurity untrusted\n"
        text += "remote-address ipv4 127.0.0.0/8\nsignalling-address ipv4 127.0.0.1\n"
        err = self.assertRaises(ConfigError, parse_config, text, "lab.conf")
        self.assertIn(str(err), DOC.read_text(encoding="utf-8"))

    def test_every_command_is_documented(self) -> None:
        doc = DOC.read_text(encoding="utf-8")
        paths = [
            [],
            ["sbc s"],
            ["sbc s", "sbe"],
            ["sbc s", "sbe", "adjacency sip a"],
            ["sbc s", "sbe", "call-policy-set 1"],
            *(["sbc s", "sbe", "call-policy-set 1", f"{kind} t", "entry 1"] for kind in TableKind),
            ["sbc s", "sbe", "call-policy-set 1", "rtg-round-robin-table t"],
            ["sbc s", "sbe", "limits"],
        ]
        for path in paths:
            builder = ConfigBuilder()
            mode = ROOT
            for line in path:
                mode = builder.apply(mode, split_words(line), 0)
            for help in commands_for(mode):
                self.assertIn(f"`{help.keyword}", doc, help.keyword)
                if help.no_syntax:
                    self.assertIn(f"`no {help.keyword}", doc, help.no_syntax)


class CheckerTests(SynchronousTestCase):
    def run_main(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        status = main(list(argv), out)
        return status, out.getvalue()

    def test_ok(self) -> None:
        self.assertEqual(self.run_main(str(LAB)), (0, f"{LAB}: ok\n"))

    def test_refused(self) -> None:
        status, text = self.run_main(str(LAB), str(BAD))
        self.assertEqual(status, 1)
        self.assertIn(f"{LAB}: ok\n", text)
        self.assertIn(
            f"{BAD}:14: adjacency 'core-tls' is trusted-encrypted but uses transport udp", text
        )

    def test_no_certificate(self) -> None:
        status, text = self.run_main("--no-certificate", str(LAB))
        self.assertEqual(status, 1)
        self.assertIn("no certificate is configured", text)

    def test_parse_error_and_missing_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("sbc s\nbogus\n")
        status, text = self.run_main(path, path + ".missing")
        self.assertEqual(status, 1)
        self.assertIn(f"{path}:2: unknown command 'bogus' in mode config-sbc", text)
        self.assertIn(f"{path}.missing: cannot read the file", text)

    def test_render(self) -> None:
        status, text = self.run_main("--render", str(LAB))
        self.assertEqual(status, 0)
        self.assertEqual(parse_config(text), load_config(str(LAB)))

    def test_extra_routing_policy(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("sbc s\nsbe\nrouting-policy weighted\n")
        self.assertEqual(self.run_main(path)[0], 1)
        self.assertEqual(self.run_main("--routing-policy", "weighted", path)[0], 0)
