"""SIP requests and responses (RFC 3261 §7): parse, typed access, build, serialize.

:func:`parse_message` turns the bytes of one message (a datagram, or one
item from :class:`sbc.sip.framing.StreamFramer`) into a :class:`Request` or
:class:`Response`, and raises nothing but :class:`~sbc.errors.ParseError`.
Header values stay raw text until a typed accessor (``top_via``, ``from_``,
``cseq``...) asks for them; the parsed value is cached until that header
changes. The headers every message needs (Via, From, To, Call-ID, CSeq,
Content-Length, Max-Forwards) are checked while parsing, so a message that
parses has usable values for them.

Building a message::

    req = Request(
        "INVITE",
        "sip:bob@example.com",
        Headers([
            ("Via", Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bK74bf9"})),
            ("Max-Forwards", 70),
            ("From", NameAddr("Alice", "sip:alice@example.com", {"tag": "9fxced76sl"})),
            ("To", NameAddr(None, "sip:bob@example.com")),
            ("Call-ID", "3848276298220188511@atlanta.example.com"),
            ("CSeq", CSeq(1, "INVITE")),
            ("Content-Type", "application/sdp"),
        ]),
        body=sdp,
    )
    wire = req.serialize()          # Content-Length is always written for the body
    ok = response_to(req, 200)      # §8.2.6: Via/From/To(+tag)/Call-ID/CSeq copied
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat as _repeat
from typing import Any, Final

from sbc.sip.errors import ParseError
from sbc.sip.headers import (
    _CANON,
    CSeq,
    Headers,
    HeaderValue,
    NameAddr,
    Via,
    Warning,
    _canon_checked,
    _parse_cseq,
    _parse_name_addr,
    _parse_via,
    _split,
    _split_top,
    is_token,
    parse_uint,
)
from sbc.sip.uri import URI, parse_uri

__all__ = ["REASON_PHRASES", "Request", "Response", "parse_message", "response_to"]

#: Default reason phrases (RFC 3261 §21 and later RFCs).
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_CLASS_PHRASES: Final = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Request Failure",
    5: "Server Failure",
    6: "Global Failure",
}

_MISSING: Final[Any] = object()
_call_id_match = re.compile(r"[\x21-\x7e]+").fullmatch
_version_match = re.compile(r"SIP/[0-9]{1,3}\.[0-9]{1,3}", re.IGNORECASE).fullmatch
_status_match = re.compile(r"[1-6][0-9][0-9]").fullmatch
# Cheap Request-URI check (scheme ":" visible ASCII but DQUOTE "<" ">"); the
# full parse happens on first use of Request.uri.
_ruri_match = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[!#-;=?-~]+").fullmatch
_fmt_line = "{}: {}".format
_partition = str.partition
# canonical spellings only: a hit means the line is written canonically
_exact_get = {c: c for c in _CANON.values()}.get

# Secret for deriving To tags: unpredictable across processes (§19.3 asks
# for cryptographic randomness), stable for one request within a process.
_TAG_SECRET: Final = secrets.token_bytes(16)


def default_reason(status: int) -> str:
    """The reason phrase for *status* (the class name when the code is unknown)."""
    return REASON_PHRASES.get(status) or _CLASS_PHRASES.get(status // 100, "Unknown")


# ---------------------------------------------------------------------------
# Typed-value helpers (shared by parse_message and the accessors)
# ---------------------------------------------------------------------------


def _single(names: list[str], values: list[str], canon: str) -> str:
    """The value of the one line *canon*; ParseError when missing or repeated."""
    n = names.count(canon)
    if n == 1:
        return values[names.index(canon)]
    raise ParseError(f"Missing {canon} header" if n == 0 else f"Multiple {canon} headers")


def _top_via(value: str) -> Via:
    if "," not in value:
        return _parse_via(value)
    first = _split_top(value, ",")[0] if '"' in value or "<" in value else value.partition(",")[0]
    return _parse_via(first.strip(" \t"))


def _parse_call_id(value: str) -> str:
    if not _call_id_match(value):
        raise ParseError("Malformed Call-ID header")
    return value


def _elements(h: Headers, canon: str) -> list[str]:
    names = h._names
    if canon not in names:
        return []
    out = []
    values = h._values
    for i, n in enumerate(names):
        if n == canon:
            value = values[i]
            for part in _split(value, ",") if "," in value else (value,):
                part = part.strip(" \t")
                if not part:
                    raise ParseError(f"Malformed {canon} header (empty element)")
                out.append(part)
    return out


def _name_addrs(h: Headers, canon: str) -> tuple[NameAddr, ...]:
    return tuple(NameAddr.parse(p, canon) for p in _elements(h, canon))


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


class _Message:
    """What requests and responses share: headers, body, typed accessors."""

    __slots__ = ("_wire", "body", "headers", "version")

    headers: Headers
    body: bytes
    version: str
    # (headers, body, start line, bytes) of a message parsed from bytes that
    # serialize() would write again unchanged.
    _wire: tuple[Headers, bytes, str, bytes] | None

    def _start_line(self) -> str:
        raise NotImplementedError

    def _start_key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """The message as bytes, with a Content-Length that matches ``body``.

        Header lines are written as ``Canonical-Name: value`` in order; an
        existing Content-Length line keeps its place (with the right value),
        otherwise one is appended. The body is written byte for byte. A
        message parsed from bytes already in that form, and not changed
        since, gives back those bytes without re-encoding.
        """
        h = self.headers
        body = self.body
        w = self._wire
        if w is not None:
            if w[0] is h and h._pristine and w[1] is body and w[2] == self._start_line():
                return w[3]
            self._wire = None
        names = h._names
        values = h._values
        clen = str(len(body))
        if names.count("Content-Length") == 1 and values[names.index("Content-Length")] == clen:
            head = "\r\n".join(map(_fmt_line, names, values))
        else:
            lines = []
            seen = False
            for n, v in zip(names, values):
                if n == "Content-Length":
                    if seen:
                        continue
                    seen = True
                    v = clen
                lines.append(_fmt_line(n, v))
            if not seen:
                lines.append("Content-Length: " + clen)
            head = "\r\n".join(lines)
        text = f"{self._start_line()}\r\n{head}\r\n\r\n"
        return text.encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.serialize()

    def __eq__(self, other: object) -> bool:
        """Same kind, start line, header lines and body.

        Content-Length lines are left out: serialize() derives them from the
        body, so ``parse_message(m.serialize()) == m`` for every message.
        """
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Message)
        return (
            self._start_key() == other._start_key()
            and self.body == other.body
            and _comparable(self.headers) == _comparable(other.headers)
        )

    __hash__ = None  # type: ignore[assignment]

    def _enrich(self, err: ParseError) -> ParseError:
        return err

    # -- typed accessors ----------------------------------------------------

    @property
    def vias(self) -> list[Via]:
        """Every Via value in order, across lines (top first)."""
        c = self.headers._cache
        v: tuple[Via, ...] | None = c.get("Via")
        if v is None:
            v = tuple(Via.parse(p) for p in _elements(self.headers, "Via"))
            if not v:
                raise ParseError("Missing Via header")
            c["Via"] = v
        return list(v)

    @property
    def top_via(self) -> Via:
        """The first Via value (the one a response is routed back on)."""
        c = self.headers._cache
        v: Via | None = c.get("Via^")
        if v is None:
            first = self.headers._first("Via")
            if first is None:
                raise ParseError("Missing Via header")
            v = c["Via^"] = _top_via(first)
        return v

    @property
    def from_(self) -> NameAddr:
        """The From header (``tag`` is the local/remote tag)."""
        c = self.headers._cache
        v: NameAddr | None = c.get("From")
        if v is None:
            h = self.headers
            v = c["From"] = NameAddr.parse(_single(h._names, h._values, "From"), "From")
        return v

    @property
    def to(self) -> NameAddr:
        """The To header."""
        c = self.headers._cache
        v: NameAddr | None = c.get("To")
        if v is None:
            h = self.headers
            v = c["To"] = NameAddr.parse(_single(h._names, h._values, "To"), "To")
        return v

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        c = self.headers._cache
        v: str | None = c.get("Call-ID")
        if v is None:
            h = self.headers
            v = c["Call-ID"] = _parse_call_id(_single(h._names, h._values, "Call-ID"))
        return v

    @property
    def cseq(self) -> CSeq:
        """The CSeq (number and method)."""
        c = self.headers._cache
        v: CSeq | None = c.get("CSeq")
        if v is None:
            h = self.headers
            v = c["CSeq"] = CSeq.parse(_single(h._names, h._values, "CSeq"))
        return v

    def _optional_int(self, canon: str, maximum: int) -> int | None:
        c = self.headers._cache
        v: int | None = c.get(canon, _MISSING)
        if v is _MISSING:
            raw = self.headers._first(canon)
            try:
                v = None if raw is None else parse_uint(raw, canon, maximum)
            except ParseError as e:
                raise self._enrich(e) from None
            c[canon] = v
        return v

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0..255), None when absent."""
        v: int | None = self.headers._cache.get("Max-Forwards", _MISSING)
        if v is _MISSING:
            return self._optional_int("Max-Forwards", 255)
        return v

    @property
    def content_length(self) -> int | None:
        """The Content-Length header as received/set, None when absent.

        :meth:`serialize` always writes ``len(body)`` whatever this says.
        """
        v: int | None = self.headers._cache.get("Content-Length", _MISSING)
        if v is _MISSING:
            return self._optional_int("Content-Length", 2**32 - 1)
        return v

    @property
    def expires(self) -> int | None:
        """The Expires header (delta-seconds), None when absent."""
        return self._optional_int("Expires", 2**32 - 1)

    def _typed_list(
        self, canon: str, parse: Callable[[Headers], tuple[Any, ...]]
    ) -> tuple[Any, ...]:
        c = self.headers._cache
        v: tuple[Any, ...] | None = c.get(canon)
        if v is None:
            try:
                v = c[canon] = parse(self.headers)
            except ParseError as e:
                raise self._enrich(e) from None
        return v

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value in order; ``[STAR]`` for ``Contact: *``."""
        return list(self._typed_list("Contact", _parse_contacts))

    @property
    def routes(self) -> list[NameAddr]:
        """Every Route value in order."""
        return list(self._typed_list("Route", _parse_routes))

    @property
    def record_routes(self) -> list[NameAddr]:
        """Every Record-Route value in order."""
        return list(self._typed_list("Record-Route", _parse_record_routes))

    @property
    def warnings(self) -> list[Warning]:
        """Every Warning value in order."""
        return list(self._typed_list("Warning", _parse_warnings))

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as written, None when absent."""
        return self.headers._first("Content-Type")


