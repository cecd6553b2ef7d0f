"""``sbc-cli``: talk to a running sbc's management socket.

::

    sbc-cli [--socket PATH] [-c COMMAND]...

With ``-c`` the commands run in order and their output is printed; the exit
status is 1 when any command printed a ``%`` error line (2 when the socket
cannot be reached). Without ``-c`` it is interactive, with readline editing
and history (``~/.sbc_cli_history``); Tab completes keywords, literal
arguments and adjacency names; type ``?`` (or ``WORDS ?``) for help.

The socket defaults to ``$SBC_CLI_SOCKET``, else ``sbc.cli`` in the current
directory (the daemon's default is beside its config file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PROMPT_RE", "CliClient", "main"]

PROMPT_RE = re.compile(r"(?:^|\n)(sbc(?:\([a-z-]+\))?#) \Z")
"""A reply ends with the prompt the server sends after each command."""

_HISTORY = os.path.join(os.path.expanduser("~"), ".sbc_cli_history")


class CliClient:
    """A blocking connection to the management socket."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""
        self.closed = False
        _, self.prompt = self._read_reply()

    def _read_reply(self) -> tuple[str, str]:
        """(output, prompt) of one reply; prompt is '' when the server closed."""
        while True:
            text = self.buffer.decode("utf-8", errors="replace")
            match = PROMPT_RE.search(text)
            if match:
                self.buffer = b""
                return text[: match.start(1)], match.group(1)
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                self.buffer = b""
                return text, ""
            self.buffer += data

    def run(self, command: str) -> str:
        """Send one command line; return its output (ends with a newline when not empty)."""
        self.sock.sendall(command.encode("utf-8") + b"\n")
        output, prompt = self._read_reply()
        if prompt:
            self.prompt = prompt
        return output

    def complete(self, typed: str) -> list[str]:
        """The words that may complete ``typed`` (the line so far), from the server."""
        self.sock.sendall(b"\t" + typed.encode("utf-8") + b"\n")
        output, prompt = self._read_reply()
        if prompt:
            self.prompt = prompt
        return [line for line in output.split("\n") if line]

    def close(self) -> None:
        self.sock.close()


def _has_error(output: str) -> bool:
    return any(line.startswith("%") for line in output.splitlines())


def _one_shot(client: CliClient, commands: Sequence[str]) -> int:
    status = 0
    for command in commands:
        if client.closed:
            break
        output = client.run(command)
        sys.stdout.write(output)
        if _has_error(output):
            status = 1
    sys.stdout.flush()
    return status


def _completer(client: CliClient, readline: Any) -> Callable[[str, int], str | None]:
    """A readline completer asking the server (which knows the mode) for candidates."""
    found: list[str] = []

    def complete(text: str, state: int) -> str | None:
        if state == 0:
            typed = readline.get_line_buffer()[: readline.get_endidx()]
            try:
                found[:] = [f"{word} " for word in client.complete(typed)]
            except OSError:
                found[:] = []
        return found[state] if state < len(found) else None

    return complete


def _interactive(client: CliClient) -> int:
    try:
        import readline
    except ImportError:  # pragma: no cover - readline is missing on some platforms
        readline = None  # type: ignore[assignment]
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(_HISTORY)
        readline.set_completer(_completer(client, readline))
        readline.set_completer_delims(" ")
        readline.parse_and_bind("tab: complete")
    try:
        while not client.closed:
            try:
                line = input(client.prompt + " ")
            except EOFError:
                sys.stdout.write("\n")
                break
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                continue
            sys.stdout.write(client.run(line))
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(_HISTORY)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sbc-cli``."""
    parser = argparse.ArgumentParser(
        prog="sbc-cli", description="Management CLI of a running sbc (IOS-XR style)."
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get("SBC_CLI_SOCKET", "sbc.cli"),
        help="the daemon's CLI socket (default: $SBC_CLI_SOCKET or ./sbc.cli)",
    )
    parser.add_argument(
        "-c",
        dest="commands",
        action="append",
        metavar="COMMAND",
        help="run COMMAND (repeatable, in order) and exit; status 1 if any printed a %% error",
    )
    args = parser.parse_args(argv)
    try:
        client = CliClient(args.socket)
    except OSError as error:
        sys.stderr.write(
            f"sbc-cli: cannot connect to {args.socket}: {error.strerror or error} "
            "(the daemon's socket is sbc.cli beside its config file: give it with "
            "--socket PATH or SBC_CLI_SOCKET)\n"
        )
        return 2
    try:
        if args.commands:
            return _one_shot(client, args.commands)
        return _interactive(client)
    except OSError as error:
        sys.stderr.write(f"sbc-cli: connection lost: {error.strerror or error}\n")
        return 2
    finally:
        client.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
