"""sbc.cli.ssh: authorized keys, host key, preflight, and whole SSH sessions in memory.

The sessions run twisted.conch's client against the server over
``twisted.test.iosim`` (no sockets): key exchange, public-key login,
``exec`` and shell requests, exit status.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.session import packRequest_pty_req, packRequest_window_change
from twisted.conch.ssh.transport import (
    DISCONNECT_BY_APPLICATION,
    MSG_UNIMPLEMENTED,
    SSHClientTransport,
)
from twisted.conch.ssh.userauth import SSHUserAuthClient
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from sbc.cli.commands import Session
from sbc.cli.ssh import (
    MAX_LINE_LENGTH,
    AuthorizedKeys,
    AuthorizedKeysChecker,
    CliSshFactory,
    KeyLogin,
    SshCliService,
    key_fingerprint,
    load_host_key,
    parse_authorized_keys,
)
from sbc.config import parse_config
from sbc.errors import ConfigError
from sbc.service import SbcService, SshSettings
from tests.cli.test_commands import RUNNING, FakeBackend
from tests.transport.fakes import Reactor

PEER = IPv4Address("TCP", "192.0.2.7", 40022)


def new_key() -> Key:
    return Key(Ed25519PrivateKey.generate())


def authorized_line(key: Key, comment: str = "") -> str:
    line = key.public().toString("openssh").decode()
    return f"{line} {comment}".rstrip()


def write(path: str, text: str) -> str:
    """Write ``text`` to ``path``, mode 0644 whatever the umask."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def directory_for(case: SynchronousTestCase) -> str:
    """A new directory, mode 0755 whatever the umask (the authorized keys' StrictModes)."""
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    os.chmod(directory, 0o755)
    return directory


def messages(events: list[Any]) -> list[str]:
    return [formatEvent(e) for e in events]


# -- a conch client, in memory --------------------------------------------------------


class ClientChannel(SSHChannel):
    """A session channel that sends ``requests`` once open and records what comes back."""

    name = b"session"

    def __init__(self, requests: list[tuple[bytes, bytes]]) -> None:
        super().__init__()
        self.requests = requests
        self.replies: list[tuple[bytes, bool]] = []
        self.output = b""
        self.status: int | None = None
        self.is_open = False
        self.is_closed = False

    def channelOpen(self, specificData: bytes) -> None:
        self.is_open = True
        for kind, payload in self.requests:
            d = self.conn.sendRequest(self, kind, payload, wantReply=True)
            d.addCallbacks(
                lambda _, k=kind: self.replies.append((k, True)),
                lambda _, k=kind: self.replies.append((k, False)),
            )

    def dataReceived(self, data: bytes) -> None:
        self.output += data

    def request_exit_status(self, data: bytes) -> int:
        self.status = struct.unpack(">L", data)[0]
        return 1

    def closed(self) -> None:
        self.is_closed = True

    def text(self) -> str:
        return self.output.decode()


class ClientConnection(SSHConnection):
    def __init__(self, channels: list[SSHChannel]) -> None:
        super().__init__()
        self.to_open = channels
        self.started = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.started = True
        for channel in self.to_open:
            channel.conn = self
            self.openChannel(channel)


