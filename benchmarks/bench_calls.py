"""Calls-per-second benchmark: the real ``twistd -n sbc`` under SIPp load, against sippy.

Run from the repository root (``make bench-calls`` does this)::

    PYTHONPATH=.venv/bench-site SIPLOG_LVL=WARN .venv/bin/python benchmarks/bench_calls.py \
        [--rates 100,200,...] [--seconds 10] [--no-sippy]

What it does, all on 127.0.0.1 with free UDP ports:

1. writes a config with two UDP adjacencies: ``access`` (untrusted, where
   the SIPp UAC sends) and ``core`` (trusted-unencrypted, ``signaling-peer``
   the SIPp UAS), and an ``rtg-src-adjacency-table`` routing access -> core;
2. starts ``twistd -n --pidfile= sbc`` pinned to core 0 (``taskset -c 0``)
   and a SIPp UAS (``benchmarks/scenarios/uas.xml``) pinned to core 1;
3. optionally holds ``--held-calls`` calls for a while to see the memory a
   call in progress costs (VmRSS before and at the peak);
4. drives SIPp's built-in UAC (``-sn uac -d HOLD``, pinned to core 1) at
   increasing rates, each step ``rate x --seconds`` calls, bounded by
   ``-timeout``; before and after each step it reads the SBC's CPU time
   (utime + stime from /proc/PID/stat) and VmRSS (/proc/PID/status);
   stops at the first step with more than 0.1 % failed calls;
5. stops the SBC and runs sippy's ``b2bua_simple`` through the same UAS and
   UAC, on the same core, at the rates up to the reference rate (200/s),
   and prints the ratio of CPU ms per call.

This is a benchmark, not a test: it asserts nothing about speed. It exits 0
unless something could not start (then 2). Every process it starts is
stopped by PID at the end, on error too; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
TWISTD = Path(sys.executable).parent / "twistd"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: A step passes with fewer failed calls than this fraction.
MAX_FAILED = 0.001
DEFAULT_RATES = (100, 200, 300, 400, 600, 800, 1000, 1500)
#: How long after its last call a step may run (retransmissions end after ~32 s).
STEP_GRACE_S = 40


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


def cpu_ms(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in milliseconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- SIPp -----------------------------------------------------------------


@dataclass
class SippStats:
    """The cumulative counters of SIPp's last ``-trace_stat`` line."""

    created: int
    successful: int
    failed: int
    retransmissions: int


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
    )


@dataclass
class Bench:
    """Where things are and how they are pinned."""

    sipp: str
    workdir: Path
    pin_target: list[str]
    pin_load: list[str]
    hold_ms: int


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


def run_uac(
    procs: Processes,
    bench: Bench,
    *,
    target_port: int,
    rate: int,
    calls: int,
    hold_ms: int,
    tag: str,
    during: Callable[[], None] | None = None,
) -> SippStats | None:
    """One bounded SIPp UAC run; ``during()`` is called every 0.25 s while it runs."""
    directory = bench.workdir / f"uac-{tag}"
    directory.mkdir()
    stat_file = directory / "stat.csv"
    send_seconds = calls / rate
    limit = int(send_seconds + hold_ms / 1000.0 + STEP_GRACE_S)
    args = [
        *bench.pin_load, bench.sipp, "-sn", "uac", "-d", str(hold_ms),
        "-i", HOST, "-p", str(free_udp_port()), "-t", "u1",
        "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-timeout", f"{limit}s", "-timeout_error", "-nostdin",
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
        "-trace_err", "-error_file", str(directory / "errors.log"), "-max_log_size", "1000000",
        f"{HOST}:{target_port}",
    ]  # fmt: skip
    child = procs.start("SIPp UAC", args, log=directory / "screen.log", cwd=directory)
    deadline = time.monotonic() + limit + 20
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if during is not None:
                during()
            time.sleep(0.25)
    finally:
        procs.stop(child)
    return read_stat_file(stat_file)


# --- one target (the SBC or sippy) ----------------------------------------


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

    @property
    def completed(self) -> int:
        return self.stats.successful if self.stats else 0

    @property
    def failed(self) -> int:
        """Calls that did not complete: failed, timed out, or never placed."""
        return self.calls - self.completed

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.calls if self.calls else 1.0

    @property
    def passed(self) -> bool:
        return self.stats is not None and self.failed_ratio < MAX_FAILED

    @property
    def ms_per_call(self) -> float | None:
        return self.cpu_ms / self.completed if self.completed else None


