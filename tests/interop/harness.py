"""Harness for the wire tests: a real ``twistd -n sbc`` and real peers, all on 127.0.0.1.

- :func:`make_pki` writes a per-test PKI (the lab set of :mod:`sbc.labpki`, plus
  extra certificates on demand).
- :func:`start_sbc` renders a config with free ports, starts ``twistd -n
  --pidfile= sbc`` on it, waits for "started with" and for the listening
  sockets, and registers a cleanup that stops it by PID with SIGTERM.
- :func:`run_sipp`, :func:`start_stunnel` and :func:`start_s_client` run the
  peer tools bounded in time; :class:`StreamClient` and :class:`UdpClient`
  are raw sockets driven by the reactor.

Every wait is bounded: :func:`within` turns a Deferred into one that fails
after a number of seconds without cancelling the original.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import defer, protocol, task
from twisted.internet import ssl as twisted_ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, TestCase
from zope.interface import implementer

from sbc.labpki import Identity, issue, make_ca
from tests.support.peers import ProcessResult, RunningProcess, free_port, require_tool, run
from tests.support.pki import lab_pki

T = TypeVar("T")

HOST = "127.0.0.1"
#: The name in the SBC's lab certificate; what peers check and send as SNI.
SBC_NAME = "sbc.lab.test"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# RFC 3261 §17.1.2.2 timer E: T1 doubling, capped at T2.
T1 = 0.5
T2 = 4.0


def get_reactor() -> Any:
    """The global reactor (imported late, as trial installs it)."""
    from twisted.internet import reactor

    return reactor


def within(d: defer.Deferred[T], seconds: float, what: str) -> defer.Deferred[T]:
    """A Deferred with ``d``'s result, or a ``FailTest`` after ``seconds``.

    ``d`` itself is never cancelled (a process's ``ended`` may fire later).
    """
    reactor = get_reactor()
    out: defer.Deferred[T] = defer.Deferred()

    def expire() -> None:
        if not out.called:
            out.errback(FailTest(f"timed out after {seconds:g} s waiting for {what}"))

    timer = reactor.callLater(seconds, expire)

    def done(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if out.called:
            return
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)

    d.addBoth(done)
    return out


def pause(seconds: float) -> defer.Deferred[None]:
    """Let the reactor run for ``seconds`` (a bounded quiet period, not a sleep)."""
    return task.deferLater(get_reactor(), seconds, lambda: None)


# --- PKI ------------------------------------------------------------------


@attrs.frozen
class Pki:
    """A per-test PKI: the lab files by stem, and the CA to issue more."""

    directory: str
    paths: dict[str, str]
    ca: Identity

    def cert(self, stem: str) -> str:
        return self.paths[stem]

    def key(self, stem: str) -> str:
        return self.paths[stem + "-key"]

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        sip_uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
    ) -> tuple[str, str]:
        """A leaf signed by the lab CA with exactly these names; (cert, key) paths."""
        leaf = issue(self.ca, common_name, sip_uris=sip_uris, dns_names=dns_names)
        return leaf.write(self.directory, stem)

    def other_ca(self) -> str:
        """A second CA (not trusted by anyone here) with a leaf for sbc.lab.test.

        Returns the path of the other CA's certificate.
        """
        other = make_ca("another CA (testing only)")
        cert, _ = other.write(self.directory, "other-ca")
        leaf = issue(other, SBC_NAME, sip_uris=["sip:" + SBC_NAME], dns_names=[SBC_NAME])
        leaf.write(self.directory, "other-leaf")
        return cert


def make_pki(directory: str) -> Pki:
    """Write the lab PKI into ``directory`` (ca, sbc, peer, client) and load its CA."""
    directory = os.path.abspath(directory)
    paths = lab_pki(directory)
    with open(paths["ca"], "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    with open(paths["ca-key"], "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Pki(directory, paths, Identity(certificate, key))


# --- the SBC --------------------------------------------------------------


@attrs.frozen
class AdjacencySpec:
    """One adjacency of a generated config (port 0: pick a free one)."""

    name: str
    security: str = "untrusted"
    transport: str | None = None
    port: int = 0
    remote_prefix: str | None = "127.0.0.0/8"


#: The default topology: an untrusted UDP+TCP access and a TLS adjacency.
STANDARD = (
    AdjacencySpec("access", "untrusted", "udp-tcp"),
    AdjacencySpec("tls", "trusted-encrypted"),
)


def adjacency_lines(adjacency: Any) -> list[str]:
    """The ``adjacency sip`` block of one spec (an AdjacencySpec or a richer one).

    Optional settings the spec may carry: ``transport``, ``remote_prefix``,
    ``signaling_peer``, ``signaling_peer_port`` and ``outbound`` (a separate
    outbound security; ``security`` then sets the inbound side only).
    """
    lines = [
        f"  adjacency sip {adjacency.name}",
        f"   signaling-address ipv4 {HOST}",
        f"   signaling-port {adjacency.port}",
    ]
    optional = (
        ("transport", "transport"),
        ("remote_prefix", "remote-address ipv4"),
        ("signaling_peer", "signaling-peer"),
        ("signaling_peer_port", "signaling-peer-port"),
    )
    for attribute, command in optional:
        value = getattr(adjacency, attribute, None)
        if value is not None:
            lines.append(f"   {command} {value}")
    outbound = getattr(adjacency, "outbound", None)
    if outbound is None:
        lines.append(f"   security {adjacency.security}")
    else:
        lines += [f"   security inbound {adjacency.security}", f"   security outbound {outbound}"]
    lines.append("   attach")
    return lines


def render_config(
    service: str,
    adjacencies: Sequence[AdjacencySpec],
    local_domain: str = "lab.test",
    sbe: Sequence[str] = (),
) -> str:
    """The config text for ``adjacencies`` (every port already chosen), then ``sbe`` lines."""
    lines = ["! generated by tests/interop/harness.py for one test", f"sbc {service}", " sbe"]
    lines.append(f"  local-domain {local_domain}")
    for adjacency in adjacencies:
        lines += adjacency_lines(adjacency)
    lines += ["  " + line for line in sbe]
    return "\n".join(lines) + "\n"


def _listening_sockets() -> set[tuple[int, bool]]:
    """(port, is_udp) of every socket listening on 127.0.0.0/8 or any address, from /proc/net.

    TCP sockets in LISTEN state and unconnected bound UDP sockets.
    """
    found = set()
    for table, udp, state in (
        ("tcp", False, "0A"), ("tcp6", False, "0A"), ("udp", True, "07"), ("udp6", True, "07"),
    ):  # fmt: skip
        try:
            with open(f"/proc/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, port_hex = fields[1].rpartition(":")
            # any 127.0.0.0/8 address (little-endian hex: ...7F) or any address
            loopback = len(address) == 8 and address.endswith("7F")
            if fields[3] == state and (loopback or set(address) == {"0"}):
                found.add((int(port_hex, 16), udp))
    return found


def udp_drops(port: int) -> int | None:
    """The kernel's drop counter of the UDP socket bound to 127.0.0.1:port (/proc/net/udp).

    Datagrams the kernel discarded because the socket's receive buffer was
    full; None when no such socket exists.
    """
    with open("/proc/net/udp") as f:
        rows = f.read().splitlines()[1:]
    for row in rows:
        fields = row.split()
        address, _, port_hex = fields[1].rpartition(":")
        if int(port_hex, 16) == port and address in ("0100007F", "00000000"):
            return int(fields[-1])
    return None


class SbcProcess:
    """A running ``twistd -n sbc``; stopped (SIGTERM, by PID) in the test's cleanup."""

    def __init__(
        self, child: RunningProcess, adjacencies: Sequence[AdjacencySpec], config_path: str
    ) -> None:
        self.child = child
        self.adjacencies = {a.name: a for a in adjacencies}
        self.config_path = config_path

    def port(self, name: str) -> int:
        return self.adjacencies[name].port

    def output(self) -> str:
        return self.child.output()

    def tail(self, lines: int = 40) -> str:
        """The last log lines, for failure messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """SIGTERM, SIGKILL after 10 s; then fail if the SBC logged a traceback."""
        result = yield self.child.stop_within(10.0)
        text = result.text()
        # Kept in the trial temp directory for post-mortems.
        with open(os.path.join(os.path.dirname(self.config_path), "sbc.log"), "w") as f:
            f.write(text)
        if "Traceback (most recent call last)" in text or "Unhandled Error" in text:
            raise FailTest("the SBC logged an unhandled error:\n" + text[-6000:])
        return result


@defer.inlineCallbacks
def start_sbc(
    case: TestCase,
    pki: Pki,
    adjacencies: Sequence[AdjacencySpec] = STANDARD,
    *,
    service: str = "interop",
    extra_args: Sequence[str] = (),
    sbe: Sequence[str] = (),
) -> Any:
    """Start a real ``twistd -n --pidfile= sbc`` on a generated config.

    Ports left at 0 get free ports on 127.0.0.1; ``extra_args`` are added to
    the ``twistd sbc`` options (``--metrics ...``, ``--ssh ...``); ``sbe``
    lines go at the end of the ``sbe`` block (``limits``...). Fires with an
    :class:`SbcProcess` once the daemon logged "started with N adjacencies"
    and every attached adjacency's sockets are listening.
    """
    for attempt in range(3):
        chosen = [a if a.port else attrs.evolve(a, port=free_port()) for a in adjacencies]
        config = render_config(service, chosen, sbe=sbe)
        try:
            sbc = yield launch_sbc(case, pki, chosen, config, extra_args)
        except FailTest as error:
            # another process took a free port between free_port() and the bind:
            # try other ports (a race of parallel test runs, not a failure of sbc)
            if "Address already in use" not in str(error) or attempt == 2:
                raise
            continue
        return sbc
    raise AssertionError("unreachable")


def sbc_command(
    config_path: str, cli_socket: str, pki: Pki, extra_args: Sequence[str] = ()
) -> list[str]:
    """The ``twistd -n --pidfile= sbc`` command line of the interop tests."""
    return [
        TWISTD, "--pidfile=", "-n", "sbc", "--config", config_path,
        "--cli", f"unix:{cli_socket}:mode=600",
        "--certificate", pki.cert("sbc"), "--private-key", pki.key("sbc"),
        "--ca-certificates", pki.cert("ca"), *extra_args,
    ]  # fmt: skip


@defer.inlineCallbacks
def launch_sbc(
    case: TestCase,
    pki: Pki,
    adjacencies: Sequence[Any],
    config_text: str,
    extra_args: Sequence[str] = (),
) -> Any:
    """Write ``config_text`` to a fresh directory and start the daemon on it.

    Fires with an :class:`SbcProcess` once it logged "started with" and
    every adjacency's sockets listen; stopped by PID in the test's clean-up.
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    config_path = os.path.join(directory, "sbc.conf")
    with open(config_path, "w") as f:
        f.write(config_text)
    # UNIX socket paths are limited to ~107 bytes: the trial temp path is too long.
    cli_directory = tempfile.mkdtemp(prefix="sbc-interop-")
    case.addCleanup(shutil.rmtree, cli_directory, True)
    args = sbc_command(config_path, os.path.join(cli_directory, "sbc.cli"), pki, extra_args)
    child = RunningProcess(get_reactor(), args, cwd=directory)
    sbc = SbcProcess(child, adjacencies, config_path)
    case.addCleanup(sbc.stop)
    try:
        yield within(child.output_contains(b"started with"), 30.0, "the SBC to start")
    except Exception as error:
        raise FailTest(f"the SBC did not start: {error}\n{sbc.tail()}") from None
    yield wait_listening(sbc)
    return sbc


@defer.inlineCallbacks
def wait_listening(sbc: SbcProcess, seconds: float = 5.0) -> Any:
    """Poll /proc/net (every 50 ms, at most ``seconds``) until every listener is up."""
    wanted = []
    for adjacency in sbc.adjacencies.values():
        transport = adjacency.transport or "udp-tcp"
        if adjacency.security.startswith("trusted-encrypted") or transport != "udp":
            wanted.append((adjacency.port, False))
        if not adjacency.security.startswith("trusted-encrypted") and transport != "tcp":
            wanted.append((adjacency.port, True))
    for _ in range(int(seconds / 0.05) + 1):
        listening = _listening_sockets()
        missing = [(p, u) for p, u in wanted if (p, u) not in listening]
        if not missing:
            return None
        yield pause(0.05)
    described = ", ".join(f"{'UDP' if u else 'TCP'} {HOST}:{p}" for p, u in missing)
    raise FailTest(f"the SBC logged 'started with' but does not listen on {described}")


# --- peer tools -----------------------------------------------------------


def run_sipp(
    case: TestCase,
    scenario: str,
    remote_port: int,
    *,
    transport: str = "u1",
    keys: dict[str, str] | None = None,
    calls: int = 1,
    seconds: int = 10,
) -> defer.Deferred[ProcessResult]:
    """Run SIPp (``-m calls``, ``-timeout``, ``-timeout_error``) against 127.0.0.1:remote_port.

    ``transport`` is SIPp's ``-t`` (``u1`` UDP, ``t1`` TCP). ``keys`` become
    ``-key NAME VALUE`` (``[NAME]`` in the scenario). Killed after
    ``seconds`` + 10 if SIPp itself hangs.
    """
    sipp = require_tool("sipp")
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    args = [
        sipp, "-sf", os.path.join(SCENARIOS, scenario),
        "-m", str(calls), "-timeout", f"{seconds}s", "-timeout_error",
        "-t", transport, "-i", HOST, "-p", str(free_port()), "-nostdin",
        "-trace_err", "-error_file", os.path.join(directory, "errors.log"),
    ]  # fmt: skip
    for name, value in (keys or {}).items():
        args += ["-key", name, value]
    args.append(f"{HOST}:{remote_port}")
    return run(get_reactor(), args, timeout=seconds + 10.0, cwd=directory)


@defer.inlineCallbacks
def start_stunnel(
    case: TestCase,
    *,
    connect_port: int,
    cert: str,
    key: str,
    ca: str,
    check_host: str = SBC_NAME,
) -> Any:
    """stunnel4 in the foreground, client mode: plain TCP in, TLS with ``cert`` out.

    It verifies the SBC (``verifyChain``, ``CAfile``, ``checkHost``) and sends
    SNI. Fires with (accept port, RunningProcess) once it is listening;
    stopped by PID in cleanup.
    """
    binary = require_tool("stunnel4")
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    accept_port = free_port()
    config = os.path.join(directory, "stunnel.conf")
    with open(config, "w") as f:
        f.write(
            "foreground = yes\n"
            "pid =\n"
            "syslog = no\n"
            "debug = info\n"
            "[sbc]\n"
            "client = yes\n"
            f"accept = {HOST}:{accept_port}\n"
            f"connect = {HOST}:{connect_port}\n"
            f"cert = {cert}\n"
            f"key = {key}\n"
            f"CAfile = {ca}\n"
            "verifyChain = yes\n"
            f"checkHost = {check_host}\n"
            f"sni = {check_host}\n"
            "sslVersionMin = TLSv1.2\n"
        )
    child = RunningProcess(get_reactor(), [binary, config], cwd=directory)
    case.addCleanup(_stop_child, child)
    marker = f"bound to {HOST}:{accept_port}".encode()
    yield within(child.output_contains(marker), 15.0, "stunnel to listen")
    return accept_port, child


def start_s_client(
    case: TestCase,
    port: int,
    *,
    ca: str,
    cert: str | None = None,
    key: str | None = None,
    extra: Sequence[str] = (),
) -> RunningProcess:
    """``openssl s_client -brief`` to 127.0.0.1:port, verifying the server, SNI sbc.lab.test.

    Its stdin stays open (write with ``child.process.write``; close with
    ``closeStdin``); it is killed in cleanup if still running.
    """
    openssl = require_tool("openssl")
    args = [
        openssl, "s_client", "-brief", "-connect", f"{HOST}:{port}", "-CAfile", ca,
        "-verify_return_error", "-servername", SBC_NAME,
    ]  # fmt: skip
    if cert is not None and key is not None:
        args += ["-cert", cert, "-key", key]
    args += list(extra)
    child = RunningProcess(get_reactor(), args)
    case.addCleanup(_stop_child, child, signal.SIGKILL)
    return child


def _stop_child(child: RunningProcess, sig: int = signal.SIGTERM) -> defer.Deferred[Any]:
    reactor = get_reactor()
    killer = reactor.callLater(10.0, child.stop, signal.SIGKILL)

    def done(result: Any) -> Any:
        if killer.active():
            killer.cancel()
        return result

    return child.stop(sig).addBoth(done).addCallback(lambda _: None)


# --- SIP messages ---------------------------------------------------------


def new_call_id() -> str:
    return f"{random.getrandbits(64):016x}@interop.test"


def sip_request(
    *,
    uri: str,
    via_transport: str,
    local_port: int,
    call_id: str,
    method: str = "OPTIONS",
    from_uri: str = "sip:interop@lab.test",
    to_uri: str | None = None,
    cseq: str | None = None,
    max_forwards: int | None = 70,
    version: str = "SIP/2.0",
    via: bool = True,
    extra: Sequence[str] = (),
    body: bytes = b"",
) -> bytes:
    """A request, every header written out (Content-Length always present)."""
    lines = [f"{method} {uri} {version}"]
    if via:
        branch = f"z9hG4bK{random.getrandbits(48):012x}"
        lines.append(f"Via: SIP/2.0/{via_transport} {HOST}:{local_port};rport;branch={branch}")
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        f"From: <{from_uri}>;tag={random.getrandbits(32):08x}",
        f"To: <{to_uri or uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq or '1 ' + method}",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


@attrs.frozen
class Response:
    """The status line and header lines of a SIP response, as received."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes

    def header(self, name: str, compact: str | None = None) -> list[str]:
        names = {name.lower()} | ({compact.lower()} if compact else set())
        return [value for key, value in self.headers if key.lower() in names]


_STATUS_LINE = re.compile(r"^(SIP/\d+\.\d+) (\d{3}) ?(.*)$")


def parse_response(data: bytes) -> Response | None:
    """A response's status line and headers, or None if ``data`` is not a response."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", errors="replace")
    lines = head.split("\r\n")
    match = _STATUS_LINE.match(lines[0])
    if match is None:
        return None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return Response(match[1], int(match[2]), match[3], headers, data)


def call_id_of(data: bytes) -> str | None:
    parsed = parse_response(data)
    if parsed is None:
        return None
    values = parsed.header("Call-ID", "i")
    return values[0] if values else None


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (Python's ssl module, in memory)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname=SBC_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        connection.do_handshake()
    return outgoing.read()


# --- raw sockets ----------------------------------------------------------


class ConnectionClosedError(Exception):
    """The connection ended before the awaited condition held."""


@implementer(IHandshakeListener)
class StreamClient(protocol.Protocol):
    """A TCP (or TLS) client that records what it receives and when it is closed."""

    def __init__(self) -> None:
        self.received = b""
        self.handshake_done = False
        self.lost: Failure | None = None
        self._waiters: list[tuple[Callable[[StreamClient], bool], defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self._check()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason
        self._check()

    def _check(self) -> None:
        for condition, waiter in list(self._waiters):
            if condition(self):
                self._waiters.remove((condition, waiter))
                waiter.callback(None)
            elif self.lost is not None:
                self._waiters.remove((condition, waiter))
                waiter.errback(
                    ConnectionClosedError(
                        f"closed ({self.lost.value!r}); received {self.received!r}"
                    )
                )

    def wait(
        self, condition: Callable[[StreamClient], bool], seconds: float, what: str
    ) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((condition, waiter))
        self._check()
        return within(waiter, seconds, what)

    def wait_for(self, marker: bytes, seconds: float = 5.0) -> defer.Deferred[None]:
        return self.wait(lambda c: marker in c.received, seconds, f"{marker!r}")

    def wait_closed(self, seconds: float = 5.0) -> defer.Deferred[None]:
        return self.wait(lambda c: c.lost is not None, seconds, "the connection to close")

    def wait_handshake(self, seconds: float = 5.0) -> defer.Deferred[None]:
        return self.wait(lambda c: c.handshake_done, seconds, "the TLS handshake")

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def local_port(self) -> int:
        assert self.transport is not None
        return int(self.transport.getHost().port)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.lost is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


@defer.inlineCallbacks
def connect_stream(
    case: TestCase, port: int, tls: IOpenSSLClientConnectionCreator | None = None
) -> Any:
    """A :class:`StreamClient` connected to 127.0.0.1:port (TLS when ``tls`` is given)."""
    endpoint: Any = TCP4ClientEndpoint(get_reactor(), HOST, port, timeout=5)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    client = StreamClient()
    yield within(connectProtocol(endpoint, client), 10.0, f"a connection to port {port}")
    case.addCleanup(client.close)
    return client


def tls_client_options(ca: str, cert: str, key: str) -> IOpenSSLClientConnectionCreator:
    """Twisted client TLS: verify sbc.lab.test against ``ca``, present ``cert``."""
    with open(ca, "rb") as f:
        trust = twisted_ssl.Certificate.loadPEM(f.read())
    with open(cert, "rb") as f, open(key, "rb") as g:
        client = twisted_ssl.PrivateCertificate.loadPEM(f.read() + g.read())
    return twisted_ssl.optionsForClientTLS(SBC_NAME, trustRoot=trust, clientCertificate=client)


class UdpClient(protocol.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that records every datagram it receives."""

    def __init__(self, target_port: int) -> None:
        self.target = (HOST, target_port)
        self.datagrams: list[bytes] = []
        self._waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.datagrams.append(datagram)
        for condition, waiter in list(self._waiters):
            if condition(datagram):
                self._waiters.remove((condition, waiter))
                waiter.callback(datagram)

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        return int(self.transport.getHost().port)

    def send(self, datagram: bytes) -> None:
        assert self.transport is not None
        self.transport.write(datagram, self.target)

    def wait_datagram(
        self, condition: Callable[[bytes], bool], seconds: float, what: str
    ) -> defer.Deferred[bytes]:
        waiter: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((condition, waiter))
        return within(waiter, seconds, what)

    @defer.inlineCallbacks
    def transact(self, request: bytes, call_id: str, seconds: float = 8.0) -> Any:
        """Send ``request``, retransmitting per timer E, until a final response comes.

        Fires with the :class:`Response` whose Call-ID is ``call_id`` and
        status is >= 200; fails after ``seconds``.
        """
        reactor = get_reactor()

        def is_final(datagram: bytes) -> bool:
            parsed = parse_response(datagram)
            return (
                parsed is not None
                and parsed.status >= 200
                and call_id in parsed.header("Call-ID", "i")
            )

        waiter = self.wait_datagram(is_final, seconds, f"a final response to {call_id}")
        interval = [T1]
        timer: list[Any] = []

        def retransmit() -> None:
            self.send(request)
            interval[0] = min(interval[0] * 2, T2)
            timer[:] = [reactor.callLater(interval[0], retransmit)]

        self.send(request)
        timer.append(reactor.callLater(interval[0], retransmit))
        try:
            datagram = yield waiter
        finally:
            if timer and timer[0].active():
                timer[0].cancel()
        return parse_response(datagram)


def open_udp(case: TestCase, target_port: int) -> UdpClient:
    """A :class:`UdpClient` bound to 127.0.0.1 (closed in cleanup)."""
    client = UdpClient(target_port)
    port = get_reactor().listenUDP(0, client, interface=HOST)
    case.addCleanup(port.stopListening)
    return client


@defer.inlineCallbacks
def send_options(case: TestCase, port: int) -> Any:
    """An OPTIONS to the SBC's own address on UDP ``port``; fires with the parsed response."""
    client = open_udp(case, port)
    call_id = new_call_id()
    request = sip_request(
        uri=f"sip:{HOST}:{port}", via_transport="UDP", local_port=client.local_port,
        call_id=call_id,
    )  # fmt: skip
    response = yield client.transact(request, call_id)
    return response
