"""SIP header fields: names, the ordered multimap, and typed values.

RFC 3261 §7.3 and §20. Header names are case-insensitive and many have a
compact form (§7.3.3); :func:`canonical_name` maps every spelling to one.
:class:`Headers` keeps one ``(name, raw value)`` pair per header line in the
order received; typed values (:class:`Via`, :class:`NameAddr`,
:class:`CSeq`, :class:`Warning`) are parsed from those raw strings on demand.

Everything here works in linear time: values are split with ``str``
methods and regexes in which every repeated character class is followed by
a character it cannot match (a delimiter), so a failing match gives back at
most what it took once: no pattern can backtrack more than linearly. (No
possessive quantifiers: sbc also runs on PyPy 3.9, whose ``re`` has none;
with the delimiters they would change nothing but the constant.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Final, Optional, Protocol, Union, cast

from sbc.sip.errors import ParseError
from sbc.sip.uri import URI, UnsupportedSchemeError, parse_uri

__all__ = [
    "STAR",
    "CSeq",
    "HeaderValue",
    "Headers",
    "NameAddr",
    "Via",
    "Warning",
    "canonical_name",
    "is_token",
    "parse_uint",
    "quote",
    "split_list",
]


class _Serializable(Protocol):
    def serialize(self) -> str: ...


#: What :meth:`Headers.add` and friends accept as a value: the raw text, an
#: int (Max-Forwards, Expires, ...) or any typed value with ``serialize()``.
HeaderValue = Union[str, int, _Serializable]

Param = tuple[str, Optional[str]]
Params = tuple[Param, ...]

# ---------------------------------------------------------------------------
# Header names
# ---------------------------------------------------------------------------

# RFC 3261 §7.3.3 and the extension RFCs (3265/6665, 3515, 3892, 4028, 3841,
# 4474) define the compact forms.
_COMPACT: Final[dict[str, str]] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Header fields whose value is NOT a comma-separated list (RFC 3261 §7.3.1):
# Headers.values() never splits these.
_SINGLE: Final[tuple[str, ...]] = (
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Content-Disposition",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Event",
    "Expires",
    "Flow-Timer",
    "From",
    "Identity",
    "Identity-Info",
    "Info-Package",
    "Join",
    "Max-Breadth",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "RAck",
    "Refer-To",
    "Referred-By",
    "Replaces",
    "Reply-To",
    "Retry-After",
    "RSeq",
    "Server",
    "Session-Expires",
    "SIP-ETag",
    "SIP-If-Match",
    "Subject",
    "Subscription-State",
    "Target-Dialog",
    "Timestamp",
    "To",
    "User-Agent",
    "WWW-Authenticate",
)

_LISTS: Final[tuple[str, ...]] = (
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Call-Info",
    "Contact",
    "Content-Encoding",
    "Content-Language",
    "Diversion",
    "Error-Info",
    "Geolocation",
    "History-Info",
    "In-Reply-To",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Proxy-Require",
    "Reason",
    "Record-Route",
    "Recv-Info",
    "Reject-Contact",
    "Request-Disposition",
    "Require",
    "Route",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "Service-Route",
    "Supported",
    "Unsupported",
    "Via",
    "Warning",
)

# spelling -> canonical name, for every known header in its usual spellings
# (canonical, lower, upper, title case) and every compact form in both cases.
_CANON: dict[str, str] = {}
for _canon in (*_SINGLE, *_LISTS):
    for _spelling in (_canon, _canon.lower(), _canon.upper(), _canon.title()):
        _CANON[_spelling] = _canon
for _short, _canon in _COMPACT.items():
    _CANON[_short] = _CANON[_short.upper()] = _canon
del _short, _canon, _spelling

_NON_LIST: Final[frozenset[str]] = frozenset(_SINGLE)

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_token_match = _TOKEN_RE.fullmatch
# gen-value = token / host / quoted-string (quoted strings checked apart)
_param_value_match = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+").fullmatch
# The usual parameter text: token characters, ':' '[' ']' (hosts), ';' and '='.
_simple_params_match = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\];=]*").fullmatch
_hostname_match = re.compile(r"[A-Za-z0-9\-._]+").fullmatch
_ipv6_match = re.compile(r"\[[0-9A-Fa-f:.]+\]").fullmatch
_digits_match = re.compile(r"[0-9]+").fullmatch
# scheme ":" then visible ASCII except SP DQUOTE "<" ">" (the URI proper is
# parsed by sbc.sip.uri on first use)
_uri_text_match = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[!#-;=?-~]*").fullmatch
# One to three generic-params of tokens without blanks ("branch=z9hG4bK1;rport").
# The groups are optional, not repeated, and each class stops at a delimiter
# it excludes ("=", ";", the end): linear, match or not.
_few_params_match = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+)(?:=([A-Za-z0-9\-.!%*_+`'~:\[\]]+))?"
    r"(?:;([A-Za-z0-9\-.!%*_+`'~]+)(?:=([A-Za-z0-9\-.!%*_+`'~:\[\]]+))?)?"
    r"(?:;([A-Za-z0-9\-.!%*_+`'~]+)(?:=([A-Za-z0-9\-.!%*_+`'~:\[\]]+))?)?"
).fullmatch
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_qvalue_match = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?").fullmatch
# CSeq = 1*DIGIT LWS Method
_cseq_match = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)").fullmatch
# The common name-addr forms in one linear pass: an optional display name
# (a quoted-string without escapes, or tokens and blanks), "<" URI ">", rest.
# One generic-param of token characters, as _few_params_match reads them.
_FEW_PARAM = r"([A-Za-z0-9\-.!%*_+`'~]+)(?:=([A-Za-z0-9\-.!%*_+`'~:\[\]]+))?"
# The text after ">" or the host: either up to two (name-addr) or three (Via)
# simple parameters up to the end (groups a, av[, b, bv[, c, cv]]), or else
# everything that is left (last group) for the general parameter parser. The
# first branch is tried once at a fixed place and cannot backtrack into itself.
_NA_TAIL = rf"(?:;{_FEW_PARAM}(?:;{_FEW_PARAM})?\Z|(.*))"
_VIA_TAIL = rf"(?:;(?:{_FEW_PARAM}(?:;{_FEW_PARAM})?(?:;{_FEW_PARAM})?\Z|(.*)))?"
_name_addr_fast_match = re.compile(
    r"(?:\"([^\"\\]*)\"[ \t]*|([A-Za-z0-9\-.!%*_+`'~ \t]*))"
    r"<([A-Za-z][A-Za-z0-9+\-.]*:[!#-;=?-~]*)>" + _NA_TAIL,
    re.DOTALL,
).fullmatch
# An addr-spec without parameters ("Contact: sip:alice@192.0.2.1:5060"): the
# URI characters of _uri_text_match without ";", "?" and ",".
_addr_spec_fast_match = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[!#-+\--:=@-~]*").fullmatch
# The common Via form in one linear pass: SIP/2.0/transport host[:port][;params]
_via_fast_match = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?" + _VIA_TAIL,
    re.DOTALL,
).fullmatch


def is_token(text: str) -> bool:
    """True when *text* is an RFC 3261 ``token`` (one or more token chars)."""
    return (text.isalnum() and text.isascii()) or _token_match(text) is not None


def _canon_checked(name: str) -> str:
    """Canonical spelling of a header name; ParseError if it is not a token."""
    canon = _CANON.get(name) or _CANON.get(name.lower())
    if canon is not None:
        return canon
    if not is_token(name):
        raise ParseError("Malformed header name")
    return name


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name.

    Any case and every compact form of a known header map to one spelling
    (``"v"``/``"VIA"`` -> ``"Via"``, ``"i"`` -> ``"Call-ID"``); an unknown
    name is returned as given (it still matches case-insensitively).
    """
    return _CANON.get(name) or _CANON.get(name.lower()) or name


