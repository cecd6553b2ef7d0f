"""sbc configuration: the IOS-XR style language, its frozen model and checks.

- :func:`parse_config` / :func:`load_config`: text -> :class:`SbcConfig`
- :func:`render_config`: :class:`SbcConfig` -> canonical text
- :func:`validate`: whole-configuration checks
- :class:`ConfigBuilder`, :func:`apply_command`, :func:`commands_for`: the
  command-by-command interpreter the management CLI reuses

Every problem is a :class:`sbc.errors.ConfigError` naming file and line.
"""

from sbc.config.model import (
    DEFAULT_DIGEST_ALGORITHMS,
    DEFAULT_DNS_PORT,
    DEFAULT_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_ROUTING_POLICY,
    DEFAULT_TLS_PORT,
    LIMIT_SETTINGS,
    Action,
    AdjacencyConfig,
    Authentication,
    CallPolicySet,
    ClientCertificate,
    DigestAlgorithm,
    DnsServer,
    FrozenMap,
    Limits,
    LimitSetting,
    RoutingEntry,
    RoutingTable,
    SbcConfig,
    Security,
    StoreUrl,
    TableKind,
    Transport,
)
from sbc.config.parser import (
    ROOT,
    CommandHelp,
    ConfigBuilder,
    Frame,
    Mode,
    ModeKind,
    apply_command,
    commands_for,
    load_config,
    parse_config,
    split_words,
    tokenize,
)
from sbc.config.render import render_config
from sbc.config.validate import (
    DEFAULT_ROUTING_POLICIES,
    SECURITY_CHANGE_MESSAGE,
    find_problems,
    security_changes_while_attached,
    validate,
)

__all__ = [
    "DEFAULT_DIGEST_ALGORITHMS",
    "DEFAULT_DNS_PORT",
    "DEFAULT_PORT",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_ROUTING_POLICIES",
    "DEFAULT_ROUTING_POLICY",
    "DEFAULT_TLS_PORT",
    "LIMIT_SETTINGS",
    "ROOT",
    "SECURITY_CHANGE_MESSAGE",
    "Action",
    "AdjacencyConfig",
    "Authentication",
    "CallPolicySet",
    "ClientCertificate",
    "CommandHelp",
    "ConfigBuilder",
    "DigestAlgorithm",
    "DnsServer",
    "Frame",
    "FrozenMap",
    "LimitSetting",
    "Limits",
    "Mode",
    "ModeKind",
    "RoutingEntry",
    "RoutingTable",
    "SbcConfig",
    "Security",
    "StoreUrl",
    "TableKind",
    "Transport",
    "apply_command",
    "commands_for",
    "find_problems",
    "load_config",
    "parse_config",
    "render_config",
    "security_changes_while_attached",
    "split_words",
    "tokenize",
    "validate",
]