class ClientAuth(SSHUserAuthClient):
    """Offers ``key`` once; starts with ``first`` (method, data) instead of ``none``."""

    def __init__(
        self,
        user: bytes,
        connection: SSHConnection,
        key: Key | None,
        first: tuple[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(user, connection)
        self.key = key
        self.first = first
        self.failures: list[bytes] = []
        self.succeeded = False

    def serviceStarted(self) -> None:
        if self.first == (b"", b""):  # a client that never authenticates
            return
        super().serviceStarted()  # asks with "none"
        if self.first is not None:
            self.askForAuth(*self.first)

    def getPublicKey(self) -> Key | None:
        key, self.key = self.key, None
        self.offered = key
        return key.public() if key is not None else None

    def getPrivateKey(self) -> Deferred[Key]:
        return succeed(self.offered)

    def getPassword(self, prompt: bytes | None = None) -> Deferred[bytes]:
        return succeed(b"secret")

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        self.failures.append(getNS(packet)[0])
        return super().ssh_USERAUTH_FAILURE(packet)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> Any:
        self.succeeded = True
        return super().ssh_USERAUTH_SUCCESS(packet)


class ClientTransport(SSHClientTransport):
    def __init__(self, auth: ClientAuth) -> None:
        self.auth = auth
        self.host_keys: list[bytes] = []

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        self.host_keys.append(hostKey)
        return succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(self.auth)


class Connected:
    """One SSH client connected to a fresh :class:`CliSshFactory` over an IOPump."""

    def __init__(
        self,
        case: SynchronousTestCase,
        *,
        channels: list[SSHChannel] | None = None,
        client_key: Key | None = None,
        authorized: list[str] | None = None,
        user: bytes = b"operator",
        first: tuple[bytes, bytes] | None = None,
        keys_mode: int = 0o644,
        backend: FakeBackend | None = None,
    ) -> None:
        directory = directory_for(case)
        self.backend = backend or FakeBackend()
        self.clock = MemoryReactorClock()
        self.key = client_key or new_key()
        lines = [authorized_line(self.key)] if authorized is None else authorized
        self.keys_path = write(os.path.join(directory, "authorized_keys"), "\n".join(lines) + "\n")
        os.chmod(self.keys_path, keys_mode)
        self.host_key = new_key()
        self.factory = CliSshFactory(
            self.backend, AuthorizedKeys(self.keys_path), self.host_key, self.clock
        )
        self.factory.doStart()
        case.addCleanup(self.factory.doStop)
        self.server = self.factory.buildProtocol(PEER)
        self.connection = ClientConnection(channels or [])
        self.auth = ClientAuth(user, self.connection, self.key, first)
        self.client = ClientTransport(self.auth)
        self.pump = iosim.connect(
            self.server,
            iosim.FakeTransport(self.server, True, peerAddress=PEER),
            self.client,
            iosim.FakeTransport(self.client, False),
            clock=self.clock,
        )

    def flush(self) -> None:
        self.pump.flush()


def exec_channel(command: str) -> ClientChannel:
    return ClientChannel([(b"exec", NS(command.encode()))])


def shell_channel(pty: bool = True) -> ClientChannel:
    requests = [(b"pty-req", packRequest_pty_req(b"xterm", (24, 80, 0, 0), b""))] if pty else []
    return ClientChannel([*requests, (b"shell", b"")])


# -- authorized_keys -------------------------------------------------------------------


class AuthorizedKeysTests(SynchronousTestCase):
    def test_parse_keys_comments_and_refused_lines(self) -> None:
        first, second = new_key(), new_key()
        text = "\n".join(
            [
                "# operators",
                "",
                authorized_line(first, "alice@laptop"),
                "   " + authorized_line(second),
                'from="10.0.0.0/8",no-pty ' + authorized_line(new_key(), "restricted"),
                "ssh-ed25519 not-base64!",
                "ssh-rsa " + authorized_line(new_key()).split()[1],  # type does not match
            ]
        )
        keys, problems = parse_authorized_keys(text, "/etc/sbc/keys")
        self.assertEqual([k.key for k in keys], [first.public(), second.public()])
        self.assertEqual([(k.comment, k.line) for k in keys], [("alice@laptop", 3), ("", 4)])
        self.assertEqual(
            [str(p) for p in problems],
            [
                "/etc/sbc/keys:5: key options are not supported; line ignored",
                "/etc/sbc/keys:6: not a public key (TYPE BASE64 [COMMENT]); line ignored",
                "/etc/sbc/keys:7: not a public key (TYPE BASE64 [COMMENT]); line ignored",
            ],
        )

    def test_check_missing_empty_and_good(self) -> None:
        path = os.path.join(directory_for(self), "authorized_keys")
        keys = AuthorizedKeys(path)
        (problem,) = keys.check()
        self.assertTrue(
            problem.startswith(f"{path}: cannot read the SSH authorized keys: "), problem
        )
        write(path, "# nobody yet\nssh-ed25519 garbage\n")
        with capturedLogs() as events:
            self.assertEqual(
                keys.check(), [f"{path}: no usable public key (TYPE BASE64 [COMMENT] lines)"]
            )
            keys.check()  # the same refused line is reported once
        self.assertEqual(
            [m for m in messages(events) if "authorized keys" in m],
            [f"SSH authorized keys: {path}:2: not a public key (TYPE BASE64 [COMMENT]); "
             "line ignored"],
        )  # fmt: skip
        write(path, authorized_line(new_key()) + "\n")
        self.assertEqual(keys.check(), [])

    def test_checker_accepts_listed_key_refuses_other_and_rereads_the_file(self) -> None:
        listed, other = new_key(), new_key()
        path = os.path.join(directory_for(self), "authorized_keys")
        write(path, authorized_line(listed, "alice@laptop") + "\n")
        checker = AuthorizedKeysChecker(AuthorizedKeys(path))

        def attempt(key: Key, user: bytes = b"operator", signature: bytes | None = None) -> Any:
            data = b"session data to sign"
            blob = key.public().blob()
            signed = key.sign(data) if signature is None else signature
            credentials = SSHPrivateKey(user, b"ssh-ed25519", blob, data, signed)
            return self.successResultOf(checker.requestAvatarId(credentials).addErrback(
                lambda f: f.trap(UnauthorizedLogin, ValidPublicKey) and f.getErrorMessage()
            ))  # fmt: skip

        login = attempt(listed)
        self.assertIsInstance(login, KeyLogin)
        self.assertEqual((login.name, login.key.comment), ("operator", "alice@laptop"))
        self.assertEqual(login.identity, "operator (alice@laptop)")
        self.assertEqual(attempt(other), "Key not authorized")
        self.assertEqual(attempt(listed, signature=other.sign(b"x")), "Key signature invalid")
        self.assertEqual(attempt(listed, signature=b"garbage"), "Error while verifying key")
        # A name that looks like a key label stays a name.
        self.assertEqual(
            attempt(listed, b"admin (root@x)").identity, "admin ?root@x? (alice@laptop)"
        )
        # Key changes take effect at the next attempt, without a restart.
        write(path, authorized_line(other) + "\n")
        fingerprint = key_fingerprint(other.public().blob())
        self.assertEqual(attempt(other, b"alice").identity, f"alice ({fingerprint[:23]})")
        self.assertEqual(attempt(listed), "Key not authorized")
        os.unlink(path)
        with capturedLogs() as events:
            self.assertEqual(attempt(other), "Key not authorized")
        self.assertTrue(any("SSH logins refused" in m for m in messages(events)))

    def test_key_id_is_the_comment_else_a_short_fingerprint(self) -> None:
        key = new_key()
        (commented, bare), _ = parse_authorized_keys(
            "\n".join([authorized_line(key, "ops key\x1b[2J"), authorized_line(key)]), "keys"
        )
        self.assertEqual(commented.key_id, "ops key?[2J")
        fingerprint = key_fingerprint(key.public().blob())
        self.assertEqual(bare.key_id, fingerprint[: len("SHA256:") + 16])
        self.assertTrue(fingerprint.startswith(bare.key_id))

    def test_strict_modes_writable_file_or_directory_refused(self) -> None:
        directory = directory_for(self)
        path = write(os.path.join(directory, "authorized_keys"), authorized_line(new_key()) + "\n")
        keys = AuthorizedKeys(path)
        self.assertEqual(keys.check(), [])
        os.chmod(path, 0o664)
        self.assertEqual(
            keys.check(),
            [f"{path}: the SSH authorized keys file is writable by group or others (mode 0664): "
             f"chmod go-w {path}"],
        )  # fmt: skip
        os.chmod(path, 0o646)
        self.assertIn("(mode 0646)", keys.check()[0])
        os.chmod(path, 0o640)  # readable by the group: fine
        self.assertEqual(keys.check(), [])
        os.chmod(directory, 0o777)
        self.assertEqual(
            keys.check(),
            [f"{directory}: the directory of the SSH authorized keys is writable by group or "
             f"others (mode 0777): chmod go-w {directory}"],
        )  # fmt: skip
        with capturedLogs() as events:
            self.assertEqual(keys.entries(), [])  # a login attempt is refused
        self.assertIn(f"SSH logins refused: {keys.check()[0]}", messages(events))

    def test_strict_modes_directory_of_the_link_target_checked(self) -> None:
        unsafe = directory_for(self)
        os.chmod(unsafe, 0o1777)  # as /tmp
        target = write(os.path.join(unsafe, "keys"), authorized_line(new_key()) + "\n")
        link = os.path.join(directory_for(self), "authorized_keys")
        os.symlink(target, link)
        self.assertEqual(
            AuthorizedKeys(link).check(),
            [f"{unsafe}: the directory of the SSH authorized keys is writable by group or "
             f"others (mode 1777): chmod go-w {unsafe}"],
        )  # fmt: skip

    def test_strict_modes_owner_must_be_root_or_the_daemon(self) -> None:
        directory = directory_for(self)
        path = write(os.path.join(directory, "authorized_keys"), authorized_line(new_key()) + "\n")
        other = 4242 if os.geteuid() != 4242 else 4243
        if os.geteuid() == 0:  # root can give the file away
            os.chown(path, other, -1)
            keys, owner, daemon = AuthorizedKeys(path), other, 0
        else:  # the file is the test's own, the daemon someone else
            keys, owner, daemon = AuthorizedKeys(path, uid=other), os.geteuid(), other
        self.assertEqual(
            keys.check(),
            [f"{path}: the SSH authorized keys file is owned by uid {owner}, not root or the "
             f"daemon's uid {daemon}"],
        )  # fmt: skip
        # Files of the daemon's own user are fine.
        self.assertEqual(AuthorizedKeys(path, uid=os.stat(path).st_uid).check(), [])
        if os.geteuid() == 0:
            os.chown(path, 0, -1)
            os.chown(directory, other, -1)
            self.assertEqual(
                keys.check(),
                [f"{directory}: the directory of the SSH authorized keys is owned by uid {other}, "
                 "not root or the daemon's uid 0"],
            )  # fmt: skip

    def test_fingerprint_is_openssh_sha256(self) -> None:
        # ssh-keygen -l prints SHA256: and the unpadded base64 of the blob's digest.
        fingerprint = key_fingerprint(b"blob")
        self.assertTrue(fingerprint.startswith("SHA256:"))
        self.assertEqual(len(fingerprint), len("SHA256:") + 43)
        self.assertNotIn("=", fingerprint)


# -- the host key ------------------------------------------------------------------------


class HostKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = directory_for(self)
        self.path = os.path.join(self.directory, "ssh_host_key")

    def test_generated_0600_openssh_format_then_reused(self) -> None:
        key, created = load_host_key(self.path)
        self.assertTrue(created)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertFalse(key.isPublic())
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path, "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"))
        again, created = load_host_key(self.path)
        self.assertFalse(created)
        self.assertEqual(again, key)
        self.assertEqual(sorted(os.listdir(self.directory)), ["ssh_host_key"])

    def test_bad_files_are_config_errors(self) -> None:
        write(self.path, "not a key\n")
        with self.assertRaises(ConfigError) as caught:
            load_host_key(self.path)
        self.assertEqual(str(caught.exception), f"{self.path}: not an SSH private key")
        write(self.path, authorized_line(new_key()) + "\n")
        with self.assertRaises(ConfigError) as caught:
            load_host_key(self.path)
        self.assertIn("a public key", str(caught.exception))
        with open(self.path, "wb") as f:
            f.write(new_key().toString("openssh", passphrase=b"secret"))
        with self.assertRaises(ConfigError) as caught:
            load_host_key(self.path)
        self.assertIn("encrypted", str(caught.exception))

    def test_cannot_create(self) -> None:
        path = os.path.join(self.directory, "missing", "ssh_host_key")
        with self.assertRaises(ConfigError) as caught:
            load_host_key(path)
        self.assertTrue(
            str(caught.exception).startswith(f"{path}: cannot create the SSH host key: "),
            str(caught.exception),
        )

    def test_key_accessible_by_group_or_others_is_refused(self) -> None:
        load_host_key(self.path)
        for mode in (0o644, 0o640, 0o604, 0o610):
            os.chmod(self.path, mode)
            with self.assertRaises(ConfigError) as caught:
                load_host_key(self.path)
            self.assertEqual(
                str(caught.exception),
                f"{self.path}: the SSH host key is accessible by group or others "
                f"(mode {mode:04o}): chmod 600 {self.path}",
            )
        os.chmod(self.path, 0o400)
        self.assertFalse(load_host_key(self.path)[1])

    def test_dangling_symlink_is_an_error_not_a_loop(self) -> None:
        os.symlink(os.path.join(self.directory, "nowhere"), self.path)
        with self.assertRaises(ConfigError) as caught:
            load_host_key(self.path)
        self.assertEqual(
            str(caught.exception),
            f"{self.path}: the SSH host key exists but cannot be read "
            "(a symbolic link to a missing file?)",
        )
        self.assertEqual(sorted(os.listdir(self.directory)), ["ssh_host_key"])  # no temporary
        self.assertFalse(os.path.exists(os.path.join(self.directory, "nowhere")))

    def test_link_in_place_meanwhile_is_read_once(self) -> None:
        # A dangling link appearing between the first look and the link into place.
        os.symlink(os.path.join(self.directory, "nowhere"), self.path)
        real_lstat = os.lstat
        calls: list[str] = []

        def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            calls.append(str(path))
            if str(path) == self.path:
                raise FileNotFoundError(2, "No such file or directory", path)
            return real_lstat(path, *args, **kwargs)

        self.patch(os, "lstat", lstat)
        with self.assertRaises(ConfigError) as caught:
            load_host_key(self.path)
        self.assertIn("exists but cannot be read", str(caught.exception))
        self.assertEqual(calls, [self.path, self.path])  # looked at twice, then gave up
        self.assertEqual(sorted(os.listdir(self.directory)), ["ssh_host_key"])

    def test_key_written_meanwhile_is_used(self) -> None:
        other, _ = load_host_key(os.path.join(self.directory, "other"))
        real_link = os.link

        def link(source: str, destination: str) -> None:
            real_link(os.path.join(self.directory, "other"), destination)  # someone else's
            real_link(source, destination)

        self.patch(os, "link", link)
        key, created = load_host_key(self.path)
        self.assertFalse(created)
        self.assertEqual(key, other)


