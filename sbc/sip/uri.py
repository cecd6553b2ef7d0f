"""SIP, SIPS and tel URIs: parse, serialize, compare.

Grammar: RFC 3261 §19.1 and §25.1 (``sip:`` / ``sips:``), RFC 3966 (``tel:``).
Comparison: RFC 3261 §19.1.4 and RFC 3966 §4 (:meth:`URI.rfc_equal`).

Components are kept exactly as written (escaped form, original case), so a
parsed URI serializes back to the very text it came from; only the scheme is
stored lower-cased, and the original text is remembered for :meth:`URI.serialize`.
Structural ``==`` compares the stored fields; :meth:`URI.rfc_equal` is the RFC rule.

Validation uses ``str`` methods and character-class regexes only (no nested
quantifiers), so every check is linear in the input length.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Literal, NoReturn, cast

from sbc.sip.errors import ParseError

__all__ = ["URI", "UnsupportedSchemeError", "host_text", "parse_uri", "unescape"]


class UnsupportedSchemeError(ParseError):
    """A syntactically valid absoluteURI whose scheme is not sip, sips or tel.

    RFC 3261 §8.2.2.1: such a Request-URI is answered with 416.
    """

    def __init__(self, scheme: str) -> None:
        super().__init__("Unsupported URI Scheme", status=416)
        self.scheme = scheme


# --- character classes (RFC 3261 §25.1) --------------------------------------
# alphanum = ALPHA / DIGIT ; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
# unreserved = alphanum / mark ; escaped = "%" HEXDIG HEXDIG (checked once per text)
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
# plus the telephone-subscriber (RFC 2806) characters that are not delimiters here:
# "#" (dtmf-digit) and the token-chars "^" "`" "|" of future-extension.
_user_ok = re.compile(rf"[{_UNRESERVED}%&=+$,;?/#^`|]+").fullmatch
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_password_ok = re.compile(rf"[{_UNRESERVED}%&=+$,]*").fullmatch
# pname = 1*paramchar ; pvalue = 1*paramchar
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
_paramchars_ok = re.compile(rf"[{_UNRESERVED}%\[\]/:&+$]+").fullmatch
# hname = 1*( hnv-unreserved / unreserved / escaped ) ; hvalue = *( same )
# hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_hname_ok = re.compile(rf"[{_UNRESERVED}%\[\]/?:+$]+").fullmatch
_hvalue_ok = re.compile(rf"[{_UNRESERVED}%\[\]/?:+$]*").fullmatch
# hostname characters; the label structure is checked with str methods
_hostchars_ok = re.compile(r"[A-Za-z0-9.\-]+").fullmatch
_ipv6chars_ok = re.compile(r"[0-9A-Fa-f:.]+").fullmatch
# a "%" not followed by two hex digits
_bad_escape = re.compile(r"%(?![0-9A-Fa-f]{2})").search
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_scheme_ok = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*").fullmatch
# uric = reserved / unreserved / escaped (plus "[" "]" of RFC 2732 literal addresses)
_uric_ok = re.compile(rf"[{_UNRESERVED}%;/?:@&=+$,\[\]]+").fullmatch

# --- tel (RFC 3966 §3) --------------------------------------------------------
# global-number-digits = "+" *phonedigit DIGIT *phonedigit
# phonedigit = DIGIT / [ visual-separator ] ; visual-separator = "-" / "." / "(" / ")"
_global_digits_ok = re.compile(r"\+[\-.()]*[0-9][0-9\-.()]*").fullmatch
# local-number-digits = *phonedigit-hex (HEXDIG / "*" / "#") *phonedigit-hex
_local_digits_ok = re.compile(r"[\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*").fullmatch
# pname = 1*( alphanum / "-" )
_tel_pname_ok = re.compile(r"[A-Za-z0-9\-]+").fullmatch
# extension = ";ext=" 1*phonedigit
_tel_ext_ok = re.compile(r"[0-9\-.()]+").fullmatch
# isdn-subaddress = ";isub=" 1*uric  (";" excluded: it ends the parameter)
_tel_isub_ok = re.compile(rf"[{_UNRESERVED}%/?:@&=+$,\[\]]+").fullmatch
_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")

# RFC 2396 "reserved": an escaped reserved character is NOT equivalent to the
# character itself (RFC 3261 §19.1.4).
_RESERVED = frozenset(";/?:@&=+$,")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
# parameters that must match when present in either URI (RFC 3261 §19.1.4)
_MUST_MATCH_PARAMS = frozenset({"user", "ttl", "method", "maddr", "transport"})
_SCHEMES = frozenset({"sip", "sips", "tel"})


def _fail(what: str) -> NoReturn:
    raise ParseError(f"malformed URI: {what}")


class _Unset(enum.Enum):
    KEEP = 0


_KEEP: Literal[_Unset.KEEP] = _Unset.KEEP

_setattr = object.__setattr__


class _URIFields:
    """Storage layout shared by :class:`URI` and the parser's draft class."""

    __slots__ = (
        "_hash",
        "_text",
        "headers",
        "host",
        "params",
        "password",
        "port",
        "scheme",
        "user",
    )

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    headers: tuple[tuple[str, str], ...]
    _text: str | None
    _hash: int | None


