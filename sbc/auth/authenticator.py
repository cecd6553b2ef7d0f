"""The digest authenticator: checks a request's credentials or says how to refuse it.

:class:`DigestAuthenticator` implements :class:`sbc.interfaces.IAuthenticator`.
It is pure: the clock (``now``), the per-process secret and the user database
(a callable, so a reload is seen at once) are given to it; its only state is
the bounded nonce-count tracker. A refusal is an :class:`AuthenticationError`,
a :class:`~sbc.errors.SipError` that the SIP stack turns into the 401, 407,
403 or 400 response. docs/authentication.md describes the behaviour for
operators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from zope.interface import implementer

from sbc.auth.digest import (
    MAX_TRACKED_NONCES,
    DigestCredentials,
    MalformedCredentialsError,
    NonceCountTracker,
    check_nonce,
    compute_response,
    credentials_realm,
    mint_nonce,
    normalize_algorithm,
    parse_credentials,
    parse_nc,
    same_digest,
)
from sbc.auth.userdb import UserDatabase
from sbc.errors import ParseError, SipError
from sbc.interfaces import IAuthenticator
from sbc.sip.headers import quote
from sbc.sip.message import Request
from sbc.sip.uri import parse_uri

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_NONCE_LIFETIME",
    "FAILURES",
    "AuthenticationError",
    "DigestAuthenticator",
]

#: RFC 8760 §2: offer SHA-256 before MD5.
DEFAULT_ALGORITHMS: Final = ("SHA-256", "MD5")
#: Seconds a nonce stays acceptable (the ``nonce-lifetime`` limit's default).
DEFAULT_NONCE_LIFETIME: Final = 300.0
#: Shortest per-process secret accepted, in bytes.
MIN_SECRET_BYTES: Final = 16

#: Every value of :attr:`AuthenticationError.failure` other than None, with its meaning.
FAILURES: Final = {
    "malformed": "credentials that do not follow the Digest grammar, or lack a parameter (400)",
    "uri-mismatch": "the digest uri is not the Request-URI (400)",
    "unsupported-qop": "no qop, or a qop other than auth",
    "algorithm-not-offered": "an algorithm this challenge did not offer",
    "invalid-nonce": "a nonce the SBC did not mint (forged, garbage, or from before a restart)",
    "unknown-user": "no such user in that realm",
    "algorithm-unavailable": "the user has no hash for that algorithm (an htdigest-only line)",
    "wrong-response": "the response does not match: wrong password",
    "stale-nonce": "right password, expired nonce (challenged again with stale=true)",
    "replayed-nc": "a nonce-count not higher than one already accepted for that nonce",
    "forgotten-nonce": "a nonce whose history was evicted (challenged again with stale=true)",
    "user-mismatch": "valid credentials for another user than the AOR's (403)",
    "realm-mismatch": "valid credentials for another of the SBC's realms than the AOR's (403)",
}

_AUTHORIZATION: Final = "Authorization"
_PROXY_AUTHORIZATION: Final = "Proxy-Authorization"


class AuthenticationError(SipError):
    """A request refused by digest authentication.

    ``status`` is 401 or 407 (a challenge, whose ``headers`` carry one
    ``WWW-Authenticate`` / ``Proxy-Authenticate`` per offered algorithm),
    403 (valid credentials for the wrong user or realm) or 400 (malformed).
    ``failure`` is None for a plain first challenge (no credentials for the
    realm yet) or one of the keys of :data:`FAILURES`. ``username`` is the
    user name the credentials claimed (None without credentials), for logs;
    no password or hash is ever carried.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        failure: str | None,
        username: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status, reason, headers=headers)
        self.failure = failure
        self.username = username

    @property
    def is_challenge(self) -> bool:
        """True for a 401/407 (the client may retry with credentials)."""
        return self.status in (401, 407)


def _canonical_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in algorithms:
        algo = normalize_algorithm(name)
        if algo is None:
            raise ValueError(f"unsupported digest algorithm {name!r}")
        if algo not in out:
            out.append(algo)
    if not out:
        raise ValueError("at least one digest algorithm is needed")
    return tuple(out)