def _comparable(h: Headers) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v in h if n != "Content-Length"]


def _parse_contacts(h: Headers) -> tuple[NameAddr, ...]:
    contacts = _name_addrs(h, "Contact")
    if len(contacts) > 1 and any(c.is_star for c in contacts):
        raise ParseError("Wildcard Contact must be the only Contact")
    return contacts


def _parse_routes(h: Headers) -> tuple[NameAddr, ...]:
    return _name_addrs(h, "Route")


def _parse_record_routes(h: Headers) -> tuple[NameAddr, ...]:
    return _name_addrs(h, "Record-Route")


def _parse_warnings(h: Headers) -> tuple[Warning, ...]:
    return tuple(Warning.parse(p) for p in _elements(h, "Warning"))


def _headers_arg(
    headers: Headers
    | Iterable[tuple[str, HeaderValue]]
    | Mapping[str, HeaderValue | Iterable[HeaderValue]]
    | None,
) -> Headers:
    if isinstance(headers, Headers):
        return headers
    return Headers(headers)


class Request(_Message):
    """A SIP request.

    ``Request(method, uri, headers=None, body=b"", version="SIP/2.0")`` builds
    one: *uri* is a :class:`~sbc.sip.uri.URI` or its text (parsed now;
    ParseError if malformed), *headers* a :class:`Headers` or anything
    ``Headers()`` accepts (pairs, or a mapping; typed values and ints allowed).

    Attributes: ``method``, ``uri`` (parsed lazily for received requests),
    ``version``, ``headers``, ``body`` (bytes, exact). See the module
    docstring for an example.
    """

    __slots__ = ("_uri", "_uri_text", "method")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers
        | Iterable[tuple[str, HeaderValue]]
        | Mapping[str, HeaderValue | Iterable[HeaderValue]]
        | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not is_token(method):
            raise ValueError(f"invalid SIP method {method!r}")
        self.method = method
        if isinstance(uri, str):
            self._uri: URI | None = parse_uri(uri)
            self._uri_text = uri
        else:
            self._uri = uri
            self._uri_text = uri.serialize()
        self.headers = _headers_arg(headers)
        self.body = bytes(body)
        self.version = version
        self._wire = None

    @property
    def uri(self) -> URI:
        """The Request-URI (parsed on first access; ParseError 400/416 if bad)."""
        u = self._uri
        if u is None:
            try:
                u = parse_uri(self._uri_text)
            except ParseError as e:
                raise self._enrich(e) from None
            self._uri = u
        return u

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self._uri_text = value.serialize()

    @property
    def uri_text(self) -> str:
        """The Request-URI as written, without parsing it."""
        return self._uri_text

    def _start_line(self) -> str:
        return f"{self.method} {self._uri_text} {self.version}"

    def _start_key(self) -> tuple[object, ...]:
        return (self.method, self._uri_text, self.version)

    def _enrich(self, err: ParseError) -> ParseError:
        if err.request is None:
            err.request = self
        return err

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_text}>"


