"""Faults survived by a real ``twistd -n sbc``: dead callees, reset connections,
a kill during a config save, unreachable peers.

Topology of the call tests (``FAULTS``)::

    callers (SIPp, raw sockets) --UDP/TCP--> access (untrusted, udp-tcp)
        -> trunk (trusted-unencrypted, TCP, to the Request-URI's host:port): SIPp UAS
        -> dead-udp (signaling-peer: a UDP socket of the test that counts and never answers)
        -> dead-tcp (signaling-peer: a TCP port nobody listens on)

Every wait is bounded; RFC 3261 timers are the real ones (T1 0.5 s, 64*T1 =
32 s: sbc has no setting to shorten them), so the tests that wait for Timer B
or for the 2xx's ACK take about 35 s each.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from sbc.config import parse_config
from tests.interop.calls_harness import CallAdjacency, SippProcess, start_sipp, start_sipp_uas
from tests.interop.harness import (
    HOST,
    TWISTD,
    UdpClient,
    connect_stream,
    get_reactor,
    launch_sbc,
    make_pki,
    new_call_id,
    open_udp,
    parse_response,
    pause,
    sbc_command,
    sip_request,
    within,
)
from tests.interop.test_calls import ack_for
from tests.interop.test_cli import CliTestCase, cli_socket
from tests.support.peers import RunningProcess, free_port

T1 = 0.5
#: Timer B / Timer F and the wait for a 2xx's ACK: 64*T1.
TIMEOUT_64T1 = 64 * T1

FAULTS_POLICY = (
    "call-policy-set 1",
    " first-call-routing-table by-source",
    " rtg-src-adjacency-table by-source",
    "  entry 1",
    "   match-adjacency access",
    "   action next-table by-domain",
    " rtg-dst-domain-table by-domain",
    "  entry 1",
    "   match-domain dead-udp.test",
    "   dst-adjacency dead-udp",
    "   action complete",
    "  entry 2",
    "   match-domain dead-tcp.test",
    "   dst-adjacency dead-tcp",
    "   action complete",
    "  entry 3",
    f"   match-domain {HOST}",
    "   dst-adjacency trunk",
    "   action complete",
    "active-call-policy-set 1",
)


def statistics_counter(text: str, adjacency: str, name: str) -> int:
    """Counter ``name`` of ``adjacency`` in ``show ... statistics`` output (0 when absent)."""
    section = text.split(f"Adjacency: {adjacency}\n", 1)
    if len(section) < 2:
        return 0
    match = re.search(
        rf"^\s+{re.escape(name)}\s+(\d+)$", section[1].split("\n\n", 1)[0], re.MULTILINE
    )
    return int(match[1]) if match else 0


class Counting(protocol.DatagramProtocol):
    """A UDP socket that receives and counts, and never answers (an unreachable peer)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.arrivals.append((get_reactor().seconds(), datagram))


