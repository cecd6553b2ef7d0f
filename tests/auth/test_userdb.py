"""The user database file: parsing, errors naming file and line, atomic writes."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from sbc.auth.digest import compute_ha1
from sbc.auth.userdb import (
    UserDatabase,
    UserDatabaseError,
    add_user,
    load_user_database,
)
from sbc.errors import ConfigError

MD5 = compute_ha1("MD5", "alice", "lab.test", "secret")
SHA = compute_ha1("SHA-256", "alice", "lab.test", "secret")
FIELDS = "expected user:realm:HA1 or user:realm:HA1:HA1-SHA-256"


class LoadTests(SynchronousTestCase):
    def write(self, text: str | bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def test_htdigest_lines_with_and_without_sha256(self) -> None:
        bob_md5 = compute_ha1("MD5", "bob", "lab.test", "pw")
        path = self.write(
            "# users of lab.test\n"
            "\n"
            f"alice:lab.test:{MD5.upper()}:{SHA}\r\n"
            f"  bob:lab.test:{bob_md5}  \n"
            f"alice:other.test:{MD5}\n"
        )
        db = load_user_database(path)
        self.assertEqual(len(db), 3)
        self.assertEqual(db.realms, frozenset({"lab.test", "other.test"}))
        self.assertEqual(db.ha1("alice", "lab.test", "MD5"), MD5)
        self.assertEqual(db.ha1("alice", "lab.test", "sha-256"), SHA)
        self.assertEqual(db.ha1("bob", "lab.test", "MD5"), bob_md5)
        self.assertIsNone(db.ha1("bob", "lab.test", "SHA-256"))
        self.assertIsNone(db.ha1("carol", "lab.test", "MD5"))
        self.assertIsNone(db.ha1("Alice", "lab.test", "MD5"))
        self.assertIsNone(db.ha1("alice", "LAB.TEST", "MD5"))
        self.assertIsNone(db.ha1("alice", "lab.test", "MD5-sess"))
        self.assertIn(("bob", "lab.test"), db)
        self.assertEqual(
            db.without_sha256(), frozenset({("bob", "lab.test"), ("alice", "other.test")})
        )
        self.assertNotIn(MD5, repr(db))

    def test_empty(self) -> None:
        self.assertEqual(len(UserDatabase.empty()), 0)
        self.assertEqual(UserDatabase(), UserDatabase.empty())
        self.assertEqual(UserDatabase().realms, frozenset())
        self.assertEqual(len(load_user_database(self.write("# nobody yet\n"))), 0)

    def test_errors_name_file_and_line_and_never_a_hash(self) -> None:
        cases = [
            ("alice:lab.test\n", 1, f"{FIELDS}, found 2 fields"),
            (f"# c\nalice:lab.test:{MD5}:{SHA}:x\n", 2, f"{FIELDS}, found 5 fields"),
            (f":lab.test:{MD5}\n", 1, "empty user name"),
            (f"alice::{MD5}\n", 1, "empty realm"),
            (f"alice:lab.test:{MD5[:-1]}\n", 1, "the MD5 HA1 must be 32 hexadecimal digits"),
            (f"alice:lab.test:{MD5[:-1]}x\n", 1, "the MD5 HA1 must be 32 hexadecimal digits"),
            (f"alice:lab.test:{MD5}:{SHA}0\n", 1, "the SHA-256 HA1 must be 64 hexadecimal digits"),
            (f"alice:lab.test:{MD5}:\n", 1, "the SHA-256 HA1 must be 64 hexadecimal digits"),
            (
                f"alice:lab.test:{MD5}\n\nalice:lab.test:{MD5}\n",
                3,
                "user 'alice' in realm 'lab.test' already defined on line 1",
            ),
            (b"alice:lab.test:" + MD5.encode() + b"\n\xff:x:y\n", 2, "not valid UTF-8"),
        ]
        for text, line, message in cases:
            with self.subTest(message=message, line=line):
                path = self.write(text)
                error = self.assertRaises(UserDatabaseError, load_user_database, path)
                self.assertIsInstance(error, ConfigError)
                self.assertEqual((error.path, error.line, error.message), (path, line, message))
                self.assertEqual(str(error), f"{path}:{line}: {message}")
                self.assertNotIn(MD5[:-1], str(error))
                self.assertNotIn(SHA, str(error))

    def test_unreadable_file(self) -> None:
        path = self.mktemp()
        error = self.assertRaises(UserDatabaseError, load_user_database, path)
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")
        os.mkdir(path)
        error = self.assertRaises(UserDatabaseError, load_user_database, path)
        self.assertEqual(str(error), f"{path}: cannot read: Is a directory")


class AddUserTests(SynchronousTestCase):
    def setUp(self) -> None:
        os.mkdir(self.mktemp_dir())

    def mktemp_dir(self) -> str:
        self.dir = self.mktemp()
        return self.dir

    def path(self) -> str:
        return os.path.join(self.dir, "users")

    def test_new_file_is_0600_with_both_hashes(self) -> None:
        path = self.path()
        self.assertTrue(add_user(path, "alice", "lab.test", "secret"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read(), f"alice:lab.test:{MD5}:{SHA}\n")
        db = load_user_database(path)
        self.assertEqual(db.ha1("alice", "lab.test", "SHA-256"), SHA)
        self.assertEqual(os.listdir(self.dir), ["users"])  # no temporary file left

    def test_change_keeps_every_other_line_and_the_mode(self) -> None:
        path = self.path()
        bob = f"bob:lab.test:{compute_ha1('MD5', 'bob', 'lab.test', 'x')}"
        with open(path, "w") as f:
            f.write(f"# header\n{bob}\nalice:lab.test:{'0' * 32}\n\nalice:other.test:{'1' * 32}")
        os.chmod(path, 0o640)
        self.assertFalse(add_user(path, "alice", "lab.test", "secret"))
        with open(path) as f:
            self.assertEqual(
                f.read(),
                f"# header\n{bob}\nalice:lab.test:{MD5}:{SHA}\n\nalice:other.test:{'1' * 32}\n",
            )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertTrue(add_user(path, "carol", "lab.test", "pw"))
        self.assertEqual(len(load_user_database(path)), 4)

    def test_a_broken_file_is_left_alone(self) -> None:
        path = self.path()
        with open(path, "w") as f:
            f.write("alice:lab.test:nothex\n")
        error = self.assertRaises(UserDatabaseError, add_user, path, "bob", "lab.test", "pw")
        self.assertEqual(error.line, 1)
        with open(path) as f:
            self.assertEqual(f.read(), "alice:lab.test:nothex\n")
        self.assertEqual(os.listdir(self.dir), ["users"])

    def test_bad_names_are_refused(self) -> None:
        for user, realm in [
            ("", "lab.test"),
            ("alice", ""),
            ("al:ice", "lab.test"),
            ("alice", "lab\ntest"),
            (" alice", "lab.test"),
            ("#alice", "lab.test"),
            ("al\udcffice", "lab.test"),
        ]:
            with self.subTest(user=user, realm=realm):
                self.assertRaises(UserDatabaseError, add_user, self.path(), user, realm, "pw")
        self.assertEqual(os.listdir(self.dir), [])

    def test_unwritable_directory(self) -> None:
        path = os.path.join(self.dir, "missing", "users")
        error = self.assertRaises(UserDatabaseError, add_user, path, "alice", "lab.test", "pw")
        self.assertIn("cannot write", str(error))
