"""sbc.sip.headers: names, the Headers multimap and the typed values."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import ParseError
from sbc.sip.headers import (
    STAR,
    CSeq,
    Headers,
    NameAddr,
    Via,
    Warning,
    canonical_name,
    parse_uint,
    split_list,
)
from sbc.sip.message import parse_message

COMPACT = {
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


class CanonicalNameTests(SynchronousTestCase):
    def test_every_compact_form(self) -> None:
        for short, full in COMPACT.items():
            self.assertEqual(canonical_name(short), full, short)
            self.assertEqual(canonical_name(short.upper()), full, short)

    def test_any_case(self) -> None:
        for spelling in ("via", "VIA", "Via", "vIa"):
            self.assertEqual(canonical_name(spelling), "Via")
        self.assertEqual(canonical_name("call-id"), "Call-ID")
        self.assertEqual(canonical_name("CALL-ID"), "Call-ID")
        self.assertEqual(canonical_name("cseq"), "CSeq")
        self.assertEqual(canonical_name("www-authenticate"), "WWW-Authenticate")
        self.assertEqual(canonical_name("max-FORWARDS"), "Max-Forwards")

    def test_unknown_names_keep_their_spelling(self) -> None:
        self.assertEqual(canonical_name("X-My-Header"), "X-My-Header")
        self.assertEqual(canonical_name("x-my-header"), "x-my-header")
        # single letters that are not compact forms stay as they are
        self.assertEqual(canonical_name("z"), "z")


class HeadersTests(SynchronousTestCase):
    def sample(self) -> Headers:
        return Headers(
            [
                ("v", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"),
                ("Via", "SIP/2.0/UDP b.example.com;branch=z9hG4bK2, SIP/2.0/TCP c;branch=3"),
                ("f", "<sip:alice@example.com>;tag=1"),
                ("X-Custom", "one"),
                ("x-custom", "two"),
            ]
        )

    def test_copy_lines_appends_all_but_the_skipped_names(self) -> None:
        target = Headers([("From", "<sip:b@example.com>;tag=9")])
        copied = target.copy_lines(self.sample(), frozenset({"via"}))
        self.assertEqual(copied, ["from", "x-custom", "x-custom"])
        self.assertEqual(
            list(target),
            [
                ("From", "<sip:b@example.com>;tag=9"),
                ("From", "<sip:alice@example.com>;tag=1"),
                ("X-Custom", "one"),
                ("x-custom", "two"),
            ],
        )
        self.assertEqual(target.get_all("from")[1], "<sip:alice@example.com>;tag=1")

    def test_copy_lines_into_kept_lines_and_drops_cached_values(self) -> None:
        message = parse_message(
            b"BYE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
            b"Call-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        headers = message.headers
        self.assertEqual(len(message.vias), 1)
        headers.forget_parsed()  # lines kept as tuples
        headers.copy_lines(Headers([("Via", "SIP/2.0/UDP g;branch=z9hG4bK2")]), frozenset())
        self.assertEqual([v.host for v in message.vias], ["h", "g"])
        self.assertIn(b"Via: SIP/2.0/UDP g;branch=z9hG4bK2\r\n", message.serialize())

    def test_names_are_canonical_and_match_in_any_spelling(self) -> None:
        h = self.sample()
        self.assertEqual([n for n, _ in h], ["Via", "Via", "From", "X-Custom", "x-custom"])
        self.assertEqual(h.get("FROM"), "<sip:alice@example.com>;tag=1")
        self.assertEqual(h.get("f"), h.get("From"))
        self.assertEqual(h.get("V"), "SIP/2.0/UDP a.example.com;branch=z9hG4bK1")
        self.assertEqual(h.get_all("X-CUSTOM"), ["one", "two"])
        self.assertIn("via", h)
        self.assertIn("X-custom", h)
        self.assertNotIn("To", h)
        self.assertNotIn(42, h)
        self.assertIsNone(h.get("To"))
        self.assertEqual(h.get_all("To"), [])

    def test_one_pair_per_line_in_order(self) -> None:
        h = self.sample()
        self.assertEqual(len(h), 5)
        self.assertEqual(len(h.get_all("Via")), 2)
        self.assertEqual(
            h.values("Via"),
            [
                "SIP/2.0/UDP a.example.com;branch=z9hG4bK1",
                "SIP/2.0/UDP b.example.com;branch=z9hG4bK2",
                "SIP/2.0/TCP c;branch=3",
            ],
        )

    def test_values_respects_quotes_and_angle_brackets(self) -> None:
        h = Headers(
            [
                ("Contact", '"Doe, John" <sip:jd@example.com;x=a,b>;q=0.5, <sip:x@y>'),
                ("m", '"say \\"hi, there\\"" <sip:z@w>'),
            ]
        )
        self.assertEqual(
            h.values("Contact"),
            [
                '"Doe, John" <sip:jd@example.com;x=a,b>;q=0.5',
                "<sip:x@y>",
                '"say \\"hi, there\\"" <sip:z@w>',
            ],
        )

    def test_values_drops_empty_elements_and_trims(self) -> None:
        h = Headers([("Supported", " timer ,, 100rel ,"), ("Allow", "")])
        self.assertEqual(h.values("k"), ["timer", "100rel"])
        self.assertEqual(h.values("Allow"), [])

    def test_values_does_not_split_non_list_headers(self) -> None:
        h = Headers(
            [
                ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
                ("Authorization", 'Digest username="a", realm="b", nonce="c"'),
                ("WWW-Authenticate", 'Digest realm="b", qop="auth,auth-int"'),
                ("Subject", "hello, world"),
            ]
        )
        self.assertEqual(h.values("Date"), ["Sat, 13 Nov 2010 23:29:00 GMT"])
        self.assertEqual(len(h.values("Authorization")), 1)
        self.assertEqual(len(h.values("www-authenticate")), 1)
        self.assertEqual(h.values("s"), ["hello, world"])

    def test_split_list(self) -> None:
        self.assertEqual(split_list("a, b ,c"), ["a", "b", "c"])
        self.assertEqual(split_list('"a,b", <c,d>'), ['"a,b"', "<c,d>"])
        self.assertEqual(split_list('"unterminated, x'), ['"unterminated, x'])
        self.assertEqual(split_list("<open, x"), ["<open, x"])
        self.assertEqual(split_list(""), [])

    def test_add_appends_and_accepts_typed_values(self) -> None:
        h = Headers()
        h.add("Max-Forwards", 70)
        h.add("CSeq", CSeq(2, "BYE"))
        h.add("v", Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKx"}))
        h.add("Subject", "  padded  ")
        self.assertEqual(
            list(h),
            [
                ("Max-Forwards", "70"),
                ("CSeq", "2 BYE"),
                ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx"),
                ("Subject", "padded"),
            ],
        )

    def test_mapping_constructor(self) -> None:
        h = Headers({"Via": ["SIP/2.0/UDP a;branch=1", "SIP/2.0/UDP b;branch=2"], "i": "x@y"})
        self.assertEqual(
            list(h),
            [
                ("Via", "SIP/2.0/UDP a;branch=1"),
                ("Via", "SIP/2.0/UDP b;branch=2"),
                ("Call-ID", "x@y"),
            ],
        )

    def test_set_replaces_all_lines_at_the_first_position(self) -> None:
        h = self.sample()
        h.set("VIA", "SIP/2.0/TLS z;branch=9")
        self.assertEqual(
            list(h),
            [
                ("Via", "SIP/2.0/TLS z;branch=9"),
                ("From", "<sip:alice@example.com>;tag=1"),
                ("X-Custom", "one"),
                ("x-custom", "two"),
            ],
        )
        h.set("X-CUSTOM", "three")
        self.assertEqual(h.get_all("x-custom"), ["three"])
        self.assertEqual([n for n, _ in h][-1], "X-CUSTOM")
        h.set("To", "<sip:bob@example.com>")
        self.assertEqual([n for n, _ in h][-1], "To")

    def test_remove(self) -> None:
        h = self.sample()
        h.remove("v")
        self.assertNotIn("Via", h)
        self.assertEqual(len(h), 3)
        h.remove("Nothing-There")
        self.assertEqual(len(h), 3)
        h.remove("x-CUSTOM")
        self.assertEqual([n for n, _ in h], ["From"])

    def test_prepend_puts_the_line_before_the_first_of_its_name(self) -> None:
        h = Headers([("Max-Forwards", "70"), ("Via", "SIP/2.0/UDP b;branch=2")])
        h.prepend("Via", "SIP/2.0/UDP a;branch=1")
        self.assertEqual(h.get_all("Via"), ["SIP/2.0/UDP a;branch=1", "SIP/2.0/UDP b;branch=2"])
        self.assertEqual([n for n, _ in h], ["Max-Forwards", "Via", "Via"])
        h.prepend("Record-Route", "<sip:p1;lr>")
        self.assertEqual(next(n for n, _ in h), "Record-Route")

    def test_copy_is_independent(self) -> None:
        h = self.sample()
        c = h.copy()
        self.assertEqual(c, h)
        c.add("Subject", "x")
        self.assertNotIn("Subject", h)
        self.assertNotEqual(c, h)

    def test_equality_ignores_name_case_but_not_order(self) -> None:
        a = Headers([("X-A", "1"), ("Via", "v")])
        b = Headers([("x-a", "1"), ("v", "v")])
        c = Headers([("Via", "v"), ("X-A", "1")])
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        self.assertNotEqual(a, Headers([("X-A", "2"), ("Via", "v")]))
        self.assertNotEqual(a, "not headers")

    def test_bad_names_and_values_are_refused(self) -> None:
        h = Headers()
        self.assertRaises(ValueError, h.add, "Bad Name", "x")
        self.assertRaises(ValueError, h.add, "", "x")
        self.assertRaises(ValueError, h.add, "X-A", "line\r\nInjected: yes")
        self.assertRaises(ValueError, h.set, "X-A", "bare\nlf")
        self.assertEqual(len(h), 0)


class ViaTests(SynchronousTestCase):
    def test_typical(self) -> None:
        via = Via.parse("SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776;rport")
        self.assertEqual(via.protocol, "SIP/2.0")
        self.assertEqual(via.transport, "UDP")
        self.assertEqual(via.host, "pc33.atlanta.example.com")
        self.assertEqual(via.port, 5066)
        self.assertEqual(via.sent_by, ("pc33.atlanta.example.com", 5066))
        self.assertEqual(via.branch, "z9hG4bK776")
        self.assertIsNone(via.rport)
        self.assertTrue(via.rport_requested)
        self.assertIsNone(via.received)
        self.assertIsNone(via.maddr)
        self.assertIsNone(via.ttl)
        self.assertEqual(via.params, (("branch", "z9hG4bK776"), ("rport", None)))

    def test_received_rport_maddr_ttl(self) -> None:
        via = Via.parse(
            "SIP/2.0/udp 10.0.0.1;BRANCH=z9hG4bKa;received=192.0.2.4;rport=5070;"
            "maddr=224.2.0.1;ttl=16"
        )
        self.assertEqual(via.transport, "UDP")
        self.assertEqual(via.port, None)
        self.assertEqual(via.branch, "z9hG4bKa")
        self.assertEqual(via.received, "192.0.2.4")
        self.assertEqual(via.rport, 5070)
        self.assertTrue(via.rport_requested)
        self.assertEqual(via.maddr, "224.2.0.1")
        self.assertEqual(via.ttl, 16)
        self.assertEqual(via.param("Received"), "192.0.2.4")
        self.assertTrue(via.has_param("TTL"))
        self.assertFalse(via.has_param("x"))

    def test_ipv6_sent_by(self) -> None:
        via = Via.parse("SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKv6")
        self.assertEqual(via.sent_by, ("[2001:db8::1]", 5061))
        self.assertEqual(Via.parse("SIP/2.0/TCP [::1];branch=x").sent_by, ("[::1]", None))

    def test_whitespace_everywhere_the_grammar_allows_it(self) -> None:
        via = Via.parse("SIP  /  2.0 /\tUDP   host.example.com:5060 ; branch = z9hG4bKw ; rport")
        self.assertEqual(
            (via.protocol, via.transport, via.host, via.port),
            ("SIP/2.0", "UDP", "host.example.com", 5060),
        )
        self.assertEqual(via.branch, "z9hG4bKw")
        self.assertTrue(via.rport_requested)

    def test_quoted_parameter_value(self) -> None:
        via = Via.parse('SIP/2.0/UDP h;branch=z9hG4bK1;x="a;b,c"')
        self.assertEqual(via.param("x"), '"a;b,c"')

    def test_malformed(self) -> None:
        for text in (
            "",
            "SIP/2.0/UDP",
            "SIP/2.0 UDP host",
            "SIP/2.0/UDP host:",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host:5x",
            "SIP/2.0/UDP host;;branch=1",
            "SIP/2.0/UDP host;branch=",
            "SIP/2.0/UDP host;=x",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP ho st",
            "SIP/2.0/U@P host",
            "SIP/2.0/UDP host;branch=a b",
        ):
            self.assertRaises(ParseError, Via.parse, text)

    def test_typed_param_errors_surface_on_access(self) -> None:
        via = Via.parse("SIP/2.0/UDP h;ttl=999;rport=x")
        self.assertRaises(ParseError, getattr, via, "ttl")
        self.assertRaises(ParseError, getattr, via, "rport")

    def test_serialize(self) -> None:
        text = "SIP/2.0/UDP h.example.com:5060;branch=z9hG4bK1;rport"
        self.assertEqual(Via.parse(text).serialize(), text)
        self.assertEqual(str(Via.parse(text)), text)
        built = Via("tcp", "192.0.2.1", 5070, (("branch", "z9hG4bKb"), ("rport", None)))
        self.assertEqual(built.serialize(), "SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKb;rport")
        self.assertEqual(Via.parse(built.serialize()), built)

    def test_with_and_without_param(self) -> None:
        via = Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1;rport")
        answered = via.with_param("received", "192.0.2.9").with_param("rport", "5062")
        self.assertEqual(
            answered.serialize(), "SIP/2.0/UDP h;branch=z9hG4bK1;rport=5062;received=192.0.2.9"
        )
        self.assertEqual(via.serialize(), "SIP/2.0/UDP h;branch=z9hG4bK1;rport")
        self.assertEqual(
            answered.without_param("RPORT").params,
            (("branch", "z9hG4bK1"), ("received", "192.0.2.9")),
        )

    def test_immutable_and_hashable(self) -> None:
        via = Via.parse("SIP/2.0/UDP h;branch=1")
        self.assertRaises(AttributeError, setattr, via, "host", "x")
        self.assertEqual(hash(via), hash(Via("UDP", "h", None, (("branch", "1"),))))
        self.assertEqual(len({via, Via.parse("SIP/2.0/UDP h;branch=1")}), 1)
        self.assertNotEqual(via, Via.parse("SIP/2.0/UDP h;branch=2"))
        self.assertNotEqual(via, "SIP/2.0/UDP h;branch=1")


class NameAddrTests(SynchronousTestCase):
    def test_quoted_display_name_with_escapes(self) -> None:
        na = NameAddr.parse('"Alice \\"Al\\" Liddell" <sip:alice@example.com>;tag=abc')
        self.assertEqual(na.display_name, 'Alice "Al" Liddell')
        self.assertEqual(na.uri_text, "sip:alice@example.com")
        self.assertEqual(na.tag, "abc")
        self.assertEqual(na.params, (("tag", "abc"),))

    def test_token_display_name(self) -> None:
        na = NameAddr.parse("Bob  Smith<sip:bob@example.com>")
        self.assertEqual(na.display_name, "Bob  Smith")
        self.assertIsNone(na.tag)
        self.assertEqual(NameAddr.parse("<sip:x@y>").display_name, None)
        self.assertEqual(NameAddr.parse('"" <sip:x@y>').display_name, "")

    def test_params_outside_brackets_are_header_params(self) -> None:
        na = NameAddr.parse(
            '<sip:a@b;transport=tcp>;tag=1;expires=60;q=0.7;+sip.instance="<urn:x>"'
        )
        self.assertEqual(na.uri_text, "sip:a@b;transport=tcp")
        self.assertEqual(na.tag, "1")
        self.assertEqual(na.expires, 60)
        self.assertEqual(na.q, 0.7)
        self.assertEqual(na.param("+SIP.INSTANCE"), '"<urn:x>"')
        self.assertIsNone(na.param("transport"))

    def test_addr_spec_parameters_belong_to_the_header(self) -> None:
        na = NameAddr.parse("sip:+1-972-555-2222@gw1.example.net;user=phone;tag=9")
        self.assertEqual(na.uri_text, "sip:+1-972-555-2222@gw1.example.net")
        self.assertEqual(na.param("user"), "phone")
        self.assertEqual(na.tag, "9")
        self.assertIsNone(na.display_name)

    def test_addr_spec_without_parameters(self) -> None:
        for text in ("sip:sipp@127.0.0.2:6100", "tel:+1-972-555-2222", "sips:[2001:db8::1]:5061"):
            na = NameAddr.parse(text)
            self.assertEqual((na.uri_text, na.display_name, na.params), (text, None, ()))
            self.assertEqual(na.serialize(), text)
            self.assertEqual(na.uri.serialize(), text)
        self.assertEqual(NameAddr.parse("sip:a@b ;tag=1").tag, "1")
        for bad in ("sip:a@b?subject=x", "sip:a@b,sip:c@d", 'sip:a"b', "sip:a b"):
            with self.assertRaises(ParseError):
                NameAddr.parse(bad)

    def test_addr_spec_with_a_bracket_in_a_quoted_parameter(self) -> None:
        na = NameAddr.parse('sip:a@b;+sip.instance="<urn:uuid:1>";expires=5')
        self.assertEqual(na.uri_text, "sip:a@b")
        self.assertEqual(na.param("+sip.instance"), '"<urn:uuid:1>"')
        self.assertEqual(na.expires, 5)

    def test_whitespace_around_separators(self) -> None:
        na = NameAddr.parse('"A" <sip:a@b> ; tag = 7 ;x')
        self.assertEqual(na.tag, "7")
        self.assertEqual(na.param("x"), "")

    def test_star(self) -> None:
        self.assertIs(NameAddr.parse("*"), STAR)
        self.assertIs(NameAddr.parse(" * "), STAR)
        self.assertTrue(STAR.is_star)
        self.assertEqual(STAR.serialize(), "*")
        self.assertRaises(ParseError, getattr, STAR, "uri")
        self.assertRaises(ParseError, NameAddr.parse, "*;expires=0")
        self.assertFalse(NameAddr.parse("<sip:a@b>").is_star)

    def test_q_and_expires_errors(self) -> None:
        for q in ("1.5", "abc", "-0.1", "0.12345", "nan", "1e0"):
            na = NameAddr.parse(f"<sip:a@b>;q={q}")
            self.assertRaises(ParseError, getattr, na, "q")
        for q, want in (("0", 0.0), ("1", 1.0), ("0.", 0.0), ("1.000", 1.0), ("0.001", 0.001)):
            self.assertEqual(NameAddr.parse(f"<sip:a@b>;q={q}").q, want)
        self.assertRaises(ParseError, getattr, NameAddr.parse("<sip:a@b>;expires=x"), "expires")
        self.assertRaises(
            ParseError, getattr, NameAddr.parse("<sip:a@b>;expires=99999999999"), "expires"
        )

    def test_malformed(self) -> None:
        for text in (
            "",
            '"unterminated <sip:a@b>',
            "<sip:a@b",
            "Bell, Alexander <sip:a@b>",
            '"ok" sip:a@b',
            "< sip:a@b >",
            "<sip:a@b> junk",
            "<notauri>",
            "sip:a@b?subject=x",
            "sip:a@b, sip:c@d",
            "<sip:a@b>;;tag=1",
            "<sip:a@b>;tag=",
        ):
            self.assertRaises(ParseError, NameAddr.parse, text)

    def test_serialize(self) -> None:
        text = '"A" <sip:a@b>;tag=1'
        self.assertEqual(NameAddr.parse(text).serialize(), text)
        na = NameAddr.parse('"A \\"B\\"" <sip:a@b>').with_tag("t1")
        self.assertEqual(na.serialize(), '"A \\"B\\"" <sip:a@b>;tag=t1')
        again = NameAddr.parse(na.serialize())
        self.assertEqual(again.display_name, 'A "B"')
        self.assertEqual(again, na)
        self.assertEqual(
            NameAddr.parse("sip:a@b;tag=1").with_param("x").serialize(), "<sip:a@b>;tag=1;x"
        )

    def test_with_tag_replaces(self) -> None:
        na = NameAddr.parse("<sip:a@b>;TAG=old;x=1")
        self.assertEqual(na.with_tag("new").params, (("tag", "new"), ("x", "1")))
        self.assertEqual(na.without_param("x").params, (("TAG", "old"),))
        self.assertRaises(ValueError, STAR.with_tag, "x")

    def test_immutable(self) -> None:
        na = NameAddr.parse("<sip:a@b>")
        self.assertRaises(AttributeError, setattr, na, "display_name", "x")
        self.assertEqual(hash(na), hash(NameAddr.parse("<sip:a@b>")))


class CSeqTests(SynchronousTestCase):
    def test_parse(self) -> None:
        cseq = CSeq.parse("  4711 \t INVITE ")
        self.assertEqual((cseq.seq, cseq.method), (4711, "INVITE"))
        self.assertEqual(cseq.serialize(), "4711 INVITE")
        self.assertEqual(cseq, CSeq(4711, "INVITE"))
        self.assertNotEqual(cseq, CSeq(4711, "invite"))
        self.assertEqual(CSeq.parse("4294967295 ACK").seq, 2**32 - 1)

    def test_malformed(self) -> None:
        for text in ("", "INVITE", "1", "x INVITE", "-1 INVITE", "1 IN VITE", "4294967296 ACK"):
            self.assertRaises(ParseError, CSeq.parse, text)
        self.assertRaises(ValueError, CSeq, -1, "ACK")

    def test_immutable(self) -> None:
        self.assertRaises(AttributeError, setattr, CSeq(1, "ACK"), "seq", 2)


class WarningTests(SynchronousTestCase):
    def test_parse_and_serialize(self) -> None:
        w = Warning.parse('380 sbc.example.net "SIPS \\"Not\\" Allowed"')
        self.assertEqual((w.code, w.agent, w.text), (380, "sbc.example.net", 'SIPS "Not" Allowed'))
        self.assertEqual(w.serialize(), '380 sbc.example.net "SIPS \\"Not\\" Allowed"')
        self.assertEqual(Warning.parse(w.serialize()), w)
        self.assertEqual(
            Warning(381, "h:5060", "SIPS Required").serialize(), '381 h:5060 "SIPS Required"'
        )

    def test_malformed(self) -> None:
        for text in ("", "380", '38 h "x"', "380 h x", '380 h "open', 'abc h "x"'):
            self.assertRaises(ParseError, Warning.parse, text)
        self.assertRaises(ValueError, Warning, 42, "h", "x")


class ParseUintTests(SynchronousTestCase):
    def test_range(self) -> None:
        self.assertEqual(parse_uint(" 0070 ", "Max-Forwards", 255), 70)
        self.assertRaises(ParseError, parse_uint, "256", "Max-Forwards", 255)
        self.assertRaises(ParseError, parse_uint, "4294967296", "Expires")
        self.assertRaises(ParseError, parse_uint, "-1", "Expires")
        self.assertRaises(ParseError, parse_uint, "", "Expires")
        self.assertRaises(ParseError, parse_uint, "١٢", "Expires")  # non-ASCII digits
        error = self.assertRaises(ParseError, parse_uint, "x", "Expires")
        self.assertIn("Expires", error.reason)
