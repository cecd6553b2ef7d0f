"""A backend that answers later (the supervisor of worker processes): Session.run, LineQueue,
the socket protocol, SSH exec and the metrics page wait for it, in order."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from sbc.cli.commands import CallInfo, LineQueue, Session
from sbc.cli.server import CliFactory
from sbc.config import SbcConfig
from sbc.metrics import MetricsResource, SbcCollector, service_registry
from tests.cli.test_commands import FakeBackend


class LaterBackend(FakeBackend):
    """FakeBackend whose commits, rollbacks and reloads answer when the test says so,
    and whose ``show services`` data is a snapshot taken by ``refresh``."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Deferred[list[str]], list[str]]] = []
        self.refreshes: list[Deferred[None]] = []
        self.live_calls: list[CallInfo] = []

    def _later(self, lines: list[str]) -> Deferred[list[str]]:
        d: Deferred[list[str]] = Deferred()
        self.pending.append((d, lines))
        return d

    def answer(self) -> None:
        """Answer the oldest pending change."""
        d, lines = self.pending.pop(0)
        d.callback(lines)

    def commit(self, candidate: SbcConfig, **kwargs: Any) -> Any:  # type: ignore[override]
        return self._later(super().commit(candidate, **kwargs))

    def rollback(self, **kwargs: Any) -> Any:  # type: ignore[override]
        return self._later(super().rollback(**kwargs))

    def reload_tls(self) -> Any:  # type: ignore[override]
        return self._later(super().reload_tls())

    def refresh(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.refreshes.append(d)

        def taken(_: object) -> None:
            self.call_list = list(self.live_calls)

        return d.addCallback(taken)


CALL = CallInfo(7, "INVITE", "confirmed", "core", "test", True, 3.0, worker="2")


class SessionRunTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = LaterBackend()
        self.session = Session(self.backend)

    def test_commit_answered_later(self) -> None:
        for line in ("configure", "sbc mysbc", "sbe", "adjacency sip test", "attach"):
            self.assertTrue(self.successResultOf(self.session.run(line))[1])
        running = self.session.run("commit")
        self.assertNoResult(running)
        self.assertTrue(self.session.dirty)
        self.backend.answer()
        self.assertEqual(self.successResultOf(running), ("", True))
        self.assertFalse(self.session.dirty)
        self.assertEqual(self.successResultOf(self.session.run("show configuration diff")), (
            "! no uncommitted changes", True
        ))  # fmt: skip

    def test_refusal_answered_later_is_the_percent_line(self) -> None:
        for line in ("configure", "sbc mysbc", "sbe", "adjacency sip core"):
            self.session.run(line)
        self.session.run("security untrusted")
        running = self.session.run("commit")
        self.backend.answer()
        text, ok = self.successResultOf(running)
        self.assertFalse(ok)
        self.assertTrue(text.startswith("% Security policy cannot be changed"), text)
        self.assertTrue(self.session.dirty)

    def test_show_services_refreshes_first(self) -> None:
        self.backend.live_calls = [CALL]
        running = self.session.run("show services sbc mysbc sbe calls")
        self.assertNoResult(running)
        self.backend.refreshes[0].callback(None)
        text, ok = self.successResultOf(running)
        self.assertTrue(ok)
        self.assertIn("confirmed", text)
        self.assertIn("Worker", text.splitlines()[0])

    def test_other_commands_do_not_refresh(self) -> None:
        self.successResultOf(self.session.run("show running-config"))
        self.successResultOf(self.session.run("configure"))
        self.assertEqual(self.backend.refreshes, [])

    def test_execute_refuses_a_later_answer(self) -> None:
        self.assertRaises(TypeError, self.session.execute, "crypto reload")


class LineQueueTests(SynchronousTestCase):
    def test_lines_wait_for_the_answer_before_them(self) -> None:
        backend = LaterBackend()
        answers: list[tuple[str, bool]] = []
        queue = LineQueue(Session(backend), lambda text, ok: answers.append((text, ok)))
        queue.put("crypto reload")
        queue.put("show running-config")
        queue.put("crypto reload")
        self.assertTrue(queue.busy)
        self.assertEqual(answers, [])
        idle = queue.idle()
        backend.answer()
        self.assertEqual(len(answers), 2)  # the reload, then the show (at once)
        self.assertTrue(answers[0][0].startswith("TLS identity reloaded"))
        self.assertTrue(answers[1][0].startswith("sbc mysbc"))
        self.assertNoResult(idle)
        backend.answer()
        self.assertEqual(len(answers), 3)
        self.successResultOf(idle)

    def test_a_failure_is_answered_and_reported(self) -> None:
        backend = LaterBackend()
        answers: list[tuple[str, bool]] = []
        failures: list[Failure] = []
        queue = LineQueue(
            Session(backend), lambda text, ok: answers.append((text, ok)), failures.append
        )
        queue.put("crypto reload")
        d, _ = backend.pending.pop()
        d.errback(RuntimeError("boom"))
        self.assertEqual(answers, [("% internal error (see the sbc log)", False)])
        self.assertEqual(len(failures), 1)

    def test_lines_after_exit_are_dropped(self) -> None:
        answers: list[tuple[str, bool]] = []
        session = Session(LaterBackend())
        queue = LineQueue(session, lambda text, ok: answers.append((text, ok)))
        queue.put("exit")
        queue.put("configure")
        self.assertTrue(session.closed)
        self.assertEqual(answers, [("", True)])
        self.successResultOf(queue.idle())


class ProtocolLaterTests(SynchronousTestCase):
    def test_pipelined_lines_answered_in_order(self) -> None:
        backend = LaterBackend()
        protocol = CliFactory(backend).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        transport.clear()
        protocol.dataReceived(b"crypto reload\nshow running-config\n")
        self.assertEqual(transport.value(), b"")
        backend.answer()
        output = transport.value().decode()
        self.assertTrue(output.startswith("TLS identity reloaded"), output)
        self.assertLess(output.index("TLS identity"), output.index("sbc mysbc"))
        self.assertTrue(output.endswith("sbc# "))


class MetricsRefreshTests(SynchronousTestCase):
    def test_page_rendered_after_the_refresh(self) -> None:
        refreshed: list[Deferred[None]] = []

        def refresh() -> Deferred[None]:
            d: Deferred[None] = Deferred()
            refreshed.append(d)
            return d

        values: dict[str, dict[str, int]] = {}
        collector = SbcCollector(lambda: values)
        resource = MetricsResource(service_registry(collector), refresh)
        request = DummyRequest([b""])
        resource.render(request)
        self.assertEqual(request.written, [])
        values["core"] = {"messages-received": 41}
        refreshed[0].callback(None)
        self.assertEqual(request.finished, 1)
        page = b"".join(request.written).decode()
        self.assertIn('sbc_messages_received_total{adjacency="core"} 41.0', page)


class SshExecLaterTests(SynchronousTestCase):
    def test_exec_waits_for_each_answer_in_order(self) -> None:
        from tests.cli.test_ssh import Connected, exec_channel

        backend = LaterBackend()
        channel = exec_channel("crypto reload\nshow running-config\ncrypto reload")
        connected = Connected(self, channels=[channel], backend=backend)
        self.assertEqual(channel.text(), "")
        self.assertIsNone(channel.status)
        backend.answer()
        connected.flush()
        self.assertIsNone(channel.status)  # the second reload is still pending
        backend.answer()
        connected.flush()
        connected.clock.advance(0)
        connected.flush()
        lines = channel.text().splitlines()
        self.assertTrue(lines[0].startswith("TLS identity reloaded"), lines)
        self.assertEqual(lines[1], "sbc mysbc")
        self.assertTrue(lines[-1].startswith("TLS identity reloaded"), lines)
        self.assertEqual(channel.status, 0)
