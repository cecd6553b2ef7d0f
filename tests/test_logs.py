"""sbc.logs: every log event as one JSON object per line."""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sbc.logs import JsonLinesObserver, event_as_json_line, json_log_observer

# 2024-05-01T12:00:00.123Z
WHEN = 1714564800.123


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Printable:
    def __str__(self) -> str:
        return "printable!"


class StreamMixin(SynchronousTestCase):
    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.observer = JsonLinesObserver(self.stream)
        self.log = Logger(namespace="sbc.test", observer=self.observer)

    def records(self) -> list[dict[str, Any]]:
        lines = self.stream.getvalue().splitlines()
        return [json.loads(line) for line in lines]


class EventFormatTests(StreamMixin):
    def test_one_valid_json_object_per_line(self) -> None:
        self.log.info("first {n}", n=1)
        self.log.warn("second\nwith a newline {n}", n=2)
        text = self.stream.getvalue()
        self.assertEqual(text.count("\n"), 2)
        self.assertTrue(text.endswith("\n"))
        self.assertNotIn("\x1e", text)  # not Twisted's record-separator format
        first, second = self.records()
        self.assertEqual(first["message"], "first 1")
        self.assertEqual(second["message"], "second\nwith a newline 2")

    def test_standard_fields(self) -> None:
        self.observer(
            {
                "log_format": "call {call_id} to {target}",
                "log_level": LogLevel.info,
                "log_namespace": "sbc.test",
                "log_time": WHEN,
                "log_logger": self.log,
                "event": "call.routed",
                "call_id": 12,
                "target": "sip:bob@x",
                "secure": False,
                "route_path": ("call-policy-set 1", "by-source entry 1"),
            }
        )
        [record] = self.records()
        self.assertEqual(
            record,
            {
                "time": "2024-05-01T12:00:00.123Z",
                "level": "info",
                "namespace": "sbc.test",
                "message": "call 12 to sip:bob@x",
                "event": "call.routed",
                "call_id": 12,
                "target": "sip:bob@x",
                "secure": False,
                "route_path": ["call-policy-set 1", "by-source entry 1"],
            },
        )

    def test_levels(self) -> None:
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
            self.log.emit(level, "x")
        self.assertEqual([r["level"] for r in self.records()], ["debug", "info", "warn", "error"])

    def test_no_event_name_no_event_field(self) -> None:
        self.log.info("plain")
        [record] = self.records()
        self.assertNotIn("event", record)

    def test_time_is_utc_with_milliseconds(self) -> None:
        line = event_as_json_line({"log_time": 0.5, "log_format": "x"})
        self.assertEqual(json.loads(line)["time"], "1970-01-01T00:00:00.500Z")

    def test_failure_gives_a_traceback(self) -> None:
        try:
            raise ZeroDivisionError("on purpose")
        except ZeroDivisionError:
            self.log.failure("it broke on {what}", what="purpose")
        [record] = self.records()
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["message"], "it broke on purpose")
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertIn("Traceback", record["traceback"])

    def test_failure_given_as_object(self) -> None:
        self.log.error("{log_failure}", log_failure=Failure(ValueError("bad value")))
        [record] = self.records()
        self.assertIn("ValueError: bad value", record["traceback"])

    def test_unserialisable_values_become_text(self) -> None:
        self.log.info("x", thing=Printable(), raw=b"\x00bytes", uri_set={1, 2})
        [record] = self.records()
        self.assertEqual(record["thing"], "printable!")
        self.assertEqual(record["raw"], str(b"\x00bytes"))
        self.assertEqual(record["uri_set"], "{1, 2}")

    def test_value_that_cannot_be_printed(self) -> None:
        self.log.info("x {n}", n=1, bad=Unprintable())
        [record] = self.records()
        self.assertEqual(record["message"], "x 1")
        self.assertEqual(record["bad"], "<unprintable Unprintable>")

    def test_keys_json_cannot_take_and_cycles(self) -> None:
        cycle: list[object] = []
        cycle.append(cycle)
        self.log.info("still {n}", n=3, by_tuple={(1, 2): "a"}, cycle=cycle, nan=float("nan"))
        [record] = self.records()
        self.assertEqual(record["message"], "still 3")
        self.assertEqual(record["n"], 3)
        self.assertEqual(record["by_tuple"], "{(1, 2): 'a'}")
        self.assertEqual(record["cycle"], "[[...]]")
        self.assertEqual(record["nan"], "nan")

    def test_unformattable_message_does_not_raise(self) -> None:
        self.log.info("missing {nothere}")
        [record] = self.records()
        self.assertIn("Unable to format event", record["message"])

    def test_text_of_an_event_kept_out_of_the_text_log(self) -> None:
        self.log.warn(None, held_format="held {n}", n=4, suppressed=True)
        [record] = self.records()
        self.assertEqual(record["message"], "held 4")
        self.assertTrue(record["suppressed"])
        self.assertNotIn("held_format", record)

    def test_colliding_and_legacy_keys_left_out(self) -> None:
        event = {
            "log_format": "{time}",
            "log_level": LogLevel.info,
            "log_time": WHEN,
            "time": "shadowed",
            "message": (),
            "format": "%(log_legacy)s",
            "isError": 0,
            "system": "-",
            "other": 1,
        }
        record = json.loads(event_as_json_line(event))
        self.assertEqual(record["time"], "2024-05-01T12:00:00.123Z")
        self.assertEqual(record["message"], "shadowed")
        for key in ("format", "isError", "system"):
            self.assertNotIn(key, record)
        self.assertEqual(record["other"], 1)

    def test_bad_time_and_level(self) -> None:
        record = json.loads(event_as_json_line({"log_time": "yesterday", "log_format": "x"}))
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIsNone(record["level"])

    def test_non_ascii_is_escaped(self) -> None:
        self.log.info("caller {name}", name="Zoë")
        text = self.stream.getvalue()
        self.assertTrue(text.isascii())
        [record] = self.records()
        self.assertEqual((record["message"], record["name"]), ("caller Zoë", "Zoë"))

    def test_text_only_events(self) -> None:
        """``{log_text}`` events (sbc's call log, Twisted's legacy bridge) and a broken one."""

        class Broken:
            def __str__(self) -> str:
                raise KeyError("field")

        self.log.info("{log_text}", log_text="plain text")
        self.log.info("{log_text}", log_text=Broken())
        first, second = self.records()
        self.assertEqual(first["message"], "plain text")
        self.assertIn("Unable to format event", second["message"])

    def test_non_string_event_name(self) -> None:
        self.log.info("x", event=7)
        [record] = self.records()
        self.assertEqual(record["event"], "7")


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


