"""The frozen, typed configuration model.

Everything the rest of sbc learns from the configuration is read from these
objects; live objects are built from them and never stored in them. The
model is produced by :func:`sbc.config.parse_config` (or a
:class:`sbc.config.ConfigBuilder`) and turned back into text by
:func:`sbc.config.render_config`.

Line numbers (``line`` and ``setting_lines``) only serve error messages: they
take no part in equality, so a model parsed from a file equals the same model
built in code.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar, Union

import attrs

__all__ = [
    "DEFAULT_DIGEST_ALGORITHMS",
    "DEFAULT_DNS_PORT",
    "DEFAULT_PORT",
    "DEFAULT_ROUTING_POLICY",
    "DEFAULT_TLS_PORT",
    "LIMIT_SETTINGS",
    "Action",
    "AdjacencyConfig",
    "Authentication",
    "CallPolicySet",
    "ClientCertificate",
    "DigestAlgorithm",
    "DnsServer",
    "FrozenMap",
    "IPAddress",
    "IPNetwork",
    "LimitNumber",
    "LimitSetting",
    "Limits",
    "RoutingEntry",
    "RoutingTable",
    "SbcConfig",
    "Security",
    "StrEnum",
    "TableKind",
    "Transport",
]

DEFAULT_PORT = 5060
"""Port of a plain (untrusted or trusted-unencrypted) adjacency."""
DEFAULT_TLS_PORT = 5061
"""Port of a trusted-encrypted (SIP over TLS) adjacency."""
DEFAULT_ROUTING_POLICY = "default"
DEFAULT_DNS_PORT = 53
"""Port of a ``dns-server`` given without one."""

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class StrEnum(str, enum.Enum):
    """An enum whose members are their (configuration) words.

    ``str()`` and format give the word, as ``enum.StrEnum`` does; that class
    only exists from Python 3.11, and sbc also runs on PyPy 3.9.
    """

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]


K = TypeVar("K")
V = TypeVar("V")


class Security(StrEnum):
    """Security level of one side (inbound or outbound) of an adjacency."""

    UNTRUSTED = "untrusted"
    TRUSTED_ENCRYPTED = "trusted-encrypted"
    TRUSTED_UNENCRYPTED = "trusted-unencrypted"

    @property
    def display(self) -> str:
        """The form used by show commands, e.g. ``Trusted-Encrypted``."""
        return "-".join(part.capitalize() for part in self.value.split("-"))

    @property
    def trusted(self) -> bool:
        """True for both trusted levels."""
        return self is not Security.UNTRUSTED

    @property
    def encrypted(self) -> bool:
        """True when the side runs SIP over TLS."""
        return self is Security.TRUSTED_ENCRYPTED


class Transport(StrEnum):
    """Transports of a non-encrypted adjacency."""

    UDP = "udp"
    TCP = "tcp"
    UDP_TCP = "udp-tcp"

    @property
    def udp(self) -> bool:
        """True when UDP is used."""
        return self is not Transport.TCP

    @property
    def tcp(self) -> bool:
        """True when TCP is used."""
        return self is not Transport.UDP


class ClientCertificate(StrEnum):
    """Whether a TLS client of an inbound trusted-encrypted adjacency must show a certificate."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


class Authentication(StrEnum):
    """Who authenticates requests that start something on an adjacency (docs/phones.md)."""

    DIGEST = "digest"
    DELEGATED = "delegated"


class DigestAlgorithm(StrEnum):
    """A digest algorithm a challenge may offer (RFC 7616, RFC 8760)."""

    SHA256 = "sha-256"
    MD5 = "md5"

    @property
    def token(self) -> str:
        """The ``algorithm=`` value on the wire: ``SHA-256`` or ``MD5``."""
        return self.value.upper()


DEFAULT_DIGEST_ALGORITHMS: tuple[DigestAlgorithm, ...] = (
    DigestAlgorithm.SHA256,
    DigestAlgorithm.MD5,
)
"""Offered in this order when ``digest-algorithms`` is not configured (RFC 8760 §3)."""


