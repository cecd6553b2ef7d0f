"""RFC 4475 and RFC 5118 torture messages against sbc.sip.

The corpus lives in tests/sip/torture/ (one ``<name>.sip`` file per RFC
message, see its README.txt). Valid messages must parse with the meaning the
RFC describes; invalid ones must be refused the way the RFC asks; and nothing,
not a prefix nor a one-byte mutation of any message, may raise anything but
:class:`ParseError`, neither from parse_message nor from a typed accessor.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import ParseError
from sbc.sip import uri as uri_module
from sbc.sip.framing import KEEPALIVE_PING, StreamFramer
from sbc.sip.message import Request, Response, parse_message, response_to
from sbc.sip.uri import parse_uri, unescape

TORTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")

VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
]
INVALID = [
    "badinv01",
    "clerr",
    "ncl",
    "scalar02",
    "scalarlg",
    "quotbal",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "trws",
    "escruri",
    "baddate",
    "regbadct",
    "badaspec",
    "baddn",
    "badvers",
    "mismatch01",
    "mismatch02",
    "bigcode",
]
TRANSACTION = ["badbranch"]
APPLICATION = [
    "insuf",
    "unkscm",
    "novelsc",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "multi01",
    "mcl01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
]
COMPAT = ["inv2543"]
ALL = VALID + INVALID + TRANSACTION + APPLICATION + COMPAT

#: RFC 5118 (IPv6): every message is valid but ipv6-bad (§4.2).
RFC5118 = [
    "ipv6-good",
    "ipv6-bad",
    "port-ambiguous",
    "port-unambiguous",
    "via-received-param-with-delim",
    "via-received-param-no-delim",
    "ipv6-in-sdp",
    "mult-ip-in-header",
    "mult-ip-in-sdp",
    "ipv4-mapped-ipv6",
    "ipv6-bug-abnf-3-colons",
    "ipv6-correct-abnf-2-colons",
]

#: Messages the RFC calls well formed: they parse, serialize and re-parse.
WELL_FORMED = [
    *VALID,
    *TRANSACTION,
    *(n for n in APPLICATION if n not in ("insuf", "multi01", "mcl01")),
    *COMPAT,
]

#: The typed accessors of both message kinds (spec: sip-api.md, message.py).
ACCESSORS = (
    "vias",
    "top_via",
    "from_",
    "to",
    "call_id",
    "cseq",
    "max_forwards",
    "content_length",
    "expires",
    "contacts",
    "routes",
    "record_routes",
    "warnings",
    "content_type",
)

#: Properties of typed values that may parse further on access.
VALUE_PROPERTIES = (
    "branch",
    "received",
    "rport",
    "rport_requested",
    "maddr",
    "ttl",
    "sent_by",
    "tag",
    "q",
    "expires",
    "is_star",
    "uri",
    "display_name",
    "params",
    "headers",
    "user",
    "password",
    "host",
    "port",
    "is_secure",
)

SDP_TEMPLATE = (
    b"v=0\r\no=mhandley 29739 7272939 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
    b"m=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
)


@functools.cache
def load(name: str) -> bytes:
    """The bytes of torture message ``name``."""
    with open(os.path.join(TORTURE, name + ".sip"), "rb") as handle:
        return handle.read()


def sdp(origin: bytes, connection: bytes | None = None) -> bytes:
    """The RFC 4475 SDP body with the given addresses."""
    return SDP_TEMPLATE % (origin, connection or origin)


def unquote(text: str | None) -> str | None:
    """A quoted-string's content with quoted-pairs undone; other text as is.

    The API leaves open whether display names and parameter values keep their
    quotes, so the tests compare meanings, not spellings.
    """
    if text is None or len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    out = []
    chars = iter(text[1:-1])
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def display(name_addr: Any) -> str | None:
    """The display name of a NameAddr, unquoted; None or "" when absent."""
    return unquote(name_addr.display_name)


def params_of(value: Any) -> list[tuple[str, str | None]]:
    """``value.params`` as a list of (name, value) pairs."""
    return [(str(p[0]), p[1]) for p in value.params]


def param(value: Any, name: str) -> str | None:
    """A parameter's value by case-insensitive name: "" for a flag, None if absent."""
    for key, val in params_of(value):
        if key.lower() == name.lower():
            return "" if val is None else unquote(val)
    return None


def touch(value: Any, depth: int = 0) -> None:
    """Access every property of a typed value (and what it holds) and serialize it."""
    if depth > 3 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            touch(item, depth + 1)
        return
    for prop in VALUE_PROPERTIES:
        if not hasattr(type(value), prop):
            continue
        if prop == "uri" and getattr(value, "is_star", False):
            continue  # the '*' Contact has no URI (asking is a programming error)
        try:
            inner = getattr(value, prop)
        except ParseError as error:
            check_cause(error)
            continue
        touch(inner, depth + 1)
    serialize = getattr(value, "serialize", None)
    if callable(serialize):
        serialize()


class MaskedCrashError(AssertionError):
    """A ParseError that only wraps an unexpected exception (a parser bug)."""


def check_cause(error: ParseError) -> None:
    """Refuse a ParseError raised ``from`` an exception that is not a ParseError.

    parse_message turns any stray exception into ParseError("Malformed
    message"); that keeps callers safe, but the stray exception is still a bug.
    """
    cause = error.__cause__
    if cause is not None and not isinstance(cause, ParseError):
        frame = traceback.extract_tb(cause.__traceback__)[-1]
        raise MaskedCrashError(
            f"ParseError({error.reason!r}) masks {type(cause).__name__}: {cause} "
            f"(at {os.path.basename(frame.filename)}:{frame.lineno})"
        )


def exercise(data: bytes) -> Request | Response | None:
    """parse_message + every typed accessor + serialize; only ParseError may escape.

    Returns the message, or None when parse_message refused the bytes.
    """
    try:
        message = parse_message(data)
    except ParseError as error:
        check_cause(error)
        return None
    names = (*ACCESSORS, "uri", "method") if isinstance(message, Request) else ACCESSORS
    for name in names:
        try:
            value = getattr(message, name)
        except ParseError as error:
            check_cause(error)
            continue
        touch(value)
    message.serialize()
    return message


def collect_failures(cases: Iterable[tuple[str, bytes]]) -> list[str]:
    """Run :func:`exercise` on each (label, bytes); describe every non-ParseError."""
    failures = []
    for label, data in cases:
        try:
            exercise(data)
        except Exception as error:
            frame = traceback.extract_tb(error.__traceback__)[-1]
            failures.append(
                f"{label}: {type(error).__name__}: {error} "
                f"(at {os.path.basename(frame.filename)}:{frame.lineno}) input={data[:120]!r}"
            )
    return failures


