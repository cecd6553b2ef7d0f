"""``twistd sbc --workers 2``: a supervisor and two worker processes, with real peers.

docs/scaling.md. The call flows of tests/interop/test_calls.py run again
through two workers sharing every port (SO_REUSEPORT); a worker killed
with SIGKILL is started again by the supervisor while the other worker's
calls go on; a phone registered through one worker is called through the
other; the CLI speaks for the machine (a Worker column, counters added up).

Which worker the kernel gives a flow to depends on a hash of its addresses,
so the tests that need calls on both workers start callers (each from its
own port) until ``show ... calls`` lists calls on both, bounded in number.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.trial.unittest import FailTest, TestCase

from tests.interop import test_calls
from tests.interop.calls_harness import SippProcess, start_routed_sbc, start_sipp, start_sipp_uas
from tests.interop.harness import (
    HOST,
    get_reactor,
    make_pki,
    new_call_id,
    open_udp,
    pause,
    sip_request,
    within,
)
from tests.interop.test_cli import SBC_CLI, cli_socket
from tests.support.peers import free_port, run

WORKERS = ("--workers", "2")


def carol_register(transport: str, port: int, contact: str) -> bytes:
    """carol@lab.test's REGISTER (300 s) with ``contact``, sent from ``port``."""
    return sip_request(
        method="REGISTER",
        uri="sip:lab.test",
        via_transport=transport,
        local_port=port,
        call_id=new_call_id(),
        from_uri="sip:carol@lab.test",
        to_uri="sip:carol@lab.test",
        cseq="1 REGISTER",
        extra=[f"Contact: {contact}", "Expires: 300"],
    )


def dave_calls_carol(n: int, port: int) -> tuple[str, bytes]:
    """The Call-ID and the INVITE of dave{n} (UDP, from ``port``) to carol@lab.test."""
    call_id = new_call_id()
    invite = sip_request(
        method="INVITE",
        uri="sip:carol@lab.test",
        via_transport="UDP",
        local_port=port,
        call_id=call_id,
        from_uri=f"sip:dave{n}@lab.test",
        extra=[f"Contact: <sip:dave{n}@{HOST}:{port}>"],
    )
    return call_id, invite


def dave_in_dialog(n: int, port: int, call_id: str, target: str, to: str, cseq: str) -> bytes:
    """A request of dave{n}'s call to carol (``cseq`` such as ``"2 BYE"``) to ``target``."""
    return sip_request(
        method=cseq.split()[1],
        uri=target,
        via_transport="UDP",
        local_port=port,
        call_id=call_id,
        from_uri=f"sip:dave{n}@lab.test",
        to_uri="sip:carol@lab.test",
        cseq=cseq,
    ).replace(b"To: <sip:carol@lab.test>", f"To: {to}".encode())


def start_workers_sbc(case: Any, pki: Any, extra_args: Sequence[str]) -> Any:
    """The routed topology of test_calls (its public peer on a free port) with ``extra_args``."""
    adjacencies = [
        attrs.evolve(a, signaling_peer=HOST, signaling_peer_port=free_port())
        if a.name == "public"
        else a
        for a in test_calls.ROUTED
    ]
    return start_routed_sbc(
        case,
        pki,
        adjacencies,
        test_calls.ROUTED_POLICY,
        local_domains=["lab.test"],
        extra_args=extra_args,
    )