class Response(_Message):
    """A SIP response.

    ``Response(status, reason=None, headers=None, body=b"", version="SIP/2.0")``
    builds one; *reason* defaults to the standard phrase for *status*. Use
    :func:`response_to` to answer a request (it copies the §8.2.6 headers).
    """

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers
        | Iterable[tuple[str, HeaderValue]]
        | Mapping[str, HeaderValue | Iterable[HeaderValue]]
        | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not 100 <= status <= 699:
            raise ValueError(f"invalid SIP status code {status!r}")
        self.status = status
        self.reason = default_reason(status) if reason is None else reason
        if "\r" in self.reason or "\n" in self.reason:
            raise ValueError("reason phrase must not contain CR or LF")
        self.headers = _headers_arg(headers)
        self.body = bytes(body)
        self.version = version
        self._wire = None

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _start_key(self) -> tuple[object, ...]:
        return (self.status, self.reason, self.version)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse_message(data: bytes) -> Request | Response:
    """Parse the bytes of one SIP message; raise only :class:`ParseError`.

    *data* is one datagram, or one item from the stream framer. Rules
    (RFC 3261 §7, §18.3): CRLF or bare-LF line ends; leading CRLFs ignored;
    folded lines joined with one space; the body is Content-Length bytes
    after the empty line (extra bytes ignored), or everything after it when
    Content-Length is absent. Header text is decoded as UTF-8 with
    surrogateescape, so any bytes survive parse + serialize.

    The ParseError's ``request`` is set when the bytes are recognisably a
    request (method, Request-URI, SIP version) with Via, From, To, Call-ID
    and CSeq present, even malformed, so the caller can answer with
    ``status`` (400, or 505 for another SIP version; :func:`response_to`
    copies malformed headers as received); otherwise the bytes are dropped.
    """
    try:
        return _parse(bytes(data), False)
    except ParseError:
        raise
    except Exception as exc:  # the boundary: nothing else may escape
        raise ParseError("Malformed message") from exc


