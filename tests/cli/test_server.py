"""sbc.cli.server: the line protocol, the service backend, commit and the socket path checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sbc.cli.commands import Session
from sbc.cli.server import (
    CliFactory,
    CliService,
    check_unix_path,
    unix_path,
    unsafe_endpoint,
)
from sbc.config import load_config, parse_config, render_config, validate
from sbc.errors import ConfigError
from sbc.labpki import Identity, issue, make_ca
from sbc.service import SbcService, ServiceBackend, TlsFiles
from tests.cli.test_commands import RUNNING, FakeBackend
from tests.transport.fakes import Reactor


def connect(factory: CliFactory) -> tuple[object, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class ProtocolTests(SynchronousTestCase):
    def test_prompt_output_prompt(self) -> None:
        protocol, transport = connect(CliFactory(FakeBackend()))
        self.assertEqual(transport.value(), b"sbc# ")
        transport.clear()
        protocol.dataReceived(b"configure\r\nsbc mysbc\n")  # type: ignore[attr-defined]
        self.assertEqual(transport.value(), b"sbc(config)# sbc(config-sbc)# ")
        transport.clear()
        protocol.dataReceived(b"bogus\n")  # type: ignore[attr-defined]
        self.assertTrue(transport.value().startswith(b"% "))
        self.assertTrue(transport.value().endswith(b"\nsbc(config-sbc)# "))

    def test_each_connection_has_its_own_session(self) -> None:
        factory = CliFactory(FakeBackend())
        first, t1 = connect(factory)
        _, t2 = connect(factory)
        first.dataReceived(b"configure\n")  # type: ignore[attr-defined]
        self.assertTrue(t1.value().endswith(b"sbc(config)# "))
        self.assertEqual(t2.value(), b"sbc# ")

    def test_tab_line_asks_for_completions_and_runs_nothing(self) -> None:
        backend = FakeBackend()
        protocol, transport = connect(CliFactory(backend))
        transport.clear()
        protocol.dataReceived(b"configure\n\tsh\n")  # type: ignore[attr-defined]
        self.assertEqual(transport.value(), b"sbc(config)# show\nsbc(config)# ")
        transport.clear()
        protocol.dataReceived(b"\tsbc mysbc\n")  # type: ignore[attr-defined]
        self.assertEqual(transport.value(), b"sbc(config)# ")  # nothing to offer, mode unchanged

    def test_exit_in_exec_closes(self) -> None:
        protocol, transport = connect(CliFactory(FakeBackend()))
        protocol.dataReceived(b"exit\n")  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)


class ServiceCommitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(RUNNING.replace("   security trusted-encrypted\n", ""))
        self.reactor = Reactor()
        self.service = SbcService.from_config(
            load_config(self.path), reactor=self.reactor, config_path=self.path
        )
        self.backend = ServiceBackend(self.service)

    def test_commit_saves_atomically_and_keeps_bak(self) -> None:
        with open(self.path) as f:
            before = f.read()
        candidate = parse_config(
            RUNNING.replace(
                "   signaling-port 5070\n", "   signaling-port 5070\n   attach\n"
            ).replace("   security trusted-encrypted\n", "")
        )
        old_router = self.service.router
        self.assertEqual(self.backend.commit(candidate), [])
        self.assertIs(self.service.config, candidate)
        self.assertIsNot(self.service.router, old_router)
        with open(self.path + ".bak") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(load_config(self.path), candidate)
        self.assertEqual([a.name for a in self.service.runtime.table.attached], ["core", "test"])

    def test_commit_of_dns_servers_switches_the_resolver(self) -> None:
        runtime = self.service.runtime
        self.assertEqual(runtime.dns_servers, ())
        first = runtime.resolver
        base = RUNNING.replace("   security trusted-encrypted\n", "")
        candidate = parse_config(base + "  dns-server 192.0.2.53\n  dns-server ::1 5353\n")
        self.assertEqual(self.backend.commit(candidate), [])
        self.assertEqual(runtime.dns_servers, (("192.0.2.53", 53), ("::1", 5353)))
        self.assertIsNot(runtime.resolver, first)
        second = runtime.resolver
        self.assertEqual(
            self.backend.commit(
                parse_config(
                    base + "  dns-server 192.0.2.53\n  dns-server ::1 5353\n  local-domain x.test\n"
                )
            ),
            [],
        )
        self.assertIs(runtime.resolver, second)  # unchanged list: the cache is kept

    def test_restart_after_a_kill_during_a_save(self) -> None:
        """The interrupted commit leaves the history and its temporary file is removed."""
        candidate = parse_config(
            RUNNING.replace("   signaling-port 5070\n", "   signaling-port 5071\n").replace(
                "   security trusted-encrypted\n", ""
            )
        )
        # what a kill between the record and the rename leaves behind
        record = self.service.commits.record(
            render_config(self.service.config), render_config(candidate), now=0.0
        )
        directory = os.path.dirname(self.path)
        name = os.path.basename(self.path)
        stale = os.path.join(directory, f".{name}.99999999.tmp")
        mine = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
        other = os.path.join(directory, f".{name}.notes.tmp")
        for path in (stale, mine, other):
            with open(path, "w") as f:
                f.write("sbc half-written")
        restarted = SbcService.from_config(
            load_config(self.path), reactor=Reactor(), config_path=self.path
        )
        self.assertIsNone(restarted.commits.get(record.id))
        self.assertFalse(os.path.exists(stale))
        self.assertTrue(os.path.exists(mine))  # this process's own save is never touched
        self.assertTrue(os.path.exists(other))  # not a name save_config writes

    def test_security_change_refused_and_nothing_changes(self) -> None:
        before = self.service.config
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted", "security trusted-unencrypted")
        )
        self.assertEqual(
            self.backend.commit(candidate),
            ["% Security policy cannot be changed while adjacency core is attached"],
        )
        self.assertIs(self.service.config, before)
        self.assertFalse(os.path.exists(self.path + ".bak"))

    def test_security_change_is_heard_before_any_other_problem(self) -> None:
        """behaviour.md §2: the candidate also has an invalid routing policy and an unknown
        first table; the operator hears the attached-security refusal first."""
        before = self.service.config
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted", "security trusted-unencrypted")
            + "  routing-policy no-such-policy\n"
        )
        self.assertRaises(ConfigError, validate, candidate, certificate_configured=True)
        self.assertEqual(
            self.backend.commit(candidate),
            ["% Security policy cannot be changed while adjacency core is attached"],
        )
        self.assertEqual(
            self.service.apply_config(candidate, confirm_within=0),
            ["% Security policy cannot be changed while adjacency core is attached"],
        )
        self.assertIs(self.service.config, before)

    def test_several_security_changes_refused_in_one_line(self) -> None:
        text = "sbc s\n sbe\n" + "".join(
            f"  adjacency sip {n}\n   signaling-address ipv4 127.0.0.1\n"
            f"   signaling-port {p}\n   attach\n"
            for n, p in (("a", 5080), ("b", 5081), ("c", 5082))
        )
        service = SbcService.from_config(parse_config(text), reactor=Reactor())
        candidate = parse_config(
            text.replace("attach\n", "attach\n   security trusted-unencrypted\n")
        )
        self.assertEqual(
            service.apply_config(candidate),
            ["% Security policy cannot be changed while adjacency a is attached (also: b, c)"],
        )

    def test_tls_without_certificate_refused(self) -> None:
        candidate = parse_config(
            RUNNING.replace(
                "   signaling-port 5070\n",
                "   signaling-port 5070\n   security trusted-encrypted\n",
            ).replace("   security trusted-encrypted\n   attach", "   attach", 1)
        )
        errors = self.backend.commit(candidate)
        self.assertEqual(len(errors), 1)
        self.assertIn("no certificate is configured", errors[0])

    def test_counters_calls_registrations_empty(self) -> None:
        self.service.runtime.counters.increment("core", "handshakes")
        self.assertEqual(self.backend.counters(), {"core": {"handshakes": 1}})
        self.assertEqual(list(self.backend.calls()), [])
        self.assertEqual(list(self.backend.registrations()), [])


class _ServiceCase(SynchronousTestCase):
    """A real service on a config file (adjacency ``test``), with a memory reactor."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(RUNNING.replace("   security trusted-encrypted\n", ""))
        self.service = self.start()

    def start(self) -> SbcService:
        return SbcService.from_config(
            load_config(self.path), reactor=Reactor(), config_path=self.path
        )

    def commit_port(self, port: int, user: str = "alice") -> list[str]:
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted\n", "").replace(
                "signaling-port 5070", f"signaling-port {port}"
            )
        )
        return self.service.apply_config(candidate, user=user, client="cli", comment="c")

    def port(self) -> int:
        adjacency = self.service.config.get_adjacency("test")
        assert adjacency is not None
        return adjacency.port