# ---------------------------------------------------------------------------
# Splitting and quoting (linear time)
# ---------------------------------------------------------------------------


def _quoted_end(text: str, start: int) -> int:
    """Index just after the quoted-string opening at ``text[start]``; -1 if open.

    Backslash escapes (quoted-pair) are honoured. Each character is looked at
    a bounded number of times, so this is linear in ``len(text)``.
    """
    i = start + 1
    q = text.find('"', i)
    while q >= 0:
        b = text.find("\\", i, q)
        if b < 0:
            return q + 1
        i = b + 2
        if i > q:
            q = text.find('"', i)
    return -1


_SPECIALS: Final = {
    ",": re.compile(r'[,"<]').search,
    ";": re.compile(r'[;"<]').search,
}


def _split_top(text: str, sep: str) -> list[str]:
    """Split on *sep* outside quoted strings and ``<...>`` (elements unstripped)."""
    search = _SPECIALS[sep]
    parts: list[str] = []
    start = pos = 0
    while True:
        m = search(text, pos)
        if m is None:
            parts.append(text[start:])
            return parts
        i = m.start()
        c = text[i]
        if c == sep:
            parts.append(text[start:i])
            start = pos = i + 1
        elif c == '"':
            end = _quoted_end(text, i)
            if end < 0:
                parts.append(text[start:])
                return parts
            pos = end
        else:
            end = text.find(">", i)
            if end < 0:
                parts.append(text[start:])
                return parts
            pos = end + 1


def _split(text: str, sep: str) -> list[str]:
    if '"' in text or "<" in text:
        return _split_top(text, sep)
    return text.split(sep)


def split_list(value: str) -> list[str]:
    """Split a header value on top-level commas (not inside quotes or ``<>``).

    Elements are stripped of surrounding whitespace; empty elements dropped.
    """
    out = []
    for part in _split(value, ","):
        part = part.strip(" \t")
        if part:
            out.append(part)
    return out


