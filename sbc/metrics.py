"""Prometheus metrics over HTTP: ``twistd sbc --metrics ENDPOINT`` (docs/metrics.md).

:class:`MetricsService` serves ``GET /metrics`` on a strports endpoint
(``tcp:9460:interface=127.0.0.1``); every other path is 404. The numbers
are read at scrape time by :class:`SbcCollector` from the same sources the
CLI shows (the per-adjacency :class:`~sbc.counters.Counters`, the live
calls, the configuration), so counting costs nothing more on the hot path.

Counter names become metric families (:func:`metric_name`):

- ``NAME`` becomes ``sbc_NAME_total{adjacency}`` (dashes become underscores);
- ``FAMILY:REASON`` becomes ``sbc_FAMILY_total{adjacency, reason}``;
  ``calls-rejected:STATUS`` uses the label ``status`` instead (the SIP
  status code relayed to the caller);
- ``connections-closed`` counts every closed connection while
  ``connections-closed:REASON`` counts only those the SBC closed for a
  reason: the reasons go to ``sbc_connections_closed_by_reason_total`` so
  that ``sum()`` over a family never counts an event twice;
- a bare name of a family that has reasons (``calls-released``) gets
  ``reason="unspecified"``.

:data:`COUNTER_FAMILIES` holds the known names and their HELP text. Known
counters without a reason are exported as 0 for every configured adjacency
from the start, so that ``rate()`` sees the first event.

Each service owns its :class:`~prometheus_client.CollectorRegistry` (with
the process, platform and garbage-collector collectors), never the global
one: several SBCs embedded in one process do not clash.
"""

from __future__ import annotations

import gzip
import re
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from sbc import __version__
from sbc.cli.commands import BlockedSourceInfo, CallInfo, OpenConnection, RegistrationInfo
from sbc.config.model import AdjacencyConfig
from sbc.counters import UNCLASSIFIED
from sbc.endpoints import ManagedSbc, close_port

__all__ = [
    "COUNTER_FAMILIES",
    "UNSPECIFIED",
    "CounterFamily",
    "MetricsResource",
    "MetricsService",
    "MetricsSite",
    "OpenConnection",
    "SbcCollector",
    "metric_name",
    "metrics_site",
]

PREFIX = "sbc_"
UNSPECIFIED = "unspecified"
"""The reason label of a bare counter in a family that has reasons."""

GENERIC_HELP = "sbc counter {name!r} (see sbc/counters.py and docs/metrics.md)."
"""HELP text of a counter name not in :data:`COUNTER_FAMILIES`."""


@attrs.frozen
class CounterFamily:
    """What one counter family means and how it is labelled.

    ``label`` names the label carrying the part after ``:`` (None: the name
    never has one). ``total`` says the bare counter counts every event and
    the reasons only some of them; the reasons then go to a family of their
    own, ``..._by_reason``, described by ``reason_help``. ``zero``: the
    bare counter is exported as 0 for every configured adjacency before
    its first event.
    """

    help: str
    label: str | None = None
    total: bool = False
    reason_help: str = ""
    zero: bool = True