class TwoWorkerCallFlowTests(test_calls.CallFlowTests):
    """The call flows of :class:`tests.interop.test_calls.CallFlowTests`, through 2 workers.

    Every in-dialog request and every answer must reach the worker that
    holds the dialog: the ACK and BYE of the caller go to the port in our
    Contact (that worker's own UDP port); the callee's answers and BYE come
    back over the TCP connection that worker opened.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.sbc = yield start_workers_sbc(self, self.pki, WORKERS)


class _WorkersTestCase(TestCase):
    """A 2-worker SBC with the routed topology of test_calls, and CLI helpers."""

    timeout = 90
    #: more options for ``sbc``
    extra: tuple[str, ...] = ()

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.sbc = yield start_workers_sbc(self, self.pki, (*WORKERS, *self.extra))

    @defer.inlineCallbacks
    def cli(self, command: str) -> Any:
        """``sbc-cli -c COMMAND`` against the supervisor: its output."""
        result = yield within(
            run(
                get_reactor(),
                [SBC_CLI, "--socket", cli_socket(self.sbc.child), "-c", command],
                timeout=20.0,
            ),
            30.0,
            "sbc-cli",
        )
        self.assertEqual(result.exit_code, 0, result.text())
        return result.text()

    @defer.inlineCallbacks
    def workers(self) -> Any:
        """``show ... workers`` as {index: (pid, state, exits)}."""
        text = yield self.cli("show services sbc calls sbe workers")
        found = {}
        for line in text.splitlines():
            m = re.match(r"^(\d+)\s+(\d+|-)\s+(\w+)\s+\S+\s+(\d+)\s+(\d+)\s*$", line)
            if m:
                pid = int(m.group(2)) if m.group(2) != "-" else None
                found[int(m.group(1))] = (pid, m.group(3), int(m.group(4)))
        return found

    @defer.inlineCallbacks
    def calls_by_worker(self) -> Any:
        """``show ... calls``: {From user: worker} of the confirmed calls."""
        text = yield self.cli("show services sbc calls sbe calls")
        found = {}
        for line in text.splitlines():
            m = re.search(r"^\d+\s+(\d+)\s+INVITE\s+confirmed\s.*sip:(\w+)@lab\.test", line)
            if m:
                found[m.group(2)] = int(m.group(1))
        return found

    def context(self, *peers: SippProcess) -> str:
        text = "\n".join(p.describe(p._result) for p in peers)
        return text + "\n--- sbc log tail:\n" + self.sbc.tail(80)


class WorkerDeathTests(_WorkersTestCase):
    """SIGKILL one worker in the middle of calls: restarted, the other's calls go on."""

    @defer.inlineCallbacks
    def test_killed_worker_is_restarted_and_the_other_calls_complete(self) -> Any:
        callers: dict[str, SippProcess] = {}
        on: dict[str, int] = {}
        # each caller is its own UDP flow: the kernel's hash puts it on either worker;
        # each has a callee of its own (a lost call's callee is left waiting)
        for n in range(12):
            user = f"caller{n}"
            callee = yield start_sipp_uas(
                self, "calls_uas.xml", transport="t1", keys={"contact_scheme": "sip"}
            )
            callers[user] = start_sipp(
                self,
                "workers_uac_hold.xml",
                remote_port=self.sbc.port("access"),
                keys={
                    "ruri": f"sip:bob@{HOST}:{callee.port}",
                    "from_uri": f"sip:{user}@lab.test",
                    "contact_scheme": "sip",
                },
                seconds=40,
            )
            for _ in range(40):
                on = yield self.calls_by_worker()
                if user in on:
                    break
                yield pause(0.1)
            else:
                raise FailTest(f"{user}'s call is not shown\n" + self.context(callers[user]))
            if len(set(on.values())) == 2 and n >= 1:
                break
        self.assertEqual(set(on.values()), {1, 2}, f"calls on one worker only: {on}")
        before = yield self.workers()
        victim = on["caller0"]
        other = 3 - victim
        os.kill(before[victim][0], signal.SIGKILL)
        # restarted: a new process in its place, ready
        for _ in range(100):
            now = yield self.workers()
            pid, state, exits = now[victim]
            if state == "ready" and pid != before[victim][0] and exits == 1:
                break
            yield pause(0.1)
        else:
            raise FailTest(f"worker {victim} not restarted: {now}\n{self.sbc.tail(60)}")
        self.assertEqual(now[other], before[other], "the other worker was touched")
        # the other worker's calls end normally: ACKed, held, BYE answered
        survivors = [user for user, worker in on.items() if worker == other]
        lost = [user for user, worker in on.items() if worker == victim]
        for user in survivors:
            result = yield callers[user].wait(40, f"{user}'s call")
            self.assertEqual(result.exit_code, 0, self.context(callers[user]))
        for user in lost:
            result = yield callers[user].wait(40, f"{user}'s call")
            self.assertNotEqual(result.exit_code, 0, f"{user}'s call survived its worker")
        statistics = yield self.cli("show services sbc calls sbe statistics")
        self.assertRegex(
            statistics, rf"calls-lost:worker-exit\s+{len(lost)}\b", statistics + self.sbc.tail()
        )
        log = self.sbc.output()
        self.assertIn(f"worker {victim} ended (signal 9); {len(lost)} live call(s) lost", log)