# -- the service -------------------------------------------------------------------------


class RefusingReactor(Reactor):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError("address in use"))


class ServiceTests(SynchronousTestCase):
    ENDPOINT = "tcp:2222:interface=127.0.0.1"

    def setUp(self) -> None:
        self.directory = directory_for(self)
        self.keys = write(
            os.path.join(self.directory, "authorized_keys"), authorized_line(new_key()) + "\n"
        )
        self.host_key = os.path.join(self.directory, "ssh_host_key")

    def build(self, reactor: Any, endpoint: str = ENDPOINT) -> tuple[SbcService, SshCliService]:
        service = SbcService.from_config(
            parse_config(RUNNING.replace("   security trusted-encrypted\n", "")),
            reactor=reactor,
            ssh=SshSettings(endpoint, self.keys, self.host_key),
        )
        ssh = service.getServiceNamed("ssh")
        assert isinstance(ssh, SshCliService)
        return service, ssh

    def test_preflight_clean_creates_the_host_key(self) -> None:
        _, ssh = self.build(Reactor())
        with capturedLogs() as events:
            self.assertEqual(ssh.preflight(), [])
        self.assertEqual(stat.S_IMODE(os.stat(self.host_key).st_mode), 0o600)
        key, _ = load_host_key(self.host_key)
        fingerprint = key_fingerprint(key.public().blob())
        self.assertIn(
            f"generated the SSH host key {self.host_key}: ssh-ed25519 {fingerprint}",
            messages(events),
        )

    def test_preflight_problems(self) -> None:
        os.unlink(self.keys)
        os.makedirs(self.host_key)  # a directory: cannot be read as a key
        _, ssh = self.build(Reactor(), "bogus:2222")
        problems = ssh.preflight()
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(
            problems[0].startswith(
                f"cannot serve the CLI over SSH: {self.keys}: cannot read the SSH authorized keys"
            ),
            problems,
        )
        self.assertTrue(
            problems[1].startswith(f"cannot serve the CLI over SSH: {self.host_key}: "), problems
        )
        self.assertTrue(
            problems[2].startswith("cannot serve the CLI over SSH: bad endpoint 'bogus:2222'"),
            problems,
        )

    def test_preflight_refuses_an_exposed_host_key_and_unsafe_authorized_keys(self) -> None:
        load_host_key(self.host_key)
        os.chmod(self.host_key, 0o644)
        os.chmod(self.keys, 0o666)
        _, ssh = self.build(Reactor())
        self.assertEqual(
            ssh.preflight(),
            [
                f"cannot serve the CLI over SSH: {self.keys}: the SSH authorized keys file is "
                f"writable by group or others (mode 0666): chmod go-w {self.keys}",
                f"cannot serve the CLI over SSH: {self.host_key}: the SSH host key is accessible "
                f"by group or others (mode 0644): chmod 600 {self.host_key}",
            ],
        )

    def test_start_listens_logs_the_fingerprint_and_stop_closes(self) -> None:
        reactor = Reactor()
        service, ssh = self.build(reactor)
        with capturedLogs() as events:
            ssh.startService()
        (port,) = [p for p in reactor.tcpPorts if p.port == 2222]
        self.assertEqual(port.interface, "127.0.0.1")
        self.assertIsInstance(port.factory, CliSshFactory)
        key, created = load_host_key(self.host_key)
        self.assertFalse(created)
        self.assertIn(
            "management CLI over SSH listening on tcp:2222:interface=127.0.0.1 "
            f"(host key ssh-ed25519 {key_fingerprint(key.public().blob())})",
            messages(events),
        )
        self.assertIsNone(service.fatal_error)
        ssh.stopService()
        self.assertTrue(port.stopped)

    def test_listen_failure_stops_the_sbc(self) -> None:
        reactor = RefusingReactor()
        service, ssh = self.build(reactor)
        ssh.startService()
        self.assertEqual(
            service.fatal_error,
            f"cannot serve the CLI over SSH on {self.ENDPOINT}: "
            "Couldn't listen on 127.0.0.1:2222: address in use.",
        )
        reactor.running = True  # the reactor is stopped once it runs
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.assertTrue(reactor.hasStopped)

    def test_no_key_at_start_stops_the_sbc(self) -> None:
        write(self.keys, "# empty\n")
        reactor = Reactor()
        service, ssh = self.build(reactor)
        ssh.startService()
        self.assertEqual(
            service.fatal_error,
            f"cannot serve the CLI over SSH on {self.ENDPOINT}: "
            f"{self.keys}: no usable public key (TYPE BASE64 [COMMENT] lines)",
        )
        self.assertEqual(reactor.tcpPorts, [])