class _FaultsTestCase(CliTestCase):
    """A fresh SBC with the ``FAULTS`` topology, its CLI and metrics."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.counting = Counting()
        self.counting_port = get_reactor().listenUDP(0, self.counting, interface=HOST)
        self.addCleanup(self.counting_port.stopListening)
        self.metrics_port = free_port()
        adjacencies = [
            CallAdjacency("access", "untrusted", "udp-tcp", port=free_port()),
            CallAdjacency("trunk", "trusted-unencrypted", "tcp", port=free_port()),
            CallAdjacency(
                "dead-udp",
                "trusted-unencrypted",
                "udp",
                port=free_port(),
                signaling_peer=HOST,
                signaling_peer_port=self.counting_port.getHost().port,
            ),
            CallAdjacency(
                "dead-tcp",
                "trusted-unencrypted",
                "tcp",
                port=free_port(),
                signaling_peer=HOST,
                signaling_peer_port=free_port(),
            ),
        ]
        from tests.interop.calls_harness import render_call_config

        text = render_call_config("faults", adjacencies, FAULTS_POLICY, ["lab.test"])
        pki = make_pki(self.mktemp())
        self.sbc = yield launch_sbc(
            self,
            pki,
            adjacencies,
            text,
            ["--metrics", f"tcp:{self.metrics_port}:interface={HOST}"],
        )
        self.cli = cli_socket(self.sbc.child)

    def port(self, name: str) -> int:
        return int(self.sbc.port(name))

    @defer.inlineCallbacks
    def show(self, *what: str) -> Any:
        """The output of ``show services sbc faults sbe WHAT`` for each WHAT, joined."""
        result = yield self.sbc_cli(self.cli, *(f"show services sbc faults sbe {w}" for w in what))
        return result.text()

    @defer.inlineCallbacks
    def wait_cli(self, what: str, condition: Any, seconds: float, describe: str) -> Any:
        """Poll ``show ... WHAT`` (every 0.5 s, at most ``seconds``) until ``condition(text)``."""
        reactor = get_reactor()
        deadline = reactor.seconds() + seconds
        text = ""
        while reactor.seconds() < deadline:
            text = yield self.show(what)
            if condition(text):
                return text
            yield pause(0.5)
        self.fail(f"timed out after {seconds:g} s waiting for {describe}:\n{text}")

    @defer.inlineCallbacks
    def metrics(self) -> Any:
        """Every sample of the daemon's /metrics by (name, labels)."""
        pool = HTTPConnectionPool(get_reactor(), persistent=False)
        agent = Agent(get_reactor(), pool=pool)
        url = f"http://{HOST}:{self.metrics_port}/metrics".encode()
        response = yield within(agent.request(b"GET", url), 15.0, "GET /metrics")
        body = yield within(readBody(response), 15.0, "the metrics")
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    @defer.inlineCallbacks
    def open_connections(self) -> Any:
        """Open TCP/TLS connections of every adjacency (the ``sbc_open_connections`` gauge)."""
        samples = yield self.metrics()
        return {
            dict(labels).get("adjacency", "") + "/" + dict(labels).get("direction", ""): value
            for (name, labels), value in samples.items()
            if name == "sbc_open_connections" and value
        }

    @defer.inlineCallbacks
    def options_answered(self, transport: str) -> Any:
        """An OPTIONS to the SBC itself on ``access`` (UDP or TCP) gets 200."""
        port = self.port("access")
        call_id = new_call_id()
        if transport == "UDP":
            client = open_udp(self, port)
            request = sip_request(
                uri=f"sip:{HOST}:{port}",
                via_transport="UDP",
                local_port=client.local_port,
                call_id=call_id,
            )
            response = yield client.transact(request, call_id)
        else:
            stream = yield connect_stream(self, port)
            stream.write(
                sip_request(
                    uri=f"sip:{HOST}:{port}",
                    via_transport="TCP",
                    local_port=stream.local_port(),
                    call_id=call_id,
                )
            )
            yield stream.wait_for(b"\r\n\r\n", 10.0)
            response = parse_response(stream.received)
            stream.close()
        self.assertEqual(response.status, 200, response)

    def caller(self, scenario: str, ruri: str, seconds: int = 40) -> SippProcess:
        return start_sipp(
            self,
            scenario,
            remote_port=self.port("access"),
            transport="u1",
            keys={"ruri": ruri, "from_uri": "sip:alice@lab.test"},
            seconds=seconds,
        )


