"""The management endpoint: a line protocol on a strports endpoint.

Each connection gets its own :class:`~sbc.cli.commands.Session`. The server
sends the prompt (``sbc# ``, no newline) when the connection opens and after
the output of every command; a client knows a reply is complete when the
data ends with a prompt. ``exit`` in exec mode closes the connection.

The default endpoint is a UNIX socket (``unix:PATH:mode=600``). A UNIX
endpoint is refused when PATH exists and is not a stale socket (a socket
nobody listens on, which is removed); the daemon then stops with a critical
log line (exit status 1 under twistd) instead of running without its
management interface; ``twistd sbc`` checks the path before starting.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import socket
import stat
import struct
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from sbc.cli.commands import (
    LineQueue,
    SbcBackend,
    Session,
)
from sbc.cli.idle import IDLE_MESSAGE, IdleTimer
from sbc.endpoints import ManagedSbc, close_port

__all__ = [
    "CliFactory",
    "CliProtocol",
    "CliService",
    "check_unix_path",
    "unix_path",
]


COMPLETE_PREFIX = b"\t"
"""A line starting with TAB asks for the completions of the rest (sbc-cli's Tab key)."""

MAX_UNIX_PATH = 107
"""Longest UNIX socket path (bytes) Linux accepts: sun_path is 108 bytes with the NUL."""


class CliProtocol(LineReceiver):
    """One management connection: lines in, output and a prompt out."""

    delimiter = b"\n"
    MAX_LENGTH = 8192

    log = Logger()

    def __init__(self, backend: SbcBackend, clock: IReactorTime | None = None) -> None:
        self.session = Session(backend)
        self.queue = LineQueue(self.session, self._answer, self._crashed)
        self.idle = (
            IdleTimer(clock, lambda: backend.running_config().limits.cli_idle_timeout, self._idle)
            if clock is not None
            else None
        )

    def connectionMade(self) -> None:
        self.session.user = peer_user(self.transport)
        self._prompt()
        if self.idle is not None:
            self.idle.touch()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.idle is not None:
            self.idle.stop()

    def _idle(self, seconds: int) -> None:
        self._write(b"\n" + IDLE_MESSAGE.format(seconds=seconds).encode() + b"\n")
        self._close()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def _prompt(self) -> None:
        self._write(self.session.prompt.encode() + b" ")

    def lineReceived(self, line: bytes) -> None:
        if self.idle is not None:
            self.idle.touch()
        if line.startswith(COMPLETE_PREFIX):
            # Tab completion (sbc-cli): the candidate words, one per line; nothing runs.
            typed = line[len(COMPLETE_PREFIX) :].rstrip(b"\r").decode("utf-8", errors="replace")
            candidates = self.session.complete(typed)
            self._write("".join(f"{c}\n" for c in candidates).encode())
            self._prompt()
            return
        self.queue.put(line.rstrip(b"\r").decode("utf-8", errors="replace"))

    def _answer(self, text: str, ok: bool) -> None:
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        if text:
            self._write(text.encode() + b"\n")
        if self.session.closed:
            self._close()
            return
        self._prompt()

    def _crashed(self, failure: Failure) -> None:
        self.log.failure("a CLI command failed", failure)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._write(b"% command line too long\n")
        self._close()


#: Linux's SO_PEERCRED (17), which PyPy's socket module does not name.
_SO_PEERCRED: int | None = getattr(
    socket, "SO_PEERCRED", 17 if sys.platform.startswith("linux") else None
)


def peer_user(transport: Any) -> str:
    """The login name of the process at the other end of a UNIX socket (SO_PEERCRED).

    ``uid N`` when the uid has no name, ``""`` when it cannot be known (a
    TCP endpoint, or a platform without SO_PEERCRED).
    """
    if _SO_PEERCRED is None:
        return ""
    try:
        handle = transport.getHandle()
        credentials = handle.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError, TypeError):
        return ""
    _, uid, _ = struct.unpack("3i", credentials)
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class CliFactory(Factory):
    """Builds a :class:`CliProtocol` (with a fresh session) per connection."""

    def __init__(self, backend: SbcBackend, clock: IReactorTime | None = None) -> None:
        self.backend = backend
        self.clock = clock

    def buildProtocol(self, addr: Any) -> CliProtocol:
        protocol = CliProtocol(self.backend, self.clock)
        protocol.factory = self
        return protocol


