"""Property tests of the SIP parser, serializer and stream framer (hypothesis).

A strategy builds well-formed requests and responses from the RFC 3261
grammar together with a model of what they mean; the tests check that the
parser recovers the model, that parse/serialize round-trips, that junk and
mutated messages only ever raise ParseError (typed accessors included), that
the stream framer reassembles any split of several messages, and that
64 KiB adversarial header values are parsed or refused in bounded work.
"""

from __future__ import annotations

import functools
import ipaddress
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sbc.sip.framing import KEEPALIVE_PING, StreamFramer
from sbc.sip.message import Request, Response, parse_message, response_to

from .test_torture import display, exercise, param, unquote

SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Fewer examples where each one is big (several messages, or 64 KiB).
FEWER = settings(SETTINGS, max_examples=100)
BIG = settings(SETTINGS, max_examples=40)

CRLF = "\r\n"
ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
TOKEN = ALNUM + "-.!%*_+`'~"
UNRESERVED = ALNUM + "-_.!~*'()"
USER = UNRESERVED + "&=+$,;?/"
BARE_USER = UNRESERVED + "&=+$"
PASSWORD = UNRESERVED + "&=+$,"
BARE_PASSWORD = UNRESERVED + "&=+$"  # §20: a URI with , ; or ? must stand inside <>
PARAM = UNRESERVED + "[]/:&+$"
HEADER_VALUE = UNRESERVED + "[]/?:+$"
WORD = ALNUM + "-.!%*_+`'~()<>:\\\"/[]?{}"
TEXT = "".join(chr(c) for c in range(0x21, 0x7F)) + "éü中文ж€"
REASON = UNRESERVED + ";/?:@&=+$," + "éü中文ж€"
RESERVED_URI_PARAMS = {"transport", "user", "ttl", "maddr", "method", "lr"}

# Strategies are built once (module level or cached): building them inside
# composite strategies on every draw makes generation several times slower.


@functools.cache
def chars(alphabet: str, min_size: int = 1, max_size: int = 10) -> st.SearchStrategy[str]:
    """Strings over ``alphabet``."""
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


_ESCAPED = st.integers(0, 255).map(lambda b: f"%{b:02X}")


@functools.cache
def escapable(alphabet: str, min_size: int = 1, max_size: int = 10) -> st.SearchStrategy[str]:
    """Strings over ``alphabet`` mixed with %HEX HEX escapes (any octet, NUL included)."""
    return st.lists(
        st.one_of(chars(alphabet, 1, 3), _ESCAPED), min_size=min_size, max_size=max_size
    ).map("".join)


@functools.cache
def sep(char: str) -> st.SearchStrategy[str]:
    """A separator with the optional LWS the grammar allows around it (SWS / LWS)."""
    return st.sampled_from([char, char, char, f" {char}", f"{char} ", f" {char} "])