class TableKind(StrEnum):
    """The four kinds of routing table; the value is the configuration keyword."""

    SRC_ADJACENCY = "rtg-src-adjacency-table"
    DST_DOMAIN = "rtg-dst-domain-table"
    DST_ADDRESS = "rtg-dst-address-table"
    ROUND_ROBIN = "rtg-round-robin-table"

    @property
    def match_command(self) -> str | None:
        """The entry command that sets the match key, None for round-robin."""
        return _MATCH_COMMANDS[self]


_MATCH_COMMANDS: dict[TableKind, str | None] = {
    TableKind.SRC_ADJACENCY: "match-adjacency",
    TableKind.DST_DOMAIN: "match-domain",
    TableKind.DST_ADDRESS: "match-address",
    TableKind.ROUND_ROBIN: None,
}


class Action(StrEnum):
    """What a routing entry does once it matched."""

    COMPLETE = "complete"
    NEXT_TABLE = "next-table"


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping that keeps insertion order.

    Equality is that of mappings (order does not matter).
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        if isinstance(items, Mapping):
            self._data: dict[K, V] = dict(items.items())
        else:
            self._data = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def _lines(value: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> FrozenMap[str, int]:
    return value if isinstance(value, FrozenMap) else FrozenMap(value)


def _address(value: IPAddress | str) -> IPAddress:
    return ipaddress.ip_address(value)


def _optional_address(value: IPAddress | str | None) -> IPAddress | None:
    return None if value is None else ipaddress.ip_address(value)


def _networks(values: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v) for v in values)


def _optional_authentication(value: Authentication | str | None) -> Authentication | None:
    return None if value is None else Authentication(value)


def _optional_algorithms(
    values: Iterable[DigestAlgorithm | str] | None,
) -> tuple[DigestAlgorithm, ...] | None:
    return None if values is None else tuple(DigestAlgorithm(v) for v in values)


