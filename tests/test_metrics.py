"""sbc.metrics: the collector's families and labels, the HTTP resource, the service."""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from sbc import __version__
from sbc.cli.commands import BlockedSourceInfo, CallInfo, RegistrationInfo
from sbc.config import AdjacencyConfig, parse_config
from sbc.metrics import (
    COUNTER_FAMILIES,
    MetricsResource,
    MetricsService,
    OpenConnection,
    SbcCollector,
    metric_name,
    metrics_site,
    service_registry,
)
from sbc.service import SbcService
from tests.cli.test_commands import RUNNING
from tests.transport.fakes import Reactor

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collector: SbcCollector) -> tuple[dict[str, Any], Samples]:
    """The families by name and every sample, as Prometheus would parse them."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples
    }
    return families, samples


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def counters(values: Mapping[str, Mapping[str, int]]) -> SbcCollector:
    return SbcCollector(lambda: values)


def adjacency(name: str, address: str = "127.0.0.1", **kw: Any) -> AdjacencyConfig:
    return AdjacencyConfig(name, ipaddress.ip_address(address), **kw)


def call(inbound: str, outbound: str | None) -> CallInfo:
    return CallInfo(1, "INVITE", "proceeding", inbound, outbound, False, 0.0)


class CounterFamilyTests(SynchronousTestCase):
    def test_bare_name_is_a_counter_labelled_by_adjacency(self) -> None:
        families, samples = scrape(
            counters({"access": {"messages-received": 7}, "core": {"messages-received": 2}})
        )
        family = families["sbc_messages_received"]
        self.assertEqual(family.type, "counter")
        self.assertEqual(family.documentation, COUNTER_FAMILIES["messages-received"].help)
        self.assertEqual(samples[key("sbc_messages_received_total", adjacency="access")], 7)
        self.assertEqual(samples[key("sbc_messages_received_total", adjacency="core")], 2)

    def test_reason_becomes_a_label(self) -> None:
        families, samples = scrape(
            counters(
                {
                    "access": {"drops:unparseable": 3, "connections-refused:max-per-source": 1},
                    "(unclassified)": {"drops:no-adjacency": 4},
                }
            )
        )
        self.assertEqual(
            samples[key("sbc_drops_total", adjacency="access", reason="unparseable")], 3
        )
        self.assertEqual(
            samples[key("sbc_drops_total", adjacency="(unclassified)", reason="no-adjacency")], 4
        )
        self.assertEqual(
            samples[
                key("sbc_connections_refused_total", adjacency="access", reason="max-per-source")
            ],
            1,
        )
        self.assertNotIn("sbc_drops_no_adjacency", families)

    def test_calls_rejected_is_labelled_by_status(self) -> None:
        _, samples = scrape(counters({"core": {"calls-rejected:486": 2, "calls-rejected:404": 1}}))
        self.assertEqual(
            samples[key("sbc_calls_rejected_total", adjacency="core", status="486")], 2
        )
        self.assertEqual(
            samples[key("sbc_calls_rejected_total", adjacency="core", status="404")], 1
        )

    def test_calls_refused_is_labelled_by_rule(self) -> None:
        families, samples = scrape(
            SbcCollector(
                lambda: {
                    "access": {
                        "calls-refused:sips-from-untrusted": 3,
                        "calls-refused:max-forwards": 1,
                    },
                    "core": {"calls-refused:no-secure-route": 2},
                },
                adjacencies=lambda: [adjacency("access"), adjacency("core")],
            )
        )
        family = families["sbc_calls_refused"]
        self.assertEqual(family.type, "counter")
        self.assertEqual(family.documentation, COUNTER_FAMILIES["calls-refused"].help)
        self.assertIn("sips-from-untrusted", family.documentation)
        refused = {
            (dict(labels)["adjacency"], dict(labels)["reason"]): value
            for (name, labels), value in samples.items()
            if name == "sbc_calls_refused_total"
        }
        self.assertEqual(
            refused,
            {
                ("access", "sips-from-untrusted"): 3,
                ("access", "max-forwards"): 1,
                ("core", "no-secure-route"): 2,
            },
        )

    def test_connections_closed_total_and_reasons_never_sum_twice(self) -> None:
        families, samples = scrape(
            counters({"access": {"connections-closed": 5, "connections-closed:idle-timeout": 2}})
        )
        self.assertEqual(samples[key("sbc_connections_closed_total", adjacency="access")], 5)
        self.assertEqual(
            samples[
                key(
                    "sbc_connections_closed_by_reason_total",
                    adjacency="access",
                    reason="idle-timeout",
                )
            ],
            2,
        )
        self.assertEqual(len(families["sbc_connections_closed"].samples), 1)

    def test_bare_name_of_a_family_with_reasons_is_unspecified(self) -> None:
        _, samples = scrape(counters({"core": {"calls-released": 1, "calls-released:detach": 3}}))
        self.assertEqual(
            samples[key("sbc_calls_released_total", adjacency="core", reason="unspecified")], 1
        )
        self.assertEqual(
            samples[key("sbc_calls_released_total", adjacency="core", reason="detach")], 3
        )
        # the label set does not depend on whether a reasoned event happened yet
        _, alone = scrape(counters({"core": {"calls-released": 1}}))
        self.assertIn(
            key("sbc_calls_released_total", adjacency="core", reason="unspecified"), alone
        )

    def test_unknown_names_get_a_generic_help_and_a_reason_label(self) -> None:
        families, samples = scrape(
            counters({"core": {"new-thing": 1, "other-thing:why": 2, "other-thing": 3}})
        )
        self.assertIn("'new-thing'", families["sbc_new_thing"].documentation)
        self.assertEqual(samples[key("sbc_new_thing_total", adjacency="core")], 1)
        self.assertEqual(samples[key("sbc_other_thing_total", adjacency="core", reason="why")], 2)
        self.assertEqual(
            samples[key("sbc_other_thing_total", adjacency="core", reason="unspecified")], 3
        )

    def test_known_counters_start_at_zero_for_configured_adjacencies(self) -> None:
        collector = SbcCollector(
            lambda: {"core": {"calls-started": 4}},
            adjacencies=lambda: [adjacency("core"), adjacency("access", attached=False)],
        )
        _, samples = scrape(collector)
        self.assertEqual(samples[key("sbc_calls_started_total", adjacency="core")], 4)
        self.assertEqual(samples[key("sbc_calls_started_total", adjacency="access")], 0)
        self.assertEqual(samples[key("sbc_handshake_failures_total", adjacency="access")], 0)
        self.assertEqual(samples[key("sbc_connections_closed_total", adjacency="access")], 0)
        # families with reasons are not invented; listen failures are never per adjacency
        self.assertFalse(any(name == "sbc_drops_total" for name, _ in samples))
        self.assertFalse(any(name == "sbc_listen_failures_total" for name, _ in samples))

    def test_nothing_configured_nothing_counted(self) -> None:
        families, _ = scrape(counters({}))
        self.assertFalse([name for name in families if name.endswith("_total")])
        self.assertNotIn("sbc_messages_received", families)

    def test_metric_name(self) -> None:
        self.assertEqual(metric_name("messages-received"), "sbc_messages_received")
        self.assertEqual(metric_name("odd.name/x"), "sbc_odd_name_x")

    def test_snapshot_is_read_at_every_scrape(self) -> None:
        values = {"core": {"messages-sent": 1}}
        collector = counters(values)
        _, first = scrape(collector)
        values["core"]["messages-sent"] = 9
        _, second = scrape(collector)
        self.assertEqual(first[key("sbc_messages_sent_total", adjacency="core")], 1)
        self.assertEqual(second[key("sbc_messages_sent_total", adjacency="core")], 9)


class GaugeTests(SynchronousTestCase):
    def test_active_calls_per_adjacency(self) -> None:
        collector = SbcCollector(
            dict,
            adjacencies=lambda: [adjacency("access"), adjacency("core"), adjacency("idle")],
            calls=lambda: [call("access", "core"), call("access", None), call("core", "core")],
        )
        families, samples = scrape(collector)
        self.assertEqual(families["sbc_active_calls"].type, "gauge")
        self.assertEqual(samples[key("sbc_active_calls", adjacency="access")], 2)
        self.assertEqual(samples[key("sbc_active_calls", adjacency="core")], 2)
        self.assertEqual(samples[key("sbc_active_calls", adjacency="idle")], 0)

    def test_blocked_sources_per_adjacency_and_bans_by_reason(self) -> None:
        collector = SbcCollector(
            lambda: {"access": {"bans:rate-limit": 2, "bans:user-agent": 1}},
            adjacencies=lambda: [adjacency("access"), adjacency("core")],
            blocked=lambda: [
                BlockedSourceInfo("203.0.113.9", "access", "rate-limit", 0.0, 10, 5),
                BlockedSourceInfo("203.0.113.10", "access", "user-agent", 0.0, 10, 1),
            ],
        )
        families, samples = scrape(collector)
        self.assertEqual(families["sbc_blocked_sources"].type, "gauge")
        self.assertEqual(samples[key("sbc_blocked_sources", adjacency="access")], 2)
        self.assertEqual(samples[key("sbc_blocked_sources", adjacency="core")], 0)
        self.assertEqual(samples[key("sbc_bans_total", adjacency="access", reason="rate-limit")], 2)
        self.assertIn("by reason", families["sbc_bans"].documentation)

    def test_attached_and_info_from_the_configuration(self) -> None:
        collector = SbcCollector(
            dict,
            adjacencies=lambda: [
                adjacency(
                    "core",
                    signaling_port=5061,
                    security_inbound="trusted-encrypted",
                    security_outbound="trusted-encrypted",
                    attached=True,
                ),
                adjacency("v6", "2001:db8::1", transport="udp", attached=False),
            ],
        )
        _, samples = scrape(collector)
        self.assertEqual(samples[key("sbc_adjacency_attached", adjacency="core")], 1)
        self.assertEqual(samples[key("sbc_adjacency_attached", adjacency="v6")], 0)
        info = {
            labels: value
            for (name, labels), value in samples.items()
            if name == "sbc_adjacency_info"
        }
        self.assertEqual(
            info,
            {
                frozenset(
                    {
                        "adjacency": "core",
                        "security_inbound": "trusted-encrypted",
                        "security_outbound": "trusted-encrypted",
                        "transport": "tls",
                        "address": "127.0.0.1:5061",
                    }.items()
                ): 1,
                frozenset(
                    {
                        "adjacency": "v6",
                        "security_inbound": "untrusted",
                        "security_outbound": "untrusted",
                        "transport": "udp",
                        "address": "[2001:db8::1]:5060",
                    }.items()
                ): 1,
            },
        )

    def test_connections_registrations_transactions_info(self) -> None:
        collector = SbcCollector(
            dict,
            adjacencies=lambda: [adjacency("core")],
            connections=lambda: [
                OpenConnection("core", False, "TLS"),
                OpenConnection("core", False, "TLS"),
                OpenConnection("core", True, "TCP"),
                OpenConnection(None, False, "TCP"),
            ],
            registrations=lambda: [
                RegistrationInfo("sip:a@lab.test", "sip:a@10.0.0.1", "core", 30)
            ],
            transactions=lambda: {"INVITE_SERVER PROCEEDING": 2, "NON_INVITE_CLIENT TRYING": 1},
            service_name="mysbc",
        )
        _, samples = scrape(collector)
        connections = "sbc_open_connections"
        self.assertEqual(
            samples[key(connections, adjacency="core", direction="inbound", transport="tls")], 2
        )
        self.assertEqual(
            samples[key(connections, adjacency="core", direction="outbound", transport="tcp")], 1
        )
        self.assertEqual(
            samples[
                key(connections, adjacency="(unclassified)", direction="inbound", transport="tcp")
            ],
            1,
        )
        self.assertEqual(samples[key("sbc_registrations", adjacency="core")], 1)
        self.assertEqual(
            samples[key("sbc_transactions", machine="INVITE_SERVER", state="PROCEEDING")], 2
        )
        self.assertEqual(
            samples[key("sbc_transactions", machine="NON_INVITE_CLIENT", state="TRYING")], 1
        )
        self.assertEqual(samples[key("sbc_info", service="mysbc", version=__version__)], 1)


class RegistryTests(SynchronousTestCase):
    def test_registries_of_their_own_coexist_and_leave_the_global_one_alone(self) -> None:
        first = service_registry(counters({"a": {"messages-sent": 1}}))
        second = service_registry(counters({"b": {"messages-sent": 2}}))
        for registry, adjacency_name in ((first, "a"), (second, "b")):
            text = generate_latest(registry).decode()
            names = {f.name for f in text_string_to_metric_families(text)}
            self.assertIn("python_info", names)
            self.assertIn("sbc_messages_sent", names)
            self.assertIn(f'sbc_messages_sent_total{{adjacency="{adjacency_name}"}}', text)
        self.assertNotIn(b"sbc_messages_sent", generate_latest(REGISTRY))


def http(site: Site, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send one HTTP/1.0 request through ``site`` (no socket); status, headers, body."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(request)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(path: bytes, *headers: bytes) -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.0\r\nHost: sbc\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.values = {"core": {"messages-received": 3}}
        self.registry = CollectorRegistry()
        self.registry.register(counters(self.values))
        self.site = metrics_site(self.registry, MemoryReactorClock())

    def test_metrics_in_the_text_format(self) -> None:
        status, headers, body = http(self.site, get(b"/metrics"))
        self.assertEqual(status, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"text/plain; version=0.0.4"))
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(families["sbc_messages_received"].samples[0].value, 3)

    def test_openmetrics_when_asked(self) -> None:
        status, headers, body = http(
            self.site, get(b"/metrics", b"Accept: application/openmetrics-text; version=1.0.0")
        )
        self.assertEqual(status, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_gzip_when_accepted(self) -> None:
        status, headers, body = http(self.site, get(b"/metrics", b"Accept-Encoding: gzip"))
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-encoding"], b"gzip")
        self.assertIn(b'sbc_messages_received_total{adjacency="core"} 3.0', gzip.decompress(body))

    def test_other_paths_are_404(self) -> None:
        for path in (b"/", b"/other", b"/metrics/x", b"/favicon.ico"):
            status, _, body = http(self.site, get(path))
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"sbc_", body)

    def test_post_is_not_allowed(self) -> None:
        status, _, _ = http(
            self.site, b"POST /metrics HTTP/1.0\r\nHost: sbc\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(status, 405)

    def test_dummy_request(self) -> None:
        request = DummyRequest([b""])
        body = MetricsResource(self.registry).render(request)
        self.assertIn(b'sbc_messages_received_total{adjacency="core"} 3.0', body)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )

    def test_a_failing_collector_is_a_500_and_logged(self) -> None:
        def broken() -> Mapping[str, Mapping[str, int]]:
            raise RuntimeError("boom")

        registry = CollectorRegistry()
        registry.register(SbcCollector(broken))
        request = DummyRequest([b""])
        body = MetricsResource(registry).render(request)
        self.assertEqual(request.responseCode, 500)
        self.assertNotIn(b"boom", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RefusingReactor(Reactor):
    """Refuses every TCP listener."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError("address in use"))