COUNTER_FAMILIES: Mapping[str, CounterFamily] = {
    # transport: messages
    "messages-received": CounterFamily(
        "SIP messages received (datagrams and framed stream messages), before parsing."
    ),
    "messages-sent": CounterFamily("SIP messages sent."),
    "keepalives": CounterFamily("CRLF keep-alives received (RFC 5626)."),
    "stack-errors": CounterFamily("Messages the SIP stack failed on unexpectedly (logged)."),
    "drops": CounterFamily("SIP messages dropped unanswered, by reason.", label="reason"),
    # transport: connections
    "connections-accepted": CounterFamily("Inbound TCP/TLS connections accepted."),
    "connections-opened": CounterFamily("Outbound TCP/TLS connections opened."),
    "connections-refused": CounterFamily(
        "Inbound TCP/TLS connections refused at accept time, by reason.", label="reason"
    ),
    "connections-closed": CounterFamily(
        "TCP/TLS connections closed (inbound and outbound, for any reason).",
        label="reason",
        total=True,
        reason_help="TCP/TLS connections the SBC closed itself, by reason.",
    ),
    "connections-reused": CounterFamily(
        "Messages sent on an outbound TCP/TLS connection already open to the same peer "
        "(same verified identity for TLS)."
    ),
    "connect-failures": CounterFamily("Outbound TCP/TLS connection attempts that failed."),
    "transmit-failures": CounterFamily("Messages that could not be sent."),
    "listen-failures": CounterFamily(
        "Listeners that could not be opened (counted under (unclassified)).", zero=False
    ),
    # DNS
    "dns-failures": CounterFamily(
        "Next-hop DNS lookups (RFC 3263) that found no address, on the outbound adjacency."
    ),
    # TLS
    "handshakes": CounterFamily("TLS handshakes completed with a verified peer certificate."),
    "handshake-failures": CounterFamily("TLS handshakes that failed."),
    "verification-failures": CounterFamily("TLS peer certificates refused."),
    "handshakes-without-certificate": CounterFamily(
        "TLS handshakes completed by a client without a certificate (client-certificate "
        "optional or none)."
    ),
    # registration relay
    "register-forwarded": CounterFamily(
        "Phone REGISTERs relayed to a registrar behind the SBC, on the phone's adjacency."
    ),
    "register-answered-locally": CounterFamily(
        "Phone registration refreshes the SBC answered itself (register-refresh-min), on "
        "the phone's adjacency."
    ),
    # authentication
    "auth-challenges": CounterFamily(
        "Digest challenges sent (401/407), on the adjacency of the challenged request."
    ),
    "auth-failures": CounterFamily(
        "Requests whose digest credentials failed (wrong password, unknown user, stale or "
        "replayed nonce, wrong user or realm, malformed)."
    ),
    # calls (B2BUA)
    "calls-started": CounterFamily("Calls (INVITE) admitted and routed, on the inbound adjacency."),
    "requests-started": CounterFamily(
        "Out-of-dialog non-INVITE requests admitted and routed, on the inbound adjacency."
    ),
    "requests-relayed": CounterFamily(
        "Out-of-dialog non-INVITE requests answered 2xx, on the outbound adjacency."
    ),
    "attempts": CounterFamily("Requests sent to a hunt target, on the outbound adjacency."),
    "hunt-refused": CounterFamily("Hunt targets refused by the security rules."),
    "hunt-skip": CounterFamily(
        "Hunt targets given up (the next one is tried, if any), by status code or failure.",
        label="reason",
    ),
    "calls-answered": CounterFamily("Calls answered (2xx), on the outbound adjacency."),
    "calls-rejected": CounterFamily(
        "Calls ended by a final failure response relayed to the caller, on the outbound "
        "adjacency, by SIP status code.",
        label="status",
    ),
    "calls-refused": CounterFamily(
        "Out-of-dialog requests refused before any attempt (admission or routing), on the "
        "inbound adjacency, by rule (sips-from-untrusted, no-secure-route, no-route, "
        "max-forwards, unauthenticated, routing).",
        label="reason",
    ),
    "calls-failed": CounterFamily("Calls with no target left to try, on the inbound adjacency."),
    "calls-cancelled": CounterFamily("Calls cancelled by the caller, on the inbound adjacency."),
    "calls-ended": CounterFamily("Calls ended by a BYE, on the adjacency of the BYE's sender."),
    "calls-released": CounterFamily(
        "Calls the SBC brought down itself, by reason (detach: the adjacency was detached; "
        "unspecified: no ACK, or a refused target refresh).",
        label="reason",
    ),
    "ack-timeouts": CounterFamily("Answered calls whose 2xx was never acknowledged."),
    "no-answer-timeouts": CounterFamily(
        "INVITEs sent to a callee with no final response within no-answer-timeout (Timer C), "
        "on the outbound adjacency."
    ),
    "cancel-unanswered": CounterFamily(
        "Cancelled INVITEs given up because their final response never came (64*T1), on the "
        "outbound adjacency."
    ),
    "redirects-followed": CounterFamily("3xx redirections followed."),
    "redirects-refused": CounterFamily("3xx redirections refused by the security rules."),
    "overload-shed": CounterFamily(
        "New INVITEs and REGISTERs answered 503 + Retry-After by overload control, on the "
        "inbound adjacency."
    ),
    "target-refresh-refused": CounterFamily(
        "Target refreshes (Contact changes) refused by the security rules."
    ),
    # flood and scanner defence (sbc/flood.py)
    "bans": CounterFamily(
        "Sources banned on the adjacency, by reason (rate-limit, user-agent, auth-failures).",
        label="reason",
    ),
}
"""The known counter families (the part of a counter name before ``:``)."""