class ServiceRollbackTests(_ServiceCase):
    """Commit ids, rollback through the real service, history after a restart, log events."""

    def test_commits_get_ids_and_are_logged(self) -> None:
        with capturedLogs() as events:
            self.assertEqual(self.commit_port(5071), [])
        committed = [e for e in events if e.get("event") == "config.committed"]
        self.assertEqual(len(committed), 1)
        self.assertEqual(committed[0]["commit_id"], 1000000001)
        self.assertEqual(committed[0]["changes"], ["adjacency test changed: signaling-port"])
        self.assertEqual(
            formatEvent(committed[0]),
            "commit 1000000001 by alice (cli): adjacency test changed: signaling-port",
        )
        self.assertTrue(os.path.exists(self.path + ".commits/1000000001.commit"))

    def test_refused_commit_is_logged_and_not_recorded(self) -> None:
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted", "security trusted-unencrypted")
        )
        with capturedLogs() as events:
            errors = self.service.apply_config(candidate, user="bob", client="ssh")
        self.assertEqual(len(errors), 1)
        refused = [e for e in events if e.get("event") == "config.refused"]
        self.assertEqual(len(refused), 1)
        self.assertIn("Security policy cannot be changed", formatEvent(refused[0]))
        self.assertEqual(self.service.commits.records, ())

    def test_rollback_last_and_to_survive_a_restart(self) -> None:
        self.commit_port(5071)
        self.commit_port(5072)
        self.assertEqual(
            self.service.rollback(last=2, user="carol"),
            ["Configuration rolled back (rollback configuration last 2): commit 1000000003."],
        )
        self.assertEqual(self.port(), 5070)
        self.assertEqual(load_config(self.path), self.service.config)
        self.assertEqual(self.service.commits.records[-1].user, "carol")
        # Restart: the file and the history come back.
        self.service = self.start()
        self.assertEqual(self.port(), 5070)
        self.assertEqual([r.id for r in self.service.commits.records][-1], 1000000003)
        self.assertEqual(
            self.service.rollback(to=1000000002),
            [
                "Configuration rolled back (rollback configuration to 1000000002): "
                "commit 1000000004."
            ],
        )
        self.assertEqual(self.port(), 5072)
        self.assertEqual(
            self.service.rollback(to=1000000002),
            ["No configuration changes: the running configuration is already that one."],
        )

    def test_rollback_refused_changes_nothing(self) -> None:
        self.assertEqual(
            self.service.rollback(last=1), ["% cannot roll back 1 commit(s): only 0 in the history"]
        )
        self.assertEqual(
            self.service.rollback(to=7),
            ["% no commit 7 in the history (show configuration commit list)"],
        )
        # Detach core, make it trusted-unencrypted, attach it again; rolling
        # back all three would change the security of an attached adjacency.
        text = RUNNING.replace("   attach\n", "", 1)
        unattached = parse_config(text.replace("   security trusted-encrypted\n", ""))
        self.assertEqual(self.service.apply_config(unattached), [])
        with_tls = parse_config(
            text.replace("security trusted-encrypted", "security trusted-unencrypted")
        )
        self.assertEqual(self.service.apply_config(with_tls), [])
        attached = parse_config(
            RUNNING.replace("security trusted-encrypted", "security trusted-unencrypted")
        )
        self.assertEqual(self.service.apply_config(attached), [])
        before = self.service.config
        self.assertEqual(
            self.service.rollback(last=3),
            ["% Security policy cannot be changed while adjacency core is attached"],
        )
        self.assertIs(self.service.config, before)
        self.assertEqual(len(self.service.commits.records), 3)

    def test_unsaveable_commit_changes_nothing_not_even_the_history(self) -> None:
        """A full history and a candidate lowering commit-history; then the save fails."""
        import errno

        import sbc.controller

        self.service.commits.keep = 2
        self.commit_port(5071)
        self.commit_port(5072)
        kept = self.service.commits.records
        files = sorted(os.listdir(self.path + ".commits"))

        def full_disk(path: str, config: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(sbc.controller, "save_config", full_disk)
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted\n", "") + "  limits\n   commit-history 1\n"
        )
        before = self.service.config
        errors = self.service.apply_config(candidate)
        self.assertEqual(errors, [f"% cannot save {self.path}: No space left on device"])
        self.assertIs(self.service.config, before)
        self.assertEqual(self.service.commits.records, kept)
        self.assertEqual(sorted(os.listdir(self.path + ".commits")), files)
        self.assertEqual(self.service.commits.next_id, 1000000003)

    def test_unrecordable_commit_changes_nothing(self) -> None:
        from sbc.commits import CommitHistory

        def cannot_write(history: object, record: object) -> None:
            raise PermissionError(13, "Permission denied")

        self.patch(CommitHistory, "_write", cannot_write)
        with open(self.path) as f:
            text = f.read()
        errors = self.commit_port(5071)
        self.assertEqual(errors, ["% cannot record the commit: Permission denied"])
        self.assertEqual(self.service.commits.records, ())
        self.assertEqual(self.port(), 5070)
        with open(self.path) as f:
            self.assertEqual(f.read(), text)

    def test_commit_history_limit_applies_after_the_commit(self) -> None:
        for port in (5071, 5072, 5073):
            self.commit_port(port)
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted\n", "").replace("5070", "5074")
            + "  limits\n   commit-history 2\n"
        )
        self.assertEqual(self.service.apply_config(candidate), [])
        self.assertEqual([r.id for r in self.service.commits.records], [1000000003, 1000000004])
        self.assertEqual(len(os.listdir(self.path + ".commits")), 2)

    def test_fail_stops_the_reactor_once(self) -> None:
        reactor = self.service.reactor
        hooks = len(reactor.whenRunningHooks)
        with capturedLogs() as events:
            self.service.fail("first problem")
            self.service.fail("second problem")
        self.assertEqual(self.service.fatal_error, "first problem")
        self.assertEqual([formatEvent(e) for e in events], ["first problem", "second problem"])
        self.assertEqual(len(reactor.whenRunningHooks), hooks + 1)


