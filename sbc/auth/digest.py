"""SIP digest machinery, pure: parsing credentials, hashes, nonces, nonce-counts.

RFC 3261 §22 with RFC 7616 hashing and RFC 8760 algorithm choice. Nothing
here reads a clock, a file or a socket: ``now`` (seconds) and the
per-process ``secret`` are arguments. The only state is
:class:`NonceCountTracker`, which remembers the highest nonce-count seen per
nonce so a replayed request is refused. docs/authentication.md explains the
whole scheme for operators.

Every comparison of a digest or a MAC uses :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import attrs

from sbc.errors import SbcError

__all__ = [
    "ALGORITHMS",
    "MAX_TRACKED_NONCES",
    "DigestCredentials",
    "MalformedCredentialsError",
    "NonceCountStatus",
    "NonceCountTracker",
    "NonceStatus",
    "check_nonce",
    "compute_ha1",
    "compute_response",
    "credentials_realm",
    "hash_hex",
    "mint_nonce",
    "nonce_minted_at",
    "normalize_algorithm",
    "parse_credentials",
    "parse_nc",
    "same_digest",
]

#: The algorithms sbc can check, by their canonical spelling (RFC 8760 §2),
#: mapped to the hashlib name.
ALGORITHMS: Final[Mapping[str, str]] = {"MD5": "md5", "SHA-256": "sha256"}

#: Hard cap on the nonces :class:`NonceCountTracker` remembers at once.
MAX_TRACKED_NONCES: Final = 50_000

NonceStatus = Literal["ok", "stale", "invalid"]
NonceCountStatus = Literal["ok", "replayed", "forgotten"]

# Nonce layout before base64url: 8-byte signed big-endian mint time in
# milliseconds, 8 random bytes, then the first 16 bytes of
# HMAC-SHA256(secret, time || salt). 32 bytes -> 43 characters.
_TIME = struct.Struct(">q")
_SALT_BYTES: Final = 8
_MAC_BYTES: Final = 16
_NONCE_BYTES: Final = _TIME.size + _SALT_BYTES + _MAC_BYTES
_NONCE_CHARS: Final = 43

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_token_at = re.compile(_TOKEN).match
_blank_at = re.compile(r"[ \t\r\n]*").match
_nonce_match = re.compile(rf"[A-Za-z0-9_\-]{{{_NONCE_CHARS}}}").fullmatch
# One whole parameter: name = (quoted-string without escapes | token), then
# a comma (group 4) or the end. Each repeated class stops at a character it
# excludes (blank, "=", '"', ","): linear, whatever the input.
_param_at = re.compile(
    rf'({_TOKEN})[ \t\r\n]*=[ \t\r\n]*(?:"([^"\\]*)"|({_TOKEN}))[ \t\r\n]*(?:(,)[ \t\r\n]*|\Z)'
).match
_nc_match = re.compile(r"[0-9A-Fa-f]{8}").fullmatch


class MalformedCredentialsError(SbcError):
    """A credentials header value that does not follow the Digest grammar.

    The message says what is wrong in a few words; it never quotes the value.
    """


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@attrs.frozen
class DigestCredentials:
    """The parameters of one ``Digest`` credentials value (RFC 3261 §25.1 ``digest-response``).

    ``params`` maps lower-cased parameter names to their values, unquoted.
    The properties give the parameters sbc uses (None when absent).
    """

    params: Mapping[str, str]

    def _get(self, name: str) -> str | None:
        return self.params.get(name)

    @property
    def username(self) -> str | None:
        """The claimed user name."""
        return self._get("username")

    @property
    def realm(self) -> str | None:
        """The realm the credentials are for."""
        return self._get("realm")

    @property
    def nonce(self) -> str | None:
        """The server nonce being answered."""
        return self._get("nonce")

    @property
    def uri(self) -> str | None:
        """The digest-uri (the Request-URI as the client hashed it)."""
        return self._get("uri")

    @property
    def response(self) -> str | None:
        """The request-digest, hexadecimal."""
        return self._get("response")

    @property
    def algorithm(self) -> str | None:
        """The algorithm as written (None means MD5, RFC 7616 §3.4)."""
        return self._get("algorithm")

    @property
    def cnonce(self) -> str | None:
        """The client nonce."""
        return self._get("cnonce")

    @property
    def qop(self) -> str | None:
        """The quality of protection the client chose."""
        return self._get("qop")

    @property
    def nc(self) -> str | None:
        """The nonce-count, 8 hexadecimal digits as written."""
        return self._get("nc")

    @property
    def opaque(self) -> str | None:
        """The opaque value echoed from the challenge."""
        return self._get("opaque")


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The unescaped content of the quoted-string at ``text[start]``, and the index after it.

    Linear: the closing quote is searched again only after an escape passed it.
    """
    out: list[str] = []
    i = start + 1
    q = text.find('"', i)
    while True:
        if q < 0:
            raise MalformedCredentialsError("unterminated quoted string")
        b = text.find("\\", i, q)
        if b < 0:
            out.append(text[i:q])
            return "".join(out), q + 1
        # b < q, so the escaped character exists (it may be the quote itself)
        out.append(text[i:b])
        out.append(text[b + 1])
        i = b + 2
        if i > q:
            q = text.find('"', i)


