"""Which listeners the adjacencies need, and which adjacency a message belongs to.

Pure functions over the configuration model (docs/configuration.md): several
adjacencies may share one listening socket; an inbound message belongs to the
attached adjacency whose listener it arrived on and whose ``remote-address``
matches its source, the most specific prefix winning. An adjacency without
``remote-address`` accepts any source, below every explicit prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import attrs

from sbc.config import AdjacencyConfig, Security
from sbc.identity import PeerIdentities

UDP = "UDP"
TCP = "TCP"
TLS = "TLS"


@attrs.frozen(order=True)
class ListenerKey:
    """One listening socket: local address, port and transport (UDP, TCP or TLS)."""

    address: str
    port: int
    transport: str

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport} {host}:{self.port}"


def listener_transports(adjacency: AdjacencyConfig) -> tuple[str, ...]:
    """The transports an adjacency has a socket for on its port.

    TLS when inbound is trusted-encrypted; with a plain outbound side that
    sends over UDP, also a UDP socket on the same port number (TLS uses TCP):
    the adjacency's requests leave from it, and their answers and the far
    end's in-dialog requests come back to it (behaviour.md §2). Plain TCP
    leaves from an ephemeral port, as every outbound connection does.
    """
    plain = {"udp": (UDP,), "tcp": (TCP,), "udp-tcp": (UDP, TCP)}[adjacency.transport]
    if adjacency.security_inbound is Security.TRUSTED_ENCRYPTED:
        if not adjacency.sends_tls and UDP in plain:
            return (TLS, UDP)
        return (TLS,)
    return plain


def replies_only(adjacency: AdjacencyConfig, transport: str) -> bool:
    """True when plain ``transport`` of ``adjacency`` may carry only answers and in-dialog requests.

    That is the plain side of an adjacency whose inbound security is
    trusted-encrypted: what it sent out comes back there, but a request
    that starts something must arrive over TLS to be taken as trusted.
    """
    return adjacency.listens_tls and transport != TLS


def listener_keys(adjacency: AdjacencyConfig) -> tuple[ListenerKey, ...]:
    """Every listener ``adjacency`` needs."""
    address = str(adjacency.address)
    return tuple(
        ListenerKey(address, adjacency.port, transport)
        for transport in listener_transports(adjacency)
    )


@attrs.frozen
class _Candidate:
    adjacency: AdjacencyConfig
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class AdjacencyTable:
    """Listeners and source classification for a set of attached adjacencies.

    Build a new table whenever the attached set changes; lookups are cheap
    (one dict lookup plus a scan of the adjacencies sharing that listener).
    Classification results are cached per (listener, source address): the
    table never changes, and a peer sends many messages; the cache holds at
    most :attr:`CLASSIFY_CACHE_SIZE` entries and starts over when full, so a
    flood from many sources costs memory only up to that bound.
    """

    CLASSIFY_CACHE_SIZE = 4096

    #: This process's own UDP ports, by the (address, port) of the listener all
    #: worker processes share (docs/scaling.md): filled in by the runtime of a
    #: worker process as it opens them; empty in a single process.
    own_ports: Mapping[tuple[str, int], int]

    def __init__(self, adjacencies: Iterable[AdjacencyConfig]) -> None:
        self.own_ports = {}
        self._by_listener: dict[ListenerKey, list[_Candidate]] = {}
        self._by_name: dict[str, AdjacencyConfig] = {}
        for adjacency in adjacencies:
            if not adjacency.attached:
                continue
            self._by_name[adjacency.name] = adjacency
            candidate = _Candidate(adjacency, tuple(adjacency.remote_addresses))
            for key in listener_keys(adjacency):
                self._by_listener.setdefault(key, []).append(candidate)
        self._addresses = frozenset(str(a.address) for a in self._by_name.values())
        self._classified: dict[tuple[ListenerKey, str], AdjacencyConfig | None] = {}

    @property
    def attached(self) -> list[AdjacencyConfig]:
        """The attached adjacencies, in configuration order."""
        return list(self._by_name.values())

    @property
    def addresses(self) -> frozenset[str]:
        """The SBC's own signaling addresses (text form, IPv6 without brackets)."""
        return self._addresses

    @property
    def listeners(self) -> list[ListenerKey]:
        """Every listener needed by an attached adjacency, in a stable order."""
        return sorted(self._by_listener)

    def adjacencies_on(self, key: ListenerKey) -> list[AdjacencyConfig]:
        """The attached adjacencies sharing listener ``key``."""
        return [c.adjacency for c in self._by_listener.get(key, ())]

    def get(self, name: str) -> AdjacencyConfig | None:
        """The attached adjacency called ``name``, if any."""
        return self._by_name.get(name)

    def local_address(self, adjacency: AdjacencyConfig, transport: str) -> tuple[str, int]:
        """The address and port a new request out of ``adjacency`` over ``transport``
        leaves from: the adjacency's, or over UDP this process's own port beside it
        (:attr:`own_ports`), so that its answers come back to this process."""
        local = (str(adjacency.address), adjacency.port)
        if transport == UDP:
            own = self.own_ports.get(local)
            if own is not None:
                return local[0], own
        return local

    def classify(self, key: ListenerKey, source_ip: str) -> AdjacencyConfig | None:
        """The adjacency a message from ``source_ip`` on listener ``key`` belongs to.

        ``None`` when no attached adjacency on that listener accepts the
        source: the caller drops and counts the message.
        """
        cache_key = (key, source_ip)
        try:
            return self._classified[cache_key]
        except KeyError:
            pass
        found = self._classify(key, source_ip)
        if len(self._classified) >= self.CLASSIFY_CACHE_SIZE:
            self._classified.clear()
        self._classified[cache_key] = found
        return found

    def _classify(self, key: ListenerKey, source_ip: str) -> AdjacencyConfig | None:
        candidates = self._by_listener.get(key)
        if not candidates:
            return None
        try:
            source = ipaddress.ip_address(source_ip.strip("[]"))
        except ValueError:
            return None
        best: AdjacencyConfig | None = None
        best_length = -2
        for candidate in candidates:
            if not candidate.networks:
                if best_length < -1:
                    best, best_length = candidate.adjacency, -1
                continue
            for network in candidate.networks:
                if (
                    network.version == source.version
                    and source in network
                    and network.prefixlen > best_length
                ):
                    best, best_length = candidate.adjacency, network.prefixlen
        return best


@attrs.frozen(cache_hash=True)
class InboundContext:
    """What the transport knows about one inbound message, handed to the SIP stack.

    ``adjacency`` is the classified adjacency's name, ``listener`` the socket
    it arrived on, ``peer_identities`` the verified TLS identities of the
    peer (``None`` on plain transports).
    """

    adjacency: str
    listener: ListenerKey
    peer_identities: PeerIdentities | None = None