def unix_path(description: str) -> str | None:
    """The socket path of a ``unix:`` strports description, else None."""
    fields = _fields(description)
    if fields[0] != "unix":
        return None
    for field in fields[1:]:
        if field.startswith("address="):
            return field[len("address=") :]
    positional = [f for f in fields[1:] if "=" not in f]
    return positional[0] if positional else None


def _fields(description: str) -> list[str]:
    """The ``:``-separated fields of a strports description (``\\:`` is a literal colon)."""
    fields, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return fields


def unsafe_endpoint(description: str) -> str | None:
    """Why serving the unauthenticated CLI on ``description`` is unsafe, or None.

    The CLI has no login of its own: whoever can connect can commit. A UNIX
    socket must not be connectable by other users (its ``mode=`` must not
    grant "other" write); any other endpoint must be bound to a loopback
    interface (``interface=127.0.0.1`` or ``::1``). Remote operators use
    ``--ssh``.
    """
    fields = _fields(description)
    options = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    if fields[0] == "unix":
        mode = options.get("mode", "600")
        try:
            bits = int(mode, 8)
        except ValueError:
            return f"mode={mode} is not an octal file mode"
        if bits & 0o002:
            return f"mode={mode} lets every local user connect (and commit); use mode=600"
        return None
    interface = options.get("interface")
    if interface is None:
        return (
            "the CLI has no authentication and this endpoint listens on every address; "
            "bind it to loopback (e.g. tcp:PORT:interface=127.0.0.1) or use --ssh"
        )
    try:
        loopback = ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        loopback = interface == "localhost"
    if not loopback:
        return (
            f"the CLI has no authentication and interface={interface} is not loopback; "
            "bind it to 127.0.0.1 or ::1, or use --ssh"
        )
    return None


def check_unix_path(path: str) -> str | None:
    """Make ``path`` free for a new socket; return why it cannot be, or None.

    A stale socket (nobody accepts on it) is removed; a live socket or any
    other file is left alone and refused.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot inspect {path}: {error.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            return f"cannot check {path}: {error.strerror or error}"
    else:
        return f"{path} is in use (another sbc is running?)"
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        return f"cannot remove the stale socket {path}: {error.strerror}"
    return None


class CliService(Service):
    """Serves the management CLI of ``sbc`` on the strports ``description``.

    A ``unix:`` description without ``mode=`` gets ``mode=600``. When the
    endpoint cannot be opened the SBC gives up (:meth:`SbcService.fail`): it
    does not run without its CLI.
    """

    log = Logger()

    def __init__(self, sbc: ManagedSbc, description: str) -> None:
        if description.startswith("unix:") and ":mode=" not in description:
            description += ":mode=600"
        self.sbc = sbc
        self.description = description
        self.factory = CliFactory(sbc.cli_backend(), sbc.reactor)
        self.port: IListeningPort | None = None
        self.setName("cli")

    def startService(self) -> None:
        super().startService()
        reactor = self.sbc.reactor
        path = unix_path(self.description)
        problem = check_unix_path(path) if path is not None else None
        if problem is not None:
            self._refuse(problem)
            return
        d = serverFromString(reactor, self.description).listen(self.factory)
        d.addCallbacks(self._listening, lambda f: self._refuse(f.getErrorMessage()))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info("management CLI listening on {endpoint}", endpoint=self.description)

    def preflight(self) -> list[str]:
        """Why the endpoint is unsafe or cannot be opened, checked before the reactor runs."""
        unsafe = unsafe_endpoint(self.description)
        if unsafe is not None:
            return [f"refusing the management CLI endpoint {self.description}: {unsafe}"]
        path = unix_path(self.description)
        if path is None:
            return []
        directory = os.path.dirname(os.path.abspath(path))
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            return [
                f"cannot open the management CLI endpoint: the socket path {path} is "
                f"{len(os.fsencode(path))} bytes, more than the {MAX_UNIX_PATH} a UNIX socket "
                "allows (use --cli unix:SHORTER_PATH)"
            ]
        if not os.path.isdir(directory):
            return [f"cannot open the management CLI endpoint: {directory} is not a directory"]
        problem = check_unix_path(path)
        return [] if problem is None else [f"cannot open the management CLI endpoint: {problem}"]

    def _refuse(self, why: str) -> None:
        self.sbc.fail(f"cannot open the management CLI endpoint {self.description}: {why}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        return close_port(port)