def metric_name(family: str) -> str:
    """``sbc_`` + the family name with every character not allowed in a metric name as ``_``."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", family)


CounterSource = Callable[[], Mapping[str, Mapping[str, int]]]


def _nothing() -> tuple[()]:
    return ()


def _no_transactions() -> Mapping[str, int]:
    return {}


class SbcCollector:
    """A prometheus_client collector reading an SBC's state at scrape time.

    Built from plain callables so that it can be tested without a service
    (:meth:`for_service` wires one to an :class:`~sbc.service.SbcService`):

    - ``counters``: ``{adjacency: {counter name: value}}``;
    - ``adjacencies``: the configured adjacencies (attached or not);
    - ``calls``: the live calls; ``registrations``: the live bindings;
    - ``connections``: the open stream connections;
    - ``transactions``: live transactions by ``"MACHINE STATE"``
      (:meth:`~sbc.sip.stack.SipStack.transactions_by_state`);
    - ``blocked``: the sources banned by the flood defence (:mod:`sbc.flood`);
    - ``overload``: (smoothed event-loop lag in seconds, share of new
      INVITEs and REGISTERs shed) of :mod:`sbc.overload`.
    """

    def __init__(
        self,
        counters: CounterSource,
        *,
        adjacencies: Callable[[], Iterable[AdjacencyConfig]] = _nothing,
        calls: Callable[[], Iterable[CallInfo]] = _nothing,
        registrations: Callable[[], Iterable[RegistrationInfo]] = _nothing,
        connections: Callable[[], Iterable[OpenConnection]] = _nothing,
        transactions: Callable[[], Mapping[str, int]] = _no_transactions,
        blocked: Callable[[], Iterable[BlockedSourceInfo]] = _nothing,
        service_name: str | None = None,
        overload: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        self.counters = counters
        self.adjacencies = adjacencies
        self.calls = calls
        self.registrations = registrations
        self.connections = connections
        self.transactions = transactions
        self.blocked = blocked
        self.service_name = service_name
        self.overload = overload

    def collect(self) -> Iterator[Metric]:
        """Every sbc metric family, read now."""
        configured = list(self.adjacencies())
        names = [a.name for a in configured]
        yield from self._counters(names)
        yield from self._adjacencies(configured)
        yield self._per_adjacency(
            "sbc_active_calls",
            "Live calls using the adjacency (either leg; what least-calls routing counts).",
            names,
            (
                adjacency
                for call in self.calls()
                for adjacency in {call.inbound, call.outbound}
                if adjacency is not None
            ),
        )
        yield self._per_adjacency(
            "sbc_registrations",
            "Registered contacts (live bindings) reached through the adjacency.",
            names,
            (binding.adjacency for binding in self.registrations() if binding.held_here),
        )
        yield self._per_adjacency(
            "sbc_blocked_sources",
            "Sources banned by the flood and scanner defence, by the adjacency of the ban.",
            names,
            (b.adjacency for b in self.blocked()),
        )
        yield self._connections()
        yield self._transactions()
        if self.overload is not None:
            lag, share = self.overload()
            yield GaugeMetricFamily(
                "sbc_event_loop_lag_seconds",
                "Event-loop lag, smoothed: how late the SBC's 50 ms heartbeat fires "
                "(overload control, sbc.overload).",
                value=lag,
            )
            yield GaugeMetricFamily(
                "sbc_overload_shed_share",
                "Share (0 to 1) of new INVITEs and REGISTERs answered 503 by overload control now.",
                value=share,
            )
        if self.service_name is not None:
            info = GaugeMetricFamily(
                "sbc_info", "The sbc service (value 1).", labels=["service", "version"]
            )
            info.add_metric([self.service_name, __version__], 1)
            yield info

    # -- counters ---------------------------------------------------------------

    def _counters(self, configured: list[str]) -> Iterator[Metric]:
        grouped: defaultdict[str, dict[tuple[str, str | None], int]] = defaultdict(dict)
        for adjacency, values in self.counters().items():
            for name, value in values.items():
                family, colon, reason = name.partition(":")
                grouped[family][(adjacency, reason if colon else None)] = value
        for family, spec in COUNTER_FAMILIES.items():
            if spec.zero and (spec.label is None or spec.total):
                samples = grouped[family]
                for adjacency in configured:
                    samples.setdefault((adjacency, None), 0)
        for family in sorted(grouped):
            if grouped[family]:
                yield from self._family(family, grouped[family])

    @staticmethod
    def _family(family: str, samples: dict[tuple[str, str | None], int]) -> Iterator[Metric]:
        spec = COUNTER_FAMILIES.get(family)
        reasons = any(reason is not None for _, reason in samples)
        name = metric_name(family)
        help_text = spec.help if spec is not None else GENERIC_HELP.format(name=family)
        label = spec.label if spec is not None else None
        if label is None and reasons:  # a reason where none was expected
            label = "reason"
        ordered = sorted(samples.items(), key=lambda item: (item[0][0], item[0][1] or ""))
        if label is None:
            bare = CounterMetricFamily(name, help_text, labels=["adjacency"])
            for (adjacency, _), value in ordered:
                bare.add_metric([adjacency], value)
            yield bare
        elif spec is not None and spec.total:
            bare = CounterMetricFamily(name, help_text, labels=["adjacency"])
            by_reason = CounterMetricFamily(
                name + "_by_reason", spec.reason_help or help_text, labels=["adjacency", label]
            )
            for (adjacency, reason), value in ordered:
                if reason is None:
                    bare.add_metric([adjacency], value)
                else:
                    by_reason.add_metric([adjacency, reason], value)
            yield from (m for m in (bare, by_reason) if m.samples)
        else:
            labelled = CounterMetricFamily(name, help_text, labels=["adjacency", label])
            for (adjacency, reason), value in ordered:
                labelled.add_metric([adjacency, UNSPECIFIED if reason is None else reason], value)
            yield labelled

    # -- gauges -----------------------------------------------------------------

    @staticmethod
    def _adjacencies(configured: list[AdjacencyConfig]) -> Iterator[Metric]:
        attached = GaugeMetricFamily(
            "sbc_adjacency_attached",
            "1 when the adjacency is attached (listening and routable), 0 when detached.",
            labels=["adjacency"],
        )
        info = GaugeMetricFamily(
            "sbc_adjacency_info",
            "The running configuration of each adjacency (value 1).",
            labels=["adjacency", "security_inbound", "security_outbound", "transport", "address"],
        )
        for adjacency in sorted(configured, key=lambda a: a.name):
            attached.add_metric([adjacency.name], 1 if adjacency.attached else 0)
            address = str(adjacency.signaling_address or "")
            if ":" in address:
                address = f"[{address}]"
            info.add_metric(
                [
                    adjacency.name,
                    str(adjacency.security_inbound),
                    str(adjacency.security_outbound),
                    adjacency.transport_display.lower(),
                    f"{address}:{adjacency.port}",
                ],
                1,
            )
        yield attached
        yield info

    @staticmethod
    def _per_adjacency(
        name: str, help_text: str, configured: list[str], adjacencies: Iterable[str]
    ) -> Metric:
        counts = dict.fromkeys(configured, 0)
        for adjacency in adjacencies:
            counts[adjacency] = counts.get(adjacency, 0) + 1
        gauge = GaugeMetricFamily(name, help_text, labels=["adjacency"])
        for adjacency, count in sorted(counts.items()):
            gauge.add_metric([adjacency], count)
        return gauge

    def _connections(self) -> Metric:
        counts: dict[tuple[str, str, str], int] = {}
        for connection in self.connections():
            key = (
                connection.adjacency if connection.adjacency is not None else UNCLASSIFIED,
                "outbound" if connection.outbound else "inbound",
                connection.transport.lower(),
            )
            counts[key] = counts.get(key, 0) + 1
        gauge = GaugeMetricFamily(
            "sbc_open_connections",
            "Open TCP/TLS connections.",
            labels=["adjacency", "direction", "transport"],
        )
        for key, count in sorted(counts.items()):
            gauge.add_metric(list(key), count)
        return gauge

    def _transactions(self) -> Metric:
        gauge = GaugeMetricFamily(
            "sbc_transactions",
            "Live SIP transactions by machine and state (RFC 3261 section 17).",
            labels=["machine", "state"],
        )
        for name, count in sorted(self.transactions().items()):
            machine, _, state = name.partition(" ")
            gauge.add_metric([machine, state], count)
        return gauge


# -- HTTP ------------------------------------------------------------------------


class MetricsResource(Resource):
    """``/metrics``: the registry in the exposition format the scraper asks for.

    The Prometheus text format by default, OpenMetrics when the ``Accept``
    header asks for it, gzip-compressed when ``Accept-Encoding`` allows it.
    Any path below it is 404. Rendered in the reactor thread (not through
    prometheus_client's WSGI resource and its thread pool), so the collector
    reads the SBC's state where it is changed.
    """

    log = Logger()

    def __init__(
        self, registry: CollectorRegistry, refresh: Callable[[], Deferred[None]] | None = None
    ) -> None:
        super().__init__()
        self.registry = registry
        #: Called before each scrape when the numbers come from elsewhere (worker
        #: processes): the page is rendered once it fires.
        self.refresh = refresh

    def getChild(self, path: bytes, request: Any) -> IResource:
        return NoResource()

    def render_GET(self, request: Request) -> bytes | int:
        if self.refresh is None:
            return self._render(request)

        def write(_: object) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            request.write(self._render(request))
            request.finish()

        refreshing = self.refresh()
        refreshing.addErrback(lambda failure: self.log.failure("metrics refresh", failure))
        refreshing.addCallback(write)
        return NOT_DONE_YET

    def _render(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        try:
            output = encoder(self.registry)
        except Exception:
            self.log.failure("cannot collect the metrics")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"cannot collect the metrics (see the sbc log)\n"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        if gzip_accepted(request.getHeader("accept-encoding") or ""):
            output = gzip.compress(output)
            request.setHeader(b"content-encoding", b"gzip")
        return output


class _Root(Resource):
    """``/``: only the ``metrics`` child exists; everything else is 404."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return NoResource()

    def render(self, request: Any) -> bytes:
        result: bytes = NoResource().render(request)
        return result


class MetricsSite(Site):
    """A Site without an access log (a scrape every few seconds is noise)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(
    registry: CollectorRegistry,
    reactor: Any = None,
    refresh: Callable[[], Deferred[None]] | None = None,
) -> Site:
    """The HTTP site: ``/metrics`` serves ``registry``, any other path is 404.

    ``reactor`` times the connections out (None: the global reactor);
    ``refresh`` is called (and waited for) before each scrape.
    """
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry, refresh))
    return MetricsSite(root, reactor=reactor)


def service_registry(collector: SbcCollector) -> CollectorRegistry:
    """A registry of its own: ``collector`` plus process, platform and GC metrics.

    These standard collectors read the process when scraped, so several
    registries holding them in one process is harmless (they show the same
    process).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsService(Service):
    """Serves an SBC's Prometheus metrics on the strports ``endpoint``.

    When the endpoint cannot be opened the SBC gives up
    (:meth:`SbcService.fail`), as for the management CLI. ``sbc`` is the
    service (its ``reactor`` and ``fail``); ``collector`` reads the numbers
    (default: :meth:`SbcCollector.for_service`), after ``refresh`` when given
    (the supervisor of worker processes, :mod:`sbc.workers.supervisor`).
    """

    log = Logger()

    def __init__(
        self,
        sbc: ManagedSbc,
        endpoint: str,
        collector: SbcCollector,
        refresh: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        self.sbc = sbc
        self.endpoint = endpoint
        self.collector = collector
        self.registry = service_registry(self.collector)
        self.site = metrics_site(self.registry, sbc.reactor, refresh)
        self.port: IListeningPort | None = None
        self.setName("metrics")

    def preflight(self) -> list[str]:
        """The problem with the endpoint, checked before the reactor runs.

        The description must parse; a TCP port is probed with a socket bound
        and closed at once.
        """
        try:
            endpoint = serverFromString(self.sbc.reactor, self.endpoint)
        except Exception as error:
            return [f"cannot open the metrics endpoint {self.endpoint}: {error}"]
        port = getattr(endpoint, "_port", None)
        interface = getattr(endpoint, "_interface", None)
        if not isinstance(port, int) or not isinstance(interface, str) or port == 0:
            return []
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
        except OSError as error:
            why = error.strerror or str(error)
            return [f"cannot open the metrics endpoint {self.endpoint}: {why}"]
        finally:
            probe.close()
        return []

    def startService(self) -> None:
        super().startService()
        try:
            endpoint = serverFromString(self.sbc.reactor, self.endpoint)
        except Exception as error:
            self._refuse(str(error))
            return
        listening = endpoint.listen(self.site)
        listening.addCallbacks(self._listening, lambda f: self._refuse(f.getErrorMessage()))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        if not self.running:  # stopped while the endpoint was opening
            self._close()
            return
        self.log.info("Prometheus metrics on {endpoint} (path /metrics)", endpoint=self.endpoint)

    def _refuse(self, why: str) -> None:
        self.sbc.fail(f"cannot open the metrics endpoint {self.endpoint}: {why}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._close()

    def _close(self) -> Deferred[None]:
        port, self.port = self.port, None
        return close_port(port)
