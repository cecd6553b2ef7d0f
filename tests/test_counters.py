"""sbc.counters: per-adjacency counters."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sbc.counters import UNCLASSIFIED, Counters


class CountersTests(SynchronousTestCase):
    def test_increment_and_get(self) -> None:
        c = Counters()
        c.increment("access", "handshakes")
        c.increment("access", "handshakes", by=2)
        self.assertEqual(c.get("access", "handshakes"), 3)

    def test_unknown_counter_is_zero(self) -> None:
        c = Counters()
        self.assertEqual(c.get("access", "handshakes"), 0)
        c.increment("access", "drops:unparseable")
        self.assertEqual(c.get("access", "handshakes"), 0)

    def test_none_is_unclassified(self) -> None:
        c = Counters()
        c.increment(None, "drops:no-adjacency")
        self.assertEqual(c.get(UNCLASSIFIED, "drops:no-adjacency"), 1)
        self.assertEqual(c.get(None, "drops:no-adjacency"), 1)

    def test_snapshot_is_nested_sorted_copy(self) -> None:
        c = Counters()
        c.increment("core", "handshakes")
        c.increment("access", "drops:unparseable")
        c.increment("access", "connections-accepted", 4)
        snap = c.snapshot()
        self.assertEqual(
            snap,
            {
                "access": {"connections-accepted": 4, "drops:unparseable": 1},
                "core": {"handshakes": 1},
            },
        )
        self.assertEqual(list(snap), ["access", "core"])
        self.assertEqual(list(snap["access"]), ["connections-accepted", "drops:unparseable"])
        snap["core"]["handshakes"] = 99
        self.assertEqual(c.get("core", "handshakes"), 1)

    def test_snapshot_omits_adjacencies_only_read(self) -> None:
        c = Counters()
        c.get("ghost", "x")
        self.assertEqual(c.snapshot(), {})

    def test_total(self) -> None:
        c = Counters()
        c.increment("a", "handshakes", 2)
        c.increment("b", "handshakes", 3)
        c.increment("b", "other")
        self.assertEqual(c.total("handshakes"), 5)

    def test_negative_refused(self) -> None:
        c = Counters()
        self.assertRaises(ValueError, c.increment, "a", "x", -1)
        self.assertEqual(c.get("a", "x"), 0)

    def test_forget(self) -> None:
        c = Counters()
        c.increment("a", "x")
        c.increment("b", "x")
        c.forget("a")
        c.forget("never-there")
        self.assertEqual(c.snapshot(), {"b": {"x": 1}})
