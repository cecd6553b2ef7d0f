"""TLS benchmark: memory per idle TLS connection, and SIPS calls over TLS against UDP.

Run from the repository root::

    .venv/bin/python benchmarks/bench_tls.py [--connections 1000] [--rates 200,400]
        [--seconds 10] [--drain 34]

What it does, all on 127.0.0.1 with free ports, with a lab PKI written by
``sbc-lab-pki`` into a temporary directory (plus ``uas.pem``, a far-side
certificate for ``sip:far.test`` and iPAddress 127.0.0.1 from the same CA):

1. **Idle TLS connections.** Starts ``twistd -n --pidfile= sbc`` (pinned to
   CPU 0) with the configuration below, whose ``limits`` allow the
   connections; this process (pinned to CPU 1) opens and closes a few
   warm-up connections, reads the SBC's VmRSS, then opens ``--connections``
   TLS connections to the trusted-encrypted adjacency ``tls-in`` with
   Python's ``ssl`` and the lab client certificate, and keeps them idle. It
   waits until the SBC counts that many verified handshakes (``sbc-cli``:
   ``show services sbc bench sbe adjacencies tls-in detail``) and its VmRSS
   is steady, reads VmRSS again and reports KiB per idle connection (and
   CPU per handshake), then closes them.
2. **SIPS calls over persistent TLS against SIP over UDP.** SIPp 3.6 here
   has no TLS, so stunnel4 carries it: a client service (lab client
   certificate ``sip:lab.test``, checks ``sbc.lab.test``) from SIPp's one
   TCP connection to ``tls-in``, and a server service (``uas.pem``, requires
   a client certificate from the lab CA) in front of the SIPp UAS's TCP port,
   which is the ``signaling-peer 127.0.0.1`` of ``tls-out``: one TLS
   connection on each side carries every call. The UDP run sends the same
   scenario (``benchmarks/scenarios/tls_uac.xml`` / ``tls_uas.xml``, ``sip:``
   instead of ``sips:``) from ``udp-in`` (untrusted) to ``udp-out``
   (trusted-unencrypted) over UDP. SIPp and stunnel are pinned to CPU 1.
   Each transport gets a fresh SBC with the same configuration; each step is
   ``rate x --seconds`` calls (hold 100 ms), then ``--drain`` seconds of
   rest so the transactions of its calls expire (Timers D, J, L, M: 32 s);
   the SBC's CPU (utime + stime) over step and drain, divided by the
   completed calls, is the figure compared (the CPU while the calls run is
   shown too).

This is a benchmark, not a test: it asserts nothing. It exits 0 unless
something could not start (then 2); when part 2 cannot run, part 1 is still
reported. Every process it starts is stopped by PID at the end, on error
too; every wait is bounded. Helpers come from ``bench_calls.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bench_calls as bc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sbc.labpki import Identity, issue

HOST = bc.HOST
SERVICE = "bench"
#: The name in the SBC's lab certificate: what clients check and send as SNI.
SBC_NAME = "sbc.lab.test"
BIN = Path(sys.executable).parent
SBC_CLI = BIN / "sbc-cli"
LAB_PKI = BIN / "sbc-lab-pki"
DEFAULT_RATES = (200, 400)
HOLD_MS = 100
#: Warm-up connections opened and closed before the baseline reading.
WARM_UP = 16


# --- small helpers --------------------------------------------------------


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tcp_listening(port: int) -> bool:
    """A TCP socket listens on 127.0.0.1:port or *:port (/proc/net/tcp, state 0A)."""
    with open("/proc/net/tcp") as f:
        rows = f.read().splitlines()[1:]
    for row in rows:
        fields = row.split()
        address, _, port_hex = fields[1].rpartition(":")
        if fields[3] == "0A" and int(port_hex, 16) == port and address in ("0100007F", "00000000"):
            return True
    return False


def wait_for(what: str, seconds: float, ready: Callable[[], bool], interval: float = 0.25) -> bool:
    """Poll ``ready()`` every ``interval`` for at most ``seconds``; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(interval)
    print(f"  {what}: not reached after {seconds:g} s", flush=True)
    return False


@dataclass
class Pki:
    """Paths of the lab PKI files used here."""

    ca: Path
    sbc: tuple[Path, Path]
    client: tuple[Path, Path]
    uas: tuple[Path, Path]


