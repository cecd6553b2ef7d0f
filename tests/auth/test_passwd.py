"""sbc-passwd: the command, end to end with the authenticator."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from importlib.metadata import entry_points

from twisted.trial.unittest import SynchronousTestCase

from sbc.auth import DigestAuthenticator, load_user_database
from sbc.auth import passwd as passwd_module
from sbc.auth.passwd import main

from .support import REALM, SECRET, answer, challenge_params, request


class PasswdTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.file = os.path.join(self.dir, "users")
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def run_main(self, *args: str, stdin: str = "") -> int:
        self.patch(sys, "stdin", io.StringIO(stdin))
        return main(list(args))

    def test_round_trip_with_stdin(self) -> None:
        status = self.run_main("--stdin", self.file, "alice", REALM, stdin="s3cret pass\n")
        self.assertEqual(status, 0)
        self.assertEqual(
            self.out.getvalue(), f"Added user 'alice' in realm '{REALM}' in {self.file}\n"
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.file).st_mode), 0o600)
        auth = DigestAuthenticator(SECRET, lambda: load_user_database(self.file))
        now = 50.0
        for algorithm in ("SHA-256", "MD5"):
            challenge = auth.challenge(
                realm=REALM, registrar=True, now=now, algorithms=[algorithm]
            ).headers[0][1]
            self.assertEqual(challenge_params(challenge)["algorithm"], algorithm)
            req = request(extra=(("Authorization", answer(challenge, password="s3cret pass")),))
            self.assertEqual(
                auth.authenticate(req, realm=REALM, user="alice", registrar=True, now=now),
                "alice",
            )

    def test_change_then_old_password_fails(self) -> None:
        self.run_main("--stdin", self.file, "alice", REALM, stdin="one\r\n")
        status = self.run_main("--stdin", self.file, "alice", REALM, stdin="two")
        self.assertEqual(status, 0)
        self.assertIn("Changed password of user 'alice'", self.out.getvalue())
        db = load_user_database(self.file)
        self.assertEqual(len(db), 1)
        from sbc.auth.digest import compute_ha1

        self.assertEqual(db.ha1("alice", REALM, "MD5"), compute_ha1("MD5", "alice", REALM, "two"))

    def test_empty_password_is_refused(self) -> None:
        self.assertEqual(self.run_main("--stdin", self.file, "alice", REALM, stdin="\n"), 1)
        self.assertIn("empty password refused", self.err.getvalue())
        self.assertFalse(os.path.exists(self.file))

    def test_asks_twice(self) -> None:
        answers = iter(["pw", "pw", "pw", "other"])
        prompts: list[str] = []

        def fake_getpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return next(answers)

        self.patch(passwd_module.getpass, "getpass", fake_getpass)
        self.assertEqual(self.run_main(self.file, "alice", REALM), 0)
        self.assertEqual(
            prompts, [f"New password for alice in realm {REALM}: ", "Re-type the password: "]
        )
        self.assertEqual(self.run_main(self.file, "alice", REALM), 1)
        self.assertIn("the passwords do not match", self.err.getvalue())

    def test_interrupted_prompt(self) -> None:
        def eof(prompt: str = "") -> str:
            raise EOFError

        self.patch(passwd_module.getpass, "getpass", eof)
        self.assertEqual(self.run_main(self.file, "alice", REALM), 1)
        self.assertIn("no password given", self.err.getvalue())
        self.assertFalse(os.path.exists(self.file))

    def test_bad_file_or_names(self) -> None:
        with open(self.file, "w") as f:
            f.write("broken\n")
        self.assertEqual(self.run_main("--stdin", self.file, "alice", REALM, stdin="pw"), 1)
        self.assertEqual(
            self.err.getvalue(),
            f"sbc-passwd: {self.file}:1: expected user:realm:HA1 or user:realm:HA1:HA1-SHA-256,"
            " found 1 fields; nothing changed\n",
        )
        self.assertEqual(self.run_main("--stdin", self.dir + "/new", "a:b", REALM, stdin="pw"), 1)

    def test_realm_with_capitals_is_refused(self) -> None:
        self.assertEqual(self.run_main("--stdin", self.file, "erin", "Lab.Test", stdin="pw"), 1)
        self.assertIn("use 'lab.test'", self.err.getvalue())
        self.assertFalse(os.path.exists(self.file))

    def test_help_and_usage(self) -> None:
        error = self.assertRaises(SystemExit, self.run_main, "--help")
        self.assertEqual(error.code, 0)
        self.assertIn("sbc-passwd", self.out.getvalue())
        self.assertIn("--stdin", self.out.getvalue())
        error = self.assertRaises(SystemExit, self.run_main, self.file)
        self.assertEqual(error.code, 2)

    def test_console_script(self) -> None:
        found = entry_points()
        # (Python 3.9, PyPy's: a dict of groups, no select())
        scripts = (
            found.select(group="console_scripts")
            if hasattr(found, "select")
            else found.get("console_scripts", [])  # type: ignore[attr-defined]
        )
        # (3.9 lists a distribution once per sys.path entry that finds it)
        values = {e.value for e in scripts if e.name == "sbc-passwd"}
        self.assertEqual(values, {"sbc.auth.passwd:main"})
        # and as a separate process, as an operator runs it
        done = subprocess.run(
            [sys.executable, "-m", "sbc.auth.passwd", "--stdin", self.file, "bob", REALM],
            input="pw\n",
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertEqual(len(load_user_database(self.file)), 1)