class CommitConfirmedTests(_ServiceCase):
    """``commit confirmed``: rolled back by itself unless a commit confirms it in time."""

    def reactor(self) -> Reactor:
        reactor = self.service.reactor
        assert isinstance(reactor, Reactor)
        return reactor

    def trial(self, port: int, seconds: int = 120) -> list[str]:
        candidate = parse_config(
            RUNNING.replace("security trusted-encrypted\n", "").replace(
                "signaling-port 5070", f"signaling-port {port}"
            )
        )
        return self.service.apply_config(
            candidate, user="alice", client="cli", confirm_within=seconds
        )

    def test_unconfirmed_commit_is_rolled_back(self) -> None:
        self.assertEqual(self.trial(5071), [])
        trial_id = self.service.commits.records[-1].id
        self.reactor().advance(119)
        self.assertEqual(self.port(), 5071)
        with capturedLogs() as events:
            self.reactor().advance(1)
        self.assertEqual(self.port(), 5070)
        self.assertEqual(load_config(self.path), self.service.config)  # saved as well
        rollback = self.service.commits.records[-1]
        self.assertEqual(rollback.id, trial_id + 1)
        self.assertEqual(
            (rollback.user, rollback.client, rollback.comment),
            ("sbc", "commit confirmed", f"commit {trial_id} not confirmed within 120 s"),
        )
        [expired] = [e for e in events if e.get("event") == "config.confirm-expired"]
        self.assertEqual(
            formatEvent(expired),
            f"commit {trial_id} not confirmed within 120 s: rolled back (commit {trial_id + 1})",
        )
        self.assertIsNone(self.service.pending_confirmation)

    def test_confirmed_commit_stays(self) -> None:
        self.trial(5071)
        trial_id = self.service.commits.records[-1].id
        self.reactor().advance(60)
        pending = self.service.pending_confirmation
        assert pending is not None
        self.assertEqual((pending.commit_id, pending.seconds_left(60.0)), (trial_id, 60))
        self.assertEqual(self.service.confirm_commit(user="bob"), [f"Commit {trial_id} confirmed."])
        self.assertEqual(self.service.confirm_commit(), ["% no commit is waiting for confirmation"])
        self.reactor().advance(600)
        self.assertEqual(self.port(), 5071)
        self.assertEqual(self.service.commits.records[-1].id, trial_id)
        self.assertEqual(self.reactor().getDelayedCalls(), [])

    def test_a_later_commit_confirms_and_a_second_trial_waits(self) -> None:
        self.trial(5071)
        trial_id = self.service.commits.records[-1].id
        errors = self.trial(5072)
        self.assertEqual(
            errors, [f"% commit {trial_id} is waiting for confirmation: 'commit' confirms it first"]
        )
        self.assertEqual(self.trial(5072, seconds=10), [
            "% commit confirmed takes 30 to 65535 seconds, not 10"
        ])  # fmt: skip
        self.assertEqual(self.commit_port(5073), [])
        self.assertIsNone(self.service.pending_confirmation)
        self.reactor().advance(600)
        self.assertEqual(self.port(), 5073)

    def test_trial_that_could_not_be_rolled_back_is_refused(self) -> None:
        """Attaching an adjacency with a new security: the way back would be refused."""
        text = RUNNING.replace("security trusted-encrypted\n", "").replace(
            "   signaling-port 5070\n",
            "   signaling-port 5070\n   security trusted-unencrypted\n   attach\n",
        )
        before = self.service.config
        errors = self.service.apply_config(parse_config(text), confirm_within=60)
        self.assertEqual(
            errors,
            [
                "% commit confirmed could not roll back: it attaches adjacency test with a new "
                "security, which cannot be undone while it is attached; commit without 'confirmed'"
            ],
        )
        self.assertIs(self.service.config, before)
        self.assertEqual(self.service.commits.records, ())
        self.assertEqual(
            self.service.apply_config(parse_config(text)), []
        )  # a plain commit is fine

    def test_trial_through_the_cli_session(self) -> None:
        session = Session(ServiceBackend(self.service), user="alice", client="cli")
        for line in ("configure", "sbc mysbc", "sbe", "adjacency sip test", "signaling-port 5075"):
            self.assertTrue(session.execute(line)[1], line)
        text, ok = session.execute("commit confirmed 45")
        trial_id = self.service.commits.records[-1].id
        self.assertEqual(
            (text, ok),
            (
                f"Commit {trial_id} is rolled back in 45 seconds unless confirmed: "
                "'commit' confirms it.",
                True,
            ),
        )
        self.reactor().advance(44)
        self.assertEqual(session.execute("commit"), (f"Commit {trial_id} confirmed.", True))
        self.reactor().advance(10)
        self.assertEqual(self.port(), 5075)

    def test_stop_while_waiting_keeps_the_commit(self) -> None:
        self.service.startService()
        self.trial(5071)
        with capturedLogs() as events:
            self.service.stopService()
        self.assertEqual([e.get("event") for e in events if "event" in e][:1], [
            "config.confirm-abandoned"
        ])  # fmt: skip
        self.assertEqual(self.reactor().getDelayedCalls(), [])
        self.assertEqual(load_config(self.path).get_adjacency("test").port, 5071)  # type: ignore[union-attr]