class ObserverTests(SynchronousTestCase):
    def test_provides_ilogobserver(self) -> None:
        self.assertTrue(verifyObject(ILogObserver, JsonLinesObserver(io.StringIO())))

    def test_write_failure_never_raises(self) -> None:
        observer = JsonLinesObserver(BrokenStream())
        observer({"log_format": "x", "log_level": LogLevel.info})
        self.assertEqual(observer.failures, 1)

    def test_reentrant_event_is_dropped(self) -> None:
        """Writing to a stdout redirected into the log must not loop."""
        publisher = LogPublisher()
        written: list[str] = []

        class Redirected(io.StringIO):
            def write(self, text: str) -> int:
                written.append(text)
                publisher({"log_format": "{log_io}", "log_io": text, "log_level": LogLevel.info})
                return len(text)

        observer = JsonLinesObserver(Redirected())
        publisher.addObserver(observer)
        publisher({"log_format": "once", "log_level": LogLevel.info})
        self.assertEqual(len(written), 1)
        self.assertEqual(json.loads(written[0])["message"], "once")

    def test_stdout(self) -> None:
        captured = io.StringIO()
        self.patch(sys, "stdout", captured)
        observer = json_log_observer("-")
        Logger(namespace="sbc.test", observer=observer).info("to {where}", where="stdout")
        [line] = captured.getvalue().splitlines()
        self.assertEqual(json.loads(line)["message"], "to stdout")

    def test_file_appended_line_by_line_and_reopened(self) -> None:
        path = self.mktemp()
        with open(path, "w") as existing:
            existing.write('{"old": true}\n')
        observer = json_log_observer(path)
        assert isinstance(observer, JsonLinesObserver)
        self.addCleanup(observer.close)
        log = Logger(namespace="sbc.test", observer=observer)
        log.info("one")
        with open(path) as written:  # visible at once: no buffering across lines
            self.assertEqual([json.loads(x).get("message") for x in written], [None, "one"])
        os.rename(path, path + ".1")
        observer.reopen()
        log.info("two")
        with open(path) as fresh:
            self.assertEqual([json.loads(x)["message"] for x in fresh], ["two"])

    def test_copytruncate_rotation(self) -> None:
        """After logrotate truncates the file in place, lines start again at its beginning."""
        path = self.mktemp()
        observer = json_log_observer(path)
        assert isinstance(observer, JsonLinesObserver)
        self.addCleanup(observer.close)
        log = Logger(namespace="sbc.test", observer=observer)
        log.info("before rotation, a long line " + "x" * 200)
        os.truncate(path, 0)
        log.info("after")
        with open(path, "rb") as rotated:
            data = rotated.read()
        self.assertFalse(data.startswith(b"\x00"))
        self.assertEqual([json.loads(x)["message"] for x in data.splitlines()], ["after"])