# -- whole sessions --------------------------------------------------------------------------


class InterfaceTests(SynchronousTestCase):
    def test_providers(self) -> None:
        from twisted.conch.checkers import IAuthorizedKeysDB
        from twisted.conch.interfaces import IConchUser, ISession
        from twisted.cred.checkers import ICredentialsChecker
        from twisted.cred.portal import IRealm
        from zope.interface.verify import verifyObject

        from sbc.cli.ssh import CliAvatar, CliRealm

        realm = CliRealm(FakeBackend(), MemoryReactorClock())
        self.assertTrue(verifyObject(IRealm, realm))
        self.assertTrue(verifyObject(IAuthorizedKeysDB, AuthorizedKeys("/nonexistent")))
        keys = AuthorizedKeys("/nonexistent")
        self.assertTrue(verifyObject(ICredentialsChecker, AuthorizedKeysChecker(keys)))
        (key,), _ = parse_authorized_keys(authorized_line(new_key(), "alice@laptop"), "keys")
        login = KeyLogin("operator", key)
        interface, avatar, _ = realm.requestAvatar(login, None, IConchUser)
        self.assertIs(interface, IConchUser)
        assert isinstance(avatar, CliAvatar)
        self.assertEqual(avatar.user, "operator (alice@laptop)")
        self.assertTrue(IConchUser.providedBy(avatar))  # conn is only set once connected
        first, second = ISession(avatar), ISession(avatar)
        self.assertTrue(verifyObject(ISession, first))
        self.assertIsNot(first, second)  # one session object per channel
        self.assertEqual(avatar.new_session().prompt, "sbc#")
        with self.assertRaises(NotImplementedError):
            realm.requestAvatar(login, None, IRealm)
        with self.assertRaises(NotImplementedError):  # a bare user name is no login
            realm.requestAvatar(b"operator", None, IConchUser)


