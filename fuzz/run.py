"""`make fuzz`: coverage-guided fuzzing of the SIP parser, the stream framer and a whole SBC.

Usage (from the repository root, in the project's venv with atheris)::

    python fuzz/run.py [--runs N] [--target parse|framer|sbc ...]

Each target (fuzz/targets.py says what it feeds and what a failure is) runs
in a process of its own under libFuzzer (atheris), for ``--runs`` inputs
(default 100,000 each; ``make fuzz FUZZ_RUNS=N``), seeded from the RFC 4475
and RFC 5118 messages of tests/sip/torture/ and the messages of the interop
SIPp scenarios. Inputs libFuzzer finds that reach new code are kept in
fuzz/corpus/TARGET/ for the next run. A failing input (an exception, a
broken property, more than 1 s for one input) is saved as
fuzz/crashes/TARGET-crash-* (or -timeout-*) and the run fails; replay one
with ``python fuzz/run.py --target TARGET --replay FILE``. Both folders are
ignored by git.

Exit status: 0 when every target ran its inputs without a failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGET_NAMES = ("parse", "framer", "sbc")


def worker(target: str, libfuzzer_args: list[str]) -> None:
    """Run one target under atheris in this process (never returns)."""
    import atheris

    sys.path.insert(0, REPO)
    if any(name == "sbc" or name.startswith("sbc.") for name in sys.modules):
        raise SystemExit("fuzz: sbc was imported before atheris could instrument it")
    with atheris.instrument_imports(include=["sbc"]):  # coverage of everything they import
        for module in ("sbc.sip.message", "sbc.sip.framing", "sbc.service"):
            importlib.import_module(module)
    sys.path.insert(0, HERE)
    import targets

    targets.quiet_logs()
    function = targets.TARGETS[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], function)
    atheris.Fuzz()


def replay(target: str, path: str) -> int:
    """Run one saved input through ``target`` and show what happens."""
    sys.path.insert(0, REPO)
    sys.path.insert(0, HERE)
    import targets

    targets.quiet_logs()
    with open(path, "rb") as handle:
        data = handle.read()
    targets.TARGETS[target](data)
    print(f"{path}: no failure")
    return 0


def run_target(target: str, runs: int) -> tuple[bool, float]:
    """Fuzz ``target`` for ``runs`` inputs in a child process; (passed, seconds)."""
    sys.path.insert(0, HERE)
    import targets

    corpus = os.path.join(HERE, "corpus", target)
    crashes = os.path.join(HERE, "crashes")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"sbc-fuzz-{target}-") as seed_dir:
        for index, seed in enumerate(targets.seeds(target)):
            with open(os.path.join(seed_dir, f"seed-{index:04d}"), "wb") as handle:
                handle.write(seed)
        args = [
            sys.executable, os.path.abspath(__file__), "--worker", target, "--",
            f"-runs={runs}", "-timeout=1", "-rss_limit_mb=2048", "-max_len=8192",
            f"-artifact_prefix={crashes}{os.sep}{target}-", "-print_final_stats=1",
            corpus, seed_dir,
        ]  # fmt: skip
        result = subprocess.run(args, cwd=REPO, check=False)
    return result.returncode == 0, time.monotonic() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("FUZZ_RUNS", 100_000)))
    parser.add_argument("--target", action="append", choices=TARGET_NAMES)
    parser.add_argument("--replay", metavar="FILE")
    parser.add_argument("--worker", choices=TARGET_NAMES, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.worker:
        worker(args.worker, [a for a in rest if a != "--"])
    chosen = args.target or list(TARGET_NAMES)
    if args.replay:
        return replay(chosen[0], args.replay)
    failed = []
    for target in chosen:
        print(f"fuzz: {target}: {args.runs} inputs", flush=True)
        passed, seconds = run_target(target, args.runs)
        print(f"fuzz: {target}: {'passed' if passed else 'FAILED'} in {seconds:.0f} s", flush=True)
        if not passed:
            failed.append(target)
    if failed:
        print(f"fuzz: failing inputs are in {os.path.join(HERE, 'crashes')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
