"""The management CLI over SSH (twisted.conch), public-key authentication only.

``twistd sbc --ssh ENDPOINT --ssh-keys AUTHORIZED_KEYS`` serves the same CLI
as the management socket (:mod:`sbc.cli.server`: one
:class:`~sbc.cli.commands.Session` per SSH session, over the same
:class:`~sbc.service.ServiceBackend`), as an operator reaches a router:

- ``ssh -p PORT operator@sbc`` opens an interactive shell: line editing and
  history (arrow keys), the session's prompt (``sbc#``, ``sbc(config)#``...)
  after every command; ``exit`` in exec mode (or Ctrl-D on an empty line)
  ends it. Without a terminal (``ssh -T ... < script``) the shell speaks the
  plain protocol of the management socket: prompt, output, prompt.
- ``ssh -p PORT operator@sbc 'show running-config'`` runs the command (or
  the lines of a multi-line command, in one session) and exits with status 1
  when any output line starts with ``%``, else 0.

Authentication is by public key only: the keys listed in an OpenSSH
``authorized_keys`` file, read again at every login attempt, so a key added
or removed takes effect without a restart. No password, no
keyboard-interactive, no port forwarding, no subsystems (sftp). The SSH
user name is free; the key decides. Commits record both, as
``NAME (KEY)``: the key's comment in the file, else the start of its
fingerprint, so the record names the key that signed, whatever name the
client typed. As OpenSSH's ``StrictModes``, the keys file is refused when
group or others may write it or its directory, or someone other than root or
the daemon's user owns either; the host key file when group or others have
any access to it. The host key (ed25519) is generated at the first start
when its file is missing, mode 0600, and its fingerprint logged.

Twisted conch logs every step of every connection (key exchange, requests,
the command text of ``exec``...); the classes here log only warnings and
errors of theirs, next to our own login, logout and refusal lines.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import struct
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import IAuthorizedKeysDB
from twisted.conch.error import ConchError, IgnoreAuthentication, ValidPublicKey
from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.recvline import HistoricRecvLine
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import (
    MSG_CHANNEL_OPEN_FAILURE,
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    SSHConnection,
)
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import BadKeyError, EncryptedKeyError, Key
from twisted.conch.ssh.session import (
    SSHSession,
    SSHSessionProcessProtocol,
    parseRequest_pty_req,
    parseRequest_window_change,
    wrapProtocol,
)
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.cli.commands import LineQueue, SbcBackend, Session
from sbc.cli.idle import IDLE_MESSAGE, IdleTimer
from sbc.endpoints import ManagedSbc, close_port
from sbc.errors import ConfigError

__all__ = [
    "MAX_LINE_LENGTH",
    "AuthorizedKey",
    "AuthorizedKeys",
    "AuthorizedKeysChecker",
    "CliAvatar",
    "CliRealm",
    "CliSshFactory",
    "KeyLogin",
    "SshCliService",
    "SshCliSession",
    "SshSettings",
    "key_fingerprint",
    "load_host_key",
    "parse_authorized_keys",
]

#: The longest command line accepted (as on the management socket).
MAX_LINE_LENGTH = 8192
#: Command lines an interactive session remembers (arrow keys).
HISTORY_LINES = 500
#: Seconds a client has to authenticate (the ``ssh-login-timeout`` limit's default).
LOGIN_GRACE_SECONDS = 120
#: Failed authentication requests tolerated on one connection (``ssh-max-auth-tries``).
MAX_AUTH_TRIES = 6

#: Base64 characters of the fingerprint naming a key without a comment.
SHORT_FINGERPRINT = 16

_log = Logger(namespace="sbc.cli.ssh")
#: The logger of the conch classes here: their warnings and errors only.
_conch_log = Logger(
    observer=FilteringLogObserver(globalLogPublisher, [LogLevelFilterPredicate(LogLevel.warn)])
)


def key_fingerprint(blob: bytes) -> str:
    """The OpenSSH fingerprint of a public key blob: ``SHA256:`` + unpadded base64."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def _has_error(text: str) -> bool:
    return any(line.startswith("%") for line in text.splitlines())