class ServiceTests(SynchronousTestCase):
    ENDPOINT = "tcp:9460:interface=127.0.0.1"

    def build(self, reactor: Any, endpoint: str | None = ENDPOINT) -> SbcService:
        text = RUNNING.replace("   security trusted-encrypted\n", "")
        return SbcService.from_config(
            parse_config(text), reactor=reactor, metrics_endpoint=endpoint
        )

    def test_no_endpoint_no_metrics_service(self) -> None:
        service = self.build(Reactor(), None)
        self.assertNotIn("metrics", [child.name for child in service])

    def test_serves_the_service_counters_and_config(self) -> None:
        reactor = Reactor()
        service = self.build(reactor)
        metrics = service.getServiceNamed("metrics")
        self.assertIsInstance(metrics, MetricsService)
        service.startService()
        self.addCleanup(service.stopService)
        site = reactor.tcp_factory(9460, "127.0.0.1")
        self.assertIsInstance(site, Site)
        service.runtime.counters.increment("core", "messages-received", 4)
        service.core.calls.counters.increment("core", "calls-rejected:503")
        status, _, body = http(site, get(b"/metrics"))
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertIn('sbc_messages_received_total{adjacency="core"} 4.0', text)
        self.assertIn('sbc_calls_rejected_total{adjacency="core",status="503"} 1.0', text)
        self.assertIn('sbc_adjacency_attached{adjacency="test"} 0.0', text)
        self.assertIn('sbc_info{service="mysbc",version=', text)
        self.assertIn("process_cpu_seconds_total", text)

    def test_stop_closes_the_port(self) -> None:
        reactor = Reactor()
        service = self.build(reactor)
        service.startService()
        service.stopService()
        ports = [p for p in reactor.tcpPorts if p.port == 9460]
        self.assertEqual(len(ports), 1)
        self.assertTrue(ports[0].stopped)

    def test_listen_failure_stops_the_sbc(self) -> None:
        reactor = RefusingReactor()
        service = self.build(reactor)
        service.getServiceNamed("metrics").startService()
        self.assertEqual(
            service.fatal_error,
            f"cannot open the metrics endpoint {self.ENDPOINT}: "
            "Couldn't listen on 127.0.0.1:9460: address in use.",
        )
        # the reactor is stopped once it runs
        reactor.running = True
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.assertTrue(reactor.hasStopped)

    def test_bad_description_is_a_preflight_problem_and_a_failure(self) -> None:
        reactor = Reactor()
        service = self.build(reactor, "bogus:9460")
        metrics = service.getServiceNamed("metrics")
        problems = metrics.preflight()
        self.assertEqual(len(problems), 1)
        self.assertTrue(
            problems[0].startswith("cannot open the metrics endpoint bogus:9460: "), problems
        )
        metrics.startService()
        self.assertTrue(
            (service.fatal_error or "").startswith("cannot open the metrics endpoint bogus:9460")
        )

    def test_preflight_of_port_zero_is_clean(self) -> None:
        service = self.build(Reactor(), "tcp:0:interface=127.0.0.1")
        self.assertEqual(service.getServiceNamed("metrics").preflight(), [])