def _parse(data: bytes, head_only: bool) -> Request | Response:
    # Fast path: CRLF line ends throughout the header section.
    e = data.find(b"\r\n\r\n")
    if e > 0 and data[0] != 13 and data[0] != 10:
        text = data[:e].decode("utf-8", "surrogateescape")
        lines = text.split("\r\n")
        n1 = len(lines) - 1
        if text.count("\n") != n1 or text.count("\r") != n1:
            lines, bstart = _split_head(data, head_only)
            normalized = False
        else:
            bstart = e + 4
            normalized = True
    else:
        lines, bstart = _split_head(data, head_only)
        normalized = False

    # Header lines. A bad line is noted and skipped, so that a request whose
    # essential headers are fine can still be answered. ``normalized`` stays
    # true while every line reads exactly "Canonical-Name: value": then the
    # bytes received are what serialize() would write.
    names: list[str] = []
    values: list[str] = []
    names_append = names.append
    values_append = values.append
    problems: list[str] = []
    exact = _exact_get
    folds: dict[int, list[str]] | None = None
    it = iter(lines)
    first = next(it)
    for name, sep, value in map(_partition, it, _repeat(": ")):
        canon = exact(name)
        if canon is not None and sep:
            v = value.strip(" \t")
            if v is not value:
                normalized = False
            names_append(canon)
            values_append(v)
            continue
        line = name + sep + value
        c = line[:1]
        if c == " " or c == "\t":  # folded line (§7.3.1)
            normalized = False
            if not values:
                problems.append("Malformed header line")
                continue
            # (after a skipped bad line this joins the header before it; the
            # message fails on the bad line anyway). Parts are joined once at
            # the end: appending to the value each time would be quadratic.
            cont = line.strip(" \t")
            if cont:
                last = len(values) - 1
                if folds is None:
                    folds = {}
                parts = folds.get(last)
                if parts is None:
                    parts = folds[last] = [values[last]] if values[last] else []
                parts.append(cont)
            continue
        name, sep, value = line.partition(":")
        try:
            if not sep:
                raise ParseError("Malformed header line")
            canon = _canon_checked(name.rstrip(" \t"))
        except ParseError as err:
            problems.append(err.reason)
            normalized = False
            continue
        v = value.strip(" \t")
        if normalized and line != f"{canon}: {v}":
            normalized = False
        names_append(canon)
        values_append(v)
    if folds is not None:
        for index, parts in folds.items():
            values[index] = " ".join(parts)
    headers = Headers.__new__(Headers)
    headers._names = names
    headers._values = values
    headers._pristine = True

    fatal: str | None = None
    if first.startswith("SIP/") or (first[:1] in ("s", "S") and first[:4].upper() == "SIP/"):
        msg: Request | Response = _finish_response(first, headers, problems)
    else:
        msg, fatal = _finish_request(first, headers, problems)

    # Content-Length and Max-Forwards
    cache = headers._cache
    reason = problems[0] if problems else None
    clen: int | None = None
    raw = ""
    if "Content-Length" in names:
        i = names.index("Content-Length")
        raw = values[i]
        if raw.isdigit() and raw.isascii() and len(raw) <= 10:
            clen = cache["Content-Length"] = int(raw)
        else:
            normalized = False
            reason = reason or "Malformed Content-Length header"
        if names.count("Content-Length") > 1:
            normalized = False
            for j in range(i + 1, len(names)):
                if names[j] == "Content-Length" and values[j] != raw:
                    reason = reason or "Conflicting Content-Length headers"
    else:
        cache["Content-Length"] = None
        normalized = False
    if "Max-Forwards" in names:
        mf = values[names.index("Max-Forwards")]
        if mf.isdigit() and mf.isascii() and len(mf) <= 10 and (n := int(mf)) <= 255:
            cache["Max-Forwards"] = n
        else:
            reason = reason or "Malformed Max-Forwards header"
    else:
        cache["Max-Forwards"] = None

    # The body: Content-Length bytes; without it, the rest of the datagram.
    if head_only:
        msg.body = b""
    elif clen is None:
        msg.body = data[bstart:]
    else:
        end = bstart + clen
        if end > len(data):
            msg.body = data[bstart:]
            reason = reason or "Content-Length larger than message body"
        else:
            msg.body = data[bstart:end]
            if normalized and str(clen) == raw:
                wire = data if end == len(data) else data[:end]
                msg._wire = (headers, msg.body, first, wire)

    if type(msg) is Request:
        if msg.version != "SIP/2.0" and msg.version.upper() != "SIP/2.0":
            raise ParseError("Version Not Supported", 505, None if fatal else msg)
        if fatal is not None:
            raise ParseError(fatal)
        if reason is not None:
            raise ParseError(reason, 400, msg)
    elif reason is not None:
        raise ParseError(reason)
    return msg