def _uri_matches(digest_uri: str, request: Request) -> bool:
    """The digest uri names the Request-URI: the same text, or RFC 3261 §19.1.4-equal URIs."""
    if digest_uri == request.uri_text:
        return True
    try:
        return parse_uri(digest_uri).rfc_equal(request.uri)
    except (ParseError, ValueError):
        return False


@implementer(IAuthenticator)
class DigestAuthenticator:
    """SIP digest authentication against a :class:`~sbc.auth.userdb.UserDatabase`.

    ``secret`` keys the nonces' MAC (pass ``secrets.token_bytes(32)`` once per
    process: nonces then survive a reload of the configuration, not a
    restart). ``users`` returns the current database each time it is called.
    ``algorithms`` (``"SHA-256"``, ``"MD5"``, in the order offered) and
    ``nonce_lifetime`` (seconds) are the defaults of every call; both are
    plain attributes the owner may change. ``max_tracked_nonces`` bounds the
    nonce-count tracker.
    """

    def __init__(
        self,
        secret: bytes,
        users: Callable[[], UserDatabase],
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        max_tracked_nonces: int = MAX_TRACKED_NONCES,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the nonce secret must be at least {MIN_SECRET_BYTES} bytes")
        if nonce_lifetime <= 0:
            raise ValueError("nonce_lifetime must be positive")
        self._secret = secret
        self._users = users
        self.algorithms = _canonical_algorithms(algorithms)
        self.nonce_lifetime = float(nonce_lifetime)
        self._counts = NonceCountTracker(max_tracked_nonces)

    @property
    def tracked_nonces(self) -> int:
        """How many nonces the replay tracker holds now."""
        return len(self._counts)

    # -- the IAuthenticator methods --------------------------------------------

    def authenticate(
        self,
        request: Request,
        *,
        realm: str,
        user: str | None,
        registrar: bool,
        now: float,
        algorithms: Sequence[str] | None = None,
    ) -> str:
        """The authenticated user name, or raise :class:`AuthenticationError`.

        See :meth:`sbc.interfaces.IAuthenticator.authenticate`.
        """
        offered = self.algorithms if algorithms is None else _canonical_algorithms(algorithms)
        header = _AUTHORIZATION if registrar else _PROXY_AUTHORIZATION
        users = self._users()
        mine: DigestCredentials | None = None
        other_realms: list[DigestCredentials] = []
        for value in request.headers.get_all(header):
            try:
                credentials = parse_credentials(value)
            except MalformedCredentialsError:
                raise self._malformed(header, None) from None
            if credentials is None:
                continue  # another scheme: not ours
            claimed = credentials.realm
            if claimed is None:
                raise self._malformed(header, credentials.username)
            if claimed == realm:
                if mine is None:
                    mine = credentials
            elif claimed in users.realms:
                other_realms.append(credentials)
        if mine is None:
            for credentials in other_realms:
                try:
                    self._check(
                        credentials,
                        request,
                        credentials.realm or "",
                        users,
                        registrar,
                        now,
                        offered,
                    )
                except AuthenticationError:
                    continue
                raise AuthenticationError(
                    403, "Forbidden", failure="realm-mismatch", username=credentials.username
                )
            raise self._challenge(realm, registrar, now, offered, failure=None, username=None)
        username = self._check(mine, request, realm, users, registrar, now, offered)
        if user is not None and username != user:
            raise AuthenticationError(403, "Forbidden", failure="user-mismatch", username=username)
        return username

    def strip_credentials(self, request: Request, realms: Iterable[str]) -> None:
        """Remove the credentials for ``realms`` from the request; keep every other one.

        See :meth:`sbc.interfaces.IAuthenticator.strip_credentials`.
        """
        drop = set(realms)
        headers = request.headers
        for name in (_AUTHORIZATION, _PROXY_AUTHORIZATION):
            values = headers.get_all(name)
            kept = [v for v in values if credentials_realm(v) not in drop]
            if len(kept) != len(values):
                headers.remove(name)
                for value in kept:
                    headers.add(name, value)

    # -- helpers ---------------------------------------------------------------

    def challenge(
        self,
        *,
        realm: str,
        registrar: bool,
        now: float,
        algorithms: Sequence[str] | None = None,
    ) -> AuthenticationError:
        """A first challenge for ``realm`` (failure None), for callers that want one outright."""
        offered = self.algorithms if algorithms is None else _canonical_algorithms(algorithms)
        return self._challenge(realm, registrar, now, offered, failure=None, username=None)

    def _challenge(
        self,
        realm: str,
        registrar: bool,
        now: float,
        offered: tuple[str, ...],
        *,
        failure: str | None,
        username: str | None,
        stale: bool = False,
    ) -> AuthenticationError:
        nonce = mint_nonce(self._secret, now)
        name = "WWW-Authenticate" if registrar else "Proxy-Authenticate"
        tail = ", stale=true" if stale else ""
        headers = tuple(
            (
                name,
                f'Digest realm={quote(realm)}, nonce="{nonce}", algorithm={algorithm},'
                f' qop="auth"{tail}',
            )
            for algorithm in offered
        )
        if registrar:
            status, reason = 401, "Unauthorized"
        else:
            status, reason = 407, "Proxy Authentication Required"
        return AuthenticationError(
            status, reason, failure=failure, username=username, headers=headers
        )

    @staticmethod
    def _malformed(header: str, username: str | None) -> AuthenticationError:
        return AuthenticationError(
            400, f"Bad Request - malformed {header} header", failure="malformed", username=username
        )

    def _check(
        self,
        credentials: DigestCredentials,
        request: Request,
        realm: str,
        users: UserDatabase,
        registrar: bool,
        now: float,
        offered: tuple[str, ...],
    ) -> str:
        """The verified user name of ``credentials`` for ``realm``, or raise."""
        header = _AUTHORIZATION if registrar else _PROXY_AUTHORIZATION
        username = credentials.username
        nonce = credentials.nonce
        digest_uri = credentials.uri
        response = credentials.response
        if username is None or nonce is None or digest_uri is None or response is None:
            raise self._malformed(header, username)

        def refuse(failure: str, stale: bool = False) -> AuthenticationError:
            return self._challenge(
                realm, registrar, now, offered, failure=failure, username=username, stale=stale
            )

        qop = credentials.qop
        if qop is None or qop.lower() != "auth":
            raise refuse("unsupported-qop")
        nc_text = credentials.nc
        cnonce = credentials.cnonce
        nc = None if nc_text is None else parse_nc(nc_text)
        if nc_text is None or nc is None or not cnonce:
            raise self._malformed(header, username)
        algorithm = normalize_algorithm(credentials.algorithm or "MD5")
        if algorithm is None or algorithm not in offered:
            raise refuse("algorithm-not-offered")
        if not _uri_matches(digest_uri, request):
            raise AuthenticationError(
                400,
                "Bad Request - digest uri does not match the Request-URI",
                failure="uri-mismatch",
                username=username,
            )
        lifetime = self.nonce_lifetime
        freshness = check_nonce(self._secret, nonce, now, lifetime)
        if freshness == "invalid":
            raise refuse("invalid-nonce")
        ha1 = users.ha1(username, realm, algorithm)
        if ha1 is None:
            raise refuse(
                "unknown-user" if (username, realm) not in users else "algorithm-unavailable"
            )
        expected = compute_response(
            algorithm, ha1, request.method, digest_uri, nonce, nc_text, cnonce, qop
        )
        if not same_digest(response, expected):
            raise refuse("wrong-response")
        if freshness == "stale":
            raise refuse("stale-nonce", stale=True)
        count = self._counts.check(nonce, nc)
        if count == "replayed":
            raise refuse("replayed-nc")
        if count == "forgotten":
            raise refuse("forgotten-nonce", stale=True)
        self._counts.accept(nonce, nc, now, lifetime)
        return username
