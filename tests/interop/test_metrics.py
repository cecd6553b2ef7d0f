"""``twistd sbc --metrics``: a real daemon scraped over HTTP like Prometheus does."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from sbc import __version__
from tests.interop.harness import (
    HOST,
    TWISTD,
    AdjacencySpec,
    get_reactor,
    make_pki,
    render_config,
    send_options,
    start_sbc,
    within,
)
from tests.support.peers import free_port, run

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MetricsInteropTests(TestCase):
    timeout = 90

    def agent(self) -> Agent:
        pool = HTTPConnectionPool(get_reactor(), persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return Agent(get_reactor(), pool=pool)

    @defer.inlineCallbacks
    def get(self, port: int, path: str) -> Any:
        """(status, body) of GET http://127.0.0.1:port/path."""
        url = f"http://{HOST}:{port}{path}".encode()
        response = yield within(self.agent().request(b"GET", url), 15.0, f"GET {path}")
        body = yield within(readBody(response), 15.0, f"the body of GET {path}")
        return response.code, body

    @defer.inlineCallbacks
    def scrape(self, port: int) -> Any:
        """Every sample of /metrics by (name, labels)."""
        status, body = yield self.get(port, "/metrics")
        self.assertEqual(status, 200, body)
        samples: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def options(self, port: int) -> Any:
        """An OPTIONS to the SBC's own address on ``port`` (UDP); fires with the response."""
        return send_options(self, port)

    @defer.inlineCallbacks
    def test_scrape_counts_messages_and_shows_the_adjacency(self) -> Any:
        pki = make_pki(self.mktemp())
        metrics_port = free_port()
        sbc = yield start_sbc(
            self,
            pki,
            (AdjacencySpec("access", "untrusted", "udp-tcp"),),
            service="mysbc",
            extra_args=["--metrics", f"tcp:{metrics_port}:interface={HOST}"],
        )
        yield within(
            sbc.child.output_contains(b"Prometheus metrics on"), 15.0, "the metrics endpoint"
        )
        received = ("sbc_messages_received_total", frozenset({("adjacency", "access")}))
        before = yield self.scrape(metrics_port)
        self.assertIn(received, before)
        for _ in range(3):
            response = yield self.options(sbc.port("access"))
            self.assertEqual(response.status, 200)
        after = yield self.scrape(metrics_port)
        self.assertGreaterEqual(after[received] - before[received], 3)
        sent = ("sbc_messages_sent_total", frozenset({("adjacency", "access")}))
        self.assertGreaterEqual(after[sent], 3)
        info = {
            "adjacency": "access",
            "security_inbound": "untrusted",
            "security_outbound": "untrusted",
            "transport": "udp+tcp",
            "address": f"{HOST}:{sbc.port('access')}",
        }
        self.assertEqual(after[("sbc_adjacency_info", frozenset(info.items()))], 1)
        self.assertEqual(after[("sbc_adjacency_attached", frozenset({("adjacency", "access")}))], 1)
        self.assertEqual(after[("sbc_active_calls", frozenset({("adjacency", "access")}))], 0)
        self.assertIn(
            ("sbc_info", frozenset({("service", "mysbc"), ("version", __version__)})), after
        )
        self.assertTrue(any(name == "process_cpu_seconds_total" for name, _ in after))

        status, body = yield self.get(metrics_port, "/other")
        self.assertEqual(status, 404)
        self.assertNotIn(b"sbc_", body)

    @defer.inlineCallbacks
    def test_metrics_port_in_use_stops_the_daemon(self) -> Any:
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind((HOST, 0))
        busy.listen(1)
        metrics_port = busy.getsockname()[1]
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config_path = os.path.join(directory, "sbc.conf")
        with open(config_path, "w") as f:
            f.write(render_config("mysbc", (AdjacencySpec("access", port=free_port()),)))
        cli_directory = tempfile.mkdtemp(prefix="sbc-interop-")
        self.addCleanup(shutil.rmtree, cli_directory, True)
        args = [
            TWISTD, "--pidfile=", "-n", "sbc", "--config", config_path,
            "--cli", "unix:" + os.path.join(cli_directory, "sbc.cli") + ":mode=600",
            "--metrics", f"tcp:{metrics_port}:interface={HOST}",
        ]  # fmt: skip
        result = yield within(run(get_reactor(), args, timeout=30.0, cwd=directory), 40.0, "twistd")
        self.assertEqual(result.exit_code, 1, result.text())
        self.assertIn(
            f"cannot open the metrics endpoint tcp:{metrics_port}:interface={HOST}", result.text()
        )
