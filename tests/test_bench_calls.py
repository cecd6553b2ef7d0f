"""The calls benchmark's parsing, judging and table code (benchmarks/bench_calls.py); no SIPp."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_calls", REPO / "benchmarks" / "bench_calls.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_calls", module)
    spec.loader.exec_module(module)
    return module


bc = load_bench()

COUNTS = (
    "CurrentTime;ElapsedTime;0_INVITE_Sent;0_INVITE_Retrans;1_100_Recv;2_180_Recv;"
    "3_503_Recv;4_200_Recv;5_ACK_Sent;7_BYE_Sent;8_200_Recv;9_ACK_Sent;\n"
    "t0;00:00:01;10;0;10;8;2;8;8;8;7;2;\n"
    "t1;00:00:02;20;1;20;15;5;15;15;15;14;5;\n"
)


def step(calls: int = 1000, completed: int = 1000, **overrides: object) -> object:
    shed = int(overrides.pop("shed", 0))  # type: ignore[call-overload]
    answered = int(overrides.pop("answered", completed))  # type: ignore[call-overload]
    retrans = int(overrides.pop("retrans", 0))  # type: ignore[call-overload]
    setup = overrides.pop("setup", 5.0)
    fields: dict[str, object] = dict(
        rate=100,
        calls=calls,
        stats=bc.SippStats(calls, completed + shed, 0, retrans, setup),
        cpu_ms=2000.0,
        wall_s=20.0,
        rss_before_kib=1024,
        rss_after_kib=2048,
        drops=0,
        counts=bc.Counts(shed=shed, answered=answered, completed=completed),
        cpu_calls_ms=1500.0,
        wakeups=3000,
        target="sbc",
    )
    fields.update(overrides)
    return bc.Step(**fields)


class ParsingTests(SynchronousTestCase):
    def test_counts_take_the_last_row(self) -> None:
        counts = bc.parse_counts(COUNTS)
        self.assertEqual((counts.shed, counts.answered, counts.completed), (5, 15, 14))

    def test_counts_without_rows(self) -> None:
        self.assertIsNone(bc.parse_counts("a;b\n"))
        self.assertIsNone(bc.parse_counts("0_INVITE_Sent;\n1;\n"))

    def test_sipp_durations(self) -> None:
        self.assertEqual(bc.sipp_duration_ms("00:00:00:012000"), 12.0)
        self.assertEqual(bc.sipp_duration_ms("00:00:01:500"), 1500.0)
        self.assertIsNone(bc.sipp_duration_ms("garbage"))

    def test_stat_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text(
            "TotalCallCreated;SuccessfulCall(C);FailedCall(C);Retransmissions(C);"
            "ResponseTimesetup(C)\n1;1;0;0;00:00:00:001000\n100;97;3;4;00:00:00:025000\n"
        )
        stats = bc.read_stat_file(path)
        self.assertEqual(stats, bc.SippStats(100, 97, 3, 4, 25.0))
        self.assertIsNone(bc.read_stat_file(Path(self.mktemp())))


class JudgingTests(SynchronousTestCase):
    def test_clean_step(self) -> None:
        self.assertTrue(step().passed)
        self.assertEqual(step().ms_per_call, 2.0)
        self.assertEqual(step().ms_per_call_calls, 1.5)

    def test_failed_retransmitted_or_slow_steps_are_not_clean(self) -> None:
        self.assertFalse(step(completed=995).passed)  # 0.5 % not completed
        self.assertTrue(step(completed=996).passed)
        self.assertFalse(step(retrans=5).passed)
        self.assertFalse(step(setup=100.0).passed)

    def test_shed_calls_count_as_failed_but_not_as_lost(self) -> None:
        s = step(completed=600, shed=400)
        self.assertEqual((s.failed, s.shed, s.lost, s.accepted), (400, 400, 0, 600))
        self.assertEqual(s.completed_of_accepted, 1.0)
        self.assertFalse(s.passed)

    def test_lost_established_calls(self) -> None:
        self.assertEqual(step(completed=990, answered=995).lost, 5)

    def test_a_ramp_stops_past_twice_the_best_clean_rate(self) -> None:
        ramp = bc.Ramp("sbc")
        ramp.record(step(rate=400), 2)
        ramp.record(step(rate=600, completed=900), 2)
        self.assertFalse(ramp.done)  # one unclean step
        ramp.record(step(rate=800, completed=900), 2)
        self.assertTrue(ramp.done)  # two, and 800 >= 2 x 400

    def test_a_ramp_goes_on_below_twice_the_best(self) -> None:
        ramp = bc.Ramp("sbc")
        ramp.record(step(rate=1000), 2)
        for rate in (1200, 1400, 1600):
            ramp.record(step(rate=rate, completed=900), 2)
            self.assertFalse(ramp.done, rate)
        ramp.record(step(rate=1800, completed=900), 2)
        self.assertTrue(ramp.done)  # four unclean in a row

    def test_a_ramp_with_no_clean_step_stops_after_n(self) -> None:
        ramp = bc.Ramp("sippy")
        ramp.record(step(rate=100, completed=10), 2)
        self.assertFalse(ramp.done)
        ramp.record(step(rate=200, completed=10), 2)
        self.assertTrue(ramp.done)

    def test_overload_summary_uses_the_step_at_twice_the_best(self) -> None:
        steps = [step(rate=500), step(rate=900, completed=700, shed=300)]
        self.assertIn("no step at twice", bc.overload_summary(steps) or "")
        steps.append(step(rate=1000, completed=450, shed=500, answered=452))
        summary = bc.overload_summary(steps) or ""
        self.assertIn("at 1000 calls/s (>= 2 x 500): 500 of 1000 calls accepted", summary)
        self.assertIn("450 completed (90.0% of accepted), 500 answered 503", summary)
        self.assertIn("2 established calls lost", summary)


class OutputTests(SynchronousTestCase):
    def test_table_has_one_row_per_step(self) -> None:
        text = bc.table([step(), step(rate=200, completed=990)])
        lines = text.splitlines()
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[0].startswith("| rate/s | offered | completed | 503 shed |"))
        self.assertIn("| 2.000 | 1.500 | 3.0 |", lines[2])
        self.assertTrue(lines[2].endswith("| yes |"))
        self.assertTrue(lines[3].endswith("| no |"))

    def test_results_survive_json(self) -> None:
        runs = {"sbc": [step()], "sippy": [step(target="sippy", counts=None)]}
        again, meta = bc.steps_from_json(bc.steps_to_json(runs, {"title": "t"}))
        self.assertEqual(again, runs)
        self.assertEqual(meta, {"title": "t"})

    def test_plot_without_matplotlib_says_so(self) -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.assertFalse(bc.plot({"sbc": [step()]}, Path(self.mktemp()), "t"))
        else:
            raise self.skipTest("matplotlib is installed")