def _split_head(data: bytes, head_only: bool) -> tuple[list[str], int]:
    """Lines of the header section and where the body starts (general case).

    Skips CRLFs before the start line (§7.5), accepts bare LF line ends and
    rejects a CR that does not end a line.
    """
    n = len(data)
    start = n - len(data.lstrip(b"\r\n"))
    if start >= n:
        raise ParseError("Empty message")
    e = data.find(b"\n\r\n", start)
    e2 = data.find(b"\n\n", start, n if e < 0 else e + 1)
    if e2 >= 0:
        hend, bstart = e2, e2 + 2
    elif e >= 0:
        hend, bstart = e, e + 3
    elif head_only or data.endswith(b"\n"):
        hend, bstart = (n - 1 if data.endswith(b"\n") else n), n
    else:
        raise ParseError("Missing empty line after the header fields")
    text = data[start:hend].decode("utf-8", "surrogateescape")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    for ln in lines:
        if "\r" in ln:
            raise ParseError("Bare CR in message header")
    return lines, bstart


def _finish_request(
    first: str, headers: Headers, problems: list[str]
) -> tuple[Request, str | None]:
    """Request line and the headers that make a request answerable.

    Returns the request and the problem that makes it unanswerable (None when
    a response can be built: Via, From, To, Call-ID and CSeq are all present).
    Problems that still allow an answer are added to *problems*: a request
    line that is recognisably a SIP request (method token, Request-URI, SIP
    version) but badly spaced or with a malformed Request-URI, and mandatory
    headers that are present but malformed or repeated (the response then
    copies them as received, RFC 4475 §3.1.2).
    """
    parts = first.split(" ")
    spaced_right = len(parts) == 3
    if spaced_right:
        method, ruri, version = parts
    else:
        words = first.split()
        if len(words) < 3:
            raise ParseError("Malformed request line")
        method, ruri, version = words[0], " ".join(words[1:-1]), words[-1]
    if not ((method.isalpha() and method.isascii()) or is_token(method)):
        raise ParseError("Malformed request method")
    if version != "SIP/2.0" and not _version_match(version):
        raise ParseError("Malformed SIP version in request line")
    if not spaced_right:
        problems.insert(0, "Malformed request line")
    elif not _ruri_match(ruri):
        problems.insert(0, "Malformed Request-URI")

    names = headers._names
    values = headers._values
    headers._cache = {}
    missing = [n for n in ("Via", "From", "To", "Call-ID", "CSeq") if n not in names]
    if missing:
        fatal: str | None = f"Missing {missing[0]} header"
    else:
        fatal = None
        count = names.count
        index = names.index
        try:
            top = _top_via(values[index("Via")])
            if count("From") + count("To") + count("Call-ID") + count("CSeq") != 4:
                for name in ("From", "To", "Call-ID", "CSeq"):
                    _single(names, values, name)
            fr = _parse_name_addr(values[index("From")], "From")
            to = _parse_name_addr(values[index("To")], "To")
            cid = values[index("Call-ID")]
            if not _call_id_match(cid):
                raise ParseError("Malformed Call-ID header")
            cseq = _parse_cseq(values[index("CSeq")])
        except ParseError as err:
            problems.insert(0, err.reason)
        else:
            headers._cache = {"Via^": top, "From": fr, "To": to, "Call-ID": cid, "CSeq": cseq}
            if cseq.method != method:
                problems.insert(0, "CSeq method does not match request method")

    req = Request.__new__(Request)
    req.method = method
    req._uri = None
    req._uri_text = ruri
    req.version = version
    req.headers = headers
    req._wire = None
    return req, fatal


