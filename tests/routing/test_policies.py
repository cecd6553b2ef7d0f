"""The stock routing policies and their factories."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sbc.adjacencies import AdjacencyTable
from sbc.config import AdjacencyConfig, SbcConfig
from sbc.interfaces import IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing import (
    STOCK_FACTORIES,
    DefaultPolicy,
    Destination,
    LeastCallsPolicy,
    PolicyFactory,
    RoundRobinPolicy,
    RouteKey,
    RoutingContext,
)

KEY = RouteKey("access", "example.com", None, False)
A, B, C = Destination("a"), Destination("b"), Destination("c")


def context(calls: dict[str, int] | None = None) -> RoutingContext:
    adjacency = AdjacencyConfig("a", "127.0.0.1", attached=True)
    counts = calls or {}
    return RoutingContext(AdjacencyTable([adjacency]), lambda name: counts.get(name, 0))


class ProviderTests(SynchronousTestCase):
    def test_verify_policies(self) -> None:
        """Every stock policy provides IRoutingPolicy and carries its name."""
        for policy, name in (
            (DefaultPolicy(), "default"),
            (RoundRobinPolicy(), "round-robin"),
            (LeastCallsPolicy(), "least-calls"),
        ):
            self.assertTrue(verifyObject(IRoutingPolicy, policy))
            self.assertEqual(policy.name, name)

    def test_verify_factories(self) -> None:
        """Every stock factory provides IRoutingPolicyFactory and makes its policy."""
        config = SbcConfig("s")
        self.assertEqual(
            [f.name for f in STOCK_FACTORIES], ["default", "round-robin", "least-calls"]
        )
        for factory in STOCK_FACTORIES:
            self.assertTrue(verifyObject(IRoutingPolicyFactory, factory))
            self.assertTrue(factory.description)
            policy = factory.make_policy(config)
            self.assertTrue(verifyObject(IRoutingPolicy, policy))
            self.assertEqual(policy.name, factory.name)

    def test_factory_makes_fresh_policies(self) -> None:
        """Each load gets a new policy: rotation state does not leak across configurations."""
        factory = PolicyFactory("rr", "test", RoundRobinPolicy)
        first, second = factory.make_policy(SbcConfig("s")), factory.make_policy(SbcConfig("s"))
        self.assertIsNot(first, second)


class DefaultPolicyTests(SynchronousTestCase):
    def test_keeps_order(self) -> None:
        """The default policy returns the candidates in the tree's order."""
        self.assertEqual(list(DefaultPolicy().choose((C, A, B), KEY, context())), [C, A, B])

    def test_empty(self) -> None:
        """No candidates in, none out."""
        self.assertEqual(list(DefaultPolicy().choose((), KEY, context())), [])


class RoundRobinPolicyTests(SynchronousTestCase):
    def test_rotates_per_call(self) -> None:
        """Each call starts one candidate further; all candidates stay in the list."""
        policy = RoundRobinPolicy()
        orders = [list(policy.choose((A, B, C), KEY, context())) for _ in range(4)]
        self.assertEqual(orders, [[A, B, C], [B, C, A], [C, A, B], [A, B, C]])

    def test_changing_candidate_count(self) -> None:
        """The rotation wraps around whatever number of candidates a call has."""
        policy = RoundRobinPolicy()
        self.assertEqual(list(policy.choose((A, B), KEY, context())), [A, B])
        self.assertEqual(list(policy.choose((A, B), KEY, context())), [B, A])
        self.assertEqual(list(policy.choose((A, B, C), KEY, context())), [C, A, B])

    def test_empty(self) -> None:
        """No candidates: an empty answer, no error."""
        self.assertEqual(list(RoundRobinPolicy().choose((), KEY, context())), [])


class LeastCallsPolicyTests(SynchronousTestCase):
    def test_fewest_calls_first(self) -> None:
        """Candidates ordered by active calls, ascending."""
        result = LeastCallsPolicy().choose((A, B, C), KEY, context({"a": 5, "b": 0, "c": 2}))
        self.assertEqual(list(result), [B, C, A])

    def test_ties_keep_order(self) -> None:
        """Equal counts keep the tree's order (a stable sort)."""
        result = LeastCallsPolicy().choose((C, A, B), KEY, context({"a": 1, "b": 1, "c": 1}))
        self.assertEqual(list(result), [C, A, B])


class RoutingContextTests(SynchronousTestCase):
    def test_adjacency_lookup(self) -> None:
        """The context gives attached adjacencies by name, None otherwise."""
        ctx = context()
        adjacency = ctx.adjacency("a")
        assert adjacency is not None
        self.assertEqual(adjacency.name, "a")
        self.assertIsNone(ctx.adjacency("ghost"))

    def test_default_active_calls(self) -> None:
        """Without a counter every adjacency has 0 active calls."""
        ctx = RoutingContext(AdjacencyTable([]))
        self.assertEqual(ctx.active_calls("anything"), 0)