@functools.cache
def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy`` or None."""
    return st.one_of(st.none(), strategy)


BOOLS = st.booleans()
token = chars(TOKEN, 1, 12)
label = st.builds(
    lambda a, b: a + (f"-{b}" if b else ""), chars(LOWER_ALNUM, 1, 6), chars(LOWER_ALNUM, 0, 3)
)
toplabel = st.builds(
    lambda a, b: a + b, st.sampled_from(string.ascii_lowercase), chars(LOWER_ALNUM, 0, 5)
)
hostname = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(label, max_size=2), toplabel
)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: f"[{ipaddress.IPv6Address(n)}]")
host = st.one_of(hostname, ipv4, ipv6)
port = optional(st.integers(1, 65535))
uri_param_name = chars(UNRESERVED, 1, 8).filter(lambda n: n.lower() not in RESERVED_URI_PARAMS)
uri_params = st.lists(
    st.one_of(st.tuples(uri_param_name, optional(escapable(PARAM, 1, 6))), st.just(("lr", None))),
    max_size=3,
).map(tuple)
uri_headers = st.lists(
    st.tuples(chars(ALNUM + "-", 1, 8), escapable(HEADER_VALUE, 0, 6)), max_size=2
).map(tuple)
#: Free text (TEXT-UTF8-TRIM): no leading/trailing white space, single inner spaces.
text = st.lists(chars(TEXT, 1, 8), min_size=1, max_size=4).map(" ".join)
#: Reason-Phrase: reserved / unreserved / escaped / UTF8-NONASCII / SP (RFC 3261 §25.1).
reason_phrase = st.lists(escapable(REASON, 1, 6), min_size=1, max_size=3).map(" ".join)
#: User-Agent / Server: product *(LWS product), product = token [SLASH token].
products = st.lists(
    st.builds(lambda a, b: a + (f"/{b}" if b else ""), token, optional(token)),
    min_size=1,
    max_size=3,
).map(" ".join)
quoted_text = chars(" " + TEXT + '"\\', 0, 16)
gratuitous_escapes = st.lists(BOOLS, max_size=4)
token_words = st.lists(token, min_size=1, max_size=3).map(" ".join)
generic_params = st.lists(st.tuples(token, optional(token)), max_size=2)
q_values = st.sampled_from(["0", "0.5", "1", "1.0", "0.001", "0.75", "1.000", "0."])
uint32 = st.integers(0, 2**32 - 1)
display_gap = st.sampled_from([" ", "", "  "])
transports = st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp", "Tls"])
slashes = st.sampled_from(["/", "/", " / "])
rports = st.sampled_from([None, True, 5060, 65535, 1])
via_extensions = optional(st.tuples(st.sampled_from(["x", "ext", "foo"]), token))


@dataclass
class UriModel:
    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    headers: tuple[tuple[str, str], ...]
    text: str


def _render_uri(
    scheme: str,
    user: str | None,
    password: str | None,
    the_host: str,
    the_port: int | None,
    params: tuple[tuple[str, str | None], ...],
    headers: tuple[tuple[str, str], ...],
) -> UriModel:
    out = f"{scheme}:"
    if user is not None:
        password = password if password else None
        out += user + (f":{password}" if password is not None else "") + "@"
    else:
        password = None
    out += the_host + (f":{the_port}" if the_port is not None else "")
    out += "".join(f";{n}" + (f"={v}" if v is not None else "") for n, v in params)
    if headers:
        out += "?" + "&".join(f"{n}={v}" for n, v in headers)
    return UriModel(scheme, user, password, the_host, the_port, params, headers, out)


@functools.cache
def uris(bare: bool = False, with_headers: bool = False) -> st.SearchStrategy[UriModel]:
    """A sip:/sips: URI; ``bare`` ones may stand outside <> (no ; ? , in them)."""
    return st.builds(
        _render_uri,
        st.sampled_from(["sip", "sips"]),
        optional(escapable(BARE_USER if bare else USER, 1, 10)),
        st.one_of(
            st.just(None),
            st.just(None),
            st.just(None),
            escapable(BARE_PASSWORD if bare else PASSWORD, 1, 6),
        ),
        host,
        port,
        st.just(()) if bare else uri_params,
        uri_headers if with_headers else st.just(()),
    )


@dataclass
class NameAddrModel:
    display: str | None
    uri: UriModel
    tag: str | None = None
    expires: int | None = None
    q: float | None = None
    params: dict[str, str] = field(default_factory=dict)
    text: str = ""


def quote(value: str, gratuitous: list[bool]) -> str:
    """A quoted-string for ``value``; some ordinary characters get a needless backslash."""
    out = []
    for index, char in enumerate(value):
        needless = gratuitous[index % len(gratuitous)] if gratuitous else False
        out.append("\\" + char if char in '"\\' or (needless and ord(char) < 0x7F) else char)
    return '"' + "".join(out) + '"'


@st.composite
def display_names(draw: st.DrawFn) -> tuple[str, str] | None:
    """None, or (meaning, wire form) of a display name: tokens or a quoted string."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return None
    if kind == 1:
        words = draw(token_words)
        return words, words
    value = draw(quoted_text)
    return value, quote(value, draw(gratuitous_escapes))


