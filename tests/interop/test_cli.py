"""The management CLI against a real ``twistd -n sbc``, through the real ``sbc-cli``."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.harness import (
    HOST,
    AdjacencySpec,
    get_reactor,
    make_pki,
    sbc_command,
    send_options,
    start_sbc,
    wait_listening,
    within,
)
from tests.support.peers import ProcessResult, RunningProcess, free_port, run

SBC_CLI = os.path.join(os.path.dirname(sys.executable), "sbc-cli")


def cli_socket(child: RunningProcess) -> str:
    """The UNIX socket path the harness passed with --cli."""
    endpoint = child.args[child.args.index("--cli") + 1]
    return endpoint[len("unix:") :].split(":")[0]


class CliTestCase(TestCase):
    """Helpers for tests that drive a real daemon through ``sbc-cli`` (no tests here)."""

    timeout = 90

    def sbc_cli(self, path: str, *commands: str) -> defer.Deferred[ProcessResult]:
        args = [SBC_CLI, "--socket", path]
        for command in commands:
            args += ["-c", command]
        return within(run(get_reactor(), args, timeout=30.0), 40.0, "sbc-cli")

    def options(self, port: int) -> Any:
        """An OPTIONS to the SBC's own address on ``port`` (UDP); fires with the response."""
        return send_options(self, port)

    @defer.inlineCallbacks
    def restart(self, sbc: Any, pki: Any, started: bytes) -> Any:
        """Stop ``sbc`` (SIGTERM), start a new daemon on its config file; its CLI socket path."""
        ended = sbc.child.output_contains(b"Server Shut Down.")
        sbc.child.process.signalProcess("TERM")
        yield within(ended, 15.0, "the SBC to stop")
        cli_dir = tempfile.mkdtemp(prefix="sbc-interop-")
        self.addCleanup(shutil.rmtree, cli_dir, True)
        socket_path = os.path.join(cli_dir, "sbc.cli")
        args = sbc_command(sbc.config_path, socket_path, pki)
        again = RunningProcess(get_reactor(), args, cwd=os.path.dirname(sbc.config_path))
        self.addCleanup(lambda: again.stop())
        yield within(again.output_contains(started), 30.0, "restart")
        return socket_path


class CliInteropTests(CliTestCase):
    @defer.inlineCallbacks
    def test_configure_commit_show_refuse_abort_restart(self) -> Any:
        pki = make_pki(self.mktemp())
        sbc = yield start_sbc(
            self, pki, (AdjacencySpec("access", "untrusted", "udp-tcp"),), service="mysbc"
        )
        path = cli_socket(sbc.child)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        new_port = free_port()

        # The seed's steps 1-8 (with the settings a new adjacency needs).
        result = yield self.sbc_cli(
            path,
            "configure",
            "sbc mysbc",
            "sbe",
            "adjacency sip test",
            f"signaling-address ipv4 {HOST}",
            f"signaling-port {new_port}",
            "security trusted-unencrypted",
            "attach",
            "commit",
            "exit",
            "end",
            "show services sbc mysbc sbe adjacencies",
        )
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn(
            "Adjacency: test (SIP)\n"
            "  Status: Attached\n"
            f"  Signaling address: {HOST}:{new_port}\n"
            "  Transport: UDP+TCP\n"
            "  Security: Trusted-Unencrypted\n",
            result.stdout.decode(),
        )
        response = yield self.options(new_port)
        self.assertEqual(response.status, 200)

        # A security change of an attached adjacency is refused whole, and heard first
        # even when the candidate has another problem (an unknown routing policy).
        result = yield self.sbc_cli(
            path, "configure", "sbc mysbc", "sbe", "adjacency sip test", "security untrusted",
            "exit", "routing-policy no-such-policy", "commit",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 1)
        self.assertEqual(
            result.stdout.decode().strip(),
            "% Security policy cannot be changed while adjacency test is attached",
        )

        # abort drops the candidate.
        result = yield self.sbc_cli(
            path, "configure", "sbc mysbc", "sbe", "local-domain aborted.test", "abort",
            "show running-config",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertNotIn("aborted.test", result.stdout.decode())
        self.assertIn("security trusted-unencrypted", result.stdout.decode())

        # The committed config was saved; a restarted daemon comes back with it.
        with open(sbc.config_path) as f:
            saved = f.read()
        self.assertIn(f"signaling-port {new_port}", saved)
        self.assertTrue(os.path.exists(sbc.config_path + ".bak"))
        socket_path = yield self.restart(sbc, pki, b"started with 2 adjacencies")
        sbc.adjacencies["test"] = AdjacencySpec("test", "trusted-unencrypted", port=new_port)
        yield wait_listening(sbc)
        response = yield self.options(new_port)
        self.assertEqual(response.status, 200)
        result = yield self.sbc_cli(socket_path, "show services sbc mysbc sbe adjacencies test")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn("Status: Attached", result.stdout.decode())


class _Readline:
    """What the completer reads of readline: the line typed so far."""

    def __init__(self, line: str) -> None:
        self.line = line

    def get_line_buffer(self) -> str:
        return self.line

    def get_endidx(self) -> int:
        return len(self.line)


class CompletionInteropTests(CliTestCase):
    """sbc-cli's Tab key asks the daemon, which knows the session's mode."""

    @defer.inlineCallbacks
    def test_tab_completion_over_the_socket(self) -> Any:
        from twisted.internet import threads

        from sbc.cli.client import CliClient, _completer

        pki = make_pki(self.mktemp())
        sbc = yield start_sbc(
            self, pki, (AdjacencySpec("access", "untrusted", "udp-tcp"),), service="mysbc"
        )
        path = cli_socket(sbc.child)

        def blocking() -> tuple[list[str], list[str | None], list[str], str]:
            client = CliClient(path)
            try:
                names = client.complete("show services sbc ")
                complete = _completer(client, _Readline("show services sbc mysbc sbe adj"))
                words = [complete("adj", 0), complete("adj", 1)]
                for line in ("configure", "sbc mysbc", "sbe"):
                    client.run(line)
                in_config = client.complete("adjacency sip ")
                return names, words, in_config, client.prompt
            finally:
                client.close()

        names, words, in_config, prompt = yield threads.deferToThread(blocking)
        self.assertEqual(names, ["mysbc"])
        self.assertEqual(words, ["adjacencies ", None])
        self.assertEqual(in_config, ["access"])
        self.assertEqual(prompt, "sbc(config-sbc-sbe)#")
