"""The management CLI language: one :class:`Session` per connection (pure).

A session holds the IOS-XR style mode stack and the candidate configuration.
:meth:`Session.execute` takes one command line and returns ``(text, ok)``:
the text to print (lines joined by newlines, no trailing prompt) and whether
the command succeeded. Errors are one line starting with ``%``.

Everything the session reads or changes in the running SBC goes through a
small :class:`SbcBackend` (plain data in, error lines out), so this module
never touches a reactor or a socket; :mod:`sbc.cli.server` adapts a running
:class:`~sbc.service.SbcService` to it.

A backend whose changes take time (the supervisor of worker processes,
:mod:`sbc.workers.supervisor`) answers them with a ``Deferred``, and may
read what ``show services`` prints from a snapshot it refreshes first
(:class:`RefreshingBackend`): :meth:`Session.run` waits for both, and the
servers run a session's lines one at a time (:class:`LineQueue`). With a
backend that answers at once, :meth:`Session.run` has its answer at once
and :meth:`Session.execute` gives it directly.

Modes and prompts (docs/cli.md)::

    sbc#                                  exec
    sbc(config)#                          configure
    sbc(config-sbc)#                      sbc NAME
    sbc(config-sbc-sbe)#                  sbe
    sbc(config-sbc-sbe-adj-sip)#          adjacency sip NAME
"""

from __future__ import annotations

import difflib
import ipaddress
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, Union, runtime_checkable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from sbc.commits import CONFIRM_SECONDS_RANGE, DEFAULT_CONFIRM_SECONDS, CommitRecord
from sbc.config import (
    ROOT,
    Authentication,
    ConfigBuilder,
    Mode,
    ModeKind,
    SbcConfig,
    commands_for,
    render_config,
)
from sbc.config.model import AdjacencyConfig
from sbc.counters import UNCLASSIFIED
from sbc.errors import ConfigError
from sbc.identity import ip_literal

__all__ = [
    "EXEC_PROMPT",
    "BlockedSourceInfo",
    "CallInfo",
    "LineQueue",
    "OpenConnection",
    "RefreshingBackend",
    "RegistrationInfo",
    "Reply",
    "SbcBackend",
    "Session",
    "WorkerInfo",
    "format_table",
]

EXEC_PROMPT = "sbc#"
"""The exec-mode prompt; config modes read ``sbc(config...)#``."""


@attrs.frozen
class CallInfo:
    """One live call, as ``show ... calls`` prints it."""

    id: int
    method: str
    state: str
    inbound: str
    outbound: str | None
    secure: bool
    age: float
    from_uri: str = ""
    to_uri: str = ""
    #: with worker processes (docs/scaling.md): the worker holding the call ("" without)
    worker: str = ""


@attrs.frozen
class OpenConnection:
    """One open stream connection: its adjacency (None: none yet), direction and transport."""

    adjacency: str | None
    outbound: bool
    transport: str


@attrs.frozen
class RegistrationInfo:
    """One registered contact, as ``show ... registrations`` prints it."""

    aor: str
    contact: str
    adjacency: str
    expires_in: int
    #: how the contact is reached: ``TLS 192.0.2.50:40123`` (its connection) or
    #: ``UDP 198.51.100.7:61000`` (the REGISTER's source)
    flow: str = ""
    #: for a registration relayed to a registrar: the outbound adjacency
    relayed_to: str = ""
    #: with a shared store (docs/scaling.md): the node that holds the flow ("" without one)
    node: str = ""
    #: False for a binding another node holds (shown, not counted in this node's metrics)
    held_here: bool = True
    #: with worker processes (docs/scaling.md): the worker holding the binding ("" without)
    worker: str = ""


@attrs.frozen
class BlockedSourceInfo:
    """One banned source, as ``show ... blocked-sources`` prints it (docs/hardening.md).

    ``since`` is the time of the ban (seconds since the epoch), ``remaining``
    the whole seconds left, ``dropped`` the messages and connections
    dropped because of it.
    """

    address: str
    adjacency: str
    reason: str
    since: float
    remaining: int
    dropped: int


@attrs.frozen
class WorkerInfo:
    """One worker process, as ``show ... workers`` prints it (docs/scaling.md).

    ``state`` is ``starting``, ``ready`` or ``exited`` (waiting to be started
    again); ``uptime`` whole seconds since it was started; ``exits`` how
    many times a process in this position ended; ``calls`` its live calls.
    """

    index: int
    pid: int | None
    state: str
    uptime: int
    exits: int
    calls: int


Reply = Union[list[str], Deferred[list[str]]]
"""Output lines (``%`` lines for errors), at once or later (an asynchronous backend)."""


