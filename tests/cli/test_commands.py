"""sbc.cli.commands: modes, prompts, candidate/commit/abort and show output (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.trial.unittest import SynchronousTestCase

from sbc.cli.commands import (
    BlockedSourceInfo,
    CallInfo,
    RegistrationInfo,
    Session,
    WorkerInfo,
    config_diff,
    describe_adjacency,
)
from sbc.commits import CommitHistory, CommitRecord
from sbc.config import (
    SECURITY_CHANGE_MESSAGE,
    AdjacencyConfig,
    SbcConfig,
    parse_config,
    render_config,
    security_changes_while_attached,
    validate,
)
from sbc.errors import ConfigError

RUNNING = """\
sbc mysbc
 sbe
  adjacency sip core
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   attach
  adjacency sip test
   signaling-address ipv4 10.1.0.2
   signaling-port 5070
"""


class FakeBackend:
    """Commits with the real checks; shows canned data."""

    def __init__(self, text: str = RUNNING) -> None:
        self.config = parse_config(text)
        self.commits: list[SbcConfig] = []
        self.counter_values: dict[str, dict[str, int]] = {}
        self.call_list: list[CallInfo] = []
        self.bindings: list[RegistrationInfo] = []
        self.reload_result = ["TLS identity reloaded: CN=sbc.lab.test (sip:sbc.lab.test)"]
        self.reloads = 0
        self.history = CommitHistory(None)
        self.clock = 1800000000.0
        self.waiting: tuple[int, int] | None = None
        self.confirm_requests: list[int | None] = []
        self.blocked: list[BlockedSourceInfo] = []
        self.released: list[str | None] = []

    def running_config(self) -> SbcConfig:
        return self.config

    def commit(
        self,
        candidate: SbcConfig,
        *,
        user: str = "",
        client: str = "",
        comment: str = "",
        confirm_within: int | None = None,
    ) -> list[str]:
        names = security_changes_while_attached(self.config, candidate)
        if names:  # first, as SbcService.apply_config does (behaviour.md §2)
            return [SECURITY_CHANGE_MESSAGE.format(name=n) for n in names]
        if confirm_within is not None and self.waiting is not None:
            return [f"% commit {self.waiting[0]} is waiting for confirmation"]
        try:
            validate(candidate, certificate_configured=True)
        except ConfigError as error:
            return [f"% {error.message}"]
        self.clock += 60
        self.history.record(
            render_config(self.config),
            render_config(candidate),
            now=self.clock,
            user=user,
            client=client,
            comment=comment,
        )
        self.config = candidate
        self.commits.append(candidate)
        self.confirm_requests.append(confirm_within)
        self.waiting = None
        if confirm_within is not None:
            self.waiting = (self.history.records[-1].id, confirm_within)
        return []

    def pending_confirmation(self) -> tuple[int, int] | None:
        return self.waiting

    def confirm_commit(self, *, user: str = "", client: str = "") -> list[str]:
        if self.waiting is None:
            return ["% no commit is waiting for confirmation"]
        commit_id, self.waiting = self.waiting[0], None
        return [f"Commit {commit_id} confirmed."]

    def commit_history(self) -> Sequence[CommitRecord]:
        return self.history.records

    def rollback(
        self, *, last: int | None = None, to: int | None = None, user: str = "", client: str = ""
    ) -> list[str]:
        record = self.history.last(last) if last is not None else self.history.get(to or 0)
        if record is None:
            return ["% no such commit"]
        text = record.before if last is not None else record.after
        errors = self.commit(parse_config(text), user=user, client=client, comment="rollback")
        return errors or [f"rolled back to {record.id}"]

    def counters(self) -> Mapping[str, Mapping[str, int]]:
        return self.counter_values

    def calls(self) -> Sequence[CallInfo]:
        return self.call_list

    def registrations(self) -> Sequence[RegistrationInfo]:
        return self.bindings

    def reload_tls(self) -> list[str]:
        self.reloads += 1
        return self.reload_result

    users_result = ["user database reloaded: users.htdigest, 2 users in 1 realm"]
    user_reloads = 0

    def reload_users(self) -> list[str]:
        self.user_reloads += 1
        return self.users_result

    def blocked_sources(self) -> Sequence[BlockedSourceInfo]:
        return list(self.blocked)

    def release_source(self, address: str | None) -> list[str]:
        self.released.append(address)
        if address is None:
            count, self.blocked = len(self.blocked), []
            return [f"{count} blocked source(s) released."]
        kept = [b for b in self.blocked if b.address != address]
        if len(kept) == len(self.blocked):
            return [f"% {address} is not blocked"]
        self.blocked = kept
        return [f"{address} released."]


def run(session: Session, *lines: str) -> list[tuple[str, str, bool]]:
    """(prompt before, output, ok) of each line."""
    out = []
    for line in lines:
        prompt = session.prompt
        text, ok = session.execute(line)
        out.append((prompt, text, ok))
    return out


class SeedStepsTests(SynchronousTestCase):
    """The seed's 'Configuring Encrypted SIP Signaling' steps 1-8, verbatim."""

    def test_steps_1_to_8(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        steps = run(
            session,
            "configure",
            "sbc mysbc",
            "sbe",
            "adjacency sip test",
            "security trusted-encrypted",
            "commit",
            "exit",
        )
        prompts = [p for p, _, _ in steps]
        self.assertEqual(
            prompts,
            [
                "sbc#",
                "sbc(config)#",
                "sbc(config-sbc)#",
                "sbc(config-sbc-sbe)#",
                "sbc(config-sbc-sbe-adj-sip)#",
                "sbc(config-sbc-sbe-adj-sip)#",
                "sbc(config-sbc-sbe-adj-sip)#",
            ],
        )
        self.assertTrue(all(ok for _, _, ok in steps), steps)
        self.assertEqual(session.prompt, "sbc(config-sbc-sbe)#")
        self.assertEqual(len(backend.commits), 1)
        self.assertEqual(
            str(backend.config.adjacency("test").security_inbound), "trusted-encrypted"
        )
        for _ in range(3):
            session.execute("exit")
        self.assertEqual(session.prompt, "sbc#")
        text, ok = session.execute("show services sbc mysbc sbe adjacencies")
        self.assertTrue(ok)
        self.assertIn(
            "Adjacency: core (SIP)\n"
            "  Status: Attached\n"
            "  Signaling address: 127.0.0.1:5061\n"
            "  Transport: TLS\n"
            "  Security: Trusted-Encrypted\n",
            text,
        )
        self.assertIn(
            "Adjacency: test (SIP)\n"
            "  Status: Detached\n"
            "  Signaling address: 10.1.0.2:5070\n"
            "  Transport: TLS\n"
            "  Security: Trusted-Encrypted\n",
            text,
        )

    def test_steps_on_a_new_adjacency(self) -> None:
        """Steps 4-6 on an adjacency that does not exist yet: it is created detached."""
        backend = FakeBackend()
        session = Session(backend)
        steps = run(
            session, "configure", "sbc mysbc", "sbe", "adjacency sip fresh",
            "security trusted-encrypted", "commit", "end",
            "show services sbc mysbc sbe adjacencies fresh",
        )  # fmt: skip
        self.assertTrue(all(ok for _, _, ok in steps), steps)
        self.assertEqual(
            steps[-1][1].split("\n")[:5],
            [
                "Adjacency: fresh (SIP)",
                "  Status: Detached",
                "  Signaling address: (not set), port 5061",
                "  Transport: TLS",
                "  Security: Trusted-Encrypted",
            ],
        )
        # Attaching it needs an address: refused in one line, nothing changes.
        steps = run(session, "configure", "sbc mysbc", "sbe", "adjacency sip fresh", "attach")
        text, ok = session.execute("commit")
        self.assertEqual(
            (text, ok),
            ("% adjacency 'fresh' cannot be attached without a signaling-address", False),
        )
        self.assertEqual(len(backend.commits), 1)

    def test_show_without_service_name_as_in_the_seed_example(self) -> None:
        text, ok = Session(FakeBackend()).execute("show services sbc sbe adjacencies")
        self.assertTrue(ok)
        self.assertIn("Signaling address: 10.1.0.2:5070", text)

    def test_show_works_from_config_mode_and_with_do(self) -> None:
        session = Session(FakeBackend())
        run(session, "configure", "sbc mysbc", "sbe")
        for line in ("show services sbc mysbc sbe adjacencies", "do show running-config"):
            _, ok = session.execute(line)
            self.assertTrue(ok, line)


class ModeTests(SynchronousTestCase):
    def test_routing_submodes_and_end(self) -> None:
        session = Session(FakeBackend())
        steps = run(
            session,
            "configure",
            "sbc mysbc",
            "sbe",
            "call-policy-set 1",
            "rtg-src-adjacency-table main",
            "entry 1",
            "end",
        )
        self.assertEqual(
            [p for p, _, _ in steps][3:],
            [
                "sbc(config-sbc-sbe)#",
                "sbc(config-sbc-sbe-rtgpolicy)#",
                "sbc(config-sbc-sbe-rtgpolicy-rtgtable)#",
                "sbc(config-sbc-sbe-rtgpolicy-rtgtable-entry)#",
            ],
        )
        self.assertEqual(session.prompt, "sbc#")
        self.assertEqual(steps[-1][1], "Uncommitted changes discarded.")

    def test_exit_walks_up_and_closes_in_exec(self) -> None:
        session = Session(FakeBackend())
        run(session, "configure", "sbc mysbc", "sbe", "adjacency sip core")
        prompts = []
        for _ in range(4):
            session.execute("exit")
            prompts.append(session.prompt)
        self.assertEqual(
            prompts, ["sbc(config-sbc-sbe)#", "sbc(config-sbc)#", "sbc(config)#", "sbc#"]
        )
        self.assertFalse(session.closed)
        session.execute("exit")
        self.assertTrue(session.closed)

    def test_unknown_command_is_one_percent_line(self) -> None:
        session = Session(FakeBackend())
        text, ok = session.execute("frobnicate")
        self.assertFalse(ok)
        self.assertTrue(text.startswith("% "))
        self.assertNotIn("\n", text)
        run(session, "configure", "sbc mysbc", "sbe", "adjacency sip core")
        text, ok = session.execute("signaling-port 99999")
        self.assertFalse(ok)
        self.assertEqual(text, "% bad port '99999': expected a number from 1 to 65535")

    def test_question_mark_lists_mode_commands(self) -> None:
        session = Session(FakeBackend())
        text, _ = session.execute("?")
        self.assertIn("configure", text)
        self.assertIn("show", text)
        run(session, "configure", "sbc mysbc", "sbe", "adjacency sip core")
        text, ok = session.execute("?")
        self.assertTrue(ok)
        for word in ("security", "signaling-address", "attach", "commit", "abort", "exit", "end"):
            self.assertIn(word, text)
        self.assertNotIn("call-policy-set", text)
        text, _ = session.execute("security ?")
        self.assertIn("security [inbound|outbound]", text)
        self.assertNotIn("attach", text)
        text, _ = session.execute("show ?")
        self.assertIn("show services sbc NAME sbe adjacencies [ADJ] [detail]", text)


class CommitTests(SynchronousTestCase):
    def test_security_change_on_attached_adjacency_refused(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        run(session, "configure", "sbc mysbc", "sbe", "adjacency sip core", "security untrusted")
        text, ok = session.execute("commit")
        self.assertFalse(ok)
        self.assertEqual(
            text, "% Security policy cannot be changed while adjacency core is attached"
        )
        self.assertEqual(backend.commits, [])
        self.assertEqual(session.prompt, "sbc(config-sbc-sbe-adj-sip)#")

    def test_failed_commit_says_why_in_one_line(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        run(session, "configure", "sbc mysbc", "sbe", "adjacency sip new", "attach")
        text, ok = session.execute("commit")
        self.assertFalse(ok)
        self.assertEqual(text, "% adjacency 'new' cannot be attached without a signaling-address")
        run(session, "exit", "active-call-policy-set 7")
        session.execute("no adjacency sip new")
        text, ok = session.execute("commit")
        self.assertFalse(ok)
        self.assertEqual(text, "% active-call-policy-set 7: no call-policy-set 7 is configured")
        self.assertEqual(backend.commits, [])

    def test_abort_drops_candidate(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        run(session, "configure", "sbc mysbc", "sbe", "local-domain example.com")
        text, _ = session.execute("show configuration diff")
        self.assertEqual(text, "  sbc mysbc\n   sbe\n+   local-domain example.com")
        _, ok = session.execute("abort")
        self.assertTrue(ok)
        self.assertEqual(session.prompt, "sbc#")
        self.assertEqual(backend.config.local_domains, ())
        run(session, "configure")
        text, _ = session.execute("show configuration diff")
        self.assertEqual(text, "! no uncommitted changes")

    def test_commit_applies_and_show_running_config(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        run(session, "configure", "sbc mysbc", "sbe", "adjacency sip test", "attach")
        text, ok = session.execute("show configuration")
        self.assertTrue(ok)
        self.assertIn(" attach", text.split("adjacency sip test")[1])
        self.assertEqual(session.execute("commit"), ("", True))
        self.assertTrue(backend.config.adjacency("test").attached)
        self.assertEqual(session.execute("commit"), ("No configuration changes to commit.", True))
        session.execute("end")
        text, _ = session.execute("show running-config")
        self.assertTrue(text.startswith("sbc mysbc\n sbe\n  adjacency sip core"))

    def test_commit_outside_config_mode(self) -> None:
        text, ok = Session(FakeBackend()).execute("commit")
        self.assertFalse(ok)
        self.assertTrue(text.startswith("% "))


class ShowTests(SynchronousTestCase):
    def test_mixed_security_line_and_detail_counters(self) -> None:
        backend = FakeBackend(
            "sbc s\n sbe\n  adjacency sip a\n   signaling-address ipv4 127.0.0.1\n"
            "   security inbound trusted-unencrypted\n   security outbound untrusted\n"
        )
        backend.counter_values = {"a": {"handshakes": 3, "drops:no-adjacency": 12}}
        text, ok = Session(backend).execute("show services sbc s sbe adjacencies a detail")
        self.assertTrue(ok)
        self.assertIn("  Security: inbound Trusted-Unencrypted, outbound Untrusted\n", text)
        self.assertIn("  Counters:\n    handshakes          3\n    drops:no-adjacency  12", text)

    def test_wrong_service_and_unknown_adjacency(self) -> None:
        session = Session(FakeBackend())
        text, ok = session.execute("show services sbc other sbe adjacencies")
        self.assertEqual((text, ok), ("% no sbc service 'other' (the service is 'mysbc')", False))
        text, ok = session.execute("show services sbc mysbc sbe adjacencies nope")
        self.assertEqual((text, ok), ("% no adjacency 'nope'", False))

    def test_workers(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        text, ok = session.execute("show services sbc mysbc sbe workers")
        self.assertTrue(ok)
        self.assertIn("One process, no worker processes", text)
        backend.workers = lambda: [  # type: ignore[attr-defined]
            WorkerInfo(1, 4321, "ready", 75, 0, 3),
            WorkerInfo(2, None, "exited", 0, 2, 0),
        ]
        text, _ = session.execute("show services sbc mysbc sbe workers")
        self.assertEqual(
            text.splitlines(),
            [
                "Worker  PID   State   Uptime  Exits  Calls",
                "------  ----  ------  ------  -----  -----",
                "1       4321  ready   75s     0      3",
                "2       -     exited  -       2      0",
                "2 worker(s)",
            ],
        )

    def test_calls_registrations_statistics(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        self.assertEqual(
            session.execute("show services sbc mysbc sbe calls"), ("No active calls.", True)
        )
        backend.call_list = [CallInfo(1, "INVITE", "confirmed", "test", "core", True, 12.5)]
        text, _ = session.execute("show services sbc mysbc sbe calls")
        lines = text.split("\n")
        self.assertEqual(
            lines[0].split(),
            ["ID", "Method", "State", "Inbound", "Outbound", "Secure", "Age", "From", "To"],
        )
        self.assertEqual(
            lines[2].split(), ["1", "INVITE", "confirmed", "test", "core", "yes", "12s"]
        )
        self.assertEqual(lines[-1], "1 call(s)")
        backend.bindings = [
            RegistrationInfo(
                "alice@lab.test", "sip:alice@10.0.0.1:5060", "test", 3600, "UDP 10.0.0.1:5060"
            )
        ]
        text, _ = session.execute("show services sbc mysbc sbe registrations")
        self.assertEqual(
            text.split("\n")[0].split(),
            ["AOR", "Contact", "Adjacency", "Flow", "Expires", "Registrar"],
        )
        self.assertEqual(
            text.split("\n")[2].split(),
            [
                "alice@lab.test",
                "sip:alice@10.0.0.1:5060",
                "test",
                "UDP",
                "10.0.0.1:5060",
                "3600s",
                "local",
            ],
        )
        # with a shared store (docs/scaling.md): the node that holds each flow
        backend.bindings = [
            RegistrationInfo("a@lab.test", "sip:a@1", "test", 60, "UDP 10.0.0.1:5060", node="A"),
            RegistrationInfo(
                "b@lab.test", "sip:b@10.0.0.2", "test", 50, "TLS 10.0.0.2:4000", node="B",
                held_here=False, relayed_to="pbx",
            ),
        ]  # fmt: skip
        lines = session.execute("show services sbc mysbc sbe registrations")[0].split("\n")
        self.assertEqual(lines[0].split()[-2:], ["Registrar", "Node"])
        self.assertEqual(lines[2].split()[-2:], ["local", "A"])
        self.assertEqual(lines[3].split()[-4:], ["relayed", "to", "pbx", "B"])
        backend.counter_values = {
            "core": {"handshakes": 2},
            "(unclassified)": {"drops:no-adjacency": 1},
        }
        text, _ = session.execute("show services sbc mysbc sbe statistics")
        self.assertEqual(
            text,
            "Adjacency: core\n  handshakes  2\n\nAdjacency: test\n  (none)\n\n"
            "Adjacency: (unclassified)\n  drops:no-adjacency  1",
        )


class BlockedSourceTests(SynchronousTestCase):
    """show ... blocked-sources and clear ... blocked-source (docs/hardening.md)."""

    def backend(self) -> FakeBackend:
        backend = FakeBackend()
        backend.blocked = [
            BlockedSourceInfo("203.0.113.9", "test", "user-agent", 1800000100.0, 12, 3),
            BlockedSourceInfo("198.51.100.7", "test", "rate-limit", 1800000000.0, 287, 24812),
        ]
        return backend

    def test_none(self) -> None:
        text, ok = Session(FakeBackend()).execute("show services sbc mysbc sbe blocked-sources")
        self.assertEqual((text, ok), ("No blocked sources.", True))

    def test_listing_oldest_first(self) -> None:
        text, ok = Session(self.backend()).execute("show services sbc mysbc sbe blocked-sources")
        self.assertTrue(ok)
        lines = text.split("\n")
        self.assertEqual(
            lines[0].split(),
            ["Address", "Adjacency", "Reason", "Banned", "since", "Remaining", "Dropped"],
        )
        self.assertEqual(
            lines[2].split(),
            [
                "198.51.100.7",
                "test",
                "rate-limit",
                "2027-01-15",
                "08:00:00",
                "UTC",
                "287s",
                "24812",
            ],
        )
        self.assertEqual(lines[3].split()[:3], ["203.0.113.9", "test", "user-agent"])
        self.assertEqual(lines[-1], "2 blocked source(s)")

    def test_seed_short_form(self) -> None:
        text, ok = Session(self.backend()).execute("show services sbc sbe blocked-sources")
        self.assertTrue(ok)
        self.assertIn("198.51.100.7", text)

    def test_show_takes_no_options(self) -> None:
        text, ok = Session(self.backend()).execute("show services sbc mysbc sbe blocked-sources x")
        self.assertFalse(ok)
        self.assertIn("too many words", text)

    def test_clear_one(self) -> None:
        backend = self.backend()
        session = Session(backend)
        text, ok = session.execute("clear services sbc mysbc sbe blocked-source 198.51.100.7")
        self.assertEqual((text, ok), ("198.51.100.7 released.", True))
        self.assertEqual(backend.released, ["198.51.100.7"])
        text, _ = session.execute("show services sbc mysbc sbe blocked-sources")
        self.assertNotIn("198.51.100.7", text)

    def test_clear_normalizes_ipv6(self) -> None:
        backend = self.backend()
        Session(backend).execute("clear services sbc mysbc sbe blocked-source [2001:DB8:0::7]")
        self.assertEqual(backend.released, ["2001:db8::7"])

    def test_clear_all(self) -> None:
        backend = self.backend()
        text, ok = Session(backend).execute("clear services sbc mysbc sbe blocked-source all")
        self.assertEqual((text, ok), ("2 blocked source(s) released.", True))
        self.assertEqual(backend.released, [None])

    def test_clear_refusals(self) -> None:
        backend = self.backend()
        session = Session(backend)
        usage = "usage: clear services sbc NAME sbe blocked-source ADDRESS|all"
        cases = {
            "clear": f"% bad command: {usage}",
            "clear services sbc mysbc sbe": f"% incomplete command: {usage}",
            "clear services sbc mysbc sbe blocked-source": f"% incomplete command: {usage}",
            "clear services sbc mysbc sbe blocked-source 1.2.3.4 5": f"% too many words: {usage}",
            "clear services sbc mysbc sbe blocked-source x": f"% bad address 'x': {usage}",
            "clear services sbc other sbe blocked-source 1.2.3.4": (
                "% no sbc service 'other' (the service is 'mysbc')"
            ),
            "clear services sbc mysbc sbe blocked-source 192.0.2.1": "% 192.0.2.1 is not blocked",
        }
        for line, expected in cases.items():
            self.assertEqual(session.execute(line), (expected, False), line)
        self.assertEqual(backend.released, ["192.0.2.1"])

    def test_help_and_do(self) -> None:
        session = Session(self.backend())
        self.assertIn("clear services sbc NAME sbe blocked-source", session.execute("?")[0])
        self.assertIn("blocked-sources", session.execute("show ?")[0])
        run(session, "configure")
        text, ok = session.execute("do clear services sbc mysbc sbe blocked-source all")
        self.assertEqual((text, ok), ("2 blocked source(s) released.", True))

    def test_completion(self) -> None:
        session = Session(self.backend())
        self.assertEqual(session.complete("cl"), ["clear"])
        self.assertEqual(session.complete("clear "), ["services"])
        self.assertEqual(session.complete("clear services sbc "), ["mysbc"])
        self.assertEqual(
            session.complete("clear services sbc mysbc sbe blocked-source "),
            ["198.51.100.7", "203.0.113.9", "all"],
        )
        self.assertEqual(session.complete("show services sbc mysbc sbe bl"), ["blocked-sources"])


class CryptoReloadTests(SynchronousTestCase):
    def test_success_prints_the_new_identity(self) -> None:
        backend = FakeBackend()
        text, ok = Session(backend).execute("crypto reload")
        self.assertTrue(ok)
        self.assertEqual(text, "TLS identity reloaded: CN=sbc.lab.test (sip:sbc.lab.test)")
        self.assertEqual(backend.reloads, 1)

    def test_failure_is_the_percent_line(self) -> None:
        backend = FakeBackend()
        backend.reload_result = ["% TLS identity not reloaded: k.pem: not a PEM private key"]
        text, ok = Session(backend).execute("crypto reload")
        self.assertFalse(ok)
        self.assertEqual(text, "% TLS identity not reloaded: k.pem: not a PEM private key")

    def test_bad_syntax_does_not_reload(self) -> None:
        backend = FakeBackend()
        for line in ("crypto", "crypto reload now", "crypto restart"):
            text, ok = Session(backend).execute(line)
            self.assertFalse(ok)
            self.assertEqual(text, "% bad command: usage: crypto reload")
        self.assertEqual(backend.reloads, 0)

    def test_listed_by_question_mark_and_usable_with_do(self) -> None:
        session = Session(FakeBackend())
        self.assertIn("crypto reload", session.execute("?")[0])
        self.assertIn("crypto reload", session.execute("crypto ?")[0])
        run(session, "configure")
        text, ok = session.execute("do crypto reload")
        self.assertTrue(ok)
        self.assertTrue(text.startswith("TLS identity reloaded: "))


class LayeringTests(SynchronousTestCase):
    def test_commands_import_no_reactor_or_io(self) -> None:
        from tests.test_layering import FORBIDDEN_FOR_POLICY, imported_by

        loaded = imported_by("sbc.cli", "sbc.cli.commands")
        bad = [
            m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_FOR_POLICY)
        ]
        self.assertEqual(bad, [])


class CommitHistoryTests(SynchronousTestCase):
    """commit comment, show configuration commit list/changes, rollback."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.session = Session(self.backend, user="alice", client="cli")

    def commit_port(self, port: int, *extra: str) -> None:
        for line in (
            "configure",
            "sbc mysbc",
            "sbe",
            "adjacency sip test",
            f"signaling-port {port}",
            *extra,
            "end",
        ):
            text, ok = self.session.execute(line)
            self.assertTrue(ok, text)

    def test_list_newest_first_with_user_and_comment(self) -> None:
        self.assertEqual(
            self.session.execute("show configuration commit list"), ("No commits.", True)
        )
        self.commit_port(5071, "commit")
        self.commit_port(5072, "commit comment move test to 5072")
        text, ok = self.session.execute("show configuration commit list")
        self.assertTrue(ok)
        lines = text.split("\n")
        self.assertEqual(lines[0].split(), ["SNo.", "ID", "User", "Client", "Time", "Comment"])
        self.assertEqual(
            lines[2].split(),
            ["1", "1000000002", "alice", "cli", "2027-01-15", "08:02:00", "UTC", "move", "test",
             "to", "5072"],
        )  # fmt: skip
        self.assertEqual(lines[3].split()[:3], ["2", "1000000001", "alice"])
        self.assertEqual(len(lines), 4)
        text, _ = self.session.execute("show configuration commit list 1")
        self.assertEqual(len(text.split("\n")), 3)
        self.assertIn("1000000002", text)

    def test_changes(self) -> None:
        self.commit_port(5071, "commit")
        text, ok = self.session.execute("show configuration commit changes 1000000001")
        self.assertTrue(ok)
        self.assertEqual(
            text.split("\n"),
            [
                "! commit 1000000001 by alice at 2027-01-15 08:01:00 UTC",
                "  sbc mysbc",
                "   sbe",
                "    adjacency sip test",
                "-    signaling-port 5070",
                "+    signaling-port 5071",
            ],
        )
        text, ok = self.session.execute("show configuration commit changes 42")
        self.assertEqual(
            (text, ok), ("% no commit 42 in the history (show configuration commit list)", False)
        )

    def test_rollback_last_and_to(self) -> None:
        self.commit_port(5071, "commit")
        self.commit_port(5072, "commit")
        text, ok = self.session.execute("rollback configuration last 2")
        self.assertTrue(ok, text)
        self.assertEqual(self.backend.config.get_adjacency("test").port, 5070)  # type: ignore[union-attr]
        text, ok = self.session.execute("rollback configuration to 1000000002")
        self.assertTrue(ok, text)
        self.assertEqual(self.backend.config.get_adjacency("test").port, 5072)  # type: ignore[union-attr]
        self.assertEqual(self.backend.history.records[-1].user, "alice")

    def test_rollback_errors(self) -> None:
        for line in (
            "rollback",
            "rollback configuration",
            "rollback configuration last",
            "rollback configuration last 0",
            "rollback configuration last x",
            "rollback configuration first 1",
        ):
            text, ok = self.session.execute(line)
            self.assertFalse(ok, line)
            self.assertTrue(text.startswith("% "), text)
        text, ok = self.session.execute("rollback configuration last 1")
        self.assertEqual((text, ok), ("% no such commit", False))
        self.session.execute("configure")
        text, ok = self.session.execute("do rollback configuration last 1")
        self.assertFalse(ok)
        self.assertIn("not allowed in configuration mode", text)

    def test_commit_usage(self) -> None:
        self.session.execute("configure")
        usage = "usage: commit [confirmed [SECONDS]] [comment TEXT]"
        text, ok = self.session.execute("commit now")
        self.assertEqual((text, ok), (f"% bad command: {usage}", False))
        for line, problem in [
            ("commit confirmed 10", "'10' is not a number of seconds from 30 to 65535"),
            ("commit confirmed 99999", "'99999' is not a number of seconds from 30 to 65535"),
            ("commit confirmed soon", "'soon' is not a number of seconds from 30 to 65535"),
        ]:
            text, ok = self.session.execute(line)
            self.assertEqual((text, ok), (f"% {problem}: {usage}", False))
        text, ok = self.session.execute("commit confirmed 60 comment")
        self.assertEqual((text, ok), (f"% bad command: {usage}", False))
        self.assertEqual(self.backend.confirm_requests, [])

    def test_commit_confirmed_then_commit_confirms(self) -> None:
        self.session.execute("configure")
        self.session.execute("sbc mysbc")
        self.session.execute("sbe")
        self.session.execute("local-domain a.test")
        text, ok = self.session.execute("commit confirmed 120 comment trial")
        commit_id = self.backend.history.records[-1].id
        self.assertEqual(
            (text, ok),
            (
                f"Commit {commit_id} is rolled back in 120 seconds unless confirmed: "
                "'commit' confirms it.",
                True,
            ),
        )
        self.assertEqual(self.backend.history.records[-1].comment, "trial")
        text, ok = self.session.execute("commit confirmed")
        self.assertEqual(
            text,
            f"No configuration changes to commit; commit {commit_id} is still rolled back in "
            "120 seconds unless 'commit' confirms it.",
        )
        listing = self.session.execute("show configuration commit list")[0].split("\n")
        self.assertEqual(
            listing[-1],
            f"! commit {commit_id} is on trial: rolled back in 120 seconds unless 'commit' "
            "confirms it",
        )
        text, ok = self.session.execute("commit")
        self.assertEqual((text, ok), (f"Commit {commit_id} confirmed.", True))
        text, ok = self.session.execute("commit")
        self.assertEqual((text, ok), ("No configuration changes to commit.", True))
        self.session.execute("local-domain b.test")
        self.assertTrue(self.session.execute("commit confirmed")[1])
        self.assertEqual(self.backend.confirm_requests, [120, 600])
        second = self.backend.history.records[-1].id
        self.session.execute("local-domain c.test")
        text, ok = self.session.execute("commit")  # a commit with changes confirms too
        self.assertEqual((text, ok), (f"Commit {second} confirmed.", True))
        self.assertIsNone(self.backend.waiting)

    def test_commit_confirmed_completion(self) -> None:
        self.session.execute("configure")
        self.assertEqual(self.session.complete("commit "), ["comment", "confirmed"])
        self.assertEqual(self.session.complete("commit confirmed "), ["comment"])
        self.assertEqual(self.session.complete("commit confirmed 60 "), ["comment"])


class ConcurrentSessionTests(SynchronousTestCase):
    """Two configuration sessions: a later commit never silently undoes an earlier one."""

    def test_changes_reapplied_on_the_other_commit(self) -> None:
        backend = FakeBackend()
        first, second = Session(backend), Session(backend)
        run(first, "configure", "sbc mysbc", "sbe", "local-domain first.test")
        run(second, "configure", "sbc mysbc", "sbe", "adjacency sip test", "signaling-port 5071")
        self.assertEqual(second.execute("commit"), ("", True))
        text, ok = first.execute("commit")
        self.assertFalse(ok)
        self.assertIn("your changes were re-applied on top of it", text)
        text, ok = first.execute("show configuration diff")
        self.assertEqual(text, "  sbc mysbc\n   sbe\n+   local-domain first.test")
        self.assertEqual(first.execute("commit"), ("", True))
        self.assertEqual(backend.config.local_domains, ("first.test",))
        self.assertEqual(backend.config.adjacency("test").port, 5071)

    def test_changes_that_no_longer_apply_are_dropped(self) -> None:
        backend = FakeBackend()
        first, second = Session(backend), Session(backend)
        run(first, "configure", "sbc mysbc", "sbe", "no adjacency sip test")
        run(second, "configure", "sbc mysbc", "sbe", "no adjacency sip test")
        self.assertEqual(second.execute("commit"), ("", True))
        text, ok = first.execute("commit")
        self.assertFalse(ok)
        self.assertIn("cannot be re-applied", text)
        self.assertIn("your changes were dropped", text)
        self.assertIsNone(backend.config.get_adjacency("test"))
        self.assertEqual(first.execute("commit"), ("No configuration changes to commit.", True))

    def test_entering_a_block_the_other_session_removed_is_a_conflict(self) -> None:
        backend = FakeBackend()
        first, second = Session(backend), Session(backend)
        run(first, "configure", "sbc mysbc", "sbe", "adjacency sip test", "signaling-port 5080")
        run(second, "configure", "sbc mysbc", "sbe", "no adjacency sip test")
        self.assertEqual(second.execute("commit"), ("", True))
        text, ok = first.execute("commit")
        self.assertFalse(ok)
        self.assertIn(
            "'adjacency sip test' cannot be re-applied on top of it (the other session "
            "changed or removed 'adjacency sip test')",
            text,
        )
        self.assertIsNone(backend.config.get_adjacency("test"))

    def test_a_session_without_edits_follows_silently(self) -> None:
        backend = FakeBackend()
        first, second = Session(backend), Session(backend)
        run(first, "configure", "sbc mysbc", "sbe")
        run(second, "configure", "sbc mysbc", "sbe", "local-domain second.test", "commit")
        self.assertEqual(first.execute("commit"), ("No configuration changes to commit.", True))
        run(first, "local-domain first.test")
        self.assertEqual(first.execute("commit"), ("", True))
        self.assertEqual(backend.config.local_domains, ("second.test", "first.test"))


class ConfigDiffTests(SynchronousTestCase):
    OLD = """sbc lab
 sbe
  adjacency sip b
   signaling-port 5070
  call-policy-set 1
   rtg-src-adjacency-table t
    entry 1
     dst-adjacency b
     action complete"""
    NEW = """sbc lab
 sbe
  adjacency sip b
   signaling-port 5071
  call-policy-set 1
   rtg-src-adjacency-table t
    entry 1
     action next-table u
   rtg-dst-address-table u
    entry 1
     dst-adjacency b
     action complete"""

    def test_changes_under_their_blocks_compared_by_path(self) -> None:
        """A setting moving to another block is removed there and added here."""
        self.assertEqual(
            config_diff(self.OLD.split("\n"), self.NEW.split("\n")),
            [
                "  sbc lab",
                "   sbe",
                "    adjacency sip b",
                "-    signaling-port 5070",
                "+    signaling-port 5071",
                "    call-policy-set 1",
                "     rtg-src-adjacency-table t",
                "      entry 1",
                "-      dst-adjacency b",
                "-      action complete",
                "+      action next-table u",
                "+    rtg-dst-address-table u",
                "+     entry 1",
                "+      dst-adjacency b",
                "+      action complete",
            ],
        )
        self.assertEqual(config_diff(self.OLD.split("\n"), self.OLD.split("\n")), [])


class CompletionTests(SynchronousTestCase):
    """Tab completion: keywords, literal arguments and adjacency names for the current mode."""

    def test_exec_mode(self) -> None:
        session = Session(FakeBackend())
        cases = {
            "": ["clear", "configure", "crypto", "exit", "reload", "rollback", "show"],
            "sh": ["show"],
            "show ": ["configuration", "running-config", "services"],
            "show services sbc ": ["mysbc"],
            "show services sbc mysbc sbe ": [
                "adjacencies",
                "blocked-sources",
                "calls",
                "registrations",
                "statistics",
                "workers",
            ],
            "show services sbc mysbc sbe adjacencies ": ["core", "detail", "test"],
            "show services sbc mysbc sbe adjacencies core ": ["detail"],
            "rollback configuration ": ["last", "to"],
            "rollback configuration last ": [],
            "bogus ": [],
        }
        for typed, expected in cases.items():
            self.assertEqual(session.complete(typed), expected, typed)

    def test_config_modes(self) -> None:
        session = Session(FakeBackend())
        run(session, "configure", "sbc mysbc", "sbe")
        self.assertIn("adjacency", session.complete(""))
        self.assertIn("commit", session.complete(""))
        self.assertEqual(session.complete("adjacency sip "), ["core", "test"])
        self.assertEqual(session.complete("no adjacency sip t"), ["test"])
        self.assertEqual(session.complete("do show r"), ["running-config"])
        run(session, "adjacency sip test")
        self.assertEqual(
            session.complete("security "),
            ["inbound", "outbound", "trusted-encrypted", "trusted-unencrypted", "untrusted"],
        )
        self.assertEqual(
            session.complete("security inbound trusted-"),
            ["trusted-encrypted", "trusted-unencrypted"],
        )
        self.assertEqual(session.complete("signaling-address "), ["ipv4", "ipv6"])
        self.assertEqual(session.complete("signaling-port "), [])
        self.assertEqual(session.complete("no security "), ["inbound", "outbound"])
        self.assertEqual(session.complete("show configuration "), ["commit", "diff"])
        self.assertEqual(session.complete("show configuration commit "), ["changes", "list"])


class ReloadUserDatabaseTests(SynchronousTestCase):
    def test_reload_user_database(self) -> None:
        backend = FakeBackend()
        session = Session(backend)
        [(_, text, ok)] = run(session, "reload user-database")
        self.assertTrue(ok)
        self.assertEqual(text, "user database reloaded: users.htdigest, 2 users in 1 realm")
        self.assertEqual(backend.user_reloads, 1)

    def test_refused_reload_is_one_percent_line(self) -> None:
        backend = FakeBackend()
        backend.users_result = ["% user database not reloaded: users:3: bad HA1"]
        [(_, text, ok)] = run(Session(backend), "reload user-database")
        self.assertFalse(ok)
        self.assertEqual(text, "% user database not reloaded: users:3: bad HA1")

    def test_usage(self) -> None:
        [(_, text, ok)] = run(Session(FakeBackend()), "reload users")
        self.assertFalse(ok)
        self.assertIn("usage: reload user-database", text)

    def test_completion(self) -> None:
        session = Session(FakeBackend())
        self.assertIn("reload", session.complete(""))
        self.assertEqual(session.complete("reload "), ["user-database"])


class SignalingPeerDisplayTests(SynchronousTestCase):
    """How ``show ... adjacencies`` says where requests go: DNS SRV for a domain without port."""

    def peer_line(self, **settings: object) -> str:
        adjacency = AdjacencyConfig("a", "10.0.0.1", **settings)  # type: ignore[arg-type]
        [line] = [x for x in describe_adjacency(adjacency) if "Signaling peer" in x]
        return line.strip()

    def test_forms(self) -> None:
        self.assertEqual(
            self.peer_line(),
            "Signaling peer: (Request-URI host), port from the URI, by DNS SRV, else 5060",
        )
        self.assertEqual(
            self.peer_line(
                signaling_peer="core.example.net", security_outbound="trusted-encrypted"
            ),
            "Signaling peer: core.example.net, port by DNS SRV, else 5061",
        )
        self.assertEqual(
            self.peer_line(signaling_peer="core.example.net", signaling_peer_port=5070),
            "Signaling peer: core.example.net:5070",
        )
        self.assertEqual(
            self.peer_line(signaling_peer="2001:db8::7"), "Signaling peer: [2001:db8::7]:5060"
        )

    def test_cluster_link(self) -> None:
        self.assertEqual(
            self.peer_line(cluster_link=True),
            "Signaling peer: the node that holds the phone, at the address it advertises in the "
            "store",
        )
        adjacency = AdjacencyConfig(
            "c", "10.0.0.1", cluster_link=True, cluster_identity="nodes.example.net"
        )
        self.assertIn(
            "  Cluster link: yes, nodes' certificates name nodes.example.net",
            describe_adjacency(adjacency),
        )
        self.assertFalse(
            [x for x in describe_adjacency(AdjacencyConfig("a", "10.0.0.1")) if "Cluster" in x]
        )