def _finish_response(first: str, headers: Headers, problems: list[str]) -> Response:
    """Status line and the headers every response needs."""
    version, _, rest = first.partition(" ")
    code, _, phrase = rest.partition(" ")
    if not _status_match(code):
        raise ParseError("Malformed status line")
    if version != "SIP/2.0":
        if not _version_match(version):
            raise ParseError("Malformed SIP version in status line")
        if version.upper() != "SIP/2.0":
            raise ParseError("Version Not Supported", 505)
    names = headers._names
    values = headers._values
    count = names.count
    index = names.index
    if "Via" not in names:
        raise ParseError("Missing Via header")
    top = _top_via(values[index("Via")])
    if count("From") != 1 or count("To") != 1 or count("Call-ID") != 1 or count("CSeq") != 1:
        _single(names, values, "From")
        _single(names, values, "To")
        _single(names, values, "Call-ID")
        _single(names, values, "CSeq")
    fr = _parse_name_addr(values[index("From")], "From")
    to = _parse_name_addr(values[index("To")], "To")
    cid = values[index("Call-ID")]
    if not _call_id_match(cid):
        raise ParseError("Malformed Call-ID header")
    cseq = _parse_cseq(values[index("CSeq")])
    headers._cache = {"Via^": top, "From": fr, "To": to, "Call-ID": cid, "CSeq": cseq}
    resp = Response.__new__(Response)
    resp.status = int(code)
    resp.reason = phrase
    resp.version = version
    resp.headers = headers
    resp._wire = None
    return resp


