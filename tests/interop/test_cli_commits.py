"""The seed's steps verbatim, commit ids, rollback and restart, on a real daemon via ``sbc-cli``."""

from __future__ import annotations

import getpass
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import FailTest

from tests.interop.harness import (
    HOST,
    AdjacencySpec,
    _listening_sockets,
    make_pki,
    pause,
    start_sbc,
)
from tests.interop.test_cli import CliTestCase, cli_socket
from tests.support.peers import free_port


@defer.inlineCallbacks
def wait_ports(port: int, listening: bool, seconds: float = 5.0) -> Any:
    """Poll /proc/net until ``port`` is (or is no longer) listening on UDP and TCP."""
    for _ in range(int(seconds / 0.05) + 1):
        found = _listening_sockets()
        present = [(port, udp) in found for udp in (True, False)]
        if all(present) if listening else not any(present):
            return None
        yield pause(0.05)
    raise FailTest(f"port {port} is {'not ' if listening else 'still '}listening")


class CommitInteropTests(CliTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_seed_steps_exactly_as_written(self) -> Any:
        """Steps 1-8 of the seed, typed as written, on an adjacency 'test' at 10.1.0.2:5060."""
        pki = make_pki(self.mktemp())
        sbc = yield start_sbc(
            self, pki, (AdjacencySpec("access", "untrusted", "udp-tcp"),), service="mysbc"
        )
        path = cli_socket(sbc.child)
        # The router already knows adjacency 'test' (detached, not yet secured).
        result = yield self.sbc_cli(
            path, "configure", "sbc mysbc", "sbe", "adjacency sip test",
            "signaling-address ipv4 10.1.0.2", "signaling-port 5060", "commit", "end",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, result.text())

        result = yield self.sbc_cli(
            path,
            "configure",  # step 1
            "sbc mysbc",  # step 2
            "sbe",  # step 3
            "adjacency sip test",  # step 4
            "security trusted-encrypted",  # step 5
            "commit",  # step 6
            "exit",  # step 7, then out of every mode
            "exit",
            "exit",
            "exit",
            "show services sbc mysbc sbe adjacencies",  # step 8
            "show services sbc sbe adjacencies",  # the seed's example, service name left out
        )
        self.assertEqual(result.exit_code, 0, result.text())
        out = result.stdout.decode()
        block = (
            "Adjacency: test (SIP)\n"
            "  Status: Detached\n"
            "  Signaling address: 10.1.0.2:5060\n"
            "  Transport: TLS\n"
            "  Security: Trusted-Encrypted\n"
        )
        self.assertEqual(out.count(block), 2, out)
        with open(sbc.config_path) as f:
            self.assertIn("security trusted-encrypted", f.read())

    @defer.inlineCallbacks
    def test_commit_list_rollback_and_restart(self) -> Any:
        pki = make_pki(self.mktemp())
        sbc = yield start_sbc(
            self, pki, (AdjacencySpec("access", "untrusted", "udp-tcp"),), service="mysbc"
        )
        path = cli_socket(sbc.child)
        new_port = free_port()
        result = yield self.sbc_cli(
            path, "configure", "sbc mysbc", "sbe", "adjacency sip trunk",
            f"signaling-address ipv4 {HOST}", f"signaling-port {new_port}",
            "security trusted-unencrypted", "attach", "commit comment add trunk", "end",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, result.text())
        yield wait_ports(new_port, listening=True)
        response = yield self.options(new_port)
        self.assertEqual(response.status, 200)
        result = yield self.sbc_cli(
            path, "configure", "sbc mysbc", "sbe", "local-domain second.test", "commit", "end",
            "show configuration commit list",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, result.text())
        rows = result.stdout.decode().strip().split("\n")
        self.assertEqual(rows[0].split(), ["SNo.", "ID", "User", "Client", "Time", "Comment"])
        self.assertEqual(rows[2].split()[:4], ["1", "1000000002", getpass.getuser(), "cli"])
        self.assertEqual(rows[3].split()[:4], ["2", "1000000001", getpass.getuser(), "cli"])
        self.assertTrue(rows[3].endswith("add trunk"), rows[3])

        result = yield self.sbc_cli(path, "show configuration commit changes 1000000002")
        self.assertIn("+   local-domain second.test", result.stdout.decode())

        # Back before both commits: trunk is gone and its port closes.
        result = yield self.sbc_cli(path, "rollback configuration last 2")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn("commit 1000000003", result.stdout.decode())
        yield wait_ports(new_port, listening=False)
        running = yield self.sbc_cli(path, "show running-config")
        self.assertNotIn("trunk", running.stdout.decode())
        self.assertNotIn("second.test", running.stdout.decode())

        # A rollback that is refused changes nothing and says why.
        result = yield self.sbc_cli(path, "rollback configuration last 9")
        self.assertEqual(result.exit_code, 1)
        self.assertEqual(
            result.stdout.decode().strip(), "% cannot roll back 9 commit(s): only 3 in the history"
        )

        # Forward again to commit 1000000001 (trunk, no second.test), then restart.
        result = yield self.sbc_cli(path, "rollback configuration to 1000000001")
        self.assertEqual(result.exit_code, 0, result.text())
        yield wait_ports(new_port, listening=True)
        socket_path = yield self.restart(sbc, pki, b"started with 2 adjacencies")
        yield wait_ports(new_port, listening=True)
        response = yield self.options(new_port)
        self.assertEqual(response.status, 200)
        result = yield self.sbc_cli(socket_path, "show configuration commit list")
        ids = [row.split()[1] for row in result.stdout.decode().strip().split("\n")[2:]]
        self.assertEqual(ids, ["1000000004", "1000000003", "1000000002", "1000000001"])
        running = yield self.sbc_cli(socket_path, "show running-config")
        self.assertIn("adjacency sip trunk", running.stdout.decode())
        self.assertNotIn("second.test", running.stdout.decode())

    @defer.inlineCallbacks
    def test_commit_confirmed_across_sessions(self) -> Any:
        """A trial commit from one sbc-cli run, confirmed by a 'commit' from another."""
        pki = make_pki(self.mktemp())
        sbc = yield start_sbc(
            self, pki, (AdjacencySpec("access", "untrusted", "udp-tcp"),), service="mysbc"
        )
        path = cli_socket(sbc.child)
        result = yield self.sbc_cli(
            path, "configure", "sbc mysbc", "sbe", "local-domain trial.test",
            "commit confirmed 300", "end",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn(
            "Commit 1000000001 is rolled back in 300 seconds unless confirmed",
            result.stdout.decode(),
        )
        result = yield self.sbc_cli(path, "configure", "commit confirmed 60", "end")
        self.assertIn(
            "No configuration changes to commit; commit 1000000001 is still", result.stdout.decode()
        )
        result = yield self.sbc_cli(path, "configure", "commit", "end")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn("Commit 1000000001 confirmed.", result.stdout.decode())
        with open(sbc.config_path) as f:
            self.assertIn("local-domain trial.test", f.read())
        self.assertIn("commit 1000000001 confirmed by", sbc.output())
