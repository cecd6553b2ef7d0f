"""sbc.sip.message: parse_message, typed access, serialize, building, response_to."""

from __future__ import annotations

import contextlib
import random

from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import ParseError
from sbc.sip.headers import STAR, CSeq, Headers, NameAddr, Via, Warning
from sbc.sip.message import REASON_PHRASES, Request, Response, parse_message, response_to
from sbc.sip.uri import parse_uri

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

BASE = [
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
]


def wire(
    headers: list[str] | None = None,
    body: bytes = b"",
    start: str = "INVITE sip:bob@biloxi.example.com SIP/2.0",
    content_length: bool = True,
    eol: str = "\r\n",
) -> bytes:
    """A message from a start line, header lines and a body."""
    lines = [start, *(BASE if headers is None else headers)]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return (eol.join(lines) + eol + eol).encode("utf-8", "surrogateescape") + body


def without(name: str) -> list[str]:
    return [h for h in BASE if not h.startswith(name + ":")]


def replaced(name: str, value: str) -> list[str]:
    return [f"{name}: {value}" if h.startswith(name + ":") else h for h in BASE]


class ParseRequestTests(SynchronousTestCase):
    def test_typical_invite(self) -> None:
        data = wire([*BASE, "Content-Type: application/sdp"], SDP)
        m = parse_message(data)
        assert isinstance(m, Request)
        self.assertEqual(
            (m.method, m.uri_text, m.version), ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0")
        )
        self.assertEqual(m.uri.host, "biloxi.example.com")
        self.assertEqual(m.top_via.branch, "z9hG4bK776asdhds")
        self.assertEqual(m.top_via.host, "pc33.atlanta.example.com")
        self.assertEqual([v.branch for v in m.vias], ["z9hG4bK776asdhds"])
        self.assertEqual(m.from_.tag, "1928301774")
        self.assertEqual(m.from_.display_name, "Alice")
        self.assertEqual(m.from_.uri.user, "alice")
        self.assertIsNone(m.to.tag)
        self.assertEqual(m.to.display_name, "Bob")
        self.assertEqual(m.call_id, "a84b4c76e66710@pc33.atlanta.example.com")
        self.assertEqual(m.cseq, CSeq(314159, "INVITE"))
        self.assertEqual(m.max_forwards, 70)
        self.assertEqual(m.content_length, len(SDP))
        self.assertEqual(m.content_type, "application/sdp")
        self.assertIsNone(m.expires)
        self.assertEqual([c.uri_text for c in m.contacts], ["sip:alice@pc33.atlanta.example.com"])
        self.assertEqual(m.routes, [])
        self.assertEqual(m.record_routes, [])
        self.assertEqual(m.warnings, [])
        self.assertEqual(m.body, SDP)

    def test_every_compact_form_in_a_message(self) -> None:
        headers = [
            "v: SIP/2.0/UDP h;branch=z9hG4bK1",
            "f: <sip:a@b>;tag=1",
            "t: <sip:c@d>",
            "i: cid@h",
            "CSeq: 1 INVITE",
            "m: <sip:a@h>",
            "c: application/sdp",
            "e: gzip",
            "s: hello",
            "k: timer",
            "o: presence",
            "r: <sip:x@y>",
            "b: <sip:z@y>",
            "u: dialog",
            "x: 1800",
            "a: *;audio",
            "j: *;video",
            "d: proxy",
            "y: abc",
            "n: <https://h/cert>",
            "l: 3",
        ]
        m = parse_message(wire(headers, b"abc", content_length=False))
        self.assertEqual(
            [n for n, _ in m.headers],
            [
                "Via",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Contact",
                "Content-Type",
                "Content-Encoding",
                "Subject",
                "Supported",
                "Event",
                "Refer-To",
                "Referred-By",
                "Allow-Events",
                "Session-Expires",
                "Accept-Contact",
                "Reject-Contact",
                "Request-Disposition",
                "Identity",
                "Identity-Info",
                "Content-Length",
            ],
        )
        self.assertEqual(m.content_length, 3)
        self.assertEqual(m.body, b"abc")
        self.assertEqual(m.headers.get("Subject"), "hello")
        self.assertIn(b"\r\nContent-Length: 3\r\n", m.serialize())
        self.assertIn(b"\r\nCall-ID: cid@h\r\n", m.serialize())

    def test_folding_joins_with_one_space(self) -> None:
        data = wire(
            [*BASE, "Subject: I know you're there,", "    pick up the phone", "\tand talk to me!"]
        )
        m = parse_message(data)
        self.assertEqual(
            m.headers.get("Subject"), "I know you're there, pick up the phone and talk to me!"
        )
        self.assertIn(
            b"Subject: I know you're there, pick up the phone and talk to me!\r\n", m.serialize()
        )

    def test_folded_via_list(self) -> None:
        headers = [
            "Via: SIP/2.0/UDP a;branch=z9hG4bK1,",
            " SIP/2.0/TCP b;branch=z9hG4bK2",
            *without("Via"),
        ]
        m = parse_message(wire(headers))
        self.assertEqual([v.host for v in m.vias], ["a", "b"])
        self.assertEqual(len(m.headers.get_all("Via")), 1)

    def test_bare_lf_and_leading_crlf(self) -> None:
        lf = parse_message(b"\r\n\r\n" + wire(BASE, b"x", eol="\n"))
        crlf = parse_message(wire(BASE, b"x"))
        self.assertEqual(lf.headers, crlf.headers)
        self.assertEqual(lf.body, b"x")
        self.assertEqual(lf, crlf)

    def test_mixed_line_ends(self) -> None:
        data = wire(BASE).replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n")
        self.assertEqual(parse_message(data).max_forwards, 70)

    def test_bare_cr_is_refused(self) -> None:
        data = wire([*BASE, "Subject: a\rInjected: b"])
        self.assertRaises(ParseError, parse_message, data)

    def test_non_utf8_header_bytes_survive(self) -> None:
        data = wire(BASE).replace(
            b"Max-Forwards: 70", b"X-Raw: \xff\xfe caf\xc3\xa9\r\nMax-Forwards: 70"
        )
        m = parse_message(data)
        self.assertEqual(m.headers.get("X-Raw"), "\udcff\udcfe café")
        self.assertEqual(m.serialize(), data)
        m.headers.add("X-More", "1")
        self.assertIn(b"X-Raw: \xff\xfe caf\xc3\xa9\r\n", m.serialize())

    def test_header_name_whitespace_and_unknown_headers(self) -> None:
        m = parse_message(wire([*BASE, "X-Thing \t:   value  ", "P-Custom:x"]))
        self.assertEqual(m.headers.get("x-thing"), "value")
        self.assertEqual(m.headers.get("P-CUSTOM"), "x")
        self.assertEqual(m.headers.get("Subject"), None)


