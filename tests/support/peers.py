"""Real peer tools for interop tests: find them, run them bounded, pick ports.

On CI (``CI=true``) a missing tool is a test failure, never a skip: the
suite must not go green by not running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import FailTest, SkipTest


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of ``name``; skip when absent locally, fail when absent on CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (apt-get install it; .ci/run does)"
        if on_ci():
            raise FailTest(message)
        raise SkipTest(message)
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free for both UDP and TCP right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, other) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


@attrs.define
class ProcessResult:
    """What a finished child process did."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes

    def text(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")


class _Capture(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.stdout = b""
        self.stderr = b""
        self.ended: defer.Deferred[ProcessResult] = defer.Deferred()
        self.watchers: list[tuple[bytes, defer.Deferred[None]]] = []

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._check()

    def _check(self) -> None:
        for marker, waiter in list(self.watchers):
            if marker in self.stdout or marker in self.stderr:
                self.watchers.remove((marker, waiter))
                waiter.callback(None)

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        result = ProcessResult(
            getattr(value, "exitCode", None),
            getattr(value, "signal", None),
            self.stdout,
            self.stderr,
        )
        for marker, waiter in self.watchers:
            waiter.errback(RuntimeError(f"exited before printing {marker!r}: {result.text()}"))
        self.watchers = []
        self.ended.callback(result)


class RunningProcess:
    """A child process started by a test; always ended by the test's cleanup."""

    def __init__(
        self,
        reactor: Any,
        args: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> None:
        self.reactor = reactor
        self.capture = _Capture(stdin)
        self.process = reactor.spawnProcess(
            self.capture, args[0], list(args), env=env or dict(os.environ), path=cwd
        )
        self.args = list(args)

    @property
    def ended(self) -> defer.Deferred[ProcessResult]:
        return self.capture.ended

    def output_contains(self, marker: bytes) -> defer.Deferred[None]:
        """Fires when ``marker`` shows on stdout or stderr (errback if it exits first)."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self.capture.watchers.append((marker, waiter))
        self.capture._check()
        return waiter

    def output(self) -> str:
        return (self.capture.stdout + self.capture.stderr).decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> defer.Deferred[ProcessResult]:
        """Signal the process (if still running) and wait for it to end."""
        if self.process.pid is not None:
            with contextlib.suppress(ProcessExitedAlready):
                self.process.signalProcess(sig)
        return self.ended

    def stop_within(self, seconds: float) -> defer.Deferred[ProcessResult]:
        """SIGTERM, then SIGKILL if it is still running after ``seconds``; wait for the end."""
        killer = self.reactor.callLater(seconds, self.stop, signal.SIGKILL)

        def disarm(result: ProcessResult) -> ProcessResult:
            if killer.active():
                killer.cancel()
            return result

        return self.stop(signal.SIGTERM).addCallback(disarm)


def run(
    reactor: Any, args: Sequence[str], timeout: float = 60.0, **kwargs: Any
) -> defer.Deferred[ProcessResult]:
    """Run a command to completion, killed after ``timeout`` seconds."""
    child = RunningProcess(reactor, args, **kwargs)
    killer = reactor.callLater(timeout, child.stop, signal.SIGKILL)

    def done(result: ProcessResult) -> ProcessResult:
        if killer.active():
            killer.cancel()
        return result

    return child.ended.addCallback(done)