@st.composite
def name_addrs(draw: st.DrawFn, role: str) -> NameAddrModel:
    """A From/To/Contact/Route value with its header parameters."""
    routing = role in ("route", "record-route")
    angle = routing or draw(BOOLS)
    dn = draw(display_names()) if angle and not routing else None
    uri = draw(uris(bare=not angle, with_headers=angle and role == "contact"))
    out = ""
    if dn is not None:
        out += dn[1] + draw(display_gap)
    out += f"<{uri.text}>" if angle else uri.text
    model = NameAddrModel(dn[0] if dn else None, uri)
    parts: list[tuple[str, str | None]] = []
    if role in ("from", "to") and draw(BOOLS):
        model.tag = draw(token)
        parts.append(("tag", model.tag))
    if role == "contact":
        if draw(BOOLS):
            model.expires = draw(uint32)
            parts.append(("expires", str(model.expires)))
        if draw(BOOLS):
            q = draw(q_values)
            model.q = float(q)
            parts.append(("q", q))
        if draw(BOOLS):
            instance = f'"<urn:uuid:{draw(st.uuids())}>"'
            model.params["+sip.instance"] = unquote(instance) or ""
            parts.append(("+sip.instance", instance))
    for name, value in draw(generic_params):
        if name.lower() in ("tag", "expires", "q") or name.lower() in model.params:
            continue
        model.params[name.lower()] = value or ""
        parts.append((name, value))
    for name, value in draw(st.permutations(parts)) if len(parts) > 1 else parts:
        out += draw(sep(";")) + name + (draw(sep("=")) + value if value is not None else "")
    model.text = out
    return model


@dataclass
class ViaModel:
    transport: str
    host: str
    port: int | None
    branch: str
    received: str | None
    rport: int | bool | None
    text: str


@st.composite
def vias(draw: st.DrawFn) -> ViaModel:
    """One via-parm: sent-protocol, sent-by, branch/received/rport and others."""
    transport = draw(transports)
    slash = draw(slashes)
    the_host, the_port = draw(host), draw(port)
    branch = "z9hG4bK" + draw(token)
    out = f"SIP{slash}2.0{slash}{transport} {the_host}" + (
        f":{the_port}" if the_port is not None else ""
    )
    params: list[tuple[str, str | None]] = [("branch", branch)]
    received = draw(optional(ipv4))
    if received is not None:
        params.append(("received", received))
    rport: int | bool | None = draw(rports)
    if rport is True:
        params.append(("rport", None))
    elif rport is not None:
        params.append(("rport", str(rport)))
    extension = draw(via_extensions)
    if extension is not None:
        params.append(extension)
    for name, value in draw(st.permutations(params)) if len(params) > 1 else params:
        out += draw(sep(";")) + name + (draw(sep("=")) + value if value is not None else "")
    return ViaModel(transport.upper(), the_host, the_port, branch, received, rport, out)


@dataclass
class Model:
    wire: bytes
    start: tuple[Any, ...]
    vias: list[ViaModel]
    from_: NameAddrModel
    to: NameAddrModel
    call_id: str
    cseq: tuple[int, str]
    max_forwards: int | None
    contacts: list[NameAddrModel] | str
    routes: list[NameAddrModel]
    record_routes: list[NameAddrModel]
    extras: dict[str, str]
    warnings: list[tuple[int, str, str]]
    expires: int | None
    body: bytes


