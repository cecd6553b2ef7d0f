"""Where the daemon's CPU per call goes: one rate, measured from outside the process.

Run from the repository root (needs sipp, strace, and py-spy in the venv)::

    .venv/bin/python benchmarks/probe_daemon.py [--rate 200] [--window 10]

The SBC runs as ``bench_calls.py`` runs it (``twistd --logfile`` on the
benchmark configuration, pinned to CPU 0; SIPp on CPU 1), and SIPp's UAC
offers ``--rate`` calls per second for the whole probe. After a warm-up, three
windows of ``--window`` seconds follow each other:

1. plain: CPU time (utime, stime) and context switches (voluntary: the
   process went to sleep waiting for a datagram, i.e. a wake-up; involuntary:
   preempted) from /proc, per offered call;
2. ``strace -c -f`` attached: system calls per call, by name (strace slows
   the process; the counts per call stay right, their times do not);
3. ``py-spy record`` in blocking mode at 250 Hz: the busy samples split by
   layer (the first frame, from the innermost outwards, whose file belongs to
   a known layer names it), and the functions with the most own samples.

Overload control is turned off (``overload-lag-threshold 0``): strace slows
the daemon several times over, which it would take for overload. It prints
Markdown tables. This is a probe for docs/performance.md, not a
test; every process it starts is stopped by PID, every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_calls as bc

#: (substring of a frame's file, layer), checked in order for each frame.
LAYERS = (
    ("twisted/logger", "log output (twisted.logger, observers)"),
    ("twisted/python/logfile", "log output (twisted.logger, observers)"),
    ("sbc/logs.py", "log output (twisted.logger, observers)"),
    ("sbc/b2bua/calllog.py", "call log events (building them)"),
    ("secrets.py", "random identifiers"),
    ("random.py", "random identifiers"),
    ("sbc/overload.py", "overload control"),
    ("sbc/sip/message.py", "SIP parse / serialize"),
    ("sbc/sip/headers.py", "SIP parse / serialize"),
    ("sbc/sip/uri.py", "SIP parse / serialize"),
    ("sbc/sip/transaction.py", "transactions and timers"),
    ("sbc/sip/timers.py", "transactions and timers"),
    ("sbc/sip/stack.py", "stack (dispatch, Via rules)"),
    ("sbc/b2bua/", "B2BUA (calls, legs)"),
    ("sbc/core.py", "core (admission, dispatch)"),
    ("sbc/security.py", "core (admission, dispatch)"),
    ("sbc/routing/", "routing"),
    ("sbc/adjacencies.py", "classification"),
    ("sbc/identity.py", "classification"),
    ("sbc/counters.py", "counters"),
    ("sbc/transport/", "transport (runtime, UDP listener, timer)"),
    ("twisted/internet/udp.py", "UDP socket calls (recvfrom, sendto)"),
    ("twisted/internet/abstract.py", "UDP socket calls (recvfrom, sendto)"),
    ("twisted/internet/", "reactor (epoll loop, timers)"),
    ("twisted/python/", "reactor (epoll loop, timers)"),
)


def layer_of(stack: list[str]) -> str:
    """The layer of one sample: the innermost frame that belongs to a known layer."""
    for frame in reversed(stack):
        for marker, layer in LAYERS:
            if marker in frame:
                return layer
    return "other"


#: A sample whose innermost frame is one of these waits (epoll_wait, the log
#: writer thread's wait): idle, though py-spy (blocking mode) does not
#: always see it as idle.
IDLE_FRAMES = (
    "doPoll (twisted/internet/epollreactor.py)",
    "wait (threading.py)",
)


def read_raw(path: Path) -> tuple[list[tuple[list[str], int]], int]:
    """py-spy's raw (collapsed) output: ([(frames outermost first, samples)], idle samples)."""
    samples = []
    idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            if frames[-1].endswith(IDLE_FRAMES):
                idle += int(count)
            else:
                samples.append((frames, int(count)))
    return samples, idle


def ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of ``pid`` so far."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                name, _, value = line.partition(":")
                values[name.strip()] = int(value)
    return values["voluntary_ctxt_switches"], values["nonvoluntary_ctxt_switches"]


