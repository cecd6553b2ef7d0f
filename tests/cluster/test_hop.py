"""The cluster hop's wire format (sbc.cluster.hop) and each node's advertised address."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sbc.cluster.codec import relay_key
from sbc.cluster.hop import (
    CLUSTER_HEADER,
    NOT_REACHED,
    ClusterAddress,
    ClusterCaller,
    binding_key_of,
    cluster_user,
    decode_heartbeat,
    encode_heartbeat,
    not_reached,
)
from sbc.errors import SipError
from sbc.sip.uri import parse_uri
from tests.cluster.test_store import FakeRedis, Node


class ClusterUserTests(SynchronousTestCase):
    def test_a_key_survives_a_request_uri(self) -> None:
        for key in ("sbc:b:reg:alice@lab.test:0123456789abcdef", relay_key("sbcr-Ab_c-9")):
            user = cluster_user(key)
            self.assertTrue(user.startswith("sbcc-"))
            uri = parse_uri(f"sips:{user}@127.0.0.1:5070")
            self.assertEqual(binding_key_of(uri.user), key)

    def test_what_names_no_binding(self) -> None:
        for user in (
            None,
            "alice",
            "sbcr-token",
            "sbcc-!!!",
            "sbcc-" + "bm9uc2Vuc2U",  # "nonsense": not a binding key
            "sbcc-/w",  # not UTF-8
        ):
            self.assertIsNone(binding_key_of(user), user)


class CallerHeaderTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        caller = ClusterCaller("edge-b", "trunk", False)
        self.assertEqual(caller.header_value(), "node=edge-b;inbound=trunk;caller=untrusted")
        self.assertEqual(ClusterCaller.parse(caller.header_value()), caller)
        self.assertEqual(
            ClusterCaller.parse(" Node=b ; inbound=t ;caller=trusted"),
            ClusterCaller("b", "t", True),
        )
        linked = ClusterCaller("b", "t", True, ClusterAddress("2001:db8::2", 5070))
        self.assertEqual(
            linked.header_value(), "node=b;inbound=t;caller=trusted;link=[2001:db8::2]:5070"
        )
        self.assertEqual(ClusterCaller.parse(linked.header_value()), linked)

    def test_missing_or_not_understood_is_400(self) -> None:
        for value in (
            None,
            "",
            "node=b;inbound=t",
            "node=b;inbound=t;caller=maybe",
            "inbound=t;caller=trusted",
            "node=b;caller=trusted",
            "node=b;inbound=t;caller=trusted;link=host.example:5070",
            "node=b;inbound=t;caller=trusted;link=10.0.0.2:0",
            "node=b;inbound=t;caller=trusted;link=10.0.0.2",
        ):
            with self.assertRaises(SipError) as raised:
                ClusterCaller.parse(value)
            self.assertEqual(raised.exception.status, 400, value)

    def test_not_reached_keeps_the_error(self) -> None:
        error = SipError(480, "Temporarily Unavailable", (380, "SIPS Not Allowed"), (("A", "1"),))
        marked = not_reached(error)
        self.assertEqual(
            (marked.status, marked.reason, marked.warning), (480, error.reason, error.warning)
        )
        self.assertEqual(marked.headers, (("A", "1"), (CLUSTER_HEADER, NOT_REACHED)))


class HeartbeatTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        text = encode_heartbeat({"trunk": 2}, ClusterAddress("10.0.0.1", 5070))
        self.assertEqual(decode_heartbeat(text), ({"trunk": 2}, ClusterAddress("10.0.0.1", 5070)))
        self.assertEqual(decode_heartbeat(encode_heartbeat({}, None)), ({}, None))
        self.assertEqual(str(ClusterAddress("2001:db8::1", 5070)), "[2001:db8::1]:5070")

    def test_unreadable(self) -> None:
        for text in (
            "{",
            "[]",
            '{"trunk": 2}',
            '{"calls": {"t": "x"}}',
            '{"calls": {}, "cluster": [1]}',
        ):
            with self.assertRaises(ValueError):
                decode_heartbeat(text)

    def test_nodes_learn_and_forget_each_others_addresses(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        redis = FakeRedis(clock)
        a, b = Node("A", redis, clock), Node("B", redis, clock)
        a.store.advertise = lambda: ClusterAddress("127.0.0.1", 5070)
        a.store.tick()
        b.store.tick()
        self.assertEqual(b.store.peer_address("A"), ClusterAddress("127.0.0.1", 5070))
        self.assertIsNone(a.store.peer_address("B"))  # B has no cluster link
        came = [e for e in events if e.get("event") == "cluster.peer"]
        self.assertEqual([(e["peer"], e["address"]) for e in came], [("A", "127.0.0.1:5070")])
        # A detaches its link: B forgets the address at its next heartbeat
        a.store.advertise = lambda: None
        a.store.tick()
        b.store.tick()
        self.assertIsNone(b.store.peer_address("A"))
        # A stops: B forgets it once A's heartbeat expires
        a.store.advertise = lambda: ClusterAddress("127.0.0.1", 5070)
        a.store.tick()
        b.store.tick()
        clock.advance(7)
        b.store.tick()
        self.assertEqual(b.store.peers, {})
        gone = [e["peer"] for e in events if e.get("event") == "cluster.peer-gone"]
        self.assertEqual(gone, ["A", "A"])