class ContentLengthTests(SynchronousTestCase):
    def test_missing_on_a_datagram_takes_the_rest(self) -> None:
        m = parse_message(wire(BASE, b"hello world", content_length=False))
        self.assertEqual(m.body, b"hello world")
        self.assertIsNone(m.content_length)
        self.assertTrue(m.serialize().endswith(b"Content-Length: 11\r\n\r\nhello world"))

    def test_extra_bytes_after_the_body_are_ignored(self) -> None:
        data = wire(BASE, b"abc") + b"trailing junk"
        m = parse_message(data)
        self.assertEqual(m.body, b"abc")
        self.assertNotIn(b"junk", m.serialize())

    def test_larger_than_the_message_is_an_answerable_400(self) -> None:
        data = wire(BASE, b"abc").replace(b"Content-Length: 3", b"Content-Length: 300")
        error = self.assertRaises(ParseError, parse_message, data)
        self.assertEqual(error.status, 400)
        self.assertIn("Content-Length", error.reason)
        self.assertTrue(error.answerable)
        assert error.request is not None
        self.assertEqual(error.request.call_id, "a84b4c76e66710@pc33.atlanta.example.com")

    def test_malformed_values(self) -> None:
        for value in (b"-1", b"five", b"1 2", b"99999999999", b""):
            data = wire(BASE).replace(b"Content-Length: 0", b"Content-Length: " + value)
            error = self.assertRaises(ParseError, parse_message, data)
            self.assertEqual(error.status, 400, value)
            self.assertTrue(error.answerable, value)

    def test_duplicates(self) -> None:
        same = parse_message(wire([*BASE, "Content-Length: 2"], b"ab"))
        self.assertEqual(same.body, b"ab")
        self.assertEqual(same.serialize().count(b"Content-Length"), 1)
        differ = wire([*BASE, "l: 1"], b"ab")
        self.assertEqual(self.assertRaises(ParseError, parse_message, differ).status, 400)

    def test_leading_zeros(self) -> None:
        data = wire(BASE, b"ab").replace(b"Content-Length: 2", b"Content-Length: 002")
        m = parse_message(data)
        self.assertEqual(m.body, b"ab")
        self.assertIn(b"\r\nContent-Length: 2\r\n", m.serialize())


