"""What the CLI prints for the typed results of the controller and the SIP side.

:class:`~sbc.controller.ConfigController` and :class:`~sbc.worker.SipWorker`
answer with values (:class:`~sbc.controller.Committed`,
:class:`~sbc.controller.Refused`, :class:`~sbc.worker.TlsReloaded`...);
these functions turn them into the lines of docs/cli.md. A refusal is one
line starting with ``%``; success is the output lines (none for a commit).
"""

from __future__ import annotations

from sbc.controller import Committed, Confirmed, NoChange, Refused, RolledBack
from sbc.worker import Released, TlsReloaded, UsersReloaded

__all__ = [
    "commit_lines",
    "confirm_lines",
    "refusal",
    "release_lines",
    "reload_tls_lines",
    "reload_users_lines",
    "rollback_lines",
]


def refusal(result: Refused) -> list[str]:
    """The ``%`` line of a refusal."""
    return [f"% {result.reason}"]


def commit_lines(result: Committed | Refused) -> list[str]:
    """A commit: nothing on success (the session says the rest), else the ``%`` line."""
    return refusal(result) if isinstance(result, Refused) else []


def confirm_lines(result: Confirmed | Refused) -> list[str]:
    """``Commit ID confirmed.`` or the ``%`` line."""
    if isinstance(result, Refused):
        return refusal(result)
    return [f"Commit {result.commit_id} confirmed."]


def rollback_lines(result: RolledBack | NoChange | Refused) -> list[str]:
    """``Configuration rolled back (...): commit ID.``, the no-change line, or the ``%`` line."""
    if isinstance(result, Refused):
        return refusal(result)
    if isinstance(result, NoChange):
        return ["No configuration changes: the running configuration is already that one."]
    return [f"Configuration rolled back ({result.label}): commit {result.record.id}."]


def reload_tls_lines(result: TlsReloaded | Refused) -> list[str]:
    """``TLS identity reloaded: ...`` or the ``%`` line."""
    if isinstance(result, Refused):
        return refusal(result)
    return [f"TLS identity reloaded: {result.identity}"]


def reload_users_lines(result: UsersReloaded | Refused) -> list[str]:
    """``user database reloaded: ...`` or the ``%`` line."""
    if isinstance(result, Refused):
        return refusal(result)
    return [f"user database reloaded: {result.summary}"]


def release_lines(result: Released) -> list[str]:
    """What ``clear ... blocked-source`` prints (several processes' bans of one source add up)."""
    if result.address is None:
        return [f"{result.count} blocked source(s) released."]
    if not result.bans:
        return [f"% {result.address} is not blocked (show services sbc NAME sbe blocked-sources)"]
    first = result.bans[0]
    dropped = sum(ban.dropped for ban in result.bans)
    return [
        f"{result.address} released (banned for {first.reason} on {first.adjacency}; "
        f"{dropped} dropped)."
    ]
