"""The router: tree, policy, security re-check, errors."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sbc.adjacencies import AdjacencyTable
from sbc.config import SbcConfig, parse_config
from sbc.errors import ConfigError, SipError
from sbc.interfaces import IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing import (
    NO_POLICY_SET_LABEL,
    STOCK_FACTORIES,
    DefaultPolicy,
    Destination,
    PolicyFactory,
    RouteKey,
    Router,
    RoutingContext,
    RoutingDecision,
)

ADJACENCIES = """
sbc test
 sbe
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   security untrusted
   attach
  adjacency sip tls
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   attach
  adjacency sip trunk
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   security trusted-unencrypted
   attach
  adjacency sip access2
   signaling-address ipv4 127.0.0.1
   signaling-port 5063
   security untrusted
   attach
  adjacency sip spare
   signaling-address ipv4 127.0.0.1
   signaling-port 5064
   security trusted-unencrypted
"""

POLICY_SET = """
  call-policy-set 1
   first-call-routing-table {first}
{tables}   rtg-src-adjacency-table by-source
    entry 1
     match-adjacency access
     action next-table by-domain
    entry 2
     match-adjacency trunk
     dst-adjacency tls
     action complete
   rtg-dst-domain-table by-domain
    entry 1
     match-domain other.org
     dst-adjacency access2
     action complete
    entry 3
     match-domain example.com
     action next-table by-number
   rtg-dst-address-table by-number
    entry 1
     match-address 1
     dst-adjacency trunk
     action complete
   rtg-round-robin-table everyone
    entry 1
     dst-adjacency tls
     action complete
    entry 2
     dst-adjacency trunk
     action complete
    entry 3
     dst-adjacency access2
     action complete
    entry 4
     dst-adjacency spare
     action complete
  active-call-policy-set 1
