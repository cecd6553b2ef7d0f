"""Framing SIP messages on a stream transport (TCP, TLS): RFC 3261 §18.3.

One :class:`StreamFramer` per connection. Feed it the bytes as they
arrive; it returns each complete message (to give to
:func:`sbc.sip.message.parse_message`) and :data:`KEEPALIVE_PING` for every
RFC 5626 §4.4.1 double-CRLF ping seen between messages (answer it with a
single CRLF). A single CRLF between messages (a pong) is skipped.

On a stream, Content-Length is mandatory (§18.3, §20.14). A message without
it, with a malformed one, or larger than a limit makes :meth:`feed` raise
:class:`~sbc.errors.ParseError` (400, or 513 Message Too Large for a limit),
after which the framer is dead: close the connection. The error's
``request`` is set when the header section was complete and usable, so a
transport can still answer before closing.
"""

from __future__ import annotations

import enum
from typing import Final

from typing_extensions import TypeAlias

from sbc.sip.errors import ParseError
from sbc.sip.headers import parse_uint
from sbc.sip.message import _request_for_error

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KEEPALIVE_PING",
    "FramedItem",
    "KeepAlive",
    "StreamFramer",
]

DEFAULT_MAX_HEADER_BYTES: Final = 65536
DEFAULT_MAX_BODY_BYTES: Final = 65536
DEFAULT_MAX_MESSAGE_BYTES: Final = 65536


class KeepAlive(enum.Enum):
    """Keep-alive items a framer can return besides messages."""

    PING = "ping"


#: A ``CRLFCRLF`` keep-alive ping (RFC 5626 §4.4.1); answer with ``b"\r\n"``.
KEEPALIVE_PING: Final = KeepAlive.PING

#: What :meth:`StreamFramer.feed` returns: message bytes or a ping.
FramedItem: TypeAlias = "bytes | KeepAlive"

_PING: Final = b"\r\n\r\n"


class StreamFramer:
    """Splits one connection's byte stream into SIP messages.

    Limits (bytes, each 64 KiB by default): ``max_header_bytes`` for the
    start line and header fields up to and including the empty line,
    ``max_body_bytes`` for the body (the Content-Length value) and
    ``max_message_bytes`` for both together. Exceeding one raises
    ParseError(513) as soon as it is known, without buffering further.
    """

    def __init__(
        self,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the end of the headers
        self._need: int | None = None  # full length of the message being read
        self._error: ParseError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[FramedItem]:
        """Add received bytes; return the complete items, in order.

        Raises ParseError on a framing error, and again on every later call.
        """
        if self._error is not None:
            raise ParseError(self._error.reason, self._error.status)
        self._buf += data
        out: list[FramedItem] = []
        try:
            self._drain(out)
        except ParseError as err:
            self._error = err
            self._buf = bytearray()
            raise
        return out

    def _drain(self, out: list[FramedItem]) -> None:
        buf = self._buf
        while buf:
            need = self._need
            if need is None:
                first = buf[0]
                if first == 13 or first == 10:
                    if buf.startswith(_PING):
                        out.append(KEEPALIVE_PING)
                        del buf[:4]
                    elif len(buf) < 4 and _PING.startswith(buf):
                        return  # maybe the start of a ping: wait for more
                    elif buf.startswith(b"\r\n"):
                        del buf[:2]  # a pong, or a CRLF before a message (§7.5)
                    else:
                        del buf[:1]
                    continue
                need = self._read_head(buf)
                if need is None:
                    return
                self._need = need
            if len(buf) < need:
                return
            out.append(bytes(buf[:need]))
            del buf[:need]
            self._need = None
            self._scan = 0

    def _read_head(self, buf: bytearray) -> int | None:
        """Find the end of the header section; return the whole message length."""
        scan = self._scan
        e = buf.find(b"\n\r\n", scan)
        e2 = buf.find(b"\n\n", scan, len(buf) if e < 0 else e + 1)
        if e2 >= 0:
            hlen = e2 + 2
        elif e >= 0:
            hlen = e + 3
        else:
            if len(buf) > self.max_header_bytes:
                raise ParseError("Message Too Large", 513)
            self._scan = max(0, len(buf) - 2)
            return None
        head = bytes(buf[:hlen])
        if hlen > self.max_header_bytes:
            raise ParseError("Message Too Large", 513)
        clen = _content_length(head)
        if clen is None:
            raise ParseError("Missing Content-Length header", 400, _request_for_error(head))
        if clen > self.max_body_bytes or hlen + clen > self.max_message_bytes:
            raise ParseError("Message Too Large", 513, _request_for_error(head))
        return hlen + clen


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a header section; None when absent.

    ParseError(400) when it is malformed or given twice with different values.
    """
    found: str | None = None
    current: list[str] | None = None
    values: list[list[str]] = []
    for raw in head.decode("latin-1").split("\n")[1:]:
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            break
        if line[0] == " " or line[0] == "\t":
            if current is not None:
                current.append(line.strip(" \t"))
            continue
        name, _, value = line.partition(":")
        name = name.rstrip(" \t").lower()
        if name == "content-length" or name == "l":
            current = [value.strip(" \t")]
            values.append(current)
        else:
            current = None
    for parts in values:
        text = " ".join(p for p in parts if p)
        if found is not None and text != found:
            raise ParseError("Conflicting Content-Length headers", 400, _request_for_error(head))
        found = text
    if found is None:
        return None
    try:
        return parse_uint(found, "Content-Length")
    except ParseError as err:
        raise ParseError(err.reason, 400, _request_for_error(head)) from None