def _unquote(inner: str) -> str:
    """Undo quoted-pair escapes in the inside of a quoted-string."""
    if "\\" not in inner:
        return inner
    out = []
    i = 0
    n = len(inner)
    while i < n:
        b = inner.find("\\", i)
        if b < 0 or b == n - 1:
            out.append(inner[i:])
            break
        out.append(inner[i:b])
        out.append(inner[b + 1])
        i = b + 2
    return "".join(out)


def quote(text: str) -> str:
    """Render *text* as an RFC 3261 quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------
# Parameters and numbers
# ---------------------------------------------------------------------------


def _parse_params(text: str, what: str) -> Params:
    """Parse ``name[=value]`` items separated by ';' (the text after the first ';')."""
    m = _few_params_match(text)
    if m is not None:
        # the usual case: up to three token parameters, no blanks or quotes
        a, av, b, bv, c, cv = m.groups()
        if b is None:
            return ((a, av),)
        if c is None:
            return ((a, av), (b, bv))
        return ((a, av), (b, bv), (c, cv))
    if _simple_params_match(text):
        # no quotes, no whitespace: only empty names/values can be wrong
        if ";" not in text:
            name, eq, value = text.partition("=")
            if not name or (eq and (not value or "=" in value)):
                raise ParseError(f"Malformed {what} header parameter")
            return ((name, value if eq else None),)
        out = []
        for part in text.split(";"):
            name, eq, value = part.partition("=")
            if not name or (eq and (not value or "=" in value)):
                raise ParseError(f"Malformed {what} header parameter")
            out.append((name, value if eq else None))
        return tuple(out)
    return _parse_params_slow(text, what)


def _parse_params_slow(text: str, what: str) -> Params:
    out: list[Param] = []
    for part in _split(text, ";"):
        name, eq, value = part.partition("=")
        name = name.strip(" \t")
        if not ((name.isalnum() and name.isascii()) or _token_match(name)):
            raise ParseError(f"Malformed {what} header parameter")
        if eq:
            value = value.strip(" \t")
            if not (
                (value.isalnum() and value.isascii())
                or _param_value_match(value)
                or (value[:1] == '"' and _quoted_end(value, 0) == len(value))
            ):
                raise ParseError(f"Malformed {what} header parameter")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def _find_param(params: Params, name: str) -> str | None:
    n = name.lower()
    for k, v in params:
        if k == n or k.lower() == n:
            return "" if v is None else v
    return None


def _has_param(params: Params, name: str) -> bool:
    n = name.lower()
    return any(k == n or k.lower() == n for k, _ in params)


def _set_param(params: Params, name: str, value: str | None) -> Params:
    n = name.lower()
    out = []
    done = False
    for k, v in params:
        if k.lower() == n:
            if not done:
                out.append((name, value))
                done = True
        else:
            out.append((k, v))
    if not done:
        out.append((name, value))
    return tuple(out)


def _drop_param(params: Params, name: str) -> Params:
    n = name.lower()
    return tuple((k, v) for k, v in params if k.lower() != n)


def _params_text(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _norm_params(params: Iterable[Param] | Mapping[str, str | None]) -> Params:
    if isinstance(params, Mapping):
        return tuple(params.items())
    return tuple((k, v) for k, v in params)


def parse_uint(text: str, what: str, maximum: int = 2**32 - 1) -> int:
    """Parse ``1*DIGIT`` no larger than *maximum*; ParseError naming *what*."""
    text = text.strip(" \t")
    if len(text) > 10 or not text.isdigit() or not text.isascii():
        raise ParseError(f"Malformed {what} header")
    value = int(text)
    if value > maximum:
        raise ParseError(f"{what} value out of range")
    return value


def _parse_port(text: str, what: str) -> int:
    if not (0 < len(text) <= 5 and _digits_match(text)):
        raise ParseError(f"Malformed port in {what} header")
    port = int(text)
    if port > 65535:
        raise ParseError(f"Port out of range in {what} header")
    return port


def _first_ws(text: str) -> int:
    i = text.find(" ")
    j = text.find("\t")
    if j >= 0 and (i < 0 or j < i):
        return j
    return i


# ---------------------------------------------------------------------------
# Typed values
# ---------------------------------------------------------------------------


class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...``.

    Immutable. ``transport`` is upper-cased; ``host`` keeps IPv6 brackets;
    ``params`` are ``(name, value)`` pairs as written (``value`` is None for
    a flag such as ``;rport``). Build one with
    ``Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bK1"),))`` and add more
    parameters with :meth:`with_param`.
    """

    __slots__ = ("_host", "_params", "_port", "_protocol", "_raw", "_transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Iterable[Param] | Mapping[str, str | None] = (),
        protocol: str = "SIP/2.0",
    ) -> None:
        self._protocol = protocol
        self._transport = transport.upper()
        self._host = host
        self._port = port
        self._params = _norm_params(params)
        self._raw: str | None = None

    @property
    def protocol(self) -> str:
        """``protocol-name/protocol-version``, normally ``"SIP/2.0"``."""
        return self._protocol

    @property
    def transport(self) -> str:
        """Upper-cased transport: UDP, TCP, TLS, SCTP, WS, WSS..."""
        return self._transport

    @property
    def host(self) -> str:
        """Host of sent-by, as written (IPv6 with brackets)."""
        return self._host

    @property
    def port(self) -> int | None:
        """Port of sent-by, None when absent."""
        return self._port

    @property
    def params(self) -> Params:
        """The via-params in order, as written."""
        return self._params

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm (not a comma list); ParseError when malformed."""
        return _parse_via(text.strip(" \t"))

    @classmethod
    def _parse_slow(cls, s: str) -> Via:
        parts = s.split("/", 2)
        if len(parts) != 3:
            raise ParseError("Malformed Via header")
        name = parts[0].strip(" \t")
        version = parts[1].strip(" \t")
        if not (is_token(name) and is_token(version)):
            raise ParseError("Malformed Via header")
        rest = parts[2].lstrip(" \t")
        i = _first_ws(rest)
        if i <= 0:
            raise ParseError("Malformed Via header")
        transport = rest[:i]
        if not is_token(transport):
            raise ParseError("Malformed Via header")
        sent_by, semi, ptext = rest[i + 1 :].lstrip(" \t").partition(";")
        sent_by = sent_by.rstrip(" \t")
        if sent_by[:1] == "[":
            close = sent_by.find("]")
            host = sent_by[: close + 1]
            port_text = sent_by[close + 1 :]
            if close < 0 or not _ipv6_match(host):
                raise ParseError("Malformed Via header sent-by")
            if port_text:
                if port_text[0] != ":":
                    raise ParseError("Malformed Via header sent-by")
                port_text = port_text[1:]
                if not port_text:
                    raise ParseError("Malformed port in Via header")
        else:
            host, colon, port_text = sent_by.partition(":")
            if not _hostname_match(host):
                raise ParseError("Malformed Via header sent-by")
            if colon and not port_text:
                raise ParseError("Malformed port in Via header")
        via = cls.__new__(cls)
        via._protocol = f"{name}/{version}"
        via._transport = transport.upper()
        via._host = host
        via._port = _parse_port(port_text, "Via") if port_text else None
        via._params = _parse_params(ptext, "Via") if semi else ()
        via._raw = s
        return via

    def serialize(self) -> str:
        """The via-parm text; the original text when parsed and unchanged."""
        if self._raw is not None:
            return self._raw
        port = "" if self._port is None else f":{self._port}"
        return f"{self._protocol}/{self._transport} {self._host}{port}{_params_text(self._params)}"

    __str__ = serialize

    def param(self, name: str) -> str | None:
        """Value of a parameter (case-insensitive name); "" for a flag; None if absent."""
        return _find_param(self._params, name)

    def has_param(self, name: str) -> bool:
        """True when the parameter is present (with or without a value)."""
        return _has_param(self._params, name)

    def with_param(self, name: str, value: str | None = None) -> Via:
        """A copy with *name* set to *value* (replacing it, or appended)."""
        params = _set_param(self._params, name, value)
        return Via(self._transport, self._host, self._port, params, self._protocol)

    def without_param(self, name: str) -> Via:
        """A copy without parameter *name*."""
        params = _drop_param(self._params, name)
        return Via(self._transport, self._host, self._port, params, self._protocol)

    @property
    def branch(self) -> str | None:
        """The branch parameter (RFC 3261 §8.1.1.7), None if absent."""
        for k, v in self._params:
            if k == "branch":
                return v
        return _find_param(self._params, "branch")

    @property
    def received(self) -> str | None:
        """The received parameter (§18.2.1), None if absent."""
        return _find_param(self._params, "received")

    @property
    def maddr(self) -> str | None:
        """The maddr parameter, None if absent."""
        return _find_param(self._params, "maddr")

    @property
    def ttl(self) -> int | None:
        """The ttl parameter as an int (0..255), None if absent."""
        v = _find_param(self._params, "ttl")
        return None if v is None else parse_uint(v, "Via ttl", 255)

    @property
    def rport(self) -> int | None:
        """The rport value (RFC 3581) when it has one; None when absent or a bare flag."""
        v = _find_param(self._params, "rport")
        if not v:
            return None
        return _parse_port(v, "Via rport")

    @property
    def rport_requested(self) -> bool:
        """True when an rport parameter is present (RFC 3581 §4)."""
        return _has_param(self._params, "rport")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) of sent-by."""
        return self._host, self._port

    def _key(self) -> tuple[object, ...]:
        return (self._protocol, self._transport, self._host, self._port, self._params)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Via({self.serialize()!r})"