@attrs.frozen
class AdjacencyConfig:
    """One ``adjacency sip NAME`` block (docs/configuration.md).

    ``signaling_port`` and ``signaling_peer_port`` are what was configured
    (None when absent); :attr:`port` and :attr:`peer_port` give the values in
    effect. ``digest_algorithms`` is None when not configured;
    :attr:`offered_algorithms` gives the ones in effect. ``signaling_address``
    may be None only while the adjacency is detached (an adjacency being
    built); use :attr:`address` where the adjacency is known to be attached.
    ``cluster_link``: the internal adjacency between the SBC nodes sharing a
    ``store`` (``cluster-link``, docs/scaling.md): calls for phones whose
    connection another node holds go through it; ``cluster_identity`` is the
    name every node's certificate carries on a trusted-encrypted one.
    """

    name: str
    signaling_address: IPAddress | None = attrs.field(converter=_optional_address)
    signaling_port: int | None = None
    transport: Transport = attrs.field(default=Transport.UDP_TCP, converter=Transport)
    remote_addresses: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)
    signaling_peer: str | None = None
    signaling_peer_port: int | None = None
    security_inbound: Security = attrs.field(default=Security.UNTRUSTED, converter=Security)
    security_outbound: Security = attrs.field(default=Security.UNTRUSTED, converter=Security)
    attached: bool = False
    client_certificate: ClientCertificate = attrs.field(
        default=ClientCertificate.REQUIRED, converter=ClientCertificate
    )
    authentication: Authentication | None = attrs.field(
        default=None, converter=_optional_authentication
    )
    digest_algorithms: tuple[DigestAlgorithm, ...] | None = attrs.field(
        default=None, converter=_optional_algorithms
    )
    sip_over_tls: bool = False
    cluster_link: bool = False
    cluster_identity: str | None = None
    line: int = attrs.field(default=0, eq=False, repr=False)
    setting_lines: FrozenMap[str, int] = attrs.field(
        factory=FrozenMap, converter=_lines, eq=False, repr=False
    )

    @property
    def offered_algorithms(self) -> tuple[DigestAlgorithm, ...]:
        """The digest algorithms a challenge offers, in order (default SHA-256, then MD5)."""
        if self.digest_algorithms is None:
            return DEFAULT_DIGEST_ALGORITHMS
        return self.digest_algorithms

    @property
    def certificate_optional(self) -> bool:
        """True when a TLS client may connect without a certificate (optional or none)."""
        return (
            self.security_inbound.encrypted
            and self.client_certificate is not ClientCertificate.REQUIRED
        )

    @property
    def address(self) -> IPAddress:
        """The signaling address; ``ValueError`` when none is configured."""
        if self.signaling_address is None:
            raise ValueError(f"adjacency {self.name!r} has no signaling-address")
        return self.signaling_address

    @property
    def port(self) -> int:
        """Local port in effect: 5061 when inbound is trusted-encrypted, else 5060."""
        if self.signaling_port is not None:
            return self.signaling_port
        return DEFAULT_TLS_PORT if self.security_inbound.encrypted else DEFAULT_PORT

    @property
    def peer_port(self) -> int:
        """Next-hop port in effect: 5061 when outbound is trusted-encrypted, else 5060."""
        if self.signaling_peer_port is not None:
            return self.signaling_peer_port
        return DEFAULT_TLS_PORT if self.security_outbound.encrypted else DEFAULT_PORT

    @property
    def listens_tls(self) -> bool:
        """True when the adjacency's listener speaks SIP over TLS."""
        return self.security_inbound.encrypted

    @property
    def sends_tls(self) -> bool:
        """True when requests sent out of the adjacency use TLS."""
        return self.security_outbound.encrypted

    @property
    def security_display(self) -> str:
        """``Trusted-Encrypted``, or ``inbound X, outbound Y`` when the sides differ."""
        if self.security_inbound is self.security_outbound:
            return self.security_inbound.display
        return f"inbound {self.security_inbound.display}, outbound {self.security_outbound.display}"

    @property
    def transport_display(self) -> str:
        """``TLS``, ``UDP``, ``TCP`` or ``UDP+TCP`` for the listener.

        An adjacency that listens on TLS but sends plain says both:
        ``TLS, sends UDP+TCP``.
        """
        plain = {
            Transport.UDP: "UDP",
            Transport.TCP: "TCP",
            Transport.UDP_TCP: "UDP+TCP",
        }[self.transport]
        if self.listens_tls:
            return "TLS" if self.sends_tls else f"TLS, sends {plain}"
        return plain