class UnixPathTests(SynchronousTestCase):
    def test_unix_path(self) -> None:
        self.assertEqual(unix_path("unix:/run/sbc.cli:mode=600"), "/run/sbc.cli")
        self.assertEqual(unix_path("unix:address=/a\\:b:mode=600"), "/a:b")
        self.assertIsNone(unix_path("tcp:9999"))

    def test_default_mode_600(self) -> None:
        service = SbcService.from_config(parse_config("sbc s\n sbe\n"), reactor=Reactor())
        self.assertEqual(
            CliService(service, "unix:/x/sbc.cli").description, "unix:/x/sbc.cli:mode=600"
        )

    def test_regular_file_refused_stale_socket_removed(self) -> None:
        directory = tempfile.mkdtemp(prefix="sbc-cli-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "sbc.cli")
        self.assertIsNone(check_unix_path(path))
        with open(path, "w") as f:
            f.write("not a socket")
        self.assertEqual(check_unix_path(path), f"{path} exists and is not a socket")
        os.unlink(path)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        self.assertIsNone(check_unix_path(path))
        self.assertFalse(os.path.exists(path))
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(path)
        live.listen(1)
        self.addCleanup(live.close)
        self.assertIn("is in use", check_unix_path(path) or "")
        self.assertTrue(os.path.exists(path))


class ThreadedReactor(Reactor):
    """The fake reactor plus ``callFromThread`` (queued; run with :meth:`run_queued`)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.queued.append((f, args))

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for f, args in queued:
            f(*args)


class CryptoReloadTests(SynchronousTestCase):
    """``crypto reload`` / SIGHUP on a service built from a per-test lab PKI."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.ca = make_ca()
        self.cert, self.key = issue(self.ca, "sbc.lab.test", sip_uris=["sip:sbc.lab.test"]).write(
            self.directory, "sbc"
        )
        ca_path, _ = self.ca.write(self.directory, "ca")
        self.reactor = ThreadedReactor()
        self.files = TlsFiles(self.cert, self.key, ca_path)
        self.service = SbcService.from_config(
            parse_config(RUNNING), reactor=self.reactor, tls=self.files
        )
        self.backend = ServiceBackend(self.service)
        self.before = self.service.runtime.tls
        assert self.before is not None

    def replace_leaf(self, common_name: str) -> Identity:
        leaf = issue(self.ca, common_name, sip_uris=[f"sip:{common_name}"])
        leaf.write(self.directory, "sbc")
        return leaf

    def test_good_reload_swaps_the_identity_for_new_handshakes(self) -> None:
        leaf = self.replace_leaf("new.lab.test")
        with capturedLogs() as events:
            lines = self.backend.reload_tls()
        self.assertEqual(lines, ["TLS identity reloaded: CN=new.lab.test (sip:new.lab.test)"])
        identity = self.service.runtime.tls
        assert identity is not None
        self.assertIsNot(identity, self.before)
        self.assertIs(self.service.tls, identity)
        self.assertEqual(identity.certificate, leaf.certificate)
        self.assertEqual(
            [formatEvent(e) for e in events if "reloaded" in e.get("log_format", "")],
            ["TLS identity reloaded: CN=new.lab.test (sip:new.lab.test)"],
        )

    def test_key_that_does_not_match_changes_nothing(self) -> None:
        other = issue(self.ca, "other.lab.test")
        with open(self.key, "wb") as f:
            f.write(other.key_pem)
        errors = self.service.reload_tls()
        self.assertEqual(
            errors,
            [
                f"% TLS identity not reloaded: {self.key}: private key does not match "
                f"the certificate {self.cert}"
            ],
        )
        self.assertIs(self.service.runtime.tls, self.before)
        self.assertIs(self.service.tls, self.before)
        self.assertEqual(self.backend.reload_tls(), errors)

    def test_missing_file_changes_nothing(self) -> None:
        os.unlink(self.cert)
        errors = self.service.reload_tls()
        self.assertEqual(len(errors), 1)
        self.assertTrue(
            errors[0].startswith(f"% TLS identity not reloaded: {self.cert}: cannot read"),
            errors[0],
        )
        self.assertIs(self.service.runtime.tls, self.before)

    def test_without_tls(self) -> None:
        service = SbcService.from_config(
            parse_config(RUNNING.replace("   security trusted-encrypted\n", "")),
            reactor=Reactor(),
        )
        self.assertEqual(service.reload_tls(), ["% no TLS identity is configured"])
        self.assertEqual(ServiceBackend(service).reload_tls(), ["% no TLS identity is configured"])

    def test_sighup_handler_only_when_asked(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_sighup_reloads_through_the_reactor(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        service = SbcService.from_config(
            parse_config(RUNNING), reactor=self.reactor, tls=self.files, reload_on_sighup=True
        )
        service.startService()
        handler = signal.getsignal(signal.SIGHUP)
        self.assertNotEqual(handler, before)
        assert callable(handler)
        leaf = self.replace_leaf("hup.lab.test")
        handler(signal.SIGHUP, None)
        self.assertIsNot(service.runtime.tls, None)
        self.assertNotEqual(service.runtime.tls.certificate, leaf.certificate)  # type: ignore[union-attr]
        with capturedLogs() as events:
            self.reactor.run_queued()
        identity = service.runtime.tls
        assert identity is not None
        self.assertEqual(identity.certificate, leaf.certificate)
        self.assertIn(
            "TLS identity reloaded: CN=hup.lab.test (sip:hup.lab.test)",
            [formatEvent(e) for e in events],
        )
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class UnsafeEndpointTests(SynchronousTestCase):
    """The CLI has no login: only endpoints other users and hosts cannot reach are served."""

    def test_safe(self) -> None:
        for description in (
            "unix:/run/sbc/sbc.cli:mode=600",
            "unix:/run/sbc/sbc.cli:mode=660",
            "tcp:5000:interface=127.0.0.1",
            "tcp6:5000:interface=\\:\\:1",
        ):
            self.assertIsNone(unsafe_endpoint(description), description)

    def test_unsafe(self) -> None:
        for description, why in (
            ("unix:/run/sbc.cli:mode=666", "lets every local user connect"),
            ("unix:/run/sbc.cli:mode=rw", "not an octal file mode"),
            ("tcp:5000", "listens on every address"),
            ("tcp:5000:interface=0.0.0.0", "interface=0.0.0.0 is not loopback"),
            ("tcp:5000:interface=192.0.2.1", "is not loopback"),
        ):
            problem = unsafe_endpoint(description)
            assert problem is not None, description
            self.assertIn(why, problem)

    def test_preflight_refuses_before_start(self) -> None:
        service = SbcService.from_config(
            parse_config("sbc s\n sbe\n"), reactor=Reactor(), cli_endpoint="tcp:5000"
        )
        [problem] = service.preflight()
        self.assertTrue(
            problem.startswith("refusing the management CLI endpoint tcp:5000: the CLI has no")
        )


class IdleTimeoutTests(SynchronousTestCase):
    """cli-idle-timeout on the UNIX socket CLI: read from the running config on every line."""

    def connect(self, backend: FakeBackend) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        protocol = CliFactory(backend, clock).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_closed_after_the_timeout_without_input(self) -> None:
        protocol, transport, clock = self.connect(FakeBackend())
        clock.advance(599)
        protocol.dataReceived(b"configure\n")
        clock.advance(599)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(
            transport.value().endswith(
                b"\n% session idle for 600 seconds: closed (cli-idle-timeout)\n"
            )
        )
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_zero_never_closes(self) -> None:
        backend = FakeBackend(RUNNING + "  limits\n   cli-idle-timeout 0\n")
        _, transport, clock = self.connect(backend)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(100000)
        self.assertFalse(transport.disconnecting)


USERS_CONFIG = """\
sbc mysbc
 sbe
  local-domain lab.test
  user-database users.htdigest
  adjacency sip phones
   signaling-address ipv4 127.0.0.1
   signaling-port 5070
   authentication digest
   attach
"""


class UserDatabaseTests(SynchronousTestCase):
    """``user-database``: loaded at start, ``reload user-database``, SIGHUP, commits."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config_path = os.path.join(self.directory, "sbc.conf")
        self.users_path = os.path.join(self.directory, "users.htdigest")
        with open(self.config_path, "w") as f:
            f.write(USERS_CONFIG)
        self.write_users("alice:lab.test:" + "0" * 32, "bob:lab.test:" + "1" * 32)
        self.reactor = ThreadedReactor()

    def write_users(self, *lines: str) -> None:
        with open(self.users_path, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def service(self, **kwargs: Any) -> SbcService:
        return SbcService.from_config(
            load_config(self.config_path),
            reactor=self.reactor,
            config_path=self.config_path,
            **kwargs,
        )

    def test_loaded_at_start_beside_the_config_file(self) -> None:
        service = self.service()
        self.assertEqual(len(service.users), 2)
        self.assertEqual(service.describe_user_database(), "users.htdigest: 2 users in 1 realm")

    def test_a_bad_file_stops_the_start_with_file_and_line(self) -> None:
        self.write_users("alice:lab.test:" + "0" * 32, "bob:lab.test:nothex")
        error = self.assertRaises(ConfigError, self.service)
        self.assertTrue(str(error).startswith(f"{self.users_path}:2: "), str(error))

    def test_reload_uses_the_new_file(self) -> None:
        service = self.service()
        self.write_users("carol:lab.test:" + "2" * 32)
        with capturedLogs() as events:
            self.assertEqual(
                ServiceBackend(service).reload_users(),
                ["user database reloaded: users.htdigest: 1 user in 1 realm"],
            )
        self.assertIn(("carol", "lab.test"), service.users)
        self.assertIn("auth.users-reloaded", [e.get("event") for e in events])

    def test_a_bad_reload_changes_nothing_and_says_why(self) -> None:
        service = self.service()
        before = service.users
        self.write_users("carol:lab.test")
        with capturedLogs() as events:
            errors = service.reload_user_database()
        [line] = errors
        self.assertTrue(line.startswith(f"% user database not reloaded: {self.users_path}:1: "))
        self.assertNotIn("\n", line)
        self.assertIs(service.users, before)
        self.assertIn("auth.users-reload-failed", [e.get("event") for e in events])

    def test_sighup_reloads_the_user_database(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        service = self.service(reload_on_sighup=True)
        service.startService()
        self.addCleanup(service.stopService)
        self.write_users("dave:lab.test:" + "3" * 32)
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        self.reactor.run_queued()
        self.assertIn(("dave", "lab.test"), service.users)

    def test_commit_naming_a_bad_file_is_refused_whole(self) -> None:
        service = self.service()
        with open(os.path.join(self.directory, "broken"), "w") as f:
            f.write("x\n")
        candidate = parse_config(USERS_CONFIG.replace("users.htdigest", "broken"))
        [line] = service.apply_config(candidate)
        self.assertTrue(line.startswith("% user-database not usable: "), line)
        self.assertIn("broken:1:", line)
        self.assertEqual(service.config.user_database, "users.htdigest")

    def test_commit_changes_the_nonce_lifetime(self) -> None:
        service = self.service()
        candidate = parse_config(USERS_CONFIG + "  limits\n   nonce-lifetime 60\n")
        self.assertEqual(service.apply_config(candidate), [])
        self.assertEqual(service.authenticator.nonce_lifetime, 60.0)


FLOOD_CONFIG = """\
sbc mysbc
 sbe
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   transport udp
   remote-address ipv4 10.0.0.0/8
   attach
  blocked-user-agent friendly-scanner
  limits
   source-rate-limit 5 10
   source-ban-time 120
"""

OPTIONS_FROM_SCANNER = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.6.6.6:5060;branch=z9hG4bK-scan\r\n"
    b"From: <sip:100@10.6.6.6>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\n"
    b"Call-ID: scan-1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: sipvicious\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class BlockedSourceServiceTests(SynchronousTestCase):
    """show/clear blocked sources through ServiceBackend on a running (in-memory) service."""

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.reactor.advance(1800000000.0)
        self.service = SbcService.from_config(parse_config(FLOOD_CONFIG), reactor=self.reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.session = Session(ServiceBackend(self.service))

    def udp(self, data: bytes, source: tuple[str, int]) -> None:
        self.reactor.udp_protocol(5060, "127.0.0.1").datagramReceived(data, source)

    def test_show_and_clear(self) -> None:
        for _ in range(10):
            self.udp(OPTIONS_FROM_SCANNER, ("10.6.6.6", 5060))
        self.reactor.advance(30)
        text, ok = self.session.execute("show services sbc mysbc sbe blocked-sources")
        self.assertTrue(ok)
        row = text.split("\n")[2].split()
        self.assertEqual(row[:3], ["10.6.6.6", "access", "rate-limit"])
        self.assertEqual(row[-2:], ["90s", "5"])
        text, ok = self.session.execute("clear services sbc mysbc sbe blocked-source 10.6.6.6")
        self.assertEqual(
            (text, ok), ("10.6.6.6 released (banned for rate-limit on access; 5 dropped).", True)
        )
        text, ok = self.session.execute("clear services sbc mysbc sbe blocked-source 10.6.6.6")
        self.assertEqual(
            (text, ok),
            ("% 10.6.6.6 is not blocked (show services sbc NAME sbe blocked-sources)", False),
        )
        self.assertEqual(
            self.session.execute("show services sbc mysbc sbe blocked-sources"),
            ("No blocked sources.", True),
        )

    def test_digest_failures_reach_the_guard(self) -> None:
        """SbcCore.on_auth_failure is the guard's note_auth_failure (auth-failure-limit 30 60)."""
        now = self.reactor.seconds()
        assert self.service.core.on_auth_failure is not None
        for _ in range(31):
            self.service.core.on_auth_failure("10.6.6.8", "access", now)
        [ban] = self.service.guard.bans(now)
        self.assertEqual(
            (ban.address, ban.adjacency, ban.reason), ("10.6.6.8", "access", "auth-failures")
        )

    def test_committed_user_agent_list_applies_at_once(self) -> None:
        self.udp(OPTIONS_FROM_SCANNER, ("10.6.6.6", 5060))
        self.assertEqual(self.service.guard.bans(self.reactor.seconds()), [])
        lines = [
            "configure",
            "sbc mysbc",
            "sbe",
            "blocked-user-agent SIPVicious",
            "commit",
            "end",
        ]
        for line in lines:
            self.assertTrue(self.session.execute(line)[1], line)
        self.udp(OPTIONS_FROM_SCANNER, ("10.6.6.7", 5060))
        [ban] = self.service.guard.bans(self.reactor.seconds())
        self.assertEqual((ban.address, ban.reason), ("10.6.6.7", "user-agent"))
        self.assertEqual(
            self.session.execute("clear services sbc mysbc sbe blocked-source all"),
            ("1 blocked source(s) released.", True),
        )