def _printable(data: bytes, limit: int = 64) -> str:
    """A client-chosen name, safe to log: control characters become ``?``, at most ``limit``."""
    text = data.decode("utf-8", errors="replace")[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def _describe_address(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# -- authorized_keys -------------------------------------------------------------


@attrs.frozen
class SshSettings:
    """The management CLI over SSH (:mod:`sbc.cli.ssh`).

    ``endpoint`` is a strports description (``tcp:2222:interface=127.0.0.1``);
    ``authorized_keys`` names an OpenSSH ``authorized_keys`` file: the public
    keys allowed to log in (public-key authentication only). ``host_key`` is
    the server's private key file, generated (mode 0600) when it is missing.
    """

    endpoint: str
    authorized_keys: str
    host_key: str


@attrs.frozen
class AuthorizedKey:
    """One usable line of an ``authorized_keys`` file."""

    key: Key
    comment: str
    line: int

    @property
    def key_id(self) -> str:
        """What names the key in logs and commits: its comment, else ``SHA256:`` + 16 characters."""
        if self.comment:
            return _printable(self.comment.encode())
        return key_fingerprint(self.key.blob())[: len("SHA256:") + SHORT_FINGERPRINT]


def _parse_key(kind: str, data: str) -> Key | None:
    try:
        key = Key.fromString(base64.b64decode(data.encode("ascii"), validate=True), type="blob")
    except (BadKeyError, ValueError, UnicodeEncodeError, binascii.Error, struct.error, IndexError):
        return None
    return key if key.sshType() == kind.encode("ascii") else None


def parse_authorized_keys(text: str, path: str) -> tuple[list[AuthorizedKey], list[ConfigError]]:
    """The keys of an OpenSSH ``authorized_keys`` text, and the lines refused.

    Each line is ``TYPE BASE64 [COMMENT]``; blank lines and ``#`` comments are
    skipped. A line with key options (``from=...``, ``command=...``) is
    refused rather than accepted without its restrictions.
    """
    keys: list[AuthorizedKey] = []
    problems: list[ConfigError] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        key = _parse_key(fields[0], fields[1]) if len(fields) >= 2 else None
        if key is not None:
            keys.append(AuthorizedKey(key, " ".join(fields[2:]), number))
            continue
        with_options = any(
            _parse_key(fields[i], fields[i + 1]) is not None for i in range(1, len(fields) - 1)
        )
        message = (
            "key options are not supported; line ignored"
            if with_options
            else "not a public key (TYPE BASE64 [COMMENT]); line ignored"
        )
        problems.append(ConfigError(path, number, message))
    return keys, problems


def _mode_problem(path: str, info: os.stat_result, uid: int, what: str) -> str | None:
    """Why ``path`` (``what``) may be changed by someone else than root or ``uid``, or None."""
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return f"{what} is writable by group or others (mode {mode:04o}): chmod go-w {path}"
    if info.st_uid not in (0, uid):
        return f"{what} is owned by uid {info.st_uid}, not root or the daemon's uid {uid}"
    return None


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """The public keys allowed to log in: an OpenSSH ``authorized_keys`` file.

    The file is read again at every login attempt, so keys added or removed
    take effect without restarting the daemon. Every SSH user name gets the
    same keys. Refused lines are logged (once, until they change). As
    OpenSSH's ``StrictModes``, the file is refused (every login with it)
    when group or others may write it or its directory, or when one of them
    is owned by someone else than root or ``uid`` (default: the daemon's
    effective uid at each read).
    """

    log = _log

    def __init__(self, path: str, *, uid: int | None = None) -> None:
        self.path = path
        self.uid = uid
        self._reported: tuple[str, ...] = ()

    def load(self) -> tuple[list[AuthorizedKey], list[ConfigError]]:
        """Read and parse the file; ConfigError when it cannot be read or is unsafe."""
        try:
            with open(self.path, "rb") as f:
                self._check_modes(os.fstat(f.fileno()))
                text = f.read().decode("utf-8", errors="replace")
        except OSError as error:
            raise ConfigError(
                self.path, 0, f"cannot read the SSH authorized keys: {error.strerror or error}"
            ) from None
        return parse_authorized_keys(text, self.path)

    def _check_modes(self, info: os.stat_result) -> None:
        uid = os.geteuid() if self.uid is None else self.uid
        problem = _mode_problem(self.path, info, uid, "the SSH authorized keys file")
        if problem is not None:
            raise ConfigError(self.path, 0, problem)
        directories = dict.fromkeys(
            os.path.dirname(os.path.abspath(p)) for p in (self.path, os.path.realpath(self.path))
        )
        for directory in directories:
            problem = _mode_problem(
                directory, os.stat(directory), uid, "the directory of the SSH authorized keys"
            )
            if problem is not None:
                raise ConfigError(directory, 0, problem)

    def check(self) -> list[str]:
        """What leaves nobody able to log in (unreadable, unsafe, no key); one line each."""
        try:
            keys, problems = self.load()
        except ConfigError as error:
            return [str(error)]
        self._report(problems)
        if not keys:
            return [f"{self.path}: no usable public key (TYPE BASE64 [COMMENT] lines)"]
        return []

    def entries(self) -> list[AuthorizedKey]:
        """The usable keys now (empty, with an error logged, when the file cannot be used)."""
        try:
            keys, problems = self.load()
        except ConfigError as error:
            self.log.error("SSH logins refused: {error}", error=str(error))
            return []
        self._report(problems)
        return keys

    def find(self, blob: bytes) -> AuthorizedKey | None:
        """The authorized key with this public key blob, now (None if not listed)."""
        for entry in self.entries():
            if entry.key.blob() == blob:
                return entry
        return None

    def getAuthorizedKeys(self, username: bytes) -> Iterable[Key]:
        """:class:`IAuthorizedKeysDB`: the same keys whatever the user name."""
        return [entry.key for entry in self.entries()]

    def _report(self, problems: list[ConfigError]) -> None:
        lines = tuple(str(p) for p in problems)
        if lines != self._reported:
            for line in lines:
                self.log.warn("SSH authorized keys: {problem}", problem=line)
        self._reported = lines


@attrs.frozen
class KeyLogin:
    """Who logged in: the SSH user name the client gave and the authorized key that signed.

    The avatar ID :class:`AuthorizedKeysChecker` gives :class:`CliRealm`.
    """

    name: str
    key: AuthorizedKey

    @property
    def identity(self) -> str:
        """``NAME (KEY)``, recorded with commits: the name is the client's, the key is not."""
        return f"{self.name or '-'} ({self.key.key_id})"


@implementer(ICredentialsChecker)
class AuthorizedKeysChecker:
    """Accepts signatures by the keys in :class:`AuthorizedKeys`; avatar IDs are :class:`KeyLogin`.

    Without a signature (the client asks whether it may use a key) the
    answer is :class:`~twisted.conch.error.ValidPublicKey`, as conch's
    checker gives, whatever the key: the signed attempt decides.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, keys: AuthorizedKeys) -> None:
        self.keys = keys

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        # A KeyLogin: twisted.cred types avatar IDs as bytes, the portal passes any object.
        result: Deferred[Any] = maybeDeferred(self._check, credentials)
        return result

    def _check(self, credentials: Any) -> KeyLogin:
        if not credentials.signature:
            raise ValidPublicKey()
        entry = self.keys.find(credentials.blob)
        if entry is None:
            raise UnauthorizedLogin("Key not authorized")
        try:
            valid = entry.key.verify(credentials.signature, credentials.sigData)
        except Exception:  # any error in a client's signature is a refusal
            raise UnauthorizedLogin("Error while verifying key") from None
        if not valid:
            raise UnauthorizedLogin("Key signature invalid")
        name = _printable(credentials.username).replace("(", "?").replace(")", "?")
        return KeyLogin(name, entry)


# -- the host key ----------------------------------------------------------------


def load_host_key(path: str) -> tuple[Key, bool]:
    """The SSH host private key in ``path``, generated when the file is missing.

    Returns ``(key, created)``. A new key is ed25519 in the OpenSSH format,
    written to a temporary file (``O_EXCL``, mode 0600), fsynced and linked
    into place, so a crash never leaves half a key and a key written
    meanwhile by someone else is never overwritten. Raises ConfigError when
    the file cannot be read (a symbolic link to nowhere included), holds no
    usable private key, gives group or others any access, or cannot be made.
    """
    found = _read_host_key(path)
    if found is None:
        return _create_host_key(path)
    return _host_key_from(path, *found), False


def _read_host_key(path: str) -> tuple[bytes, int] | None:
    """The host key file's bytes and permission bits; None when nothing is at ``path``."""
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            return f.read(), mode
    except FileNotFoundError:
        try:
            os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError:
            pass
        raise ConfigError(path, 0, _UNREADABLE) from None
    except OSError as error:
        raise ConfigError(
            path, 0, f"cannot read the SSH host key: {error.strerror or error}"
        ) from None


_UNREADABLE = "the SSH host key exists but cannot be read (a symbolic link to a missing file?)"


def _host_key_from(path: str, data: bytes, mode: int) -> Key:
    try:
        key = Key.fromString(data)
    except EncryptedKeyError:
        raise ConfigError(
            path, 0, "the SSH host key is encrypted (it must load without a passphrase)"
        ) from None
    except (BadKeyError, ValueError, struct.error, IndexError):
        raise ConfigError(path, 0, "not an SSH private key") from None
    if key.isPublic():
        raise ConfigError(path, 0, "a public key; the SSH host key file holds the private key")
    if mode & 0o077:
        raise ConfigError(
            path,
            0,
            f"the SSH host key is accessible by group or others (mode {mode:04o}): "
            f"chmod 600 {path}",
        )
    return key


def _create_host_key(path: str) -> tuple[Key, bool]:
    data = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    )
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise ConfigError(
            path, 0, f"cannot create the SSH host key: {error.strerror or error}"
        ) from None
    try:
        with os.fdopen(descriptor, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, path)
    except FileExistsError:  # written meanwhile by another process: use that one, once
        found = _read_host_key(path)
        if found is None:
            raise ConfigError(path, 0, _UNREADABLE) from None
        return _host_key_from(path, *found), False
    except OSError as error:
        raise ConfigError(
            path, 0, f"cannot create the SSH host key: {error.strerror or error}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return Key.fromString(data), True


# -- sessions --------------------------------------------------------------------


@implementer(ITransport)
class _ChannelTransport:
    """What a shell protocol writes to: the SSH channel (``\\n`` -> ``\\r\\n`` on a pty)."""

    def __init__(self, process: Any, *, crlf: bool) -> None:
        self.process = process
        self.crlf = crlf
        #: True once the session ends: a LineReceiver stops reading then.
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if self.crlf:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.process.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.process.loseConnection()

    def getPeer(self) -> IAddress:
        peer: IAddress = self.process.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self.process.getHost()
        return host


_PRINTABLE = frozenset(range(0x20, 0x7F))


def _common_prefix(words: list[str]) -> str:
    """The longest string every one of ``words`` starts with ("" for none)."""
    if not words:
        return ""
    first, last = min(words), max(words)
    length = 0
    while length < len(first) and first[length] == last[length]:
        length += 1
    return first[:length]


class _LineEditor(HistoricRecvLine):
    """The interactive shell on a pty: line editing, history, the session's prompt.

    The operator's terminal is not reset or cleared, and its insert mode is
    never switched on (a character typed mid-line redraws the rest).
    """

    def __init__(
        self, session: Session, finish: Callable[[int], None], touch: Callable[[], None]
    ) -> None:
        self.session = session
        self.finish = finish
        self.touch = touch
        self.done = False
        self.queue = LineQueue(session, self._answer, _log_crash)
        self._set_prompt()

    def _set_prompt(self) -> None:
        prompt = self.session.prompt.encode() + b" "
        self.ps = (prompt, prompt)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keyHandlers[self.terminal.TAB] = self.handle_TAB
        self.keyHandlers.pop(self.terminal.INSERT, None)
        self.keyHandlers[b"\x03"] = self.handle_INTERRUPT
        self.keyHandlers[b"\x04"] = self.handle_EOT
        self.keyHandlers[b"\x08"] = self.handle_BACKSPACE  # Ctrl-H

    def initializeScreen(self) -> None:
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def setInsertMode(self) -> None:
        self.mode = "insert"

    def terminalSize(self, width: int, height: int) -> None:
        self.width = width
        self.height = height

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        if self.done:
            return
        self.touch()
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            handler()
        elif isinstance(keyID, bytes) and len(keyID) == 1 and keyID[0] in _PRINTABLE:
            self.characterReceived(keyID, False)
        # Function keys, other control characters and non-ASCII bytes are ignored.

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        if len(self.lineBuffer) >= MAX_LINE_LENGTH:
            self.terminal.write(b"\x07")
            return
        _, tail = self.currentLineBuffer()
        self.lineBuffer.insert(self.lineBufferIndex, ch)
        self.lineBufferIndex += 1
        self.terminal.write(ch + tail)
        if tail:
            self.terminal.cursorBackward(len(tail))

    def handle_TAB(self) -> None:
        """Complete the word under the cursor; list the choices when there are several."""
        typed = b"".join(self.lineBuffer[: self.lineBufferIndex]).decode("utf-8", errors="replace")
        candidates = self.session.complete(typed)
        partial = "" if not typed or typed[-1:].isspace() else typed.split()[-1]
        if len(candidates) == 1:
            insert = candidates[0][len(partial) :] + " "
        else:
            common = _common_prefix(candidates)
            insert = common[len(partial) :]
            if not insert:
                if candidates:
                    self.terminal.write(b"\n" + "  ".join(candidates).encode() + b"\n")
                    self.drawInputLine()
                else:
                    self.terminal.write(b"\x07")
                return
        for char in insert.encode():
            self.characterReceived(bytes((char,)), False)

    def handle_INTERRUPT(self) -> None:
        """Ctrl-C: drop the line being typed."""
        self.lineBuffer = []
        self.lineBufferIndex = 0
        self.terminal.write(b"^C\n")
        self.drawInputLine()

    def handle_EOT(self) -> None:
        """Ctrl-D: leave on an empty line."""
        if not self.lineBuffer:
            self.terminal.write(b"\n")
            self.end(0)

    def lineReceived(self, line: bytes) -> None:
        if len(self.historyLines) > HISTORY_LINES:
            del self.historyLines[:-HISTORY_LINES]
            self.historyPosition = len(self.historyLines)
        self.queue.put(line.decode("utf-8", errors="replace"))

    def _answer(self, text: str, ok: bool) -> None:
        if self.done:
            return
        if text:
            self.terminal.write(text.encode() + b"\n")
        if self.session.closed:
            self.end(0)
            return
        self._set_prompt()
        self.drawInputLine()

    def end(self, status: int) -> None:
        """Stop reading keys and end the SSH session with exit ``status``."""
        self.done = True
        self.finish(status)


def _log_crash(failure: Failure) -> None:
    _log.failure("a CLI command failed (SSH)", failure)


class _PlainShell(LineReceiver):
    """A shell without a pty: the management socket's protocol (prompt, output, prompt).

    The exit status is 1 when any command printed a ``%`` line.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH

    def __init__(
        self, session: Session, finish: Callable[[int], None], touch: Callable[[], None]
    ) -> None:
        self.session = session
        self.finish = finish
        self.touch = touch
        self.failed = False
        self.done = False
        self.queue = LineQueue(session, self._answer, _log_crash)

    def connectionMade(self) -> None:
        self._write(self.session.prompt.encode() + b" ")

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def lineReceived(self, line: bytes) -> None:
        if self.done:
            return
        self.touch()
        self.queue.put(line.rstrip(b"\r").decode("utf-8", errors="replace"))

    def _answer(self, text: str, ok: bool) -> None:
        if self.done:
            return
        if text:
            self._write(text.encode() + b"\n")
            self.failed = self.failed or _has_error(text)
        if self.session.closed:
            self.end()
            return
        self._write(self.session.prompt.encode() + b" ")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._write(b"% command line too long\n")
        self.failed = True
        self.end()

    def end_of_input(self) -> None:
        """The client sent EOF: run a last unterminated line, then end."""
        rest = self.clearLineBuffer()
        if rest.strip() and not self.done:
            self.lineReceived(rest)
        self.queue.idle().addCallback(lambda _: self.end())

    def end(self) -> None:
        if not self.done:
            self.done = True
            self.finish(1 if self.failed else 0)


@implementer(ISession)
class SshCliSession:
    """One SSH session channel: an interactive shell or one ``exec`` request.

    Each gets its own :class:`~sbc.cli.commands.Session`. The session ends
    with an ``exit-status`` (0, or 1 after a ``%`` error in exec and plain
    shells), sent from the reactor, never from inside the protocol that
    asked for it.
    """

    def __init__(self, avatar: CliAvatar) -> None:
        self.avatar = avatar
        #: (columns, rows) once a pty was requested.
        self.window: tuple[int, int] | None = None
        self.process: Any = None
        self.transport: _ChannelTransport | None = None
        self.editor: _LineEditor | None = None
        self.plain: _PlainShell | None = None
        self.finished = False
        self.channel_closed = False
        self._pending: IDelayedCall | None = None
        backend = avatar.backend
        self.idle = IdleTimer(
            avatar.reactor, lambda: backend.running_config().limits.cli_idle_timeout, self._idle
        )

    # -- ISession --------------------------------------------------------------

    def getPty(self, term: bytes, windowSize: Any, modes: Any) -> None:
        rows, columns = int(windowSize[0]), int(windowSize[1])
        self.window = (columns or 80, rows or 24)

    def openShell(self, proto: Any) -> None:
        self.process = proto
        session = self.avatar.new_session()
        if self.window is not None:
            self.transport = _ChannelTransport(proto, crlf=True)
            terminal = ServerProtocol(_LineEditor, session, self.finish, self.idle.touch)
            terminal.makeConnection(self.transport)
            self.editor = terminal.terminalProtocol
            assert self.editor is not None
            self.editor.terminalSize(*self.window)
            proto.makeConnection(wrapProtocol(terminal))
        else:
            self.transport = _ChannelTransport(proto, crlf=False)
            self.plain = _PlainShell(session, self.finish, self.idle.touch)
            self.plain.makeConnection(self.transport)
            proto.makeConnection(wrapProtocol(self.plain))
        self.idle.touch()

    def execCommand(self, proto: Any, command: bytes) -> None:
        self.process = proto
        self.transport = _ChannelTransport(proto, crlf=self.window is not None)
        sink = Protocol()  # input sent to an exec request is ignored
        sink.makeConnection(self.transport)
        proto.makeConnection(wrapProtocol(sink))
        # After this request's reply has left, not before.
        self._pending = self.avatar.reactor.callLater(0, self._execute, command)

    def windowChanged(self, newWindowSize: Any) -> None:
        rows, columns = int(newWindowSize[0]), int(newWindowSize[1])
        self.window = (columns or 80, rows or 24)
        if self.editor is not None:
            self.editor.terminalSize(*self.window)

    def eofReceived(self) -> None:
        if self.editor is not None:
            self.editor.end(0)
        elif self.plain is not None:
            self.plain.end_of_input()

    def closed(self) -> None:
        self.channel_closed = True
        self.idle.stop()
        pending, self._pending = self._pending, None
        if pending is not None and pending.active():
            pending.cancel()

    # -- ours ------------------------------------------------------------------

    def _execute(self, command: bytes) -> None:
        self._pending = None
        if self.channel_closed:
            return
        session = self.avatar.new_session()
        output: list[str] = []
        failed = False

        def answer(text: str, ok: bool) -> None:
            nonlocal failed
            if text:
                output.append(text)
                failed = failed or _has_error(text)

        queue = LineQueue(session, answer, _log_crash)
        for raw in command.decode("utf-8", errors="replace").split("\n"):
            line = raw.rstrip("\r")
            if len(line) > MAX_LINE_LENGTH:
                queue.idle().addCallback(lambda _: answer("% command line too long", False))
                break
            if line.strip():
                queue.put(line)

        def done(_: object) -> None:
            if self.channel_closed:
                return
            if output and self.transport is not None:
                self.transport.write(("\n".join(output) + "\n").encode())
            self.finished = True
            self._end(1 if failed else 0)

        queue.idle().addCallback(done)

    def _idle(self, seconds: int) -> None:
        if self.finished or self.transport is None:
            return
        self.transport.write(b"\n" + IDLE_MESSAGE.format(seconds=seconds).encode() + b"\n")
        self.finish(0)

    def finish(self, status: int) -> None:
        """End the session with ``status`` (once), from the reactor."""
        self.idle.stop()
        if self.finished:
            return
        self.finished = True
        if self.transport is not None:
            self.transport.disconnecting = True
        self._pending = self.avatar.reactor.callLater(0, self._end, status)

    def _end(self, status: int) -> None:
        self._pending = None
        if self.channel_closed or self.process is None:
            return
        reason = ProcessDone(0) if status == 0 else ProcessTerminated(exitCode=status)
        self.process.processEnded(Failure(reason))


class _SessionProcess(SSHSessionProcessProtocol):
    """What a session writes to and ends: ``exit-status``, then close (no conch log line)."""

    def processEnded(self, reason: Failure | None = None) -> None:
        code = getattr(reason.value, "exitCode", None) if reason is not None else None
        if code is not None:
            self.session.conn.sendRequest(self.session, b"exit-status", struct.pack(">L", code))
        self.session.loseConnection()


class _SessionChannel(SSHSession):
    """A session channel: a pty, then one shell or ``exec`` request, for an :class:`SshCliSession`.

    Conch's handlers log every request (an ``exec`` request's whole command
    text included) on a logger of their module; these do the same work
    quietly. Subsystems (sftp) and environment variables are refused.
    """

    _log = _conch_log

    def _cli(self) -> ISession:
        if self.session is None:
            self.session = ISession(self.avatar)
        return self.session

    def requestReceived(self, requestType: bytes, data: bytes) -> int:
        try:
            return int(super().requestReceived(requestType, data))
        except Exception:
            _log.failure(
                "SSH: error handling a {request} request",
                request=_printable(requestType),
            )
            return 0

    def _start(self, begin: Callable[[SSHSessionProcessProtocol], None]) -> int:
        if self.client is not None:  # one shell or command per channel (RFC 4254, 6.5)
            return 0
        process = _SessionProcess(self)
        begin(process)
        self.client = process
        return 1

    def request_shell(self, data: bytes) -> int:
        return self._start(self._cli().openShell)

    def request_exec(self, data: bytes) -> int:
        command = getNS(data)[0]
        return self._start(lambda process: self._cli().execCommand(process, command))

    def request_pty_req(self, data: bytes) -> int:
        self._cli().getPty(*parseRequest_pty_req(data))
        return 1

    def request_window_change(self, data: bytes) -> int:
        self._cli().windowChanged(parseRequest_window_change(data))
        return 1

    def request_subsystem(self, data: bytes) -> int:
        _log.warn(
            "SSH: refused the {name} subsystem (only CLI sessions are served)",
            name=_printable(getNS(data)[0]),
        )
        return 0

    def request_env(self, data: bytes) -> int:
        return 0


class CliAvatar(ConchUser):
    """A logged-in operator: session channels only (no forwarding, no subsystems).

    ``user`` is what the logs and the commits record: ``NAME (KEY)``
    (:attr:`KeyLogin.identity`).
    """

    _log = _conch_log

    def __init__(self, user: str, backend: SbcBackend, reactor: Any) -> None:
        super().__init__()
        self.user = user
        self.backend = backend
        self.reactor = reactor
        #: Where the client connects from (set once logged in; for the logs).
        self.peer = ""
        self.channelLookup[b"session"] = _SessionChannel

    def __conform__(self, interface: Any) -> SshCliSession | None:
        # ISession(avatar): a new session object for each session channel.
        if interface is ISession:
            return SshCliSession(self)
        return None

    def new_session(self) -> Session:
        """A fresh CLI session recording this user and key (client ``ssh``) with its commits."""
        return Session(self.backend, user=self.user, client="ssh")

    def logout(self) -> None:
        _log.info(
            "SSH logout: {user}{peer}",
            user=self.user,
            peer=f" from {self.peer}" if self.peer else "",
        )


@implementer(IRealm)
class CliRealm:
    """Gives every :class:`KeyLogin` a :class:`CliAvatar` over ``backend``, as ``NAME (KEY)``."""

    def __init__(self, backend: SbcBackend, reactor: Any) -> None:
        self.backend = backend
        self.reactor = reactor

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, CliAvatar, Callable[[], None]]:
        if IConchUser not in interfaces:
            raise NotImplementedError("the SSH CLI only serves IConchUser")
        if not isinstance(avatarId, KeyLogin):
            raise NotImplementedError("the SSH CLI only serves logins with an authorized key")
        avatar = CliAvatar(avatarId.identity, self.backend, self.reactor)
        return IConchUser, avatar, avatar.logout


# -- the SSH server ----------------------------------------------------------------


class _PublicKeyUserAuth(SSHUserAuthServer):
    """``ssh-userauth`` that logs every login and refusal, on the injected reactor."""

    loginTimeout = LOGIN_GRACE_SECONDS
    attemptsBeforeDisconnect = MAX_AUTH_TRIES
    _log = _conch_log

    def _ssh(self) -> Any:
        assert self.transport is not None
        return self.transport

    def serviceStarted(self) -> None:
        factory = self._ssh().factory
        self.clock = factory.reactor
        limits = factory.backend.running_config().limits
        self.loginTimeout = limits.ssh_login_timeout
        self.attemptsBeforeDisconnect = limits.ssh_max_auth_tries
        super().serviceStarted()

    def _peer(self) -> str:
        return _describe_address(self._ssh().transport.getPeer())

    def _user(self, user: bytes | None) -> str:
        return _printable(user or b"")

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> Deferred[Any]:
        if kind not in (b"none", b"publickey"):
            _log.warn(
                "SSH login refused: {user} from {peer} tried {method} authentication "
                "(public keys only)",
                user=self._user(user),
                peer=self._peer(),
                method=kind.decode("ascii", errors="replace"),
            )
        result: Deferred[Any] = super().tryAuth(kind, user, data)
        return result

    def auth_publickey(self, packet: bytes) -> Deferred[Any]:
        result: Deferred[Any] = super().auth_publickey(packet)
        if packet[:1] == b"\x00":  # "may I use this key?": not a login yet
            return result
        algorithm, blob, _ = getNS(packet[1:], 2)
        user, peer = self._user(self.user), self._peer()
        kind = algorithm.decode("ascii", errors="replace")
        fingerprint = key_fingerprint(blob)

        def logged_in(result: Any) -> Any:
            _, avatar, _ = result
            identity = user
            if isinstance(avatar, CliAvatar):
                avatar.peer = peer
                identity = avatar.user  # NAME (KEY), as commits record it
            _log.info(
                "SSH login: {user} from {peer} with {kind} key {fingerprint}",
                user=identity,
                peer=peer,
                kind=kind,
                fingerprint=fingerprint,
            )
            return result

        def refused(failure: Failure) -> Failure:
            if not failure.check(IgnoreAuthentication):
                reason = (
                    failure.getErrorMessage()
                    if failure.check(UnauthorizedLogin, ConchError)
                    else "error while checking the key"
                )
                _log.warn(
                    "SSH login refused: {user} from {peer} with {kind} key {fingerprint}: {reason}",
                    user=user,
                    peer=peer,
                    kind=kind,
                    fingerprint=fingerprint,
                    reason=reason,
                )
            return failure

        return result.addCallbacks(logged_in, refused)


class _SessionsOnly(SSHConnection):
    """``ssh-connection`` that refuses every channel but sessions (no forwarding), quietly."""

    _log = _conch_log

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        kind, rest = getNS(packet)
        if kind == b"session":
            super().ssh_CHANNEL_OPEN(packet)
            return
        (sender,) = struct.unpack(">L", rest[:4])
        _log.warn(
            "SSH: refused a {kind} channel (only CLI sessions are served)",
            kind=kind.decode("ascii", errors="replace"),
        )
        assert self.transport is not None
        self.transport.sendPacket(
            MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, OPEN_ADMINISTRATIVELY_PROHIBITED)
            + NS(b"only CLI sessions are served")
            + NS(b""),
        )


class _ServerTransport(SSHServerTransport):
    """The SSH server transport; a client that says goodbye is not an error."""

    _log = _conch_log

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if reasonCode == DISCONNECT_BY_APPLICATION:
            return
        super().receiveError(reasonCode, description)


def _strong(names: Iterable[bytes], keep: Callable[[bytes], bool]) -> list[bytes]:
    return [name for name in names if keep(name)]


class CliSshFactory(SSHFactory):
    """The SSH server: one host key, public-key logins into :class:`CliRealm`.

    Only modern algorithms are offered: no SHA-1 or group-exchange key
    exchange (no moduli file needed), CTR ciphers, SHA-2 MACs.
    """

    services = {
        b"ssh-userauth": _PublicKeyUserAuth,
        b"ssh-connection": _SessionsOnly,
    }
    noisy = False
    _log = _conch_log

    def __init__(
        self, backend: SbcBackend, authorized_keys: AuthorizedKeys, host_key: Key, reactor: Any
    ) -> None:
        self.reactor = reactor
        self.backend = backend
        self.authorized_keys = authorized_keys
        self.host_key = host_key
        self.portal = Portal(CliRealm(backend, reactor), [AuthorizedKeysChecker(authorized_keys)])
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None

    def buildProtocol(self, addr: Any) -> SSHServerTransport:
        transport = _ServerTransport()
        transport.factory = self
        transport.supportedPublicKeys = list(self.host_key.supportedSignatureAlgorithms())
        transport.supportedKeyExchanges = _strong(
            SSHServerTransport.supportedKeyExchanges,
            lambda k: b"group-exchange" not in k and not k.endswith(b"sha1"),
        )
        transport.supportedCiphers = _strong(
            SSHServerTransport.supportedCiphers, lambda c: c.endswith(b"-ctr")
        )
        transport.supportedMACs = _strong(
            SSHServerTransport.supportedMACs, lambda m: m.startswith(b"hmac-sha2-")
        )
        return transport


class SshCliService(Service):
    """Serves the management CLI over SSH on ``settings.endpoint`` (strports).

    The authorized keys and the host key are checked by :meth:`preflight`
    (before the reactor runs, under ``twistd sbc``) and again at start;
    when the SSH CLI cannot be served the SBC gives up
    (:meth:`SbcService.fail`), as it does without its management socket.
    """

    log = _log

    def __init__(self, sbc: ManagedSbc, settings: SshSettings) -> None:
        self.sbc = sbc
        self.settings = settings
        self.backend = sbc.cli_backend()
        self.authorized_keys = AuthorizedKeys(settings.authorized_keys)
        self.host_key: Key | None = None
        self.factory: CliSshFactory | None = None
        self.port: IListeningPort | None = None
        self.setName("ssh")

    def _load_host_key(self) -> Key:
        if self.host_key is None:
            key, created = load_host_key(self.settings.host_key)
            if created:
                self.log.info(
                    "generated the SSH host key {path}: {kind} {fingerprint}",
                    path=self.settings.host_key,
                    kind=key.sshType().decode(),
                    fingerprint=key_fingerprint(key.public().blob()),
                )
            self.host_key = key
        return self.host_key

    def _problems(self) -> list[str]:
        problems = list(self.authorized_keys.check())
        try:
            self._load_host_key()
        except ConfigError as error:
            problems.append(str(error))
        try:
            serverFromString(self.sbc.reactor, self.settings.endpoint)
        except ValueError as error:
            problems.append(f"bad endpoint {self.settings.endpoint!r}: {error}")
        return problems

    def preflight(self) -> list[str]:
        """What stops the SSH CLI: authorized keys, host key, endpoint syntax; one line each."""
        return [f"cannot serve the CLI over SSH: {problem}" for problem in self._problems()]

    def startService(self) -> None:
        super().startService()
        problems = self._problems()
        if problems:
            self._refuse("; ".join(problems))
            return
        assert self.host_key is not None
        self.factory = CliSshFactory(
            self.backend, self.authorized_keys, self.host_key, self.sbc.reactor
        )
        endpoint = serverFromString(self.sbc.reactor, self.settings.endpoint)
        endpoint.listen(self.factory).addCallbacks(
            self._listening, lambda f: self._refuse(f.getErrorMessage())
        )

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        assert self.host_key is not None
        self.log.info(
            "management CLI over SSH listening on {endpoint} (host key {kind} {fingerprint})",
            endpoint=self.settings.endpoint,
            kind=self.host_key.sshType().decode(),
            fingerprint=key_fingerprint(self.host_key.public().blob()),
        )

    def _refuse(self, why: str) -> None:
        self.sbc.fail(f"cannot serve the CLI over SSH on {self.settings.endpoint}: {why}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        return close_port(port)
