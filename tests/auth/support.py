"""A digest client for the tests: answers the SBC's challenges the way a phone does."""

from __future__ import annotations

from sbc.auth.digest import compute_ha1, compute_response, parse_credentials
from sbc.sip.headers import Headers, quote
from sbc.sip.message import Request

SECRET = bytes(range(32))
REALM = "lab.test"
RURI = "sip:lab.test"
INVITE_RURI = "sip:bob@lab.test"


def request(
    method: str = "REGISTER",
    uri: str = RURI,
    aor: str = "sip:alice@lab.test",
    extra: tuple[tuple[str, str], ...] = (),
) -> Request:
    """A request from alice (From and To are ``aor`` for REGISTER, To is the R-URI otherwise)."""
    to = aor if method == "REGISTER" else uri
    return Request(
        method,
        uri,
        Headers(
            [
                ("Via", "SIP/2.0/TLS 127.0.0.3:5071;branch=z9hG4bKa1"),
                ("Max-Forwards", "70"),
                ("From", f"<{aor}>;tag=f1"),
                ("To", f"<{to}>"),
                ("Call-ID", "c1@127.0.0.3"),
                ("CSeq", f"1 {method}"),
                *extra,
            ]
        ),
    )


def challenge_params(value: str) -> dict[str, str]:
    """The parameters of one WWW-Authenticate / Proxy-Authenticate value (same grammar)."""
    parsed = parse_credentials(value)
    assert parsed is not None
    return dict(parsed.params)


def answer(
    challenge: str,
    *,
    user: str = "alice",
    password: str = "secret",
    method: str = "REGISTER",
    uri: str = RURI,
    nc: int = 1,
    cnonce: str = "0a4f113b",
    realm: str | None = None,
    algorithm: str | None = None,
) -> str:
    """Credentials answering ``challenge`` as a phone computes them (qop=auth)."""
    params = challenge_params(challenge)
    realm = params["realm"] if realm is None else realm
    algorithm = params["algorithm"] if algorithm is None else algorithm
    nonce = params["nonce"]
    nc_text = f"{nc:08x}"
    ha1 = compute_ha1(algorithm, user, realm, password)
    response = compute_response(algorithm, ha1, method, uri, nonce, nc_text, cnonce, "auth")
    return (
        f"Digest username={quote(user)}, realm={quote(realm)}, nonce={quote(nonce)},"
        f" uri={quote(uri)}, response={quote(response)}, algorithm={algorithm},"
        f" cnonce={quote(cnonce)}, qop=auth, nc={nc_text}"
    )
