"""The configuration controller: the running configuration, commits, their history, the file.

:class:`ConfigController` owns what ``commit``, ``commit confirmed``,
``rollback configuration`` and ``show configuration commit list`` act on
(docs/cli.md): the configuration in force, the :class:`~sbc.commits.CommitHistory`,
the file a commit saves atomically (:func:`save_config`) and the
``commit confirmed`` waiting for its confirmation. It returns typed results
(:class:`Committed`, :class:`Refused`, :class:`RolledBack`...); the CLI turns
them into text (:mod:`sbc.cli.replies`).

The SIP side is a :class:`ConfigTarget`: one :class:`~sbc.worker.SipWorker`
in a single process, every worker process under a supervisor
(:mod:`sbc.workers.supervisor`). A commit is two-phase:

1. the controller checks the candidate (security of attached adjacencies,
   ``commit confirmed`` rules, validation, routing);
2. :meth:`ConfigTarget.prepare` checks what only the SIP side can (the user
   database file, listeners that must open); a refusal ends the commit
   (:meth:`ConfigTarget.abort`) and nothing changed;
3. the controller records the commit and saves the file; a failure here
   aborts the prepared target too;
4. :meth:`ConfigTarget.commit` applies it.

A commit therefore applies everywhere or nowhere. Only one commit is in
progress at a time: another one meanwhile is refused (with workers, the
steps above wait for the workers' answers).

The controller touches no socket; its clock (``IReactorTime``) times the
``commit confirmed`` rollback and stamps the records.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Protocol, Union

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sbc.commits import (
    CONFIRM_SECONDS_RANGE,
    CommitHistory,
    CommitRecord,
    history_directory,
    summarize_changes,
)
from sbc.config import (
    SECURITY_CHANGE_MESSAGE,
    SbcConfig,
    parse_config,
    render_config,
    security_changes_while_attached,
    validate,
)
from sbc.errors import ConfigError
from sbc.routing import Router, available_policies

__all__ = [
    "CommitPlan",
    "Committed",
    "ConfigController",
    "ConfigTarget",
    "Confirmed",
    "NoChange",
    "PendingConfirmation",
    "Refused",
    "RolledBack",
    "remove_interrupted_saves",
    "save_config",
]


# -- results ---------------------------------------------------------------------


@attrs.frozen
class Refused:
    """A commit, rollback or confirmation that was refused: nothing changed.

    ``reason`` is one line without the ``%`` the CLI prints before it.
    """

    reason: str


@attrs.frozen
class Committed:
    """A commit in force: its record; ``confirmed`` is the ``commit confirmed`` it
    confirmed (if any), ``trial`` the (id, seconds) of the rollback it is on trial for."""

    record: CommitRecord
    confirmed: int | None = None
    trial: tuple[int, int] | None = None


@attrs.frozen
class RolledBack:
    """``rollback configuration``: the commit it became and what it said it did."""

    record: CommitRecord
    label: str


@attrs.frozen
class NoChange:
    """A rollback to the configuration already running: nothing was done."""


@attrs.frozen
class Confirmed:
    """The waiting ``commit confirmed`` is confirmed: it stays."""

    commit_id: int


CommitResult = Union[Committed, Refused]
RollbackResult = Union[RolledBack, NoChange, Refused]


@attrs.frozen(eq=False)
class CommitPlan:
    """A candidate the controller accepted, on its way to the SIP side."""

    before: SbcConfig
    candidate: SbcConfig
    user: str = ""
    client: str = ""
    comment: str = ""
    confirm_within: int | None = None

    @property
    def text(self) -> str:
        """The candidate as configuration text (what a worker process is sent)."""
        return render_config(self.candidate)


class ConfigTarget(Protocol):
    """The SIP side a controller configures (see the module docstring)."""

    def prepare(self, plan: CommitPlan) -> Deferred[str | None]:
        """Check ``plan`` and get ready to apply it: None, or why it is refused."""

    def commit(self, plan: CommitPlan) -> Deferred[None]:
        """Apply the prepared ``plan`` (it has been saved): fires when applied."""

    def abort(self, plan: CommitPlan) -> None:
        """Forget the prepared ``plan``: it is not going to be applied."""


@attrs.define(eq=False)
class PendingConfirmation:
    """A ``commit confirmed`` that is rolled back at ``deadline`` unless a commit confirms it."""

    commit_id: int
    seconds: int
    deadline: float
    before: str  # the configuration text to return to
    user: str
    timer: IDelayedCall | None = None

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the rollback (at least 0)."""
        return max(0, int(self.deadline - now + 0.999))


