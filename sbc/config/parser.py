"""The configuration language: lexer and mode-stack interpreter.

A configuration file is the lines one would type in config mode (IOS-XR
style). Each line is split into words and applied to a mutable
:class:`ConfigBuilder` in the current :class:`Mode`. A command that the
current mode does not know pops modes until an enclosing mode accepts it, as
IOS-XR does when configuration is pasted; so indentation is optional.

The management CLI reuses this module command by command::

    builder = ConfigBuilder.from_config(running, path="<cli>")
    mode = ROOT
    mode = apply_command(builder, mode, split_words(line), line_no)
    commands_for(mode)          # what '?' lists
    candidate = builder.freeze()

A command that fails raises :class:`~sbc.errors.ConfigError` and leaves the
builder exactly as it was.
"""

from __future__ import annotations

import copy
import enum
import ipaddress
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import attrs

from sbc.config.model import (
    DEFAULT_DNS_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_ROUTING_POLICY,
    LIMIT_SETTINGS,
    Action,
    AdjacencyConfig,
    Authentication,
    CallPolicySet,
    ClientCertificate,
    DigestAlgorithm,
    DnsServer,
    IPAddress,
    IPNetwork,
    Limits,
    LimitSetting,
    RoutingEntry,
    RoutingTable,
    SbcConfig,
    Security,
    StoreUrl,
    StrEnum,
    TableKind,
    Transport,
)
from sbc.errors import ConfigError

__all__ = [
    "ROOT",
    "CommandHelp",
    "ConfigBuilder",
    "Frame",
    "Line",
    "Mode",
    "ModeKind",
    "apply_command",
    "commands_for",
    "load_config",
    "parse_config",
    "split_words",
    "tokenize",
]


# ---------------------------------------------------------------- lexer


@attrs.frozen
class Line:
    """One meaningful line of configuration text."""

    number: int
    indent: int
    words: tuple[str, ...]


def split_words(text: str) -> list[str]:
    """Split one command line into words (runs of non-blank characters)."""
    return text.split()


def tokenize(text: str) -> Iterator[Line]:
    """Yield the command lines of ``text``, skipping blank and ``!`` comment lines.

    Lines are numbered from 1, counting every newline-terminated line.
    """
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("!"):
            continue
        indent = len(raw) - len(raw.lstrip())
        yield Line(number, indent, tuple(stripped.split()))


# ---------------------------------------------------------------- modes


class ModeKind(enum.Enum):
    """Configuration modes; the value is the IOS-XR style prompt suffix."""

    CONFIG = "config"
    SBC = "config-sbc"
    SBE = "config-sbc-sbe"
    ADJACENCY = "config-sbc-sbe-adj-sip"
    CALL_POLICY_SET = "config-sbc-sbe-rtgpolicy"
    ROUTING_TABLE = "config-sbc-sbe-rtgpolicy-rtgtable"
    ENTRY = "config-sbc-sbe-rtgpolicy-rtgtable-entry"
    LIMITS = "config-sbc-sbe-limits"


_MODE_DESCRIPTION = {
    ModeKind.CONFIG: "config mode (top level)",
    ModeKind.SBC: "sbc mode",
    ModeKind.SBE: "sbe mode",
    ModeKind.ADJACENCY: "adjacency sip mode",
    ModeKind.CALL_POLICY_SET: "call-policy-set mode",
    ModeKind.ROUTING_TABLE: "routing table mode",
    ModeKind.ENTRY: "entry mode",
    ModeKind.LIMITS: "limits mode",
}


@attrs.frozen
class Frame:
    """One level of the mode stack and the object it edits."""

    kind: ModeKind
    name: str | None = None
    number: int | None = None
    table_kind: TableKind | None = None


@attrs.frozen
class Mode:
    """A mode stack, outermost first; immutable (commands return a new one)."""

    frames: tuple[Frame, ...]

    @property
    def kind(self) -> ModeKind:
        """Kind of the innermost mode."""
        return self.frames[-1].kind

    @property
    def top(self) -> Frame:
        """The innermost frame."""
        return self.frames[-1]

    @property
    def prompt(self) -> str:
        """Prompt suffix, e.g. ``config-sbc-sbe-adj-sip``."""
        return self.kind.value

    @property
    def is_root(self) -> bool:
        """True in config mode (nothing to pop)."""
        return len(self.frames) == 1

    def parent(self) -> Mode:
        """The mode ``exit`` returns to (config mode stays config mode)."""
        return self if self.is_root else Mode(self.frames[:-1])

    def push(self, frame: Frame) -> Mode:
        """The mode entered by a command that opens ``frame``."""
        return Mode((*self.frames, frame))

    def find(self, kind: ModeKind) -> Frame:
        """The enclosing frame of ``kind``; KeyError when not inside one."""
        for frame in reversed(self.frames):
            if frame.kind is kind:
                return frame
        raise KeyError(kind)


ROOT = Mode((Frame(ModeKind.CONFIG),))
"""Config mode: where a file, and a ``configure`` session, start."""


# ---------------------------------------------------------------- drafts


@attrs.define
class _AdjacencyDraft:
    name: str
    line: int
    signaling_address: IPAddress | None = None
    signaling_port: int | None = None
    transport: Transport = Transport.UDP_TCP
    remote_addresses: list[IPNetwork] = attrs.Factory(list)
    signaling_peer: str | None = None
    signaling_peer_port: int | None = None
    security_inbound: Security = Security.UNTRUSTED
    security_outbound: Security = Security.UNTRUSTED
    attached: bool = False
    client_certificate: ClientCertificate = ClientCertificate.REQUIRED
    authentication: Authentication | None = None
    digest_algorithms: tuple[DigestAlgorithm, ...] | None = None
    sip_over_tls: bool = False
    cluster_link: bool = False
    cluster_identity: str | None = None
    setting_lines: dict[str, int] = attrs.Factory(dict)


@attrs.define
class _EntryDraft:
    number: int
    line: int
    match: str | None = None
    dst_adjacency: str | None = None
    action: Action | None = None
    next_table: str | None = None
    setting_lines: dict[str, int] = attrs.Factory(dict)


@attrs.define
class _TableDraft:
    name: str
    kind: TableKind
    line: int
    entries: dict[int, _EntryDraft] = attrs.Factory(dict)


