"""The management CLI over SSH: a real ``twistd -n sbc --ssh`` and the real OpenSSH client.

Needs ``ssh`` and ``ssh-keygen`` (Debian: openssh-client).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.harness import (
    HOST,
    TWISTD,
    AdjacencySpec,
    get_reactor,
    make_pki,
    render_config,
    start_sbc,
    within,
)
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
        os.chmod(directory, 0o755)  # StrictModes, whatever the umask
        self.key = yield self.keygen(directory, "operator")
        self.other_key = yield self.keygen(directory, "stranger")
        keys_file = os.path.join(directory, "authorized_keys")
        with open(self.key + ".pub") as source, open(keys_file, "w") as f:
            f.write("# the operators\n" + source.read())
        os.chmod(keys_file, 0o644)
        self.keys_file = keys_file
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
        # The user recorded is the name typed and the key's comment.
        self.assertIn(f"SSH login: operator (operator@test) from {HOST}:", sbc.output())
        self.assertIn(f"with ssh-ed25519 key {fingerprint}\n", sbc.output())
        self.assertIn(f"SSH logout: operator (operator@test) from {HOST}:", sbc.output())
        # Conch's own steps are not logged, nor the command text.
        for chatter in ("kex alg", "NEW KEYS", "Executing command", "exitCode", "channel open"):
            self.assertNotIn(chatter, sbc.output())
        self.assertNotIn("show services sbc nosuch", sbc.output())
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
        # Both commits record the name typed and the key that signed, client ssh.
        result = yield self.ssh("show configuration commit list")
        self.assertEqual(result.exit_code, 0, result.text())
        rows = [line.split() for line in result.stdout.decode().splitlines()]
        users = [row[2:5] for row in rows if row and row[0].isdigit()]
        self.assertEqual(users, [["operator", "(operator@test)", "ssh"]] * 2, result.text())
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

    @defer.inlineCallbacks
    def test_unsafe_key_files_stop_the_daemon(self) -> Any:
        # StrictModes: a keys file others may write, a host key others may read.
        keygen = require_tool("ssh-keygen")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chmod(directory, 0o755)
        config_path = os.path.join(directory, "sbc.conf")
        with open(config_path, "w") as f:
            f.write(render_config("mysbc", (AdjacencySpec("access", port=free_port()),)))
        key = os.path.join(directory, "operator")
        result = yield within(
            run(get_reactor(), [keygen, "-q", "-t", "ed25519", "-N", "", "-f", key], timeout=30.0),
            40.0,
            "ssh-keygen",
        )
        self.assertEqual(result.exit_code, 0, result.text())
        keys_file = key + ".pub"
        os.chmod(keys_file, 0o666)
        host_key = os.path.join(directory, "ssh_host_key")
        shutil.copy(key, host_key)
        os.chmod(host_key, 0o640)
        cli_directory = tempfile.mkdtemp(prefix="sbc-interop-")
        self.addCleanup(shutil.rmtree, cli_directory, True)
        endpoint = f"tcp:{free_port()}:interface={HOST}"
        args = [
            TWISTD, "--pidfile=", "-n", "sbc", "--config", config_path,
            "--cli", "unix:" + os.path.join(cli_directory, "sbc.cli") + ":mode=600",
            "--ssh", endpoint, "--ssh-keys", keys_file,
        ]  # fmt: skip
        result = yield within(run(get_reactor(), args, timeout=30.0, cwd=directory), 40.0, "twistd")
        self.assertEqual(result.exit_code, 1, result.text())
        self.assertIn(
            f"cannot serve the CLI over SSH: {keys_file}: the SSH authorized keys file is "
            f"writable by group or others (mode 0666): chmod go-w {keys_file}",
            result.text(),
        )
        self.assertIn(
            f"cannot serve the CLI over SSH: {host_key}: the SSH host key is accessible by "
            f"group or others (mode 0640): chmod 600 {host_key}",
            result.text(),
        )