class AggregationTests(_WorkersTestCase):
    """The CLI and the metrics speak for the machine: both workers' counters added up."""

    metrics_port = free_port()
    extra = ("--metrics", f"tcp:{metrics_port}:interface={HOST}")

    @defer.inlineCallbacks
    def scrape(self) -> Any:
        """Every sample of /metrics by (name, labels)."""
        from prometheus_client.parser import text_string_to_metric_families
        from twisted.web.client import Agent, HTTPConnectionPool, readBody

        pool = HTTPConnectionPool(get_reactor(), persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        url = f"http://{HOST}:{self.metrics_port}/metrics".encode()
        response = yield within(Agent(get_reactor(), pool=pool).request(b"GET", url), 15.0, "GET")
        body = yield within(readBody(response), 15.0, "the body of /metrics")
        self.assertEqual(response.code, 200, body)
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    @defer.inlineCallbacks
    def test_counters_and_calls_of_both_workers(self) -> Any:
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="t1", keys={"contact_scheme": "sip"}, calls=32
        )
        callers = 0
        # callers (2 calls each, from a port of their own) until both workers carried calls
        while callers < 16:
            caller = start_sipp(
                self,
                "calls_uac.xml",
                remote_port=self.sbc.port("access"),
                keys={
                    "ruri": f"sip:bob@{HOST}:{callee.port}",
                    "from_uri": f"sip:agg{callers}@lab.test",
                    "contact_scheme": "sip",
                },
                calls=2,
            )
            callers += 1
            result = yield caller.wait(40, "a caller")
            self.assertEqual(result.exit_code, 0, self.context(caller))
            carried = set(
                re.findall(r"\[worker (\d) sbc\.calls#info\] call \d+ INVITE", self.sbc.output())
            )
            if carried == {"1", "2"}:
                break
        self.assertEqual(carried, {"1", "2"}, "16 callers, all on one worker")
        text = yield self.cli("show services sbc calls sbe adjacencies access detail")
        # every call in on access, whichever worker took it
        self.assertRegex(text, rf"calls-started\s+{2 * callers}\b", text)
        self.assertRegex(text, rf"calls-ended\s+{2 * callers}\b", text)
        workers = yield self.workers()
        self.assertEqual(sorted(workers), [1, 2])
        self.assertEqual({state for _, state, _ in workers.values()}, {"ready"})
        self.assertEqual(len({pid for pid, _, _ in workers.values() if pid}), 2)
        samples = yield self.scrape()
        access = frozenset({("adjacency", "access")})
        self.assertEqual(samples[("sbc_calls_started_total", access)], 2 * callers)
        self.assertEqual(samples[("sbc_workers", frozenset({("state", "ready")}))], 2)
        self.assertEqual(samples[("sbc_worker_exits_total", frozenset({("worker", "1")}))], 0)