@attrs.define
class _PolicySetDraft:
    number: int
    line: int
    first_call_routing_table: str | None = None
    tables: dict[str, _TableDraft] = attrs.Factory(dict)
    setting_lines: dict[str, int] = attrs.Factory(dict)


# ---------------------------------------------------------------- values

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z")
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\Z")
_DIGITS_RE = re.compile(r"\+?[0-9]{1,32}\Z")
_NUMBER_RE = re.compile(r"[0-9]{1,10}\Z")
_MAX_NUMBER = 2**31 - 1
_MAX_USER_AGENT_TEXT = 128

_CLI_ONLY = frozenset({"configure", "commit", "abort", "show", "do"})


class _InvalidError(Exception):
    """A bad argument; the interpreter turns it into a ConfigError."""


def _name(word: str, what: str) -> str:
    if not _NAME_RE.match(word):
        raise _InvalidError(
            f"bad {what} '{word}': use letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (at most 63)"
        )
    return word


def _is_hostname(word: str) -> bool:
    if len(word) > 253:
        return False
    labels = word.split(".")
    return all(_LABEL_RE.match(label) for label in labels) and not labels[-1].isdigit()


def _host(word: str, what: str) -> str:
    try:
        ipaddress.ip_address(word)
    except ValueError:
        if not _is_hostname(word):
            raise _InvalidError(f"bad {what} '{word}': not a host name or IP address") from None
    return word


def _number(word: str, what: str, low: int = 1, high: int = _MAX_NUMBER) -> int:
    if not _NUMBER_RE.match(word) or not low <= int(word) <= high:
        raise _InvalidError(f"bad {what} '{word}': expected a number from {low} to {high}")
    return int(word)


def _port(word: str) -> int:
    if not _NUMBER_RE.match(word) or not 1 <= int(word) <= 65535:
        raise _InvalidError(f"bad port '{word}': expected a number from 1 to 65535")
    return int(word)


def _family(word: str) -> int:
    if word == "ipv4":
        return 4
    if word == "ipv6":
        return 6
    raise _InvalidError(f"bad address family '{word}': expected ipv4 or ipv6")