class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...).

    RFC 3261 §20.10/§20.20/§20.39. ``display_name`` is unquoted (None when
    absent); ``uri`` is parsed on first access; ``params`` are the header
    parameters (``tag``, ``q``, ``expires``...) in order, as written. The
    wildcard ``Contact: *`` is the :data:`STAR` instance (``is_star``).
    Build one with ``NameAddr("Alice", "sip:alice@example.com", {"tag": "1"})``.
    """

    __slots__ = ("_display_name", "_params", "_raw", "_star", "_uri", "_uri_text")

    def __init__(
        self,
        display_name: str | None,
        uri: URI | str,
        params: Iterable[Param] | Mapping[str, str | None] = (),
    ) -> None:
        self._display_name = display_name
        if isinstance(uri, str):
            self._uri: URI | None = parse_uri(uri)
            self._uri_text = uri
        else:
            self._uri = uri
            self._uri_text = uri.serialize()
        self._params = _norm_params(params)
        self._raw: str | None = None
        self._star = False

    @property
    def display_name(self) -> str | None:
        """The display name, unquoted and unescaped; None when absent."""
        return self._display_name

    @property
    def uri(self) -> URI:
        """The URI (parsed on first access; ParseError 400 if malformed).

        A well-formed URI of a scheme other than sip, sips or tel is a 400
        here too: 416 answers an unsupported Request-URI only (§21.4.14).
        """
        u = self._uri
        if u is None:
            if self._star:
                raise ParseError("Wildcard Contact has no URI")
            try:
                u = self._uri = parse_uri(self._uri_text)
            except UnsupportedSchemeError as error:
                raise ParseError(f"Unsupported URI scheme {error.scheme!r} in a header") from None
        return u

    @property
    def uri_text(self) -> str:
        """The URI as written, without parsing it."""
        return self._uri_text

    @property
    def params(self) -> Params:
        """The header parameters in order, as written."""
        return self._params

    @property
    def is_star(self) -> bool:
        """True for the wildcard Contact ``*`` (RFC 3261 §10.2.2)."""
        return self._star

    @classmethod
    def parse(cls, text: str, what: str = "address") -> NameAddr:
        """Parse one name-addr / addr-spec with params; ParseError naming *what*."""
        return _parse_name_addr(text.strip(" \t"), what)

    @classmethod
    def _parse_slow(cls, s: str, what: str) -> NameAddr:
        display: str | None
        first = s[:1]
        if first == "<":
            display = None
            rest = s
        elif first == '"':
            end = _quoted_end(s, 0)
            if end < 0:
                raise ParseError(f"Unterminated quoted string in {what} header")
            display = _unquote(s[1 : end - 1])
            rest = s[end:].lstrip(" \t")
            if rest[:1] != "<":
                raise ParseError(f"Malformed {what} header")
        elif not first:
            raise ParseError(f"Empty {what} header")
        else:
            lt = s.find("<")
            if lt < 0 or s.find(";", 0, lt) >= 0:
                # no "<", or one only inside a parameter: an addr-spec
                return cls._parse_addr_spec(s, what)
            dn = s[:lt].strip(" \t")
            for word in dn.split():
                if not is_token(word):
                    raise ParseError(f"Invalid display name in {what} header")
            display = dn
            rest = s[lt:]
        gt = rest.find(">")
        if gt < 0:
            raise ParseError(f"Missing '>' in {what} header")
        uri_text = rest[1:gt]
        if not _uri_text_match(uri_text):
            raise ParseError(f"Malformed URI in {what} header")
        na = cls.__new__(cls)
        na._display_name = display
        na._uri = None
        na._uri_text = uri_text
        na._raw = s
        na._star = False
        after = rest[gt + 1 :]
        if after:
            if after[0] != ";":
                after = after.lstrip(" \t")
                if after[:1] != ";":
                    raise ParseError(f"Malformed {what} header")
            na._params = _parse_params(after[1:], what)
        else:
            na._params = ()
        return na

    @classmethod
    def _parse_addr_spec(cls, s: str, what: str) -> NameAddr:
        if s[0] == "*":
            if s == "*":
                return STAR
            raise ParseError(f"Malformed {what} header")
        # addr-spec: every ';' after it starts a header parameter (§20); a URI
        # with ',', '?' or ';' of its own must be in angle brackets
        uri_text, semi, ptext = s.partition(";")
        uri_text = uri_text.rstrip(" \t")
        if not _uri_text_match(uri_text) or "?" in uri_text or "," in uri_text:
            raise ParseError(f"Malformed URI in {what} header")
        na = cls.__new__(cls)
        na._display_name = None
        na._uri = None
        na._uri_text = uri_text
        na._params = _parse_params(ptext, what) if semi else ()
        na._raw = s
        na._star = False
        return na

    def serialize(self) -> str:
        """The header value text; the original text when parsed and unchanged."""
        if self._raw is not None:
            return self._raw
        if self._star:
            return "*"
        dn = "" if self._display_name is None else quote(self._display_name) + " "
        return f"{dn}<{self._uri_text}>{_params_text(self._params)}"

    __str__ = serialize

    def param(self, name: str) -> str | None:
        """Value of a header parameter (case-insensitive); "" for a flag; None if absent."""
        return _find_param(self._params, name)

    def has_param(self, name: str) -> bool:
        """True when the header parameter is present."""
        return _has_param(self._params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """A copy with header parameter *name* set (replaced, or appended)."""
        return self._copy(_set_param(self._params, name, value))

    def without_param(self, name: str) -> NameAddr:
        """A copy without header parameter *name*."""
        return self._copy(_drop_param(self._params, name))

    def with_tag(self, tag: str) -> NameAddr:
        """A copy with ``;tag=`` set to *tag*."""
        return self._copy(_set_param(self._params, "tag", tag))

    def _copy(self, params: Params) -> NameAddr:
        if self._star:
            raise ValueError("the '*' Contact takes no parameters")
        na = NameAddr.__new__(NameAddr)
        na._display_name = self._display_name
        na._uri = self._uri
        na._uri_text = self._uri_text
        na._params = params
        na._raw = None
        na._star = False
        return na

    @property
    def tag(self) -> str | None:
        """The tag parameter (RFC 3261 §19.3), None if absent."""
        for k, v in self._params:
            if k == "tag":
                return v
        return _find_param(self._params, "tag")

    @property
    def q(self) -> float | None:
        """The q parameter (0..1), None if absent; ParseError if malformed."""
        v = _find_param(self._params, "q")
        if v is None:
            return None
        if not _qvalue_match(v):
            raise ParseError("Malformed q parameter")
        return float(v)

    @property
    def expires(self) -> int | None:
        """The expires parameter as an int, None if absent; ParseError if malformed."""
        v = _find_param(self._params, "expires")
        return None if v is None else parse_uint(v, "expires parameter")

    def _key(self) -> tuple[object, ...]:
        return (self._star, self._display_name, self._uri_text, self._params)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"NameAddr({self.serialize()!r})"


def _make_star() -> NameAddr:
    star = NameAddr.__new__(NameAddr)
    star._display_name = None
    star._uri = None
    star._uri_text = "*"
    star._params = ()
    star._raw = "*"
    star._star = True
    return star


#: The wildcard Contact value ``*`` (``STAR.is_star`` is True).
STAR: Final[NameAddr] = _make_star()


class CSeq:
    """The CSeq value (RFC 3261 §20.16): sequence number and method."""

    __slots__ = ("_method", "_seq")

    def __init__(self, seq: int, method: str) -> None:
        if not 0 <= seq <= 2**32 - 1:
            raise ValueError("CSeq number out of range")
        self._seq = seq
        self._method = method

    @property
    def seq(self) -> int:
        """The sequence number (0..2**32-1)."""
        return self._seq

    @property
    def method(self) -> str:
        """The method, case-sensitive as written."""
        return self._method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; ParseError when malformed."""
        return _parse_cseq(text.strip(" \t"))

    def serialize(self) -> str:
        """``"<seq> <method>"``."""
        return f"{self._seq} {self._method}"

    __str__ = serialize

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self._seq == other._seq and self._method == other._method

    def __hash__(self) -> int:
        return hash((self._seq, self._method))

    def __repr__(self) -> str:
        return f"CSeq({self._seq!r}, {self._method!r})"


