"""The digest user database: htdigest lines ``user:realm:HA1[:HA1-SHA-256]``.

No password is stored, only the hashes digest needs: ``HA1 =
MD5(user:realm:password)`` as Apache ``htdigest`` writes it (32 hex digits)
and, optionally, ``SHA-256(user:realm:password)`` (64 hex digits) for
``algorithm=SHA-256`` (RFC 7616). docs/authentication.md describes the file
for operators; ``sbc-passwd`` (:mod:`sbc.auth.passwd`) writes it with
:func:`add_user`.

Error messages name the file and line and never contain a hash.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from typing import Final

import attrs

from sbc.auth.digest import compute_ha1, normalize_algorithm
from sbc.errors import ConfigError

__all__ = ["UserDatabase", "UserDatabaseError", "add_user", "load_user_database"]

_md5_hex = re.compile(r"[0-9A-Fa-f]{32}").fullmatch
_sha256_hex = re.compile(r"[0-9A-Fa-f]{64}").fullmatch

#: Mode of a user database that sbc-passwd creates: owner read/write only.
NEW_FILE_MODE: Final = 0o600


class UserDatabaseError(ConfigError):
    """A user database that cannot be used: ``str()`` is ``path:line: message``.

    ``line`` is 0 when the problem is the whole file (cannot be read).
    """


@attrs.frozen
class _Hashes:
    md5: str
    sha256: str | None


@attrs.frozen(repr=False)
class UserDatabase:
    """Users by ``(user, realm)`` with their HA1 hashes; immutable.

    Built by :func:`load_user_database`; ``UserDatabase()`` (or
    :meth:`empty`) knows nobody. User and realm match exactly (case
    included), as in the hashes themselves. The repr never shows a hash.
    """

    _entries: Mapping[tuple[str, str], _Hashes] = attrs.field(
        factory=dict, alias="entries", repr=False
    )
    _realms: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    @_realms.default
    def _all_realms(self) -> frozenset[str]:
        return frozenset(realm for _, realm in self._entries)

    @classmethod
    def empty(cls) -> UserDatabase:
        """A database without users."""
        return cls()

    def ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        """The lower-case hex HA1 of ``user`` in ``realm`` for ``algorithm`` ("MD5" or "SHA-256").

        None when the user is unknown in that realm, or has no hash for that
        algorithm (a line written by ``htdigest`` has only the MD5 one).
        """
        hashes = self._entries.get((user, realm))
        if hashes is None:
            return None
        algo = normalize_algorithm(algorithm)
        if algo == "MD5":
            return hashes.md5
        if algo == "SHA-256":
            return hashes.sha256
        return None

    def __contains__(self, key: object) -> bool:
        """``(user, realm) in database``."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<UserDatabase: {len(self)} users in {len(self._realms)} realms>"

    @property
    def realms(self) -> frozenset[str]:
        """Every realm with at least one user."""
        return self._realms

    def without_sha256(self) -> frozenset[tuple[str, str]]:
        """The ``(user, realm)`` pairs that have no SHA-256 hash (htdigest-only lines)."""
        return frozenset(key for key, h in self._entries.items() if h.sha256 is None)


def _parse_line(path: str, number: int, line: str) -> tuple[tuple[str, str], _Hashes] | None:
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    fields = text.split(":")
    if len(fields) not in (3, 4):
        raise UserDatabaseError(
            path,
            number,
            f"expected user:realm:HA1 or user:realm:HA1:HA1-SHA-256, found {len(fields)} fields",
        )
    user, realm, md5 = fields[0], fields[1], fields[2]
    if not user:
        raise UserDatabaseError(path, number, "empty user name")
    if not realm:
        raise UserDatabaseError(path, number, "empty realm")
    if not _md5_hex(md5):
        raise UserDatabaseError(path, number, "the MD5 HA1 must be 32 hexadecimal digits")
    sha256: str | None = None
    if len(fields) == 4:
        sha256 = fields[3]
        if not _sha256_hex(sha256):
            raise UserDatabaseError(path, number, "the SHA-256 HA1 must be 64 hexadecimal digits")
        sha256 = sha256.lower()
    return (user, realm), _Hashes(md5.lower(), sha256)


