"""The commit history behind ``show configuration commit list`` and ``rollback``.

Every successful commit gets an id (IOS XR style: 1000000001, 1000000002...)
and a record: who committed, from which client, when, an optional comment,
and the configuration before and after it. ``rollback configuration last N``
goes back to the configuration as it was before the last N commits;
``rollback configuration to ID`` to the configuration right after commit ID.
A rollback is itself a commit (it gets the next id), so it can be undone.

Records live in a directory beside the configuration file (``FILE.commits/``,
one ``ID.commit`` text file each, written atomically), so the history
survives a restart. Without a configuration file (an embedded SBC built from
a config object) the history is kept in memory. Only the newest
``keep`` records are kept (the ``commit-history`` limit).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

import attrs
from twisted.logger import Logger

from sbc.config import LIMIT_SETTINGS, SbcConfig

__all__ = [
    "CONFIRM_SECONDS_RANGE",
    "DEFAULT_CONFIRM_SECONDS",
    "FIRST_COMMIT_ID",
    "CommitHistory",
    "CommitRecord",
    "history_directory",
    "summarize_changes",
]

FIRST_COMMIT_ID = 1000000001
"""The id of the first commit (IOS XR numbering)."""

DEFAULT_CONFIRM_SECONDS = 600
"""``commit confirmed`` with no time given: seconds before the automatic rollback."""
CONFIRM_SECONDS_RANGE = (30, 65535)
"""The seconds ``commit confirmed SECONDS`` accepts (as IOS XR)."""

_SUFFIX = ".commit"
_BEFORE = "! --- configuration before this commit"
_AFTER = "! --- configuration after this commit"


@attrs.frozen
class CommitRecord:
    """One commit: id, who, when, and the configuration text before and after."""

    id: int
    time: float
    user: str
    client: str
    comment: str
    before: str
    after: str

    @property
    def timestamp(self) -> str:
        """UTC time of the commit, e.g. ``2026-11-27 21:10:03 UTC``."""
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))

    def to_text(self) -> str:
        """The file form: ``!`` header lines, then both configurations."""
        header = [
            f"! sbc commit {self.id}",
            f"! time {self.time:.3f}",
            f"! user {_one_line(self.user)}",
            f"! client {_one_line(self.client)}",
            f"! comment {_one_line(self.comment)}",
        ]
        return "\n".join([*header, _BEFORE, self.before.rstrip("\n"), _AFTER, self.after])

    @classmethod
    def from_text(cls, text: str) -> CommitRecord:
        """Parse :meth:`to_text`; ``ValueError`` when the file is not a commit record."""
        head, sep, rest = text.partition(f"\n{_BEFORE}\n")
        before, sep2, after = rest.partition(f"\n{_AFTER}\n")
        if not sep or not sep2:
            raise ValueError("not a commit record")
        fields: dict[str, str] = {}
        for line in head.split("\n"):
            if not line.startswith("! "):
                raise ValueError(f"bad header line {line!r}")
            key, _, value = line[2:].partition(" ")
            fields[key] = value
        if not fields.get("sbc", "").startswith("commit "):
            raise ValueError("not a commit record")
        return cls(
            id=int(fields["sbc"].split()[1]),
            time=float(fields.get("time", "0")),
            user=fields.get("user", ""),
            client=fields.get("client", ""),
            comment=fields.get("comment", ""),
            before=before + "\n",
            after=after,
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def history_directory(config_path: str) -> str:
    """Where the commits of the configuration file ``config_path`` are kept."""
    return os.path.abspath(config_path) + ".commits"


class CommitHistory:
    """Commit records, newest last; on disk under ``directory`` (None: in memory)."""

    log = Logger()

    def __init__(self, directory: str | None, keep: int = 100) -> None:
        self.directory = directory
        self.keep = keep
        self._records: list[CommitRecord] = self._load() if directory is not None else []

    def _load(self) -> list[CommitRecord]:
        assert self.directory is not None
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            if not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    records.append(CommitRecord.from_text(f.read()))
            except (OSError, ValueError, KeyError) as error:
                self.log.warn("commit record {path} ignored: {error}", path=path, error=error)
        records.sort(key=lambda r: r.id)
        return records

    @property
    def records(self) -> Sequence[CommitRecord]:
        """Every kept record, oldest first."""
        return tuple(self._records)

    @property
    def next_id(self) -> int:
        """The id the next commit gets."""
        return self._records[-1].id + 1 if self._records else FIRST_COMMIT_ID

    def get(self, commit_id: int) -> CommitRecord | None:
        """The record of ``commit_id`` (None when unknown or no longer kept)."""
        for record in self._records:
            if record.id == commit_id:
                return record
        return None

    def last(self, count: int) -> CommitRecord | None:
        """The ``count``-th newest record (1: the last commit), None when there are fewer."""
        if count < 1 or count > len(self._records):
            return None
        return self._records[-count]

    def record(
        self,
        before: str,
        after: str,
        *,
        now: float,
        user: str = "",
        client: str = "",
        comment: str = "",
    ) -> CommitRecord:
        """Store a new commit (raises ``OSError`` when it cannot be written).

        Nothing older is deleted here: call :meth:`prune` once the commit is
        complete, so that a commit that fails after this (and is
        :meth:`discard`-ed) leaves the history exactly as it was.
        """
        record = CommitRecord(self.next_id, now, user, client, comment, before, after)
        if self.directory is not None:
            self._write(record)
        self._records.append(record)
        return record

    def _write(self, record: CommitRecord) -> None:
        assert self.directory is not None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, f"{record.id}{_SUFFIX}")
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(record.to_text())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def discard(self, commit_id: int) -> None:
        """Forget the newest record ``commit_id`` (a commit that could not be completed)."""
        if self._records and self._records[-1].id == commit_id:
            self._records.pop()
            if self.directory is not None:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, f"{commit_id}{_SUFFIX}"))

    def forget_unsaved(self, running: str) -> CommitRecord | None:
        """Drop the newest record when it never took effect; the record dropped, or None.

        A commit is recorded before the configuration file is saved: a
        daemon killed in between leaves a record whose configuration was
        never in force. At start-up, ``running`` (the canonical text of the
        configuration just loaded) tells: when the newest record's ``after``
        is not it but its ``before`` is, that commit was interrupted and is
        removed from the history (and logged, ``config.commit-unsaved``).
        """
        if not self._records:
            return None
        last = self._records[-1]
        if last.after == running or last.before != running:
            return None
        self.discard(last.id)
        self.log.warn(
            "commit {commit_id} was never saved (the daemon stopped during the save): "
            "removed from the commit history",
            event="config.commit-unsaved",
            commit_id=last.id,
        )
        return last

    def prune(self, keep: int | None = None) -> None:
        """Delete the records beyond the newest ``keep`` (and remember ``keep`` when given)."""
        if keep is not None:
            self.keep = keep
        while len(self._records) > max(1, self.keep):
            old = self._records.pop(0)
            if self.directory is not None:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, f"{old.id}{_SUFFIX}"))


def summarize_changes(before: SbcConfig, after: SbcConfig) -> list[str]:
    """What a commit changes, one short phrase each (for the log and the commit record)."""
    changes: list[str] = []
    old = {a.name: a for a in before.adjacencies}
    new = {a.name: a for a in after.adjacencies}
    for name in old.keys() - new.keys():
        changes.append(f"adjacency {name} removed")
    for adjacency in after.adjacencies:
        previous = old.get(adjacency.name)
        if previous is None:
            state = "attached" if adjacency.attached else "detached"
            changes.append(f"adjacency {adjacency.name} added ({state})")
            continue
        fields = [
            f.name.replace("_", "-")
            for f in attrs.fields(type(adjacency))
            if f.eq and f.name != "attached"
            and getattr(previous, f.name) != getattr(adjacency, f.name)
        ]  # fmt: skip
        if fields:
            changes.append(f"adjacency {adjacency.name} changed: {', '.join(fields)}")
        if previous.attached != adjacency.attached:
            state = "attached" if adjacency.attached else "detached"
            changes.append(f"adjacency {adjacency.name} {state}")
    if before.local_domains != after.local_domains:
        changes.append("local-domain changed")
    if before.dns_servers != after.dns_servers:
        changes.append("dns-server changed")
    if (before.call_policy_sets, before.active_call_policy_set, before.routing_policy) != (
        after.call_policy_sets,
        after.active_call_policy_set,
        after.routing_policy,
    ):
        changes.append("routing changed")
    if before.blocked_user_agents != after.blocked_user_agents:
        changes.append("blocked-user-agent changed")
    limits = [
        s.keyword for s in LIMIT_SETTINGS if s.values(before.limits) != s.values(after.limits)
    ]
    if limits:
        changes.append(f"limits changed: {', '.join(limits)}")
    if before.service_name != after.service_name:
        changes.append(f"service renamed {before.service_name} -> {after.service_name}")
    return changes