class LoginTests(SynchronousTestCase):
    def test_listed_key_logs_in_and_is_logged(self) -> None:
        with capturedLogs() as events:
            c = Connected(self)
        self.assertTrue(c.auth.succeeded)
        self.assertTrue(c.connection.started)
        self.assertEqual(c.client.host_keys, [c.host_key.public().blob()])
        # "none" first (as OpenSSH does): only publickey is offered.
        self.assertEqual(c.auth.failures, [b"publickey"])
        fingerprint = key_fingerprint(c.key.public().blob())
        self.assertIn(
            f"SSH login: operator ({fingerprint[:23]}) from 192.0.2.7:40022 "
            f"with ssh-ed25519 key {fingerprint}",
            messages(events),
        )

    def test_comment_of_the_key_is_logged(self) -> None:
        key = new_key()
        with capturedLogs() as events:
            Connected(self, client_key=key, authorized=[authorized_line(key, "alice@laptop")])
        fingerprint = key_fingerprint(key.public().blob())
        self.assertIn(
            "SSH login: operator (alice@laptop) from 192.0.2.7:40022 with ssh-ed25519 key "
            f"{fingerprint}",
            messages(events),
        )

    def test_user_name_is_made_safe_to_log(self) -> None:
        with capturedLogs() as events:
            Connected(self, user=b"eve\nSSH login: root")
        self.assertTrue(
            any(m.startswith("SSH login: eve?SSH login: root (SHA256:") for m in messages(events)),
            messages(events),
        )

    def test_unsafe_authorized_keys_refuse_the_login(self) -> None:
        channel = exec_channel("show running-config")
        with capturedLogs() as events:
            c = Connected(self, channels=[channel], keys_mode=0o620)
        self.assertFalse(c.auth.succeeded)
        self.assertFalse(c.connection.started)
        self.assertEqual(channel.output, b"")
        self.assertIn(
            f"SSH logins refused: {c.keys_path}: the SSH authorized keys file is writable by "
            f"group or others (mode 0620): chmod go-w {c.keys_path}",
            messages(events),
        )

    def test_unlisted_key_refused_and_logged(self) -> None:
        with capturedLogs() as events:
            c = Connected(self, authorized=[authorized_line(new_key())], user=b"mallory")
        self.assertFalse(c.auth.succeeded)
        self.assertFalse(c.connection.started)
        self.assertEqual(c.auth.failures, [b"publickey", b"publickey"])
        fingerprint = key_fingerprint(c.key.public().blob())
        self.assertIn(
            f"SSH login refused: mallory from 192.0.2.7:40022 with ssh-ed25519 key "
            f"{fingerprint}: Key not authorized",
            messages(events),
        )
        self.assertTrue(c.pump.clientIO.disconnecting)  # the client gave up

    def test_password_is_never_accepted(self) -> None:
        with capturedLogs() as events:
            c = Connected(self, first=(b"password", b"\x00" + NS(b"secret")))
        # Every failure (to "none", then to the password) offers publickey alone.
        self.assertEqual(c.auth.failures[:2], [b"publickey", b"publickey"])
        self.assertIn(
            "SSH login refused: operator from 192.0.2.7:40022 tried password authentication "
            "(public keys only)",
            messages(events),
        )
        c2 = Connected(self, first=(b"keyboard-interactive", NS(b"") + NS(b"")))
        self.assertEqual(c2.auth.failures[:2], [b"publickey", b"publickey"])

    def test_client_goodbye_is_not_an_error(self) -> None:
        c = Connected(self)
        with capturedLogs() as events:
            c.client.sendDisconnect(DISCONNECT_BY_APPLICATION, b"disconnected by user")
            c.flush()
        self.assertTrue(c.pump.serverIO.disconnected)
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.error], [])
        fingerprint = key_fingerprint(c.key.public().blob())
        self.assertIn(
            f"SSH logout: operator ({fingerprint[:23]}) from 192.0.2.7:40022", messages(events)
        )

    def test_login_timeout_on_the_injected_clock(self) -> None:
        c = Connected(self, first=(b"", b""))
        c.clock.advance(119)
        c.flush()
        self.assertFalse(c.pump.serverIO.disconnecting)
        c.clock.advance(1)
        self.assertTrue(c.pump.serverIO.disconnecting)

    def test_login_limits_come_from_the_running_config(self) -> None:
        """ssh-login-timeout and ssh-max-auth-tries are read when a connection starts."""
        limits = "  limits\n   ssh-login-timeout 30\n   ssh-max-auth-tries 2\n"
        c = Connected(self, first=(b"", b""), backend=FakeBackend(RUNNING + limits))
        userauth = c.server.service
        self.assertEqual((userauth.loginTimeout, userauth.attemptsBeforeDisconnect), (30, 2))
        c.clock.advance(29)
        c.flush()
        self.assertFalse(c.pump.serverIO.disconnecting)
        c.clock.advance(1)
        self.assertTrue(c.pump.serverIO.disconnecting)