class MalformedRequestTests(SynchronousTestCase):
    def refused(self, data: bytes, status: int = 400) -> ParseError:
        error = self.assertRaises(ParseError, parse_message, data)
        self.assertEqual(error.status, status, error.reason)
        self.assertTrue(error.reason)
        return error

    def test_missing_mandatory_headers_are_not_answerable(self) -> None:
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            error = self.refused(wire(without(name)))
            self.assertFalse(error.answerable, name)
            self.assertIn(name, error.reason)

    def assert_answer_copies(self, error: ParseError, name: str, value: str) -> None:
        """The 400 copies the offending header as received (RFC 4475 §3.1.2 asks for a 400)."""
        self.assertTrue(error.answerable, name)
        assert error.request is not None
        response = response_to(error.request, error.status, error.reason)
        self.assertEqual(response.status, 400)
        self.assertEqual(response.headers.get_all(name)[:1], [value])

    def test_unusable_mandatory_headers_are_answerable_as_received(self) -> None:
        for name, value in (
            ("Via", "SIP/2.0/UDP"),
            ("From", '"open <sip:a@b>'),
            ("To", "Bob, Jr <sip:b@c>"),
            ("Call-ID", "has space"),
            ("CSeq", "one INVITE"),
        ):
            error = self.refused(wire(replaced(name, value)))
            self.assert_answer_copies(error, name, value)

    def test_repeated_single_headers_are_answerable_with_the_first(self) -> None:
        for line in ("From: <sip:x@y>;tag=2", "To: <sip:z@w>", "Call-ID: other", "CSeq: 2 INVITE"):
            error = self.refused(wire([*BASE, line]))
            self.assertIn("Multiple", error.reason)
            name = line.partition(":")[0]
            first = next(h for h in BASE if h.startswith(name + ":")).partition(": ")[2]
            assert error.request is not None
            response = response_to(error.request, 400, error.reason)
            values = response.headers.get_all(name)
            self.assertEqual(len(values), 1, line)
            self.assertTrue(values[0].startswith(first), (line, values))

    def test_max_forwards_may_be_missing(self) -> None:
        self.assertIsNone(parse_message(wire(without("Max-Forwards"))).max_forwards)

    def test_bad_max_forwards_is_answerable(self) -> None:
        for value in ("256", "x", "-1"):
            error = self.refused(wire(replaced("Max-Forwards", value)))
            self.assertTrue(error.answerable, value)
            self.assertIn("Max-Forwards", error.reason)

    def test_cseq_method_mismatch_is_answerable(self) -> None:
        error = self.refused(wire(replaced("CSeq", "314159 OPTIONS")))
        self.assertTrue(error.answerable)
        self.assertIn("CSeq", error.reason)

    def test_other_sip_version_is_505(self) -> None:
        error = self.refused(wire(start="INVITE sip:bob@b SIP/3.0"), 505)
        self.assertTrue(error.answerable)
        self.assertFalse(
            self.refused(wire(without("Via"), start="INVITE sip:b@c SIP/3.0"), 505).answerable
        )
        self.assertEqual(parse_message(wire(start="INVITE sip:b@c sip/2.0")).version, "sip/2.0")

    def test_malformed_request_lines(self) -> None:
        """A recognisable SIP request line, badly spaced or with a bad URI, gets its 400."""
        for start in (
            "INVITE  sip:b@c SIP/2.0",
            "INVITE sip:b@c SIP/2.0 ",
            "INVITE sip:b@c; lr SIP/2.0",
            "INVITE <sip:b@c> SIP/2.0",
            "INVITE nocolon SIP/2.0",
        ):
            error = self.refused(wire(start=start))
            self.assertTrue(error.answerable, start)
            self.assertIn("Request", error.reason.title(), start)
        for start in (
            "INVITE sip:b@c HTTP/1.1",
            "INV@TE sip:b@c SIP/2.0",
            "INVITE SIP/2.0",
            "INVITE",
        ):
            self.assertFalse(self.refused(wire(start=start)).answerable, start)

    def test_malformed_header_line_is_answerable(self) -> None:
        for line in ("No colon here", "Bad Name: x"):
            error = self.refused(wire([*BASE, line]))
            self.assertTrue(error.answerable, line)
        error = self.refused(wire([" folded first line", *BASE]))
        self.assertTrue(error.answerable)

    def test_missing_empty_line(self) -> None:
        self.refused(b"INVITE sip:b@c SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=1")
        # complete lines without the empty one are accepted on a datagram
        m = parse_message(wire(BASE, content_length=False)[:-2])
        self.assertEqual(m.body, b"")

    def test_empty_and_junk(self) -> None:
        for data in (b"", b"\r\n\r\n", b"\x00\x01\x02", b"hello", b"SIP/2.0\r\n\r\n", b"\xff" * 50):
            self.refused(data)

    def test_only_parse_error_escapes(self) -> None:
        rng = random.Random(4475)
        base = wire([*BASE, "Content-Type: application/sdp", "Route: <sip:p;lr>"], SDP)
        alphabet = b' \t\r\n:;,=<>"\\%@/?&[]*.0aZ\x00\x7f\x80\xff'
        for _ in range(3000):
            data = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                data[i] = alphabet[rng.randrange(len(alphabet))]
            try:
                m = parse_message(bytes(data))
            except ParseError:
                continue
            for name in (
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
            ):
                with contextlib.suppress(ParseError):
                    getattr(m, name)
            parse_message(m.serialize())