class Warning:
    """One Warning value (RFC 3261 §20.43): ``code agent "text"``; text unquoted."""

    __slots__ = ("_agent", "_code", "_text")

    def __init__(self, code: int, agent: str, text: str) -> None:
        if not 100 <= code <= 999:
            raise ValueError("warn-code must have three digits")
        self._code = code
        self._agent = agent
        self._text = text

    @property
    def code(self) -> int:
        """The three-digit warn-code (e.g. 380)."""
        return self._code

    @property
    def agent(self) -> str:
        """The warn-agent (hostport or pseudonym)."""
        return self._agent

    @property
    def text(self) -> str:
        """The warn-text, unquoted."""
        return self._text

    @classmethod
    def parse(cls, text: str) -> Warning:
        """Parse one warning-value; ParseError when malformed."""
        code, _, rest = text.strip(" \t").partition(" ")
        agent, _, wtext = rest.lstrip(" \t").partition(" ")
        wtext = wtext.strip(" \t")
        if (
            len(code) != 3
            or not _digits_match(code)
            or not agent
            or "\t" in agent
            or wtext[:1] != '"'
            or _quoted_end(wtext, 0) != len(wtext)
        ):
            raise ParseError("Malformed Warning header")
        w = cls.__new__(cls)
        w._code = int(code)
        w._agent = agent
        w._text = _unquote(wtext[1:-1])
        return w

    def serialize(self) -> str:
        """``code agent "text"``."""
        return f"{self._code} {self._agent} {quote(self._text)}"

    __str__ = serialize

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Warning):
            return NotImplemented
        return (self._code, self._agent, self._text) == (other._code, other._agent, other._text)

    def __hash__(self) -> int:
        return hash((self._code, self._agent, self._text))

    def __repr__(self) -> str:
        return f"Warning({self._code!r}, {self._agent!r}, {self._text!r})"