class QuietLogTests(SynchronousTestCase):
    def server_lines(self, events: list[Any]) -> list[str]:
        return [formatEvent(e) for e in events if not e["log_namespace"].startswith("tests.")]

    def test_a_session_logs_its_login_and_logout_only(self) -> None:
        channel = exec_channel("configure\nsbc mysbc\nsecret-looking command")
        with capturedLogs() as events:
            c = Connected(self, channels=[channel], user=b"alice")
            c.client.sendDisconnect(DISCONNECT_BY_APPLICATION, b"disconnected by user")
            c.flush()
        self.assertEqual(channel.status, 1)  # the command ran
        fingerprint = key_fingerprint(c.key.public().blob())
        self.assertEqual(
            self.server_lines(events),
            [
                f"SSH login: alice ({fingerprint[:23]}) from 192.0.2.7:40022 "
                f"with ssh-ed25519 key {fingerprint}",
                f"SSH logout: alice ({fingerprint[:23]}) from 192.0.2.7:40022",
            ],
        )

    def test_conch_warnings_still_reach_the_log(self) -> None:
        channel = ClientChannel([(b"subsystem", NS(b"sftp"))])
        c = Connected(self, channels=[channel])
        with capturedLogs() as events:
            c.client.sendPacket(MSG_UNIMPLEMENTED, struct.pack(">L", 7))
            c.flush()
        self.assertEqual(self.server_lines(events), ["other side unimplemented packet #7"])
        self.assertEqual(channel.replies, [(b"subsystem", False)])