class DeadCalleeTests(_FaultsTestCase):
    """The callee's process is killed (SIGKILL) while the call is established."""

    @defer.inlineCallbacks
    def kill_callee_mid_call(self, scenario: str) -> Any:
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="t1", keys={"contact_scheme": "sip"}
        )
        caller = self.caller(scenario, f"sip:bob@{HOST}:{callee.port}")
        yield self.wait_cli("calls", lambda t: " confirmed " in t, 15.0, "the call to be confirmed")
        callee.child.process.signalProcess(signal.SIGKILL)
        killed = yield callee.wait(15, "the killed callee")
        self.assertEqual(killed.signal, signal.SIGKILL)
        return caller

    @defer.inlineCallbacks
    def assert_tables_empty(self) -> Any:
        text = yield self.wait_cli(
            "calls", lambda t: "No active calls." in t, TIMEOUT_64T1 + 5, "the call table to empty"
        )
        self.assertIn("No active calls.", text)

    @defer.inlineCallbacks
    def test_caller_hangs_up_after_the_callee_died(self) -> Any:
        """The caller's BYE gets 200 (the SBC cannot reach the callee) and the call is gone.

        Over TCP the dead callee's port refuses the SBC's new connection at
        once, so the relayed BYE fails fast and the SBC answers the caller's
        BYE itself (200: the dialog is over either way).
        """
        caller = yield self.kill_callee_mid_call("faults_uac_hold_bye.xml")
        result = yield caller.wait(40, "the caller")
        self.assertEqual(result.exit_code, 0, caller.describe(result) + self.sbc.tail(40))
        yield self.assert_tables_empty()
        text = yield self.show("statistics")
        self.assertEqual(statistics_counter(text, "access", "calls-ended"), 1, text)
        self.assertGreaterEqual(statistics_counter(text, "trunk", "connect-failures"), 1, text)

    @defer.inlineCallbacks
    def test_reinvite_to_the_dead_callee_ends_the_call(self) -> Any:
        """Expected: 408 to the re-INVITE, then a BYE from the SBC to the caller.

        RFC 3261 §12.2.1.2: a UAC whose in-dialog request gets 408 or no
        answer at all SHOULD terminate the dialog. The SBC is the UAC of the
        callee's leg; its relayed re-INVITE cannot be delivered (the callee's
        port refuses the connection), so that dialog is over, and a B2BUA
        whose one leg is over must end the other: BYE to the caller
        (sbc/b2bua/call.py ``relay_failed``).
        """
        caller = yield self.kill_callee_mid_call("faults_uac_hold_reinvite.xml")
        result = yield caller.wait(50, "the caller")
        calls = yield self.show("calls")
        self.assertEqual(
            result.exit_code, 0, caller.describe(result) + "\n--- show calls:\n" + calls
        )
        yield self.assert_tables_empty()


class ConnectionResetTests(_FaultsTestCase):
    """TCP connections reset (RST, SO_LINGER 0) mid-message and right after an INVITE."""

    @defer.inlineCallbacks
    def reset_connection(self, data: bytes, wait_for: bytes | None = None) -> Any:
        """Connect to access over TCP, send ``data``, then reset the connection (RST).

        With ``wait_for``, the reset comes once those bytes were received
        (the SBC has read and answered the message); else after a short
        pause, so that the SBC reads what was sent before the RST.
        """
        stream = yield connect_stream(self, self.port("access"))
        stream.write(data)
        if wait_for is not None:
            yield stream.wait_for(wait_for, 10.0)
        else:
            yield pause(0.05)
        assert stream.transport is not None
        handle = stream.transport.getHandle()  # type: ignore[attr-defined]
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.transport.abortConnection()  # type: ignore[attr-defined]
        return stream.local_port()

    def invite(self, uri: str, local_port: int) -> bytes:
        call_id = new_call_id()
        return sip_request(
            method="INVITE",
            uri=uri,
            via_transport="TCP",
            local_port=local_port,
            call_id=call_id,
            extra=[f"Contact: <sip:alice@{HOST}:{local_port};transport=tcp>"],
            body=b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
        ).replace(b"Content-Length:", b"Content-Type: application/sdp\r\nContent-Length:")

    @defer.inlineCallbacks
    def test_resets_mid_message_and_after_invite_leak_nothing(self) -> Any:
        callee = yield start_sipp_uas(
            self, "faults_uas_answer.xml", transport="t1", calls=20, seconds=80
        )
        ruri = f"sip:bob@{HOST}:{callee.port}"
        whole = self.invite(ruri, 40000)
        for n in range(50):
            # cut anywhere inside the message: in the start line, the headers or the body
            yield self.reset_connection(whole[: 10 + (n * 37) % (len(whole) - 20)])
        for _ in range(20):
            # reset once the SBC has answered 100 Trying: the call goes on without its caller
            yield self.reset_connection(self.invite(ruri, 40000), b"SIP/2.0 100 ")
        yield pause(1.0)
        # the service goes on, on both transports
        yield self.options_answered("UDP")
        yield self.options_answered("TCP")
        # the 20 INVITEs reached the callee, which answered; the caller is gone,
        # so no ACK comes: after 64*T1 the SBC gives up and sends BYE to the callee.
        result = yield callee.wait(TIMEOUT_64T1 + 30, "the callee's 20 BYEs")
        self.assertEqual(result.exit_code, 0, callee.describe(result) + self.sbc.tail(60))
        yield self.wait_cli(
            "calls", lambda t: "No active calls." in t, 10.0, "the call table to empty"
        )
        stats = yield self.show("statistics")
        self.assertEqual(statistics_counter(stats, "access", "calls-started"), 20, stats)
        self.assertEqual(statistics_counter(stats, "access", "ack-timeouts"), 20, stats)
        self.assertEqual(statistics_counter(stats, "access", "connections-accepted"), 71, stats)
        # every inbound connection is closed again (the SBC's own connection to the
        # callee stays open until outbound-idle-timeout, as it should)
        open_now = yield self.open_connections()
        self.assertEqual({k: v for k, v in open_now.items() if k.startswith("access/")}, {})
        self.assertEqual(statistics_counter(stats, "access", "connections-closed"), 71, stats)


