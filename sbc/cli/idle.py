"""Closing management sessions nobody types in: the ``cli-idle-timeout`` limit.

A management session (UNIX socket or SSH shell) left open holds a login and,
in config mode, a candidate. Like a router's exec-timeout, a session with no
input for ``cli-idle-timeout`` seconds (a ``limits`` setting; 0 = never) is
told so and closed. The timeout is read from the running configuration each
time the timer is re-armed, so a commit changes it for open sessions too.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["IDLE_MESSAGE", "IdleTimer"]

IDLE_MESSAGE = "% session idle for {seconds} seconds: closed (cli-idle-timeout)"
"""What a session is told before it is closed."""


class IdleTimer:
    """Calls ``expired(seconds)`` once no input came for ``timeout()`` seconds."""

    def __init__(
        self,
        clock: IReactorTime,
        timeout: Callable[[], int],
        expired: Callable[[int], None],
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.expired = expired
        self._call: IDelayedCall | None = None

    def touch(self) -> None:
        """Input arrived (or the session started): start counting again."""
        self.stop()
        seconds = self.timeout()
        if seconds > 0:
            self._call = self.clock.callLater(seconds, self._fire, seconds)

    def stop(self) -> None:
        """The session ended: forget the timer."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self, seconds: int) -> None:
        self._call = None
        self.expired(seconds)
