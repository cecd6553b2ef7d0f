"""``no attach`` releases the calls using the adjacency (behaviour §2), against a real daemon.

SIPp UAC --UDP--> access (untrusted) --> SBC --> trunk (trusted-unencrypted, UDP) --> SIPp UAS

The call is set up and held (the UAC waits at most 10 s for a BYE after its
ACK, the UAS waits for a BYE after the ACK); ``sbc-cli`` then commits
``no attach`` on one adjacency, and both SIPp sides must receive a BYE and
answer 200 (each exits 0).

UDP on both sides: over TCP the SBC closes the detached adjacency's
connection right after the BYE, and SIPp fails a call whose connection the
peer closed while it lingers in its final ``timewait``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import FailTest, TestCase

from tests.interop.calls_harness import (
    CallAdjacency,
    SippProcess,
    start_routed_sbc,
    start_sipp,
    start_sipp_uas,
)
from tests.interop.harness import HOST, get_reactor, make_pki, pause, within
from tests.interop.test_cli import SBC_CLI, cli_socket
from tests.support.peers import ProcessResult, run

ADJACENCIES = (
    CallAdjacency("access", "untrusted", "udp"),
    CallAdjacency("trunk", "trusted-unencrypted", "udp"),
)
POLICY = (
    "call-policy-set 1",
    " first-call-routing-table by-source",
    " rtg-src-adjacency-table by-source",
    "  entry 1",
    "   match-adjacency access",
    "   dst-adjacency trunk",
    "   action complete",
    "active-call-policy-set 1",
    "routing-policy default",
)
SERVICE = "calls"


class DetachReleasesCallsTests(TestCase):
    """A held call is brought down (BYE to both sides) when one of its adjacencies is detached."""

    timeout = 90
    adjacencies = ADJACENCIES
    #: SIPp transport of the callee (the trunk adjacency's side).
    callee_transport = "u1"

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.sbc = yield start_routed_sbc(self, self.pki, self.adjacencies, POLICY, service=SERVICE)
        self.cli_path = cli_socket(self.sbc.child)

    def sbc_cli(self, *commands: str) -> defer.Deferred[ProcessResult]:
        args = [SBC_CLI, "--socket", self.cli_path]
        for command in commands:
            args += ["-c", command]
        return within(run(get_reactor(), args, timeout=30.0), 40.0, "sbc-cli")

    def context(self, *peers: SippProcess) -> str:
        text = "\n".join(p.describe(p._result) for p in peers)
        return text + "\n--- sbc log tail:\n" + self.sbc.tail(60)

    @defer.inlineCallbacks
    def wait_confirmed(self, *peers: SippProcess) -> Any:
        """Poll ``show ... calls`` (at most 10 s) until the call is confirmed."""
        for _ in range(50):
            result = yield self.sbc_cli(f"show services sbc {SERVICE} sbe calls")
            if "confirmed" in result.stdout.decode():
                return None
            yield pause(0.2)
        raise FailTest("the call was never confirmed\n" + self.context(*peers))

    @defer.inlineCallbacks
    def detach_releases_the_call(self, adjacency: str) -> Any:
        callee = yield start_sipp_uas(
            self,
            "calls_uas.xml",
            transport=self.callee_transport,
            keys={"contact_scheme": "sip"},
            seconds=30,
        )
        caller = start_sipp(
            self,
            "calls_uac_bye.xml",
            remote_port=self.sbc.port("access"),
            transport="u1",
            keys={
                "ruri": f"sip:bob@{HOST}:{callee.port}",
                "from_uri": "sip:alice@lab.test",
                "contact_scheme": "sip",
            },
            seconds=30,
        )
        yield self.wait_confirmed(caller, callee)
        result = yield self.sbc_cli(
            "configure",
            f"sbc {SERVICE}",
            "sbe",
            f"adjacency sip {adjacency}",
            "no attach",
            "commit",
            "end",
        )
        self.assertEqual(result.exit_code, 0, result.text())
        # Both sides got their BYE (each SIPp exits 0 only after answering it with 200).
        results = [(yield caller.wait(20, "the caller")), (yield callee.wait(20, "the callee"))]
        self.assertEqual([r.exit_code for r in results], [0, 0], self.context(caller, callee))
        result = yield self.sbc_cli(f"show services sbc {SERVICE} sbe statistics")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertRegex(result.stdout.decode(), r"calls-released:detach\D+1")
        result = yield self.sbc_cli(f"show services sbc {SERVICE} sbe calls")
        self.assertIn("No active calls.", result.stdout.decode())

    def test_detach_caller_side(self) -> Any:
        """``no attach`` on the caller's adjacency (untrusted UDP)."""
        return self.detach_releases_the_call("access")

    def test_detach_callee_side(self) -> Any:
        """``no attach`` on the callee's adjacency (trusted-unencrypted UDP)."""
        return self.detach_releases_the_call("trunk")


class DetachOverTcpTests(DetachReleasesCallsTests):
    """The same with the callee on TCP: the connection stays open for the BYE's answer.

    ``detach-drain-time`` (2 s by default) keeps the detached adjacency's
    connections open after the BYEs leave; without it SIPp's 200 to the BYE
    would find the connection closed.
    """

    adjacencies = (
        CallAdjacency("access", "untrusted", "udp"),
        CallAdjacency("trunk", "trusted-unencrypted", "tcp"),
    )
    callee_transport = "t1"