class ParseResponseTests(SynchronousTestCase):
    def test_response(self) -> None:
        headers = [h for h in BASE if not h.startswith(("Max-Forwards", "To"))]
        headers.append("To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf")
        m = parse_message(wire(headers, SDP, start="SIP/2.0 200 OK"))
        assert isinstance(m, Response)
        self.assertEqual((m.version, m.status, m.reason), ("SIP/2.0", 200, "OK"))
        self.assertEqual(m.to.tag, "a6c85cf")
        self.assertEqual(m.body, SDP)
        self.assertIsNone(m.max_forwards)

    def test_reason_phrases(self) -> None:
        for start, reason in (
            ("SIP/2.0 100 ", ""),
            ("SIP/2.0 100", ""),
            ("SIP/2.0 486 Busy  Here ", "Busy  Here "),
            ("SIP/2.0 200 Très bien", "Très bien"),
        ):
            m = parse_message(wire(start=start))
            assert isinstance(m, Response)
            self.assertEqual(m.reason, reason, start)

    def test_bad_status_lines(self) -> None:
        for start in ("SIP/2.0 2000 OK", "SIP/2.0 099 X", "SIP/2.0 700 X", "SIP/2.0 OK", "SIP/2.0"):
            error = self.assertRaises(ParseError, parse_message, wire(start=start))
            self.assertFalse(error.answerable)

    def test_response_needs_the_same_headers(self) -> None:
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            data = wire(without(name), start="SIP/2.0 200 OK")
            error = self.assertRaises(ParseError, parse_message, data)
            self.assertIn(name, error.reason)
            self.assertFalse(error.answerable)
        for headers in (replaced("Call-ID", "a b"), [*BASE, "To: <sip:x@y>"]):
            data = wire(headers, start="SIP/2.0 200 OK")
            self.assertFalse(self.assertRaises(ParseError, parse_message, data).answerable)

    def test_response_versions(self) -> None:
        m = parse_message(wire(start="sip/2.0 200 OK"))
        assert isinstance(m, Response)
        self.assertEqual(m.version, "sip/2.0")
        self.assertTrue(m.serialize().startswith(b"sip/2.0 200 OK\r\n"))
        self.assertRaises(ParseError, parse_message, wire(start="SIP/2.x 200 OK"))

    def test_response_errors_are_never_answerable(self) -> None:
        data = wire(replaced("Max-Forwards", "x"), start="SIP/2.0 200 OK")
        self.assertFalse(self.assertRaises(ParseError, parse_message, data).answerable)
        self.assertEqual(
            self.assertRaises(ParseError, parse_message, wire(start="SIP/3.0 200 OK")).status, 505
        )