def run_steps(
    procs: Processes,
    bench: Bench,
    *,
    name: str,
    pid: int,
    target_port: int,
    drop_ports: Sequence[int],
    rates: Sequence[int],
    seconds: float,
    stop_on_failure: bool = True,
) -> list[Step]:
    """Drive ``rates`` in order; stop after the first step that fails (if told to)."""
    steps = []
    for rate in rates:
        calls = max(1, int(rate * seconds))
        drops_before = sum(udp_drops(p) for p in drop_ports)
        rss_before = rss_kib(pid)
        cpu_before = cpu_ms(pid)
        started = time.monotonic()
        stats = run_uac(
            procs, bench, target_port=target_port, rate=rate, calls=calls,
            hold_ms=bench.hold_ms, tag=f"{name}-{rate}",
        )  # fmt: skip
        wall = time.monotonic() - started
        step = Step(
            rate=rate,
            calls=calls,
            stats=stats,
            cpu_ms=cpu_ms(pid) - cpu_before,
            wall_s=wall,
            rss_before_kib=rss_before,
            rss_after_kib=rss_kib(pid),
            drops=sum(udp_drops(p) for p in drop_ports) - drops_before,
        )
        steps.append(step)
        print_step(name, step)
        if stop_on_failure and not step.passed:
            break
        time.sleep(1.0)  # let the last transactions settle before the next step
    return steps


def held_calls_memory(
    procs: Processes, bench: Bench, *, pid: int, target_port: int, calls: int, hold_ms: int
) -> tuple[int, int, int, int] | None:
    """Hold ``calls`` calls at once; (RSS before, peak RSS, completed, peak-window calls)."""
    rate = 200
    before = rss_kib(pid)
    peak = [before]

    def sample() -> None:
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], rss_kib(pid))

    stats = run_uac(
        procs, bench, target_port=target_port, rate=rate, calls=calls,
        hold_ms=hold_ms, tag="held", during=sample,
    )  # fmt: skip
    if stats is None:
        return None
    concurrent = min(calls, int(rate * hold_ms / 1000))
    return before, peak[0], stats.successful, concurrent


# --- output ---------------------------------------------------------------