def _request_for_error(head: bytes) -> Request | None:
    """The request to answer a framing error with, when its head is usable."""
    try:
        msg = _parse(head, True)
    except ParseError as err:
        return err.request
    except Exception:  # any failure here just means "cannot answer"
        return None
    return msg if isinstance(msg, Request) else None


# ---------------------------------------------------------------------------
# Answering
# ---------------------------------------------------------------------------


def _derive_tag(request: Request) -> str:
    h = request.headers
    parts = (
        h._first("Call-ID") or "",
        h._first("From") or "",
        h._first("CSeq") or "",
        h._first("Via") or "",
    )
    key = "\x00".join(parts).encode("utf-8", "surrogateescape")
    return hashlib.blake2s(key, digest_size=8, key=_TAG_SECRET).hexdigest()


def response_to(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
) -> Response:
    """Build a response to *request* as RFC 3261 §8.2.6 says.

    Copies every Via (in order), From, To, Call-ID and CSeq (and Timestamp
    for 100). When *status* > 100 and the To has no tag, adds ``;tag=`` with
    *to_tag*, or else a tag derived from the request with a per-process
    secret (the same request always gets the same tag; nobody can predict
    it). A To that already has a tag is kept as it is. The reason defaults
    to the standard phrase. The body is empty; add headers to
    ``response.headers`` as needed.

    A request refused as malformed may carry these headers malformed or
    more than once: the first of each is then copied as received (a To
    that does not parse gets no tag), so the sender can still match the
    answer to its request. Raises ParseError when one of them is missing.
    """
    rh = request.headers
    rnames = rh._names
    rvalues = rh._values
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in rnames:
            raise ParseError(f"Missing {name} header")
    cache = rh._cache
    copied: dict[str, Any] = {
        k: cache[k] for k in ("Via^", "Via", "From", "Call-ID", "CSeq") if k in cache
    }
    names = [n for n in rnames if n == "Via"]
    values = [rvalues[i] for i, n in enumerate(rnames) if n == "Via"]
    to_text = rh._first("To") or ""
    try:
        to: NameAddr | None = request.to
    except ParseError:
        to = None  # copied as received
    if to is not None:
        if status > 100 and to.tag is None:
            to_text = f"{to_text};tag={to_tag or _derive_tag(request)}"
        else:
            copied["To"] = to
    names += ("From", "To", "Call-ID", "CSeq")
    values += (
        rh._first("From") or "",
        to_text,
        rh._first("Call-ID") or "",
        rh._first("CSeq") or "",
    )
    if status == 100 and "Timestamp" in rnames:
        names.append("Timestamp")
        values.append(rvalues[rnames.index("Timestamp")])
    headers = Headers._from_lists(names, values)
    headers._cache = copied
    return Response(status, reason, headers)