def make_pki(directory: Path) -> Pki:
    """``sbc-lab-pki DIR``, plus ``uas.pem`` (``sip:far.test``, 127.0.0.1) for the far side."""
    try:
        subprocess.run([str(LAB_PKI), str(directory)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise bc.BenchError(f"sbc-lab-pki failed: {error}") from None
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    # signaling-peer is an IP address: the SBC checks the Request-URI's domain, far.test
    leaf = issue(
        Identity(ca_cert, ca_key), "far.test", sip_uris=["sip:far.test"], ip_addresses=[HOST]
    )
    leaf.write(str(directory), "uas")

    def pair(stem: str) -> tuple[Path, Path]:
        return directory / f"{stem}.pem", directory / f"{stem}.key"

    return Pki(directory / "ca.pem", pair("sbc"), pair("client"), pair("uas"))


# --- the SBC --------------------------------------------------------------


@dataclass
class Ports:
    """Every port of the run, chosen once (each SBC instance reuses them)."""

    udp_in: int
    udp_out: int
    tls_in: int
    tls_out: int
    uas_udp: int
    uas_tcp: int
    stunnel_client: int
    stunnel_server: int


def sbc_config(ports: Ports, max_connections: int) -> str:
    """Four adjacencies, the limits for the idle connections, routing by source."""

    def adjacency(name: str, port: int, security: str, *rest: str) -> list[str]:
        return [
            f"  adjacency sip {name}",
            f"   signaling-address ipv4 {HOST}",
            f"   signaling-port {port}",
            *(f"   {line}" for line in rest),
            f"   security {security}",
            "   attach",
        ]

    return "\n".join(
        [
            "! generated by benchmarks/bench_tls.py",
            f"sbc {SERVICE}",
            " sbe",
            "  limits",
            f"   max-connections-per-adjacency {max_connections}",
            f"   max-connections-per-source {max_connections}",
            # measured without the flood defence (benchmarks/bench_flood.py measures it)
            "   source-rate-limit 1000000 10",
            "   max-new-connections-per-second 1000000",
            "   max-tls-handshakes-per-second 1000000",
            *adjacency("udp-in", ports.udp_in, "untrusted", "transport udp"),
            *adjacency(
                "udp-out",
                ports.udp_out,
                "trusted-unencrypted",
                "transport udp",
                f"signaling-peer {HOST}",
                f"signaling-peer-port {ports.uas_udp}",
            ),
            *adjacency("tls-in", ports.tls_in, "trusted-encrypted"),
            *adjacency(
                "tls-out",
                ports.tls_out,
                "trusted-encrypted",
                f"signaling-peer {HOST}",
                f"signaling-peer-port {ports.stunnel_server}",
            ),
            "  call-policy-set 1",
            "   first-call-routing-table by-source",
            "   rtg-src-adjacency-table by-source",
            "    entry 1",
            "     match-adjacency udp-in",
            "     dst-adjacency udp-out",
            "     action complete",
            "    entry 2",
            "     match-adjacency tls-in",
            "     dst-adjacency tls-out",
            "     action complete",
            "  active-call-policy-set 1",
            "  routing-policy default",
            "",
        ]
    )


@dataclass
class RunningSbc:
    child: subprocess.Popen[bytes]
    log: Path
    cli_socket: Path

    @property
    def pid(self) -> int:
        return self.child.pid

    def cli(self, command: str) -> str:
        """One ``sbc-cli -c COMMAND`` over the daemon's UNIX socket (bounded)."""
        try:
            done = subprocess.run(
                [str(SBC_CLI), "--socket", str(self.cli_socket), "-c", command],
                capture_output=True,
                timeout=20,
                env=bc.child_env(None),
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"% sbc-cli failed: {error}"
        return done.stdout.decode(errors="replace")

    def counters(self, adjacency: str) -> dict[str, int]:
        """The counters of ``show ... adjacencies ADJ detail``, by name."""
        text = self.cli(f"show services sbc {SERVICE} sbe adjacencies {adjacency} detail")
        values = {}
        for match in re.finditer(r"^\s+(\S+)\s+(\d+)\s*$", text, re.MULTILINE):
            values[match[1]] = int(match[2])
        return values


def start_sbc(
    procs: bc.Processes, bench: bc.Bench, pki: Pki, ports: Ports, config: str, tag: str
) -> RunningSbc:
    """A fresh ``twistd -n sbc`` on ``config``, pinned, once it listens everywhere."""
    path = bench.workdir / f"sbc-{tag}.conf"
    path.write_text(config)
    log = bench.workdir / f"sbc-{tag}.log"
    cli_socket = bench.workdir / f"{tag}.cli"
    twistd = [
        str(bc.TWISTD), "-n", "--pidfile=", "sbc", "--config", str(path),
        "--cli", f"unix:{cli_socket}:mode=600",
        "--certificate", str(pki.sbc[0]), "--private-key", str(pki.sbc[1]),
        "--ca-certificates", str(pki.ca),
    ]  # fmt: skip
    child = procs.start(
        f"the SBC ({tag})", [*bench.pin_target, *twistd], log=log,
        env=bc.child_env(None), cwd=bench.workdir,
    )  # fmt: skip
    bc.wait_until(
        f"the SBC ({tag})",
        30.0,
        lambda: (
            "started with" in log.read_text(errors="replace")
            and bc.udp_listening(ports.udp_in)
            and bc.udp_listening(ports.udp_out)
            and tcp_listening(ports.tls_in)
            and tcp_listening(ports.tls_out)
            and cli_socket.exists()
        ),
        child,
    )
    print(f"sbc ({tag}): pid {child.pid}, RSS {bc.rss_kib(child.pid) / 1024:.1f} MiB", flush=True)
    return RunningSbc(child, log, cli_socket)


# --- part 1: idle TLS connections -----------------------------------------


@dataclass
class IdleResult:
    connections: int
    opened: int
    handshakes: int
    closed_by_sbc: int
    tls_version: str
    cipher: str
    open_seconds: float
    handshake_cpu_ms: float
    rss_start_kib: int
    rss_before_kib: int
    rss_after_kib: int
    rss_closed_kib: int

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(self.opened, 1)


def client_context(pki: Pki) -> ssl.SSLContext:
    """Python TLS client: verifies sbc.lab.test against the lab CA, presents client.pem."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client[0]), str(pki.client[1]))
    return context


def open_tls(context: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:port, handshake done (blocking, 10 s bounds)."""
    sock = socket.create_connection((HOST, port), timeout=10.0)
    try:
        return context.wrap_socket(sock, server_hostname=SBC_NAME)
    except BaseException:
        sock.close()
        raise


def steady_rss(pid: int, seconds: float = 15.0) -> int:
    """VmRSS once two readings 1 s apart differ by less than 64 KiB (at most ``seconds``)."""
    last = bc.rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = bc.rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def idle_connections(
    procs: bc.Processes, bench: bc.Bench, pki: Pki, ports: Ports, config: str, count: int
) -> IdleResult:
    """Part 1: KiB of SBC memory per idle, verified TLS connection."""
    sbc = start_sbc(procs, bench, pki, ports, config, "idle")
    context = client_context(pki)
    sockets: list[ssl.SSLSocket] = []
    try:
        rss_start = bc.rss_kib(sbc.pid)
        for _ in range(WARM_UP):  # first-use costs (OpenSSL, imports, caches) out of the way
            open_tls(context, ports.tls_in).close()
        wait_for(
            "warm-up handshakes",
            20.0,
            lambda: sbc.counters("tls-in").get("handshakes", 0) >= WARM_UP,
        )
        time.sleep(1.0)
        base = sbc.counters("tls-in")
        rss_before = steady_rss(sbc.pid)
        cpu_before = bc.cpu_ms(sbc.pid)
        started = time.monotonic()
        try:
            for _ in range(count):
                sockets.append(open_tls(context, ports.tls_in))
        except OSError as error:
            print(f"  idle: connection {len(sockets) + 1} failed: {error!r}", flush=True)
        open_seconds = time.monotonic() - started
        wanted = base.get("handshakes", 0) + len(sockets)
        wait_for(
            f"{len(sockets)} handshakes counted by the SBC",
            60.0,
            lambda: sbc.counters("tls-in").get("handshakes", 0) >= wanted,
            interval=0.5,
        )
        handshake_cpu = bc.cpu_ms(sbc.pid) - cpu_before
        rss_after = steady_rss(sbc.pid)
        now = sbc.counters("tls-in")
        tls_version = (sockets[0].version() or "?") if sockets else "-"
        suite = sockets[0].cipher() if sockets else None
        cipher = suite[0] if suite is not None else "-"
    finally:
        for sock in sockets:
            sock.close()
    try:
        time.sleep(2.0)
        rss_closed = steady_rss(sbc.pid)
    finally:
        procs.stop(sbc.child)
    problems = bc.log_problems(sbc.log.read_text(errors="replace"))
    for line in problems:
        print("  sbc log: " + line)
    return IdleResult(
        connections=count,
        opened=len(sockets),
        handshakes=now.get("handshakes", 0) - base.get("handshakes", 0),
        closed_by_sbc=now.get("connections-closed", 0) - base.get("connections-closed", 0),
        tls_version=tls_version,
        cipher=cipher,
        open_seconds=open_seconds,
        handshake_cpu_ms=handshake_cpu,
        rss_start_kib=rss_start,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        rss_closed_kib=rss_closed,
    )


# --- part 2: calls over TLS and UDP ----------------------------------------


@dataclass
class Transport:
    """How one run reaches the SBC."""

    name: str  # "udp" or "tls"
    sipp_transport: str  # SIPp -t
    target_port: int  # where the UAC sends
    scheme: str
    uas_port: int


@dataclass
class CallStep:
    step: bc.Step
    cpu_calls_ms: float  # CPU while the calls ran (no drain)

    @property
    def ms_per_call_calls(self) -> float | None:
        c = self.step.completed
        return self.cpu_calls_ms / c if c else None


def start_uas(procs: bc.Processes, bench: bc.Bench, transport: Transport) -> None:
    """A SIPp UAS (``tls_uas.xml``) on ``transport.uas_port``, pinned to the load CPU."""
    directory = bench.workdir / f"uas-{transport.name}"
    directory.mkdir()
    args = [
        *bench.pin_load, bench.sipp, "-sf", str(bc.SCENARIOS / "tls_uas.xml"),
        "-i", HOST, "-p", str(transport.uas_port), "-t", transport.sipp_transport,
        "-key", "contact_scheme", transport.scheme, "-nostdin",
        "-trace_err", "-error_file", str(directory / "errors.log"), "-max_log_size", "1000000",
    ]  # fmt: skip
    child = procs.start(
        f"SIPp UAS ({transport.name})", args, log=directory / "screen.log", cwd=directory
    )
    if transport.sipp_transport == "u1":
        ready = lambda: bc.udp_listening(transport.uas_port)  # noqa: E731
    else:
        ready = lambda: tcp_listening(transport.uas_port)  # noqa: E731
    bc.wait_until(f"SIPp UAS ({transport.name})", 10.0, ready, child)


def start_stunnel(procs: bc.Processes, bench: bc.Bench, pki: Pki, ports: Ports) -> Path:
    """One stunnel4 with two services: client toward tls-in, server in front of the UAS."""
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    if binary is None:
        raise bc.BenchError("stunnel4 not found (apt-get install stunnel4)")
    directory = bench.workdir / "stunnel"
    directory.mkdir()
    config = directory / "stunnel.conf"
    config.write_text(
        "foreground = yes\n"
        "pid =\n"
        "syslog = no\n"
        "debug = info\n"
        "socket = l:TCP_NODELAY=1\n"
        "socket = r:TCP_NODELAY=1\n"
        "[to-sbc]\n"
        "client = yes\n"
        f"accept = {HOST}:{ports.stunnel_client}\n"
        f"connect = {HOST}:{ports.tls_in}\n"
        f"cert = {pki.client[0]}\n"
        f"key = {pki.client[1]}\n"
        f"CAfile = {pki.ca}\n"
        "verifyChain = yes\n"
        f"checkHost = {SBC_NAME}\n"
        f"sni = {SBC_NAME}\n"
        "sslVersionMin = TLSv1.2\n"
        "[from-sbc]\n"
        f"accept = {HOST}:{ports.stunnel_server}\n"
        f"connect = {HOST}:{ports.uas_tcp}\n"
        f"cert = {pki.uas[0]}\n"
        f"key = {pki.uas[1]}\n"
        f"CAfile = {pki.ca}\n"
        "verifyChain = yes\n"
        "sslVersionMin = TLSv1.2\n"
    )
    log = directory / "stunnel.log"
    child = procs.start("stunnel4", [*bench.pin_load, binary, str(config)], log=log, cwd=directory)
    bc.wait_until(
        "stunnel4",
        15.0,
        lambda: tcp_listening(ports.stunnel_client) and tcp_listening(ports.stunnel_server),
        child,
    )
    return log


def run_uac(
    procs: bc.Processes, bench: bc.Bench, transport: Transport, *, rate: int, calls: int, tag: str
) -> bc.SippStats | None:
    """One bounded SIPp UAC run of ``tls_uac.xml``."""
    directory = bench.workdir / f"uac-{tag}"
    directory.mkdir()
    stat_file = directory / "stat.csv"
    limit = int(calls / rate + HOLD_MS / 1000.0 + bc.STEP_GRACE_S)
    local = bc.free_udp_port() if transport.sipp_transport == "u1" else free_tcp_port()
    args = [
        *bench.pin_load, bench.sipp, "-sf", str(bc.SCENARIOS / "tls_uac.xml"),
        "-key", "ruri", f"{transport.scheme}:bob@far.test",
        "-key", "from_uri", f"{transport.scheme}:alice@lab.test",
        "-key", "contact_scheme", transport.scheme,
        "-i", HOST, "-p", str(local), "-t", transport.sipp_transport,
        "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-timeout", f"{limit}s", "-timeout_error", "-nostdin",
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
        "-trace_err", "-error_file", str(directory / "errors.log"), "-max_log_size", "1000000",
        f"{HOST}:{transport.target_port}",
    ]  # fmt: skip
    child = procs.start("SIPp UAC", args, log=directory / "screen.log", cwd=directory)
    try:
        child.wait(timeout=limit + 20)
    except subprocess.TimeoutExpired:
        pass
    finally:
        procs.stop(child)
    return bc.read_stat_file(stat_file)


def call_steps(
    procs: bc.Processes,
    bench: bc.Bench,
    sbc: RunningSbc,
    transport: Transport,
    *,
    rates: Sequence[int],
    seconds: float,
    drain: float,
    drop_ports: Sequence[int],
) -> list[CallStep]:
    """Every rate in order; CPU over the calls and over calls + drain."""
    steps = []
    for rate in rates:
        calls = max(1, int(rate * seconds))
        drops_before = sum(bc.udp_drops(p) for p in drop_ports)
        rss_before = bc.rss_kib(sbc.pid)
        cpu_before = bc.cpu_ms(sbc.pid)
        started = time.monotonic()
        stats = run_uac(
            procs, bench, transport, rate=rate, calls=calls, tag=f"{transport.name}-{rate}"
        )
        cpu_calls = bc.cpu_ms(sbc.pid) - cpu_before
        time.sleep(drain)
        step = bc.Step(
            rate=rate,
            calls=calls,
            stats=stats,
            cpu_ms=bc.cpu_ms(sbc.pid) - cpu_before,
            wall_s=time.monotonic() - started,
            rss_before_kib=rss_before,
            rss_after_kib=bc.rss_kib(sbc.pid),
            drops=sum(bc.udp_drops(p) for p in drop_ports) - drops_before,
        )
        bc.print_step(transport.name, step)
        steps.append(CallStep(step, cpu_calls))
    return steps


@dataclass
class CallsResult:
    udp: list[CallStep]
    tls: list[CallStep]
    tls_counters: dict[str, dict[str, int]]
    tls_session: str


def calls(
    procs: bc.Processes,
    bench: bc.Bench,
    pki: Pki,
    ports: Ports,
    config: str,
    args: argparse.Namespace,
) -> CallsResult:
    """Part 2: the same calls over UDP, then over persistent TLS, each on a fresh SBC."""
    udp = Transport("udp", "u1", ports.udp_in, "sip", ports.uas_udp)
    tls = Transport("tls", "t1", ports.stunnel_client, "sips", ports.uas_tcp)
    start_uas(procs, bench, udp)
    start_uas(procs, bench, tls)
    stunnel_log = start_stunnel(procs, bench, pki, ports)
    results: dict[str, list[CallStep]] = {}
    counters: dict[str, dict[str, int]] = {}
    for transport in (udp, tls):
        sbc = start_sbc(procs, bench, pki, ports, config, transport.name)
        try:
            time.sleep(2.0)  # let start-up settle before the first reading
            results[transport.name] = call_steps(
                procs, bench, sbc, transport, rates=args.rates, seconds=args.seconds,
                drain=args.drain, drop_ports=(ports.udp_in, ports.udp_out),
            )  # fmt: skip
            if transport is tls:
                counters = {name: sbc.counters(name) for name in ("tls-in", "tls-out")}
        finally:
            procs.stop(sbc.child)
        for line in bc.log_problems(sbc.log.read_text(errors="replace")):
            print(f"  sbc ({transport.name}) log: {line}")
    sessions = sorted(
        set(re.findall(r"(TLSv1\.\d) ciphersuite: (\S+)", stunnel_log.read_text(errors="replace")))
    )
    session = ", ".join(f"{v} {c}" for v, c in sessions) or "(not in stunnel's log)"
    return CallsResult(results["udp"], results["tls"], counters, session)


# --- output ---------------------------------------------------------------


def calls_table(steps: Sequence[CallStep]) -> str:
    columns = (
        "rate/s", "calls", "completed", "failed", "retrans", "UDP drops", "CPU s (calls + drain)",
        "CPU ms/call", "CPU ms/call (calls only)", "RSS MiB before -> after",
    )  # fmt: skip

    def row(c: CallStep) -> tuple[object, ...]:
        s = c.step
        return (
            s.rate, s.calls, s.completed, s.failed,
            s.stats.retransmissions if s.stats else "-", s.drops, f"{s.cpu_ms / 1000:.2f}",
            f"{s.ms_per_call:.3f}" if s.ms_per_call is not None else "-",
            f"{c.ms_per_call_calls:.3f}" if c.ms_per_call_calls is not None else "-",
            f"{s.rss_before_kib / 1024:.1f} -> {s.rss_after_kib / 1024:.1f}",
        )  # fmt: skip

    return bc.markdown_table(columns, [row(c) for c in steps])


def report(
    bench: bc.Bench,
    args: argparse.Namespace,
    idle: IdleResult | None,
    result: CallsResult | None,
    calls_problem: str | None,
) -> None:
    print()
    print(
        f"TLS benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]} "
        f"(client), load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"SBC on '{' '.join(bench.pin_target) or 'any CPU'}', SIPp, stunnel and this process "
        f"on '{' '.join(bench.pin_load) or 'any CPU'}'"
    )
    if idle is not None:
        kib = idle.kib_per_connection
        print()
        print(
            f"Idle TLS connections: {idle.opened}/{idle.connections} opened in "
            f"{idle.open_seconds:.1f} s ({idle.tls_version}, {idle.cipher}); the SBC counted "
            f"{idle.handshakes} verified handshakes and closed {idle.closed_by_sbc}"
        )
        print(
            f"  SBC RSS: {idle.rss_start_kib / 1024:.1f} MiB after start, "
            f"{idle.rss_before_kib / 1024:.1f} MiB after {WARM_UP} warm-up connections, "
            f"{idle.rss_after_kib / 1024:.1f} MiB with the connections open, "
            f"{idle.rss_closed_kib / 1024:.1f} MiB after closing them"
        )
        print(
            f"  **{kib:.1f} KiB ({kib * 1.024:.1f} kB) per idle TLS connection** "
            f"(target: at most 25 KB: {'met' if kib * 1.024 <= 25 else 'NOT met'})"
        )
        print(
            f"  SBC CPU per accepted TLS connection (handshake, verification, set-up): "
            f"{idle.handshake_cpu_ms / max(idle.opened, 1):.2f} ms"
        )
    if result is not None:
        print()
        print(
            f"Calls (SIPp tls_uac.xml, hold {HOLD_MS} ms, {args.seconds:g} s per step, "
            f"{args.drain:g} s drain counted), UDP:"
        )
        print(calls_table(result.udp))
        print()
        print(f"SIPS over persistent TLS (stunnel: {result.tls_session}):")
        print(calls_table(result.tls))
        tls_in = result.tls_counters.get("tls-in", {})
        tls_out = result.tls_counters.get("tls-out", {})
        print(
            f"  TLS connections: tls-in accepted {tls_in.get('connections-accepted', '?')}, "
            f"tls-out opened {tls_out.get('connections-opened', '?')}; handshakes "
            f"{tls_in.get('handshakes', '?')} + {tls_out.get('handshakes', '?')}"
        )
        print()
        for rate in args.rates:
            u = next((c for c in result.udp if c.step.rate == rate), None)
            t = next((c for c in result.tls if c.step.rate == rate), None)
            if u is None or t is None or not u.step.ms_per_call or not t.step.ms_per_call:
                print(f"TLS/UDP CPU per call at {rate}/s: not measured")
                continue
            ratio = t.step.ms_per_call / u.step.ms_per_call
            only = (
                f"{t.ms_per_call_calls / u.ms_per_call_calls:.2f}x"
                if t.ms_per_call_calls and u.ms_per_call_calls
                else "-"
            )
            flags = "" if u.step.passed and t.step.passed else " (a step had failed calls)"
            print(
                f"TLS/UDP CPU per call at {rate}/s: {t.step.ms_per_call:.3f} / "
                f"{u.step.ms_per_call:.3f} ms = **{ratio:.2f}x** (calls only: {only}; "
                f"target at most 1.3x: {'met' if ratio <= 1.3 else 'NOT met'}){flags}"
            )
    if calls_problem is not None:
        print()
        print(f"Calls not measured: {calls_problem}")
    print(f"\nlogs and SIPp statistics in {bench.workdir}")


# --- main -----------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--connections", type=int, default=1000, help="idle TLS connections (default %(default)s)"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=list(DEFAULT_RATES),
        help="comma-separated call rates (calls/s) for both transports (default %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of calls per step")
    parser.add_argument(
        "--drain", type=float, default=34.0, help="seconds after each step, CPU counted"
    )
    parser.add_argument("--no-calls", action="store_true", help="only the idle connections")
    parser.add_argument("--no-idle", action="store_true", help="only the calls")
    args = parser.parse_args(argv)
    if args.connections < 1:
        parser.error("--connections must be positive")
    if not args.rates or min(args.rates) <= 0:
        parser.error("--rates needs positive numbers")
    return args


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE toward ``wanted`` (at most the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    sipp = shutil.which("sipp")
    for tool, where in ((bc.TWISTD, "twistd"), (SBC_CLI, "sbc-cli"), (LAB_PKI, "sbc-lab-pki")):
        if not tool.exists():
            print(f"bench_tls: {where} not found in {tool.parent}", file=sys.stderr)
            return 2
    limit = raise_fd_limit(args.connections + 256)
    if limit < args.connections + 64:
        args.connections = max(1, limit - 64)
        print(f"bench_tls: RLIMIT_NOFILE {limit}: {args.connections} connections", file=sys.stderr)
    taskset = shutil.which("taskset")
    if taskset is not None and (os.cpu_count() or 1) >= 2:
        pin_target, pin_load = [taskset, "-c", "0"], [taskset, "-c", "1"]
        os.sched_setaffinity(0, {1})  # this process (the idle clients) off the SBC's CPU
    else:
        print("bench_tls: fewer than 2 CPUs or no taskset: nothing is pinned", file=sys.stderr)
        pin_target, pin_load = [], []
    workdir = Path(tempfile.mkdtemp(prefix="sbc-bench-tls-"))
    bench = bc.Bench(sipp or "sipp", workdir, pin_target, pin_load, HOLD_MS)
    ports = Ports(
        udp_in=bc.free_udp_port(), udp_out=bc.free_udp_port(),
        tls_in=free_tcp_port(), tls_out=free_tcp_port(),
        uas_udp=bc.free_udp_port(), uas_tcp=free_tcp_port(),
        stunnel_client=free_tcp_port(), stunnel_server=free_tcp_port(),
    )  # fmt: skip
    config = sbc_config(ports, args.connections + WARM_UP + 64)
    procs = bc.Processes()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        pki = make_pki(workdir / "pki")
        idle = None
        if not args.no_idle:
            idle = idle_connections(procs, bench, pki, ports, config, args.connections)
        result, problem = None, None
        if args.no_calls:
            problem = "--no-calls"
        elif sipp is None:
            problem = "sipp not found (apt-get install sip-tester)"
        else:
            try:
                result = calls(procs, bench, pki, ports, config, args)
            except bc.BenchError as error:
                problem = str(error)
        report(bench, args, idle, result, problem)
        print(f"run time {time.monotonic() - started:.0f} s")
        return 0
    except bc.BenchError as error:
        return bc.print_failure("bench_tls", error, sorted(workdir.rglob("*.log")))
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
