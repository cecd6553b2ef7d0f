"""``sbc-passwd FILE USER REALM``: add a digest user or change its password.

Asks for the password twice (or reads one line from standard input with
``--stdin``), then writes the user's line with both hashes through
:func:`sbc.auth.userdb.add_user`. docs/authentication.md shows how to use it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import TextIO

from sbc.auth.userdb import UserDatabaseError, add_user

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbc-passwd",
        description=(
            "Add a user to an sbc digest user database, or change its password."
            " The file keeps user:realm:HA1-MD5:HA1-SHA-256 lines (no passwords);"
            " it is created with mode 0600 if missing. Run 'reload user-database'"
            " in sbc-cli (or send SIGHUP) afterwards."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the user database (user-database FILE)")
    parser.add_argument("user", metavar="USER", help="the user name (the AOR's user part)")
    parser.add_argument(
        "realm", metavar="REALM", help="the realm: the AOR's domain, as the SBC challenges with it"
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of standard input (for scripts)",
    )
    return parser


def _read_password(use_stdin: bool, prompt_for: str, stdin: TextIO) -> str | None:
    """The password, or None after printing why there is none."""
    if use_stdin:
        return stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass(f"New password for {prompt_for}: ")
        second = getpass.getpass("Re-type the password: ")
    except (EOFError, KeyboardInterrupt):
        print("sbc-passwd: no password given, nothing changed", file=sys.stderr)
        return None
    if first != second:
        print("sbc-passwd: the passwords do not match, nothing changed", file=sys.stderr)
        return None
    return first


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status: 0 done, 1 refused (message on stderr), 2 usage."""
    args = _parser().parse_args(argv)
    if args.realm != args.realm.lower():
        # the SBC challenges with the AOR's domain in lower case: this line could never match
        print(
            f"sbc-passwd: realm {args.realm!r} has capital letters; the SBC's realms are "
            f"domains in lower case (use {args.realm.lower()!r}); nothing changed",
            file=sys.stderr,
        )
        return 1
    password = _read_password(args.stdin, f"{args.user} in realm {args.realm}", sys.stdin)
    if password is None:
        return 1
    if not password:
        print("sbc-passwd: empty password refused, nothing changed", file=sys.stderr)
        return 1
    try:
        added = add_user(args.file, args.user, args.realm, password)
    except UserDatabaseError as e:
        print(f"sbc-passwd: {e}; nothing changed", file=sys.stderr)
        return 1
    what = "Added user" if added else "Changed password of user"
    print(f"{what} {args.user!r} in realm {args.realm!r} in {args.file}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