class SbcBackend(Protocol):
    """What a session needs from the running SBC (plain data in and out).

    The methods that change something may answer with a ``Deferred`` (a
    :data:`Reply`); see the module docstring.
    """

    def running_config(self) -> SbcConfig:
        """The configuration in force."""
        ...

    def commit(
        self,
        candidate: SbcConfig,
        *,
        user: str = "",
        client: str = "",
        comment: str = "",
        confirm_within: int | None = None,
    ) -> Reply:
        """Validate and apply ``candidate`` whole; the ``%`` error lines, empty on success.

        ``confirm_within`` (seconds): a ``commit confirmed``, rolled back
        automatically unless confirmed in time.
        """
        ...

    def pending_confirmation(self) -> tuple[int, int] | None:
        """The ``commit confirmed`` waiting: (commit id, seconds left), or None."""
        ...

    def confirm_commit(self, *, user: str = "", client: str = "") -> Reply:
        """Confirm the waiting ``commit confirmed``: the output line, or a ``%`` line."""
        ...

    def commit_history(self) -> Sequence[CommitRecord]:
        """The commit history, oldest first."""
        ...

    def rollback(
        self, *, last: int | None = None, to: int | None = None, user: str = "", client: str = ""
    ) -> Reply:
        """Roll back the last N commits or to commit ID: output lines, or ``%`` error lines."""
        ...

    def counters(self) -> Mapping[str, Mapping[str, int]]:
        """Counters ``{adjacency: {name: value}}`` (see :mod:`sbc.counters`)."""
        ...

    def calls(self) -> Sequence[CallInfo]:
        """The live calls."""
        ...

    def registrations(self) -> Sequence[RegistrationInfo]:
        """The live registrar bindings."""
        ...

    def reload_tls(self) -> Reply:
        """Reload the TLS files: ``TLS identity reloaded: ...`` or the ``%`` error lines."""
        ...

    def reload_users(self) -> Reply:
        """Re-read the user database: ``user database reloaded: ...`` or the ``%`` lines."""
        ...

    def blocked_sources(self) -> Sequence[BlockedSourceInfo]:
        """The sources banned by the flood and scanner defence."""
        ...

    def release_source(self, address: str | None) -> Reply:
        """End the ban on ``address`` (None: every ban): output lines, or one ``%`` line."""
        ...


@runtime_checkable
class RefreshingBackend(Protocol):
    """A backend that reads what ``show services`` prints from a snapshot it must refresh."""

    def refresh(self) -> Deferred[None]:
        """Fetch the counters, calls, registrations and bans now; fires when fresh."""
        ...


def _then(reply: Reply, then: Callable[[list[str]], list[str]]) -> Reply:
    """``then(lines)`` now, or once a later reply has come."""
    if isinstance(reply, Deferred):
        return reply.addCallback(then)
    return then(reply)


def _reads_state(words: list[str]) -> bool:
    """True for ``show services ...`` (also after ``do``): it reads counters, calls..."""
    if words[:1] == ["do"]:
        words = words[1:]
    return words[:2] == ["show", "services"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces, with a dashed rule under the headers."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _paths(lines: Sequence[str]) -> list[tuple[str, ...]]:
    """Each line of rendered configuration as the path of blocks leading to it."""
    paths: list[tuple[str, ...]] = []
    stack: list[tuple[int, str]] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, line.strip()))
        paths.append(tuple(text for _, text in stack))
    return paths


