"""Typed errors.

Every failure that can become a SIP response is a :class:`SipError` (or a
:class:`ParseError`, which is one); the single place that turns them into
responses is the SIP stack. Those two and their base :class:`SbcError` are
defined in the SIP core (:mod:`sbc.sip.errors`, which imports nothing above
it) and re-exported here. Configuration problems are :class:`ConfigError`
and always name the file and line.
"""

from __future__ import annotations

from sbc.sip.errors import ParseError, SbcError, SipError

__all__ = ["ConfigError", "ParseError", "SbcError", "SipError"]


class ConfigError(SbcError):
    """A configuration that cannot be accepted.

    ``path`` is the file (or ``"<cli>"`` / ``"<string>"``), ``line`` the
    1-based line number (0 when the problem is not tied to one line) and
    ``message`` the problem in one short sentence.
    """

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(path, line, message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}: {self.message}"
        return f"{self.path}: {self.message}"