via_groups = st.lists(st.lists(vias(), min_size=1, max_size=3), min_size=1, max_size=2)
via_joiners = st.sampled_from([",", ", ", " , "])
contact_groups = st.lists(st.lists(name_addrs("contact"), min_size=1, max_size=2), max_size=2)
route_groups = {
    role: st.lists(st.lists(name_addrs(role), min_size=1, max_size=2), max_size=1)
    for role in ("route", "record-route")
}
call_ids = st.builds(
    lambda a, b: a + (f"@{b}" if b else ""), chars(WORD, 1, 16), optional(chars(WORD, 1, 10))
)
cseq_gaps = st.sampled_from([" ", "  "])
extra_headers = st.lists(
    st.one_of(
        st.tuples(st.just("Subject"), st.just("s"), text),
        st.tuples(
            st.just("Supported"),
            st.just("k"),
            st.lists(token, min_size=1, max_size=3).map(", ".join),
        ),
        st.tuples(st.just("Allow-Events"), st.just("u"), token),
        st.tuples(st.just("User-Agent"), st.none(), products),
        st.tuples(token.map(lambda t: f"X-{t}"), st.none(), text),
    ),
    max_size=3,
)
warning_values = st.lists(
    st.tuples(st.integers(300, 399), hostname, chars(" " + TEXT, 0, 12)), min_size=1, max_size=2
)
content_types = st.sampled_from(["application/sdp", "text/plain", "application/octet-stream"])
spellings = {
    name: st.sampled_from(
        sorted({name, name.lower(), name.upper()} | ({compact} if compact else set()))
    )
    for name, compact in (
        ("Via", "v"),
        ("From", "f"),
        ("To", "t"),
        ("Call-ID", "i"),
        ("CSeq", None),
        ("Max-Forwards", None),
        ("Contact", "m"),
        ("Route", None),
        ("Record-Route", None),
        ("Subject", "s"),
        ("Supported", "k"),
        ("Allow-Events", "u"),
        ("User-Agent", None),
        ("Warning", None),
        ("Expires", None),
        ("Content-Type", "c"),
        ("Content-Length", "l"),
    )
}


@st.composite
def messages(draw: st.DrawFn) -> Model:
    """A well-formed request or response and what it means."""
    kind = draw(st.sampled_from(["request", "response"]))
    lines: list[tuple[str, str, str, list[Any]]] = []  # (name, value, role, items)

    def add(name: str, value: str, role: str = "", items: Any = ()) -> None:
        spelling = draw(spellings[name]) if name in spellings else name
        lines.append((spelling, value, role, list(items)))

    for group in draw(via_groups):
        add("Via", draw(via_joiners).join(v.text for v in group), "via", group)
    from_, to = draw(name_addrs("from")), draw(name_addrs("to"))
    add("From", from_.text)
    add("To", to.text)
    call_id = draw(call_ids)
    add("Call-ID", call_id)
    method = draw(token) if kind == "request" else None
    seq = draw(st.integers(0, 2**31 - 1))
    cseq_method = method or draw(token)
    add("CSeq", f"{seq}{draw(cseq_gaps)}{cseq_method}")
    max_forwards = draw(optional(st.integers(0, 255)))
    if max_forwards is not None:
        add("Max-Forwards", str(max_forwards))
    contacts: list[NameAddrModel] | str = []
    if draw(st.integers(0, 5)) == 0:
        contacts = "*"
        add("Contact", "*")
    else:
        for group in draw(contact_groups):
            add("Contact", ", ".join(c.text for c in group), "contact", group)
    for header, role in (("Route", "route"), ("Record-Route", "record-route")):
        for group in draw(route_groups[role]):
            add(header, ",".join(r.text for r in group), role, group)
    extras: dict[str, str] = {}
    for index, (name, _compact, value) in enumerate(draw(extra_headers)):
        unique = f"X-{index}-{name[2:]}" if name.startswith("X-") else name
        if unique.lower() in (e.lower() for e in extras):
            continue
        extras[unique] = value
        # Fold a value at one of its spaces now and then (RFC 3261 §7.3.1).
        wire_value = value
        if " " in value and draw(BOOLS):
            cut = value.index(" ")
            wire_value = value[:cut] + CRLF + value[cut:]
        add(unique, wire_value)
    warnings: list[tuple[int, str, str]] = []
    if draw(BOOLS):
        warnings = draw(warning_values)
        add("Warning", ", ".join(f"{c} {a} {quote(t, [])}" for c, a, t in warnings))
    expires = draw(optional(uint32))
    if expires is not None:
        add("Expires", str(expires))
    body = draw(st.binary(max_size=200))
    if body:
        add("Content-Type", draw(content_types))
    add("Content-Length", str(len(body)))
    lines = draw(st.permutations(lines))

    if kind == "request":
        ruri = draw(uris())
        start: tuple[Any, ...] = ("request", method, ruri)
        start_line = f"{method} {ruri.text} SIP/2.0"
    else:
        status = draw(st.integers(100, 699))
        reason = draw(st.one_of(st.just(""), reason_phrase))
        start = ("response", status, reason)
        start_line = f"SIP/2.0 {status} {reason}"
    head = start_line + CRLF
    for name, value, _role, _items in lines:
        head += name + draw(sep(":")) + value + CRLF

    def items(role: str) -> list[Any]:
        return [item for _n, _v, r, its in lines if r == role for item in its]

    return Model(
        wire=(head + CRLF).encode("utf-8") + body,
        start=start,
        vias=items("via"),
        from_=from_,
        to=to,
        call_id=call_id,
        cseq=(seq, cseq_method),
        max_forwards=max_forwards,
        contacts=contacts if contacts == "*" else items("contact"),
        routes=items("route"),
        record_routes=items("record-route"),
        extras=extras,
        warnings=warnings,
        expires=expires,
        body=body,
    )