"""

STOCK = {f.name: f for f in STOCK_FACTORIES}


def config(
    extra: str = "", *, policy_set: bool = True, first: str = "by-source", tables: str = ""
) -> SbcConfig:
    text = POLICY_SET.format(first=first, tables=tables) if policy_set else ""
    return parse_config(ADJACENCIES + text + extra, "test.conf")


def router(cfg: SbcConfig, **factories: IRoutingPolicyFactory) -> Router:
    return Router.from_config(cfg, {**STOCK, **factories})


def table(cfg: SbcConfig) -> AdjacencyTable:
    return AdjacencyTable(cfg.adjacencies)


def key(
    source: str = "access",
    domain: str = "example.com",
    user: str | None = "1555",
    secure: bool = False,
) -> RouteKey:
    return RouteKey(source, domain, user, secure)


def names(decision: RoutingDecision) -> list[str]:
    return [d.adjacency for d in decision.destinations]


@implementer(IRoutingPolicy)
class ScriptedPolicy:
    """A test policy that records its input and returns a fixed list."""

    name = "scripted"

    def __init__(self, answer: Sequence[object]) -> None:
        self.answer = answer
        self.seen: list[tuple[tuple[Destination, ...], RouteKey, RoutingContext]] = []

    def choose(
        self, candidates: Sequence[Destination], key: RouteKey, context: RoutingContext
    ) -> Sequence[Destination]:
        self.seen.append((tuple(candidates), key, context))
        return self.answer  # type: ignore[return-value]


def scripted_router(cfg: SbcConfig, policy: ScriptedPolicy) -> Router:
    return Router(Router.from_config(cfg, STOCK).root, policy)


class NoPolicySetTests(SynchronousTestCase):
    def test_every_attached_but_source(self) -> None:
        """Without an active set: every attached adjacency except the source, config order."""
        cfg = config(policy_set=False)
        decision = router(cfg).route(key(source="trunk"), table(cfg))
        self.assertEqual(names(decision), ["access", "access2"])
        self.assertEqual(decision.path, (NO_POLICY_SET_LABEL,))

    def test_secure_call(self) -> None:
        """A secure call without an active set may use the trusted adjacencies only."""
        cfg = config(policy_set=False)
        decision = router(cfg).route(key(source="access", secure=True), table(cfg))
        self.assertEqual(names(decision), ["tls", "trunk"])

    def test_set_configured_but_not_active(self) -> None:
        """A call-policy-set that is not active is not used."""
        cfg = attrs.evolve(config(), active_call_policy_set=None)
        decision = router(cfg).route(key(source="tls", secure=True), table(cfg))
        self.assertEqual(names(decision), ["trunk"])
        self.assertEqual(decision.path, (NO_POLICY_SET_LABEL,))

    def test_only_source_attached(self) -> None:
        """Nothing but the source adjacency: 480."""
        cfg = config(policy_set=False)
        only = AdjacencyTable([cfg.adjacency("access")])
        error = self.assertRaises(SipError, router(cfg).route, key(), only)
        self.assertEqual((error.status, error.warning), (480, None))


class PolicySetTests(SynchronousTestCase):
    def test_chain_and_path(self) -> None:
        """The walk through three tables decides; the matched path is recorded."""
        cfg = config()
        decision = router(cfg).route(key(), table(cfg))
        self.assertEqual(names(decision), ["trunk"])
        self.assertEqual(
            decision.path,
            ("call-policy-set 1", "by-source entry 1", "by-domain entry 3", "by-number entry 1"),
        )

    def test_domain_entry(self) -> None:
        """A complete entry in the second table."""
        cfg = config()
        decision = router(cfg).route(key(domain="Other.ORG", user=None), table(cfg))
        self.assertEqual(names(decision), ["access2"])
        self.assertEqual(decision.path[-1], "by-domain entry 1")

    def test_source_may_be_a_destination(self) -> None:
        """With a policy set the tables decide, even to route back out of the source."""
        text = ADJACENCIES + (
            "  call-policy-set 2\n   first-call-routing-table t\n"
            "   rtg-src-adjacency-table t\n    entry 1\n     match-adjacency access\n"
            "     dst-adjacency access\n     action complete\n  active-call-policy-set 2\n"
        )
        cfg2 = parse_config(text)
        self.assertEqual(names(router(cfg2).route(key(), table(cfg2))), ["access"])

    def test_no_entry_matches(self) -> None:
        """No entry matches: 480 without a Warning for an insecure call."""
        cfg = config()
        error = self.assertRaises(
            SipError, router(cfg).route, key(domain="unknown.net"), table(cfg)
        )
        self.assertEqual((error.status, error.warning), (480, None))

    def test_no_entry_matches_secure(self) -> None:
        """No entry matches a secure call: 480 with Warning 380."""
        cfg = config()
        error = self.assertRaises(
            SipError, router(cfg).route, key(source="tls", secure=True), table(cfg)
        )
        self.assertEqual((error.status, error.warning), (480, (380, "SIPS Not Allowed")))

    def test_security_filter_insecure(self) -> None:
        """An insecure call never leaves through a trusted-encrypted adjacency: 480."""
        cfg = config()
        error = self.assertRaises(SipError, router(cfg).route, key(source="trunk"), table(cfg))
        self.assertEqual((error.status, error.warning), (480, None))

    def test_security_filter_secure(self) -> None:
        """A secure call never leaves through an untrusted adjacency: 480 + 380."""
        cfg = config()
        error = self.assertRaises(
            SipError, router(cfg).route, key(domain="other.org", secure=True), table(cfg)
        )
        self.assertEqual((error.status, error.warning), (480, (380, "SIPS Not Allowed")))

    def test_secure_call_allowed(self) -> None:
        """A secure call from the trunk to the TLS adjacency is routed."""
        cfg = config()
        decision = router(cfg).route(key(source="trunk", secure=True), table(cfg))
        self.assertEqual(names(decision), ["tls"])

    def test_detached_destination_dropped(self) -> None:
        """A destination that is not attached now is not a candidate."""
        cfg = config()
        attached = AdjacencyTable(a for a in cfg.adjacencies if a.name != "trunk")
        error = self.assertRaises(SipError, router(cfg).route, key(), attached)
        self.assertEqual(error.status, 480)

    def test_round_robin_table_across_calls(self) -> None:
        """A round-robin table rotates its first entry per call; forbidden entries drop out."""
        cfg = config(first="everyone")
        r = router(cfg)
        orders = [names(r.route(key(source="access"), table(cfg))) for _ in range(4)]
        # entries tls, trunk, access2, spare: tls is TLS-only and spare detached
        self.assertEqual(
            orders,
            [
                ["trunk", "access2"],
                ["trunk", "access2"],
                ["access2", "trunk"],
                ["trunk", "access2"],
            ],
        )


class PolicyTests(SynchronousTestCase):
    def test_round_robin_policy(self) -> None:
        """routing-policy round-robin rotates the candidates per call."""
        cfg = config(" routing-policy round-robin\n", policy_set=False)
        r = router(cfg)
        orders = [names(r.route(key(source="tls"), table(cfg))) for _ in range(3)]
        self.assertEqual(
            orders,
            [
                ["access", "trunk", "access2"],
                ["trunk", "access2", "access"],
                ["access2", "access", "trunk"],
            ],
        )

    def test_least_calls_policy(self) -> None:
        """routing-policy least-calls orders by the active call counts given to route()."""
        cfg = config(" routing-policy least-calls\n", policy_set=False)
        counts = {"access": 3, "trunk": 1, "access2": 3}
        decision = router(cfg).route(key(source="tls"), table(cfg), counts.__getitem__)
        self.assertEqual(names(decision), ["trunk", "access", "access2"])

    def test_policy_sees_only_permitted_candidates(self) -> None:
        """The policy chooses among candidates that already passed the security rules."""
        cfg = config(policy_set=False)
        policy = ScriptedPolicy([Destination("access")])
        calls = {"access": 2}.get
        scripted_router(cfg, policy).route(key(source="trunk"), table(cfg), lambda n: calls(n, 0))
        ((candidates, seen_key, context),) = policy.seen
        self.assertEqual(candidates, (Destination("access"), Destination("access2")))
        self.assertEqual(seen_key, key(source="trunk"))
        self.assertEqual(context.active_calls("access"), 2)
        self.assertIsNotNone(context.adjacency("tls"))

    def test_forbidden_choices_removed(self) -> None:
        """A policy returning an insecure, a detached and an invented name: all three dropped."""
        cfg = config(policy_set=False)
        policy = ScriptedPolicy(
            [Destination("tls"), Destination("spare"), Destination("ghost"), Destination("access2")]
        )
        decision = scripted_router(cfg, policy).route(key(source="access"), table(cfg))
        self.assertEqual(names(decision), ["access2"])

    def test_untrusted_choice_removed_for_secure_call(self) -> None:
        """A secure call: an untrusted destination from the policy is dropped."""
        cfg = config(policy_set=False)
        policy = ScriptedPolicy([Destination("access"), Destination("tls")])
        decision = scripted_router(cfg, policy).route(key(source="trunk", secure=True), table(cfg))
        self.assertEqual(names(decision), ["tls"])

    def test_nothing_left_after_recheck(self) -> None:
        """Everything the policy chose fails the re-check: 480 (+380 when secure)."""
        cfg = config(policy_set=False)
        insecure = ScriptedPolicy([Destination("tls"), Destination("ghost")])
        error = self.assertRaises(
            SipError, scripted_router(cfg, insecure).route, key(source="access"), table(cfg)
        )
        self.assertEqual((error.status, error.warning), (480, None))
        secure = ScriptedPolicy([Destination("access"), Destination("ghost")])
        error = self.assertRaises(
            SipError,
            scripted_router(cfg, secure).route,
            key(source="trunk", secure=True),
            table(cfg),
        )
        self.assertEqual((error.status, error.warning), (480, (380, "SIPS Not Allowed")))

    def test_policy_returns_nothing(self) -> None:
        """A policy that narrows to nothing: 480."""
        cfg = config(policy_set=False)
        error = self.assertRaises(
            SipError, scripted_router(cfg, ScriptedPolicy([])).route, key(), table(cfg)
        )
        self.assertEqual(error.status, 480)

    def test_non_destinations_and_duplicates(self) -> None:
        """Objects that are not Destinations are dropped; duplicates kept once."""
        cfg = config(policy_set=False)
        policy = ScriptedPolicy(["access2", Destination("access2"), Destination("access2")])
        decision = scripted_router(cfg, policy).route(key(source="trunk"), table(cfg))
        self.assertEqual(decision.destinations, (Destination("access2"),))

    def test_policy_may_add_permitted_adjacency(self) -> None:
        """A policy may add an attached adjacency the rules allow (it is re-checked)."""
        cfg = config()
        policy = ScriptedPolicy([Destination("trunk"), Destination("access2")])
        decision = scripted_router(cfg, policy).route(key(), table(cfg))
        self.assertEqual(names(decision), ["trunk", "access2"])


class FromConfigTests(SynchronousTestCase):
    def test_unknown_policy(self) -> None:
        """An unknown routing-policy name is a ConfigError at load time, with file and line."""
        cfg = config(" routing-policy fastest\n")
        error = self.assertRaises(ConfigError, Router.from_config, cfg, STOCK)
        self.assertEqual(error.path, "test.conf")
        self.assertEqual(error.line, cfg.setting_lines["routing-policy"])
        self.assertIn("unknown routing-policy 'fastest'", error.message)
        self.assertIn("default, least-calls, round-robin", error.message)

    def test_unknown_policy_with_discovery(self) -> None:
        """With discovered plugins too, an unknown name is refused."""
        cfg = config(" routing-policy fastest\n")
        self.assertRaises(ConfigError, Router.from_config, cfg)

    def test_discovery_by_default(self) -> None:
        """No factories given: the stock policies are found as plugins."""
        r = Router.from_config(config(" routing-policy least-calls\n"))
        self.assertEqual(r.policy.name, "least-calls")
        self.assertEqual(r.policy_set, 1)

    def test_custom_factory(self) -> None:
        """A factory passed in is used by name."""
        factory = PolicyFactory("mine", "test", DefaultPolicy)
        cfg = config(" routing-policy mine\n")
        self.assertIsInstance(Router.from_config(cfg, {"mine": factory}).policy, DefaultPolicy)

    def test_factory_making_no_policy(self) -> None:
        """A factory whose product is no IRoutingPolicy provider is a ConfigError."""
        factory = PolicyFactory("broken", "test", object)  # type: ignore[arg-type]
        cfg = config(" routing-policy broken\n")
        error = self.assertRaises(ConfigError, Router.from_config, cfg, {"broken": factory})
        self.assertIn("made no IRoutingPolicy provider", error.message)

    def test_unknown_active_set(self) -> None:
        """active-call-policy-set naming no set is a ConfigError."""
        cfg = config(" active-call-policy-set 9\n")
        error = self.assertRaises(ConfigError, Router.from_config, cfg, STOCK)
        self.assertIn("no call-policy-set 9", error.message)

    def test_unwalkable_set(self) -> None:
        """A tree that cannot be built (a next-table loop) is a ConfigError from the file."""
        cfg = config(
            first="loop",
            tables="   rtg-round-robin-table loop\n    entry 1\n     action next-table loop\n",
        )
        error = self.assertRaises(ConfigError, Router.from_config, cfg, STOCK)
        self.assertIn("next-table loop", error.message)
        self.assertEqual(error.path, "test.conf")
        self.assertGreater(error.line, 0)