class TypedAccessTests(SynchronousTestCase):
    def test_malformed_optional_headers_raise_on_access(self) -> None:
        m = parse_message(
            wire(
                [
                    *BASE,
                    "Expires: soon",
                    "Warning: 3 x",
                    "Route: <sip:p;lr>, ,",
                    "Record-Route: nope",
                ]
            )
        )
        assert isinstance(m, Request)
        for name, header in (
            ("expires", "Expires"),
            ("warnings", "Warning"),
            ("routes", "Route"),
            ("record_routes", "Record-Route"),
        ):
            error = self.assertRaises(ParseError, getattr, m, name)
            self.assertIn(header, error.reason)
            self.assertIs(error.request, m)

    def test_contacts(self) -> None:
        m = parse_message(
            wire(
                [
                    *replaced("Contact", '"Doe, J" <sip:j@h>;q=0.1, <sip:k@h>;expires=30'),
                    "m: sip:l@h;q=1",
                ]
            )
        )
        self.assertEqual([c.uri_text for c in m.contacts], ["sip:j@h", "sip:k@h", "sip:l@h"])
        self.assertEqual([c.q for c in m.contacts], [0.1, None, 1.0])
        self.assertEqual(m.contacts[1].expires, 30)
        self.assertEqual(m.contacts[0].display_name, "Doe, J")

    def test_star_contact(self) -> None:
        register = "REGISTER sip:example.com SIP/2.0"
        headers = [h for h in BASE if not h.startswith(("Contact", "CSeq"))] + ["CSeq: 1 REGISTER"]
        m = parse_message(wire([*headers, "Contact: *", "Expires: 0"], start=register))
        self.assertEqual(m.contacts, [STAR])
        self.assertTrue(m.contacts[0].is_star)
        self.assertEqual(m.expires, 0)
        both = parse_message(wire([*headers, "Contact: <sip:a@h>", "m: *"], start=register))
        self.assertRaises(ParseError, getattr, both, "contacts")

    def test_routes_and_warnings(self) -> None:
        m = parse_message(
            wire(
                [
                    *BASE,
                    "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
                    "Route: <sip:p3.example.com;lr>",
                    "Record-Route: <sip:rr.example.com;lr>",
                    'Warning: 380 sbc.example.net "SIPS Not Allowed", 399 h "a, b"',
                ]
            )
        )
        self.assertEqual(
            [r.uri_text for r in m.routes],
            ["sip:p1.example.com;lr", "sip:p2.example.com;lr", "sip:p3.example.com;lr"],
        )
        self.assertTrue(m.routes[0].uri.has_param("lr"))
        self.assertEqual([r.uri_text for r in m.record_routes], ["sip:rr.example.com;lr"])
        self.assertEqual(
            m.warnings,
            [Warning(380, "sbc.example.net", "SIPS Not Allowed"), Warning(399, "h", "a, b")],
        )

    def test_vias_with_an_empty_element(self) -> None:
        m = parse_message(wire(replaced("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, ,SIP/2.0/UDP b")))
        self.assertEqual(m.top_via.host, "a")
        self.assertRaises(ParseError, getattr, m, "vias")

    def test_returned_lists_are_copies(self) -> None:
        m = parse_message(wire([*BASE, "Via: SIP/2.0/UDP b;branch=z9hG4bK2"]))
        m.vias.clear()
        self.assertEqual(len(m.vias), 2)

    def test_cache_follows_header_changes(self) -> None:
        m = parse_message(wire(BASE))
        self.assertEqual(m.cseq.seq, 314159)
        m.headers.set("CSeq", CSeq(2, "INVITE"))
        self.assertEqual(m.cseq, CSeq(2, "INVITE"))
        m.headers.prepend("Via", Via("TCP", "proxy.example.com", None, {"branch": "z9hG4bKp"}))
        self.assertEqual(m.top_via.host, "proxy.example.com")
        self.assertEqual(len(m.vias), 2)
        m.headers.set("From", NameAddr(None, "sip:carol@example.com", {"tag": "c"}))
        self.assertEqual(m.from_.tag, "c")
        m.headers.remove("Max-Forwards")
        self.assertIsNone(m.max_forwards)
        m.headers.remove("Call-ID")
        self.assertRaises(ParseError, getattr, m, "call_id")

    def test_request_uri_is_parsed_lazily(self) -> None:
        m = parse_message(
            wire(
                start="OPTIONS nobodyKnowsThisScheme:opaque SIP/2.0",
                headers=replaced("CSeq", "1 OPTIONS"),
            )
        )
        assert isinstance(m, Request)
        self.assertEqual(m.uri_text, "nobodyKnowsThisScheme:opaque")
        error = self.assertRaises(ParseError, getattr, m, "uri")
        self.assertEqual(error.status, 416)
        self.assertIs(error.request, m)


