"""Instructions per call in the SBC's own code: the figure that does not drift.

Run from the repository root (``make bench-instructions`` does this)::

    .venv/bin/python benchmarks/bench_instructions.py [--calls N] [--code DIR ...]

CPU time on a shared virtual machine drifts by a third within an hour, more
than most single changes gain. The number of instructions the CPU executes
does not: ``valgrind --tool=callgrind`` counts them, whatever else the
machine does. This runs ``bench_core.py`` (in process, no sockets) under
callgrind twice, with ``--calls 200`` and ``--calls 200 + N``, both after
the same warm-up, with ``PYTHONHASHSEED=0``; the difference divided by N is
the instructions per basic call (start-up and warm-up cancel out). Expect
about two minutes per checkout (callgrind runs the code some 50 times
slower).

``--code DIR`` (repeatable) counts other checkouts too (each put first on
the path), for a before/after comparison of a change. Instructions are not
time: a cache miss costs more than an addition. Use this to see whether a
change removes work; use ``bench_calls.py`` for what the daemon costs.

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_CALLS = 200
WARMUP = 100
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(code: Path, calls: int) -> int:
    """Instructions callgrind counts for one bench_core run of ``calls`` calls."""
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(code))
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(REPO / "benchmarks" / "bench_core.py"),
            "--calls",
            str(calls),
            "--warmup",
            str(WARMUP),
        ],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        check=False,
    )
    found = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(
            f"bench_instructions: callgrind failed for {code}:\n{result.stderr[-2000:]}"
        )
    return int(found.group(1))


def per_call(code: Path, calls: int) -> float:
    return (instructions(code, BASE_CALLS + calls) - instructions(code, BASE_CALLS)) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls counted (default 1000)")
    parser.add_argument(
        "--code", action="append", default=[], help="another checkout to count (repeatable)"
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    checkouts = [REPO, *(Path(c).resolve() for c in args.code)]
    figures = []
    for code in checkouts:
        figure = per_call(code, args.calls)
        figures.append(figure)
        print(f"{code}: {figure / 1e6:.3f} M instructions per call", flush=True)
    for code, figure in zip(checkouts[1:], figures[1:]):
        print(f"{code} against {REPO}: {figure / figures[0]:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