class _URIDraft(_URIFields):
    """Mutable twin of :class:`URI`: filled by the parser, then turned into a URI."""

    __slots__ = ()


class URI(_URIFields):
    """A parsed ``sip:``, ``sips:`` or ``tel:`` URI (immutable, hashable).

    For ``tel:`` URIs, ``host`` holds the telephone number as written and
    ``user``, ``password``, ``port`` and ``headers`` are empty.
    """

    __slots__ = ()

    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Iterable[tuple[str, str | None]] = (),
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"unsupported URI scheme {scheme!r}")
        if not host:
            raise ValueError("URI host must not be empty")
        _setattr(self, "scheme", scheme)
        _setattr(self, "user", user)
        _setattr(self, "password", password)
        _setattr(self, "host", host)
        _setattr(self, "port", port)
        _setattr(self, "params", tuple(params))
        _setattr(self, "headers", tuple(headers))
        _setattr(self, "_text", None)
        _setattr(self, "_hash", None)

    # -- value-object plumbing ------------------------------------------------

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("URI is immutable; use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("URI is immutable")

    def _fields(
        self,
    ) -> tuple[
        str,
        str | None,
        str | None,
        str,
        int | None,
        tuple[tuple[str, str | None], ...],
        tuple[tuple[str, str], ...],
    ]:
        return (
            self.scheme,
            self.user,
            self.password,
            self.host,
            self.port,
            self.params,
            self.headers,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, URI):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(self._fields())
            _setattr(self, "_hash", h)
        return h

    def __reduce__(self) -> tuple[type[URI], tuple[object, ...]]:
        return (URI, self._fields())

    def __repr__(self) -> str:
        return f"URI({self.serialize()!r})"

    def __str__(self) -> str:
        return self.serialize()

    # -- accessors ------------------------------------------------------------

    @property
    def is_secure(self) -> bool:
        """True for a ``sips:`` URI."""
        return self.scheme == "sips"

    @property
    def host_is_ip(self) -> bool:
        """True when the host is an IPv4 address or a bracketed IPv6 reference."""
        host = self.host
        if self.scheme == "tel":
            return False
        if host.startswith("["):
            return True
        bare = host.rstrip(".")
        # a hostname's top label starts with ALPHA; an IPv4 address ends in digits
        return bare[bare.rfind(".") + 1 : bare.rfind(".") + 2].isdigit()

    def param(self, name: str) -> str | None:
        """First value of parameter ``name`` (any case); "" for a flag, None if absent."""
        name = name.lower()
        for pname, value in self.params:
            if pname.lower() == name:
                return "" if value is None else value
        return None

    def has_param(self, name: str) -> bool:
        """True when a parameter called ``name`` (any case) is present."""
        name = name.lower()
        return any(pname.lower() == name for pname, _ in self.params)

    # -- derived URIs ---------------------------------------------------------

    def replace(
        self,
        *,
        scheme: str | Literal[_Unset.KEEP] = _KEEP,
        user: str | Literal[_Unset.KEEP] | None = _KEEP,
        password: str | Literal[_Unset.KEEP] | None = _KEEP,
        host: str | Literal[_Unset.KEEP] = _KEEP,
        port: int | Literal[_Unset.KEEP] | None = _KEEP,
        params: Iterable[tuple[str, str | None]] | Literal[_Unset.KEEP] = _KEEP,
        headers: Iterable[tuple[str, str]] | Literal[_Unset.KEEP] = _KEEP,
    ) -> URI:
        """A copy with the given components changed (values as they are to be written)."""
        return URI(
            self.scheme if scheme is _KEEP else scheme,
            self.user if user is _KEEP else user,
            self.password if password is _KEEP else password,
            self.host if host is _KEEP else host,
            self.port if port is _KEEP else port,
            self.params if params is _KEEP else params,
            self.headers if headers is _KEEP else headers,
        )

    def with_scheme(self, scheme: str) -> URI:
        """The same URI under ``sip`` or ``sips`` (only between those two)."""
        scheme = scheme.lower()
        if scheme == self.scheme:
            return self
        if "tel" in (scheme, self.scheme):
            raise ValueError("cannot convert between tel and sip/sips URIs")
        return self.replace(scheme=scheme)

    def with_param(self, name: str, value: str | None = None) -> URI:
        """A copy with parameter ``name`` set (replacing any of that name, any case)."""
        lname = name.lower()
        params = [p for p in self.params if p[0].lower() != lname]
        params.append((name, value))
        return self.replace(params=params)

    def without_params(self, *names: str) -> URI:
        """A copy without the named parameters (any case)."""
        drop = {n.lower() for n in names}
        return self.replace(params=[p for p in self.params if p[0].lower() not in drop])

    # -- text -----------------------------------------------------------------

    def serialize(self) -> str:
        """The URI text; a parsed URI gives back exactly the text it was parsed from."""
        text = self._text
        if text is None:
            text = self._build_text()
            _setattr(self, "_text", text)
        return text

    def _build_text(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":")
                parts.append(self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.params:
            parts.append(f";{name}" if value is None else f";{name}={value}")
        sep = "?"
        for name, value in self.headers:
            parts.append(f"{sep}{name}={value}")
            sep = "&"
        return "".join(parts)

    # -- comparison -----------------------------------------------------------

    def rfc_equal(self, other: URI) -> bool:
        """URI equivalence per RFC 3261 §19.1.4 (sip/sips) or RFC 3966 §4 (tel).

        Userinfo is compared case-sensitively, everything else case-insensitively;
        an escaped character equals itself unless it is a "reserved" one. Ports
        and the user/ttl/method/maddr/transport parameters must match when
        present in either URI; other parameters only when present in both.
        Headers must all be present in both and equal (unescaped).
        """
        if self.scheme != other.scheme:
            return False
        if self.scheme == "tel":
            return _tel_equal(self, other)
        if self.port != other.port:
            return False
        if _canon_opt(self.user) != _canon_opt(other.user):
            return False
        if _canon_opt(self.password) != _canon_opt(other.password):
            return False
        if _host_key(self.host) != _host_key(other.host):
            return False
        mine = _param_map(self.params)
        theirs = _param_map(other.params)
        for name, value in mine.items():
            if name in theirs:
                if theirs[name] != value:
                    return False
            elif name in _MUST_MATCH_PARAMS:
                return False
        for name in theirs:
            if name not in mine and name in _MUST_MATCH_PARAMS:
                return False
        return _header_key(self.headers) == _header_key(other.headers)


# --- escaping ----------------------------------------------------------------


def unescape(s: str) -> str:
    """Decode every ``%HH`` escape of ``s`` (octets read as UTF-8).

    Octets that are not valid UTF-8 are kept as surrogate escapes, so two
    different escaped byte strings never unescape to the same text.
    Raises ParseError on a ``%`` not followed by two hex digits.
    """
    if "%" not in s:
        return s
    pieces = s.split("%")
    buf = bytearray(pieces[0].encode("utf-8", "surrogatepass"))
    for piece in pieces[1:]:
        hh = piece[:2]
        if len(hh) != 2 or hh[0] not in _HEXDIGITS or hh[1] not in _HEXDIGITS:
            raise ParseError("malformed URI: bad %-escape")
        buf.append(int(hh, 16))
        buf += piece[2:].encode("utf-8", "surrogatepass")
    return buf.decode("utf-8", "surrogateescape")


def _canon(s: str) -> str:
    """Comparison form: unreserved ASCII escapes decoded, the rest upper-case ``%HH``."""
    if "%" not in s:
        return s
    pieces = s.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        hh = piece[:2]
        if len(hh) == 2 and hh[0] in _HEXDIGITS and hh[1] in _HEXDIGITS:
            code = int(hh, 16)
            char = chr(code)
            if 0x20 < code < 0x7F and char not in _RESERVED and char != "%":
                out.append(char)
            else:
                out.append("%" + hh.upper())
            out.append(piece[2:])
        else:
            out.append("%" + piece)
    return "".join(out)


def host_text(address: str) -> str:
    """An address as the host of a URI, Via or warn-agent: an IPv6 address in brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _canon_opt(s: str | None) -> str | None:
    return None if s is None else _canon(s)


def _host_key(host: str) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        try:
            return "[" + ipv6_address(host[1:-1]).compressed + "]"
        except ValueError:
            return host
    return host


def _param_map(params: tuple[tuple[str, str | None], ...]) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    for name, value in params:
        key = _canon(name).lower()
        if key not in result:
            result[key] = None if value is None else _canon(value).lower()
    return result


def _header_key(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return sorted((_unescape_lenient(n).lower(), _unescape_lenient(v)) for n, v in headers)


def _unescape_lenient(s: str) -> str:
    try:
        return unescape(s)
    except ParseError:
        return s


def _tel_number_key(number: str) -> str:
    return number.translate(_VISUAL_SEPARATORS).lower()


def _tel_param_map(params: tuple[tuple[str, str | None], ...]) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    for name, value in params:
        key = name.lower()
        if key in result:
            continue
        if value is None:
            result[key] = None
        elif key == "ext" or (key == "phone-context" and value.startswith("+")):
            result[key] = _tel_number_key(value)
        else:
            result[key] = _canon(value).lower()
    return result


def _tel_equal(a: URI, b: URI) -> bool:
    """RFC 3966 §4: same kind and digits (no visual separators), same parameter set."""
    if _tel_number_key(a.host) != _tel_number_key(b.host):
        return False
    return _tel_param_map(a.params) == _tel_param_map(b.params)


# --- parsing -----------------------------------------------------------------


def _check_hostname(host: str, allow_ipv4: bool = True) -> None:
    """hostname / IPv4address (RFC 3261 §25.1), checked with str methods."""
    if _hostchars_ok(host) is None:
        _fail("bad host")
    # domainlabel/toplabel: no empty label, no label starting or ending with "-"
    if (
        host[0] in ".-"
        or ".." in host
        or ("-" in host and (".-" in host or "-." in host or host[-1] == "-"))
    ):
        _fail("bad host")
    bare = host[:-1] if host[-1] == "." else host
    top = bare[bare.rfind(".") + 1 :]
    if top[0].isalpha():
        return
    # not a hostname: must be IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
    if allow_ipv4 and host[-1] != ".":
        octets = host.split(".")
        if len(octets) == 4 and all(o.isdigit() and len(o) <= 3 and int(o) <= 255 for o in octets):
            return
    _fail("bad host")


def ipv6_address(text: str) -> ipaddress.IPv6Address:
    """The IPv6 address ``text`` names; ValueError when it names none.

    Besides RFC 4291 text this tolerates the form RFC 3261's grammar allowed
    by mistake, a ``::`` followed by ``:`` and an IPv4 address
    (``2001:db8:::192.0.2.1``, the same address as ``2001:db8::192.0.2.1``):
    RFC 5118 §4.10 asks implementations to accept both.
    """
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        head, sep, tail = text.rpartition(":::")
        if not sep or "." not in tail or "::" in head:
            raise
        return ipaddress.IPv6Address(f"{head}::{tail}")


def _check_ipv6_reference(host: str) -> None:
    """IPv6reference = "[" IPv6address "]"."""
    inner = host[1:-1]
    if host[-1] != "]" or not inner or _ipv6chars_ok(inner) is None:
        _fail("bad IPv6 reference")
    try:
        ipv6_address(inner)
    except ValueError:
        _fail("bad IPv6 reference")


def _parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if _paramchars_ok(name) is None:
            _fail("bad parameter")
        if eq:
            if _paramchars_ok(value) is None:
                _fail("bad parameter")
            params.append((name, value))
        else:
            params.append((name, None))
    return tuple(params)


def _parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or _hname_ok(name) is None or _hvalue_ok(value) is None:
            _fail("bad header")
        headers.append((name, value))
    return tuple(headers)


def _parse_sip(text: str, scheme: str, start: int) -> URI:
    """SIP-URI / SIPS-URI after the "sip:" / "sips:" prefix."""
    at = text.find("@", start)
    user: str | None
    password: str | None
    if at >= 0:
        # userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
        user, colon, pw = text[start:at].partition(":")
        if _user_ok(user) is None:
            _fail("bad user")
        if colon:
            if _password_ok(pw) is None:
                _fail("bad password")
            password = pw
        else:
            password = None
        start = at + 1
    else:
        user = password = None

    # hostport ends at the first ";" (uri-parameters) or "?" (headers)
    end = len(text)
    semi = text.find(";", start)
    if semi >= 0:
        end = semi
    query = text.find("?", start, end)
    if query >= 0:
        end = query
    if end == start:
        _fail("missing host")

    port: int | None = None
    if text[start] == "[":
        close = text.find("]", start, end)
        if close < 0:
            _fail("bad IPv6 reference")
        host = text[start : close + 1]
        _check_ipv6_reference(host)
        port_text = text[close + 1 : end]
        if port_text:
            if port_text[0] != ":":
                _fail("bad host")
            port = _parse_port(port_text[1:])
    else:
        host, colon, port_text = text[start:end].partition(":")
        if not host:
            _fail("missing host")
        _check_hostname(host)
        if colon:
            port = _parse_port(port_text)

    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    if end < len(text):
        if text[end] == ";":
            param_text, q, header_text = text[end + 1 :].partition("?")
            params = _parse_params(param_text)
        else:
            q, header_text = "?", text[end + 1 :]
        if q:
            headers = _parse_headers(header_text)
    return _make(scheme, user, password, host, port, params, headers, text)


def _parse_port(text: str) -> int:
    # port = 1*DIGIT, range-checked to 0..65535
    if not text or not text.isascii() or not text.isdigit() or len(text.lstrip("0")) > 5:
        _fail("bad port")
    port = int(text)
    if port > 65535:
        _fail("bad port")
    return port


def _parse_tel(text: str, start: int) -> URI:
    """telephone-uri = "tel:" telephone-subscriber (RFC 3966 §3)."""
    number, semi, param_text = text[start:].partition(";")
    is_global = number.startswith("+")
    if is_global:
        if _global_digits_ok(number) is None:
            _fail("bad telephone number")
    elif _local_digits_ok(number) is None:
        _fail("bad telephone number")
    params: list[tuple[str, str | None]] = []
    if semi:
        for item in param_text.split(";"):
            name, eq, value = item.partition("=")
            if _tel_pname_ok(name) is None:
                _fail("bad tel parameter")
            if not eq:
                params.append((name, None))
                continue
            lname = name.lower()
            if lname == "phone-context":
                # descriptor = domainname / global-number-digits
                if value.startswith("+"):
                    if _global_digits_ok(value) is None:
                        _fail("bad phone-context")
                elif value:
                    _check_hostname(value, allow_ipv4=False)
                else:
                    _fail("bad phone-context")
            elif lname == "ext":
                if _tel_ext_ok(value) is None:
                    _fail("bad ext")
            elif lname == "isub":
                if _tel_isub_ok(value) is None:
                    _fail("bad isub")
            elif _paramchars_ok(value) is None:
                _fail("bad tel parameter")
            params.append((name, value))
    # RFC 3966 makes ";phone-context=" mandatory on a local number; it is not
    # enforced here because many deployed peers send "tel:1234".
    return _make("tel", None, None, number, None, tuple(params), (), text)


def _make(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: tuple[tuple[str, str | None], ...],
    headers: tuple[tuple[str, str], ...],
    text: str,
) -> URI:
    # plain slot stores on the mutable twin, then one class switch: much
    # cheaper than nine object.__setattr__ calls on the frozen class
    uri = object.__new__(_URIDraft)
    uri.scheme = scheme
    uri.user = user
    uri.password = password
    uri.host = host
    uri.port = port
    uri.params = params
    uri.headers = headers
    uri._text = text
    uri._hash = None
    uri.__class__ = URI  # type: ignore[assignment]
    return cast(URI, uri)


def _parse(text: str) -> URI:
    colon = text.find(":")
    if colon <= 0:
        _fail("no scheme")
    raw_scheme = text[:colon]
    scheme = raw_scheme.lower()
    if "%" in text and _bad_escape(text) is not None:
        _fail("bad %-escape")
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(text, scheme, colon + 1)
    if scheme == "tel":
        return _parse_tel(text, colon + 1)
    if _scheme_ok(raw_scheme) is not None and _uric_ok(text, colon + 1) is not None:
        raise UnsupportedSchemeError(scheme)
    _fail("bad scheme")


_parse_cached = functools.lru_cache(maxsize=4096)(_parse)


def parse_uri(text: str) -> URI:
    """Parse a ``sip:``, ``sips:`` or ``tel:`` URI.

    Raises :class:`UnsupportedSchemeError` (416) for a well-formed absoluteURI
    of any other scheme and :class:`ParseError` (400) for anything malformed.
    Results are cached (URIs are immutable), so repeated URIs cost a lookup.
    """
    return _parse_cached(text)
