"""The errors of the SIP core: :class:`SipError` and :class:`ParseError`.

Every failure that can become a SIP response is a :class:`SipError` (or a
:class:`ParseError`, which is one); the single place that turns them into
responses is the SIP stack (:func:`sbc.sip.stack.error_response`).
:class:`SbcError`, the base of every error sbc raises on purpose, lives here
too, at the bottom of the layers, so that the SIP core imports nothing above
it. :mod:`sbc.errors` re-exports all three, next to ``ConfigError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only: the message module imports this one
    from sbc.sip.message import Request

__all__ = ["ParseError", "SbcError", "SipError"]


class SbcError(Exception):
    """Base class of every error sbc raises on purpose."""


class SipError(SbcError):
    """A failure that maps to a SIP final response.

    ``status`` and ``reason`` are the response's status line; ``warning`` is an
    optional RFC 3261 §20.43 warn-code (e.g. 380 "SIPS Not Allowed") that the
    responder adds as a Warning header with its own host as warn-agent.
    ``headers`` are further ``(name, value)`` pairs the response carries, in
    order: ``WWW-Authenticate`` / ``Proxy-Authenticate`` of a digest challenge,
    ``Allow`` of a 405, ``Unsupported`` of a 420, ``Retry-After`` of a 503.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        warning: tuple[int, str] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.warning = warning
        self.headers = headers


class ParseError(SipError):
    """Bytes that are not a valid SIP message.

    ``reason`` says what is wrong, in words fit for a response's reason
    phrase. ``status`` is the response the RFC asks for (400, 505 Version
    Not Supported or 513 Message Too Large).

    ``request`` is set when the bytes were a request and enough of it was
    understood to answer (a recognisable request line; Via, From, To,
    Call-ID and CSeq present, though maybe malformed: the answer copies them
    as received): the transport may then send ``status`` back with
    :func:`sbc.sip.response_to`. When it is ``None`` the message is dropped
    and counted, never answered.
    """

    def __init__(
        self,
        reason: str,
        status: int = 400,
        request: Request | None = None,
    ) -> None:
        super().__init__(status, reason)
        self.request = request

    @property
    def answerable(self) -> bool:
        """True when a response can be sent for this error."""
        return self.request is not None

    def __str__(self) -> str:
        return self.reason
