"""The management CLI over SSH: a real ``twistd -n sbc --ssh`` and the real OpenSSH client.

Needs ``ssh`` and ``ssh-keygen`` (Debian: openssh-client).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.harness import HOST, AdjacencySpec, get_reactor, make_pki, start_sbc, within
from tests.interop.test_cli import SBC_CLI, cli_socket
from tests.support.peers import ProcessResult, free_port, require_tool, run


class SshInteropTests(TestCase):
    timeout = 120

    def ssh_options(self, key: str) -> list[str]:
        return [
            self.ssh_tool, "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "PasswordAuthentication=no", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20",
            "-i", key, "-p", str(self.port),
        ]  # fmt: skip

    def ssh(
        self,
        command: str | None = None,
        *,
        options: tuple[str, ...] = (),
        key: str | None = None,
        stdin: bytes | None = None,
    ) -> defer.Deferred[ProcessResult]:
        """Run ``ssh OPTIONS operator@127.0.0.1 [COMMAND]`` with ``stdin`` (or none)."""
        argv = [*self.ssh_options(key or self.key), *options, f"operator@{HOST}"]
        if command is not None:
            argv.append(command)
        return within(run(get_reactor(), argv, timeout=40.0, stdin=stdin), 50.0, "ssh")

    @defer.inlineCallbacks
    def keygen(self, directory: str, name: str) -> Any:
        path = os.path.join(directory, name)
        result = yield within(
            run(
                get_reactor(),
                [
                    self.keygen_tool,
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"{name}@test",
                    "-f",
                    path,
                ],
                timeout=30.0,
            ),
            40.0,
            "ssh-keygen",
        )
        self.assertEqual(result.exit_code, 0, result.text())
        return path

    @defer.inlineCallbacks
    def start(self) -> Any:
        """A daemon serving SSH on a free port, with one authorized key (self.key)."""
        self.ssh_tool = require_tool("ssh")
        self.keygen_tool = require_tool("ssh-keygen")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.key = yield self.keygen(directory, "operator")
        self.other_key = yield self.keygen(directory, "stranger")
        keys_file = os.path.join(directory, "authorized_keys")
        with open(self.key + ".pub") as source, open(keys_file, "w") as f:
            f.write("# the operators\n" + source.read())
        self.port = free_port()
        sbc = yield start_sbc(
            self,
            make_pki(self.mktemp()),
            (AdjacencySpec("access", "untrusted", "udp-tcp"),),
            service="mysbc",
            extra_args=["--ssh", f"tcp:{self.port}:interface={HOST}", "--ssh-keys", keys_file],
        )
        yield within(
            sbc.child.output_contains(b"management CLI over SSH listening"), 20.0, "SSH listening"
        )
        return sbc

    @defer.inlineCallbacks
    def test_exec_show_and_error_status(self) -> Any:
        sbc = yield self.start()
        # (a) one exec request: the adjacency block, exit status 0.
        result = yield self.ssh("show services sbc mysbc sbe adjacencies")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn(
            "Adjacency: access (SIP)\n"
            "  Status: Attached\n"
            f"  Signaling address: {HOST}:{sbc.port('access')}\n"
            "  Transport: UDP+TCP\n"
            "  Security: Untrusted\n",
            result.stdout.decode(),
        )
        # (d) a command that prints a % line: exit status 1.
        result = yield self.ssh("show services sbc nosuch sbe adjacencies")
        self.assertEqual(result.exit_code, 1, result.text())
        self.assertTrue(result.stdout.decode().startswith("%"), result.text())
        # The login was logged with the key's fingerprint, as ssh-keygen prints it.
        listed = yield within(
            run(get_reactor(), [self.keygen_tool, "-l", "-f", self.key + ".pub"], timeout=30.0),
            40.0,
            "ssh-keygen -l",
        )
        fingerprint = listed.stdout.decode().split()[1]
        self.assertTrue(fingerprint.startswith("SHA256:"), listed.text())
        self.assertIn(f"SSH login: operator from {HOST}:", sbc.output())
        self.assertIn(f"with ssh-ed25519 key {fingerprint} (operator@test)", sbc.output())
        # The host key was generated beside the config, mode 0600, and its fingerprint logged.
        host_key = os.path.join(os.path.dirname(sbc.config_path), "ssh_host_key")
        self.assertEqual(stat.S_IMODE(os.stat(host_key).st_mode), 0o600)
        listed = yield within(
            run(get_reactor(), [self.keygen_tool, "-l", "-f", host_key], timeout=30.0),
            40.0,
            "ssh-keygen -l",
        )
        self.assertEqual(listed.exit_code, 0, listed.text())
        host_fingerprint = listed.stdout.decode().split()[1]
        self.assertIn(f"(host key ssh-ed25519 {host_fingerprint})", sbc.output())

    @defer.inlineCallbacks
    def test_configure_over_a_session_then_show(self) -> Any:
        sbc = yield self.start()
        new_port = free_port()
        commands = [
            "configure",
            "sbc mysbc",
            "sbe",
            "adjacency sip test",
            f"signaling-address ipv4 {HOST}",
            f"signaling-port {new_port}",
            "security trusted-unencrypted",
            "attach",
            "commit",
            "end",
            "show services sbc mysbc sbe adjacencies test",
        ]
        # (b) a shell without a pty, fed on stdin: the socket protocol, prompts included.
        result = yield self.ssh(options=("-T",), stdin=("\n".join(commands) + "\n").encode())
        self.assertEqual(result.exit_code, 0, result.text())
        output = result.stdout.decode()
        self.assertIn("sbc(config-sbc-sbe-adj-sip)# ", output)
        self.assertIn("Adjacency: test (SIP)\n  Status: Attached\n", output)
        # Seen from the management socket too.
        result = yield within(
            run(
                get_reactor(),
                [SBC_CLI, "--socket", cli_socket(sbc.child), "-c",
                 "show services sbc mysbc sbe adjacencies test"],
                timeout=30.0,
            ),
            40.0,
            "sbc-cli",
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn(
            f"Adjacency: test (SIP)\n  Status: Attached\n  Signaling address: {HOST}:{new_port}\n",
            result.stdout.decode(),
        )
        # Several lines in one exec request run in one session.
        result = yield self.ssh(
            "configure\nsbc mysbc\nsbe\nadjacency sip test\nno attach\ncommit\nend\n"
            "show services sbc mysbc sbe adjacencies test"
        )
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn("Status: Detached", result.stdout.decode())
        # An interactive session on a pty (forced: stdin is not a terminal here).
        result = yield self.ssh(
            options=("-tt",), stdin=b"configure\nexit\nshow running-config\nexit\n"
        )
        self.assertEqual(result.exit_code, 0, result.text())
        output = result.stdout.decode()
        self.assertIn("sbc(config)# ", output)
        self.assertIn("\r\nsbc mysbc\r\n", output)
        self.assertIn(f"signaling-port {new_port}\r\n", output)

    @defer.inlineCallbacks
    def test_other_key_refused_and_daemon_keeps_serving(self) -> Any:
        sbc = yield self.start()
        # (c) a key not in authorized_keys: ssh gives up with 255.
        result = yield self.ssh("show running-config", key=self.other_key)
        self.assertEqual(result.exit_code, 255, result.text())
        self.assertIn("Permission denied (publickey)", result.stderr.decode())
        self.assertNotIn("sbc mysbc", result.stdout.decode())
        self.assertIn("SSH login refused: operator from", sbc.output())
        # A password is never asked for, even when the client prefers it.
        result = yield self.ssh(
            "show running-config",
            options=("-o", "PreferredAuthentications=password,keyboard-interactive"),
        )
        self.assertEqual(result.exit_code, 255, result.text())
        # The daemon still serves the authorized key.
        result = yield self.ssh("show running-config")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn("sbc mysbc", result.stdout.decode())