class ExecTests(SynchronousTestCase):
    def test_show_running_config(self) -> None:
        channel = exec_channel("show running-config")
        Connected(self, channels=[channel])
        expected, ok = Session(FakeBackend()).execute("show running-config")
        self.assertTrue(ok)
        self.assertEqual(channel.replies, [(b"exec", True)])
        self.assertEqual(channel.text(), expected + "\n")
        self.assertEqual(channel.status, 0)
        self.assertTrue(channel.is_closed)

    def test_error_gives_status_1(self) -> None:
        channel = exec_channel("show nonsense")
        Connected(self, channels=[channel])
        self.assertTrue(channel.text().startswith("%"), channel.text())
        self.assertEqual(channel.status, 1)
        self.assertTrue(channel.is_closed)

    def test_lines_run_in_one_session_and_commit_records_the_user(self) -> None:
        channel = exec_channel(
            "configure\nsbc mysbc\nsbe\nadjacency sip test\nattach\ncommit\nend\n"
            "show services sbc mysbc sbe adjacencies test\n"
        )
        key = new_key()
        # Any name may be typed: the record names the key that signed too.
        c = Connected(
            self,
            channels=[channel],
            user=b"admin",
            client_key=key,
            authorized=[authorized_line(new_key(), "admin@ops"), authorized_line(key, "bob@pc")],
        )
        self.assertEqual(channel.status, 0, channel.text())
        self.assertIn("Adjacency: test (SIP)\n  Status: Attached\n", channel.text())
        self.assertEqual(len(c.backend.commits), 1)
        record = c.backend.history.records[-1]
        self.assertEqual((record.user, record.client), ("admin (bob@pc)", "ssh"))

    def test_commit_by_a_key_without_comment_records_its_fingerprint(self) -> None:
        channel = exec_channel("configure\nsbc mysbc\nsbe\nadjacency sip test\nattach\ncommit")
        c = Connected(self, channels=[channel], user=b"alice")
        self.assertEqual(channel.status, 0, channel.text())
        fingerprint = key_fingerprint(c.key.public().blob())
        self.assertEqual(c.backend.history.records[-1].user, f"alice ({fingerprint[:23]})")

    def test_exit_stops_and_overlong_line_refused(self) -> None:
        channel = exec_channel("exit\nshow nonsense")
        Connected(self, channels=[channel])
        self.assertEqual((channel.text(), channel.status), ("", 0))
        channel = exec_channel("x" * (MAX_LINE_LENGTH + 1))
        Connected(self, channels=[channel])
        self.assertEqual(channel.text(), "% command line too long\n")
        self.assertEqual(channel.status, 1)

    def test_two_channels_on_one_connection(self) -> None:
        first, second = exec_channel("configure"), exec_channel("show running-config")
        Connected(self, channels=[first, second])
        self.assertEqual((first.status, second.status), (0, 0))
        self.assertIn("sbc mysbc", second.text())

    def test_no_subsystem_and_no_forwarding(self) -> None:
        channel = ClientChannel([(b"subsystem", NS(b"sftp"))])
        with capturedLogs() as events:
            c = Connected(self, channels=[channel])
        self.assertEqual(channel.replies, [(b"subsystem", False)])
        self.assertIn(
            "SSH: refused the sftp subsystem (only CLI sessions are served)", messages(events)
        )

        class Forward(SSHChannel):
            name = b"direct-tcpip"

            def openFailed(self, reason: Any) -> None:
                self.refused = True

        forward = Forward()
        forward.conn = c.connection
        forward.refused = False  # type: ignore[attr-defined]
        c.connection.openChannel(
            forward, NS(b"127.0.0.1") + struct.pack(">L", 22) + NS(b"127.0.0.1") + b"\0\0\0\0"
        )
        c.flush()
        self.assertTrue(forward.refused)  # type: ignore[attr-defined]