#: Seconds before an unconfirmed trial's rollback is tried again when it could not run
#: (another commit was in progress, or a worker process was restarting).
CONFIRM_RETRY_SECONDS = 5

#: The refusal while another commit is being applied.
BUSY = "another commit is being applied: commit again"

#: How a target's refusal starts when the same commit may succeed a moment later
#: (a worker process restarting).
RETRY_LATER = "not now:"


class ConfigController:
    """The configuration in force, its commits and the file (see the module docstring).

    ``running`` is the configuration the SBC started with. ``target`` is set
    (:attr:`target`) before the first commit. ``certificate_configured``:
    the SBC has a TLS identity (trusted-encrypted adjacencies need one).
    ``shared_store``: worker processes, which share a store without a
    ``store`` line (a cluster link needs no ``store`` then).
    ``config_path``: the file a commit saves to (None: commits are not
    saved and the history is in memory).
    """

    log = Logger()

    def __init__(
        self,
        running: SbcConfig,
        clock: IReactorTime,
        *,
        config_path: str | None = None,
        certificate_configured: bool = False,
        shared_store: bool = False,
        target: ConfigTarget | None = None,
    ) -> None:
        self.running = running
        self.clock = clock
        self.config_path = config_path
        self.certificate_configured = certificate_configured
        #: worker processes: they share a store even without a ``store`` line
        self.shared_store = shared_store
        self.target = target
        #: Every commit: ``show configuration commit list``, ``rollback configuration``.
        self.commits = CommitHistory(
            history_directory(config_path) if config_path is not None else None,
            keep=running.limits.commit_history,
        )
        if config_path is not None:
            # a daemon killed during a save leaves a record of a commit never in force,
            # and its temporary file
            self.commits.forget_unsaved(render_config(running))
            remove_interrupted_saves(config_path)
        #: The ``commit confirmed`` waiting for its confirmation, if any.
        self.pending: PendingConfirmation | None = None
        #: True while a commit waits for the SIP side (only one at a time).
        self.busy = False

    # -- commit ------------------------------------------------------------------

    def commit(
        self,
        candidate: SbcConfig,
        *,
        user: str = "",
        client: str = "",
        comment: str = "",
        confirm_within: int | None = None,
    ) -> Deferred[CommitResult]:
        """Check, prepare, save and apply ``candidate`` whole (module docstring).

        Refused (nothing changes) when the candidate changes the security of
        an attached adjacency, breaks a ``commit confirmed`` rule, is
        invalid, is refused by the SIP side (a user database it cannot read,
        a listener it cannot open) or cannot be saved. Otherwise the commit
        is recorded (``user``, ``client`` and ``comment`` go into the
        record), the file is replaced atomically (the previous one kept as
        ``FILE.bak``) and the SIP side applies it.

        ``confirm_within`` (seconds) makes it a ``commit confirmed``: unless
        a later commit (or :meth:`confirm`) confirms it within that time,
        the configuration before it is restored automatically, as a new
        commit. Refused while another one is waiting. Any successful commit
        confirms a waiting one.
        """
        plan = CommitPlan(self.running, candidate, user, client, comment, confirm_within)
        rule = self._confirm_rule(plan)
        if rule is not None:  # not logged, as a mistyped command is not
            return succeed(Refused(rule))
        problem = self._check(plan)
        if problem is not None:
            return succeed(self._refused(plan, problem))
        if self.busy:
            return succeed(self._refused(plan, BUSY))
        target = self.target
        assert target is not None, "set ConfigController.target before committing"
        self.busy = True
        prepared = target.prepare(plan)

        def done(result: Any) -> Any:
            self.busy = False
            return result

        committed: Deferred[CommitResult] = prepared.addCallback(self._prepared, plan, target)
        return committed.addBoth(done)

    def _confirm_rule(self, plan: CommitPlan) -> str | None:
        """The ``commit confirmed`` rule ``plan`` breaks, or None.

        The security of attached adjacencies is checked first (behaviour.md
        §2: the operator hears that refusal first whatever else is wrong), so
        this returns None when it changes: :meth:`_check` refuses it.
        """
        candidate, confirm_within = plan.candidate, plan.confirm_within
        if confirm_within is None or security_changes_while_attached(self.running, candidate):
            return None
        low, high = CONFIRM_SECONDS_RANGE
        if not low <= confirm_within <= high:
            return f"commit confirmed takes {low} to {high} seconds, not {confirm_within}"
        if self.pending is not None:
            return (
                f"commit {self.pending.commit_id} is waiting for confirmation: "
                "'commit' confirms it first"
            )
        # The way back must be a commit the SBC accepts: not one that
        # changes the security of an adjacency this trial attaches.
        stuck = security_changes_while_attached(candidate, self.running)
        if stuck:
            return (
                f"commit confirmed could not roll back: it attaches adjacency {stuck[0]} "
                "with a new security, which cannot be undone while it is attached; "
                "commit without 'confirmed'"
            )
        return None

    def _check(self, plan: CommitPlan) -> str | None:
        """What the controller itself refuses in ``plan`` (logged), or None."""
        candidate = plan.candidate
        # behaviour.md §2: this refusal comes before every other one, so the
        # operator hears it first whatever else is wrong with the candidate.
        refused = security_changes_while_attached(self.running, candidate)
        if refused:
            line = SECURITY_CHANGE_MESSAGE.format(name=refused[0]).removeprefix("% ")
            if len(refused) > 1:
                line += f" (also: {', '.join(refused[1:])})"
            return line
        if (candidate.store, candidate.node) != (self.running.store, self.running.node):
            return (
                "store and node are read at start only: change them in the file and "
                "restart sbc (docs/scaling.md)"
            )
        try:
            validate(
                candidate,
                certificate_configured=self.certificate_configured,
                routing_policies=tuple(available_policies()),
                shared_store=self.shared_store,
            )
            Router.from_config(candidate)
        except ConfigError as error:
            return error.message
        return None

    def _prepared(
        self, problem: str | None, plan: CommitPlan, target: ConfigTarget
    ) -> Deferred[CommitResult] | CommitResult:
        if problem is not None:
            target.abort(plan)
            return self._refused(plan, problem)
        before, candidate = plan.before, plan.candidate
        try:
            record = self.commits.record(
                render_config(before),
                render_config(candidate),
                now=self.clock.seconds(),
                user=plan.user,
                client=plan.client,
                comment=plan.comment,
            )
        except OSError as error:
            target.abort(plan)
            return self._refused(plan, f"cannot record the commit: {error.strerror or error}")
        if self.config_path is not None:
            try:
                save_config(self.config_path, candidate)
            except OSError as error:
                self.commits.discard(record.id)
                target.abort(plan)
                return self._refused(
                    plan, f"cannot save {self.config_path}: {error.strerror or error}"
                )
        self.commits.prune(candidate.limits.commit_history)
        self.running = candidate
        applied = target.commit(plan)
        return applied.addCallback(lambda _: self._committed(plan, record))

    def _committed(self, plan: CommitPlan, record: CommitRecord) -> Committed:
        confirmed = None
        pending = self.pending
        if pending is not None:
            self._end_confirmation(
                pending, f"confirmed by commit {record.id}", plan.user, plan.client
            )
            confirmed = pending.commit_id
        trial = None
        if plan.confirm_within is not None:
            started = self._start_confirmation(record, plan.confirm_within, plan.user)
            trial = (started.commit_id, started.seconds_left(self.clock.seconds()))
        changes = summarize_changes(plan.before, plan.candidate)
        self.log.info(
            "commit {commit_id} by {user} ({client}): {summary}",
            event="config.committed",
            commit_id=record.id,
            user=plan.user or "-",
            client=plan.client or "-",
            comment=plan.comment,
            changes=changes,
            summary="; ".join(changes) or "no effective change",
        )
        return Committed(record, confirmed, trial)

    def _refused(self, plan: CommitPlan, reason: str) -> Refused:
        self.log.info(
            "commit by {user} ({client}) refused: {reason}",
            event="config.refused",
            user=plan.user or "-",
            client=plan.client or "-",
            reason=reason,
        )
        return Refused(reason)

    # -- commit confirmed ----------------------------------------------------------

    def confirm(self, *, user: str = "", client: str = "") -> Confirmed | Refused:
        """Confirm the waiting ``commit confirmed``."""
        pending = self.pending
        if pending is None:
            return Refused("no commit is waiting for confirmation")
        self._end_confirmation(pending, "confirmed", user, client)
        return Confirmed(pending.commit_id)

    def pending_confirmation(self) -> tuple[int, int] | None:
        """The ``commit confirmed`` waiting: (commit id, seconds left), or None."""
        pending = self.pending
        if pending is None:
            return None
        return pending.commit_id, pending.seconds_left(self.clock.seconds())

    def _start_confirmation(
        self, record: CommitRecord, seconds: int, user: str
    ) -> PendingConfirmation:
        now = self.clock.seconds()
        pending = PendingConfirmation(record.id, seconds, now + seconds, record.before, user)
        pending.timer = self.clock.callLater(seconds, self._confirmation_expired, pending)
        self.pending = pending
        self.log.info(
            "commit {commit_id} is rolled back in {seconds} s unless confirmed",
            event="config.confirm-pending",
            commit_id=record.id,
            seconds=seconds,
        )
        return pending

    def _end_confirmation(
        self, pending: PendingConfirmation, how: str, user: str, client: str
    ) -> None:
        self.pending = None
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self.log.info(
            "commit {commit_id} {how} by {user} ({client})",
            event="config.confirmed",
            commit_id=pending.commit_id,
            how=how,
            user=user or "-",
            client=client or "-",
        )

    def _confirmation_expired(self, pending: PendingConfirmation) -> None:
        if self.pending is not pending:
            return
        if self.busy:  # a commit is on its way: try again in a moment
            pending.timer = self.clock.callLater(
                CONFIRM_RETRY_SECONDS, self._confirmation_expired, pending
            )
            return
        self.pending = None
        label = f"commit {pending.commit_id} not confirmed within {pending.seconds} s"
        try:
            target = parse_config(pending.before, path=f"<before commit {pending.commit_id}>")
        except ConfigError as error:
            self._expiry_failed(pending, label, str(error))
            return
        committing = self.commit(target, user="sbc", client="commit confirmed", comment=label)
        committing.addCallback(self._expiry_done, pending, label)
        committing.addErrback(
            lambda failure: self.log.failure("rolling back an unconfirmed commit", failure)
        )

    def _expiry_done(self, result: CommitResult, pending: PendingConfirmation, label: str) -> None:
        if isinstance(result, Refused):
            if result.reason == BUSY or result.reason.startswith(RETRY_LATER):
                # not now (a worker process restarting): the trial waits a little longer
                self.pending = pending
                pending.timer = self.clock.callLater(
                    CONFIRM_RETRY_SECONDS, self._confirmation_expired, pending
                )
                return
            self._expiry_failed(pending, label, result.reason)
            return
        self.log.warn(
            "{label}: rolled back (commit {rollback_id})",
            event="config.confirm-expired",
            label=label,
            commit_id=pending.commit_id,
            rolled_back=True,
            rollback_id=result.record.id,
        )

    def _expiry_failed(self, pending: PendingConfirmation, label: str, reason: str) -> None:
        self.log.error(
            "{label}: cannot roll it back: {reason}",
            event="config.confirm-expired",
            label=label,
            commit_id=pending.commit_id,
            rolled_back=False,
            reason=reason,
        )

    # -- rollback ------------------------------------------------------------------

    def rollback(
        self,
        *,
        last: int | None = None,
        to: int | None = None,
        user: str = "",
        client: str = "",
    ) -> Deferred[RollbackResult]:
        """``rollback configuration last N`` / ``to ID``.

        ``last=N`` returns to the configuration before the last N commits;
        ``to=ID`` to the configuration right after commit ID. The rollback
        is applied like any commit (:meth:`commit`: the same checks, so it
        is refused whole, for instance, when it would change the security
        of an attached adjacency) and becomes a new commit.
        """
        record: CommitRecord | None
        if last is not None:
            record = self.commits.last(last)
            if record is None:
                kept = len(self.commits.records)
                return succeed(
                    Refused(f"cannot roll back {last} commit(s): only {kept} in the history")
                )
            text, label = record.before, f"rollback configuration last {last}"
        elif to is not None:
            record = self.commits.get(to)
            if record is None:
                return succeed(
                    Refused(f"no commit {to} in the history (show configuration commit list)")
                )
            text, label = record.after, f"rollback configuration to {to}"
        else:
            raise TypeError("rollback needs last= or to=")
        try:
            target = parse_config(text, path=f"<commit {record.id}>")
        except ConfigError as error:
            return succeed(Refused(f"commit {record.id} cannot be restored: {error}"))
        if target == self.running:
            return succeed(NoChange())

        def rolled(result: CommitResult) -> RollbackResult:
            if isinstance(result, Refused):
                return result
            return RolledBack(result.record, label)

        committing = self.commit(target, user=user, client=client, comment=label)
        return committing.addCallback(rolled)

    # -- stop ----------------------------------------------------------------------

    def stop(self) -> None:
        """The SBC stops: a trial waiting for its confirmation stays in force (it was saved)."""
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self.log.warn(
            "commit {commit_id} was still waiting for confirmation: it stays in force "
            "(saved); roll it back with 'rollback configuration last 1' if needed",
            event="config.confirm-abandoned",
            commit_id=pending.commit_id,
        )


def result_now(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (a single process's commit).

    Raises the failure's exception when it failed; ``AssertionError`` when it
    has not fired (a target that is not synchronous).
    """
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the SIP side did not answer at once"
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


# -- the file ----------------------------------------------------------------------


def _temporary_path(path: str, pid: int) -> str:
    """The temporary file :func:`save_config` writes ``path`` to from process ``pid``."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.{pid}.tmp")


def remove_interrupted_saves(path: str) -> list[str]:
    """Delete the temporary copies of ``path`` left by saves that never finished.

    :func:`save_config` writes ``.NAME.PID.tmp`` beside the file and renames
    it over the file; a process killed before the rename leaves it behind.
    Only files of that exact form from other processes are removed. Returns
    their paths.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) : -len(".tmp")]
        if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


def save_config(path: str, config: SbcConfig) -> None:
    """Write ``config`` to ``path`` atomically: temp file, fsync, rename; old one kept as .bak."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = _temporary_path(path, os.getpid())
    text = render_config(config)
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".bak")
            os.link(path, path + ".bak")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
