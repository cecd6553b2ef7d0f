"""sbc.logs.TextLogFile: twistd's text log lines, buffered call lines, size rotation, reopen."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText, formatTime
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sbc import logs
from sbc.b2bua.calllog import LazyText
from sbc.logs import TextLogFile, classic_line, flush_text_logs, text_log_for

WHEN = 1714564800.123


def call_event(text: str, when: float = WHEN, level: LogLevel = LogLevel.info) -> dict[str, Any]:
    """An event as sbc's call log emits it."""
    return {
        "log_format": "{log_text}",
        "log_text": LazyText(text, {}),
        "log_namespace": "sbc.calls",
        "log_level": level,
        "log_time": when,
        "event": "call.routed",
    }


def other_event(text: str, when: float = WHEN) -> dict[str, Any]:
    return {
        "log_format": "{what}",
        "what": text,
        "log_namespace": "sbc.service.SbcService",
        "log_level": LogLevel.info,
        "log_time": when,
    }


class ClassicLineTests(SynchronousTestCase):
    """Every line is what twistd's own text observer writes."""

    def twisted(self, event: dict[str, Any]) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=formatTime)

    def test_call_events_match_twisted(self) -> None:
        for text in ("call 1 INVITE from access: routed", "two\nlines", ""):
            event = call_event(text)
            self.assertEqual(classic_line(event, formatTime), self.twisted(event))

    def test_a_worker_process_call_line_names_the_worker(self) -> None:
        """``twistd sbc --workers N``: the supervisor marks each worker's events."""
        event = {**call_event("call 3 INVITE from access: routed"), "worker": 2}
        line = classic_line(event, formatTime)
        assert line is not None
        self.assertIn(" [worker 2 sbc.calls#info] call 3 INVITE from access: routed\n", line)

    def test_other_events_match_twisted(self) -> None:
        events = [
            other_event("adjacency access: attached"),
            {"log_format": "x {y}", "y": 1, "log_system": "legacy", "log_time": WHEN},
            {"log_format": None, "log_namespace": "sbc.x", "log_time": WHEN},
            {"log_format": "{log_text}", "log_text": "t", "log_time": None},
        ]
        events.append({**other_event("failed"), "log_failure": Failure(ZeroDivisionError("x"))})
        for event in events:
            self.assertEqual(classic_line(event, formatTime), self.twisted(event))

    def test_time_prefix_is_computed_once_per_second(self) -> None:
        calls: list[float | None] = []

        def counting(when: float | None) -> str:
            calls.append(when)
            return formatTime(when)

        self.patch(logs, "formatTime", counting)
        stream = io.StringIO()
        observer = TextLogFile(stream=stream, threaded=False)
        for offset in (0.0, 0.2, 0.5, 0.9, 1.1):
            observer(call_event("x", WHEN + offset))
        self.assertEqual(calls, [int(WHEN), int(WHEN) + 1])
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 5)
        self.assertEqual(lines[0].split(" ")[0], formatTime(WHEN))
        self.assertEqual(lines[4].split(" ")[0], formatTime(WHEN + 1.1))


class BufferingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stream = io.StringIO()
        # a long interval: nothing is written unless flushed or forced
        self.observer = TextLogFile(stream=self.stream, flush_interval=3600.0)
        self.addCleanup(self.observer.close)

    def test_call_lines_wait_other_lines_go_at_once_in_order(self) -> None:
        self.observer(call_event("call 1"))
        self.observer(call_event("call 2"))
        self.assertEqual(self.stream.getvalue(), "")
        self.observer(other_event("commit 1"))
        lines = self.stream.getvalue().splitlines()
        self.assertEqual(
            [line.partition("] ")[2] for line in lines], ["call 1", "call 2", "commit 1"]
        )

    def test_warnings_of_calls_go_at_once(self) -> None:
        self.observer(call_event("call 1 failed", level=LogLevel.warn))
        self.assertIn("call 1 failed", self.stream.getvalue())

    def test_flush_and_close_write_everything(self) -> None:
        self.observer(call_event("call 1"))
        flush_text_logs()
        self.assertIn("call 1", self.stream.getvalue())
        self.observer(call_event("call 2"))
        self.observer.close()
        self.assertIn("call 2", self.stream.getvalue())
        # after close, lines are written at once
        self.observer(call_event("call 3"))
        self.assertIn("call 3", self.stream.getvalue())

    def test_a_stalled_disk_drops_call_lines_and_says_so(self) -> None:
        observer = TextLogFile(stream=self.stream, flush_interval=3600.0, max_pending=100)
        self.addCleanup(observer.close)
        for n in range(20):
            observer(call_event(f"call {n} INVITE routed"))
        self.assertGreater(observer.dropped, 0)
        observer.flush()
        text = self.stream.getvalue()
        self.assertIn("call 0 INVITE routed", text)
        self.assertNotIn("call 19 INVITE routed", text)
        self.assertIn(f"{observer.dropped} call log lines dropped", text)
        self.assertIn("#warn]", text)

    def test_a_full_buffer_is_written_by_the_writer_thread(self) -> None:
        observer = TextLogFile(stream=self.stream, flush_interval=3600.0, flush_bytes=10)
        observer(call_event("call 1 is longer than ten bytes"))
        observer.close()  # joins the writer; the line is out either way
        self.assertIn("call 1 is longer", self.stream.getvalue())

    def test_through_a_logger(self) -> None:
        log = Logger(namespace="sbc.calls", observer=self.observer)
        log.info("{log_text}", log_text="call 9 routed")
        self.observer.flush()
        self.assertRegex(self.stream.getvalue(), r"^\S+ \[sbc\.calls#info\] call 9 routed\n$")


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "sbc.log")

    def read(self, path: str | None = None) -> str:
        with open(path or self.path, encoding="utf-8") as f:
            return f.read()

    def test_appends_to_an_existing_file(self) -> None:
        with open(self.path, "w") as f:
            f.write("old line\n")
        observer = TextLogFile(self.path, threaded=False)
        observer(other_event("new line"))
        self.assertTrue(self.read().startswith("old line\n"))
        self.assertIn("new line", self.read())

    def test_rotates_by_size_keeping_n_files(self) -> None:
        observer = TextLogFile(self.path, max_size=200, keep=2, threaded=False)
        for n in range(12):
            observer(other_event(f"event number {n:02d} with some text"))
        self.assertGreater(observer.rotations, 2)
        names = sorted(os.listdir(self.directory))
        self.assertEqual(names, ["sbc.log", "sbc.log.1", "sbc.log.2"])
        for name in names:
            self.assertLessEqual(os.path.getsize(os.path.join(self.directory, name)), 200)
        # newest in sbc.log, older ones in .1 then .2; nothing lost between them
        newest = self.read()
        self.assertIn("event number 11", newest)
        kept = self.read(self.path + ".2") + self.read(self.path + ".1") + newest
        numbers = [int(line.split("event number ")[1][:2]) for line in kept.splitlines()]
        self.assertEqual(numbers, list(range(numbers[0], 12)))

    def test_max_size_zero_never_rotates(self) -> None:
        observer = TextLogFile(self.path, max_size=0, threaded=False)
        for n in range(50):
            observer(other_event(f"event {n}"))
        self.assertEqual(os.listdir(self.directory), ["sbc.log"])
        self.assertEqual(observer.rotations, 0)

    def test_keep_zero_removes_the_full_file(self) -> None:
        observer = TextLogFile(self.path, max_size=100, keep=0, threaded=False)
        for n in range(10):
            observer(other_event(f"event number {n} with text"))
        self.assertEqual(os.listdir(self.directory), ["sbc.log"])
        self.assertIn("event number 9", self.read())

    def test_reopen_after_logrotate_moved_the_file(self) -> None:
        observer = TextLogFile(self.path, threaded=False)
        observer(other_event("before"))
        moved = self.path + ".moved"
        os.rename(self.path, moved)
        observer(other_event("still to the moved file"))
        observer.reopen()
        observer(other_event("after"))
        self.assertIn("still to the moved file", self.read(moved))
        self.assertEqual(self.read().count("\n"), 1)
        self.assertIn("after", self.read())

    def test_relative_path_is_kept_absolute(self) -> None:
        observer = TextLogFile(os.path.relpath(self.path), threaded=False)
        self.assertEqual(observer.path, os.path.abspath(self.path))

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, TextLogFile)
        self.assertRaises(ValueError, TextLogFile, self.path, stream=io.StringIO())
        self.assertRaises(ValueError, TextLogFile, self.path, max_size=-1)


class TwistdOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_syslog_and_logger_keep_twistds_own(self) -> None:
        self.assertIsNone(text_log_for({"syslog": True, "logfile": ""}, 10, 1))
        self.assertIsNone(text_log_for({"logger": "x.y", "logfile": ""}, 10, 1))

    def test_stdout_with_nodaemon_or_dash(self) -> None:
        for options in ({"nodaemon": True, "logfile": ""}, {"logfile": "-"}):
            observer = text_log_for(options, 10, 1)
            assert observer is not None
            self.assertIsNone(observer.path)
            self.assertIs(observer._stream, sys.stdout)

    def test_a_file_with_the_sizes_given(self) -> None:
        path = os.path.join(self.directory, "x.log")
        observer = text_log_for({"logfile": path}, 1234, 3)
        assert observer is not None
        self.assertEqual(
            (observer.path, observer.max_size, observer.keep), (os.path.abspath(path), 1234, 3)
        )


class ReentryTests(SynchronousTestCase):
    def test_an_event_logged_while_writing_is_written_not_deadlocked(self) -> None:
        """twistd's SIGTERM handler logs from a signal handler, maybe in the middle of a write."""

        class Interrupted(io.StringIO):
            observer: TextLogFile | None = None

            def write(self, text: str) -> int:
                written = super().write(text)
                observer, self.observer = self.observer, None
                if observer is not None:  # the "signal" arrives during the first write
                    observer(other_event("Received SIGTERM, shutting down."))
                return written

        stream = Interrupted()
        observer = TextLogFile(stream=stream, flush_interval=3600.0)
        self.addCleanup(observer.close)
        stream.observer = observer
        observer(call_event("call 1"))
        observer(other_event("sbc lab started with 3 adjacencies"))
        lines = [line.partition("] ")[2] for line in stream.getvalue().splitlines()]
        self.assertEqual(
            lines,
            ["call 1", "sbc lab started with 3 adjacencies", "Received SIGTERM, shutting down."],
        )