def utime_stime_ms(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (
        int(fields[11]) * 1000.0 / bc.CLOCK_TICKS,
        int(fields[12]) * 1000.0 / bc.CLOCK_TICKS,
    )


def parse_strace(text: str) -> dict[str, int]:
    """Calls per system call name from ``strace -c`` output."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0].replace(".", "").isdigit() and fields[-1].isidentifier():
            if fields[-1] == "total":
                continue
            try:
                calls[fields[-1]] = int(fields[3])
            except ValueError:
                continue
    return calls


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--hold-ms", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--log", choices=bc.LOG_MODES, default="file", help="how the SBC logs (default: file)"
    )
    parser.add_argument(
        "--code", default=None, help="another sbc checkout to probe (first on its PYTHONPATH)"
    )
    parser.add_argument(
        "--code-without-limits",
        action="store_true",
        help="the --code checkout predates source-rate-limit and overload control: "
        "no limits block in its configuration",
    )
    args = parser.parse_args(argv)
    sipp = shutil.which("sipp")
    strace = shutil.which("strace")
    pyspy = Path(sys.executable).parent / "py-spy"
    if sipp is None or strace is None or not pyspy.exists():
        print("probe_daemon: needs sipp, strace and .venv/bin/py-spy", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="sbc-probe-"))
    bench = bc.Bench(sipp, workdir, ["taskset", "-c", "0"], ["taskset", "-c", "1"], args.hold_ms)
    procs = bc.Processes()
    try:
        _, uas_port = bc.start_uas(procs, bench, "probe")
        code = Path(args.code) if args.code else None
        # strace slows the daemon several times over: overload control would
        # take that for overload and shed calls
        limits = (
            ()
            if code is not None and args.code_without_limits
            else (*bc.SBC_LIMITS, "overload-lag-threshold 0")
        )
        target = bc.start_sbc_target(procs, bench, uas_port, "probe", args.log, code, limits)
        access_port, pid = target.port, target.process.pid
        seconds = args.warmup + 3 * args.window + 6
        calls = int(args.rate * seconds)
        uac = bc.start_uac(
            procs, bench, target_port=access_port, rate=args.rate, calls=calls, tag="probe"
        )
        time.sleep(args.warmup)
        # 1. plain
        cpu0, vol0 = utime_stime_ms(pid), ctx_switches(pid)
        time.sleep(args.window)
        cpu1, vol1 = utime_stime_ms(pid), ctx_switches(pid)
        offered = args.rate * args.window
        user = (cpu1[0] - cpu0[0]) / offered
        system = (cpu1[1] - cpu0[1]) / offered
        # 2. strace
        trace = subprocess.run(
            ["timeout", "-s", "INT", str(args.window), strace, "-c", "-f", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=args.window + 30,
        )
        syscalls = parse_strace(trace.stderr)
        # 3. py-spy
        raw = workdir / "pyspy.txt"
        subprocess.run(
            [str(pyspy), "record", "-r", "250", "-d", str(int(args.window)), "-p", str(pid),
             "-f", "raw", "--nolineno", "-o", str(raw)],
            capture_output=True,
            timeout=args.window + 60,
        )  # fmt: skip
        procs.stop(uac)
        stats = bc.read_counts(workdir / "uac-probe")
    except bc.BenchError as error:
        return bc.print_failure("probe_daemon", error, sorted(workdir.glob("*.log")))
    finally:
        procs.stop_all()

    print(
        f"\n## sbc ({args.code or 'this checkout'}) at {args.rate} calls/s (log: {args.log}), "
        f"{args.window:g} s windows"
    )
    print(f"UAC: {stats}")
    print(
        f"\nCPU per call: {user + system:.3f} ms (user {user:.3f}, system {system:.3f}); "
        f"wake-ups (voluntary switches) per call {(vol1[0] - vol0[0]) / offered:.2f}, "
        f"preemptions per call {(vol1[1] - vol0[1]) / offered:.2f}"
    )
    print("\nSystem calls per call (strace -c -f):\n")
    rows = sorted(syscalls.items(), key=lambda item: -item[1])
    total = sum(syscalls.values())
    print(
        bc.markdown_table(
            ("system call", "per call"),
            [(name, f"{count / offered:.2f}") for name, count in rows if count / offered >= 0.01]
            + [("total", f"{total / offered:.2f}")],
        )
    )
    samples, idle = read_raw(raw) if raw.exists() else ([], 0)
    busy = sum(count for _, count in samples)
    if busy:
        by_layer: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        for stack, count in samples:
            by_layer[layer_of(stack)] += count
            own[stack[-1]] += count
        cpu_per_call = user + system
        print(
            f"\npy-spy, {busy} busy samples ({idle} more waiting, left out): "
            "share and the CPU ms per call it stands for\n"
        )
        print(
            bc.markdown_table(
                ("layer", "share", "ms per call"),
                [
                    (layer, f"{100 * n / busy:.1f} %", f"{cpu_per_call * n / busy:.3f}")
                    for layer, n in by_layer.most_common()
                ],
            )
        )
        print(f"\nTop {args.top} functions by own samples:\n")
        print(
            bc.markdown_table(
                ("function", "share"),
                [(f"`{name}`", f"{100 * n / busy:.1f} %") for name, n in own.most_common(args.top)],
            )
        )
    print(f"\nfiles in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