def _shown(value: Any) -> Any:
    """What to print of a test input: the wire bytes of models."""
    if isinstance(value, Model):
        return value.wire
    if isinstance(value, (list, tuple)):
        return type(value)(_shown(v) for v in value)
    return value


def show_input(test: Callable[..., None]) -> Callable[..., None]:
    """Put the (shrunk) input in the failure message: trial does not print hypothesis' notes."""

    @functools.wraps(test)
    def wrapper(self: SynchronousTestCase, *args: Any, **kwargs: Any) -> None:
        try:
            test(self, *args, **kwargs)
        except Exception as error:
            values = [*args, *kwargs.values()]
            shown = ", ".join(repr(_shown(v)) for v in values if not isinstance(v, st.DataObject))
            raise AssertionError(f"{type(error).__name__}: {error}\ninput: {shown}") from error

    return wrapper


def is_star(contact: Any) -> bool:
    """Whether a Contact value is the wildcard."""
    return bool(getattr(contact, "is_star", False))


class ModelTests(SynchronousTestCase):
    """The parser recovers what the generator meant."""

    def assert_uri(self, got: Any, want: UriModel) -> None:
        self.assertEqual(
            (got.scheme, got.user, got.password, got.host, got.port, got.params, got.headers),
            (
                want.scheme,
                want.user,
                want.password,
                want.host,
                want.port,
                want.params,
                want.headers,
            ),
        )
        self.assertEqual(str(got), got.serialize())

    def assert_name_addr(self, got: Any, want: NameAddrModel) -> None:
        self.assertIn(display(got), (want.display,) if want.display else (None, ""))
        self.assert_uri(got.uri, want.uri)
        self.assertEqual(got.tag, want.tag)
        for name, value in want.params.items():
            self.assertEqual(param(got, name), value, name)

    @SETTINGS
    @given(messages())
    @show_input
    def test_parse_recovers_the_model(self, model: Model) -> None:
        m = parse_message(model.wire)
        if model.start[0] == "request":
            self.assertIsInstance(m, Request)
            self.assertEqual(m.method, model.start[1])
            self.assert_uri(m.uri, model.start[2])
        else:
            self.assertIsInstance(m, Response)
            self.assertEqual((m.status, m.reason), model.start[1:])
        self.assertEqual(m.version, "SIP/2.0")
        got_vias = m.vias
        self.assertEqual(
            [(v.transport, v.host, v.port, v.branch, v.received) for v in got_vias],
            [(v.transport, v.host, v.port, v.branch, v.received) for v in model.vias],
        )
        for got, want in zip(got_vias, model.vias):
            if want.rport is True:
                self.assertTrue(got.rport_requested)
            elif want.rport is not None:
                self.assertEqual(got.rport, want.rport)
        self.assertEqual(m.top_via.branch, model.vias[0].branch)
        self.assert_name_addr(m.from_, model.from_)
        self.assert_name_addr(m.to, model.to)
        self.assertEqual(m.call_id, model.call_id)
        self.assertEqual((m.cseq.seq, m.cseq.method), model.cseq)
        self.assertEqual(m.max_forwards, model.max_forwards)
        contacts = m.contacts
        if model.contacts == "*":
            self.assertEqual(len(contacts), 1)
            self.assertTrue(is_star(contacts[0]))
        else:
            self.assertEqual(len(contacts), len(model.contacts))
            for got, want in zip(contacts, model.contacts):
                self.assertFalse(is_star(got))
                self.assert_name_addr(got, want)
                self.assertEqual(got.expires, want.expires)
                self.assertEqual(got.q, want.q)
        for got_list, want_list in (
            (m.routes, model.routes),
            (m.record_routes, model.record_routes),
        ):
            self.assertEqual(len(got_list), len(want_list))
            for got, want in zip(got_list, want_list):
                self.assert_name_addr(got, want)
        for name, value in model.extras.items():
            self.assertEqual(m.headers.get(name), value, name)
        self.assertEqual([(w.code, w.agent, unquote(w.text)) for w in m.warnings], model.warnings)
        self.assertEqual(m.expires, model.expires)
        self.assertEqual(m.body, model.body)
        self.assertEqual(m.content_length, len(model.body))