class SerializeTests(SynchronousTestCase):
    def test_unchanged_message_gives_back_its_bytes(self) -> None:
        data = wire([*BASE, "Content-Type: application/sdp"], SDP)
        m = parse_message(data)
        self.assertEqual(m.serialize(), data)
        self.assertEqual(bytes(m), data)

    def test_writes_canonical_lines(self) -> None:
        data = wire(
            [
                "v:SIP/2.0/UDP h;branch=z9hG4bK1",
                "f:  <sip:a@b>;tag=1 ",
                "t : <sip:c@d>",
                "i: x@y",
                "cseq: 1 INVITE",
            ]
        )
        self.assertEqual(
            parse_message(data).serialize(),
            b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x@y\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n",
        )

    def test_content_length_follows_the_body(self) -> None:
        m = parse_message(wire(BASE, b"abc"))
        m.body = b"longer body"
        out = m.serialize()
        self.assertIn(b"\r\nContent-Length: 11\r\n\r\nlonger body", out)
        self.assertEqual(out.count(b"Content-Length"), 1)
        self.assertEqual(parse_message(out).body, b"longer body")
        m.headers.set("Content-Length", "999")
        self.assertIn(b"\r\nContent-Length: 11\r\n", m.serialize())

    def test_changes_show(self) -> None:
        m = parse_message(wire(BASE))
        assert isinstance(m, Request)
        m.headers.add("Subject", "hi")
        self.assertIn(b"\r\nSubject: hi\r\n", m.serialize())
        m.method = "OPTIONS"
        self.assertTrue(m.serialize().startswith(b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"))
        m.uri = parse_uri("sip:carol@example.com")
        self.assertTrue(m.serialize().startswith(b"OPTIONS sip:carol@example.com SIP/2.0\r\n"))

    def test_response_changes_show(self) -> None:
        r = parse_message(wire(start="SIP/2.0 180 Ringing"))
        assert isinstance(r, Response)
        r.status, r.reason = 183, "Session Progress"
        self.assertTrue(r.serialize().startswith(b"SIP/2.0 183 Session Progress\r\n"))

    def test_round_trip_equality(self) -> None:
        for data in (
            wire(BASE, SDP),
            wire(BASE, b"no length", content_length=False),
            wire(
                [
                    "v: SIP/2.0/UDP h;branch=z9hG4bK1",
                    "f: <sip:a@b>;tag=1",
                    "t: <sip:c@d>",
                    "i: x",
                    "CSeq: 1 INVITE",
                    "Subject: a,",
                    " b",
                ]
            ),
        ):
            m = parse_message(data)
            again = parse_message(m.serialize())
            self.assertEqual(again, m)
            self.assertEqual(again.serialize(), m.serialize())
        self.assertNotEqual(parse_message(wire(BASE, b"a")), parse_message(wire(BASE, b"b")))
        self.assertNotEqual(parse_message(wire(BASE)), "a string")


class BuildTests(SynchronousTestCase):
    def test_build_a_request(self) -> None:
        req = Request(
            "INVITE",
            "sip:bob@biloxi.example.com",
            Headers(
                [
                    ("Via", Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bK74bf9"})),
                    ("Max-Forwards", 70),
                    ("From", NameAddr("Alice", "sip:alice@atlanta.example.com", {"tag": "9fx"})),
                    ("To", NameAddr(None, "sip:bob@biloxi.example.com")),
                    ("Call-ID", "3848276298220188511@atlanta.example.com"),
                    ("CSeq", CSeq(1, "INVITE")),
                    ("Content-Type", "application/sdp"),
                ]
            ),
            body=SDP,
        )
        self.assertEqual(req.uri.host, "biloxi.example.com")
        self.assertEqual(req.from_.tag, "9fx")
        self.assertEqual(req.top_via.branch, "z9hG4bK74bf9")
        out = req.serialize()
        self.assertTrue(
            out.startswith(
                b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9\r\n"
            )
        )
        self.assertIn(b'\r\nFrom: "Alice" <sip:alice@atlanta.example.com>;tag=9fx\r\n', out)
        self.assertTrue(out.endswith(b"\r\nContent-Length: %d\r\n\r\n" % len(SDP) + SDP))
        parsed = parse_message(out)
        self.assertEqual(parsed, req)
        self.assertEqual(parsed.cseq, CSeq(1, "INVITE"))

    def test_build_with_a_mapping_and_a_uri_object(self) -> None:
        uri = parse_uri("sips:bob@example.com")
        req = Request("OPTIONS", uri, {"Via": "SIP/2.0/TLS h;branch=z9hG4bK1", "Max-Forwards": 70})
        self.assertIs(req.uri, uri)
        self.assertEqual(req.uri_text, "sips:bob@example.com")
        self.assertEqual(req.body, b"")
        self.assertIn(b"\r\nContent-Length: 0\r\n\r\n", req.serialize())

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, Request, "IN VITE", "sip:a@b")
        self.assertRaises(ParseError, Request, "INVITE", "not a uri")
        self.assertRaises(ValueError, Response, 99)
        self.assertRaises(ValueError, Response, 700)
        self.assertRaises(ValueError, Response, 200, "O\r\nK")

    def test_response_defaults(self) -> None:
        self.assertEqual(Response(486).reason, "Busy Here")
        self.assertEqual(Response(299).reason, "Success")
        self.assertEqual(Response(200, "Fine").reason, "Fine")
        self.assertEqual(
            Response(404).serialize(), b"SIP/2.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(REASON_PHRASES[513], "Message Too Large")


class ResponseToTests(SynchronousTestCase):
    def request(self, *extra: str) -> Request:
        headers = [
            *BASE[:1],
            "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1",
            *BASE[1:],
            *extra,
        ]
        m = parse_message(wire(headers, SDP))
        assert isinstance(m, Request)
        return m

    def test_copies_the_8_2_6_headers(self) -> None:
        req = self.request()
        resp = response_to(req, 180)
        self.assertEqual((resp.status, resp.reason), (180, "Ringing"))
        self.assertEqual(resp.headers.get_all("Via"), req.headers.get_all("Via"))
        self.assertEqual(
            [v.host for v in resp.vias], ["pc33.atlanta.example.com", "proxy.example.com"]
        )
        self.assertEqual(resp.headers.get("From"), req.headers.get("From"))
        self.assertEqual(resp.call_id, req.call_id)
        self.assertEqual(resp.cseq, req.cseq)
        self.assertEqual(resp.to.uri_text, req.to.uri_text)
        self.assertIsNotNone(resp.to.tag)
        self.assertEqual(resp.body, b"")
        self.assertNotIn("Contact", resp.headers)
        self.assertNotIn("Max-Forwards", resp.headers)
        wire_out = resp.serialize()
        self.assertTrue(wire_out.startswith(b"SIP/2.0 180 Ringing\r\nVia: "))
        self.assertTrue(wire_out.endswith(b"\r\nContent-Length: 0\r\n\r\n"))
        self.assertEqual(parse_message(wire_out), resp)

    def test_to_tag(self) -> None:
        req = self.request()
        self.assertEqual(response_to(req, 200, to_tag="abc").to.tag, "abc")
        # the same request gets the same tag; another request another one
        self.assertEqual(response_to(req, 200).to.tag, response_to(req, 486).to.tag)
        other = parse_message(wire(replaced("Call-ID", "other@h")))
        assert isinstance(other, Request)
        self.assertNotEqual(response_to(other, 200).to.tag, response_to(req, 200).to.tag)
        tag = response_to(req, 200).to.tag
        assert tag is not None
        self.assertGreaterEqual(len(tag), 8)

    def test_existing_to_tag_is_kept(self) -> None:
        m = parse_message(wire(replaced("To", "<sip:bob@b>;tag=dialog1")))
        assert isinstance(m, Request)
        resp = response_to(m, 200, to_tag="ignored")
        self.assertEqual(resp.to.tag, "dialog1")
        self.assertEqual(resp.headers.get("To"), "<sip:bob@b>;tag=dialog1")

    def test_100_trying(self) -> None:
        req = self.request("Timestamp: 54")
        trying = response_to(req, 100)
        self.assertIsNone(trying.to.tag)
        self.assertEqual(trying.headers.get("Timestamp"), "54")
        self.assertNotIn("Timestamp", response_to(req, 180).headers)

    def test_reason(self) -> None:
        req = self.request()
        self.assertEqual(response_to(req, 400, "Missing Call-ID").reason, "Missing Call-ID")
        self.assertEqual(response_to(req, 513).reason, "Message Too Large")

    def test_addr_spec_to_gets_a_header_tag(self) -> None:
        m = parse_message(wire(replaced("To", "sip:bob@biloxi.example.com")))
        assert isinstance(m, Request)
        resp = response_to(m, 200, to_tag="t9")
        self.assertEqual(resp.headers.get("To"), "sip:bob@biloxi.example.com;tag=t9")
        self.assertEqual(resp.to.uri_text, "sip:bob@biloxi.example.com")

    def test_answering_a_parse_error(self) -> None:
        error = self.assertRaises(ParseError, parse_message, wire(replaced("Max-Forwards", "x")))
        assert error.request is not None
        resp = response_to(error.request, error.status, error.reason)
        self.assertEqual((resp.status, resp.reason), (400, "Malformed Max-Forwards header"))
        self.assertEqual(resp.top_via.branch, "z9hG4bK776asdhds")


class LinearTimeTests(SynchronousTestCase):
    """64 KiB adversarial lines parse or fail (a quadratic parser would hang here)."""

    def test_big_values(self) -> None:
        size = 65536
        for name, value in (
            ("Subject", "a\r\n " * (size // 4)),
            ("Via", "SIP/2.0/UDP a;" * (size // 14)),
            ("To", '"' + '\\"' * (size // 2)),
            ("Contact", "<sip:a@b>," * (size // 10)),
            ("X-Long", "x" * size),
        ):
            data = wire([*without(name.split("\r")[0]), f"{name}: {value}"])
            try:
                m = parse_message(data)
            except ParseError:
                continue
            for attr in ("vias", "contacts", "to"):
                with contextlib.suppress(ParseError):
                    getattr(m, attr)
            m.serialize()
        folded = parse_message(wire([*BASE, "Subject: a" + "\r\n a" * (size // 4)]))
        self.assertEqual(len(folded.headers.get("Subject") or ""), 2 * (size // 4) + 1)