class Phone(protocol.DatagramProtocol):
    """A UDP phone: keeps every datagram with its source; answers to the source."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.waiters: list[tuple[bytes, defer.Deferred[tuple[bytes, tuple[str, int]]]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))
        for prefix, waiter in list(self.waiters):
            if datagram.startswith(prefix):
                self.waiters.remove((prefix, waiter))
                waiter.callback((datagram, addr))

    def next(self, prefix: bytes, seconds: float) -> Any:
        """The next datagram starting with ``prefix`` (and where it came from)."""
        waiter: defer.Deferred[tuple[bytes, tuple[str, int]]] = defer.Deferred()
        self.waiters.append((prefix, waiter))
        return within(waiter, seconds, f"a datagram starting with {prefix!r} at the phone")

    def answer(self, request: bytes, addr: tuple[str, int], status: int, reason: str) -> None:
        """A response to ``request`` with its Via, From, To (tagged), Call-ID and CSeq."""
        head = request.split(b"\r\n\r\n", 1)[0].decode()
        keep = [
            line
            for line in head.split("\r\n")[1:]
            if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")
        ]
        to = next(line for line in head.split("\r\n") if line.lower().startswith("to:"))
        lines = [f"SIP/2.0 {status} {reason}", *keep, f"{to};tag=phone", "Content-Length: 0"]
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode(), addr)


class SharedRegistrationTests(_WorkersTestCase):
    """A phone registered through one worker is called through the other (UDP).

    The worker that holds the binding sends to the phone from the shared
    port; the other one from its own port (so that the phone's answer comes
    back to it). Callers, each from its own port, are started until one
    call reaches the phone from another port than the shared one.
    """

    @defer.inlineCallbacks
    def test_phone_registered_on_one_worker_is_called_through_the_other(self) -> Any:
        shared = self.sbc.port("access")
        phone = Phone()
        listening = get_reactor().listenUDP(0, phone, interface=HOST)
        self.addCleanup(listening.stopListening)
        phone_port = listening.getHost().port
        register = carol_register("UDP", phone_port, f"<sip:carol@{HOST}:{phone_port}>")
        assert listening is not None
        phone.transport.write(register, (HOST, shared))  # type: ignore[union-attr]
        ok, _ = yield phone.next(b"SIP/2.0 ", 10.0)
        self.assertTrue(ok.startswith(b"SIP/2.0 200 "), ok)
        text = yield self.cli("show services sbc calls sbe registrations")
        row = re.search(r"^carol@lab\.test\s.*\s(\d+)\s*$", text, re.M)
        assert row is not None, text
        self.assertIn("Worker", text)
        for n in range(16):
            caller = open_udp(self, shared)
            invite_id, invite = dave_calls_carol(n, caller.local_port)
            final = caller.transact(invite, invite_id, seconds=15.0)
            request, source = yield phone.next(b"INVITE sip:carol@", 10.0)
            acked = phone.next(b"ACK ", 10.0)
            phone.answer(request, source, 486, "Busy Here")
            response = yield final
            self.assertEqual(response.status, 486, response.raw)
            _ack, ack_source = yield acked
            self.assertEqual(ack_source, source, "the ACK came from another port than the INVITE")
            if source[1] != shared:
                break
        else:
            raise FailTest("16 calls all went through the worker holding the binding")
        stats = yield self.cli("show services sbc calls sbe statistics")
        self.assertNotIn("held-elsewhere", stats)


class StreamPhone(protocol.Protocol):
    """A phone on a TCP connection to the SBC: every message it receives, framed."""

    def __init__(self) -> None:
        self.buffer = b""
        self.received: list[bytes] = []
        self._waiters: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            found = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            length = int(found.group(1)) if found else 0
            if len(rest) < length:
                return
            message, self.buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
            if not message.strip():
                continue
            for waiter in [w for w in self._waiters if message.startswith(w[0])]:
                self._waiters.remove(waiter)
                waiter[1].callback(message)
                break
            else:
                self.received.append(message)

    def next(self, prefix: bytes, seconds: float) -> Any:
        """The next message that starts with ``prefix`` (kept ones first)."""
        for message in self.received:
            if message.startswith(prefix):
                self.received.remove(message)
                return defer.succeed(message)
        waiter: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((prefix, waiter))
        return within(waiter, seconds, f"{prefix!r} on the phone's connection")

    def answer(self, request: bytes, status: int, reason: str, contact: str) -> None:
        """Answer ``request`` on this connection (the phone's own tag, its Contact)."""
        lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        keep = [
            line
            for line in lines[1:]
            if line.split(":", 1)[0].strip().lower()
            in ("via", "v", "from", "f", "call-id", "i", "cseq")
        ]
        to = next(
            line for line in lines[1:] if line.split(":", 1)[0].strip().lower() in ("to", "t")
        )
        if ";tag=" not in to:
            to += ";tag=phone"
        out = [f"SIP/2.0 {status} {reason}", *keep, to, f"Contact: {contact}", "Content-Length: 0"]
        assert self.transport is not None
        self.transport.write(("\r\n".join(out) + "\r\n\r\n").encode())


CLUSTER_LINK = (
    "adjacency sip cluster",
    " signaling-address ipv4 127.0.0.1",
    " signaling-port {port}",
    " remote-address ipv4 127.0.0.0/8",
    " transport tcp",
    " security trusted-unencrypted",
    " cluster-link",
    " attach",
)


class SiblingStreamPhoneTests(_WorkersTestCase):
    """A TCP phone whose connection one worker holds, called through the other worker.

    The node has a cluster link on 127.0.0.1 (plain TCP): each worker
    listens on a port of its own beside it and advertises that port, so the
    worker a call enters hands it to the worker that holds the phone's
    connection, which sends it over that connection (docs/scaling.md).
    Callers on UDP, each from its own port, are started until the cluster
    link carried a call; every call must connect over the phone's one
    connection (its Contact names a port where nothing listens).
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        link = [line.format(port=free_port()) for line in CLUSTER_LINK]
        self.sbc = yield start_routed_sbc(
            self,
            self.pki,
            test_calls.ROUTED,
            (*link, *test_calls.ROUTED_POLICY),
            local_domains=["lab.test"],
            extra_args=WORKERS,
        )

    @defer.inlineCallbacks
    def test_calls_through_either_worker_reach_the_phone_over_its_connection(self) -> Any:
        yield within(
            self.sbc.child.output_contains(b"own cluster-link port"), 20.0, "the link ports"
        )
        phone = StreamPhone()
        connected = yield protocol.ClientCreator(get_reactor(), lambda: phone).connectTCP(
            HOST, self.sbc.port("trunk")
        )
        self.addCleanup(connected.transport.loseConnection)
        nowhere = free_port()  # the phone's Contact: nothing listens there
        contact = f"<sip:carol@{HOST}:{nowhere};transport=tcp>"
        register = carol_register("TCP", nowhere, contact)
        phone.transport.write(register)  # type: ignore[union-attr]
        ok = yield phone.next(b"SIP/2.0 ", 10.0)
        self.assertTrue(ok.startswith(b"SIP/2.0 200 "), ok)
        # each worker heard where the other takes calls (heartbeats, every 2 s)
        for index in (1, 2):
            heard = self.sbc.child.output_contains(
                f"[worker {index} sbc.cluster#info] cluster: node".encode()
            )
            yield within(heard, 20.0, f"cluster.peer in worker {index}")
        shared = self.sbc.port("access")
        hopped = 0
        for n in range(16):
            caller = open_udp(self, shared)
            invite_id, invite = dave_calls_carol(n, caller.local_port)
            final = caller.transact(invite, invite_id, seconds=15.0)
            request = yield phone.next(b"INVITE sip:carol@", 10.0)
            phone.answer(request, 200, "OK", contact)
            response = yield final
            self.assertEqual(response.status, 200, response.raw)
            to = response.header("To", "t")[0]
            target = response.header("Contact", "m")[0].strip("<>").split(">")[0]
            caller.send(dave_in_dialog(n, caller.local_port, invite_id, target, to, "1 ACK"))
            yield phone.next(b"ACK sip:carol@", 10.0)
            bye_request = dave_in_dialog(n, caller.local_port, invite_id, target, to, "2 BYE")
            done = caller.transact(bye_request, invite_id, seconds=15.0)
            bye = yield phone.next(b"BYE sip:carol@", 10.0)
            phone.answer(bye, 200, "OK", contact)
            response = yield done
            self.assertEqual(response.status, 200, response.raw)
            statistics = yield self.cli("show services sbc calls sbe statistics")
            cluster = statistics.split("Adjacency: cluster", 1)[1]
            found = re.search(r"attempts\s+(\d+)", cluster)
            hopped = int(found.group(1)) if found else 0
            if hopped:
                break
        else:
            raise FailTest("16 calls all entered the worker holding the phone's connection")
        self.assertRegex(cluster, r"calls-started\s+1", statistics)
        self.assertNotIn("held-elsewhere", statistics)