def report(failures: list[str]) -> str:
    """A readable assertion message for a list of failures."""
    shown = "\n".join(failures[:25])
    return f"{len(failures)} failures; first ones:\n{shown}"


#: Byte values used for the deterministic one-byte mutations.
MUTATION_BYTES = b'\x00 \t\r\n:;,=<>"\\%@/?&[]0-9aZ\x7f\x80\xff'


def mutations(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Deterministic one-byte mutations of ``data``: replace, delete and insert."""
    for index in range(len(data)):
        byte = MUTATION_BYTES[(index * 7) % len(MUTATION_BYTES)]
        yield f"replace[{index}]={byte:#04x}", data[:index] + bytes([byte]) + data[index + 1 :]
        if index % 3 == 0:
            yield f"delete[{index}]", data[:index] + data[index + 1 :]
        if index % 3 == 1:
            other = MUTATION_BYTES[(index * 11) % len(MUTATION_BYTES)]
            yield f"insert[{index}]={other:#04x}", data[:index] + bytes([other]) + data[index:]


@functools.cache
def mutation_results() -> tuple[list[str], list[str]]:
    """Every mutation of every file, exercised once for the two tests that read it.

    Returns (non-ParseError failures, accepted inputs whose serialization does
    not parse back to an equal message).
    """
    failures = collect_failures(
        (f"{name} {label}", data) for name in ALL for label, data in mutations(load(name))
    )
    unparseable = []
    for name in ALL:
        for label, data in mutations(load(name)):
            try:
                message = parse_message(data)
            except Exception:
                continue  # refused, or reported by the first list
            try:
                wire = message.serialize()
                again = parse_message(wire)
                if again != message:
                    raise AssertionError("parse(serialize(m)) != m")
                if again.serialize() != wire:
                    raise AssertionError("serialize() is not idempotent")
            except Exception as error:
                unparseable.append(
                    f"{name} {label}: {type(error).__name__}: {error} input={data[:120]!r}"
                )
    return failures, unparseable


def unsupported_scheme_error() -> type[ParseError] | None:
    """The UnsupportedSchemeError class, wherever the parser defines it."""
    found = getattr(uri_module, "UnsupportedSchemeError", None)
    if found is None:
        from sbc import errors

        found = getattr(errors, "UnsupportedSchemeError", None)
    return found


class CorpusTests(SynchronousTestCase):
    """The data files are the RFC text, expanded as RFC 4475 §2 says."""

    def test_every_rfc_message_has_a_file(self) -> None:
        files = sorted(f[:-4] for f in os.listdir(TORTURE) if f.endswith(".sip"))
        self.assertEqual(files, sorted(ALL + RFC5118))
        self.assertEqual(len(ALL), 49)
        self.assertEqual(len(RFC5118), 12)

    def test_files_match_the_generator(self) -> None:
        spec = importlib.util.spec_from_file_location(
            "rfc4475_corpus", os.path.join(TORTURE, "make_corpus.py")
        )
        assert spec is not None and spec.loader is not None
        corpus = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(corpus)
        self.assertEqual(sorted(corpus.MESSAGES), sorted(ALL + RFC5118))
        self.assertEqual(corpus.RFC5118, RFC5118)
        for name in ALL + RFC5118:
            self.assertEqual(load(name), corpus.decode(name), name)

    def test_bodies_have_the_lengths_the_rfc_states(self) -> None:
        stated = {
            "wsinv": 150,
            "esc01": 150,
            "longreq": 150,
            "mpart01": 553,
            "unreason": 154,
            "badinv01": 152,
            "quotbal": 152,
            "ltgtruri": 159,
            "lwsruri": 159,
            "lwsstart": 150,
            "escruri": 150,
            "baddate": 150,
            "mismatch02": 138,
            "insuf": 152,
            "invut": 40,
            "multi01": 154,
            "bcast": 154,
            "sdp01": 150,
        }
        for name, length in stated.items():
            self.assertEqual(len(load(name).partition(b"\r\n\r\n")[2]), length, name)


class ValidMessageTests(SynchronousTestCase):
    """§3.1.1: well-formed messages, with the interpretation the RFC gives."""

    def parse(self, name: str) -> Any:
        message = parse_message(load(name))
        self.assertIsInstance(message, (Request, Response))
        return message

    def test_wsinv(self) -> None:
        """§3.1.1.1: folding, LWS everywhere, compact forms, escaped quotes."""
        m = self.parse("wsinv")
        self.assertEqual(m.method, "INVITE")
        self.assertEqual(m.version, "SIP/2.0")
        self.assertEqual(
            (m.uri.scheme, m.uri.user, m.uri.host), ("sip", "vivekg", "chair-dnrc.example.com")
        )
        self.assertEqual(m.uri.port, None)
        self.assertEqual(m.uri.params, (("unknownparam", None),))
        self.assertEqual(m.uri.param("unknownparam"), "")
        self.assertIn(display(m.to), (None, ""))
        self.assertEqual((m.to.uri.user, m.to.uri.host), ("vivekg", "chair-dnrc.example.com"))
        self.assertEqual(m.to.uri.params, ())
        self.assertEqual(m.to.tag, "1918181833n")
        self.assertEqual(display(m.from_), 'J Rosenberg \\"')
        self.assertEqual((m.from_.uri.user, m.from_.uri.host), ("jdrosen", "example.com"))
        self.assertEqual(m.from_.tag, "98asjd8")
        self.assertEqual(m.max_forwards, 68)
        self.assertEqual(m.call_id, "wsinv.ndaksdj@192.0.2.1")
        self.assertEqual(m.content_length, 150)
        self.assertEqual((m.cseq.seq, m.cseq.method), (9, "INVITE"))
        vias = m.vias
        self.assertEqual(
            [(v.protocol, v.transport, v.host, v.port, v.branch) for v in vias],
            [
                ("SIP/2.0", "UDP", "192.0.2.2", None, "390skdjuw"),
                ("SIP/2.0", "TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
                ("SIP/2.0", "UDP", "192.168.255.111", None, "z9hG4bK30239"),
            ],
        )
        self.assertEqual(m.top_via.host, "192.0.2.2")
        self.assertEqual(len(m.headers.get_all("Via")), 2)
        self.assertEqual(len(m.headers.get_all("v")), 2)
        # "s :" is an empty Subject.
        self.assertIn("Subject", m.headers)
        self.assertEqual(m.headers.get("Subject"), "")
        self.assertEqual(m.headers.get("s"), "")
        self.assertEqual(
            m.headers.get("NewFangledHeader"), "newfangled value continued newfangled value"
        )
        self.assertEqual(m.headers.get("newfangledheader"), m.headers.get("NewFangledHeader"))
        self.assertEqual(m.headers.get("UnknownHeaderWithUnusualValue"), ";;,,;;,;")
        self.assertEqual(m.content_type, "application/sdp")
        [route] = m.routes
        self.assertEqual(route.uri.host, "services.example.com")
        self.assertTrue(route.uri.has_param("lr"))
        self.assertEqual(route.uri.param("unknownwith"), "value")
        self.assertEqual(route.uri.param("unknown-no-value"), "")
        [contact] = m.contacts
        self.assertEqual(display(contact), 'Quoted string ""')
        self.assertEqual((contact.uri.user, contact.uri.host), ("jdrosen", "example.com"))
        self.assertEqual(param(contact, "newparam"), "newvalue")
        self.assertEqual(param(contact, "secondparam"), "")
        self.assertEqual(contact.q, 0.33)
        self.assertEqual(m.body, sdp(b"192.0.2.3", b"192.0.2.4"))

    def test_intmeth(self) -> None:
        """§3.1.1.2: the full token/word alphabets; % is no escape outside URIs."""
        m = self.parse("intmeth")
        method = "!interesting-Method0123456789_*+`.%indeed'~"
        self.assertEqual(m.method, method)
        self.assertNotEqual(m.method, "INVITE")
        self.assertEqual(m.uri.scheme, "sip")
        self.assertEqual(m.uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        self.assertEqual(m.uri.password, "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        self.assertEqual(m.uri.host, "example.com")
        self.assertEqual((m.uri.params, m.uri.headers), ((), ()))
        self.assertEqual(
            (m.top_via.transport, m.top_via.host, m.top_via.branch),
            ("TCP", "host1.example.com", "z9hG4bK-.!%66*_+`'~"),
        )
        self.assertEqual(display(m.to), "BEL:\x07 NUL:\x00 DEL:\x7f")
        self.assertEqual(m.to.uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        self.assertEqual((m.to.uri.password, m.to.uri.host), (None, "example.com"))
        self.assertEqual(display(m.from_), "token1~` token2'+_ token3*%!.-")
        self.assertEqual(m.from_.uri.user, "mundane")
        self.assertEqual(m.from_.tag, "_token~1'+`*%!-.")
        self.assertEqual(param(m.from_, "fromParam''~+*_!.-%"), "работающий")
        self.assertEqual(m.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
        self.assertEqual((m.cseq.seq, m.cseq.method), (139122385, method))
        self.assertEqual(m.max_forwards, 255)
        self.assertEqual(m.headers.get("extensionHeader-!.%*+_`'~"), "\ufeff大停電")
        self.assertEqual((m.content_length, m.body), (0, b""))

    def test_esc01(self) -> None:
        """§3.1.1.3: %HEX escapes are equivalent to the characters, never recursively."""
        m = self.parse("esc01")
        self.assertEqual(m.uri.user, "sips%3Auser%40example.com")
        self.assertEqual(unescape(m.uri.user), "sips:user@example.com")
        self.assertEqual(m.uri.host, "example.net")
        self.assertEqual(unescape(m.to.uri.user), "user")
        self.assertTrue(m.to.uri.rfc_equal(parse_uri("sip:user@example.com")))
        self.assertEqual(unescape(m.from_.uri.user), "I have spaces")
        self.assertEqual(m.from_.tag, "938")
        self.assertEqual(m.call_id, "esc01.239409asdfakjkn23onasd0-3234")
        self.assertEqual(m.content_type, "application/sdp")
        self.assertEqual(m.max_forwards, 87)
        [contact] = m.contacts
        self.assertEqual(unescape(contact.uri.user), "caller")
        self.assertEqual(contact.uri.host, "host5.example.net")
        self.assertEqual(contact.uri.params, (("%6C%72", None), ("n%61me", "v%61lue%25%34%31")))
        self.assertTrue(
            contact.uri.rfc_equal(parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))
        )
        # "value%41" is NOT "valueA": unescaping is never recursive.
        self.assertFalse(
            contact.uri.rfc_equal(parse_uri("sip:caller@host5.example.net;lr;name=valueA"))
        )
        self.assertEqual(m.body, sdp(b"192.0.2.1"))

    def test_escnull(self) -> None:
        """§3.1.1.4: escaped NULs in user parts; two distinct Contact URIs."""
        m = self.parse("escnull")
        self.assertEqual(m.method, "REGISTER")
        self.assertEqual(m.to.uri.user, "null-%00-null")
        self.assertEqual(unescape(m.to.uri.user), "null-\x00-null")
        self.assertEqual(unescape(m.from_.uri.user), "null-\x00-null")
        self.assertEqual(m.from_.tag, "839923423")
        first, second = m.contacts
        self.assertEqual(
            [unescape(first.uri.user), unescape(second.uri.user)], ["\x00", "\x00\x00"]
        )
        self.assertFalse(first.uri.rfc_equal(second.uri))
        self.assertEqual(m.content_length, 0)

    def test_esc02(self) -> None:
        """§3.1.1.5: % is no escape in methods, display names, header names."""
        m = self.parse("esc02")
        self.assertEqual(m.method, "RE%47IST%45R")
        self.assertNotEqual(m.method, "REGISTER")
        self.assertEqual(m.cseq.method, "RE%47IST%45R")
        self.assertEqual(display(m.to), "%Z%45")
        self.assertEqual(display(m.from_), "%Z%45")
        self.assertEqual(m.top_via.branch, "z9hG4bK209%fzsnel234")
        self.assertEqual([c.uri.user for c in m.contacts], ["alias1", "alias3"])
        self.assertEqual(m.headers.get("C%6Fntact"), "<sip:alias2@host2.example.com>")
        self.assertEqual(len(m.headers.get_all("Contact")), 2)

    def test_lwsdisp(self) -> None:
        """§3.1.1.6: no LWS between a token display name and '<'."""
        m = self.parse("lwsdisp")
        self.assertEqual(display(m.from_), "caller")
        self.assertEqual((m.from_.uri.user, m.from_.uri.host), ("caller", "example.com"))
        self.assertEqual(m.from_.tag, "323")
        self.assertEqual(m.cseq.seq, 60)

    def test_longreq(self) -> None:
        """§3.1.1.7: very long values and 34 Via values in mixed spellings."""
        m = self.parse("longreq")
        self.assertEqual(display(m.to), "I have a user name of " + "extreme" * 10 + " proportion")
        self.assertEqual((m.to.uri.host, m.to.uri.port), ("example.com", 6000))
        self.assertEqual(
            m.to.uri.params,
            (
                ("unknownparam1", "very" + "long" * 20 + "value"),
                ("longparam" + "name" * 25, "shortvalue"),
                ("very" + "long" * 25 + "ParameterNameWithNoValue", None),
            ),
        )
        self.assertEqual(m.from_.uri.user, "amazinglylongcallername" * 5)
        self.assertEqual(m.from_.tag, "12" + "982" * 50 + "424")
        self.assertEqual(
            param(m.from_, "unknownheaderparam" + "name" * 20),
            "unknowheaderparam" + "value" * 15,
        )
        self.assertEqual(param(m.from_, "unknownValueless" + "paramname" * 10), "")
        self.assertEqual(m.call_id, "longreq.one" + "really" * 20 + "longcallid")
        self.assertEqual((m.cseq.seq, m.cseq.method), (3882340, "INVITE"))
        self.assertEqual(
            m.headers.get("Unknown-" + "Long" * 20 + "-Name"),
            "unknown-"
            + "long" * 20
            + "-value; unknown-"
            + "long" * 20
            + "-parameter-name = unknown-"
            + "long" * 20
            + "-parameter-value",
        )
        vias = m.vias
        self.assertEqual(len(vias), 34)
        self.assertEqual(
            [v.host for v in vias[:33]], [f"sip{n}.example.com" for n in range(33, 0, -1)]
        )
        self.assertTrue(all(v.transport == "TCP" for v in vias))
        self.assertEqual(vias[33].host, "host.example.com")
        self.assertEqual(vias[33].received, "192.0.2.5")
        self.assertEqual(vias[33].branch, "very" + "long" * 50 + "branchvalue")
        self.assertEqual(len(m.headers.get_all("Via")), 34)
        self.assertEqual(m.max_forwards, 70)
        self.assertEqual([c.uri.user for c in m.contacts], ["amazinglylongcallername" * 5])
        self.assertEqual(m.content_length, 150)
        self.assertEqual(m.body, sdp(b"192.0.2.1"))

    def test_dblreq(self) -> None:
        """§3.1.1.8: one REGISTER; the INVITE-looking octets after it are ignored."""
        m = self.parse("dblreq")
        self.assertEqual(m.method, "REGISTER")
        self.assertEqual(m.call_id, "dblreq.0ha0isndaksdj99sdfafnl3lk233412")
        self.assertEqual((m.content_length, m.body), (0, b""))
        self.assertEqual(m.max_forwards, 8)
        self.assertEqual([c.uri.user for c in m.contacts], ["j.user"])
        self.assertEqual(m.top_via.branch, "z9hG4bKkdjuw23492")
        self.assertNotIn(b"INVITE", m.serialize())
        for header in ("To", "From", "CSeq", "Call-ID", "Via", "Max-Forwards"):
            self.assertEqual(len(m.headers.get_all(header)), 1, header)

    def test_semiuri(self) -> None:
        """§3.1.1.9: a ';' inside the user part; the user is 'user;par=u@example.net'."""
        m = self.parse("semiuri")
        self.assertEqual(m.uri.user, "user;par=u%40example.net")
        self.assertEqual(unescape(m.uri.user), "user;par=u@example.net")
        self.assertEqual((m.uri.host, m.uri.params), ("example.com", ()))
        self.assertEqual(
            m.headers.values("Accept"),
            [
                "application/sdp",
                "application/pkcs7-mime",
                "multipart/mixed",
                "multipart/signed",
                "message/sip",
                "message/sipfrag",
            ],
        )

    def test_transports(self) -> None:
        """§3.1.1.10: every transport token, including an unknown one."""
        m = self.parse("transports")
        self.assertEqual(
            [(v.transport, v.host) for v in m.vias],
            [
                ("UDP", "t1.example.com"),
                ("SCTP", "t2.example.com"),
                ("TLS", "t3.example.com"),
                ("UNKNOWN", "t4.example.com"),
                ("TCP", "t5.example.com"),
            ],
        )
        self.assertEqual(m.call_id, "transports.kijh4akdnaqjkwendsasfdj")

    def test_mpart01(self) -> None:
        """§3.1.1.11: a multipart body with a binary part (NULs, CRs) kept byte-exact."""
        data = load("mpart01")
        m = self.parse("mpart01")
        body = data.partition(b"\r\n\r\n")[2]
        self.assertEqual(len(body), 553)
        self.assertIn(b"\x00", body)
        self.assertEqual(m.body, body)
        self.assertEqual(m.content_length, 553)
        self.assertEqual(m.method, "MESSAGE")
        self.assertEqual(m.content_type, "multipart/mixed;boundary=7a9cbec02ceef655")
        via = m.top_via
        self.assertEqual((via.host, via.port), ("127.0.0.1", 5070))
        self.assertEqual(via.branch, "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-")
        self.assertTrue(via.rport_requested)
        [route] = m.routes
        self.assertEqual(
            (route.uri.host, route.uri.port, route.uri.user), ("127.0.0.1", 5080, None)
        )
        self.assertTrue(m.headers.get("Identity").startswith("r5mwreLuyDRYBi/0TiPw"))
        self.assertTrue(m.headers.get("Identity").endswith("eeivUhkMWYUA="))
        self.assertEqual(m.headers.get("Date"), "Sat, 15 Oct 2005 04:44:56 GMT")
        self.assertEqual(parse_message(m.serialize()).body, body)
        self.assertTrue(m.serialize().endswith(b"\r\n\r\n" + body))

    def test_unreason(self) -> None:
        """§3.1.1.12: a UTF-8 reason phrase."""
        m = self.parse("unreason")
        self.assertIsInstance(m, Response)
        self.assertEqual(m.status, 200)
        self.assertEqual(m.reason, "= 2**3 * 5**2 но сто девяносто девять - простое")
        self.assertEqual(m.content_length, 154)
        self.assertEqual(m.body, sdp(b"192.0.2.198"))
        self.assertEqual(m.to.tag, "2229")
        self.assertIn("= 2**3 * 5**2 но сто".encode(), m.serialize().split(b"\r\n")[0])

    def test_noreason(self) -> None:
        """§3.1.1.13: an empty reason phrase after the required SP."""
        m = self.parse("noreason")
        self.assertIsInstance(m, Response)
        self.assertEqual((m.status, m.reason), (100, ""))
        self.assertEqual(m.top_via.branch, "z9hG4bK2398ndaoe")

    def test_every_request_can_be_answered(self) -> None:
        """response_to (RFC 3261 §8.2.6) works on every well-formed request."""
        for name in WELL_FORMED:
            request = parse_message(load(name))
            if not isinstance(request, Request):
                continue
            for status in (100, 180, 400, 503):
                response = parse_message(response_to(request, status).serialize())
                label = f"{name} {status}"
                self.assertEqual(response.status, status, label)
                self.assertEqual(
                    [(v.host, v.branch) for v in response.vias],
                    [(v.host, v.branch) for v in request.vias],
                    label,
                )
                self.assertEqual(response.call_id, request.call_id, label)
                self.assertEqual(response.cseq, request.cseq, label)
                self.assertEqual(response.from_.tag, request.from_.tag, label)
                to_text = request.headers.get("To")
                self.assertTrue(response.headers.get("To").startswith(to_text), label)
                if status == 100 or request.to.tag is not None:
                    self.assertEqual(response.to.tag, request.to.tag, label)
                else:
                    self.assertTrue(response.to.tag, label)
                self.assertEqual(response.body, b"", label)

    def test_well_formed_messages_round_trip(self) -> None:
        """parse(serialize(m)) == m and serialization is idempotent."""
        for name in WELL_FORMED:
            m = parse_message(load(name))
            wire = m.serialize()
            again = parse_message(wire)
            self.assertEqual(again, m, name)
            self.assertEqual(again.serialize(), wire, name)
            self.assertEqual(again.body, m.body, name)


class InvalidMessageTests(SynchronousTestCase):
    """§3.1.2: malformed messages are refused as the RFC asks."""

    def refused(self, name: str, status: int = 400) -> ParseError:
        """parse_message(name) raises ParseError with ``status``."""
        error = self.assertRaises(ParseError, parse_message, load(name))
        self.assertEqual(error.status, status, f"{name}: {error!r} {error.reason}")
        self.assertIsInstance(error.reason, str)
        self.assertTrue(error.reason)
        return error

    def assert_answerable(self, error: ParseError, method: str) -> None:
        """The error carries the request, and a response can be built from it."""
        self.assertTrue(error.answerable)
        request = error.request
        assert request is not None
        self.assertEqual(request.method, method)
        response = response_to(request, error.status)
        self.assertEqual(response.status, error.status)
        self.assertEqual(response.call_id, request.call_id)
        self.assertEqual(response.top_via.branch, request.top_via.branch)
        self.assertEqual(response.cseq, request.cseq)

    def refused_or(self, name: str, liberal: Callable[[Any], None]) -> None:
        """Either refused with 400, or (an RFC-allowed liberal reading) ``liberal`` holds."""
        try:
            message = parse_message(load(name))
        except ParseError as error:
            self.assertEqual(error.status, 400, f"{name}: {error.reason}")
            return
        liberal(message)

    def test_badinv01(self) -> None:
        """§3.1.2.1: empty Via/Contact parameters and values: 400."""
        self.refused("badinv01")

    def test_clerr(self) -> None:
        """§3.1.2.2: Content-Length larger than the datagram's body: 400."""
        self.assert_answerable(self.refused("clerr"), "INVITE")

    def test_ncl(self) -> None:
        """§3.1.2.3: a negative Content-Length: an error response."""
        self.assert_answerable(self.refused("ncl"), "INVITE")

    def test_ncl_non_numeric(self) -> None:
        """§3.1.2.3 also names 'Content-Length: five'."""
        data = load("ncl").replace(b"Content-Length: -999", b"Content-Length: five")
        self.assertEqual(self.assertRaises(ParseError, parse_message, data).status, 400)

    def test_scalar02(self) -> None:
        """§3.1.2.4: CSeq > 2**32-1 (and other scalars out of range): 400."""
        self.refused("scalar02")

    def test_scalarlg(self) -> None:
        """§3.1.2.5: a response with out-of-range scalars is discarded."""
        error = self.assertRaises(ParseError, parse_message, load("scalarlg"))
        self.assertFalse(error.answerable)

    def test_quotbal(self) -> None:
        """§3.1.2.6: unterminated quote in To: 400."""
        self.refused("quotbal")

    def test_ltgtruri(self) -> None:
        """§3.1.2.7: Request-URI in <>: 400, or brackets ignored and never forwarded."""

        def liberal(m: Any) -> None:
            self.assertEqual(str(m.uri), "sip:user@example.com")
            self.assertTrue(m.serialize().startswith(b"INVITE sip:user@example.com SIP/2.0\r\n"))

        self.refused_or("ltgtruri", liberal)

    def test_lwsruri(self) -> None:
        """§3.1.2.8: LWS inside the Request-URI: 400, or the LWS ignored."""

        def liberal(m: Any) -> None:
            self.assertTrue(m.uri.has_param("lr"))
            self.assertTrue(m.serialize().startswith(b"INVITE sip:user@example.com;lr SIP/2.0\r\n"))

        self.refused_or("lwsruri", liberal)

    def test_lwsstart(self) -> None:
        """§3.1.2.9: extra SPs in the request line: 400, or never forwarded."""

        def liberal(m: Any) -> None:
            self.assertEqual(str(m.uri), "sip:user@example.com")
            self.assertTrue(m.serialize().startswith(b"INVITE sip:user@example.com SIP/2.0\r\n"))

        self.refused_or("lwsstart", liberal)

    def test_trws(self) -> None:
        """§3.1.2.10: trailing SPs after the version: 400, or never forwarded."""

        def liberal(m: Any) -> None:
            self.assertEqual(m.version, "SIP/2.0")
            self.assertTrue(
                m.serialize().startswith(b"OPTIONS sip:remote-target@example.com SIP/2.0\r\n")
            )

        self.refused_or("trws", liberal)

    def test_escruri(self) -> None:
        """§3.1.2.11: escaped headers in the Request-URI: 400, or recognised as headers."""

        def liberal(m: Any) -> None:
            try:
                uri = m.uri
            except ParseError as error:
                self.assertEqual(error.status, 400)
                return
            self.assertEqual(uri.headers, (("Route", "%3Csip:example.com%3E"),))

        self.refused_or("escruri", liberal)

    def test_baddate(self) -> None:
        """§3.1.2.12: a non-GMT Date: 400, or the Date ignored (kept as received)."""

        def liberal(m: Any) -> None:
            self.assertEqual(m.headers.get("Date"), "Fri, 01 Jan 2010 16:00:00 EST")
            self.assertEqual(m.call_id, "baddate.239423mnsadf3j23lj42--sedfnm234")

        self.refused_or("baddate", liberal)

    def test_regbadct(self) -> None:
        """§3.1.2.13: URI with headers outside <> in Contact: 400, or brackets inferred."""

        def liberal(m: Any) -> None:
            try:
                contacts = m.contacts
            except ParseError as error:
                self.assertEqual(error.status, 400)
                return
            [contact] = contacts
            self.assertEqual(contact.uri.headers, (("Route", "%3Csip:sip.example.com%3E"),))

        self.refused_or("regbadct", liberal)

    def test_badaspec(self) -> None:
        """§3.1.2.14: spaces inside <> of To: 400, or the spaces ignored."""

        def liberal(m: Any) -> None:
            self.assertEqual(str(m.to.uri), "sip:t.watson@example.org")
            self.assertEqual(display(m.to), "Watson, Thomas")

        self.refused_or("badaspec", liberal)

    def test_baddn(self) -> None:
        """§3.1.2.15: unquoted non-token display names: 400, or quotes inferred."""

        def liberal(m: Any) -> None:
            self.assertEqual(display(m.from_), "Bell, Alexander")
            self.assertEqual(display(m.to), "Watson, Thomas")
            # A proxy must not propagate the error.
            self.assertNotIn(b"Bell, Alexander <", m.serialize())

        self.refused_or("baddn", liberal)

    def test_badvers(self) -> None:
        """§3.1.2.16: SIP/7.0: 505 Version Not Supported, answerable."""
        self.assert_answerable(self.refused("badvers", 505), "OPTIONS")

    def test_mismatch01(self) -> None:
        """§3.1.2.17: CSeq method differs from the request method: 400."""
        self.assert_answerable(self.refused("mismatch01"), "OPTIONS")

    def test_mismatch02(self) -> None:
        """§3.1.2.18: unknown method, CSeq INVITE: 501 preferred, 400 acceptable."""
        error = self.assertRaises(ParseError, parse_message, load("mismatch02"))
        self.assertIn(error.status, (400, 501))
        self.assert_answerable(error, "NEWMETHOD")

    def test_bigcode(self) -> None:
        """§3.1.2.19: status code 4294967301: dropped."""
        error = self.assertRaises(ParseError, parse_message, load("bigcode"))
        self.assertFalse(error.answerable)

    def test_status_codes_out_of_range(self) -> None:
        """Status-Code is 3DIGIT in 100..699 (RFC 3261 §7.2, §21)."""
        data = load("bigcode")
        for code in (b"0", b"99", b"700", b"999", b"1000", b"20", b"2OO", b"-200"):
            wire = data.replace(b"4294967301", code, 1)
            self.assertRaises(ParseError, parse_message, wire)
        for code in (b"100", b"699"):
            self.assertEqual(parse_message(data.replace(b"4294967301", code, 1)).status, int(code))


class TransactionLayerTests(SynchronousTestCase):
    """§3.2."""

    def test_badbranch(self) -> None:
        """§3.2.1: branch is just the magic cookie; the parser must not break."""
        m = parse_message(load("badbranch"))
        self.assertEqual(m.top_via.branch, "z9hG4bK")
        self.assertEqual(m.call_id, "badbranch.sadonfo23i420jv0as0derf3j3n")
        self.assertEqual(m.headers.get("Accept"), "application/sdp")


class ApplicationLayerTests(SynchronousTestCase):
    """§3.3 (and §3.4.1): parse, then let the application decide."""

    def assert_unsupported_scheme(self, name: str) -> None:
        """The request parses (the RFC: "a parser must accept this"); its URI gets a 416."""
        cls = unsupported_scheme_error()
        m = parse_message(load(name))
        error = self.assertRaises(ParseError, getattr, m, "uri")
        self.assertEqual(error.status, 416, error.reason)
        if cls is not None:
            self.assertIsInstance(error, cls)
        self.assertEqual(m.method, "OPTIONS")
        self.assertEqual(m.cseq.seq, 3923423)
        self.assertEqual(m.top_via.branch, "z9hG4bKkdjuw39234")
        response = response_to(m, 416)
        self.assertEqual(response.status, 416)

    def test_unsupported_scheme_error_exists(self) -> None:
        """sip-api.md: parse_uri raises UnsupportedSchemeError(ParseError), status 416."""
        cls = unsupported_scheme_error()
        self.assertIsNotNone(cls)
        assert cls is not None
        self.assertTrue(issubclass(cls, ParseError))
        for text in ("nobodyKnowsThisScheme:totallyopaquecontent", "http://www.example.com"):
            error = self.assertRaises(cls, parse_uri, text)
            self.assertEqual(error.status, 416)

    def test_insuf(self) -> None:
        """§3.3.1: no Call-ID, From or To: 400, and nothing to answer with."""
        error = self.assertRaises(ParseError, parse_message, load("insuf"))
        self.assertEqual(error.status, 400)
        self.assertFalse(error.answerable)

    def test_unkscm(self) -> None:
        """§3.3.2: unknown Request-URI scheme: well formed, 416."""
        self.assert_unsupported_scheme("unkscm")

    def test_novelsc(self) -> None:
        """§3.3.3: a registered but atypical scheme: treated as unknown, 416."""
        self.assert_unsupported_scheme("novelsc")

    def test_unksm2(self) -> None:
        """§3.3.4: other schemes in To/From/Contact: parsers must not fail."""
        m = parse_message(load("unksm2"))
        self.assertEqual(m.method, "REGISTER")
        self.assertEqual(m.call_id, "unksm2.daksdj@hyphenated-host.example.com")
        self.assertEqual(m.headers.get("To"), "isbn:2983792873")
        for name in ("to", "from_", "contacts"):
            with contextlib.suppress(ParseError):
                getattr(m, name)
        self.assertEqual(parse_message(m.serialize()).headers, m.headers)

    def test_bext01(self) -> None:
        """§3.3.5: unknown option tags in Require and Proxy-Require."""
        m = parse_message(load("bext01"))
        self.assertEqual(
            m.headers.values("Require"), ["nothingSupportsThis", "nothingSupportsThisEither"]
        )
        self.assertEqual(
            m.headers.values("Proxy-Require"),
            ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"],
        )
        self.assertEqual(m.top_via.transport, "TLS")

    def test_invut(self) -> None:
        """§3.3.6: an unknown Content-Type: the body is kept as it is."""
        m = parse_message(load("invut"))
        self.assertEqual(m.content_type, "application/unknownformat")
        self.assertEqual(m.body, b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n')
        self.assertEqual(m.content_length, 40)

    def test_regaut01(self) -> None:
        """§3.3.7: an unknown Authorization scheme is kept as written."""
        m = parse_message(load("regaut01"))
        self.assertEqual(m.headers.get("Authorization"), "NoOneKnowsThisScheme opaque-data=here")
        self.assertEqual(m.content_length, 0)

    def test_multi01(self) -> None:
        """§3.3.8: several values in single-value fields: 400."""
        try:
            m = parse_message(load("multi01"))
        except ParseError as error:
            self.assertEqual(error.status, 400)
            return
        for name in ("call_id", "cseq", "from_", "to"):
            error = self.assertRaises(ParseError, getattr, m, name)
            self.assertEqual(error.status, 400, name)

    def test_mcl01(self) -> None:
        """§3.3.9: conflicting Content-Length values: an error, on datagrams and streams."""
        error = self.assertRaises(ParseError, parse_message, load("mcl01"))
        self.assertEqual(error.status, 400)
        framer = StreamFramer()
        error = self.assertRaises(ParseError, framer.feed, load("mcl01"))
        self.assertEqual(error.status, 400)

    def test_bcast(self) -> None:
        """§3.3.10: a 200 whose second Via is 255.255.255.255: well formed."""
        m = parse_message(load("bcast"))
        self.assertEqual((m.status, m.reason), (200, "OK"))
        self.assertEqual([v.host for v in m.vias], ["192.0.2.198", "255.255.255.255"])
        self.assertEqual(m.body, sdp(b"192.0.2.198"))

    def test_zeromf(self) -> None:
        """§3.3.11: Max-Forwards: 0 parses (the application answers OPTIONS itself)."""
        self.assertEqual(parse_message(load("zeromf")).max_forwards, 0)

    def test_cparam01(self) -> None:
        """§3.3.12: in addr-spec form the parameter belongs to the Contact value."""
        [contact] = parse_message(load("cparam01")).contacts
        self.assertEqual((contact.uri.user, contact.uri.host), ("+19725552222", "gw1.example.net"))
        self.assertEqual(contact.uri.params, ())
        self.assertEqual(param(contact, "unknownparam"), "")

    def test_cparam02(self) -> None:
        """§3.3.13: inside <> the parameter belongs to the URI."""
        [contact] = parse_message(load("cparam02")).contacts
        self.assertEqual(contact.uri.params, (("unknownparam", None),))
        self.assertEqual(param(contact, "unknownparam"), None)

    def test_regescrt(self) -> None:
        """§3.3.14: an escaped header in a Contact URI inside <>."""
        [contact] = parse_message(load("regescrt")).contacts
        self.assertEqual(contact.uri.headers, (("Route", "%3Csip:sip.example.com%3E"),))
        self.assertEqual((contact.uri.user, contact.uri.host), ("user", "example.com"))

    def test_sdp01(self) -> None:
        """§3.3.15: an Accept the offer does not match: parses; the application says 406."""
        m = parse_message(load("sdp01"))
        self.assertEqual(m.headers.get("Accept"), "text/nobodyKnowsThis")
        self.assertEqual(m.body, sdp(b"192.0.2.5"))

    def test_inv2543(self) -> None:
        """§3.4.1: RFC 2543 syntax: no branch, no From tag, no Content-Length, no Max-Forwards."""
        m = parse_message(load("inv2543"))
        self.assertEqual(m.top_via.branch, None)
        self.assertEqual(m.from_.tag, None)
        self.assertEqual(m.from_.uri.param("user"), "phone")
        # addr-spec form: ";user=phone" is a To parameter, not a URI parameter.
        self.assertEqual(m.to.uri.params, ())
        self.assertEqual(param(m.to, "user"), "phone")
        self.assertEqual(m.max_forwards, None)
        self.assertEqual(m.content_length, None)
        self.assertEqual(m.body, load("inv2543").partition(b"\r\n\r\n")[2])
        [record_route] = m.record_routes
        self.assertEqual(record_route.uri.param("maddr"), "ss1.example.com")


class StreamFramingTests(SynchronousTestCase):
    """The corpus over a stream: Content-Length frames each message."""

    FRAMED = [n for n in ALL if n not in ("dblreq", "clerr", "ncl", "mcl01", "inv2543")]

    def test_each_message_is_one_item(self) -> None:
        for name in self.FRAMED:
            data = load(name)
            self.assertEqual(StreamFramer().feed(data), [data], name)

    def test_byte_at_a_time(self) -> None:
        for name in ("wsinv", "mpart01", "longreq", "esc01"):
            framer = StreamFramer()
            items: list[Any] = []
            for index in range(len(load(name))):
                items += framer.feed(load(name)[index : index + 1])
            self.assertEqual(items, [load(name)], name)

    def test_back_to_back_with_keepalives(self) -> None:
        framer = StreamFramer()
        stream = b"".join(load(n) + b"\r\n\r\n" for n in self.FRAMED)
        items: list[Any] = []
        for start in range(0, len(stream), 97):
            items += framer.feed(stream[start : start + 97])
        expected: list[Any] = []
        for name in self.FRAMED:
            expected += [load(name), KEEPALIVE_PING]
        self.assertEqual(items, expected)

    def test_clerr_waits_for_more(self) -> None:
        """§3.1.2.2 on a stream: nothing to deliver until the rest arrives."""
        self.assertEqual(StreamFramer().feed(load("clerr")), [])

    def test_framing_errors(self) -> None:
        """§3.1.2.3 / §18.3: a bad or missing Content-Length on a stream is fatal."""
        for name in ("ncl", "mcl01", "inv2543"):
            error = self.assertRaises(ParseError, StreamFramer().feed, load(name))
            self.assertEqual(error.status, 400, name)

    def test_size_limits(self) -> None:
        """A message over a limit is 513 Message Too Large, and the framer is dead."""
        for framer in (
            StreamFramer(max_message_bytes=1000),
            StreamFramer(max_header_bytes=1000),
        ):
            error = self.assertRaises(ParseError, framer.feed, load("longreq"))
            self.assertEqual(error.status, 513)
            self.assertRaises(ParseError, framer.feed, load("esc01"))
        framer = StreamFramer(max_body_bytes=100)
        self.assertEqual(framer.feed(load("escnull")), [load("escnull")])
        self.assertEqual(self.assertRaises(ParseError, framer.feed, load("esc01")).status, 513)

    def test_dblreq_on_a_stream_is_two_messages(self) -> None:
        """On a stream the octets after the REGISTER are the next message."""
        data = load("dblreq")
        items = StreamFramer().feed(data)
        register_end = data.index(b"\r\n\r\n") + 4
        self.assertEqual(items[0], data[:register_end])


class RobustnessTests(SynchronousTestCase):
    """Nothing but ParseError, for every file, prefix and one-byte mutation."""

    def test_whole_files(self) -> None:
        failures = collect_failures((name, load(name)) for name in ALL + RFC5118)
        self.assertEqual(failures, [], report(failures))

    def test_every_truncation(self) -> None:
        cases = (
            (f"{name}[:{length}]", load(name)[:length])
            for name in ALL + RFC5118
            for length in range(len(load(name)))
        )
        failures = collect_failures(cases)
        self.assertEqual(failures, [], report(failures))

    def test_one_byte_mutations(self) -> None:
        failures = mutation_results()[0]
        self.assertEqual(failures, [], report(failures))

    def test_accepted_mutations_round_trip(self) -> None:
        """Whatever is accepted re-parses, equal, after serialize() (what a proxy forwards)."""
        failures = mutation_results()[1]
        self.assertEqual(failures, [], report(failures))

    def test_well_formed_messages_with_bare_lf(self) -> None:
        """Bare LF line ends are tolerated (sip-api.md) with the same meaning."""
        for name in WELL_FORMED:
            if name == "mpart01":
                continue  # its binary body holds CRLFs of its own
            data = load(name)
            head, _, body = data.partition(b"\r\n\r\n")
            lf = head.replace(b"\r\n", b"\n") + b"\n\n" + body
            original, relaxed = parse_message(data), parse_message(lf)
            self.assertEqual(relaxed.headers, original.headers, name)
            self.assertEqual(relaxed.body, original.body, name)


class Rfc5118Tests(SynchronousTestCase):
    """RFC 5118: IPv6 references, as the RFC reads them; only ipv6-bad is refused."""

    def parse(self, name: str) -> Any:
        message = parse_message(load(name))
        self.assertIsInstance(message, Request)
        return message

    def test_ipv6_good(self) -> None:
        """§4.1: IPv6 references in the Request-URI, the Via and the Contact."""
        m = self.parse("ipv6-good")
        self.assertEqual((m.uri.host, m.uri.port), ("[2001:db8::10]", None))
        self.assertEqual(m.top_via.host, "[2001:db8::9:1]")
        [contact] = m.contacts
        self.assertEqual(contact.uri.host, "[2001:db8::1]")

    def test_ipv6_bad(self) -> None:
        """§4.2: an IPv6 address without brackets in the Request-URI: 400, answerable."""
        m = self.parse("ipv6-bad")
        error = self.assertRaises(ParseError, getattr, m, "uri")
        self.assertEqual(error.status, 400)
        self.assertIs(error.request, m)

    def test_port_ambiguous(self) -> None:
        """§4.3: the port inside the brackets is part of the address (well formed)."""
        m = self.parse("port-ambiguous")
        self.assertEqual((m.uri.host, m.uri.port), ("[2001:db8::10:5070]", None))

    def test_port_unambiguous(self) -> None:
        """§4.4: the port after the brackets."""
        m = self.parse("port-unambiguous")
        self.assertEqual((m.uri.host, m.uri.port), ("[2001:db8::10]", 5070))

    def test_received_with_and_without_delimiters(self) -> None:
        """§4.5: a received parameter with or without brackets both parse."""
        with_delim = self.parse("via-received-param-with-delim")
        self.assertEqual(with_delim.top_via.received, "[2001:db8::9:255]")
        no_delim = self.parse("via-received-param-no-delim")
        self.assertEqual(no_delim.top_via.received, "2001:db8::9:255")

    def test_ipv6_in_sdp(self) -> None:
        """§4.6: the body is opaque to SIP; IPv6 addresses in it change nothing."""
        m = self.parse("ipv6-in-sdp")
        self.assertIn(b"c=IN IP6 2001:db8::20\r\n", m.body)
        self.assertEqual(len(m.body), m.content_length)

    def test_mult_ip_in_header(self) -> None:
        """§4.7: IPv4 and IPv6 Vias mixed, a port after an IPv6 reference."""
        m = self.parse("mult-ip-in-header")
        self.assertEqual(
            [(v.transport, v.host, v.port, v.received) for v in m.vias],
            [
                ("UDP", "[2001:db8::9:1]", 6050, None),
                ("UDP", "192.0.2.1", None, None),
                ("TCP", "[2001:db8::9:255]", None, "192.0.2.200"),
            ],
        )

    def test_mult_ip_in_sdp(self) -> None:
        """§4.8."""
        m = self.parse("mult-ip-in-sdp")
        self.assertIn(b"c=IN IP6 2001:db8::1\r\n", m.body)

    def test_ipv4_mapped(self) -> None:
        """§4.9: IPv4-mapped IPv6 addresses in Via and Contact."""
        m = self.parse("ipv4-mapped-ipv6")
        self.assertEqual(
            [(v.host, v.port) for v in m.vias],
            [("[::ffff:192.0.2.10]", 19823), ("[::ffff:192.0.2.2]", None)],
        )
        [contact] = m.contacts
        self.assertEqual(contact.uri.host, "[::ffff:192.0.2.2]")

    def test_abnf_bug_both_forms_are_tolerated(self) -> None:
        """§4.10: three colons (RFC 3261's grammar) and two: the same address."""
        three = self.parse("ipv6-bug-abnf-3-colons")
        two = self.parse("ipv6-correct-abnf-2-colons")
        self.assertEqual(two.uri.host, "[2001:db8::192.0.2.1]")
        self.assertEqual(three.uri.host, "[2001:db8:::192.0.2.1]")
        self.assertTrue(three.uri.rfc_equal(two.uri))
        self.assertTrue(three.to.uri.rfc_equal(two.to.uri))

    def test_sdp_bodies_have_their_real_lengths(self) -> None:
        """The RFC states 268, 181 and 236 for bodies of 251, 189 and 245 octets."""
        lengths = (("ipv6-in-sdp", 251), ("mult-ip-in-sdp", 189), ("ipv4-mapped-ipv6", 245))
        for name, length in lengths:
            m = self.parse(name)
            self.assertEqual((len(m.body), m.content_length), (length, length), name)