def _skip_blanks(text: str, pos: int) -> int:
    m = _blank_at(text, pos)
    return pos if m is None else m.end()


def parse_credentials(value: str) -> DigestCredentials | None:
    """Parse one ``Authorization`` / ``Proxy-Authorization`` value.

    Returns None when the scheme is not ``Digest`` (those credentials are
    someone else's business and are left alone). Parameter names are
    case-insensitive; values may be tokens or quoted-strings (with
    backslash escapes), around any linear white space. Raises
    :class:`MalformedCredentialsError`, and nothing else, for anything that does
    not follow the grammar: a missing or bad scheme, a parameter without
    ``=value``, an unterminated quoted string, a parameter given twice,
    junk between parameters. Linear in ``len(value)``.
    """
    n = len(value)
    pos = _skip_blanks(value, 0)
    m = _token_at(value, pos)
    if m is None:
        raise MalformedCredentialsError("missing authentication scheme")
    scheme = m.group()
    pos = m.end()
    if scheme.lower() != "digest":
        return None
    gap = _skip_blanks(value, pos)
    if gap == pos and gap < n:
        raise MalformedCredentialsError("no blank after the scheme")
    pos = gap
    params: dict[str, str] = {}
    while True:
        m = _param_at(value, pos)
        if m is not None:
            # the usual parameter in one step: no escapes, then "," or the end
            name, quoted, token, comma = m.groups()
            name = name.lower()
            if name in params:
                raise MalformedCredentialsError(f"{name[:32]} given twice")
            params[name] = token if quoted is None else quoted
            if comma is None:
                return DigestCredentials(params)
            pos = m.end()
            continue
        m = _token_at(value, pos)
        if m is None:
            raise MalformedCredentialsError("parameter name expected")
        name = m.group().lower()
        shown = name[:32]  # for messages: never a whole client-supplied text
        pos = _skip_blanks(value, m.end())
        if pos >= n or value[pos] != "=":
            raise MalformedCredentialsError(f"'=' expected after {shown}")
        pos = _skip_blanks(value, pos + 1)
        if pos < n and value[pos] == '"':
            param_value, pos = _quoted(value, pos)
        else:
            m = _token_at(value, pos)
            if m is None:
                raise MalformedCredentialsError(f"value expected for {shown}")
            param_value = m.group()
            pos = m.end()
        if name in params:
            raise MalformedCredentialsError(f"{shown} given twice")
        params[name] = param_value
        pos = _skip_blanks(value, pos)
        if pos >= n:
            return DigestCredentials(params)
        if value[pos] != ",":
            raise MalformedCredentialsError("',' expected between parameters")
        pos = _skip_blanks(value, pos + 1)


def credentials_realm(value: str) -> str | None:
    """The realm of a Digest credentials value, or None (other scheme, no realm, malformed)."""
    try:
        credentials = parse_credentials(value)
    except MalformedCredentialsError:
        return None
    return None if credentials is None else credentials.realm


# ---------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------


def normalize_algorithm(name: str) -> str | None:
    """The canonical spelling (``"MD5"``, ``"SHA-256"``) of an algorithm, or None if unsupported.

    Algorithm names are case-insensitive tokens (RFC 7616 §3.3).
    """
    upper = name.upper()
    return upper if upper in ALGORITHMS else None


def _utf8(text: str) -> bytes:
    # Received header text is decoded as UTF-8 with surrogateescape
    # (sbc.sip.message); this gives back the exact bytes on the wire.
    return text.encode("utf-8", "surrogateescape")


def hash_hex(algorithm: str, text: str) -> str:
    """``H(text)`` of RFC 7616 §3.4.1: the lower-case hex digest of the UTF-8 bytes."""
    return hashlib.new(ALGORITHMS[algorithm], _utf8(text)).hexdigest()