@attrs.frozen
class RoutingEntry:
    """One ``entry N`` of a routing table.

    ``match`` is the key the table compares (an adjacency name, a domain or a
    digit prefix, by table kind; None in a round-robin table). With
    ``action`` complete, ``dst_adjacency`` is a candidate; with next-table the
    walk continues in ``next_table``.
    """

    number: int
    match: str | None = None
    dst_adjacency: str | None = None
    action: Action = attrs.field(default=Action.COMPLETE, converter=Action)
    next_table: str | None = None
    line: int = attrs.field(default=0, eq=False, repr=False)
    setting_lines: FrozenMap[str, int] = attrs.field(
        factory=FrozenMap, converter=_lines, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if (self.action is Action.NEXT_TABLE) != (self.next_table is not None):
            raise ValueError("next_table is set exactly when action is next-table")


def _entries(values: Iterable[RoutingEntry]) -> tuple[RoutingEntry, ...]:
    return tuple(sorted(values, key=lambda e: e.number))


@attrs.frozen
class RoutingTable:
    """A routing table of a call-policy-set; entries are kept sorted by number."""

    kind: TableKind = attrs.field(converter=TableKind)
    entries: tuple[RoutingEntry, ...] = attrs.field(default=(), converter=_entries)
    line: int = attrs.field(default=0, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        numbers = [e.number for e in self.entries]
        if len(set(numbers)) != len(numbers):
            raise ValueError("entry numbers must be unique")
        if self.kind.match_command is None and any(e.match is not None for e in self.entries):
            raise ValueError(f"entries of a {self.kind} have no match")

    def entry(self, number: int) -> RoutingEntry:
        """The entry with this number; KeyError when absent."""
        for e in self.entries:
            if e.number == number:
                return e
        raise KeyError(number)


def _tables(
    value: Mapping[str, RoutingTable] | Iterable[tuple[str, RoutingTable]] = (),
) -> FrozenMap[str, RoutingTable]:
    return value if isinstance(value, FrozenMap) else FrozenMap(value)


@attrs.frozen
class CallPolicySet:
    """A ``call-policy-set N``: named routing tables and the one to start from."""

    first_call_routing_table: str | None = None
    tables: FrozenMap[str, RoutingTable] = attrs.field(factory=FrozenMap, converter=_tables)
    line: int = attrs.field(default=0, eq=False, repr=False)
    setting_lines: FrozenMap[str, int] = attrs.field(
        factory=FrozenMap, converter=_lines, eq=False, repr=False
    )


def _policy_sets(
    value: Mapping[int, CallPolicySet] | Iterable[tuple[int, CallPolicySet]] = (),
) -> FrozenMap[int, CallPolicySet]:
    return value if isinstance(value, FrozenMap) else FrozenMap(value)


def _domains(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _texts(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _adjacencies(values: Iterable[AdjacencyConfig]) -> tuple[AdjacencyConfig, ...]:
    return tuple(values)


@attrs.frozen
class DnsServer:
    """One ``dns-server ADDRESS [PORT]``: a DNS server the SBC asks for next hops."""

    address: IPAddress = attrs.field(converter=_address)
    port: int = DEFAULT_DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def _dns_servers(values: Iterable[DnsServer]) -> tuple[DnsServer, ...]:
    return tuple(values)


#: Port of a ``store redis://HOST`` given without one.
DEFAULT_REDIS_PORT = 6379


@attrs.frozen
class StoreUrl:
    """``store redis://HOST[:PORT][/DB]``: the Redis database shared by the SBC nodes.

    ``host`` is an IP address or a host name; ``db`` the Redis database
    number (``SELECT``). docs/scaling.md says what lives there.
    """

    host: str
    port: int = DEFAULT_REDIS_PORT
    db: int = 0

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


@attrs.frozen
class LimitNumber:
    """The second number of a two-number limit (``source-rate-limit REQUESTS SECONDS``)."""

    name: str
    attribute: str
    default: int
    low: int
    high: int
    unit: str


@attrs.frozen
class LimitSetting:
    """One command of the ``limits`` block: its keyword, model attribute, default and range.

    Most settings take one number (``tcp-idle-timeout N``). A setting with a
    ``second`` number takes two on the same line, each with its own model
    attribute and range: ``source-rate-limit REQUESTS SECONDS``; ``name``
    is the placeholder of the first number in the syntax.
    """

    keyword: str
    attribute: str
    default: int
    low: int
    high: int
    unit: str
    description: str
    second: LimitNumber | None = None
    name: str = "N"

    @property
    def numbers(self) -> tuple[LimitNumber, ...]:
        """Every number of the setting, in the order they are typed."""
        first = LimitNumber(self.name, self.attribute, self.default, self.low, self.high, self.unit)
        return (first,) if self.second is None else (first, self.second)

    @property
    def syntax(self) -> str:
        """``keyword N`` or ``keyword REQUESTS SECONDS``."""
        return " ".join([self.keyword, *(n.name for n in self.numbers)])

    @property
    def default_text(self) -> str:
        """The default as typed: ``300`` or ``200 10``."""
        return " ".join(str(n.default) for n in self.numbers)

    def values(self, limits: Limits) -> tuple[int, ...]:
        """The value(s) of this setting in ``limits``."""
        return tuple(getattr(limits, n.attribute) for n in self.numbers)

    def text(self, limits: Limits) -> str:
        """The value(s) as typed after the keyword: ``300`` or ``200 10``."""
        return " ".join(str(v) for v in self.values(limits))

    def is_default(self, limits: Limits) -> bool:
        """True when ``limits`` has this setting at its default."""
        return all(getattr(limits, n.attribute) == n.default for n in self.numbers)


LIMIT_SETTINGS: tuple[LimitSetting, ...] = (
    LimitSetting(
        "max-message-size",
        "max_message_size",
        65536,
        1024,
        16777216,
        "bytes",
        "Largest SIP message accepted (a larger request is answered 513 when possible)",
    ),
    LimitSetting(
        "max-connections-per-adjacency",
        "max_connections_per_adjacency",
        1024,
        1,
        1000000,
        "connections",
        "Inbound TCP/TLS connections open at once on one adjacency; more are refused",
    ),
    LimitSetting(
        "max-connections-per-source",
        "max_connections_per_source",
        32,
        1,
        1000000,
        "connections",
        "Inbound TCP/TLS connections open at once from one source address; more are refused",
    ),
    LimitSetting(
        "tls-handshake-timeout",
        "tls_handshake_timeout",
        10,
        1,
        3600,
        "seconds",
        "Time a TLS peer has to complete its handshake",
    ),
    LimitSetting(
        "tcp-idle-timeout",
        "tcp_idle_timeout",
        300,
        1,
        86400,
        "seconds",
        "Inbound TCP/TLS connection closed after this long without a message or keep-alive",
    ),
    LimitSetting(
        "partial-message-timeout",
        "partial_message_timeout",
        30,
        1,
        3600,
        "seconds",
        "Time a peer has to finish a message it started sending on TCP/TLS",
    ),
    LimitSetting(
        "outbound-idle-timeout",
        "outbound_idle_timeout",
        120,
        1,
        86400,
        "seconds",
        "Outbound TCP/TLS connection closed after this long without traffic",
    ),
    LimitSetting(
        "outbound-connect-timeout",
        "outbound_connect_timeout",
        10,
        1,
        300,
        "seconds",
        "Time to establish an outbound TCP connection",
    ),
    LimitSetting(
        "udp-receive-buffer",
        "udp_receive_buffer",
        4194304,
        65536,
        268435456,
        "bytes",
        "Kernel receive buffer of each UDP listener: datagrams that arrive while the SBC "
        "is busy wait there instead of being dropped",
    ),
    LimitSetting(
        "no-answer-timeout",
        "no_answer_timeout",
        180,
        1,
        86400,
        "seconds",
        "Timer C (RFC 3261 §16.6): an outgoing INVITE with no final response this long "
        "after it was sent or after its latest provisional response is cancelled and "
        "counts as 408 (hunting tries the next candidate)",
    ),
    LimitSetting(
        "overload-lag-threshold",
        "overload_lag_threshold",
        50,
        0,
        10000,
        "milliseconds",
        "Overload control: when every heartbeat for 1 s is later than this, part of the "
        "new INVITEs and REGISTERs are answered 503 with Retry-After; 0 turns shedding off",
    ),
    LimitSetting(
        "overload-retry-after",
        "overload_retry_after",
        10,
        1,
        3600,
        "seconds",
        "The Retry-After of the 503 that overload control answers",
    ),
    LimitSetting(
        "overload-pause-lag",
        "overload_pause_lag",
        500,
        0,
        10000,
        "milliseconds",
        "Overload control: shedding all it may and still above this event-loop lag, the "
        "UDP listeners of untrusted adjacencies are not read for a moment; 0: never",
    ),
    LimitSetting(
        "overload-queue-threshold",
        "overload_queue_threshold",
        50,
        0,
        100,
        "percent",
        "Overload control: a heartbeat that finds a UDP listener's kernel receive buffer "
        "fuller than this counts as late, whatever its lag; 0: the lag alone decides",
    ),
    LimitSetting(
        "detach-drain-time",
        "detach_drain_time",
        2,
        0,
        60,
        "seconds",
        "After no attach, TCP/TLS connections of the adjacency stay open this long "
        "for the answers to the BYEs that release its calls",
    ),
    LimitSetting(
        "cli-idle-timeout",
        "cli_idle_timeout",
        600,
        0,
        86400,
        "seconds",
        "A management session (UNIX socket or SSH shell) with no input for this long is "
        "closed; 0 never closes it",
    ),
    LimitSetting(
        "ssh-login-timeout",
        "ssh_login_timeout",
        120,
        1,
        3600,
        "seconds",
        "Time an SSH client has to authenticate before it is disconnected",
    ),
    LimitSetting(
        "ssh-max-auth-tries",
        "ssh_max_auth_tries",
        6,
        1,
        100,
        "attempts",
        "Failed SSH authentication requests tolerated on one connection",
    ),
    LimitSetting(
        "nonce-lifetime",
        "nonce_lifetime",
        300,
        10,
        86400,
        "seconds",
        "How long a digest challenge's nonce stays valid; a later answer gets a new "
        "challenge with stale=true",
    ),
    LimitSetting(
        "register-refresh-min",
        "register_refresh_min",
        0,
        0,
        86400,
        "seconds",
        "Relayed registrations: a phone's refresh is answered by the SBC itself while the "
        "registrar's binding has more than this left (0: every refresh is forwarded)",
    ),
    LimitSetting(
        "commit-history",
        "commit_history",
        100,
        1,
        10000,
        "commits",
        "Commits kept for show configuration commit list and rollback; older ones are deleted",
    ),
    LimitSetting(
        "dns-timeout",
        "dns_timeout",
        5,
        1,
        60,
        "seconds",
        "Time a DNS server has to answer one query for a next hop (asked again after "
        "1 second); a lookup with no answer fails the candidate (503)",
    ),
    LimitSetting(
        "dns-negative-cache-time",
        "dns_negative_cache_time",
        30,
        0,
        3600,
        "seconds",
        "How long a DNS answer saying no (no such domain, no records) or a DNS failure is "
        "remembered; positive answers are kept for their own TTL",
    ),
    LimitSetting(
        "dns-cache-entries",
        "dns_cache_entries",
        10000,
        10,
        1000000,
        "record sets",
        "DNS answers kept in the cache at most; beyond that the oldest are forgotten",
    ),
    LimitSetting(
        "source-rate-limit",
        "source_rate_requests",
        200,
        1,
        1000000,
        "messages",
        "Untrusted adjacencies: SIP messages one source address may send within SECONDS; "
        "the message over the limit bans the source for source-ban-time",
        second=LimitNumber("SECONDS", "source_rate_seconds", 10, 1, 3600, "seconds"),
        name="REQUESTS",
    ),
    LimitSetting(
        "source-ban-time",
        "source_ban_time",
        300,
        1,
        604800,
        "seconds",
        "How long a banned source is dropped silently",
    ),
    LimitSetting(
        "auth-failure-limit",
        "auth_failure_limit",
        30,
        1,
        1000000,
        "failures",
        "Untrusted and phone adjacencies: failed digest authentications one source address "
        "may make within SECONDS; the failure over the limit bans the source",
        second=LimitNumber("SECONDS", "auth_failure_seconds", 60, 1, 86400, "seconds"),
        name="FAILURES",
    ),
    LimitSetting(
        "max-tracked-sources",
        "max_tracked_sources",
        16384,
        16,
        10000000,
        "sources",
        "Source addresses whose message rate is tracked (and, separately, banned sources "
        "kept); when full, the oldest entry is forgotten",
    ),
    LimitSetting(
        "max-new-connections-per-second",
        "max_new_connections_per_second",
        500,
        1,
        1000000,
        "connections",
        "Inbound TCP/TLS connections accepted per second, all adjacencies together; "
        "more are refused at once",
    ),
    LimitSetting(
        "max-tls-handshakes-per-second",
        "max_tls_handshakes_per_second",
        200,
        1,
        1000000,
        "handshakes",
        "Inbound TLS connections (each a handshake) accepted per second, all adjacencies "
        "together; more are refused at once",
    ),
)
"""Every ``limits`` setting, in canonical (render) order."""

_LIMIT_DEFAULTS = {
    number.attribute: number.default for setting in LIMIT_SETTINGS for number in setting.numbers
}


@attrs.frozen
class Limits:
    """The ``limits`` block of ``sbe``: transport guards (docs/security-model.md).

    Every field has the default of :data:`LIMIT_SETTINGS`, so a
    configuration without the block gets sane limits. Sizes are in bytes,
    timeouts in seconds.
    """

    max_message_size: int = _LIMIT_DEFAULTS["max_message_size"]
    max_connections_per_adjacency: int = _LIMIT_DEFAULTS["max_connections_per_adjacency"]
    max_connections_per_source: int = _LIMIT_DEFAULTS["max_connections_per_source"]
    tls_handshake_timeout: int = _LIMIT_DEFAULTS["tls_handshake_timeout"]
    tcp_idle_timeout: int = _LIMIT_DEFAULTS["tcp_idle_timeout"]
    partial_message_timeout: int = _LIMIT_DEFAULTS["partial_message_timeout"]
    outbound_idle_timeout: int = _LIMIT_DEFAULTS["outbound_idle_timeout"]
    outbound_connect_timeout: int = _LIMIT_DEFAULTS["outbound_connect_timeout"]
    udp_receive_buffer: int = _LIMIT_DEFAULTS["udp_receive_buffer"]
    no_answer_timeout: int = _LIMIT_DEFAULTS["no_answer_timeout"]
    overload_lag_threshold: int = _LIMIT_DEFAULTS["overload_lag_threshold"]
    overload_retry_after: int = _LIMIT_DEFAULTS["overload_retry_after"]
    overload_pause_lag: int = _LIMIT_DEFAULTS["overload_pause_lag"]
    overload_queue_threshold: int = _LIMIT_DEFAULTS["overload_queue_threshold"]
    detach_drain_time: int = _LIMIT_DEFAULTS["detach_drain_time"]
    cli_idle_timeout: int = _LIMIT_DEFAULTS["cli_idle_timeout"]
    ssh_login_timeout: int = _LIMIT_DEFAULTS["ssh_login_timeout"]
    ssh_max_auth_tries: int = _LIMIT_DEFAULTS["ssh_max_auth_tries"]
    nonce_lifetime: int = _LIMIT_DEFAULTS["nonce_lifetime"]
    register_refresh_min: int = _LIMIT_DEFAULTS["register_refresh_min"]
    commit_history: int = _LIMIT_DEFAULTS["commit_history"]
    dns_timeout: int = _LIMIT_DEFAULTS["dns_timeout"]
    dns_negative_cache_time: int = _LIMIT_DEFAULTS["dns_negative_cache_time"]
    dns_cache_entries: int = _LIMIT_DEFAULTS["dns_cache_entries"]
    source_rate_requests: int = _LIMIT_DEFAULTS["source_rate_requests"]
    source_rate_seconds: int = _LIMIT_DEFAULTS["source_rate_seconds"]
    source_ban_time: int = _LIMIT_DEFAULTS["source_ban_time"]
    auth_failure_limit: int = _LIMIT_DEFAULTS["auth_failure_limit"]
    auth_failure_seconds: int = _LIMIT_DEFAULTS["auth_failure_seconds"]
    max_tracked_sources: int = _LIMIT_DEFAULTS["max_tracked_sources"]
    max_new_connections_per_second: int = _LIMIT_DEFAULTS["max_new_connections_per_second"]
    max_tls_handshakes_per_second: int = _LIMIT_DEFAULTS["max_tls_handshakes_per_second"]
    line: int = attrs.field(default=0, eq=False, repr=False)
    setting_lines: FrozenMap[str, int] = attrs.field(
        factory=FrozenMap, converter=_lines, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        for setting in LIMIT_SETTINGS:
            for number in setting.numbers:
                value = getattr(self, number.attribute)
                if not number.low <= value <= number.high:
                    what = setting.keyword
                    if setting.second is not None:
                        what += f" {number.name}"
                    raise ValueError(f"{what} {value} is out of range {number.low}..{number.high}")

    @property
    def changed(self) -> dict[str, int | tuple[int, ...]]:
        """The settings that differ from their default, keyword -> value, in canonical order.

        The value of a two-number setting (``source-rate-limit``) is a tuple.
        """
        return {
            s.keyword: getattr(self, s.attribute) if s.second is None else s.values(self)
            for s in LIMIT_SETTINGS
            if not s.is_default(self)
        }


@attrs.frozen
class SbcConfig:
    """The whole configuration: one ``sbc NAME`` service and its ``sbe``.

    ``adjacencies`` keep configuration order; ``limits`` are the transport
    guards (all defaults when the file has no ``limits`` block);
    ``user_database`` is the digest credentials file (``user-database FILE``).
    ``dns_servers`` are the DNS servers asked for next hops, in order (empty:
    the system's, from ``/etc/resolv.conf``).
    ``blocked_user_agents`` are the ``blocked-user-agent`` texts (a request on an
    untrusted adjacency whose User-Agent contains one is dropped and its
    source banned; see docs/hardening.md).
    ``store`` is the shared store of registrations and call counts
    (``store redis://...``; None: this process's memory, docs/scaling.md);
    ``node`` names this SBC among those sharing it (None: the host name).
    ``source`` is the file the model came from (for error messages; not part of equality).
    """

    service_name: str
    local_domains: tuple[str, ...] = attrs.field(default=(), converter=_domains)
    adjacencies: tuple[AdjacencyConfig, ...] = attrs.field(default=(), converter=_adjacencies)
    call_policy_sets: FrozenMap[int, CallPolicySet] = attrs.field(
        factory=FrozenMap, converter=_policy_sets
    )
    active_call_policy_set: int | None = None
    routing_policy: str = DEFAULT_ROUTING_POLICY
    limits: Limits = attrs.field(factory=Limits)
    user_database: str | None = None
    dns_servers: tuple[DnsServer, ...] = attrs.field(default=(), converter=_dns_servers)
    blocked_user_agents: tuple[str, ...] = attrs.field(default=(), converter=_texts)
    store: StoreUrl | None = None
    node: str | None = None
    source: str = attrs.field(default="<string>", eq=False, repr=False)
    line: int = attrs.field(default=0, eq=False, repr=False)
    setting_lines: FrozenMap[str, int] = attrs.field(
        factory=FrozenMap, converter=_lines, eq=False, repr=False
    )

    def adjacency(self, name: str) -> AdjacencyConfig:
        """The adjacency called ``name``; KeyError when there is none."""
        for adj in self.adjacencies:
            if adj.name == name:
                return adj
        raise KeyError(name)

    def get_adjacency(self, name: str) -> AdjacencyConfig | None:
        """The adjacency called ``name``, or None."""
        for adj in self.adjacencies:
            if adj.name == name:
                return adj
        return None

    @property
    def adjacencies_by_name(self) -> FrozenMap[str, AdjacencyConfig]:
        """Adjacencies keyed by name, in configuration order."""
        return FrozenMap((adj.name, adj) for adj in self.adjacencies)

    @property
    def active_policy_set(self) -> CallPolicySet | None:
        """The active call-policy-set, or None (no active set, or an unknown number)."""
        if self.active_call_policy_set is None:
            return None
        return self.call_policy_sets.get(self.active_call_policy_set)