# ---------------------------------------------------------------------------
# Parsers of stripped values (shared by the classmethods and the message parser)
# ---------------------------------------------------------------------------


def _parse_via(s: str) -> Via:
    """Via.parse of a value already stripped of surrounding blanks."""
    m = _via_fast_match(s)
    if m is None:
        return Via._parse_slow(s)
    transport, host, port_text, a, av, b, bv, c, cv, rest = m.groups()
    via = _new_via(Via)
    via._protocol = "SIP/2.0"
    via._transport = transport if transport.isupper() else transport.upper()
    via._host = host
    if port_text is None:
        via._port = None
    else:
        port = int(port_text)
        if port > 65535:
            raise ParseError("Port out of range in Via header")
        via._port = port
    if a is not None:
        if b is None:
            via._params = ((a, av),)
        elif c is None:
            via._params = ((a, av), (b, bv))
        else:
            via._params = ((a, av), (b, bv), (c, cv))
    elif rest is None:
        via._params = ()
    else:
        via._params = _parse_params(rest, "Via")
    via._raw = s
    return via


def _parse_name_addr(s: str, what: str) -> NameAddr:
    """NameAddr.parse of a value already stripped of surrounding blanks."""
    m = _name_addr_fast_match(s)
    if m is None:
        if _addr_spec_fast_match(s) is None:
            return NameAddr._parse_slow(s, what)
        na = _new_name_addr(NameAddr)
        na._display_name = None
        na._uri = None
        na._uri_text = s
        na._params = ()
        na._raw = s
        na._star = False
        return na
    quoted, plain, uri_text, a, av, b, bv, after = m.groups()
    na = _new_name_addr(NameAddr)
    if quoted is not None:
        na._display_name = quoted
    elif plain:
        na._display_name = plain.rstrip(" \t") or None
    else:
        na._display_name = None
    na._uri = None
    na._uri_text = uri_text
    na._raw = s
    na._star = False
    if a is not None:
        na._params = ((a, av),) if b is None else ((a, av), (b, bv))
    elif after:
        if after[0] != ";":
            after = after.lstrip(" \t")
            if after[:1] != ";":
                raise ParseError(f"Malformed {what} header")
        na._params = _parse_params(after[1:], what)
    else:
        na._params = ()
    return na


