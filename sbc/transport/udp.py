"""SIP over UDP: one :class:`UdpListener` per UDP listener (address, port).

Twisted has no UDP endpoint, so the runtime opens it with
``reactor.listenUDP``. Each datagram is one message (RFC 3261 §18.3). In
order, a datagram:

1. from a source no attached adjacency on this listener accepts is dropped
   (``drops:no-adjacency``, logged with a rate limit);
2. made of CRLFs only (a keep-alive some clients send over UDP) is ignored
   (``keepalives``);
3. refused by the flood defence of an untrusted adjacency (banned source,
   over ``source-rate-limit``, blocked User-Agent: :mod:`sbc.flood`) is
   dropped silently, before anything else is looked at;
4. that starts with a TLS record header (0x16 0x03) is dropped
   (``drops:tls-on-plain``);
5. larger than ``max-message-size`` is answered 513 Message Too Large when it
   holds a readable request, else dropped (``drops:too-large``);
6. otherwise goes to the host (the runtime, then the SIP stack) with the
   adjacency it was classified to.
"""

from __future__ import annotations

from errno import ECONNREFUSED
from typing import Any, Protocol

from twisted.internet.protocol import DatagramProtocol

from sbc.adjacencies import ListenerKey
from sbc.config import Limits
from sbc.errors import ParseError
from sbc.sip.message import Request, parse_message
from sbc.sip.stack import error_answer
from sbc.transport.stream import starts_like_tls

__all__ = ["DatagramHost", "UdpListener"]


class DatagramHost(Protocol):
    """What a :class:`UdpListener` needs from the runtime."""

    @property
    def limits(self) -> Limits:
        """The limits in force."""

    def classify(self, listener: ListenerKey, source_ip: str) -> str | None:
        """The name of the adjacency a message from ``source_ip`` belongs to, or None."""

    def event(self, adjacency: str | None, counter: str, message: str, **fields: Any) -> None:
        """Count ``counter`` for ``adjacency`` and log ``message`` (rate-limited)."""

    def count(self, adjacency: str | None, counter: str, by: int = 1) -> None:
        """Count without logging."""

    def admit(self, adjacency: str, source_ip: str, data: bytes) -> bool:
        """False when the flood defence drops this message (already counted)."""

    def datagram_message(
        self, listener: UdpListener, adjacency: str, data: bytes, source: tuple[str, int]
    ) -> None:
        """A datagram that passed the guards, from ``source``, for ``adjacency``."""


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: Destination addresses a listener remembers as accepted by its port's
#: ``write`` (then sent with ``sendto`` directly); cleared when full.
MAX_CHECKED_DESTINATIONS = 4096


class UdpListener(DatagramProtocol):
    """The protocol of one UDP socket; see the module docstring.

    ``listener`` is the listener whose adjacencies the datagrams are
    classified into. ``local`` is the socket's own address and port: the
    listener's, except for a worker process's own socket beside a shared
    listener (docs/scaling.md), which is classified like the shared one.
    ``advertised``, when set, is the address flows arriving here name in
    our Via and Contact (the shared listener's: this process's own socket).
    """

    noisy = False  # the runtime logs listeners itself

    def __init__(
        self,
        host: DatagramHost,
        listener: ListenerKey,
        local: tuple[str, int] | None = None,
    ) -> None:
        self.host = host
        self.listener = listener
        self.local = local if local is not None else (listener.address, listener.port)
        self.advertised: tuple[str, int] | None = None
        # destination hosts Twisted's Port.write has accepted on this socket
        self._checked: set[str] = set()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = (str(addr[0]), int(addr[1]))
        adjacency = self.host.classify(self.listener, source[0])
        if adjacency is None:
            self.host.event(
                None,
                "drops:no-adjacency",
                "{listener}: datagram from {source} matches no attached adjacency, dropped",
                listener=str(self.listener),
                source=_text(source),
            )
            return
        if not datagram.strip(b"\r\n"):
            self.host.count(adjacency, "keepalives")
            return
        if not self.host.admit(adjacency, source[0], datagram):
            return
        if starts_like_tls(datagram):
            self.host.event(
                adjacency,
                "drops:tls-on-plain",
                "{listener}: TLS record in a datagram from {source}, dropped",
                listener=str(self.listener),
                source=_text(source),
            )
            return
        if len(datagram) > self.host.limits.max_message_size:
            self._too_large(adjacency, datagram, source)
            return
        self.host.datagram_message(self, adjacency, datagram, source)

    def _too_large(self, adjacency: str, datagram: bytes, source: tuple[str, int]) -> None:
        answer: bytes | None = None
        try:
            message = parse_message(datagram)
        except ParseError as error:
            answer = error_answer(ParseError("Message Too Large", 513, error.request))
        else:
            if isinstance(message, Request):
                answer = error_answer(ParseError("Message Too Large", 513, message))
        if answer is not None:
            self.send(answer, source)
        self.host.event(
            adjacency,
            "drops:too-large",
            "{listener}: {size}-byte datagram from {source} over max-message-size; {outcome}",
            listener=str(self.listener),
            size=len(datagram),
            source=_text(source),
            outcome="answered 513" if answer is not None else "dropped",
        )

    def send(self, data: bytes, remote: tuple[str, int]) -> bool:
        """Write one datagram to ``remote``; False when the socket is closed or refuses it.

        The first datagram to a host goes through Twisted's ``Port.write``,
        which checks that the host is an IP address of the socket's family;
        once it has accepted a host, later datagrams to it go to the socket's
        ``sendto`` directly (the same system call without the checks, with
        the same outcomes: an ICMP-refused destination still counts as sent).
        """
        transport = self.transport
        if transport is None:
            return False
        sock = getattr(transport, "socket", None)
        if sock is not None and remote[0] in self._checked:
            try:
                sock.sendto(data, remote)
            except OSError as error:
                return error.errno == ECONNREFUSED
            return True
        try:
            transport.write(data, remote)
        except Exception:
            return False
        if sock is not None:
            checked = self._checked
            if len(checked) >= MAX_CHECKED_DESTINATIONS:
                checked.clear()
            checked.add(remote[0])
        return True