def config_diff(old: Sequence[str], new: Sequence[str]) -> list[str]:
    """Lines removed (``- ``) and added (``+ ``), each under the blocks it belongs to.

    Lines are compared by their full path (``sbc X`` > ``sbe`` > ``adjacency
    sip A`` > ``signaling-port 5060``), so a setting moving between blocks
    shows as removed from one and added to the other. The enclosing block
    lines are printed once, prefixed by two spaces, before the first change
    inside them, so every change says where it is.
    """
    out: list[str] = []
    shown: set[tuple[str, ...]] = set()
    old_paths, new_paths = _paths(old), _paths(new)
    matcher = difflib.SequenceMatcher(a=old_paths, b=new_paths, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            continue
        changes = [("- ", p) for p in old_paths[a1:a2]] + [("+ ", p) for p in new_paths[b1:b2]]
        for tag, path in changes:
            for depth in range(1, len(path)):
                parent = path[:depth]
                if parent not in shown:
                    shown.add(parent)
                    out.append("  " + " " * (depth - 1) + parent[-1])
            shown.add(path)
            out.append(tag + " " * (len(path) - 1) + path[-1])
    return out


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _counter_lines(values: Mapping[str, int], indent: str) -> list[str]:
    if not values:
        return [f"{indent}(none)"]
    width = max(len(name) for name in values)
    return [f"{indent}{name.ljust(width)}  {value}" for name, value in values.items()]


def access_lines(adj: AdjacencyConfig) -> list[str]:
    """The phone settings of ``adj`` for ``detail`` (docs/phones.md)."""
    lines = []
    if adj.listens_tls:
        lines.append(f"  Client certificate: {adj.client_certificate.value}")
    if adj.authentication is Authentication.DIGEST:
        algorithms = ", ".join(a.token for a in adj.offered_algorithms)
        lines.append(f"  Authentication: digest ({algorithms})")
    elif adj.authentication is Authentication.DELEGATED:
        lines.append("  Authentication: delegated")
    else:
        lines.append("  Authentication: none")
    # a cluster link carries every call in its own scheme: the flag does not apply
    if adj.listens_tls and adj.sends_tls and not adj.cluster_link:
        lines.append(f"  SIP over TLS: {'enabled' if adj.sip_over_tls else 'disabled'}")
    return lines


def describe_adjacency(
    adj: AdjacencyConfig,
    counters: Mapping[str, int] | None = None,
    active_calls: int | None = None,
) -> list[str]:
    """The ``show ... adjacencies`` block of one adjacency; ``counters`` for ``detail``."""
    if adj.cluster_link:
        peer = "the node that holds the phone, at the address it advertises in the store"
    elif adj.signaling_peer is None:
        peer = f"(Request-URI host), port from the URI, by DNS SRV, else {adj.peer_port}"
    elif adj.signaling_peer_port is None and ip_literal(adj.signaling_peer) is None:
        peer = f"{adj.signaling_peer}, port by DNS SRV, else {adj.peer_port}"
    else:
        peer = _host_port(adj.signaling_peer, adj.peer_port)
    remotes = ", ".join(str(n) for n in adj.remote_addresses) or "any"
    if adj.signaling_address is None:
        address = f"(not set), port {adj.port}"
    else:
        address = _host_port(str(adj.signaling_address), adj.port)
    lines = [
        f"Adjacency: {adj.name} (SIP)",
        f"  Status: {'Attached' if adj.attached else 'Detached'}",
        f"  Signaling address: {address}",
        f"  Transport: {adj.transport_display}",
        f"  Security: {adj.security_display}",
        f"  Signaling peer: {peer}",
        f"  Remote addresses: {remotes}",
    ]
    if adj.cluster_link:
        identity = adj.cluster_identity
        lines.append(
            "  Cluster link: yes"
            + ("" if identity is None else f", nodes' certificates name {identity}")
        )
    if counters is not None:
        lines.extend(access_lines(adj))
    if active_calls is not None:
        lines.append(f"  Active calls: {active_calls}")
    if counters is not None:
        lines.append("  Counters:")
        lines.extend(_counter_lines(counters, "    "))
    return lines


_EXEC_HELP = (
    (
        "clear services sbc NAME sbe blocked-source ADDRESS|all",
        "Release a banned source (or every one) now",
    ),
    ("configure", "Enter configuration mode (edits go to a candidate configuration)"),
    ("crypto reload", "Reload the TLS certificate, key and CA files (new handshakes use them)"),
    ("reload user-database", "Re-read the digest user database file (user-database)"),
    ("rollback configuration last N", "Return to the configuration before the last N commits"),
    ("rollback configuration to ID", "Return to the configuration right after commit ID"),
    ("show", "Show running configuration, adjacencies, calls, registrations, statistics"),
    ("exit", "Close this CLI session"),
)
_SESSION_HELP = (
    ("abort", "Drop the uncommitted changes and return to exec mode"),
    ("commit [comment TEXT]", "Validate the candidate configuration, apply it and save it"),
    (
        "commit confirmed [SECONDS] [comment TEXT]",
        "Commit, and roll back by itself after SECONDS (600) unless 'commit' confirms it",
    ),
    ("do", "Run an exec command (do show ...)"),
    ("show", "show configuration [diff], or any exec show command"),
)
_SHOW_HELP = (
    ("show running-config", "The configuration in force"),
    ("show configuration [diff]", "The uncommitted candidate (config mode), or its diff"),
    ("show configuration commit list [N]", "The last commits (or the last N): id, user, time"),
    ("show configuration commit changes ID", "What commit ID changed (a diff)"),
    (
        "show services sbc NAME sbe adjacencies [ADJ] [detail]",
        "Adjacencies: status, address, transport, security (detail: counters)",
    ),
    ("show services sbc NAME sbe calls", "Live calls"),
    ("show services sbc NAME sbe registrations", "Registered contacts"),
    ("show services sbc NAME sbe statistics", "Counters of every adjacency"),
    ("show services sbc NAME sbe workers", "The worker processes (twistd sbc --workers N)"),
    (
        "show services sbc NAME sbe blocked-sources",
        "Sources banned by the flood and scanner defence",
    ),
)


class _CliError(Exception):
    """A refused command; printed as is when it starts with ``%``, else as ``% text``."""


def _refused(error: _CliError) -> tuple[str, bool]:
    text = str(error)
    return (text if text.startswith("%") else f"% {text}"), False


def _refused_later(failure: Failure) -> tuple[str, bool]:
    """A refusal that came with a later answer; any other failure goes on."""
    error = failure.trap(_CliError) and failure.value
    assert isinstance(error, _CliError)
    return _refused(error)


class LineQueue:
    """Runs a session's command lines one at a time, in order.

    :meth:`put` runs a line at once when nothing is running, else after the
    lines before it; ``answer(text, ok)`` is called with each line's output
    (``ok`` False: the text is a ``%`` refusal). A backend that answers at
    once never makes a line wait. A line whose run failed unexpectedly is
    answered ``% internal error`` (and the failure handed to ``failed``).
    """

    def __init__(
        self,
        session: Session,
        answer: Callable[[str, bool], object],
        failed: Callable[[Failure], object] = lambda failure: None,
    ) -> None:
        self.session = session
        self.answer = answer
        self.failed = failed
        self._waiting: deque[str] = deque()
        self._busy = False
        self._idle: list[Deferred[None]] = []

    @property
    def busy(self) -> bool:
        """True while a line's answer is awaited."""
        return self._busy

    def put(self, line: str) -> None:
        """Run ``line`` after those already given."""
        self._waiting.append(line)
        if not self._busy:
            self._next()

    def idle(self) -> Deferred[None]:
        """Fires once every line given so far has been answered."""
        if not self._busy and not self._waiting:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    def _next(self) -> None:
        while self._waiting and not self._busy:
            if self.session.closed:
                self._waiting.clear()
                break
            line = self._waiting.popleft()
            self._busy = True
            running = self.session.run(line)
            running.addCallbacks(self._answered, self._crashed)
            if not running.called:
                running.addBoth(lambda _: self._next())
                return
        if not self._busy and not self._waiting:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def _answered(self, result: tuple[str, bool]) -> None:
        self._busy = False
        self.answer(*result)

    def _crashed(self, failure: Failure) -> None:
        self._busy = False
        self.failed(failure)
        self.answer("% internal error (see the sbc log)", False)


class Session:
    """One CLI conversation: mode stack, candidate configuration, prompt.

    ``mode`` is None in exec mode; in config mode ``builder`` holds the
    candidate. :attr:`closed` turns true after ``exit`` in exec mode.
    """

    def __init__(self, backend: SbcBackend, *, user: str = "", client: str = "cli") -> None:
        self.backend = backend
        #: Who is typing, and over what (``cli``, ``ssh``): recorded with each commit.
        self.user = user
        self.client = client
        self.mode: Mode | None = None
        self.builder: ConfigBuilder | None = None
        self.dirty = False
        self.closed = False
        self._line = 0
        #: The running configuration the candidate was built on.
        self._base: SbcConfig | None = None
        #: The edits typed since then, (mode, words), to re-apply on a newer base.
        self._edits: list[tuple[Mode, list[str]]] = []

    # -- state ----------------------------------------------------------------

    @property
    def prompt(self) -> str:
        """``sbc#`` in exec mode, ``sbc(config-...)#`` in config modes."""
        if self.mode is None:
            return EXEC_PROMPT
        return f"sbc({self.mode.prompt})#"

    @property
    def in_config(self) -> bool:
        """True in any configuration mode."""
        return self.mode is not None

    # -- the one entry point --------------------------------------------------

    def execute(self, line: str) -> tuple[str, bool]:
        """Run one command line; return ``(text to print, ok)``.

        For a backend that answers at once (``TypeError`` otherwise: use :meth:`run`).
        """
        result = self._execute(line)
        if isinstance(result, Deferred):
            raise TypeError("this backend answers later: use Session.run")
        return result

    def run(self, line: str) -> Deferred[tuple[str, bool]]:
        """Run one command line: ``(text to print, ok)`` once the backend has answered.

        ``show services`` first refreshes a :class:`RefreshingBackend`.
        """
        backend = self.backend
        if isinstance(backend, RefreshingBackend) and _reads_state(line.split()):
            refreshed = backend.refresh()
            return refreshed.addCallback(lambda _: self._execute(line))
        result = self._execute(line)
        if isinstance(result, Deferred):
            return result
        return succeed(result)

    def _execute(self, line: str) -> tuple[str, bool] | Deferred[tuple[str, bool]]:
        words = line.split()
        if not words or words[0].startswith("!"):
            return "", True
        try:
            if words[-1].endswith("?"):
                return "\n".join(self._help(words)), True
            lines = self._config(words) if self.in_config else self._exec(words)
        except _CliError as error:
            return _refused(error)
        if isinstance(lines, Deferred):
            return lines.addCallbacks(lambda done: ("\n".join(done), True), _refused_later)
        return "\n".join(lines), True

    # -- exec mode ------------------------------------------------------------

    def _exec(self, words: list[str]) -> Reply:
        keyword = words[0]
        if keyword == "configure":
            if words[1:] not in ([], ["terminal"]):
                raise _CliError("too many words: usage: configure")
            self._enter_config()
            return []
        if keyword == "show":
            return self._show(words[1:])
        if keyword == "crypto":
            if words[1:] != ["reload"]:
                raise _CliError("bad command: usage: crypto reload")
            return self._crypto_reload()
        if keyword == "reload":
            if words[1:] != ["user-database"]:
                raise _CliError("bad command: usage: reload user-database")
            return _then(self.backend.reload_users(), self._checked)
        if keyword == "rollback":
            return self._rollback(words[1:])
        if keyword == "clear":
            return self._clear(words[1:])
        if keyword in ("exit", "quit", "logout"):
            self.closed = True
            return []
        if keyword == "end":
            return []
        if keyword in ("commit", "abort"):
            raise _CliError(f"'{keyword}' is only valid in configuration mode (type configure)")
        raise _CliError(f"unknown command '{keyword}' in exec mode (type ? for the list)")

    def _rollback(self, args: list[str]) -> Reply:
        usage = "usage: rollback configuration last N | rollback configuration to ID"
        if len(args) != 3 or args[0] != "configuration" or args[1] not in ("last", "to"):
            raise _CliError(f"bad command: {usage}")
        if not args[2].isdigit() or int(args[2]) < 1:
            raise _CliError(f"'{args[2]}' is not a positive number: {usage}")
        number = int(args[2])
        if args[1] == "last":
            lines = self.backend.rollback(last=number, user=self.user, client=self.client)
        else:
            lines = self.backend.rollback(to=number, user=self.user, client=self.client)
        return _then(lines, self._checked)

    def _clear(self, args: list[str]) -> Reply:
        """``clear services sbc NAME sbe blocked-source ADDRESS|all``."""
        usage = "usage: clear services sbc NAME sbe blocked-source ADDRESS|all"
        if not args or args[0] != "services":
            raise _CliError(f"bad command: {usage}")
        rest = self._service_items(args[1:], usage)
        if not rest or rest[0] != "blocked-source":
            raise _CliError(f"bad command: {usage}")
        if len(rest) != 2:
            problem = "incomplete command" if len(rest) < 2 else "too many words"
            raise _CliError(f"{problem}: {usage}")
        target = rest[1]
        if target == "all":
            address = None
        else:
            try:
                address = str(ipaddress.ip_address(target.strip("[]")))
            except ValueError:
                raise _CliError(f"bad address '{target}': {usage}") from None
        return _then(self.backend.release_source(address), self._checked)

    def _crypto_reload(self) -> Reply:
        return _then(self.backend.reload_tls(), self._checked)

    @staticmethod
    def _checked(lines: list[str]) -> list[str]:
        """``lines``, or a CLI error when one of them is a ``%`` line."""
        if any(line.startswith("%") for line in lines):
            raise _CliError("\n".join(lines))
        return lines

    def _enter_config(self) -> None:
        self._rebase_on(self.backend.running_config())
        self.mode = ROOT
        self.dirty = False

    def _rebase_on(self, running: SbcConfig) -> None:
        self._base = running
        self.builder = ConfigBuilder.from_config(running, path="<cli>")
        self._edits = []

    def _leave_config(self) -> list[str]:
        lines = ["Uncommitted changes discarded."] if self.dirty else []
        self.mode = None
        self.builder = None
        self.dirty = False
        self._base = None
        self._edits = []
        return lines

    # -- config modes ---------------------------------------------------------

    def _config(self, words: list[str]) -> Reply:
        assert self.mode is not None and self.builder is not None
        keyword = words[0]
        if keyword == "commit":
            return self._commit_command(words[1:])
        if keyword == "abort":
            if len(words) > 1:
                raise _CliError("too many words: usage: abort")
            self.dirty = False
            self._leave_config()
            return []
        if keyword == "do":
            if len(words) == 1:
                raise _CliError("incomplete command: usage: do COMMAND")
            if words[1] in ("configure", "exit", "quit", "logout", "rollback"):
                raise _CliError(f"'do {words[1]}' is not allowed in configuration mode")
            return self._exec(words[1:])
        if keyword == "show":
            return self._show(words[1:])
        if keyword == "end" and len(words) == 1:
            return self._leave_config()
        if keyword == "exit" and len(words) == 1 and self.mode.is_root:
            return self._leave_config()
        self._line += 1
        try:
            new_mode = self.builder.apply(self.mode, words, self._line)
        except ConfigError as error:
            raise _CliError(error.message) from None
        if keyword not in ("exit", "end"):
            self.dirty = True
            self._edits.append((self.mode, words))
        self.mode = new_mode
        return []

    def _candidate(self) -> SbcConfig:
        assert self.builder is not None
        try:
            return self.builder.freeze()
        except ConfigError as error:
            raise _CliError(error.message) from None

    def _commit_command(self, args: list[str]) -> Reply:
        """``commit [confirmed [SECONDS]] [comment TEXT]``."""
        usage = "usage: commit [confirmed [SECONDS]] [comment TEXT]"
        confirm_within: int | None = None
        if args and args[0] == "confirmed":
            args = args[1:]
            confirm_within = DEFAULT_CONFIRM_SECONDS
            if args and args[0] != "comment":
                low, high = CONFIRM_SECONDS_RANGE
                if not args[0].isdigit() or not low <= int(args[0]) <= high:
                    raise _CliError(
                        f"'{args[0]}' is not a number of seconds from {low} to {high}: {usage}"
                    )
                confirm_within = int(args[0])
                args = args[1:]
        comment = ""
        if args:
            if args[0] != "comment" or len(args) < 2:
                raise _CliError(f"bad command: {usage}")
            comment = " ".join(args[1:])
        return self._commit(comment, confirm_within)

    def _commit(self, comment: str, confirm_within: int | None = None) -> Reply:
        assert self.builder is not None
        running = self.backend.running_config()
        if running is not self._base:
            self._replay_on(running)
        candidate = self._candidate()
        waiting = self.backend.pending_confirmation()
        if candidate == running:
            self.dirty = False
            if waiting is not None and confirm_within is None:
                confirming = self.backend.confirm_commit(user=self.user, client=self.client)
                return _then(confirming, self._checked)
            if waiting is not None:
                return [
                    f"No configuration changes to commit; commit {waiting[0]} is still rolled "
                    f"back in {waiting[1]} seconds unless 'commit' confirms it."
                ]
            return ["No configuration changes to commit."]
        errors = self.backend.commit(
            candidate,
            user=self.user,
            client=self.client,
            comment=comment,
            confirm_within=confirm_within,
        )
        return _then(errors, lambda done: self._committed(done, waiting, confirm_within))

    def _committed(
        self, errors: list[str], waiting: tuple[int, int] | None, confirm_within: int | None
    ) -> list[str]:
        """What the session does and says once the backend answered a commit."""
        if errors:
            raise _CliError("\n".join(e if e.startswith("%") else f"% {e}" for e in errors))
        self._rebase_on(self.backend.running_config())
        self.dirty = False
        lines = []
        if waiting is not None:
            lines.append(f"Commit {waiting[0]} confirmed.")
        now_waiting = self.backend.pending_confirmation()
        if confirm_within is not None and now_waiting is not None:
            lines.append(
                f"Commit {now_waiting[0]} is rolled back in {now_waiting[1]} seconds unless "
                "confirmed: 'commit' confirms it."
            )
        return lines

    def _unchanged(self) -> bool:
        assert self.builder is not None
        try:
            return self.builder.freeze() == self._base
        except ConfigError:
            return False

    def _replay_on(self, running: SbcConfig) -> None:
        """Another session committed: re-apply this session's edits on its result.

        Refuses the commit either way, so that the operator reviews the
        merged candidate (``show configuration diff``) before committing it.
        """
        edits = self._edits
        if self._unchanged():  # nothing changed yet: follow the new running configuration
            self._rebase_on(running)
            self._edits = edits  # (navigation only; replaying it is harmless)
            return
        assert self._base is not None
        had = {line.strip() for line in render_config(self._base).split("\n")}
        has = {line.strip() for line in render_config(running).split("\n")}
        builder = ConfigBuilder.from_config(running, path="<cli>")
        for line, (mode, words) in enumerate(edits, start=1):
            command = " ".join(words)
            try:
                if words[0] != "no" and command in had and command not in has:
                    raise ConfigError(
                        "<cli>", line, f"the other session changed or removed '{command}'"
                    )
                builder.apply(mode, words, line)
            except ConfigError as error:
                self._rebase_on(running)
                self._edits = []
                self.dirty = False
                raise _CliError(
                    "% Another session committed since this configuration session started, "
                    f"and '{command}' cannot be re-applied on top of it "
                    f"({error.message}): your changes were dropped; enter them again"
                ) from None
        self._base, self.builder, self._edits = running, builder, edits
        raise _CliError(
            "% Another session committed since this configuration session started: your "
            "changes were re-applied on top of it; check 'show configuration diff' and "
            "commit again"
        )

    # -- show -----------------------------------------------------------------

    def _show(self, args: list[str]) -> list[str]:
        if not args:
            raise _CliError("incomplete command: usage: show running-config | show services ...")
        what = args[0]
        if what == "running-config":
            if len(args) > 1:
                raise _CliError("too many words: usage: show running-config")
            return render_config(self.backend.running_config()).rstrip("\n").split("\n")
        if what == "configuration":
            return self._show_configuration(args[1:])
        if what == "services":
            return self._show_services(args[1:])
        raise _CliError(f"unknown show command '{what}' (type show ? for the list)")

    def _show_configuration(self, args: list[str]) -> list[str]:
        if args and args[0] == "commit":
            return self._show_commits(args[1:])
        if not self.in_config:
            raise _CliError("'show configuration' is only valid in configuration mode")
        if args not in ([], ["diff"]):
            raise _CliError("bad command: usage: show configuration [diff]")
        candidate = render_config(self._candidate()).rstrip("\n").split("\n")
        if not args:
            return candidate
        running = render_config(self.backend.running_config()).rstrip("\n").split("\n")
        return config_diff(running, candidate) or ["! no uncommitted changes"]

    def _show_commits(self, args: list[str]) -> list[str]:
        usage = "usage: show configuration commit list [N] | show configuration commit changes ID"
        records = list(self.backend.commit_history())
        if args and args[0] == "list" and len(args) <= 2:
            if len(args) == 2:
                if not args[1].isdigit():
                    raise _CliError(f"'{args[1]}' is not a number: {usage}")
                records = records[-int(args[1]) :] if int(args[1]) else []
            if not records:
                return ["No commits."]
            rows = [
                [str(n), str(r.id), r.user or "-", r.client or "-", r.timestamp, r.comment]
                for n, r in enumerate(reversed(records), start=1)
            ]
            table = format_table(["SNo.", "ID", "User", "Client", "Time", "Comment"], rows)
            waiting = self.backend.pending_confirmation()
            if waiting is not None:
                table.append(
                    f"! commit {waiting[0]} is on trial: rolled back in {waiting[1]} seconds "
                    "unless 'commit' confirms it"
                )
            return table
        if len(args) == 2 and args[0] == "changes" and args[1].isdigit():
            found = [r for r in records if r.id == int(args[1])]
            if not found:
                raise _CliError(
                    f"no commit {args[1]} in the history (show configuration commit list)"
                )
            record = found[0]
            diff = config_diff(
                record.before.rstrip("\n").split("\n"), record.after.rstrip("\n").split("\n")
            )
            header = f"! commit {record.id} by {record.user or '-'} at {record.timestamp}"
            return [header, *(diff or ["! no changes"])]
        raise _CliError(f"bad command: {usage}")

    def _service_items(self, args: list[str], usage: str) -> list[str]:
        """The words after ``sbc NAME sbe`` (``sbc sbe`` too: the seed leaves NAME out)."""
        if len(args) < 3 or args[0] != "sbc":
            raise _CliError(f"incomplete command: {usage}")
        running = self.backend.running_config()
        if args[1] == "sbe" and args[2] != "sbe":
            return args[2:]
        name = args[1]
        if name != running.service_name:
            raise _CliError(f"no sbc service '{name}' (the service is '{running.service_name}')")
        if len(args) < 4 or args[2] != "sbe":
            raise _CliError(f"incomplete command: {usage}")
        return args[3:]

    def _show_services(self, args: list[str]) -> list[str]:
        usage = (
            "usage: show services sbc NAME sbe "
            "adjacencies|calls|registrations|statistics|blocked-sources|workers"
        )
        rest = self._service_items(args, usage)
        running = self.backend.running_config()
        what, options = rest[0], rest[1:]
        if what == "adjacencies":
            return self._show_adjacencies(running, options)
        if options:
            raise _CliError(f"too many words: {usage}")
        if what == "calls":
            return self._show_calls()
        if what == "registrations":
            return self._show_registrations()
        if what == "statistics":
            return self._show_statistics(running)
        if what == "blocked-sources":
            return self._show_blocked_sources()
        if what == "workers":
            return self._show_workers()
        raise _CliError(f"unknown show services item '{what}': {usage}")

    def _show_workers(self) -> list[str]:
        """The worker processes; a backend without them is one process."""
        workers = getattr(self.backend, "workers", None)
        if workers is None:
            return ["One process, no worker processes (twistd sbc --workers N, docs/scaling.md)."]
        rows = [
            [
                str(w.index),
                str(w.pid) if w.pid is not None else "-",
                w.state,
                f"{w.uptime}s" if w.state != "exited" else "-",
                str(w.exits),
                str(w.calls),
            ]
            for w in workers()
        ]
        headers = ["Worker", "PID", "State", "Uptime", "Exits", "Calls"]
        return [*format_table(headers, rows), f"{len(rows)} worker(s)"]

    def _show_blocked_sources(self) -> list[str]:
        blocked = sorted(self.backend.blocked_sources(), key=lambda b: (b.since, b.address))
        if not blocked:
            return ["No blocked sources."]
        rows = [
            [
                b.address,
                b.adjacency,
                b.reason,
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(b.since)),
                f"{b.remaining}s",
                str(b.dropped),
            ]
            for b in blocked
        ]
        headers = ["Address", "Adjacency", "Reason", "Banned since", "Remaining", "Dropped"]
        return [*format_table(headers, rows), f"{len(blocked)} blocked source(s)"]

    def _show_adjacencies(self, running: SbcConfig, options: list[str]) -> list[str]:
        detail = bool(options) and options[-1] == "detail"
        names = options[:-1] if detail else options
        if len(names) > 1:
            raise _CliError("too many words: usage: ... sbe adjacencies [ADJ] [detail]")
        adjacencies = list(running.adjacencies)
        if names:
            found = running.get_adjacency(names[0])
            if found is None:
                raise _CliError(f"no adjacency '{names[0]}'")
            adjacencies = [found]
        if not adjacencies:
            return ["No adjacencies configured."]
        counters = self.backend.counters() if detail else {}
        active: dict[str, int] = {}
        for call in self.backend.calls():
            for name in {call.inbound, call.outbound}:
                if name is not None:
                    active[name] = active.get(name, 0) + 1
        out: list[str] = []
        for adj in adjacencies:
            if out:
                out.append("")
            out.extend(
                describe_adjacency(
                    adj,
                    dict(counters.get(adj.name, {})) if detail else None,
                    active.get(adj.name, 0),
                )
            )
        return out

    def _show_calls(self) -> list[str]:
        calls = sorted(self.backend.calls(), key=lambda c: (c.worker, c.id))
        if not calls:
            return ["No active calls."]
        rows = [
            [
                str(c.id),
                c.method,
                c.state,
                c.inbound,
                c.outbound or "-",
                "yes" if c.secure else "no",
                f"{int(c.age)}s",
                c.from_uri,
                c.to_uri,
            ]
            for c in calls
        ]
        headers = ["ID", "Method", "State", "Inbound", "Outbound", "Secure", "Age", "From", "To"]
        if any(c.worker for c in calls):
            # worker processes (docs/scaling.md): each numbers its own calls
            headers.insert(1, "Worker")
            for row, c in zip(rows, calls):
                row.insert(1, c.worker or "-")
        return [*format_table(headers, rows), f"{len(calls)} call(s)"]

    def _show_registrations(self) -> list[str]:
        bindings = sorted(self.backend.registrations(), key=lambda r: (r.aor, r.contact))
        if not bindings:
            return ["No registrations."]
        rows = [
            [
                r.aor,
                r.contact,
                r.adjacency,
                r.flow or "-",
                f"{r.expires_in}s",
                f"relayed to {r.relayed_to}" if r.relayed_to else "local",
            ]
            for r in bindings
        ]
        headers = ["AOR", "Contact", "Adjacency", "Flow", "Expires", "Registrar"]
        if any(r.node for r in bindings):
            # a shared store: which node holds each flow (docs/scaling.md)
            headers.append("Node")
            for row, r in zip(rows, bindings):
                row.append(r.node or "-")
        if any(r.worker for r in bindings):
            # worker processes (docs/scaling.md): which one holds each binding
            headers.append("Worker")
            for row, r in zip(rows, bindings):
                row.append(r.worker or "-")
        return [*format_table(headers, rows), f"{len(bindings)} binding(s)"]

    def _show_statistics(self, running: SbcConfig) -> list[str]:
        counters = self.backend.counters()
        names = [adj.name for adj in running.adjacencies]
        names += sorted(n for n in counters if n not in names and n != UNCLASSIFIED)
        if UNCLASSIFIED in counters:
            names.append(UNCLASSIFIED)
        out: list[str] = []
        for name in names:
            if out:
                out.append("")
            out.append(f"Adjacency: {name}")
            out.extend(_counter_lines(dict(counters.get(name, {})), "  "))
        return out or ["No statistics."]

    # -- completion -----------------------------------------------------------

    def complete(self, text: str) -> list[str]:
        """The words that may complete the last (partial) word of ``text``, sorted.

        ``text`` is the line typed so far; when it ends with a space the next
        word is completed from nothing. Keywords, literal arguments (``ipv4``,
        ``trusted-encrypted``...) and the names of configured adjacencies are
        offered; free values (addresses, ports) are not.
        """
        words = text.split()
        partial = "" if not words or text[-1:].isspace() else words.pop()
        if self.mode is None:
            options = self._exec_options(words)
        else:
            options = self._config_options(words)
        return sorted({o for o in options if o.startswith(partial)})

    def _exec_options(self, words: list[str]) -> set[str]:
        if not words:
            return {"clear", "configure", "crypto", "exit", "reload", "rollback", "show"}
        grammar = {
            "configure": ["terminal"],
            "crypto": ["reload"],
            "reload": ["user-database"],
            "rollback": ["configuration", "last|to"],
        }
        if words[0] == "clear":
            blocked = "|".join(["all", *(b.address for b in self.backend.blocked_sources())])
            service = self.backend.running_config().service_name
            return _follow(
                ["services", "sbc", service, "sbe", "blocked-source", blocked], words[1:]
            )
        if words[0] == "show":
            return self._show_options(words[1:])
        return _follow(grammar.get(words[0], []), words[1:])

    def _show_options(self, words: list[str]) -> set[str]:
        running = self.backend.running_config()
        adjacencies = "|".join(a.name for a in running.adjacencies)
        first = {"running-config", "services"} | ({"configuration"} if self.in_config else set())
        if not words:
            return first | {"configuration"}
        if words[0] == "configuration":
            if len(words) == 1:
                return {"commit", "diff"}
            return _follow(["list|changes"], words[2:]) if words[1] == "commit" else set()
        if words[0] != "services":
            return set()
        what = "adjacencies|calls|registrations|statistics|blocked-sources|workers"
        tail = words[1:]
        if len(tail) >= 4 and tail[3] == "adjacencies":
            return (
                _follow([f"[{adjacencies}]", "[detail]"], tail[4:])
                if adjacencies
                else (_follow(["[detail]"], tail[4:]))
            )
        return _follow(["sbc", running.service_name, "sbe", what], tail)

    def _config_options(self, words: list[str]) -> set[str]:
        assert self.mode is not None
        helps = [h for h in commands_for(self.mode)]
        session = {"abort", "commit", "do", "end", "exit", "no", "show"}
        if not words:
            return {h.keyword for h in helps} | session
        keyword = words[0]
        if keyword == "do":
            return self._exec_options(words[1:])
        if keyword == "show":
            return self._show_options(words[1:])
        if keyword == "commit":
            if words[1:2] == ["confirmed"]:
                return _follow(["[SECONDS]", "[comment]"], words[2:]) | (
                    {"comment"} if len(words) == 2 else set()
                )
            return _follow(["[confirmed|comment]"], words[1:])
        if keyword == "no":
            if len(words) == 1:
                return {h.keyword for h in helps if h.no_syntax}
            syntaxes = [h.no_syntax for h in helps if h.keyword == words[1] and h.no_syntax]
            if not syntaxes:
                return set()
            tokens = syntaxes[0].split()[2:]
            if "adjacency" in words[1]:
                names = self._adjacency_names()
                tokens = [names if t == "NAME" and names else t for t in tokens]
            return _follow(tokens, words[2:])
        found = [h for h in helps if h.keyword == keyword]
        if not found:
            return set()
        tokens = found[0].syntax.split()[1:]
        names = self._adjacency_names() if "adjacency" in keyword else ""
        if names:
            tokens = [names if t == "NAME" else t for t in tokens]
        return _follow(tokens, words[1:])

    def _adjacency_names(self) -> str:
        try:
            candidate = self._candidate()
        except _CliError:
            candidate = self.backend.running_config()
        return "|".join(a.name for a in candidate.adjacencies)

    # -- help -----------------------------------------------------------------

    def _help(self, words: list[str]) -> list[str]:
        last = words[-1][:-1]
        prefix = [*words[:-1], last] if last else words[:-1]
        if self.mode is None:
            entries = list(_EXEC_HELP)
        else:
            entries = [
                (h.syntax, h.description)
                for h in commands_for(self.mode)
                if h.keyword not in ("exit", "end")
            ]
            entries += [*_SESSION_HELP, ("exit", "Leave this mode"), ("end", "Return to exec mode")]
            if any(h.no_syntax for h in commands_for(self.mode)):
                entries.append(("no COMMAND", "Undo a setting or remove a block"))
        if prefix and prefix[0] in ("show", "do"):
            entries = list(_SHOW_HELP)
            if prefix[0] == "do":
                prefix = prefix[1:]
        elif prefix and prefix[0] == "no" and self.mode is not None:
            entries = [(h.no_syntax, h.description) for h in commands_for(self.mode) if h.no_syntax]
        if prefix and prefix[0] not in ("no",):
            typed = " ".join(prefix)
            matching = [
                e for e in entries if e[0].startswith(typed) or typed.startswith(e[0].split()[0])
            ]
            entries = matching or entries
        entries.sort(key=lambda e: e[0])
        width = max(len(e[0]) for e in entries)
        return [f"  {syntax.ljust(width)}  {text}" for syntax, text in entries]


def _follow(tokens: Sequence[str], typed: Sequence[str]) -> set[str]:
    """The literal words that may come next after ``typed`` in a syntax of ``tokens``.

    A token is ``a|b`` (one of the literals), ``[a|b]`` (optional), or a
    placeholder in capitals (any word; nothing to offer).
    """

    def literals(token: str) -> list[str]:
        return [w for w in token.strip("[]").split("|") if w and not w.isupper()]

    def matches(token: str, word: str) -> bool:
        words = token.strip("[]").split("|")
        return word in words or any(w.isupper() for w in words)

    def close(positions: set[int]) -> set[int]:
        result = set(positions)
        for i in sorted(positions):
            j = i
            while j < len(tokens) and tokens[j].startswith("["):
                j += 1
                result.add(j)
        return result

    positions = close({0})
    for word in typed:
        positions = close(
            {i + 1 for i in positions if i < len(tokens) and matches(tokens[i], word)}
        )
        if not positions:
            return set()
    return {w for i in positions if i < len(tokens) for w in literals(tokens[i])}


def mode_kind(session: Session) -> ModeKind | None:
    """The kind of the session's innermost config mode (None in exec mode)."""
    return None if session.mode is None else session.mode.kind