def parse_user_database(path: str, data: bytes) -> UserDatabase:
    """The database in ``data`` (the file's bytes); ``path`` only names it in errors."""
    entries: dict[tuple[str, str], _Hashes] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserDatabaseError(path, number, "not valid UTF-8") from None
        parsed = _parse_line(path, number, line)
        if parsed is None:
            continue
        key, hashes = parsed
        if key in entries:
            raise UserDatabaseError(
                path,
                number,
                f"user {key[0]!r} in realm {key[1]!r} already defined on line {first_seen[key]}",
            )
        entries[key] = hashes
        first_seen[key] = number
    return UserDatabase(entries=entries)


def load_user_database(path: str) -> UserDatabase:
    """Read and check the user database at ``path``.

    Blank lines and lines starting with ``#`` are ignored. Raises
    :class:`UserDatabaseError` (``path:line: message``) when the file cannot
    be read, is not UTF-8, or a line is wrong: not 3 or 4 fields, empty user
    or realm, a hash of the wrong length or not hexadecimal, a user given
    twice in one realm. Nothing is half-loaded: it is the whole file or an
    error.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserDatabaseError(path, 0, f"cannot read: {e.strerror or e}") from None
    return parse_user_database(path, data)


def _check_name(path: str, what: str, value: str) -> None:
    if not value:
        raise UserDatabaseError(path, 0, f"the {what} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserDatabaseError(path, 0, f"the {what} must be valid UTF-8") from None
    if any(c in value for c in ":\r\n"):
        raise UserDatabaseError(path, 0, f"the {what} must not contain ':' or a line break")
    if value != value.strip(" \t") or value.startswith("#"):
        raise UserDatabaseError(
            path, 0, f"the {what} must not start or end with a blank, or start with '#'"
        )


def _line_key(line: bytes) -> tuple[bytes, bytes] | None:
    text = line.strip(b" \t\r")
    if not text or text.startswith(b"#"):
        return None
    fields = text.split(b":")
    return (fields[0], fields[1]) if len(fields) >= 2 else None


def add_user(path: str, user: str, realm: str, password: str) -> bool:
    """Add ``user`` in ``realm`` to the database at ``path``, or change its password.

    Writes the MD5 and the SHA-256 HA1. Every other line (comments, other
    users) is kept as it was. The existing file must be a valid database
    (otherwise :class:`UserDatabaseError`, and nothing is written). The new
    content goes to a temporary file in the same directory, is flushed to
    disk and renamed over ``path``, so a reader sees the old file or the new
    one, never a mix. A new file gets mode 0600; an existing one keeps its
    mode (and owner, when allowed). Returns True when the user was new.
    """
    _check_name(path, "user name", user)
    _check_name(path, "realm", realm)
    try:
        with open(path, "rb") as f:
            old = f.read()
        old_stat: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old, old_stat = b"", None
    except OSError as e:
        raise UserDatabaseError(path, 0, f"cannot read: {e.strerror or e}") from None
    parse_user_database(path, old)  # refuse to rewrite a broken file

    line = ":".join(
        (
            user,
            realm,
            compute_ha1("MD5", user, realm, password),
            compute_ha1("SHA-256", user, realm, password),
        )
    ).encode("utf-8")
    key = (user.encode("utf-8"), realm.encode("utf-8"))
    lines = old.split(b"\n") if old else []
    if lines and lines[-1] == b"":
        lines.pop()
    added = True
    for i, existing in enumerate(lines):
        if _line_key(existing) == key:
            lines[i] = line
            added = False
            break
    if added:
        lines.append(line)
    _write_atomically(path, b"\n".join(lines) + b"\n", old_stat)
    return added


def _write_atomically(path: str, data: bytes, old_stat: os.stat_result | None) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    except OSError as e:
        raise UserDatabaseError(path, 0, f"cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            mode = NEW_FILE_MODE if old_stat is None else stat.S_IMODE(old_stat.st_mode)
            os.fchmod(f.fileno(), mode)
            if old_stat is not None:
                with contextlib.suppress(OSError):
                    os.fchown(f.fileno(), old_stat.st_uid, old_stat.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserDatabaseError(path, 0, f"cannot write: {e.strerror or e}") from None
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