class RoundTripTests(SynchronousTestCase):
    @SETTINGS
    @given(messages())
    @show_input
    def test_parse_serialize_parse(self, model: Model) -> None:
        """parse(m.serialize()) == m, and serializing again changes nothing."""
        m = parse_message(model.wire)
        once = m.serialize()
        again = parse_message(once)
        self.assertEqual(again, m)
        self.assertEqual(again.serialize(), once)
        self.assertEqual(parse_message(again.serialize()).serialize(), once)

    @FEWER
    @given(messages().filter(lambda m: m.start[0] == "request"), st.integers(100, 699))
    @show_input
    def test_responses_to_requests(self, model: Model, status: int) -> None:
        """response_to copies Via/From/To/Call-ID/CSeq and tags the To (RFC 3261 §8.2.6)."""
        request = parse_message(model.wire)
        response = parse_message(response_to(request, status).serialize())
        self.assertEqual(response.status, status)
        self.assertEqual(
            [(v.host, v.port, v.branch) for v in response.vias],
            [(v.host, v.port, v.branch) for v in request.vias],
        )
        self.assertEqual(
            (response.call_id, response.cseq, response.from_.tag),
            (request.call_id, request.cseq, request.from_.tag),
        )
        self.assertEqual(response.to.uri, request.to.uri)
        if status == 100 or request.to.tag is not None:
            self.assertEqual(response.to.tag, request.to.tag)
        else:
            self.assertTrue(response.to.tag)

    @FEWER
    @given(messages(), st.data())
    @show_input
    def test_header_edits_round_trip(self, model: Model, data: st.DataObject) -> None:
        """A message changed through Headers serializes to what was set."""
        m = parse_message(model.wire)
        value = data.draw(text)
        m.headers.set("Subject", value)
        m.headers.add("X-Added", value)
        again = parse_message(m.serialize())
        self.assertEqual(again.headers.get("Subject"), value)
        self.assertEqual(again.headers.get_all("X-Added"), [value])
        self.assertEqual(again.body, m.body)
        self.assertEqual(again.call_id, m.call_id)


#: Bytes that exercise the tokenizers more than random octets do.
SIPISH = " \t\r\n:;,=<>\"\\%@/?&[]*.+-_~!'`()aZ09sip\x00\x7f\xc3\xa9"
HEADER_NAMES = [
    "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Max-Forwards",
    "Content-Length", "l", "Contact", "m", "Route", "Record-Route", "Expires",
    "Warning", "Content-Type", "c", "X-Y",
]  # fmt: skip


