"""``sbc-lab-pki``: the command line of the lab PKI writer."""

from __future__ import annotations

import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from sbc import labpki


class LabPkiCommandTests(SynchronousTestCase):
    def run_main(self, *args: str) -> tuple[int | str | None, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code: int | str | None = labpki.main(list(args))
        except SystemExit as exit:
            code = exit.code
        return code, out.getvalue(), err.getvalue()

    def test_writes_once_then_leaves_it(self) -> None:
        directory = os.path.abspath(self.mktemp())
        code, _, err = self.run_main(directory)
        self.assertEqual(code, 0)
        self.assertIn("WARNING: lab PKI for testing only", err)
        self.assertIn(f"wrote 8 files to {directory}", err)
        self.assertTrue(os.path.exists(os.path.join(directory, "sbc.pem")))
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            ca = f.read()
        code, _, err = self.run_main(directory)
        self.assertEqual(code, 0)
        self.assertIn("already holds a PKI; left unchanged", err)
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), ca)

    def test_help_writes_nothing(self) -> None:
        before = set(os.listdir("."))
        code, out, _ = self.run_main("--help")
        self.assertEqual(code, 0)
        self.assertIn("usage: sbc-lab-pki [-h] [directory]", out)
        self.assertEqual(set(os.listdir(".")), before)  # no directory called --help

    def test_unknown_option_is_a_usage_error(self) -> None:
        code, _, err = self.run_main("--bogus")
        self.assertEqual(code, 2)
        self.assertIn("unrecognized arguments: --bogus", err)