def print_step(name: str, step: Step) -> None:
    per_call = f"{step.ms_per_call:.3f}" if step.ms_per_call is not None else "-"
    print(
        f"  {name}: {step.rate}/s: {step.completed}/{step.calls} calls completed, "
        f"{step.failed} failed ({step.failed_ratio:.2%}), CPU {step.cpu_ms / 1000:.2f} s, "
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


def table(steps: Sequence[Step]) -> str:
    columns = (
        "rate/s", "calls", "completed", "failed", "failed %", "retrans", "UDP drops",
        "CPU s", "CPU % core", "CPU ms/call", "RSS MiB before -> after",
    )  # fmt: skip

    def row(s: Step) -> tuple[object, ...]:
        return (
            s.rate, s.calls, s.completed, s.failed, f"{s.failed_ratio:.2%}",
            s.stats.retransmissions if s.stats else "-", s.drops, f"{s.cpu_ms / 1000:.2f}",
            f"{100 * s.cpu_ms / 1000 / s.wall_s:.0f} %",
            f"{s.ms_per_call:.3f}" if s.ms_per_call is not None else "-",
            f"{s.rss_before_kib / 1024:.1f} -> {s.rss_after_kib / 1024:.1f}",
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


# --- the two targets ------------------------------------------------------


def sbc_config(name: str, access_port: int, core_port: int, uas_port: int) -> str:
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
            # the load comes from one untrusted source: measured without the flood
            # defence's per-source limit (benchmarks/bench_flood.py measures that)
            "  limits",
            "   source-rate-limit 1000000 10",
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
class TargetRun:
    name: str
    steps: list[Step]
    log_problems: list[str]
    held: tuple[int, int, int, int] | None = None


def bench_sbc(procs: Processes, bench: Bench, args: argparse.Namespace) -> TargetRun:
    uas, uas_port = start_uas(procs, bench, "sbc")
    access_port, core_port = free_udp_port(), free_udp_port()
    config = bench.workdir / "sbc.conf"
    config.write_text(sbc_config("bench", access_port, core_port, uas_port))
    log = bench.workdir / "sbc.log"
    twistd = [
        str(TWISTD), "-n", "--pidfile=", "sbc", "--config", str(config),
        "--cli", f"unix:{bench.workdir / 'sbc.cli'}:mode=600",
    ]  # fmt: skip
    sbc = procs.start(
        "the SBC", [*bench.pin_target, *twistd], log=log, env=child_env(None), cwd=bench.workdir
    )
    wait_until(
        "the SBC",
        30.0,
        lambda: (
            "started with" in log.read_text(errors="replace")
            and udp_listening(access_port)
            and udp_listening(core_port)
        ),
        sbc,
    )
    print(f"sbc: pid {sbc.pid}, access UDP {access_port}, core UDP {core_port}, UAS {uas_port}")
    print(f"  RSS after start: {rss_kib(sbc.pid) / 1024:.1f} MiB", flush=True)
    held = None
    try:
        if args.held_calls:
            held = held_calls_memory(
                procs, bench, pid=sbc.pid, target_port=access_port,
                calls=args.held_calls, hold_ms=args.held_ms,
            )  # fmt: skip
            if held is not None:
                print(
                    f"  held calls: RSS {held[0] / 1024:.1f} -> peak {held[1] / 1024:.1f} MiB "
                    f"with about {held[3]} calls up ({held[2]} completed)",
                    flush=True,
                )
            # Let their transactions expire (Timer J/K/D: 32 s on UDP) before the steps.
            time.sleep(args.drain)
        steps = run_steps(
            procs, bench, name="sbc", pid=sbc.pid, target_port=access_port,
            drop_ports=(access_port, core_port), rates=args.rates, seconds=args.seconds,
        )  # fmt: skip
    finally:
        procs.stop(sbc)
        procs.stop(uas)
    problems = log_problems(log.read_text(errors="replace"))
    return TargetRun("sbc", steps, problems, held)


def bench_sippy(procs: Processes, bench: Bench, args: argparse.Namespace) -> TargetRun | None:
    site = Path(args.bench_site)
    if not (site / "sippy" / "b2bua_simple.py").exists():
        print(f"sippy: not found in {site} (make bench-calls installs it); skipped")
        return None
    uas, uas_port = start_uas(procs, bench, "sippy")
    port = free_udp_port()
    log = bench.workdir / "sippy.log"
    b2bua = [
        sys.executable, "-m", "sippy.b2bua_simple", "-f",
        "-l", HOST, "-p", str(port), "-n", f"{HOST}:{uas_port}",
        "-L", str(bench.workdir / "sippy-file.log"),
    ]  # fmt: skip
    child = procs.start(
        "sippy b2bua_simple", [*bench.pin_target, *b2bua], log=log,
        env=child_env(str(site.resolve())), cwd=bench.workdir,
    )  # fmt: skip
    try:
        wait_until("sippy b2bua_simple", 30.0, lambda: udp_listening(port), child)
        print(f"sippy: pid {child.pid}, UDP {port}, UAS {uas_port}", flush=True)
        rates = [r for r in args.rates if r <= args.reference] or [args.reference]
        if args.reference not in rates:
            rates.append(args.reference)
        steps = run_steps(
            procs, bench, name="sippy", pid=child.pid, target_port=port,
            drop_ports=(port,), rates=rates, seconds=args.seconds, stop_on_failure=False,
        )  # fmt: skip
    finally:
        procs.stop(child)
        procs.stop(uas)
    return TargetRun("sippy", steps, log_problems(log.read_text(errors="replace")))


# --- main -----------------------------------------------------------------


def best_rate(steps: Sequence[Step]) -> int | None:
    passed = [s.rate for s in steps if s.passed]
    return max(passed) if passed else None


def at_rate(steps: Sequence[Step], rate: int) -> Step | None:
    return next((s for s in steps if s.rate == rate), None)


def describe(step: Step | None) -> str:
    """CPU ms per call of a step, with its failures when it did not pass."""
    if step is None or step.ms_per_call is None:
        return "not measured (rate not reached)"
    text = f"{step.ms_per_call:.3f} ms"
    if not step.passed:
        text += f" (but {step.failed} of {step.calls} calls failed, {step.failed_ratio:.2%})"
    return text


def report(bench: Bench, args: argparse.Namespace, sbc: TargetRun, sippy: TargetRun | None) -> None:
    print()
    print(
        f"Calls benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"SIPp uac -d {bench.hold_ms} ms, {args.seconds:g} s per step, UDP; target on "
        f"'{' '.join(bench.pin_target) or 'any CPU'}', SIPp on "
        f"'{' '.join(bench.pin_load) or 'any CPU'}'"
    )
    for run in (sbc, sippy):
        if run is None:
            continue
        print()
        print(f"{run.name}:")
        print(table(run.steps))
    print()
    best = best_rate(sbc.steps)
    print(f"sbc highest rate with < {MAX_FAILED:.1%} failed calls: {best or 'none'} calls/s")
    reference = at_rate(sbc.steps, args.reference)
    ref_ms = reference.ms_per_call if reference is not None else None
    print(f"sbc CPU per call at {args.reference} calls/s: {describe(reference)}")
    if sbc.held is not None:
        before, peak, completed, concurrent = sbc.held
        print(
            f"sbc memory: {concurrent} calls held {args.held_ms} ms: RSS {before / 1024:.1f} -> "
            f"{peak / 1024:.1f} MiB, about {(peak - before) / max(concurrent, 1):.1f} KiB per "
            f"call in progress ({completed}/{args.held_calls} completed)"
        )
    if sippy is not None:
        sippy_ref = at_rate(sippy.steps, args.reference)
        sippy_ms = sippy_ref.ms_per_call if sippy_ref is not None else None
        print(f"sippy CPU per call at {args.reference} calls/s: {describe(sippy_ref)}")
        if ref_ms and sippy_ms:
            print(f"sippy/sbc CPU per call: {sippy_ms / ref_ms:.2f}x")
    for run in (sbc, sippy):
        if run is not None and run.log_problems:
            print()
            print(f"{run.name} log: errors seen (first lines):")
            for line in run.log_problems:
                print("  " + line)
    print(f"\nlogs and SIPp statistics in {bench.workdir}")


def print_failure(program: str, error: BenchError, logs: Sequence[Path]) -> int:
    """Say why a benchmark stopped, with the last lines of each log; the exit status (2)."""
    print(f"{program}: {error}", file=sys.stderr)
    for log in logs:
        print(f"--- {log.name} (last lines)", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
    return 2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=list(DEFAULT_RATES),
        help="comma-separated call rates (calls/s), in order (default %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of calls per step")
    parser.add_argument("--hold-ms", type=int, default=100, help="ACK to BYE (>= 100)")
    parser.add_argument("--reference", type=int, default=200, help="reference rate (calls/s)")
    parser.add_argument("--no-sippy", action="store_true", help="skip sippy's B2BUA")
    parser.add_argument(
        "--held-calls", type=int, default=2000, help="calls held at once for memory (0: skip)"
    )
    parser.add_argument("--held-ms", type=int, default=10000, help="hold time of those calls")
    parser.add_argument(
        "--drain", type=float, default=35.0, help="seconds of rest after the held calls"
    )
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
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    sipp = shutil.which("sipp")
    if sipp is None:
        print("bench_calls: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if not TWISTD.exists():
        print(f"bench_calls: {TWISTD} not found (make install the venv)", file=sys.stderr)
        return 2
    taskset = shutil.which("taskset")
    if taskset is not None and (os.cpu_count() or 1) >= 2:
        pin_target, pin_load = [taskset, "-c", "0"], [taskset, "-c", "1"]
    else:
        print("bench_calls: fewer than 2 CPUs or no taskset: nothing is pinned", file=sys.stderr)
        pin_target, pin_load = [], []
    # Short path: the SBC's management socket lives here (UNIX paths are limited).
    workdir = Path(tempfile.mkdtemp(prefix="sbc-bench-calls-"))
    bench = Bench(sipp, workdir, pin_target, pin_load, args.hold_ms)
    procs = Processes()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sbc = bench_sbc(procs, bench, args)
        sippy = None if args.no_sippy else bench_sippy(procs, bench, args)
        report(bench, args, sbc, sippy)
        return 0
    except BenchError as error:
        return print_failure("bench_calls", error, sorted(workdir.glob("*.log")))
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