@st.composite
def junk_messages(draw: st.DrawFn) -> bytes:
    """A plausible start line then header lines whose values are junk."""
    start = draw(
        st.sampled_from(
            [b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 200 OK", b"OPTIONS sip:x SIP/2.0", b""]
        )
    )
    out = start + b"\r\n"
    for name in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=12)):
        junk = "".join(draw(st.lists(st.sampled_from(SIPISH), max_size=40)))
        out += name.encode() + b":" + junk.encode("latin-1") + b"\r\n"
    return out + draw(st.sampled_from([b"\r\n", b"", b"\r\n\r\nbody"]))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes replaced, deleted or inserted."""
    data = bytearray(draw(messages()).wire)
    for _ in range(draw(st.integers(1, 5))):
        where = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = draw(st.one_of(st.sampled_from(SIPISH.encode("latin-1")), st.integers(0, 255)))
        if what == "insert" or where == len(data):
            data[where:where] = bytes([byte])
        elif what == "replace":
            data[where] = byte
        else:
            del data[where]
    return bytes(data)


class OnlyParseErrorTests(SynchronousTestCase):
    """Whatever arrives, the parser answers with a message or a ParseError."""

    @SETTINGS
    @given(st.binary(max_size=2048))
    @show_input
    def test_random_bytes(self, data: bytes) -> None:
        exercise(data)

    @SETTINGS
    @given(junk_messages())
    @show_input
    def test_junk_header_values(self, data: bytes) -> None:
        exercise(data)

    @SETTINGS
    @given(mutated())
    @show_input
    def test_mutated_messages(self, data: bytes) -> None:
        message = exercise(data)
        if message is not None:
            # What was accepted can be forwarded and parsed again.
            parse_message(message.serialize())

    @FEWER
    @given(messages(), st.integers(0, 10_000))
    @show_input
    def test_truncated_messages(self, model: Model, cut: int) -> None:
        exercise(model.wire[: cut % (len(model.wire) + 1)])


class FramerTests(SynchronousTestCase):
    """StreamFramer returns exactly the messages, whatever the TCP segmentation."""

    @FEWER
    @given(
        st.lists(
            st.tuples(messages(), st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])),
            min_size=1,
            max_size=3,
        ),
        st.lists(st.integers(0, 5000), max_size=12),
    )
    @show_input
    def test_random_splits(self, parts: list[tuple[Model, bytes]], cuts: list[int]) -> None:
        stream = b""
        expected: list[Any] = []
        for model, gap in parts:
            wire = parse_message(model.wire).serialize()
            stream += gap + wire
            if gap == b"\r\n\r\n":
                expected.append(KEEPALIVE_PING)
            expected.append(wire)
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        framer = StreamFramer()
        items: list[Any] = []
        for start, end in zip(points, points[1:]):
            items += framer.feed(stream[start:end])
        self.assertEqual(items, expected)
        for item in items:
            if item is not KEEPALIVE_PING:
                parse_message(item)


def with_header(name: str, value: str) -> bytes:
    """A valid INVITE carrying an extra (or replaced) header ``name: value``."""
    base = {
        "Via": "SIP/2.0/UDP a.example.com;branch=z9hG4bK1",
        "From": "<sip:a@example.com>;tag=1",
        "To": "<sip:b@example.com>",
        "Call-ID": "c1@example.com",
        "CSeq": "1 INVITE",
        "Max-Forwards": "70",
        "Contact": "<sip:a@192.0.2.1>",
    }
    base[name] = value
    lines = "".join(f"{n}: {v}\r\n" for n, v in base.items())
    return f"INVITE sip:b@example.com SIP/2.0\r\n{lines}Content-Length: 0\r\n\r\n".encode()


#: 64 KiB (and then some) of one thing: quadratic or exponential work on any of
#: these makes the suite hang rather than finish.
SIZE = 65536
PATHOLOGICAL = [
    ("Via", "SIP/2.0/UDP a;" * (SIZE // 14)),
    ("Via", "SIP/2.0/UDP a," * (SIZE // 14)),
    ("Via", "SIP/2.0/UDP a.example.com;branch=" + "z" * SIZE),
    ("Via", "," * SIZE),
    ("Via", ";" * SIZE),
    ("Via", "SIP/2.0/UDP [" + ":" * SIZE),
    ("To", '"' * SIZE),
    ("To", '"' + "\\" * SIZE),
    ("To", '"' + '\\"' * (SIZE // 2)),
    ("To", "<" * SIZE),
    ("To", "<" * (SIZE // 2) + ">" * (SIZE // 2)),
    ("To", "a " * (SIZE // 2)),
    ("To", "a " * (SIZE // 2) + "<sip:b@c>"),
    ("To", '"a" ' * (SIZE // 4)),
    ("To", "<sip:b@c>" + ";a=b" * (SIZE // 4)),
    ("To", "<sip:b@c>;" + "=" * SIZE),
    ("To", "<sip:" + "%" * SIZE + "@c>"),
    ("To", "<sip:" + "%4" * (SIZE // 2) + "@c>"),
    ("To", "<sip:" + "a:" * (SIZE // 2) + "@c>"),
    ("To", "<sip:" + "@" * SIZE + ">"),
    ("To", "<sip:b@c" + ";a" * (SIZE // 2) + ">"),
    ("To", "<sip:b@c?" + "a=b&" * (SIZE // 4) + ">"),
    ("To", "sip:b@c" + " " * SIZE),
    ("From", "\\" * SIZE),
    ("From", '"' + "a" * SIZE),
    ("Contact", "<sip:a@b>," * (SIZE // 10)),
    ("Contact", "," * SIZE),
    ("Contact", '<sip:a@b>;p="' + "\\" * SIZE),
    ("Contact", "<sip:a@b>;q=" + "0" * SIZE),
    ("Contact", "*" * SIZE),
    ("Route", "<" + "sip:" * (SIZE // 4) + ">"),
    ("Call-ID", "x" * SIZE),
    ("Call-ID", "@" * SIZE),
    ("CSeq", "1" * SIZE + " INVITE"),
    ("CSeq", "1 " + "I" * SIZE),
    ("Max-Forwards", "7" * SIZE),
    ("Warning", "399 " + "a" * SIZE + ' "x"'),
    ("Warning", '399 a "' + "\\" * SIZE),
    ("Expires", "9" * SIZE),
    ("X-Folded", "a\r\n " * (SIZE // 4)),
    ("X-Spaces", " " * SIZE + "a"),
]
UNITS = [
    ";", ",", "=", "<", ">", '"', "\\", "%", "a ", "a;", ";a", "a=", "<a", '"a', '\\"',
    "sip:", "@", ":", "[", "]", "?", "&", " ", "\t", "\r\n ", "a,", "SIP/2.0/UDP a;",
    "<sip:a@b>,", '"\\', "%2", "a\t",
]  # fmt: skip


class BoundedWorkTests(SynchronousTestCase):
    """64 KiB adversarial values complete (parsed or refused).

    No wall-clock thresholds: an exponential or quadratic algorithm shows up
    as this test not finishing.
    """

    def test_pathological_headers(self) -> None:
        for name, value in PATHOLOGICAL:
            exercise(with_header(name, value))

    def test_pathological_request_lines(self) -> None:
        for line in (
            "INVITE sip:" + "a" * SIZE + "@b SIP/2.0",
            "INVITE sip:b@c" + ";x" * (SIZE // 2) + " SIP/2.0",
            "INVITE " + "<" * SIZE + " SIP/2.0",
            "I" * SIZE + " sip:b@c SIP/2.0",
            "INVITE sip:b@c SIP/" + "2" * SIZE,
            "SIP/2.0 200 " + "x " * (SIZE // 2),
            " " * SIZE,
        ):
            data = with_header("X-A", "b").split(b"\r\n", 1)[1]
            exercise(line.encode() + b"\r\n" + data)

    def test_many_headers(self) -> None:
        head = with_header("X-A", "b")[:-2]
        exercise(head + b"X: y\r\n" * (SIZE // 6) + b"\r\n")
        exercise(head + b"Via: SIP/2.0/UDP h\r\n" * (SIZE // 20) + b"\r\n")
        start, rest = with_header("X-A", "b").split(b"\r\n", 1)
        exercise(start + b"\r\nX-F: a" + b"\r\n a" * (SIZE // 4) + b"\r\n" + rest)

    @BIG
    @given(
        st.sampled_from(
            ["Via", "From", "To", "Contact", "Route", "Call-ID", "CSeq", "Warning", "X-Y"]
        ),
        st.lists(st.sampled_from(UNITS), min_size=1, max_size=4).map("".join),
        st.sampled_from(["", "<sip:a@b>", '"', "SIP/2.0/UDP h;branch=z9hG4bKx"]),
    )
    @show_input
    def test_repeated_units(self, name: str, unit: str, prefix: str) -> None:
        exercise(with_header(name, prefix + unit * (SIZE // len(unit))))