def _parse_cseq(s: str) -> CSeq:
    """CSeq.parse of a value already stripped of surrounding blanks."""
    num, _, method = s.partition(" ")
    if num.isdigit() and num.isascii() and len(num) <= 10 and method.isalpha() and method.isascii():
        seq = int(num)
    else:
        m = _cseq_match(s)
        if m is None:
            raise ParseError("Malformed CSeq header")
        num, method = m.groups()
        seq = int(num)
    if seq > 2**32 - 1:
        raise ParseError("CSeq value out of range")
    cseq = _new_cseq(CSeq)
    cseq._seq = seq
    cseq._method = method
    return cseq


_new_via = Via.__new__
_new_name_addr = NameAddr.__new__
_new_cseq = CSeq.__new__


# ---------------------------------------------------------------------------
# The multimap
# ---------------------------------------------------------------------------


def _value_text(value: HeaderValue) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int):
        text = str(value)
    else:
        text = value.serialize()
    if "\r" in text or "\n" in text:
        raise ValueError("header values must not contain CR or LF")
    return text.strip(" \t")


def _checked_name(name: str) -> str:
    try:
        return _canon_checked(name)
    except ParseError:
        raise ValueError(f"invalid header name {name!r}") from None


class Headers:
    """Ordered, case-insensitive multimap of header lines.

    One ``(canonical name, raw value)`` pair per header line as received (a
    line ``Via: a, b`` is one pair). Names match in any case and in compact
    form. Values are kept as text; messages parse typed values from them on
    demand and cache the result here, and every change to a name drops the
    cached values of that name.

    ``Headers([("Via", via), ("Max-Forwards", 70)])`` or
    ``Headers({"From": from_, "To": to})`` build one; values may be ``str``,
    ``int`` or typed values (anything with ``serialize()``); a mapping value
    that is a list or tuple adds one line per item.
    """

    __slots__ = ("_cache", "_names", "_pristine", "_values")

    def __init__(
        self,
        items: Iterable[tuple[str, HeaderValue]]
        | Mapping[str, HeaderValue | Iterable[HeaderValue]]
        | None = None,
    ) -> None:
        self._names: list[str] = []
        self._values: list[str] = []
        self._cache: dict[str, Any] = {}
        self._pristine = True
        if items is None:
            return
        pairs = cast(
            "Iterable[tuple[str, Any]]", items.items() if isinstance(items, Mapping) else items
        )
        for name, value in pairs:
            if isinstance(value, (list, tuple)):
                for v in value:
                    self.add(name, v)
            else:
                self.add(name, value)

    @classmethod
    def _from_lists(cls, names: list[str], values: list[str]) -> Headers:
        h = cls.__new__(cls)
        h._names = names
        h._values = values
        h._cache = {}
        h._pristine = True
        return h

    def _touch(self, canon: str) -> None:
        self._pristine = False
        c = self._cache
        if c:
            c.pop(canon, None)
            c.pop(canon + "^", None)

    def _indexes(self, name: str) -> list[int]:
        """Line indexes of *name* (any spelling)."""
        names = self._names
        canon = _CANON.get(name) or _CANON.get(name.lower())
        if canon is not None:
            return [i for i, n in enumerate(names) if n is canon or n == canon]
        low = name.lower()
        return [i for i, n in enumerate(names) if n.lower() == low]

    def _first(self, canon: str) -> str | None:
        """First value of a known header given by its canonical name."""
        names = self._names
        if canon in names:
            return self._values[names.index(canon)]
        return None

    def get(self, name: str) -> str | None:
        """The value of the first line named *name*, or None."""
        canon = _CANON.get(name) or _CANON.get(name.lower())
        if canon is not None:
            return self._first(canon)
        found = self._indexes(name)
        return self._values[found[0]] if found else None

    def get_all(self, name: str) -> list[str]:
        """The values of every line named *name*, in order."""
        values = self._values
        return [values[i] for i in self._indexes(name)]

    def values(self, name: str) -> list[str]:
        """Every value of *name*: all lines split on top-level commas.

        Commas inside quoted strings and ``<...>`` do not split. Header fields
        that are not lists (Date, Authorization, WWW-Authenticate, From, ...;
        RFC 3261 §7.3.1) are returned one value per line, unsplit.
        """
        if canonical_name(name) in _NON_LIST:
            return self.get_all(name)
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(split_list(value))
        return out

    def add(self, name: str, value: HeaderValue) -> None:
        """Append a line (after every existing line)."""
        canon = _checked_name(name)
        text = _value_text(value)
        if type(self._names) is not list:
            self._thaw()
        self._names.append(canon)
        self._values.append(text)
        self._touch(canon)

    def copy_lines(self, source: Headers, skip: AbstractSet[str]) -> list[str]:
        """Append every line of ``source`` whose lower-case name is not in ``skip``.

        The lines are taken as they are (a :class:`Headers` only holds valid
        lines); returns the lower-case names of the lines appended.
        """
        if type(self._names) is not list:
            self._thaw()
        names = self._names
        values = self._values
        copied: list[str] = []
        for name, value in zip(source._names, source._values):
            lower = name.lower()
            if lower not in skip:
                names.append(name)
                values.append(value)
                copied.append(lower)
                self._touch(name)
        return copied

    def prepend(self, name: str, value: HeaderValue) -> None:
        """Insert a line before the first line of that name (at the top if none).

        This is how a proxy pushes a Via or a Record-Route.
        """
        canon = _checked_name(name)
        text = _value_text(value)
        found = self._indexes(canon)
        i = found[0] if found else 0
        if type(self._names) is not list:
            self._thaw()
        self._names.insert(i, canon)
        self._values.insert(i, text)
        self._touch(canon)

    def set(self, name: str, value: HeaderValue) -> None:
        """Replace every line of *name* with one line at the first one's position."""
        canon = _checked_name(name)
        text = _value_text(value)
        found = self._indexes(canon)
        if type(self._names) is not list:
            self._thaw()
        if not found:
            self._names.append(canon)
            self._values.append(text)
        else:
            i = found[0]
            self._names[i] = canon
            self._values[i] = text
            self._drop(found[1:])
        self._touch(canon)

    def remove(self, name: str) -> None:
        """Remove every line of *name* (no error when there is none)."""
        found = self._indexes(name)
        if found:
            self._drop(found)
            self._touch(canonical_name(name))

    def _drop(self, indexes: list[int]) -> None:
        if type(self._names) is not list:
            self._thaw()
        for i in reversed(indexes):
            del self._names[i]
            del self._values[i]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        canon = _CANON.get(name) or _CANON.get(name.lower())
        if canon is not None:
            return canon in self._names
        return bool(self._indexes(name))

    def forget_parsed(self) -> None:
        """Drop the cached typed values (they are parsed again on the next access).

        For a message kept only to be sent again (a transaction waiting for
        retransmissions): the lines are also stored as tuples of strings,
        which the garbage collector stops tracking (lists it always walks);
        the next change turns them back into lists.
        """
        self._cache = {}
        self._names = tuple(self._names)  # type: ignore[assignment]
        self._values = tuple(self._values)  # type: ignore[assignment]

    def _thaw(self) -> None:
        """Lists again after :meth:`forget_parsed`, before a change."""
        self._names = list(self._names)
        self._values = list(self._values)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return zip(self._names, self._values)

    def __len__(self) -> int:
        return len(self._names)

    def copy(self) -> Headers:
        """An independent copy (typed values are immutable and shared)."""
        h = Headers._from_lists(list(self._names), list(self._values))
        h._cache = dict(self._cache)
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        if list(self._values) != list(other._values):
            return False
        a = list(self._names)
        b = list(other._names)
        return a == b or [n.lower() for n in a] == [n.lower() for n in b]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"