def _address(family: int, word: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(word)
    except ValueError:
        raise _InvalidError(f"bad IPv{family} address '{word}'") from None
    if addr.version != family:
        raise _InvalidError(f"bad IPv{family} address '{word}': it is an IPv{addr.version} address")
    return addr


def _prefix(family: int, word: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(word, strict=False)
    except ValueError:
        raise _InvalidError(f"bad prefix '{word}': expected ADDRESS/LENGTH") from None
    if net.version != family:
        raise _InvalidError(f"bad prefix '{word}': it is not an IPv{family} prefix")
    try:
        ipaddress.ip_network(word)
    except ValueError:
        raise _InvalidError(
            f"bad prefix '{word}': host bits are set (did you mean {net}?)"
        ) from None
    return net


def _security(word: str) -> Security:
    try:
        return Security(word)
    except ValueError:
        raise _InvalidError(
            f"bad security type '{word}': expected untrusted, trusted-encrypted "
            "or trusted-unencrypted"
        ) from None


_E = TypeVar("_E", bound=StrEnum)


def _choice(kind: type[_E], word: str, what: str) -> _E:
    try:
        return kind(word)
    except ValueError:
        expected = ", ".join(member.value for member in kind)
        raise _InvalidError(f"bad {what} '{word}': expected one of {expected}") from None


def _file_name(word: str, what: str) -> str:
    if not word or any(ord(c) < 32 for c in word):
        raise _InvalidError(f"bad {what} file name {word!r}")
    return word


def _transport(word: str) -> Transport:
    try:
        return Transport(word)
    except ValueError:
        raise _InvalidError(f"bad transport '{word}': expected udp, tcp or udp-tcp") from None


# ---------------------------------------------------------------- commands

_Handler = Callable[["ConfigBuilder", Mode, Sequence[str], int, bool], Mode]


@attrs.frozen
class CommandHelp:
    """What ``?`` shows for one command of a mode."""

    keyword: str
    syntax: str
    description: str
    no_syntax: str | None = None


@attrs.frozen
class _Command:
    help: CommandHelp
    handler: _Handler
    table_kinds: frozenset[TableKind] | None = None


_COMMANDS: dict[ModeKind, dict[str, _Command]] = {kind: {} for kind in ModeKind}


def _command(
    mode: ModeKind,
    syntax: str,
    description: str,
    no_syntax: str | None = None,
    table_kinds: frozenset[TableKind] | None = None,
) -> Callable[[_Handler], _Handler]:
    keyword = syntax.split()[0]

    def register(handler: _Handler) -> _Handler:
        _COMMANDS[mode][keyword] = _Command(
            CommandHelp(keyword, syntax, description, no_syntax), handler, table_kinds
        )
        return handler

    return register


def _arity(args: Sequence[str], syntax: str, low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(args) <= high:
        problem = "incomplete command" if len(args) < low else "too many words"
        raise _InvalidError(f"{problem}: usage: {syntax}")


def _commands_in(mode: Mode) -> dict[str, _Command]:
    commands = _COMMANDS[mode.kind]
    if mode.kind is not ModeKind.ENTRY:
        return commands
    kind = mode.top.table_kind
    return {k: c for k, c in commands.items() if c.table_kinds is None or kind in c.table_kinds}


_EXIT_HELP = CommandHelp("exit", "exit", "Leave this mode")
_END_HELP = CommandHelp("end", "end", "Return to the top level")


def commands_for(mode: Mode) -> tuple[CommandHelp, ...]:
    """The commands valid in ``mode`` (not counting enclosing modes), for ``?``."""
    found = [c.help for c in _commands_in(mode).values()]
    return (*sorted(found, key=lambda h: h.keyword), _EXIT_HELP, _END_HELP)


def _where(keyword: str) -> str | None:
    places = []
    for kind, commands in _COMMANDS.items():
        command = commands.get(keyword)
        if command is None:
            continue
        if command.table_kinds is not None:
            kinds = " or ".join(sorted(str(k) for k in command.table_kinds))
            places.append(f"entries of a {kinds}")
        else:
            places.append(_MODE_DESCRIPTION[kind])
    return ", ".join(places) or None


# ---------------------------------------------------------------- builder


class ConfigBuilder:
    """A mutable candidate configuration, edited one command at a time.

    ``path`` names the source in error messages. With ``reenter`` true (the
    CLI), ``adjacency sip NAME`` and the other block commands enter an
    existing block to edit it; with it false (a file) a second block of the
    same name is a duplicate and an error.
    """

    def __init__(self, path: str = "<string>", *, reenter: bool = True) -> None:
        self.path = path
        self.reenter = reenter
        self.service_name: str | None = None
        self.service_line = 0
        self.local_domains: dict[str, int] = {}
        self.dns_servers: dict[DnsServer, int] = {}
        self.adjacencies: dict[str, _AdjacencyDraft] = {}
        self.call_policy_sets: dict[int, _PolicySetDraft] = {}
        self.active_call_policy_set: int | None = None
        self.routing_policy = DEFAULT_ROUTING_POLICY
        self.user_database: str | None = None
        self.store: StoreUrl | None = None
        self.node: str | None = None
        self.setting_lines: dict[str, int] = {}
        # blocked-user-agent TEXT -> line
        self.blocked_user_agents: dict[str, int] = {}
        # limits: attribute -> value for the settings given; keyword -> line
        self.limits: dict[str, int] = {}
        self.limits_line = 0
        self.limits_lines: dict[str, int] = {}

    def _clear_limits(self) -> None:
        self.limits = {}
        self.limits_line = 0
        self.limits_lines = {}

    def _clear_sbe(self) -> None:
        self.local_domains = {}
        self.dns_servers = {}
        self.adjacencies = {}
        self.call_policy_sets = {}
        self.active_call_policy_set = None
        self.routing_policy = DEFAULT_ROUTING_POLICY
        self.user_database = None
        self.store = None
        self.node = None
        self.setting_lines = {}
        self.blocked_user_agents = {}
        self._clear_limits()

    def _clear(self) -> None:
        self._clear_sbe()
        self.service_name = None
        self.service_line = 0

    # -- construction

    @classmethod
    def from_config(
        cls, cfg: SbcConfig, path: str = "<cli>", *, reenter: bool = True
    ) -> ConfigBuilder:
        """A builder holding ``cfg``, to edit it (the CLI's candidate)."""
        b = cls(path, reenter=reenter)
        b.service_name = cfg.service_name
        b.service_line = cfg.line
        b.local_domains = {
            d: cfg.setting_lines.get(f"local-domain {d}", 0) for d in cfg.local_domains
        }
        b.dns_servers = {
            server: cfg.setting_lines.get(_dns_server_key(server), 0) for server in cfg.dns_servers
        }
        for adj in cfg.adjacencies:
            b.adjacencies[adj.name] = _AdjacencyDraft(
                name=adj.name,
                line=adj.line,
                signaling_address=adj.signaling_address,
                signaling_port=adj.signaling_port,
                transport=adj.transport,
                remote_addresses=list(adj.remote_addresses),
                signaling_peer=adj.signaling_peer,
                signaling_peer_port=adj.signaling_peer_port,
                security_inbound=adj.security_inbound,
                security_outbound=adj.security_outbound,
                attached=adj.attached,
                client_certificate=adj.client_certificate,
                authentication=adj.authentication,
                digest_algorithms=adj.digest_algorithms,
                sip_over_tls=adj.sip_over_tls,
                cluster_link=adj.cluster_link,
                cluster_identity=adj.cluster_identity,
                setting_lines=dict(adj.setting_lines),
            )
        for number, cps in cfg.call_policy_sets.items():
            draft = _PolicySetDraft(
                number,
                cps.line,
                cps.first_call_routing_table,
                setting_lines=dict(cps.setting_lines),
            )
            for name, table in cps.tables.items():
                tdraft = _TableDraft(name, table.kind, table.line)
                for e in table.entries:
                    tdraft.entries[e.number] = _EntryDraft(
                        e.number,
                        e.line,
                        e.match,
                        e.dst_adjacency,
                        e.action,
                        e.next_table,
                        dict(e.setting_lines),
                    )
                draft.tables[name] = tdraft
            b.call_policy_sets[number] = draft
        b.active_call_policy_set = cfg.active_call_policy_set
        b.routing_policy = cfg.routing_policy
        b.user_database = cfg.user_database
        b.store = cfg.store
        b.node = cfg.node
        for setting in LIMIT_SETTINGS:
            if not setting.is_default(cfg.limits):
                for limit in setting.numbers:
                    b.limits[limit.attribute] = getattr(cfg.limits, limit.attribute)
        b.limits_line = cfg.limits.line
        b.limits_lines = dict(cfg.limits.setting_lines)
        b.blocked_user_agents = {
            text: cfg.setting_lines.get(f"blocked-user-agent {text}", 0)
            for text in cfg.blocked_user_agents
        }
        b.setting_lines = {
            k: v
            for k, v in cfg.setting_lines.items()
            if not k.startswith(("local-domain ", "dns-server ", "blocked-user-agent "))
        }
        return b

    def copy(self) -> ConfigBuilder:
        """An independent copy (e.g. to try a batch of commands)."""
        return copy.deepcopy(self)

    def error(self, line: int, message: str) -> ConfigError:
        """A ConfigError for this builder's source."""
        return ConfigError(self.path, line, message)

    # -- the interpreter

    def apply(self, mode: Mode, words: Sequence[str], line: int) -> Mode:
        """Apply one command in ``mode``; return the mode to continue in.

        Raises ConfigError (and changes nothing) when the command is unknown
        or its arguments are bad.
        """
        if not words:
            return mode
        negate = words[0] == "no"
        if negate:
            if len(words) == 1:
                raise self.error(line, "incomplete command: 'no' must be followed by a command")
            keyword, args = words[1], list(words[2:])
        else:
            keyword, args = words[0], list(words[1:])
        if not negate and keyword in ("exit", "end"):
            if args:
                raise self.error(line, f"too many words: usage: {keyword}")
            return mode.parent() if keyword == "exit" else ROOT
        accepting = mode
        while True:
            command = _commands_in(accepting).get(keyword)
            if command is not None and (not negate or command.help.no_syntax is not None):
                try:
                    return command.handler(self, accepting, args, line, negate)
                except _InvalidError as e:
                    raise self.error(line, str(e)) from None
            if accepting.is_root:
                break
            accepting = accepting.parent()
        raise self.error(line, self._unknown(mode, keyword, negate))

    @staticmethod
    def _unknown(mode: Mode, keyword: str, negate: bool) -> str:
        shown = f"no {keyword}" if negate else keyword
        if keyword in _CLI_ONLY and not negate:
            return f"'{keyword}' is a CLI command, not a configuration line"
        where = _where(keyword)
        if where is None:
            return f"unknown command '{shown}' in mode {mode.prompt}"
        return f"'{shown}' is not valid in mode {mode.prompt}: it belongs in {where}"

    # -- lookups for handlers

    def _adjacency(self, mode: Mode) -> _AdjacencyDraft:
        name = mode.find(ModeKind.ADJACENCY).name
        assert name is not None
        try:
            return self.adjacencies[name]
        except KeyError:
            raise _InvalidError(f"adjacency '{name}' no longer exists") from None

    def _policy_set(self, mode: Mode) -> _PolicySetDraft:
        number = mode.find(ModeKind.CALL_POLICY_SET).number
        assert number is not None
        try:
            return self.call_policy_sets[number]
        except KeyError:
            raise _InvalidError(f"call-policy-set {number} no longer exists") from None

    def _table(self, mode: Mode) -> _TableDraft:
        name = mode.find(ModeKind.ROUTING_TABLE).name
        assert name is not None
        try:
            return self._policy_set(mode).tables[name]
        except KeyError:
            raise _InvalidError(f"table '{name}' no longer exists") from None

    def _entry(self, mode: Mode) -> _EntryDraft:
        number = mode.find(ModeKind.ENTRY).number
        assert number is not None
        try:
            return self._table(mode).entries[number]
        except KeyError:
            raise _InvalidError(f"entry {number} no longer exists") from None

    # -- freezing

    def freeze(self) -> SbcConfig:
        """The frozen model of this candidate.

        Raises ConfigError when a block is incomplete: no ``sbc NAME``, an
        attached adjacency without signaling-address, an entry without action. The
        earliest such line is reported.
        """
        if self.service_name is None:
            raise self.error(0, "no 'sbc NAME' service is configured")
        problems: list[tuple[int, str]] = []
        for adj in self.adjacencies.values():
            if adj.signaling_address is None and adj.attached:
                problems.append(
                    (
                        adj.setting_lines.get("attach", adj.line),
                        f"adjacency '{adj.name}' cannot be attached without a signaling-address",
                    )
                )
        for cps in self.call_policy_sets.values():
            for table in cps.tables.values():
                for e in table.entries.values():
                    if e.action is None:
                        problems.append(
                            (e.line, f"entry {e.number} of table '{table.name}' has no action")
                        )
        if problems:
            line, message = min(problems)
            raise self.error(line, message)
        adjacencies = []
        for adj in self.adjacencies.values():
            adjacencies.append(
                AdjacencyConfig(
                    name=adj.name,
                    signaling_address=adj.signaling_address,
                    signaling_port=adj.signaling_port,
                    transport=adj.transport,
                    remote_addresses=tuple(adj.remote_addresses),
                    signaling_peer=adj.signaling_peer,
                    signaling_peer_port=adj.signaling_peer_port,
                    security_inbound=adj.security_inbound,
                    security_outbound=adj.security_outbound,
                    attached=adj.attached,
                    client_certificate=adj.client_certificate,
                    authentication=adj.authentication,
                    digest_algorithms=adj.digest_algorithms,
                    sip_over_tls=adj.sip_over_tls,
                    cluster_link=adj.cluster_link,
                    cluster_identity=adj.cluster_identity,
                    line=adj.line,
                    setting_lines=adj.setting_lines,
                )
            )
        policy_sets = {}
        for number, cps in self.call_policy_sets.items():
            tables = {}
            for name, table in cps.tables.items():
                entries = []
                for e in table.entries.values():
                    assert e.action is not None
                    entries.append(
                        RoutingEntry(
                            number=e.number,
                            match=e.match,
                            dst_adjacency=e.dst_adjacency,
                            action=e.action,
                            next_table=e.next_table,
                            line=e.line,
                            setting_lines=e.setting_lines,
                        )
                    )
                tables[name] = RoutingTable(table.kind, tuple(entries), line=table.line)
            policy_sets[number] = CallPolicySet(
                cps.first_call_routing_table, tables, line=cps.line, setting_lines=cps.setting_lines
            )
        return SbcConfig(
            service_name=self.service_name,
            local_domains=tuple(self.local_domains),
            adjacencies=tuple(adjacencies),
            call_policy_sets=policy_sets,
            active_call_policy_set=self.active_call_policy_set,
            routing_policy=self.routing_policy,
            user_database=self.user_database,
            limits=Limits(
                **self.limits,
                line=self.limits_line,
                setting_lines=self.limits_lines,
            ),
            dns_servers=tuple(self.dns_servers),
            blocked_user_agents=tuple(self.blocked_user_agents),
            store=self.store,
            node=self.node,
            source=self.path,
            line=self.service_line,
            setting_lines={
                **self.setting_lines,
                **{f"local-domain {d}": n for d, n in self.local_domains.items()},
                **{_dns_server_key(d): n for d, n in self.dns_servers.items()},
                **{f"blocked-user-agent {t}": n for t, n in self.blocked_user_agents.items()},
            },
        )


def apply_command(builder: ConfigBuilder, mode: Mode, words: Sequence[str], line: int) -> Mode:
    """Apply one command (see :meth:`ConfigBuilder.apply`); return the new mode."""
    return builder.apply(mode, words, line)


def parse_config(text: str, path: str = "<string>") -> SbcConfig:
    """Parse configuration text into a frozen model; raise ConfigError on the first problem.

    This checks the language and each block; :func:`sbc.config.validate`
    checks the configuration as a whole (references, listeners, TLS).
    """
    builder = ConfigBuilder(path, reenter=False)
    mode = ROOT
    for line in tokenize(text):
        mode = builder.apply(mode, line.words, line.number)
    return builder.freeze()


def load_config(path: str) -> SbcConfig:
    """Read and parse a configuration file (UTF-8); raise ConfigError on any problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, 0, f"cannot read the file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(path, line, "the file is not UTF-8 text") from None
    return parse_config(text, path)


# ---------------------------------------------------------------- config mode


@_command(ModeKind.CONFIG, "sbc NAME", "Enter the SBC service NAME", "no sbc NAME")
def _sbc(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    _arity(args, "no sbc NAME" if negate else "sbc NAME", 1)
    name = _name(args[0], "service name")
    if negate:
        if b.service_name != name:
            raise _InvalidError(f"sbc service '{name}' is not configured")
        b._clear()
        return mode
    if b.service_name is None:
        b.service_name = name
        b.service_line = line
    elif b.service_name != name:
        raise _InvalidError(
            f"only one sbc service may be configured: '{b.service_name}' is defined"
            + (f" at line {b.service_line}" if b.service_line else "")
        )
    return mode.push(Frame(ModeKind.SBC, name=name))


# ---------------------------------------------------------------- sbc mode


@_command(ModeKind.SBC, "sbe", "Enter the signaling border element (SBE) mode", "no sbe")
def _sbe(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    _arity(args, "sbe", 0)
    if negate:
        b._clear_sbe()
        return mode
    return mode.push(Frame(ModeKind.SBE))


# ---------------------------------------------------------------- sbe mode


@_command(
    ModeKind.SBE,
    "local-domain DOMAIN",
    "A domain this SBC is the registrar for (repeatable)",
    "no local-domain DOMAIN",
)
def _local_domain(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    _arity(args, "local-domain DOMAIN", 1)
    domain = _host(args[0], "domain")
    if negate:
        if domain not in b.local_domains:
            raise _InvalidError(f"local-domain {domain} is not configured")
        del b.local_domains[domain]
    elif domain not in b.local_domains:
        b.local_domains[domain] = line
    return mode


def _dns_server_key(server: DnsServer) -> str:
    """The ``setting_lines`` key of one ``dns-server`` line."""
    return f"dns-server {server.address} {server.port}"


@_command(
    ModeKind.SBE,
    "dns-server ADDRESS [PORT]",
    "A DNS server asked for next hops (repeatable, asked in order; default: /etc/resolv.conf)",
    "no dns-server [ADDRESS [PORT]]",
)
def _dns_server(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    if negate:
        _arity(args, "no dns-server [ADDRESS [PORT]]", 0, 2)
        if not args:
            b.dns_servers = {}
            return mode
    else:
        _arity(args, "dns-server ADDRESS [PORT]", 1, 2)
    try:
        address = ipaddress.ip_address(args[0])
    except ValueError:
        raise _InvalidError(f"bad dns-server '{args[0]}': expected an IP address") from None
    server = DnsServer(address, _port(args[1]) if len(args) > 1 else DEFAULT_DNS_PORT)
    if negate:
        if server not in b.dns_servers:
            raise _InvalidError(f"dns-server {args[0]} {server.port} is not configured")
        del b.dns_servers[server]
    elif server not in b.dns_servers:
        b.dns_servers[server] = line
    return mode


@_command(
    ModeKind.SBE,
    "adjacency sip NAME",
    "Enter (create) the SIP adjacency NAME",
    "no adjacency sip NAME",
)
def _adjacency(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    _arity(args, "adjacency sip NAME", 2)
    if args[0] != "sip":
        raise _InvalidError(
            f"bad adjacency type '{args[0]}': only 'adjacency sip NAME' is supported"
        )
    name = _name(args[1], "adjacency name")
    existing = b.adjacencies.get(name)
    if negate:
        if existing is None:
            raise _InvalidError(f"adjacency '{name}' is not configured")
        del b.adjacencies[name]
        return mode
    if existing is None:
        b.adjacencies[name] = _AdjacencyDraft(name, line)
    elif not b.reenter:
        raise _InvalidError(f"duplicate adjacency '{name}' (first defined at line {existing.line})")
    return mode.push(Frame(ModeKind.ADJACENCY, name=name))


@_command(
    ModeKind.SBE,
    "call-policy-set N",
    "Enter (create) the call policy set N (routing tables)",
    "no call-policy-set N",
)
def _call_policy_set(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    _arity(args, "call-policy-set N", 1)
    number = _number(args[0], "call-policy-set number")
    existing = b.call_policy_sets.get(number)
    if negate:
        if existing is None:
            raise _InvalidError(f"call-policy-set {number} is not configured")
        del b.call_policy_sets[number]
        return mode
    if existing is None:
        b.call_policy_sets[number] = _PolicySetDraft(number, line)
    elif not b.reenter:
        raise _InvalidError(
            f"duplicate call-policy-set {number} (first defined at line {existing.line})"
        )
    return mode.push(Frame(ModeKind.CALL_POLICY_SET, number=number))


@_command(
    ModeKind.SBE,
    "active-call-policy-set N",
    "Route calls with call policy set N",
    "no active-call-policy-set",
)
def _active_cps(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    if negate:
        _arity(args, "no active-call-policy-set [N]", 0, 1)
        b.active_call_policy_set = None
        b.setting_lines.pop("active-call-policy-set", None)
        return mode
    _arity(args, "active-call-policy-set N", 1)
    b.active_call_policy_set = _number(args[0], "call-policy-set number")
    b.setting_lines["active-call-policy-set"] = line
    return mode


@_command(
    ModeKind.SBE,
    "routing-policy NAME",
    "Routing policy applied to the candidates (default, round-robin, least-calls, ...)",
    "no routing-policy",
)
def _routing_policy(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    if negate:
        _arity(args, "no routing-policy [NAME]", 0, 1)
        b.routing_policy = DEFAULT_ROUTING_POLICY
        b.setting_lines.pop("routing-policy", None)
        return mode
    _arity(args, "routing-policy NAME", 1)
    b.routing_policy = _name(args[0], "routing-policy name")
    b.setting_lines["routing-policy"] = line
    return mode


@_command(
    ModeKind.SBE,
    "user-database FILE",
    "Digest credentials file (htdigest lines user:realm:HA1[:HA1-SHA-256]; see sbc-passwd)",
    "no user-database",
)
def _user_database(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    if negate:
        _arity(args, "no user-database [FILE]", 0, 1)
        b.user_database = None
        b.setting_lines.pop("user-database", None)
        return mode
    _arity(args, "user-database FILE", 1)
    b.user_database = _file_name(args[0], "user-database")
    b.setting_lines["user-database"] = line
    return mode


@_command(
    ModeKind.SBE,
    "blocked-user-agent TEXT",
    "Drop requests on untrusted adjacencies whose User-Agent contains TEXT (any case) "
    "and ban their source (repeatable)",
    "no blocked-user-agent [TEXT]",
)
def _blocked_user_agent(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    if negate and not args:
        b.blocked_user_agents = {}
        return mode
    if not args:
        raise _InvalidError("incomplete command: usage: blocked-user-agent TEXT")
    text = " ".join(args)
    if len(text) > _MAX_USER_AGENT_TEXT or not text.isprintable():
        raise _InvalidError(
            f"bad blocked-user-agent '{text}': use printable text of at most "
            f"{_MAX_USER_AGENT_TEXT} characters"
        )
    if negate:
        if text not in b.blocked_user_agents:
            raise _InvalidError(f"blocked-user-agent '{text}' is not configured")
        del b.blocked_user_agents[text]
    elif text not in b.blocked_user_agents:
        b.blocked_user_agents[text] = line
    return mode


_STORE_RE = re.compile(r"redis://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+)(?::([^/]*))?(?:/(.*))?\Z")


def _store_url(word: str) -> StoreUrl:
    """``redis://HOST[:PORT][/DB]`` (an IPv6 address in brackets)."""
    match = _STORE_RE.match(word)
    if match is None:
        raise _InvalidError(f"bad store '{word}': expected redis://HOST[:PORT][/DB]")
    host, port, db = match.groups()
    host = host.strip("[]")
    _host(host, "store host")
    return StoreUrl(
        host,
        _port(port) if port is not None else DEFAULT_REDIS_PORT,
        _number(db, "store database", 0, 65535) if db else 0,
    )


@_command(
    ModeKind.SBE,
    "store redis://HOST[:PORT][/DB]",
    "Share registrations and call counts with other SBC nodes in this Redis database "
    "(default: none, this process's memory)",
    "no store",
)
def _store(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    if negate:
        _arity(args, "no store [URL]", 0, 1)
        b.store = None
        b.setting_lines.pop("store", None)
        return mode
    _arity(args, "store redis://HOST[:PORT][/DB]", 1)
    b.store = _store_url(args[0])
    b.setting_lines["store"] = line
    return mode


@_command(
    ModeKind.SBE,
    "node NAME",
    "This SBC's name among the nodes sharing a store (default: the host name)",
    "no node",
)
def _node(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    if negate:
        _arity(args, "no node [NAME]", 0, 1)
        b.node = None
        b.setting_lines.pop("node", None)
        return mode
    _arity(args, "node NAME", 1)
    b.node = _name(args[0], "node name")
    b.setting_lines["node"] = line
    return mode


@_command(
    ModeKind.SBE,
    "limits",
    "Enter the transport limits (message size, connections, timeouts)",
    "no limits",
)
def _limits(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    _arity(args, "no limits" if negate else "limits", 0)
    if negate:
        b._clear_limits()
        return mode
    if not b.limits_line:
        b.limits_line = line
    return mode.push(Frame(ModeKind.LIMITS))


# ---------------------------------------------------------------- limits mode


def _limit_handler(setting: LimitSetting) -> _Handler:
    numbers = setting.numbers
    names = " ".join(n.name for n in numbers)

    def handler(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
        if negate:
            _arity(args, f"no {setting.keyword} [{names}]", 0, len(numbers))
            for number in numbers:
                b.limits.pop(number.attribute, None)
            b.limits_lines.pop(setting.keyword, None)
            return mode
        _arity(args, setting.syntax, len(numbers))
        values = {}
        for number, word in zip(numbers, args):
            what = setting.keyword if len(numbers) == 1 else f"{setting.keyword} {number.name}"
            values[number.attribute] = _number(word, what, number.low, number.high)
        b.limits.update(values)
        b.limits_lines[setting.keyword] = line
        return mode

    return handler


def _limit_help(setting: LimitSetting) -> str:
    units = ", ".join(n.unit for n in setting.numbers)
    return f"{setting.description} ({units}, default {setting.default_text})"


for _setting in LIMIT_SETTINGS:
    _command(
        ModeKind.LIMITS,
        _setting.syntax,
        _limit_help(_setting),
        f"no {_setting.keyword}",
    )(_limit_handler(_setting))


# ---------------------------------------------------------------- adjacency mode


def _set_line(lines: dict[str, int], key: str, line: int, negate: bool) -> None:
    if negate:
        lines.pop(key, None)
    else:
        lines[key] = line


@_command(
    ModeKind.ADJACENCY,
    "signaling-address ipv4|ipv6 ADDRESS",
    "Local address the adjacency listens on and sends from (required)",
    "no signaling-address",
)
def _signaling_address(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no signaling-address [ipv4|ipv6 ADDRESS]", 0, 2)
        adj.signaling_address = None
    else:
        _arity(args, "signaling-address ipv4|ipv6 ADDRESS", 2)
        adj.signaling_address = _address(_family(args[0]), args[1])
    _set_line(adj.setting_lines, "signaling-address", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "signaling-port PORT",
    "Local port (default 5061 when inbound security is trusted-encrypted, else 5060)",
    "no signaling-port",
)
def _signaling_port(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no signaling-port [PORT]", 0, 1)
        adj.signaling_port = None
    else:
        _arity(args, "signaling-port PORT", 1)
        adj.signaling_port = _port(args[0])
    _set_line(adj.setting_lines, "signaling-port", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "transport udp|tcp|udp-tcp",
    "Transports of a non-encrypted adjacency (default udp-tcp)",
    "no transport",
)
def _transport_cmd(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no transport [udp|tcp|udp-tcp]", 0, 1)
        adj.transport = Transport.UDP_TCP
    else:
        _arity(args, "transport udp|tcp|udp-tcp", 1)
        adj.transport = _transport(args[0])
    _set_line(adj.setting_lines, "transport", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "remote-address ipv4|ipv6 ADDRESS/LENGTH",
    "Source prefix whose messages belong to this adjacency (repeatable; default any)",
    "no remote-address [ipv4|ipv6 ADDRESS/LENGTH]",
)
def _remote_address(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate and not args:
        adj.remote_addresses = []
        for key in [k for k in adj.setting_lines if k.startswith("remote-address ")]:
            del adj.setting_lines[key]
        return mode
    _arity(args, "remote-address ipv4|ipv6 ADDRESS/LENGTH", 2)
    net = _prefix(_family(args[0]), args[1])
    key = f"remote-address {net}"
    if negate:
        if net not in adj.remote_addresses:
            raise _InvalidError(f"remote-address {net} is not configured")
        adj.remote_addresses.remove(net)
        del adj.setting_lines[key]
    elif net not in adj.remote_addresses:
        adj.remote_addresses.append(net)
        adj.setting_lines[key] = line
    return mode


@_command(
    ModeKind.ADJACENCY,
    "signaling-peer HOST",
    "Next hop for requests sent out of this adjacency: IP address or FQDN",
    "no signaling-peer",
)
def _signaling_peer(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no signaling-peer [HOST]", 0, 1)
        adj.signaling_peer = None
    else:
        _arity(args, "signaling-peer HOST", 1)
        adj.signaling_peer = _host(args[0], "signaling-peer")
    _set_line(adj.setting_lines, "signaling-peer", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "signaling-peer-port PORT",
    "Next hop port (default 5061 when outbound security is trusted-encrypted, else 5060)",
    "no signaling-peer-port",
)
def _signaling_peer_port(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no signaling-peer-port [PORT]", 0, 1)
        adj.signaling_peer_port = None
    else:
        _arity(args, "signaling-peer-port PORT", 1)
        adj.signaling_peer_port = _port(args[0])
    _set_line(adj.setting_lines, "signaling-peer-port", line, negate)
    return mode


_SECURITY_SYNTAX = "security [inbound|outbound] untrusted|trusted-encrypted|trusted-unencrypted"


@_command(
    ModeKind.ADJACENCY,
    _SECURITY_SYNTAX,
    "Security of both sides, or of the inbound (server) or outbound (client) side only",
    "no security [inbound|outbound]",
)
def _security_cmd(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    side = args[0] if args and args[0] in ("inbound", "outbound") else None
    rest = args[1:] if side else args
    if negate:
        _arity(rest, "no security [inbound|outbound] [TYPE]", 0, 1)
        if rest:
            _security(rest[0])
        level = Security.UNTRUSTED
    else:
        _arity(rest, _SECURITY_SYNTAX, 1)
        level = _security(rest[0])
    if side in (None, "inbound"):
        adj.security_inbound = level
        _set_line(adj.setting_lines, "security inbound", line, negate)
    if side in (None, "outbound"):
        adj.security_outbound = level
        _set_line(adj.setting_lines, "security outbound", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "client-certificate required|optional|none",
    "Inbound TLS: must a client show a certificate (default required)",
    "no client-certificate",
)
def _client_certificate(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no client-certificate [required|optional|none]", 0, 1)
        adj.client_certificate = ClientCertificate.REQUIRED
    else:
        _arity(args, "client-certificate required|optional|none", 1)
        adj.client_certificate = _choice(ClientCertificate, args[0], "client-certificate mode")
    _set_line(adj.setting_lines, "client-certificate", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "authentication digest|delegated",
    "Who authenticates requests that start something: the SBC (digest) or the far side",
    "no authentication",
)
def _authentication(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no authentication [digest|delegated]", 0, 1)
        adj.authentication = None
    else:
        _arity(args, "authentication digest|delegated", 1)
        adj.authentication = _choice(Authentication, args[0], "authentication")
    _set_line(adj.setting_lines, "authentication", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "digest-algorithms sha-256|md5 [sha-256|md5]",
    "Digest algorithms offered in a challenge, in order (default sha-256 md5)",
    "no digest-algorithms",
)
def _digest_algorithms(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no digest-algorithms [ALGORITHM...]", 0, 2)
        adj.digest_algorithms = None
    else:
        _arity(args, "digest-algorithms sha-256|md5 [sha-256|md5]", 1, 2)
        algorithms = tuple(_choice(DigestAlgorithm, word, "digest algorithm") for word in args)
        if len(set(algorithms)) != len(algorithms):
            raise _InvalidError(f"digest algorithm '{algorithms[0]}' is given twice")
        adj.digest_algorithms = algorithms
    _set_line(adj.setting_lines, "digest-algorithms", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "sip-over-tls",
    "This TLS adjacency also carries sip: (not only sips:) requests, as phones send them",
    "no sip-over-tls",
)
def _sip_over_tls(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    _arity(args, "no sip-over-tls" if negate else "sip-over-tls", 0)
    adj.sip_over_tls = not negate
    _set_line(adj.setting_lines, "sip-over-tls", line, negate)
    return mode


@_command(
    ModeKind.ADJACENCY,
    "cluster-link [identity NAME]",
    "The internal adjacency to the other SBC nodes of the store: calls for phones another "
    "node holds go through it (identity: the name on every node's certificate)",
    "no cluster-link",
)
def _cluster_link(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    adj = b._adjacency(mode)
    if negate:
        _arity(args, "no cluster-link [identity NAME]", 0, 2)
        adj.cluster_link = False
        adj.cluster_identity = None
    else:
        _arity(args, "cluster-link [identity NAME]", 0, 2)
        identity = None
        if args:
            if list(args) == ["identity"]:
                _arity((), "cluster-link [identity NAME]", 1)
            if args[0] != "identity":
                raise _InvalidError(
                    f"bad cluster-link '{' '.join(args)}': usage: cluster-link [identity NAME]"
                )
            identity = _host(args[1], "cluster-link identity")
        adj.cluster_link = True
        adj.cluster_identity = identity
    _set_line(adj.setting_lines, "cluster-link", line, negate)
    return mode


@_command(ModeKind.ADJACENCY, "attach", "Start the adjacency", "no attach")
def _attach(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    adj = b._adjacency(mode)
    _arity(args, "no attach" if negate else "attach", 0)
    adj.attached = not negate
    _set_line(adj.setting_lines, "attach", line, negate)
    return mode


# ---------------------------------------------------------------- call-policy-set mode


@_command(
    ModeKind.CALL_POLICY_SET,
    "first-call-routing-table NAME",
    "The table where routing of a new call starts",
    "no first-call-routing-table",
)
def _first_table(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    cps = b._policy_set(mode)
    if negate:
        _arity(args, "no first-call-routing-table [NAME]", 0, 1)
        cps.first_call_routing_table = None
    else:
        _arity(args, "first-call-routing-table NAME", 1)
        cps.first_call_routing_table = _name(args[0], "table name")
    _set_line(cps.setting_lines, "first-call-routing-table", line, negate)
    return mode


_TABLE_HELP = {
    TableKind.SRC_ADJACENCY: "Enter (create) a table matching the source adjacency",
    TableKind.DST_DOMAIN: "Enter (create) a table matching the destination domain",
    TableKind.DST_ADDRESS: "Enter (create) a table matching the longest destination digit prefix",
    TableKind.ROUND_ROBIN: "Enter (create) a table whose entries share the load",
}


def _table_handler(kind: TableKind) -> _Handler:
    def handler(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
        _arity(args, f"{kind} NAME", 1)
        cps = b._policy_set(mode)
        name = _name(args[0], "table name")
        existing = cps.tables.get(name)
        if negate:
            if existing is None or existing.kind is not kind:
                raise _InvalidError(f"{kind} '{name}' is not configured")
            del cps.tables[name]
            return mode
        if existing is None:
            cps.tables[name] = _TableDraft(name, kind, line)
        elif existing.kind is not kind:
            raise _InvalidError(
                f"table '{name}' is already a {existing.kind} (line {existing.line})"
            )
        elif not b.reenter:
            raise _InvalidError(f"duplicate table '{name}' (first defined at line {existing.line})")
        return mode.push(Frame(ModeKind.ROUTING_TABLE, name=name, table_kind=kind))

    return handler


for _kind in TableKind:
    _command(ModeKind.CALL_POLICY_SET, f"{_kind} NAME", _TABLE_HELP[_kind], f"no {_kind} NAME")(
        _table_handler(_kind)
    )


# ---------------------------------------------------------------- table mode


@_command(ModeKind.ROUTING_TABLE, "entry N", "Enter (create) entry N", "no entry N")
def _entry_cmd(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    _arity(args, "entry N", 1)
    table = b._table(mode)
    number = _number(args[0], "entry number")
    existing = table.entries.get(number)
    if negate:
        if existing is None:
            raise _InvalidError(f"entry {number} of table '{table.name}' is not configured")
        del table.entries[number]
        return mode
    if existing is None:
        table.entries[number] = _EntryDraft(number, line)
    elif not b.reenter:
        raise _InvalidError(
            f"duplicate entry {number} in table '{table.name}' "
            f"(first defined at line {existing.line})"
        )
    return mode.push(Frame(ModeKind.ENTRY, number=number, table_kind=table.kind))


# ---------------------------------------------------------------- entry mode


def _match_handler(kind: TableKind, parse: Callable[[str], str]) -> _Handler:
    keyword = kind.match_command

    def handler(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
        entry = b._entry(mode)
        if negate:
            _arity(args, f"no {keyword} [VALUE]", 0, 1)
            entry.match = None
        else:
            _arity(args, f"{keyword} VALUE", 1)
            entry.match = parse(args[0])
        _set_line(entry.setting_lines, "match", line, negate)
        return mode

    return handler


def _digits(word: str) -> str:
    if not _DIGITS_RE.match(word):
        raise _InvalidError(f"bad digit prefix '{word}': expected digits 0-9, optionally after '+'")
    return word


_command(
    ModeKind.ENTRY,
    "match-adjacency NAME",
    "Match calls that arrived on adjacency NAME",
    "no match-adjacency",
    frozenset({TableKind.SRC_ADJACENCY}),
)(_match_handler(TableKind.SRC_ADJACENCY, lambda w: _name(w, "adjacency name")))
_command(
    ModeKind.ENTRY,
    "match-domain DOMAIN",
    "Match calls whose Request-URI host is DOMAIN",
    "no match-domain",
    frozenset({TableKind.DST_DOMAIN}),
)(_match_handler(TableKind.DST_DOMAIN, lambda w: _host(w, "domain")))
_command(
    ModeKind.ENTRY,
    "match-address DIGITS",
    "Match calls whose Request-URI user part starts with DIGITS (longest prefix wins)",
    "no match-address",
    frozenset({TableKind.DST_ADDRESS}),
)(_match_handler(TableKind.DST_ADDRESS, _digits))


@_command(
    ModeKind.ENTRY,
    "dst-adjacency NAME",
    "The adjacency to send matching calls out of",
    "no dst-adjacency",
)
def _dst_adjacency(
    b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool
) -> Mode:
    entry = b._entry(mode)
    if negate:
        _arity(args, "no dst-adjacency [NAME]", 0, 1)
        entry.dst_adjacency = None
    else:
        _arity(args, "dst-adjacency NAME", 1)
        entry.dst_adjacency = _name(args[0], "adjacency name")
    _set_line(entry.setting_lines, "dst-adjacency", line, negate)
    return mode


_ACTION_SYNTAX = "action complete | action next-table NAME"


@_command(
    ModeKind.ENTRY,
    "action complete|next-table NAME",
    "complete: dst-adjacency is a candidate; next-table: continue in table NAME",
    "no action",
)
def _action(b: ConfigBuilder, mode: Mode, args: Sequence[str], line: int, negate: bool) -> Mode:
    entry = b._entry(mode)
    if negate:
        entry.action = None
        entry.next_table = None
    elif args[:1] == ["complete"]:
        _arity(args, _ACTION_SYNTAX, 1)
        entry.action, entry.next_table = Action.COMPLETE, None
    elif args[:1] == ["next-table"]:
        _arity(args, _ACTION_SYNTAX, 2)
        entry.action, entry.next_table = Action.NEXT_TABLE, _name(args[1], "table name")
    elif not args:
        raise _InvalidError(f"incomplete command: usage: {_ACTION_SYNTAX}")
    else:
        raise _InvalidError(f"bad action '{args[0]}': usage: {_ACTION_SYNTAX}")
    _set_line(entry.setting_lines, "action", line, negate)
    return mode