class ShellTests(SynchronousTestCase):
    def test_pty_shell_prompts_history_and_exit(self) -> None:
        channel = shell_channel()
        c = Connected(self, channels=[channel])
        self.assertEqual(channel.replies, [(b"pty-req", True), (b"shell", True)])
        self.assertEqual(channel.output, b"sbc# ")  # no terminal reset, no screen clearing
        channel.output = b""
        channel.write(b"configure\r")
        c.flush()
        self.assertEqual(channel.output, b"configure\r\nsbc(config)# ")
        channel.output = b""
        channel.write(b"sbc mysbc\r")
        c.flush()
        self.assertTrue(channel.output.endswith(b"\r\nsbc(config-sbc)# "), channel.output)
        channel.output = b""
        channel.write(b"end\rshow running-config\r")
        c.flush()
        expected, _ = Session(FakeBackend()).execute("show running-config")
        self.assertIn(expected.replace("\n", "\r\n").encode() + b"\r\nsbc# ", channel.output)
        channel.output = b""
        channel.write(b"\x1b[A")  # up arrow: the last command comes back
        c.flush()
        self.assertIn(b"show running-config", channel.output)
        channel.write(b"\x03exit\r")  # Ctrl-C drops it
        c.flush()
        self.assertEqual(channel.status, 0)
        self.assertTrue(channel.is_closed)

    def test_editing_mid_line_and_window_change(self) -> None:
        channel = shell_channel()
        c = Connected(self, channels=[channel])
        channel.write(b"shw\x1b[Do\x1b[C")  # left arrow, insert: "show", right arrow
        channel.write(b" runx\x7fy\x08")  # backspace (DEL and Ctrl-H)
        c.connection.sendRequest(
            channel, b"window-change", packRequest_window_change((50, 132, 0, 0))
        )
        channel.write(b"ning-config\r")
        c.flush()
        self.assertIn(b"sbc mysbc", channel.output)
        self.assertNotIn(b"%", channel.output)

    def test_ctrl_d_and_eof_end_the_shell(self) -> None:
        channel = shell_channel()
        c = Connected(self, channels=[channel])
        channel.write(b"configure\r\x04")
        c.flush()
        self.assertEqual(channel.status, 0)
        self.assertTrue(channel.is_closed)
        channel = shell_channel()
        c = Connected(self, channels=[channel])
        c.connection.sendEOF(channel)
        c.flush()
        self.assertEqual(channel.status, 0)
        self.assertTrue(channel.is_closed)

    def test_tab_completes_on_the_pty(self) -> None:
        channel = shell_channel()
        c = Connected(self, channels=[channel])
        channel.output = b""
        channel.write(b"sh\t")  # one candidate: completed, with a space
        c.flush()
        self.assertEqual(channel.output, b"show ")  # "sh" echoed, "ow " completed
        channel.output = b""
        channel.write(b"\t")  # several: listed, then the line is drawn again
        c.flush()
        self.assertIn(b"configuration  running-config  services", channel.output)
        self.assertTrue(channel.output.endswith(b"sbc# show "), channel.output)
        channel.write(b"run\t\r")  # "running-config ", then Enter runs it
        c.flush()
        self.assertIn(b"sbc mysbc", channel.output)
        channel.output = b""
        channel.write(b"\x03bogus \t")  # nothing to offer: the bell
        c.flush()
        self.assertTrue(channel.output.endswith(b"\x07"), channel.output)

    def test_overlong_pty_line_rings_the_bell(self) -> None:
        channel = shell_channel()
        c = Connected(self, channels=[channel])
        channel.write(b"x" * (MAX_LINE_LENGTH + 3))
        c.flush()
        self.assertEqual(channel.output.count(b"\x07"), 3)

    def test_plain_shell_speaks_the_socket_protocol(self) -> None:
        channel = shell_channel(pty=False)
        c = Connected(self, channels=[channel])
        self.assertEqual(channel.output, b"sbc# ")
        channel.write(b"configure\nsbc mysbc\nbogus\n")
        c.flush()
        text = channel.text()
        self.assertTrue(text.startswith("sbc# sbc(config)# sbc(config-sbc)# %"), text)
        self.assertTrue(text.endswith("\nsbc(config-sbc)# "), text)
        channel.write(b"end\nshow running-config")  # no final newline, then EOF
        c.connection.sendEOF(channel)
        c.flush()
        self.assertIn("sbc mysbc", channel.text())
        self.assertEqual(channel.status, 1)  # "bogus" printed a % line
        self.assertTrue(channel.is_closed)

    def test_idle_shells_are_closed(self) -> None:
        """cli-idle-timeout (600 s by default): input restarts it; both shell kinds close."""
        for pty in (True, False):
            channel = shell_channel(pty=pty)
            c = Connected(self, channels=[channel])
            c.clock.advance(599)
            channel.write(b"show running-config\r" if pty else b"show running-config\n")
            c.flush()
            c.clock.advance(599)
            c.flush()
            self.assertFalse(channel.is_closed)
            c.clock.advance(1)
            c.clock.advance(0)  # the session ends from the reactor
            c.flush()
            self.assertIn(
                "% session idle for 600 seconds: closed (cli-idle-timeout)", channel.text()
            )
            self.assertEqual(channel.status, 0)
            self.assertTrue(channel.is_closed)

    def test_plain_shell_exit_is_status_0(self) -> None:
        channel = shell_channel(pty=False)
        c = Connected(self, channels=[channel])
        channel.write(b"show running-config\nexit\nshow nonsense\n")
        c.flush()
        self.assertEqual(channel.status, 0)
        self.assertNotIn("%", channel.text())
