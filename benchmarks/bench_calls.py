"""Calls per second: the real ``twistd sbc`` and sippy's B2BUA under the same SIPp load.

Run from the repository root (``make bench-calls`` does this)::

    PYTHONPATH=.venv/bench-site SIPLOG_LVL=WARN .venv/bin/python benchmarks/bench_calls.py \\
        [--rates 200,400,...] [--seconds 15] [--drain 33] [--no-sippy] [--plot FILE]

The call flow, for both systems under test (SUT), on 127.0.0.1 over UDP:
SIPp UAC -> SUT -> SIPp UAS; INVITE with SDP, 100, 180, 200 with SDP, ACK,
``--hold-ms`` (500) of hold, BYE, 200 (``benchmarks/scenarios/uac.xml`` and
``uas.xml``). The SUT is pinned to CPU 0 (``taskset``), SIPp to CPU 1.

- sbc: ``twistd -n --pidfile= --logfile sbc.log sbc --config ...`` (the
  operator's file log, see docs/logging.md; ``--log`` picks another) with two
  UDP adjacencies: ``access`` (untrusted, where the UAC sends) and ``core``
  (trusted-unencrypted, ``signaling-peer`` the UAS), routed by source.
- sippy: ``python -m sippy.b2bua_simple -f -l ... -n UAS`` with
  ``SIPLOG_LVL=WARN``.

- sbc-pypy (``--pypy VENV``, which ``make bench-calls`` passes when
  ``make pypy-venv`` has built ``.venv-pypy``): the same sbc and config under
  that PyPy virtual environment's ``twistd``.

Each system under test is started once, at its first step, and runs until
its ramp ends (as a daemon does). Right after it starts it gets
``--warmup`` seconds (30) of calls at ``--warmup-rate`` (200/s), not
measured, then the rest: PyPy's JIT compiles the hot code in the first
thousands of calls, and a daemon runs for days. Each
rate step offers ``rate x --seconds`` calls, waits for SIPp to finish them
(bounded by ``-timeout``), then rests ``--drain`` seconds (default 33: the
transactions of the last calls expire, so the next step starts from a quiet
SUT). The SUT's CPU time (utime + stime from /proc/PID/stat) over calls
and rest, divided by the completed calls, is "CPU ms per call"; the CPU
while the calls run alone is shown too. The steps alternate: sbc at a
rate, then sippy at the same rate, then the next rate, so a drift in the
machine's speed hits both alike. A system stops after ``--past-failure``
(2) unclean steps in a row that reach twice its highest clean rate, or
after ``--past-failure + 2`` unclean steps in a row.

Per step: offered calls, completed calls (the BYE's 200 arrived), calls
answered 503 with a Retry-After (shed by overload control; SIPp's message
counts, ``-trace_counts``), other failures, established calls lost (the
INVITE's 200 arrived but the BYE's did not), SIPp's retransmissions, the
mean INVITE -> 200 time, the kernel's drops on the SUT's sockets, wake-ups
(voluntary context switches) per call, RSS. A step is clean with fewer than
0.5 % of offered calls not completed, fewer than 0.5 % retransmissions per
offered call and a mean INVITE -> 200 under 100 ms.

The results are printed as Markdown tables, saved as ``results.json`` in
the run's directory, and plotted (``--plot FILE``, matplotlib: CPU ms per
call and failed-call percentage against offered rate for both systems;
``--replot results.json`` redraws a saved run).

This is a benchmark, not a test: it asserts nothing about speed. It exits 0
unless something could not start (then 2). Every process it starts is
stopped by PID at the end, on error too; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
TWISTD = Path(sys.executable).parent / "twistd"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: A step is clean with fewer offered calls not completed than this fraction...
MAX_FAILED = 0.005
#: ... fewer SIPp retransmissions per offered call than this ...
MAX_RETRANSMITTED = 0.005
#: ... and a mean INVITE -> 200 time under this (ms).
MAX_SETUP_MS = 100.0
DEFAULT_RATES = (100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000)
#: How long after its last call a step may run (retransmissions end after ~32 s).
STEP_GRACE_S = 40
#: How the SBC logs: its own file log (operators' default), stdout to a file, nowhere.
LOG_MODES = ("file", "stdout", "null")


class BenchError(Exception):
    """Something the benchmark needs could not be started."""


# --- processes ------------------------------------------------------------


class Processes:
    """Every child started here, stopped by PID (SIGTERM, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes] | None]] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` with stdout and stderr to ``log`` (or /dev/null)."""
        out = open(log, "wb") if log is not None else None  # noqa: SIM115
        try:
            child = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
            )
        except OSError as error:
            if out is not None:
                out.close()
            raise BenchError(f"cannot start {name}: {error}") from None
        self.children.append((name, child, out))
        return child

    def stop(self, child: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
        """SIGTERM ``child`` by PID, SIGKILL after ``seconds``; reap it."""
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=seconds)
        for entry in list(self.children):
            if entry[1] is child:
                if entry[2] is not None:
                    entry[2].close()
                self.children.remove(entry)

    def stop_all(self) -> None:
        for _, child, _ in reversed(list(self.children)):
            self.stop(child)


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _udp_rows() -> Iterator[tuple[int, str, int]]:
    """(port, hex address, drops) of every IPv4 UDP socket, from /proc/net/udp."""
    with open("/proc/net/udp") as f:
        rows = f.read().splitlines()[1:]
    for row in rows:
        fields = row.split()
        address, _, port_hex = fields[1].rpartition(":")
        yield int(port_hex, 16), address, int(fields[-1])


def udp_listening(port: int) -> bool:
    return any(p == port and a in ("0100007F", "00000000") for p, a, _ in _udp_rows())


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the socket bound to ``port`` (receive buffer full)."""
    return sum(d for p, a, d in _udp_rows() if p == port and a in ("0100007F", "00000000"))


def wait_until(
    what: str, seconds: float, ready: Callable[[], bool], child: subprocess.Popen[bytes]
) -> None:
    """Poll ``ready()`` every 50 ms for at most ``seconds``; fail if ``child`` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if child.poll() is not None:
            raise BenchError(f"{what}: the process exited with status {child.returncode}")
        time.sleep(0.05)
    raise BenchError(f"{what}: not ready after {seconds:g} s")


# --- /proc readings -------------------------------------------------------


def with_children(pid: int) -> list[int]:
    """``pid`` and its live child processes (the worker processes of ``--workers N``)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4, ppid
            pids.append(int(entry))
    return pids


def cpu_ms(pid: int) -> float:
    """utime + stime of ``pid`` and its live children (all threads), in milliseconds."""
    total = 0
    for one in with_children(pid):
        try:
            with open(f"/proc/{one}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): utime is field 14, stime field 15.
        total += int(fields[11]) + int(fields[12])
    return total * 1000.0 / CLOCK_TICKS


def _status_value(pid: int, name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its live children, in KiB."""
    return sum(_status_value(one, "VmRSS:") for one in with_children(pid))


# --- SIPp -----------------------------------------------------------------


@dataclass
class SippStats:
    """The cumulative counters of SIPp's last ``-trace_stat`` line."""

    created: int
    successful: int
    failed: int
    retransmissions: int
    #: Mean of RTD "setup" (uac.xml's INVITE -> 200), ms; None when not measured.
    setup_ms: float | None = None


def sipp_duration_ms(text: str) -> float | None:
    """SIPp's ``HH:MM:SS:uuuuuu`` (or ``HH:MM:SS:mmm``) duration in ms."""
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    hours, minutes, seconds, fraction = parts
    scale = 1000.0 if len(fraction) <= 3 else 1e6
    total_s = int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction) / scale
    return total_s * 1000.0


def read_stat_file(path: Path) -> SippStats | None:
    """The last line of a ``-stf`` CSV (``;``-separated, header first), or None."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    header = lines[0].split(";")
    values = lines[-1].split(";")
    row = dict(zip(header, values, strict=False))

    def number(name: str) -> int:
        try:
            return int(float(row.get(name, "0") or 0))
        except ValueError:
            return 0

    return SippStats(
        created=number("TotalCallCreated"),
        successful=number("SuccessfulCall(C)"),
        failed=number("FailedCall(C)"),
        retransmissions=number("Retransmissions(C)"),
        setup_ms=sipp_duration_ms(row.get("ResponseTimesetup(C)", "")),
    )


@dataclass
class Counts:
    """From SIPp's ``-trace_counts`` file of ``uac.xml``: what happened to the calls."""

    #: INVITEs answered 503 (shed).
    shed: int
    #: INVITEs answered 200 (established calls).
    answered: int
    #: BYEs answered 200 (completed calls).
    completed: int


def parse_counts(text: str) -> Counts | None:
    """The last row of a counts CSV: first ``_503_Recv``, first and last ``_200_Recv``."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    header = lines[0].split(";")
    values = lines[-1].split(";")
    row = dict(zip(header, values, strict=False))

    def value(name: str) -> int:
        text = row.get(name, "0").strip()
        return int(text) if text.isdigit() else 0

    shed = [name for name in header if name.endswith("_503_Recv")]
    ok = [name for name in header if name.endswith("_200_Recv")]
    if not ok:
        return None
    return Counts(
        shed=value(shed[0]) if shed else 0, answered=value(ok[0]), completed=value(ok[-1])
    )


def read_counts(directory: Path) -> Counts | None:
    """The counts of the UAC run in ``directory`` (None without a counts file)."""
    for path in sorted(directory.glob("*_counts.csv")):
        with contextlib.suppress(OSError):
            return parse_counts(path.read_text(errors="replace"))
    return None


@dataclass
class Bench:
    """Where things are and how they are pinned."""

    sipp: str
    workdir: Path
    pin_target: list[str]
    pin_load: list[str]
    hold_ms: int
    #: SIPp's UAC transport: ``u1`` one socket, ``un`` one socket (source port) per call,
    #: so that the kernel spreads the calls over the worker processes of ``--workers N``
    uac_transport: str = "u1"


def start_uas(procs: Processes, bench: Bench, tag: str) -> tuple[subprocess.Popen[bytes], int]:
    """A SIPp UAS on a free port, pinned to the load core; (process, port)."""
    port = free_udp_port()
    directory = bench.workdir / f"uas-{tag}"
    directory.mkdir()
    args = [
        *bench.pin_load, bench.sipp, "-sf", str(SCENARIOS / "uas.xml"),
        "-i", HOST, "-p", str(port), "-t", "u1", "-nostdin",
        "-trace_err", "-error_file", str(directory / "errors.log"), "-max_log_size", "1000000",
    ]  # fmt: skip
    child = procs.start("SIPp UAS", args, log=directory / "screen.log", cwd=directory)
    wait_until("SIPp UAS", 10.0, lambda: udp_listening(port), child)
    return child, port


def uac_limit_s(rate: int, calls: int, hold_ms: int) -> int:
    """SIPp's ``-timeout`` for a run: send time, hold, and the retransmission grace."""
    return int(calls / rate + hold_ms / 1000.0 + STEP_GRACE_S)


def start_uac(
    procs: Processes, bench: Bench, *, target_port: int, rate: int, calls: int, tag: str
) -> subprocess.Popen[bytes]:
    """Start SIPp's UAC (``uac.xml``) in ``workdir/uac-TAG``, pinned to the load core."""
    directory = bench.workdir / f"uac-{tag}"
    directory.mkdir()
    args = [
        *bench.pin_load, bench.sipp, "-sf", str(SCENARIOS / "uac.xml"), "-d", str(bench.hold_ms),
        "-i", HOST, "-p", str(free_udp_port()), "-t", bench.uac_transport,
        *(["-max_socket", "10000"] if bench.uac_transport == "un" else []),
        "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-timeout", f"{uac_limit_s(rate, calls, bench.hold_ms)}s", "-timeout_error", "-nostdin",
        "-trace_stat", "-stf", str(directory / "stat.csv"), "-fd", "1", "-trace_counts",
        "-trace_err", "-error_file", str(directory / "errors.log"), "-max_log_size", "1000000",
        f"{HOST}:{target_port}",
    ]  # fmt: skip
    return procs.start("SIPp UAC", args, log=directory / "screen.log", cwd=directory)


def run_uac(
    procs: Processes,
    bench: Bench,
    *,
    target_port: int,
    rate: int,
    calls: int,
    tag: str,
    during: Callable[[], None] | None = None,
) -> SippStats | None:
    """One bounded SIPp UAC run; ``during()`` is called every 0.25 s while it runs."""
    child = start_uac(procs, bench, target_port=target_port, rate=rate, calls=calls, tag=tag)
    deadline = time.monotonic() + uac_limit_s(rate, calls, bench.hold_ms) + 20
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if during is not None:
                during()
            time.sleep(0.25)
    finally:
        procs.stop(child)
    return read_stat_file(bench.workdir / f"uac-{tag}" / "stat.csv")


# --- /proc readings (more) ------------------------------------------------


def wakeups(pid: int) -> int:
    """Voluntary context switches of ``pid`` and its children so far: how often they woke up."""
    return sum(_status_value(one, "voluntary_ctxt_switches:") for one in with_children(pid))


# --- one step -------------------------------------------------------------


@dataclass
class Step:
    """The result of one rate step."""

    rate: int
    calls: int
    stats: SippStats | None
    cpu_ms: float
    wall_s: float
    rss_before_kib: int
    rss_after_kib: int
    drops: int
    #: What happened to the calls (uac.xml's message counts), when known.
    counts: Counts | None = None
    #: CPU while the calls ran, without the rest after them.
    cpu_calls_ms: float | None = None
    #: Voluntary context switches while the calls ran.
    wakeups: int | None = None
    #: Which system ran it ("sbc", "sippy").
    target: str = ""

    @property
    def completed(self) -> int:
        if self.counts is not None:
            return self.counts.completed
        return self.stats.successful if self.stats else 0

    @property
    def shed(self) -> int:
        """Calls answered 503 + Retry-After."""
        return self.counts.shed if self.counts is not None else 0

    @property
    def failed(self) -> int:
        """Calls that did not complete: shed, failed, timed out, or never placed."""
        return self.calls - self.completed

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.calls if self.calls else 1.0

    @property
    def lost(self) -> int:
        """Established calls (200 to the INVITE) whose BYE got no 200."""
        if self.counts is None:
            return 0
        return max(0, self.counts.answered - self.counts.completed)

    @property
    def accepted(self) -> int:
        """Offered calls not shed."""
        return self.calls - self.shed

    @property
    def completed_of_accepted(self) -> float | None:
        return self.completed / self.accepted if self.accepted else None

    @property
    def retransmitted_ratio(self) -> float:
        if not self.stats or not self.calls:
            return 0.0
        return self.stats.retransmissions / self.calls

    @property
    def passed(self) -> bool:
        """Clean: see MAX_FAILED, MAX_RETRANSMITTED, MAX_SETUP_MS."""
        if self.stats is None or self.failed_ratio >= MAX_FAILED:
            return False
        if self.counts is None:  # a run without message counts (bench_tls)
            return True
        setup = self.stats.setup_ms
        return self.retransmitted_ratio < MAX_RETRANSMITTED and (
            setup is None or setup < MAX_SETUP_MS
        )

    @property
    def ms_per_call(self) -> float | None:
        return self.cpu_ms / self.completed if self.completed else None

    @property
    def ms_per_call_calls(self) -> float | None:
        if self.cpu_calls_ms is None or not self.completed:
            return None
        return self.cpu_calls_ms / self.completed


# --- the two systems under test -------------------------------------------


#: The ``limits`` of this checkout's sbc in the benchmark: the load comes from one
#: untrusted source, measured without the flood defence's per-source limit
#: (benchmarks/bench_flood.py measures that).
SBC_LIMITS = ("source-rate-limit 1000000 10",)


def sbc_config(
    name: str, access_port: int, core_port: int, uas_port: int, limits: Sequence[str] = ()
) -> str:
    """The benchmark's configuration; ``limits``: lines for a ``limits`` block, if any."""
    block = ["  limits", *(f"   {line}" for line in limits)] if limits else []
    return "\n".join(
        [
            "! generated by benchmarks/bench_calls.py",
            f"sbc {name}",
            " sbe",
            "  adjacency sip access",
            f"   signaling-address ipv4 {HOST}",
            f"   signaling-port {access_port}",
            "   transport udp",
            "   security untrusted",
            "   attach",
            "  adjacency sip core",
            f"   signaling-address ipv4 {HOST}",
            f"   signaling-port {core_port}",
            "   transport udp",
            f"   signaling-peer {HOST}",
            f"   signaling-peer-port {uas_port}",
            "   security trusted-unencrypted",
            "   attach",
            "  call-policy-set 1",
            "   first-call-routing-table by-source",
            "   rtg-src-adjacency-table by-source",
            "    entry 1",
            "     match-adjacency access",
            "     dst-adjacency core",
            "     action complete",
            "  active-call-policy-set 1",
            "  routing-policy default",
            *block,
            "",
        ]
    )


def child_env(extra_path: str | None) -> dict[str, str]:
    """The environment for a target: PYTHONPATH only what that target needs."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["SIPLOG_LVL"] = "WARN"
    if extra_path is not None:
        env["PYTHONPATH"] = extra_path
    return env


@dataclass
class Target:
    """A running system under test: its process, where the UAC sends, its sockets."""

    process: subprocess.Popen[bytes]
    port: int
    drop_ports: tuple[int, ...]
    log: Path


def start_sbc_target(
    procs: Processes,
    bench: Bench,
    uas_port: int,
    tag: str,
    log_mode: str,
    code: Path | None = None,
    limits: Sequence[str] = (),
    workers: int = 1,
    venv: Path | None = None,
) -> Target:
    """``twistd sbc`` (``code``: another checkout of sbc, first on its PYTHONPATH;
    ``workers``: ``--workers N``; ``venv``: the virtual environment whose
    ``twistd`` runs it, e.g. a PyPy one, instead of this one's)."""
    access_port, core_port = free_udp_port(), free_udp_port()
    config = bench.workdir / f"sbc-{tag}.conf"
    config.write_text(sbc_config("bench", access_port, core_port, uas_port, limits))
    screen = bench.workdir / f"sbc-{tag}.screen.log"
    log = {"file": bench.workdir / f"sbc-{tag}.log", "stdout": screen, "null": screen}[log_mode]
    logfile = {"file": [f"--logfile={log}"], "stdout": [], "null": ["--logfile=/dev/null"]}
    program = venv / "bin" / "twistd" if venv is not None else TWISTD
    twistd = [
        str(program), "-n", "--pidfile=", *logfile[log_mode], "sbc", "--config", str(config),
        "--cli", f"unix:{bench.workdir / f'sbc-{tag}.cli'}:mode=600",
        *(["--workers", str(workers)] if workers != 1 else []),
    ]  # fmt: skip
    sbc = procs.start(
        "the SBC",
        [*bench.pin_target, *twistd],
        log=screen,
        env=child_env(str(code.resolve()) if code is not None else None),
        cwd=bench.workdir,
    )

    def ready() -> bool:
        if not (udp_listening(access_port) and udp_listening(core_port)):
            return False
        return log_mode == "null" or "started with" in log.read_text(errors="replace")

    wait_until("the SBC", 30.0, ready, sbc)
    return Target(sbc, access_port, (access_port, core_port), log)


def start_sippy_target(
    procs: Processes, bench: Bench, uas_port: int, tag: str, site: Path
) -> Target:
    port = free_udp_port()
    log = bench.workdir / f"sippy-{tag}.log"
    b2bua = [
        sys.executable, "-m", "sippy.b2bua_simple", "-f",
        "-l", HOST, "-p", str(port), "-n", f"{HOST}:{uas_port}",
        "-L", str(bench.workdir / f"sippy-{tag}-file.log"),
    ]  # fmt: skip
    child = procs.start(
        "sippy b2bua_simple", [*bench.pin_target, *b2bua], log=log,
        env=child_env(str(site.resolve())), cwd=bench.workdir,
    )  # fmt: skip
    wait_until("sippy b2bua_simple", 30.0, lambda: udp_listening(port), child)
    return Target(child, port, (port,), log)


def run_step(
    procs: Processes, bench: Bench, target: Target, *, name: str, rate: int, seconds: float,
    drain: float, tag: str | None = None,
) -> Step:  # fmt: skip
    """Offer ``rate x seconds`` calls to ``target``, rest ``drain`` s; measure (see module doc)."""
    pid = target.process.pid
    calls = max(1, int(rate * seconds))
    time.sleep(1.0)  # start-up work done
    drops_before = sum(udp_drops(p) for p in target.drop_ports)
    rss_before = rss_kib(pid)
    cpu_before = cpu_ms(pid)
    wake_before = wakeups(pid)
    started = time.monotonic()
    tag = tag or f"{name}-{rate}"
    stats = run_uac(procs, bench, target_port=target.port, rate=rate, calls=calls, tag=tag)
    cpu_calls = cpu_ms(pid) - cpu_before
    woke = wakeups(pid) - wake_before
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline and target.process.poll() is None:
        time.sleep(0.25)
    return Step(
        rate=rate,
        calls=calls,
        stats=stats,
        cpu_ms=cpu_ms(pid) - cpu_before,
        wall_s=time.monotonic() - started,
        rss_before_kib=rss_before,
        rss_after_kib=rss_kib(pid),
        drops=sum(udp_drops(p) for p in target.drop_ports) - drops_before,
        counts=read_counts(bench.workdir / f"uac-{tag}"),
        cpu_calls_ms=cpu_calls,
        wakeups=woke,
        target=name,
    )


# --- output ---------------------------------------------------------------


def print_step(name: str, step: Step) -> None:
    per_call = f"{step.ms_per_call:.3f}" if step.ms_per_call is not None else "-"
    extra = ""
    if step.counts is not None:
        extra = (
            f", shed {step.shed}, lost {step.lost}, retrans {step.retransmitted_ratio:.2%}"
            f"{', clean' if step.passed else ''}"
        )
    print(
        f"  {name}: {step.rate}/s: {step.completed}/{step.calls} calls completed, "
        f"{step.failed} failed ({step.failed_ratio:.2%}){extra}, CPU {step.cpu_ms / 1000:.2f} s, "
        f"{per_call} ms/call",
        flush=True,
    )


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, every column right-aligned (numbers read best that way)."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("-" * len(c) + ":" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def table(steps: Sequence[Step]) -> str:
    """One row per step: see the module docstring for the columns."""
    columns = (
        "rate/s", "offered", "completed", "503 shed", "failed %", "lost", "retrans %",
        "setup ms", "UDP drops", "CPU % core", "CPU ms/call", "(calls only)", "wake-ups/call",
        "RSS MiB", "clean",
    )  # fmt: skip

    def row(s: Step) -> tuple[object, ...]:
        setup = s.stats.setup_ms if s.stats else None
        calls_s = max(s.calls / s.rate, 1e-9)
        core = (s.cpu_calls_ms if s.cpu_calls_ms is not None else s.cpu_ms) / 1000 / calls_s
        return (
            s.rate, s.calls, s.completed, s.shed, f"{100 * s.failed_ratio:.2f}", s.lost,
            f"{100 * s.retransmitted_ratio:.2f}", f"{setup:.0f}" if setup is not None else "-",
            s.drops, f"{100 * min(core, 9.99):.0f} %", _ms(s.ms_per_call),
            _ms(s.ms_per_call_calls),
            f"{s.wakeups / s.completed:.1f}" if s.wakeups is not None and s.completed else "-",
            f"{s.rss_after_kib / 1024:.0f}", "yes" if s.passed else "no",
        )  # fmt: skip

    return markdown_table(columns, [row(s) for s in steps])


def log_problems(text: str, limit: int = 60) -> list[str]:
    """Lines of a log around each traceback / error, at most ``limit`` lines."""
    lines = text.splitlines()
    markers = ("Traceback", "Unhandled Error", "Error", "error", "CRITICAL")
    out: list[str] = []
    for index, line in enumerate(lines):
        if any(m in line for m in markers):
            out.extend(lines[index : index + 12])
            if len(out) >= limit:
                break
    return out[:limit]


def best_rate(steps: Sequence[Step]) -> int | None:
    passed = [s.rate for s in steps if s.passed]
    return max(passed) if passed else None


def at_rate(steps: Sequence[Step], rate: int) -> Step | None:
    return next((s for s in steps if s.rate == rate), None)


def describe(step: Step | None) -> str:
    """CPU ms per call of a step, with its failures when it was not clean."""
    if step is None or step.ms_per_call is None:
        return "not measured (rate not reached)"
    text = f"{step.ms_per_call:.3f} ms"
    if not step.passed:
        text += f" (not clean: {step.failed} of {step.calls} calls not completed)"
    return text


def overload_summary(steps: Sequence[Step]) -> str | None:
    """The step at (or just above) twice the highest clean rate, against the issue's targets."""
    best = best_rate(steps)
    if best is None:
        return None
    above = [s for s in steps if s.rate >= 2 * best]
    if not above:
        return f"no step at twice the highest clean rate ({2 * best} calls/s) was run"
    step = min(above, key=lambda s: s.rate)
    share = step.completed_of_accepted
    return (
        f"at {step.rate} calls/s (>= 2 x {best}): {step.accepted} of {step.calls} calls "
        f"accepted, {step.completed} completed ("
        + (f"{share:.1%}" if share is not None else "-")
        + f" of accepted), {step.shed} answered 503 + Retry-After, "
        f"{step.lost} established calls lost"
    )


def plot(runs: dict[str, list[Step]], path: Path, title: str) -> bool:
    """CPU ms per call, failed-call %, retransmissions and lost calls against offered rate.

    False without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib not found (make bench-calls installs it); skipped")
        return False
    figure, (cpu, failed, trouble) = plt.subplots(3, 1, sharex=True, figsize=(8, 9.5))
    styles = {
        "sbc": ("tab:blue", "o"),
        "sippy": ("tab:orange", "s"),
        "sbc-baseline": ("tab:green", "^"),
        "sbc-pypy": ("tab:purple", "D"),
        "sbc-1w": ("tab:blue", "o"),
        "sbc-2w": ("tab:red", "D"),
    }
    for name, steps in runs.items():
        color, marker = styles.get(name, ("tab:gray", "^"))
        rates = [s.rate for s in steps]
        cpu.plot(
            rates, [s.ms_per_call or float("nan") for s in steps],
            color=color, marker=marker, label=name,
        )  # fmt: skip
        failed.plot(
            rates, [100 * s.failed_ratio for s in steps],
            color=color, marker=marker, label=f"{name}: not completed",
        )  # fmt: skip
        trouble.plot(
            rates, [100 * s.retransmitted_ratio for s in steps],
            color=color, marker=marker, label=f"{name}: retransmissions per offered call",
        )  # fmt: skip
        trouble.plot(
            rates, [100 * s.lost / max(s.calls, 1) for s in steps], color=color, marker=marker,
            linestyle=":", label=f"{name}: established calls lost",
        )  # fmt: skip
        if any(s.shed for s in steps):
            failed.plot(
                rates, [100 * s.shed / s.calls for s in steps], color=color, marker=marker,
                linestyle="--", label=f"{name}: of which answered 503 + Retry-After",
            )  # fmt: skip
    cpu.set_ylabel("CPU ms per completed call")
    cpu.set_ylim(bottom=0)
    cpu.grid(True, alpha=0.3)
    cpu.legend()
    cpu.set_title(textwrap.fill(title, 120), fontsize=7)
    failed.set_ylabel("% of offered calls\nnot completed")
    failed.set_ylim(bottom=0)
    failed.grid(True, alpha=0.3)
    failed.legend(fontsize=7)
    trouble.set_ylabel("% of offered calls")
    trouble.set_xlabel("offered calls per second (one CPU core)")
    trouble.set_ylim(bottom=0)
    trouble.grid(True, alpha=0.3)
    trouble.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def steps_to_json(runs: dict[str, list[Step]], meta: dict[str, Any]) -> str:
    return json.dumps({"meta": meta, "runs": {k: [asdict(s) for s in v] for k, v in runs.items()}})


def steps_from_json(text: str) -> tuple[dict[str, list[Step]], dict[str, Any]]:
    data = json.loads(text)
    runs: dict[str, list[Step]] = {}
    for name, steps in data["runs"].items():
        runs[name] = []
        for raw in steps:
            stats = SippStats(**raw.pop("stats")) if raw.get("stats") else None
            raw.pop("stats", None)
            counts = Counts(**raw.pop("counts")) if raw.get("counts") else None
            raw.pop("counts", None)
            runs[name].append(Step(stats=stats, counts=counts, **raw))
    return runs, data.get("meta", {})


def report(meta: dict[str, Any], runs: dict[str, list[Step]], reference: int) -> None:
    print()
    print(meta["title"])
    for name, steps in runs.items():
        print()
        print(f"{name}:")
        print(table(steps))
    print()
    for name, steps in runs.items():
        best = best_rate(steps)
        print(f"{name}: highest clean rate {best or 'none'} calls/s; CPU per call at "
              f"{reference} calls/s: {describe(at_rate(steps, reference))}")  # fmt: skip
    ours_names = [name for name in runs if name.startswith("sbc")]
    sippy = runs.get("sippy")
    for name in ours_names:
        if sippy is None:
            break
        ours, theirs = at_rate(runs[name], reference), at_rate(sippy, reference)
        if ours and theirs and ours.ms_per_call and theirs.ms_per_call:
            print(
                f"{name} / sippy CPU per call at {reference} calls/s: "
                f"{ours.ms_per_call / theirs.ms_per_call:.2f} "
                f"(sippy {theirs.ms_per_call / ours.ms_per_call:.2f}x {name})"
            )
    for name in ours_names:
        summary = overload_summary(runs[name])
        if summary:
            print(f"{name} overload: {summary}")


def print_failure(program: str, error: BenchError, logs: Sequence[Path]) -> int:
    """Say why a benchmark stopped, with the last lines of each log; the exit status (2)."""
    print(f"{program}: {error}", file=sys.stderr)
    for log in logs:
        print(f"--- {log.name} (last lines)", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
    return 2


# --- main -----------------------------------------------------------------


@dataclass
class Ramp:
    """One system's progress through the rates: when to stop."""

    name: str
    steps: list[Step] = field(default_factory=list)
    done: bool = False

    def record(self, step: Step, past_failure: int) -> None:
        """Add ``step``; done after ``past_failure`` unclean steps in a row that reach
        twice the highest clean rate (or ``past_failure + 2`` unclean steps in a row)."""
        self.steps.append(step)
        best = best_rate(self.steps) or 0
        unclean = 0
        for s in reversed(self.steps):
            if s.passed:
                break
            unclean += 1
        if (unclean >= past_failure and step.rate >= 2 * best) or unclean >= past_failure + 2:
            self.done = True


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=list(DEFAULT_RATES),
        help="comma-separated call rates (calls/s), in order (default %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of calls per step")
    parser.add_argument("--hold-ms", type=int, default=500, help="ACK to BYE")
    parser.add_argument("--drain", type=float, default=33.0, help="rest after each step (s)")
    parser.add_argument("--reference", type=int, default=200, help="reference rate (calls/s)")
    parser.add_argument(
        "--past-failure",
        type=int,
        default=2,
        help="unclean steps in a row (reaching twice the highest clean rate) before a system stops",
    )
    parser.add_argument("--log", choices=LOG_MODES, default="file", help="how sbc logs")
    parser.add_argument("--no-sippy", action="store_true", help="skip sippy's B2BUA")
    parser.add_argument("--no-sbc", action="store_true", help="skip sbc")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=None,
        help="compare sbc with these numbers of worker processes ('1,2': ramps sbc-1w and "
        "sbc-2w, alternating) instead of one sbc; nothing is pinned (the workers and SIPp "
        "share every CPU) and SIPp's UAC sends each call from its own port (-t un)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="another sbc checkout to run as 'sbc-baseline', alternating (before/after)",
    )
    parser.add_argument(
        "--baseline-limits",
        default="",
        help="';'-separated limits lines for the baseline's config (e.g. "
        "'source-rate-limit 1000000 10' for a checkout with the flood defence)",
    )
    parser.add_argument(
        "--pypy",
        default=None,
        help="a PyPy virtual environment with sbc installed (make pypy-venv: .venv-pypy): "
        "ramps 'sbc-pypy' too, its twistd running this checkout",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help="seconds of calls at --warmup-rate that every system gets right after it starts, "
        "before its first step, not measured (PyPy's JIT compiles the hot code in the "
        "first thousands of calls; a daemon runs for days) (default %(default)s)",
    )
    parser.add_argument(
        "--warmup-rate", type=int, default=200, help="calls/s of the warm-up (default %(default)s)"
    )
    parser.add_argument(
        "--plot", default=None, help="PNG to draw (default: in the run's directory)"
    )
    parser.add_argument("--replot", default=None, help="redraw a saved results.json and exit")
    parser.add_argument(
        "--bench-site",
        default=str(REPO / ".venv" / "bench-site"),
        help="directory where sippy is installed (pip --target)",
    )
    args = parser.parse_args(argv)
    if args.hold_ms < 100:
        parser.error("--hold-ms must be at least 100")
    if not args.rates or min(args.rates) <= 0:
        parser.error("--rates needs positive numbers")
    if args.workers is not None and (not args.workers or min(args.workers) < 1):
        parser.error("--workers needs numbers from 1")
    return args


def machine_title(args: argparse.Namespace, started: datetime.datetime) -> str:
    return (
        f"bench_calls {started:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} CPUs, Python {platform.python_version()}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; UDP, hold {args.hold_ms} ms, "
        f"{args.seconds:g} s + {args.drain:g} s rest per step; "
        + (
            "SUT and SIPp unpinned, UAC one port per call; "
            if args.workers
            else "SUT on CPU 0, SIPp on CPU 1; "
        )
        + f"sbc log: {args.log}"
    )


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.replot:
        runs, meta = steps_from_json(Path(args.replot).read_text())
        target = Path(args.plot or Path(args.replot).with_suffix(".png"))
        plot(runs, target, meta.get("title", ""))
        report(meta, runs, args.reference)
        return 0
    sipp = shutil.which("sipp")
    if sipp is None:
        print("bench_calls: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if not TWISTD.exists():
        print(f"bench_calls: {TWISTD} not found (make install the venv)", file=sys.stderr)
        return 2
    pypy = Path(args.pypy).resolve() if args.pypy else None
    if pypy is not None and not (pypy / "bin" / "twistd").exists():
        print(f"bench_calls: {pypy / 'bin' / 'twistd'} not found (make pypy-venv)", file=sys.stderr)
        return 2
    taskset = shutil.which("taskset")
    if args.workers:
        pin_target, pin_load = [], []
    elif taskset is not None and (os.cpu_count() or 1) >= 2:
        pin_target, pin_load = [taskset, "-c", "0"], [taskset, "-c", "1"]
    else:
        print("bench_calls: fewer than 2 CPUs or no taskset: nothing is pinned", file=sys.stderr)
        pin_target, pin_load = [], []
    site = Path(args.bench_site)
    with_sippy = not args.no_sippy and (site / "sippy" / "b2bua_simple.py").exists()
    if not args.no_sippy and not with_sippy:
        print(f"sippy: not found in {site} (make bench-calls installs it); skipped")
    # Short path: the SBC's management socket lives here (UNIX paths are limited).
    workdir = Path(tempfile.mkdtemp(prefix="sbc-bench-calls-"))
    bench = Bench(sipp, workdir, pin_target, pin_load, args.hold_ms, "un" if args.workers else "u1")
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = {"title": machine_title(args, started)}
    print(meta["title"], flush=True)
    procs = Processes()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = (
        ("sbc", not args.no_sbc and not args.workers),
        *((f"sbc-{n}w", not args.no_sbc) for n in args.workers or ()),
        ("sbc-pypy", pypy is not None),
        ("sbc-baseline", args.baseline is not None),
        ("sippy", with_sippy),
    )
    ramps = [Ramp(n) for n, on in chosen if on]
    problems: dict[str, list[str]] = {}
    try:
        uas = {ramp.name: start_uas(procs, bench, ramp.name)[1] for ramp in ramps}
        baseline = Path(args.baseline) if args.baseline else None
        targets: dict[str, Target] = {}

        def target_for(ramp: Ramp) -> Target:
            """The ramp's system under test, started at its first step and kept running."""
            if ramp.name not in targets:
                uas_port = uas[ramp.name]
                if ramp.name == "sbc":
                    targets[ramp.name] = start_sbc_target(
                        procs, bench, uas_port, "sbc", args.log, None, SBC_LIMITS
                    )
                elif ramp.name == "sbc-pypy":
                    targets[ramp.name] = start_sbc_target(
                        procs, bench, uas_port, ramp.name, args.log, REPO, SBC_LIMITS, venv=pypy
                    )
                elif ramp.name.startswith("sbc-") and ramp.name.endswith("w"):
                    workers = int(ramp.name[len("sbc-") : -1])
                    targets[ramp.name] = start_sbc_target(
                        procs, bench, uas_port, ramp.name, args.log, None, SBC_LIMITS, workers
                    )
                elif ramp.name == "sbc-baseline":
                    limits = [x.strip() for x in args.baseline_limits.split(";") if x.strip()]
                    targets[ramp.name] = start_sbc_target(
                        procs, bench, uas_port, ramp.name, args.log, baseline, limits
                    )
                else:
                    targets[ramp.name] = start_sippy_target(procs, bench, uas_port, "sippy", site)
                if args.warmup > 0:
                    warm = run_step(
                        procs, bench, targets[ramp.name], name=ramp.name,
                        rate=args.warmup_rate, seconds=args.warmup, drain=args.drain,
                        tag=f"{ramp.name}-warmup",
                    )  # fmt: skip
                    print(
                        f"  {ramp.name}: warm-up, {args.warmup_rate}/s for {args.warmup:g} s: "
                        f"{warm.completed}/{warm.calls} calls completed (not counted)",
                        flush=True,
                    )
            return targets[ramp.name]

        for index, rate in enumerate(args.rates):
            for ramp in ramps:
                if ramp.done:
                    continue
                target = target_for(ramp)
                tag = f"{ramp.name}-{rate}-{index}"
                step = run_step(
                    procs, bench, target, name=ramp.name, rate=rate,
                    seconds=args.seconds, drain=args.drain, tag=tag,
                )  # fmt: skip
                print_step(ramp.name, step)
                ramp.record(step, args.past_failure)
                if ramp.done:
                    procs.stop(target.process)
            if all(ramp.done for ramp in ramps):
                break
        for name, target in targets.items():
            procs.stop(target.process)
            found = log_problems(target.log.read_text(errors="replace"))
            if found:
                problems[name] = found
    except BenchError as error:
        return print_failure("bench_calls", error, sorted(workdir.glob("*.log")))
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
    runs = {ramp.name: ramp.steps for ramp in ramps}
    (workdir / "results.json").write_text(steps_to_json(runs, meta))
    plot(runs, Path(args.plot) if args.plot else workdir / "perf-calls.png", meta["title"])
    report(meta, runs, args.reference)
    for tag, lines in problems.items():
        print(f"\n{tag} log: errors seen (first lines):")
        for line in lines:
            print("  " + line)
    print(f"\nlogs, SIPp statistics and results.json in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
