"""Check configuration files: ``python -m sbc.config [options] FILE...``.

Prints ``FILE: ok`` or every problem found (``FILE:LINE: problem``) and exits
1 when a file is refused. ``--render`` prints the canonical form instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from sbc.config.parser import load_config
from sbc.config.render import render_config
from sbc.config.validate import find_problems
from sbc.errors import ConfigError


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the checker; return the exit status."""
    stream = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(
        prog="python -m sbc.config", description="Check sbc configuration files."
    )
    parser.add_argument(
        "--no-certificate",
        action="store_true",
        help="check as if sbc runs without --certificate (trusted-encrypted is refused)",
    )
    parser.add_argument(
        "--routing-policy",
        action="append",
        metavar="NAME",
        help="an extra routing policy name to accept (repeatable)",
    )
    parser.add_argument("--render", action="store_true", help="print the canonical form")
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    policies = ("default", "round-robin", "least-calls", *(args.routing_policy or ()))
    status = 0
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as e:
            print(e, file=stream)
            status = 1
            continue
        problems = find_problems(
            cfg, certificate_configured=not args.no_certificate, routing_policies=policies
        )
        for problem in problems:
            print(problem, file=stream)
        if problems:
            status = 1
        elif args.render:
            stream.write(render_config(cfg))
        else:
            print(f"{path}: ok", file=stream)
    return status


if __name__ == "__main__":
    sys.exit(main())