class UnreachablePeerTests(_FaultsTestCase):
    """A next hop nobody answers: the caller gets 503 or 408, the SBC follows Timer A/B."""

    def invite(self, client: UdpClient, uri: str) -> tuple[bytes, str]:
        call_id = new_call_id()
        request = sip_request(
            method="INVITE",
            uri=uri,
            via_transport="UDP",
            local_port=client.local_port,
            call_id=call_id,
            extra=[f"Contact: <sip:alice@{HOST}:{client.local_port}>"],
        )
        return request, call_id

    @defer.inlineCallbacks
    def call(self, uri: str, seconds: float) -> Any:
        client = open_udp(self, self.port("access"))
        request, call_id = self.invite(client, uri)
        started = get_reactor().seconds()
        response = yield client.transact(request, call_id, seconds)
        client.send(ack_for(request, response))
        return response, get_reactor().seconds() - started

    @defer.inlineCallbacks
    def test_udp_and_tcp_peers_that_never_answer(self) -> Any:
        udp_call = self.call("sip:bob@dead-udp.test", TIMEOUT_64T1 + 15)
        tcp_call = self.call("sip:bob@dead-tcp.test", 15)
        tcp_response, tcp_seconds = yield tcp_call
        udp_response, udp_seconds = yield udp_call
        yield pause(2.0)  # nothing more may come after the final response
        arrivals = self.counting.arrivals
        times = [at - arrivals[0][0] for at, _ in arrivals]
        methods = [data.split(b" ", 1)[0].decode() for _, data in arrivals]
        print(
            f"\nunreachable UDP peer: {len(arrivals)} datagrams at "
            f"{', '.join(f'{t:.2f}' for t in times)} s ({', '.join(methods)}); caller got "
            f"{udp_response.status} after {udp_seconds:.1f} s. Unreachable TCP peer: caller got "
            f"{tcp_response.status} after {tcp_seconds:.1f} s"
        )
        self.assertIn(udp_response.status, (408, 503))
        self.assertIn(tcp_response.status, (408, 503))
        # RFC 3261 §17.1.1.2: INVITE sent at 0, T1, 3T1, 7T1, 15T1, 31T1, 63T1, then
        # Timer B (64*T1): 7 transmissions, no CANCEL (no provisional), nothing after
        self.assertEqual(methods, ["INVITE"] * 7)
        intervals = [b - a for a, b in zip(times, times[1:])]
        for n, interval in enumerate(intervals):
            # timers never fire early (a loaded machine only makes them late)
            self.assertGreaterEqual(interval, 0.9 * T1 * 2**n, intervals)
        self.assertEqual(len({data.split(b"Call-ID:")[1][:40] for _, data in arrivals}), 1)
        stats = yield self.show("statistics")
        # one connection attempt per call towards the dead TCP peer, no retry storm
        self.assertEqual(statistics_counter(stats, "dead-tcp", "connect-failures"), 1, stats)
        self.assertEqual(statistics_counter(stats, "dead-udp", "attempts"), 1, stats)
        calls = yield self.show("calls")
        self.assertIn("No active calls.", calls)


