"""Flood and scanner defence against a real ``twistd -n sbc`` (docs/hardening.md).

- :class:`FloodTests`: ``benchmarks/flood.py`` sends 5,000 OPTIONS per
  second from 127.0.0.2 to an untrusted adjacency whose UDP socket it shares
  with a trusted one (127.0.0.1/32); SIPp places calls through the trusted
  one meanwhile. The source is banned after exactly ``source-rate-limit``
  messages, every call succeeds, and the SBC's CPU during the flood after
  the ban is measured from /proc/PID/stat and printed (not asserted: no
  timing thresholds in tests; ``benchmarks/bench_flood.py`` runs the full
  20-second flood).
- :class:`ScannerTests`: the Debian ``sipvicious`` tools (``svmap``,
  ``svwar``, ``svcrack``) against an untrusted adjacency on 127.0.0.1. This
  sipvicious (0.3.3) ignores ``-b`` in svwar and svcrack, so the scanners
  send from 127.0.0.1; the test's own well-behaved client binds 127.0.0.9.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError

from tests.interop.calls_harness import CallAdjacency, SippProcess, start_sipp, start_sipp_uas
from tests.interop.harness import (
    HOST,
    REPO,
    StreamClient,
    get_reactor,
    launch_sbc,
    make_pki,
    new_call_id,
    pause,
    sip_request,
    udp_drops,
    within,
)
from tests.interop.test_cli import CliTestCase, cli_socket
from tests.support.peers import ProcessResult, RunningProcess, free_port, require_tool, run

FLOOD = os.path.join(REPO, "benchmarks", "flood.py")
FLOOD_SOURCE = "127.0.0.2"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The default source-rate-limit (messages per window); the tests keep it.
RATE_LIMIT = 200


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def counter(text: str, adjacency: str, name: str) -> int:
    """The value of counter ``name`` of ``adjacency`` in ``show ... statistics`` output."""
    block = text.split(f"Adjacency: {adjacency}\n", 1)
    if len(block) < 2:
        return 0
    section = block[1].split("\n\n", 1)[0]
    match = re.search(rf"^\s+{re.escape(name)}\s+(\d+)$", section, re.MULTILINE)
    return int(match[1]) if match else 0


def blocked_rows(text: str) -> list[list[str]]:
    """The rows of ``show ... blocked-sources`` (address first), split into words."""
    rows = []
    for line in text.splitlines():
        words = line.split()
        if words and re.fullmatch(r"[0-9.]+|[0-9a-f:]+", words[0]) and len(words) >= 8:
            rows.append(words)
    return rows


def config(adjacencies: list[CallAdjacency], sbe: list[str]) -> str:
    """Config text for the tests of this module (service ``flood``)."""
    from tests.interop.calls_harness import render_call_config

    return render_call_config("flood", adjacencies, sbe, local_domains=["lab.test"])


class FloodTests(CliTestCase):
    """5,000 requests/s from one untrusted source while trusted calls go through."""

    timeout = 120

    @defer.inlineCallbacks
    def test_flood_banned_trusted_calls_succeed(self) -> Any:
        shared, trunk = free_port(), free_port()
        adjacencies = [
            CallAdjacency("access", "untrusted", "udp", port=shared, remote_prefix="127.0.0.0/8"),
            CallAdjacency(
                "core", "trusted-unencrypted", "udp", port=shared, remote_prefix="127.0.0.1/32"
            ),
            CallAdjacency("trunk", "trusted-unencrypted", "tcp", port=trunk),
        ]
        routing = [
            "call-policy-set 1",
            " first-call-routing-table by-source",
            " rtg-src-adjacency-table by-source",
            "  entry 1",
            "   match-adjacency core",
            "   dst-adjacency trunk",
            "   action complete",
            "active-call-policy-set 1",
        ]
        pki = make_pki(self.mktemp())
        sbc = yield launch_sbc(self, pki, adjacencies, config(adjacencies, routing))
        pid = sbc.child.process.pid
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="t1", keys={"contact_scheme": "sip"}, calls=30
        )
        flood_seconds = 6
        flooder = RunningProcess(
            get_reactor(),
            [
                sys.executable, FLOOD, "--target", f"{HOST}:{shared}", "--bind", FLOOD_SOURCE,
                "--rate", "5000", "--seconds", str(flood_seconds),
            ],
        )  # fmt: skip
        self.addCleanup(lambda: flooder.stop(9))
        reactor = get_reactor()
        yield pause(1.0)  # the ban takes 40 ms at 5,000/s: measure from here
        cpu_start, wall_start = cpu_seconds(pid), reactor.seconds()
        caller = start_sipp(
            self,
            "calls_uac.xml",
            remote_port=shared,
            keys={
                "ruri": f"sip:bob@{HOST}:{callee.port}",
                "from_uri": "sip:alice@lab.test",
                "contact_scheme": "sip",
            },
            calls=30,
            rate=10,
            seconds=40,
        )
        flooded: ProcessResult = yield within(flooder.ended, flood_seconds + 30, "the flood")
        cpu_used, wall = cpu_seconds(pid) - cpu_start, reactor.seconds() - wall_start
        figures = json.loads(flooded.stdout.decode().strip().splitlines()[-1])
        results = [(yield caller.wait(60, "the caller")), (yield callee.wait(60, "the callee"))]
        self.assertEqual([r.exit_code for r in results], [0, 0], self.describe(caller, callee, sbc))

        path = cli_socket(sbc.child)
        shown = yield self.sbc_cli(
            path,
            "show services sbc flood sbe blocked-sources",
            "show services sbc flood sbe statistics",
        )
        text = shown.text()
        rows = blocked_rows(text)
        self.assertEqual([r[:3] for r in rows], [[FLOOD_SOURCE, "access", "rate-limit"]], text)
        # exactly source-rate-limit messages went in; the next one banned the source
        self.assertEqual(counter(text, "access", "messages-received"), RATE_LIMIT, text)
        self.assertEqual(counter(text, "access", "drops:rate-limit"), 1, text)
        banned = counter(text, "access", "drops:banned")
        kernel_drops = udp_drops(shared) or 0
        # every datagram sent is accounted for: passed, banning one, dropped by sbc or kernel
        self.assertLessEqual(RATE_LIMIT + 1 + banned, figures["sent"])
        self.assertGreaterEqual(RATE_LIMIT + 1 + banned + kernel_drops, figures["sent"])
        self.assertLessEqual(figures["received"], RATE_LIMIT)
        # the trusted calls were not counted
        self.assertEqual(counter(text, "core", "drops:banned"), 0, text)
        self.assertEqual(counter(text, "core", "calls-started"), 30, text)

        report = (
            f"flood: {figures['sent']} OPTIONS in {figures['seconds']} s from {FLOOD_SOURCE} "
            f"({figures['rate']}/s, {figures['late_batches']} late rounds); "
            f"{figures['received']} answered before the ban; sbc dropped {banned} after it, "
            f"kernel drops on the socket {kernel_drops}; "
            f"SBC CPU during the flood after the ban, with 30 trusted calls at 10/s: "
            f"{cpu_used:.2f} s over {wall:.1f} s = {100 * cpu_used / wall:.1f} % of one core"
        )
        print("\n" + report)
        with open(os.path.join(os.path.dirname(sbc.config_path), "flood-report.txt"), "w") as f:
            f.write(report + "\n")

    def describe(self, caller: SippProcess, callee: SippProcess, sbc: Any) -> str:
        return (
            caller.describe(caller._result)
            + callee.describe(callee._result)
            + "\n--- sbc log tail:\n"
            + sbc.tail(60)
        )


class TcpBanTests(CliTestCase):
    """A source banned over UDP cannot open TCP connections either."""

    @defer.inlineCallbacks
    def test_banned_source_connection_closed_at_once(self) -> Any:
        port = free_port()
        adjacencies = [CallAdjacency("access", "untrusted", "udp-tcp", port=port)]
        pki = make_pki(self.mktemp())
        sbc = yield launch_sbc(
            self, pki, adjacencies, config(adjacencies, ["limits", " source-rate-limit 5 60"])
        )
        flooded = yield run(
            get_reactor(),
            [
                sys.executable, FLOOD, "--target", f"{HOST}:{port}", "--bind", FLOOD_SOURCE,
                "--rate", "100", "--seconds", "0.1",
            ],
            timeout=30,
        )  # fmt: skip
        self.assertEqual(json.loads(flooded.stdout)["received"], 5)
        reactor = get_reactor()
        endpoint = TCP4ClientEndpoint(reactor, HOST, port, timeout=5, bindAddress=(FLOOD_SOURCE, 0))
        client = StreamClient()
        try:
            yield within(connectProtocol(endpoint, client), 10.0, "a connection")
        except ConnectError:
            pass  # reset before the connection was even reported: closed at once too
        else:
            client.write(
                sip_request(
                    uri=f"sip:{HOST}:{port}",
                    via_transport="TCP",
                    local_port=client.local_port(),
                    call_id=new_call_id(),
                )
            )
            yield client.wait_closed(10.0)
        self.assertEqual(client.received, b"")
        shown = yield self.sbc_cli(
            cli_socket(sbc.child), "show services sbc flood sbe adjacencies access detail"
        )
        self.assertRegex(shown.text(), r"connections-refused:banned\s+1\b")
        self.assertNotIn("connections-accepted", shown.text())


class ScannerTests(CliTestCase):
    """sipvicious against an untrusted adjacency: it finds nothing and gets banned."""

    timeout = 150

    @defer.inlineCallbacks
    def start(self, sbe: list[str], adjacency_settings: tuple[str, ...] = ()) -> Any:
        self.port = free_port()
        adjacencies = [CallAdjacency("access", "untrusted", "udp", port=self.port)]
        pki = make_pki(self.mktemp())
        text = config(adjacencies, sbe)
        for setting in adjacency_settings:
            text = text.replace("   attach\n", f"   {setting}\n   attach\n", 1)
        self.sbc = yield launch_sbc(self, pki, adjacencies, text)
        self.cli = cli_socket(self.sbc.child)

    def tool(self, name: str, *args: str, seconds: float = 60.0) -> defer.Deferred[ProcessResult]:
        """Run a sipvicious tool against the adjacency (its own free local port)."""
        binary = require_tool(name)
        argv = [binary, "-P", str(free_port()), "-p", str(self.port), *args, HOST]
        return within(run(get_reactor(), argv, timeout=seconds), seconds + 10, name)

    @defer.inlineCallbacks
    def blocked(self) -> Any:
        """The rows of ``show ... blocked-sources``, split into words."""
        shown = yield self.sbc_cli(self.cli, "show services sbc flood sbe blocked-sources")
        return blocked_rows(shown.text())

    @defer.inlineCallbacks
    def still_serving(self) -> Any:
        """A well-behaved client on another address (127.0.0.9) is answered."""
        from tests.interop.harness import UdpClient

        client = UdpClient(self.port)
        listening = get_reactor().listenUDP(0, client, interface="127.0.0.9")
        self.addCleanup(listening.stopListening)
        call_id = new_call_id()
        request = sip_request(
            uri=f"sip:{HOST}:{self.port}",
            via_transport="UDP",
            local_port=client.local_port,
            call_id=call_id,
        )
        via = f"{HOST}:{client.local_port};"
        request = request.replace(via.encode(), via.replace(HOST, "127.0.0.9").encode(), 1)
        response = yield client.transact(request, call_id)
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_user_agent_list_bans_each_tool_at_its_first_request(self) -> Any:
        yield self.start(["blocked-user-agent friendly-scanner"])
        seen = {}
        runs = {
            "svmap": (),
            "svwar": ("--domain", "lab.test", "-e", "100-199"),
            "svcrack": ("--domain", "lab.test", "-u", "100", "-r", "1-20"),
        }
        for name, args in runs.items():
            result = yield self.tool(name, *args)
            seen[name] = result.text().strip()
            rows = yield self.blocked()
            self.assertEqual(
                [r[:3] for r in rows], [[HOST, "access", "user-agent"]], f"{name}: {rows}"
            )
            self.assertGreaterEqual(int(rows[0][-1]), 1)  # dropped
            cleared = yield self.sbc_cli(
                self.cli, f"clear services sbc flood sbe blocked-source {HOST}"
            )
            self.assertIn(f"{HOST} released (banned for user-agent on access;", cleared.text())
        print("\n" + "\n".join(f"--- {name} saw:\n{text}" for name, text in seen.items()))
        self.assertIn("found nothing", seen["svmap"])
        self.assertNotIn("SIP Device", seen["svmap"])
        self.assertIn("found nothing", seen["svwar"])
        self.assertIn("found nothing", seen["svcrack"])
        self.assertNotIn("Password", seen["svcrack"])
        shown = yield self.sbc_cli(
            self.cli,
            "show services sbc flood sbe registrations",
            "show services sbc flood sbe statistics",
        )
        self.assertIn("No registrations.", shown.text())
        self.assertEqual(counter(shown.text(), "access", "messages-received"), 0, shown.text())
        self.assertEqual(counter(shown.text(), "access", "bans:user-agent"), 3, shown.text())
        yield self.still_serving()

    @defer.inlineCallbacks
    def test_svwar_stopped_by_the_rate_limit_alone(self) -> Any:
        """No User-Agent list: svwar's REGISTER sweep is cut off after source-rate-limit."""
        yield self.start([])
        result = yield self.tool("svwar", "--domain", "lab.test", "-e", "100-699")
        text = result.text().strip()
        print(f"\n--- svwar saw (rate limit only):\n{text}")
        self.assertIn("found nothing", text)
        rows = yield self.blocked()
        self.assertEqual([r[:3] for r in rows], [[HOST, "access", "rate-limit"]], rows)
        shown = yield self.sbc_cli(self.cli, "show services sbc flood sbe statistics")
        self.assertEqual(counter(shown.text(), "access", "messages-received"), RATE_LIMIT)
        self.assertGreater(counter(shown.text(), "access", "drops:banned"), 0)
        yield self.still_serving()

    @defer.inlineCallbacks
    def test_svcrack_banned_after_failed_passwords(self) -> Any:
        """``authentication digest``: password guessing is banned by auth-failure-limit.

        No User-Agent list, and the rate limit is raised out of the way: only
        the failed digest answers count (the 31st failure within 60 s bans).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users.htdigest")
        ha1 = hashlib.md5(b"100:lab.test:not-in-the-range").hexdigest()
        with open(users, "w") as f:
            f.write(f"100:lab.test:{ha1}\n")
        yield self.start(
            [f"user-database {users}", "limits", " source-rate-limit 1000000 10"],
            ("authentication digest", "digest-algorithms md5"),
        )
        result = yield self.tool(
            "svcrack", "--domain", "lab.test", "-u", "100", "-r", "1000-1999", seconds=90
        )
        text = result.text().strip()
        print(f"\n--- svcrack saw (digest, auth-failure-limit only):\n{text}")
        self.assertNotIn("Password", text)
        rows = yield self.blocked()
        self.assertEqual([r[:3] for r in rows], [[HOST, "access", "auth-failures"]], rows)
        shown = yield self.sbc_cli(self.cli, "show services sbc flood sbe statistics")
        self.assertEqual(counter(shown.text(), "access", "auth-failures"), 31, shown.text())
        self.assertEqual(counter(shown.text(), "access", "bans:auth-failures"), 1, shown.text())
        self.assertGreater(counter(shown.text(), "access", "drops:banned"), 0, shown.text())