def compute_ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """``HA1 = H(user:realm:password)`` (RFC 7616 §3.4.2, non-session algorithms)."""
    return hash_hex(algorithm, f"{user}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """The request-digest for ``qop=auth`` (RFC 7616 §3.4.1).

    ``H(HA1:nonce:nc:cnonce:qop:H(method:uri))``, lower-case hex.
    """
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def same_digest(given: str, expected: str) -> bool:
    """Constant-time comparison of two digests (hex case ignored in ``given``)."""
    return hmac.compare_digest(_utf8(given.lower()), _utf8(expected))


# ---------------------------------------------------------------------------
# Stateless nonces
# ---------------------------------------------------------------------------


def _mac(secret: bytes, head: bytes) -> bytes:
    return hmac.new(secret, head, hashlib.sha256).digest()[:_MAC_BYTES]


def mint_nonce(secret: bytes, now: float) -> str:
    """A fresh nonce: mint time, random salt and a MAC over both, base64url.

    Nobody without ``secret`` can make one that :func:`check_nonce` accepts,
    and the server needs to remember nothing to check it.
    """
    head = _TIME.pack(int(now * 1000)) + secrets.token_bytes(_SALT_BYTES)
    raw = head + _mac(secret, head)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(nonce: str) -> bytes | None:
    if not _nonce_match(nonce):
        return None
    # 43 base64url characters always decode, to 32 bytes
    raw = base64.urlsafe_b64decode(nonce + "=")
    # one spelling per nonce: the last character's unused bits must be zero
    if base64.urlsafe_b64encode(raw)[:_NONCE_CHARS].decode("ascii") != nonce:
        return None
    return raw


def nonce_minted_at(nonce: str) -> float | None:
    """When a well-formed nonce says it was minted (seconds), without checking its MAC."""
    raw = _decode(nonce)
    if raw is None:
        return None
    (millis,) = _TIME.unpack_from(raw)
    return float(millis) / 1000.0


def check_nonce(secret: bytes, nonce: str, now: float, lifetime: float) -> NonceStatus:
    """Whether ``nonce`` is one of ours and still fresh.

    ``"invalid"``: not minted with ``secret`` (garbage, forged, or from
    before a restart). ``"stale"``: ours but older than ``lifetime`` seconds
    (or minted more than ``lifetime`` in the future, after a clock step):
    the client should retry with a new nonce without asking its user.
    ``"ok"`` otherwise.
    """
    raw = _decode(nonce)
    if raw is None:
        return "invalid"
    head = raw[: _TIME.size + _SALT_BYTES]
    if not hmac.compare_digest(raw[len(head) :], _mac(secret, head)):
        return "invalid"
    (millis,) = _TIME.unpack_from(raw)
    age = now - millis / 1000.0
    if age > lifetime or age < -lifetime:
        return "stale"
    return "ok"


# ---------------------------------------------------------------------------
# Nonce-count replay protection
# ---------------------------------------------------------------------------


class NonceCountTracker:
    """The highest nonce-count accepted per nonce, so a replayed one is refused (RFC 7616 §3.3).

    Bounded: entries go once their nonce is past ``lifetime`` (it is stale by
    then anyway), and at most ``capacity`` are held. When full, the
    earliest-used entry is evicted and its mint time raises a floor: any
    nonce minted at or before the floor that is not tracked is then
    reported as not acceptable (the caller challenges again with
    ``stale=true``), so eviction can never let a replay through.
    """

    def __init__(self, capacity: int = MAX_TRACKED_NONCES) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # nonce -> (mint time, highest nc accepted); insertion order = first use
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def purge(self, now: float, lifetime: float) -> None:
        """Drop entries (from the oldest used) whose nonce is past ``lifetime``."""
        seen = self._seen
        while seen:
            nonce, (minted, _) = next(iter(seen.items()))
            if now - minted <= lifetime:
                return
            del seen[nonce]

    def check(self, nonce: str, nc: int) -> NonceCountStatus:
        """Whether ``nc`` may be accepted for ``nonce``; only reads.

        ``"ok"``: higher than any count accepted for it so far (or a nonce not
        seen yet). ``"replayed"``: not higher than one already accepted.
        ``"forgotten"``: an untracked nonce minted at or before the eviction
        floor, whose history may have been evicted; challenge again with
        ``stale=true``. Call :meth:`accept` only once the request's digest is
        verified, so forged requests cannot push the count up for the real
        client.
        """
        entry = self._seen.get(nonce)
        if entry is not None:
            return "ok" if nc > entry[1] else "replayed"
        minted = nonce_minted_at(nonce)
        return "ok" if minted is not None and minted > self._floor else "forgotten"

    def accept(self, nonce: str, nc: int, now: float, lifetime: float) -> None:
        """Record ``nc`` as the highest count accepted for ``nonce``."""
        self.purge(now, lifetime)
        seen = self._seen
        entry = seen.get(nonce)
        if entry is not None:
            seen[nonce] = (entry[0], max(entry[1], nc))
            return
        minted = nonce_minted_at(nonce)
        if minted is None:
            return
        while len(seen) >= self.capacity:
            _, (evicted_minted, _) = seen.popitem(last=False)
            self._floor = max(self._floor, evicted_minted)
        seen[nonce] = (minted, nc)

    def tracked(self) -> Iterable[str]:
        """The nonces currently tracked (oldest used first); for tests and `show`."""
        return tuple(self._seen)


def parse_nc(text: str) -> int | None:
    """The value of an ``nc`` parameter (exactly 8 hex digits), or None."""
    return int(text, 16) if _nc_match(text) else None