class KillDuringSaveTests(CliTestCase):
    """SIGKILL while a commit is being saved: the file is the old one or the new one, whole."""

    timeout = 120

    #: Runs twistd with os.fsync slowed down (3 s) for the config file's temporary copy
    #: only, so that the daemon can be killed while the save is in progress.
    SLOW_SAVE = (
        "import os, sys, time\n"
        "_fsync = os.fsync\n"
        "def fsync(fd):\n"
        "    name = os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))\n"
        "    if name.startswith('.sbc.conf.') and name.endswith('.tmp'):\n"
        "        time.sleep(3)\n"
        "    return _fsync(fd)\n"
        "os.fsync = fsync\n"
        "sys.argv[0] = 'twistd'\n"
        "from twisted.scripts.twistd import run\n"
        "run()\n"
    )

    BEFORE = (
        "sbc faults\n sbe\n  adjacency sip access\n   signaling-address ipv4 127.0.0.1\n"
        "   signaling-port {port}\n   transport udp\n   security untrusted\n   attach\n"
    )

    @defer.inlineCallbacks
    def start(self, directory: str, slow: bool) -> Any:
        """The daemon on ``directory``/sbc.conf (slow saves or not); (process, CLI socket)."""
        import shutil
        import tempfile

        cli_dir = tempfile.mkdtemp(prefix="sbc-interop-")
        self.addCleanup(shutil.rmtree, cli_dir, True)
        socket_path = os.path.join(cli_dir, "sbc.cli")
        from tests.interop.harness import make_pki as pki_for

        pki = pki_for(os.path.join(directory, "pki"))
        args = sbc_command(os.path.join(directory, "sbc.conf"), socket_path, pki)
        if slow:
            assert args[0] == TWISTD
            args = [sys.executable, "-c", self.SLOW_SAVE, *args[1:]]
        child = RunningProcess(get_reactor(), args, cwd=directory)
        self.addCleanup(lambda: child.stop(signal.SIGKILL))
        yield within(child.output_contains(b"started with"), 30.0, "the SBC to start")
        return child, socket_path

    @defer.inlineCallbacks
    def test_kill_during_the_save_restarts_on_the_last_committed_config(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "sbc.conf")
        port, new_port = free_port(), free_port()
        with open(path, "w") as f:
            f.write(self.BEFORE.format(port=port))
        with open(path) as f:
            before_text = f.read()
        before = parse_config(before_text)
        child, socket_path = yield self.start(directory, slow=True)

        # 1. a commit whose save is killed half way (after the temporary copy is written)
        commit = self.sbc_cli(
            socket_path,
            "configure",
            "sbc faults",
            "sbe",
            "adjacency sip access",
            f"signaling-port {new_port}",
            "commit comment killed during the save",
            "end",
        )
        reactor = get_reactor()
        deadline = reactor.seconds() + 20
        temporary = []
        while not temporary and reactor.seconds() < deadline:
            temporary = [n for n in os.listdir(directory) if n.endswith(".tmp")]
            yield pause(0.05)
        self.assertTrue(temporary, "the save never started")
        child.process.signalProcess(signal.SIGKILL)
        killed = yield within(child.ended, 15, "the killed daemon")
        self.assertEqual(killed.signal, signal.SIGKILL)
        yield commit  # sbc-cli sees the connection close; its result does not matter
        with open(path) as f:
            after_kill = f.read()
        self.assertEqual(parse_config(after_kill), before)  # whole, and the old one
        leftovers = sorted(os.listdir(directory))

        # 2. it restarts on that configuration
        child, socket_path = yield self.start(directory, slow=False)
        shown = yield self.sbc_cli(
            socket_path, "show running-config", "show configuration commit list"
        )
        self.assertIn(f"signaling-port {port}\n", shown.text())
        self.assertNotIn(f"signaling-port {new_port}", shown.text())
        # the interrupted commit never took effect: not in the history; its temporary is gone
        self.assertIn("No commits.", shown.text())
        self.assertNotIn("killed during the save", shown.text())
        self.assertEqual([n for n in os.listdir(directory) if n.endswith(".tmp")], [])
        self.assertIn("was never saved (the daemon stopped during the save)", child.output())

        # 3. a commit that returns, then SIGKILL at once: the restart has the new config
        done = yield self.sbc_cli(
            socket_path,
            "configure",
            "sbc faults",
            "sbe",
            "adjacency sip access",
            f"signaling-port {new_port}",
            "commit",
            "end",
        )
        self.assertNotIn("%", done.text())
        child.process.signalProcess(signal.SIGKILL)
        yield within(child.ended, 15, "the killed daemon")
        child, socket_path = yield self.start(directory, slow=False)
        shown = yield self.sbc_cli(socket_path, "show running-config")
        self.assertIn(f"signaling-port {new_port}\n", shown.text())
        print(
            f"\nkill during save: config file intact (the old one); files left by the kill: "
            f"{leftovers}; after the restart the interrupted commit is out of the history"
        )
