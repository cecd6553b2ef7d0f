"""sbc.commits: commit records, the on-disk history, pruning and change summaries."""

from __future__ import annotations

import os

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sbc.commits import (
    FIRST_COMMIT_ID,
    CommitHistory,
    CommitRecord,
    history_directory,
    summarize_changes,
)
from sbc.config import parse_config

BASE = """\
sbc s
 sbe
  adjacency sip a
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   attach
  adjacency sip b
   signaling-address ipv4 127.0.0.1
   signaling-port 5070
"""


class RecordTests(SynchronousTestCase):
    def test_text_round_trip(self) -> None:
        record = CommitRecord(1000000007, 1800000000.25, "alice", "ssh", "new\ntrunk", BASE, BASE)
        again = CommitRecord.from_text(record.to_text())
        self.assertEqual(again.id, 1000000007)
        self.assertEqual(again.time, 1800000000.25)
        self.assertEqual((again.user, again.client), ("alice", "ssh"))
        self.assertEqual(again.comment, "new trunk")  # one line in the file
        self.assertEqual(again.before, BASE)
        self.assertEqual(again.after, BASE)
        self.assertEqual(again.timestamp, "2027-01-15 08:00:00 UTC")

    def test_not_a_record(self) -> None:
        self.assertRaises(ValueError, CommitRecord.from_text, BASE)
        self.assertRaises(ValueError, CommitRecord.from_text, "")


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = history_directory(os.path.abspath(self.mktemp()))

    def test_ids_count_up_and_survive_a_restart(self) -> None:
        history = CommitHistory(self.directory)
        self.assertEqual(history.next_id, FIRST_COMMIT_ID)
        first = history.record("x\n", "y\n", now=1.0, user="u", client="cli")
        second = history.record("y\n", "z\n", now=2.0)
        self.assertEqual((first.id, second.id), (FIRST_COMMIT_ID, FIRST_COMMIT_ID + 1))
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            [f"{FIRST_COMMIT_ID}.commit", f"{FIRST_COMMIT_ID + 1}.commit"],
        )
        self.assertEqual(os.stat(self.directory).st_mode & 0o777, 0o700)
        again = CommitHistory(self.directory)
        self.assertEqual([r.id for r in again.records], [first.id, second.id])
        self.assertEqual(again.records[0].user, "u")
        self.assertEqual(again.next_id, FIRST_COMMIT_ID + 2)
        self.assertEqual(again.last(1), second)
        self.assertEqual(again.last(2), first)
        self.assertIsNone(again.last(3))
        self.assertIsNone(again.last(0))
        self.assertEqual(again.get(first.id), first)
        self.assertIsNone(again.get(5))

    def test_prune_keeps_the_newest(self) -> None:
        history = CommitHistory(self.directory, keep=2)
        for n in range(4):
            history.record(f"{n}\n", f"{n + 1}\n", now=float(n))
            history.prune()
        self.assertEqual(
            [r.id for r in history.records], [FIRST_COMMIT_ID + 2, FIRST_COMMIT_ID + 3]
        )
        self.assertEqual(len(os.listdir(self.directory)), 2)
        # Ids keep counting after pruning.
        self.assertEqual(history.next_id, FIRST_COMMIT_ID + 4)

    def test_discard_newest(self) -> None:
        history = CommitHistory(self.directory)
        record = history.record("a\n", "b\n", now=0.0)
        history.discard(record.id)
        self.assertEqual(history.records, ())
        self.assertEqual(os.listdir(self.directory), [])

    def test_bad_files_ignored(self) -> None:
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "1000000001.commit"), "w") as f:
            f.write("garbage")
        with open(os.path.join(self.directory, "notes.txt"), "w") as f:
            f.write("x")
        history = CommitHistory(self.directory)
        self.assertEqual(history.records, ())
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_forget_unsaved_drops_a_commit_never_in_force(self) -> None:
        """Killed between recording and saving: the file still holds ``before``."""
        history = CommitHistory(self.directory)
        kept = history.record("a\n", "b\n", now=0.0)
        interrupted = history.record("b\n", "c\n", now=1.0)
        events: list[dict[str, object]] = []
        history.log = Logger(observer=events.append)
        again = CommitHistory(self.directory)
        again.log = history.log
        self.assertEqual(again.forget_unsaved("b\n"), interrupted)
        self.assertEqual([r.id for r in again.records], [kept.id])
        self.assertEqual(os.listdir(self.directory), [f"{kept.id}.commit"])
        self.assertEqual(
            [(e["event"], e["commit_id"]) for e in events],
            [("config.commit-unsaved", interrupted.id)],
        )

    def test_forget_unsaved_keeps_a_saved_or_unrelated_history(self) -> None:
        history = CommitHistory(self.directory)
        history.record("a\n", "b\n", now=0.0)
        self.assertIsNone(history.forget_unsaved("b\n"))  # saved: in force
        self.assertIsNone(history.forget_unsaved("x\n"))  # file edited by hand since
        self.assertEqual(len(history.records), 1)
        self.assertIsNone(CommitHistory(None).forget_unsaved("a\n"))

    def test_in_memory(self) -> None:
        history = CommitHistory(None)
        history.record("a\n", "b\n", now=0.0)
        self.assertEqual(len(history.records), 1)


class SummaryTests(SynchronousTestCase):
    def test_changes(self) -> None:
        before = parse_config(BASE)
        after = parse_config(
            BASE.replace("   attach\n", "").replace(
                "signaling-port 5070\n", "signaling-port 5071\n   attach\n"
            )
            + "  adjacency sip c\n   signaling-address ipv4 127.0.0.1\n"
            + "  local-domain example.com\n  dns-server 192.0.2.53\n"
            + "  limits\n   tcp-idle-timeout 60\n"
        )
        self.assertEqual(
            summarize_changes(before, after),
            [
                "adjacency a detached",
                "adjacency b changed: signaling-port",
                "adjacency b attached",
                "adjacency c added (detached)",
                "local-domain changed",
                "dns-server changed",
                "limits changed: tcp-idle-timeout",
            ],
        )
        self.assertEqual(summarize_changes(after, after), [])
        self.assertEqual(summarize_changes(after, before)[:1], ["adjacency c removed"])
