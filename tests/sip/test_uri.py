"""Tests for sbc.sip.uri: RFC 3261 §19.1 / §25.1 SIP URIs and RFC 3966 tel URIs."""

from __future__ import annotations

import contextlib
import copy
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import ParseError
from sbc.sip.uri import URI, UnsupportedSchemeError, host_text, parse_uri, unescape


class ParseSipTests(SynchronousTestCase):
    """Components of sip: and sips: URIs are split out as written."""

    def test_typical(self) -> None:
        u = parse_uri("sip:alice@example.com;transport=tcp")
        self.assertEqual(u.scheme, "sip")
        self.assertEqual(u.user, "alice")
        self.assertIsNone(u.password)
        self.assertEqual(u.host, "example.com")
        self.assertIsNone(u.port)
        self.assertEqual(u.params, (("transport", "tcp"),))
        self.assertEqual(u.headers, ())
        self.assertFalse(u.is_secure)

    def test_host_only(self) -> None:
        u = parse_uri("sip:biloxi.com")
        self.assertEqual((u.user, u.host, u.port, u.params), (None, "biloxi.com", None, ()))

    def test_all_components(self) -> None:
        u = parse_uri("sips:+1-212-555-1212:1234@gateway.com:5061;user=phone;lr?to=a%20b&x=")
        self.assertEqual(u.scheme, "sips")
        self.assertTrue(u.is_secure)
        self.assertEqual(u.user, "+1-212-555-1212")
        self.assertEqual(u.password, "1234")
        self.assertEqual(u.host, "gateway.com")
        self.assertEqual(u.port, 5061)
        self.assertEqual(u.params, (("user", "phone"), ("lr", None)))
        self.assertEqual(u.headers, (("to", "a%20b"), ("x", "")))

    def test_rfc3261_examples(self) -> None:
        """The example URIs of RFC 3261 §19.1.3 all parse."""
        for text in [
            "sip:alice@atlanta.com",
            "sip:alice:secretword@atlanta.com;transport=tcp",
            "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            "sips:1212@gateway.com",
            "sip:alice@192.0.2.4",
            "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
            "sip:alice;day=tuesday@atlanta.com",
        ]:
            self.assertEqual(parse_uri(text).serialize(), text)

    def test_user_with_semicolon(self) -> None:
        u = parse_uri("sip:alice;day=tuesday@atlanta.com")
        self.assertEqual(u.user, "alice;day=tuesday")
        self.assertEqual(u.params, ())

    def test_telephone_subscriber_chars(self) -> None:
        u = parse_uri("sip:*67#1(212)555.1212;isub=12@gw.example.com;user=phone")
        self.assertEqual(u.user, "*67#1(212)555.1212;isub=12")

    def test_unusual_user(self) -> None:
        """RFC 4475 §3.1.1.2 style unreserved characters in the user part."""
        u = parse_uri("sip:1_unusual.URI~(to-test!)@example.com")
        self.assertEqual(u.user, "1_unusual.URI~(to-test!)")

    def test_empty_password(self) -> None:
        u = parse_uri("sip:alice:@example.com")
        self.assertEqual(u.password, "")
        self.assertEqual(u.serialize(), "sip:alice:@example.com")

    def test_scheme_case_insensitive(self) -> None:
        u = parse_uri("SIPS:alice@example.com")
        self.assertEqual(u.scheme, "sips")
        self.assertEqual(u, parse_uri("sips:alice@example.com"))

    def test_ipv4(self) -> None:
        u = parse_uri("sip:192.0.2.4:5060")
        self.assertEqual((u.host, u.port), ("192.0.2.4", 5060))
        self.assertTrue(u.host_is_ip)

    def test_ipv6(self) -> None:
        u = parse_uri("sip:alice@[2001:db8::10]:5070;maddr=[::1]")
        self.assertEqual((u.host, u.port), ("[2001:db8::10]", 5070))
        self.assertEqual(u.param("maddr"), "[::1]")
        self.assertTrue(u.host_is_ip)
        self.assertEqual(parse_uri("sip:[::ffff:192.0.2.1]").host, "[::ffff:192.0.2.1]")

    def test_host_is_ip_false_for_names(self) -> None:
        self.assertFalse(parse_uri("sip:example.c0m").host_is_ip)
        self.assertFalse(parse_uri("sip:a.example.com.").host_is_ip)
        self.assertFalse(parse_uri("tel:+1234").host_is_ip)

    def test_fqdn_trailing_dot(self) -> None:
        self.assertEqual(parse_uri("sip:example.com.").host, "example.com.")

    def test_port_bounds(self) -> None:
        self.assertEqual(parse_uri("sip:h:0").port, 0)
        self.assertEqual(parse_uri("sip:h:65535").port, 65535)
        self.assertEqual(parse_uri("sip:h:05060").port, 5060)

    def test_headers_without_params(self) -> None:
        u = parse_uri("sip:h?subject=hi")
        self.assertEqual((u.params, u.headers), ((), (("subject", "hi"),)))

    def test_param_lookup(self) -> None:
        u = parse_uri("sip:h;Transport=TLS;lr;x=1;x=2")
        self.assertEqual(u.param("transport"), "TLS")
        self.assertEqual(u.param("LR"), "")
        self.assertEqual(u.param("x"), "1")
        self.assertIsNone(u.param("maddr"))
        self.assertTrue(u.has_param("TRANSPORT"))
        self.assertTrue(u.has_param("lr"))
        self.assertFalse(u.has_param("ttl"))


class MalformedTests(SynchronousTestCase):
    """Malformed text raises ParseError with status 400."""

    BAD = [
        "",
        "sip",
        ":alice@example.com",
        "alice@example.com",
        "sip:",
        "sip:alice@",
        "sip:@example.com",
        "sip::pw@example.com",
        "sip:alice@example.com:",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:99999999999999999999",
        "sip:alice@example.com:5o60",
        "sip:alice@example.com:\uff11\uff12",  # fullwidth digits
        "sip:alice@exa mple.com",
        "sip:al ice@example.com",
        "sip:alice@example.com ",
        " sip:alice@example.com",
        "sip:alice@-example.com",
        "sip:alice@example-.com",
        "sip:alice@example..com",
        "sip:alice@.example.com",
        "sip:alice@example.com..",
        "sip:alice@example.1com",
        "sip:alice@exa_mple.com",
        "sip:alice@256.0.0.1",
        "sip:alice@1.2.3",
        "sip:alice@1.2.3.4.",
        "sip:alice@1.2.3.4444",
        "sip:alice@[::1",
        "sip:alice@[::1]x",
        "sip:alice@[]",
        "sip:alice@[::g]",
        "sip:alice@[1:2:3:4:5:6:7:8:9]",
        "sip:alice@[fe80::1%25eth0]",
        "sip:alice@::1",
        "sip:a@b@c",
        "sip:al%zzice@example.com",
        "sip:alice%4@example.com",
        "sip:alice@example.com%41",
        "sip:alice@example.com;",
        "sip:alice@example.com;;lr",
        "sip:alice@example.com;=x",
        "sip:alice@example.com;a=",
        "sip:alice@example.com;a=b=c",
        "sip:alice@example.com;a=<b>",
        "sip:alice@example.com?",
        "sip:alice@example.com?a",
        "sip:alice@example.com?=b",
        "sip:alice@example.com?a=b&",
        "sip:alice@example.com?a=b=c",
        'sip:alice@example.com?a="b"',
        "sip:alice:pa;ss@example.com",
        "sip:<alice>@example.com",
        "sip:alice@example.com\r\n",
        "sip:alicé@example.com",
        "tel:",
        "tel:+",
        "tel:+-",
        "tel:12 34",
        "tel:+1234;",
        "tel:+1234;=x",
        "tel:+1234;a_b=1",
        "tel:+1234;ext=",
        "tel:+1234;ext=12a",
        "tel:1234;phone-context=",
        "tel:1234;phone-context=+",
        "tel:1234;phone-context=-bad.com",
        "tel:1234;phone-context=1.2.3.4",
        "tel:+1234?a=b",
        "tel:xyz",
        "1sip:foo",
        "ht tp://x",
        "http:",
        "http:foo bar",
        "mailto:<a@b>",
        "unknown:%zz",
    ]

    def test_malformed(self) -> None:
        for text in self.BAD:
            error = self.assertRaises(ParseError, parse_uri, text)
            self.assertEqual(error.status, 400, text)
            self.assertFalse(isinstance(error, UnsupportedSchemeError), text)


class UnsupportedSchemeTests(SynchronousTestCase):
    """A valid absoluteURI of another scheme gets 416 (RFC 3261 §8.2.2.1)."""

    def test_other_schemes(self) -> None:
        for text, scheme in [
            ("http://x", "http"),
            ("unknownscheme:foo", "unknownscheme"),
            ("mailto:alice@example.com", "mailto"),
            ("URN:service:sos", "urn"),
            ("im:alice@example.com?subject=a%20b", "im"),
        ]:
            error = self.assertRaises(UnsupportedSchemeError, parse_uri, text)
            self.assertIsInstance(error, ParseError)
            self.assertEqual(error.status, 416)
            self.assertEqual(error.scheme, scheme)
            self.assertFalse(error.answerable)


class TelTests(SynchronousTestCase):
    """RFC 3966 tel URIs: parse, serialize, compare."""

    def test_global(self) -> None:
        u = parse_uri("tel:+1-201-555-0123")
        self.assertEqual((u.scheme, u.host, u.params), ("tel", "+1-201-555-0123", ()))
        self.assertIsNone(u.user)
        self.assertIsNone(u.port)
        self.assertFalse(u.is_secure)

    def test_local_with_context(self) -> None:
        u = parse_uri("tel:7042;phone-context=example.com")
        self.assertEqual(u.host, "7042")
        self.assertEqual(u.param("phone-context"), "example.com")
        u = parse_uri("tel:863-1234;phone-context=+1-914-555")
        self.assertEqual(u.param("Phone-Context"), "+1-914-555")

    def test_params(self) -> None:
        u = parse_uri("TEL:+1(201)555.0123;ext=1234;isub=abc;foo=bar;flag")
        self.assertEqual(u.scheme, "tel")
        self.assertEqual(
            u.params, (("ext", "1234"), ("isub", "abc"), ("foo", "bar"), ("flag", None))
        )
        self.assertEqual(u.serialize(), "TEL:+1(201)555.0123;ext=1234;isub=abc;foo=bar;flag")

    def test_local_without_context_tolerated(self) -> None:
        """RFC 3966 wants phone-context on local numbers; deployed peers omit it."""
        self.assertEqual(parse_uri("tel:*67#12").host, "*67#12")

    def test_equal_ignores_visual_separators(self) -> None:
        a = parse_uri("tel:+1-201-555-0123")
        self.assertTrue(a.rfc_equal(parse_uri("tel:+1.201.555(0123)")))
        self.assertTrue(a.rfc_equal(parse_uri("tel:+12015550123")))
        self.assertFalse(a.rfc_equal(parse_uri("tel:+12015550124")))

    def test_equal_case_insensitive_and_unordered_params(self) -> None:
        a = parse_uri("tel:7042;phone-context=example.com;ext=1-2")
        b = parse_uri("tel:7042;EXT=12;Phone-Context=EXAMPLE.COM")
        self.assertTrue(a.rfc_equal(b))
        c = parse_uri("tel:7042;phone-context=+1-914-555")
        self.assertTrue(c.rfc_equal(parse_uri("tel:7042;phone-context=+1914555")))
        self.assertTrue(parse_uri("tel:ab12;x=Y").rfc_equal(parse_uri("tel:AB12;X=y")))

    def test_not_equal(self) -> None:
        # global vs local
        self.assertFalse(parse_uri("tel:+1234").rfc_equal(parse_uri("tel:1234")))
        # a parameter present in only one URI makes them differ (RFC 3966 §4)
        self.assertFalse(parse_uri("tel:+1234").rfc_equal(parse_uri("tel:+1234;foo=1")))
        self.assertFalse(parse_uri("tel:+1234;a=1").rfc_equal(parse_uri("tel:+1234;a=2")))
        self.assertFalse(
            parse_uri("tel:1;phone-context=a.com").rfc_equal(parse_uri("tel:1;phone-context=b.com"))
        )
        # tel and sip never compare equal
        self.assertFalse(parse_uri("tel:+1234").rfc_equal(parse_uri("sip:+1234@h;user=phone")))


class RoundTripTests(SynchronousTestCase):
    """serialize() gives back exactly what was parsed."""

    def test_text_kept_as_written(self) -> None:
        for text in [
            "SIP:%61lice@AtLanTa.CoM:05060;Transport=TCP;LR?Subject=a%20b",
            "sips:alice@[2001:DB8:0::1]",
            "sip:a@h;name=value%2541",
            "tel:+1-201-555-0123;EXT=1",
        ]:
            u = parse_uri(text)
            self.assertEqual(u.serialize(), text)
            self.assertEqual(str(u), text)
            self.assertEqual(parse_uri(u.serialize()), u)

    def test_constructed(self) -> None:
        u = URI(
            "SIP",
            user="alice",
            password="pw",
            host="example.com",
            port=5060,
            params=[("transport", "tcp"), ("lr", None)],
            headers=[("subject", "hi"), ("priority", "urgent")],
        )
        self.assertEqual(u.scheme, "sip")
        text = "sip:alice:pw@example.com:5060;transport=tcp;lr?subject=hi&priority=urgent"
        self.assertEqual(u.serialize(), text)
        self.assertEqual(parse_uri(text), u)

    def test_constructor_rejects_nonsense(self) -> None:
        self.assertRaises(ValueError, URI, "http", host="x")
        self.assertRaises(ValueError, URI, "sip", host="")

    def test_repr(self) -> None:
        self.assertEqual(repr(parse_uri("sip:a@b")), "URI('sip:a@b')")


class ValueObjectTests(SynchronousTestCase):
    """URIs are immutable, hashable values."""

    def test_immutable(self) -> None:
        u = parse_uri("sip:alice@example.com")
        self.assertRaises(AttributeError, setattr, u, "host", "evil.com")
        self.assertRaises(AttributeError, delattr, u, "host")
        self.assertEqual(u.host, "example.com")
        # the parse cache hands out the same value; it must not have changed
        self.assertEqual(parse_uri("sip:alice@example.com").host, "example.com")

    def test_structural_equality_and_hash(self) -> None:
        a = parse_uri("sip:alice@example.com;lr")
        b = URI("sip", "alice", None, "example.com", None, [("lr", None)])
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertEqual(len({a, b}), 1)
        # structural equality is not RFC equality
        c = parse_uri("sip:alice@EXAMPLE.com;lr")
        self.assertNotEqual(a, c)
        self.assertTrue(a.rfc_equal(c))
        self.assertNotEqual(a, "sip:alice@example.com;lr")

    def test_copy_and_pickle(self) -> None:
        u = parse_uri("sips:bob@[::1]:5061;transport=tls?x=y")
        self.assertEqual(copy.copy(u), u)
        self.assertEqual(copy.deepcopy(u), u)
        self.assertEqual(pickle.loads(pickle.dumps(u)), u)

    def test_replace(self) -> None:
        u = parse_uri("SIP:alice@example.com;transport=tcp")
        v = u.replace(host="biloxi.com", port=5070)
        self.assertEqual(v.serialize(), "sip:alice@biloxi.com:5070;transport=tcp")
        self.assertEqual(u.serialize(), "SIP:alice@example.com;transport=tcp")
        w = v.replace(user=None, params=())
        self.assertEqual(w.serialize(), "sip:biloxi.com:5070")

    def test_with_scheme(self) -> None:
        u = parse_uri("sip:alice@example.com;transport=tls")
        s = u.with_scheme("SIPS")
        self.assertTrue(s.is_secure)
        self.assertEqual(s.serialize(), "sips:alice@example.com;transport=tls")
        self.assertIs(u.with_scheme("sip"), u)
        self.assertRaises(ValueError, u.with_scheme, "tel")
        self.assertRaises(ValueError, parse_uri("tel:+1").with_scheme, "sip")

    def test_with_and_without_params(self) -> None:
        u = parse_uri("sip:h;Transport=udp;lr;maddr=1.2.3.4")
        self.assertEqual(
            u.with_param("transport", "tls").serialize(), "sip:h;lr;maddr=1.2.3.4;transport=tls"
        )
        self.assertEqual(u.without_params("MADDR", "lr").serialize(), "sip:h;Transport=udp")


class UnescapeTests(SynchronousTestCase):
    """unescape decodes %HH (RFC 3261 §19.1.2)."""

    def test_unescape(self) -> None:
        self.assertEqual(unescape("alice"), "alice")
        self.assertEqual(unescape("%61lice"), "alice")
        self.assertEqual(unescape("I%20have%20spaces"), "I have spaces")
        self.assertEqual(unescape("sip%3Abob%40biloxi.com"), "sip:bob@biloxi.com")
        self.assertEqual(unescape("null-%00-null"), "null-\x00-null")
        self.assertEqual(unescape("%C3%A9t%c3%a9"), "été")

    def test_invalid_utf8_kept_distinct(self) -> None:
        self.assertNotEqual(unescape("%FF"), unescape("%FE"))

    def test_bad_escape(self) -> None:
        for text in ["%", "%4", "a%zz", "%4g"]:
            self.assertRaises(ParseError, unescape, text)


def _eq(a: str, b: str) -> bool:
    """rfc_equal both ways; the two directions must agree."""
    ua, ub = parse_uri(a), parse_uri(b)
    forward, backward = ua.rfc_equal(ub), ub.rfc_equal(ua)
    assert forward == backward, (a, b)
    return forward


class RfcEqualTests(SynchronousTestCase):
    """RFC 3261 §19.1.4 URI comparison, with every example pair of the RFC."""

    EQUIVALENT = [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
    ]

    NOT_EQUIVALENT = [
        # different usernames
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        # can resolve to different ports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        # can resolve to different transports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        # can resolve to different port and transports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        # different header component
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        # even though that's what phone21.boxesbybob.com resolves to
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ]

    def test_rfc_equivalent_examples(self) -> None:
        for a, b in self.EQUIVALENT:
            self.assertTrue(_eq(a, b), (a, b))

    def test_rfc_not_equivalent_examples(self) -> None:
        for a, b in self.NOT_EQUIVALENT:
            self.assertFalse(_eq(a, b), (a, b))

    def test_not_transitive(self) -> None:
        """The RFC's own example: equality is not transitive."""
        self.assertTrue(_eq("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"))
        self.assertTrue(_eq("sip:carol@chicago.com", "sip:carol@chicago.com;security=off"))
        self.assertFalse(
            _eq("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off")
        )

    def test_sip_and_sips_never_equal(self) -> None:
        self.assertFalse(_eq("sip:alice@atlanta.com", "sips:alice@atlanta.com"))

    def test_userinfo_case_sensitive(self) -> None:
        self.assertFalse(_eq("sip:alice@h", "sip:Alice@h"))
        self.assertFalse(_eq("sip:alice:pw@h", "sip:alice:PW@h"))
        self.assertTrue(_eq("sip:alice:p%77@h", "sip:alice:pw@h"))
        self.assertFalse(_eq("sip:alice:pw@h", "sip:alice@h"))
        self.assertFalse(_eq("sip:alice:@h", "sip:alice@h"))
        self.assertFalse(_eq("sip:h", "sip:alice@h"))

    def test_escapes(self) -> None:
        # unreserved characters equal their escapes, hex case does not matter
        self.assertTrue(_eq("sip:%41lice@h", "sip:Alice@h"))
        self.assertTrue(_eq("sip:a%2fb@h", "sip:a%2Fb@h"))
        # a reserved character is not equivalent to its escape
        self.assertFalse(_eq("sip:a%2Fb@h", "sip:a/b@h"))
        self.assertFalse(_eq("sip:%2B1234@h", "sip:+1234@h"))
        self.assertFalse(_eq("sip:a;b@h", "sip:a%3Bb@h"))
        # an escaped "%" stays distinct from the escape it spells
        self.assertFalse(_eq("sip:a%2541@h", "sip:aA@h"))
        self.assertFalse(_eq("sip:a%253B@h", "sip:a%3B@h"))
        # param names and values unescape too
        self.assertTrue(_eq("sip:h;n%61me=v%41l", "sip:h;name=val"))

    def test_host(self) -> None:
        self.assertTrue(_eq("sip:Alice@EXAMPLE.com", "sip:Alice@example.COM"))
        self.assertTrue(_eq("sip:[2001:DB8::1]", "sip:[2001:db8:0:0::1]"))
        self.assertFalse(_eq("sip:[2001:db8::1]", "sip:[2001:db8::2]"))
        self.assertFalse(_eq("sip:example.com", "sip:example.com."))

    def test_port(self) -> None:
        self.assertTrue(_eq("sip:h:5060", "sip:h:05060"))
        self.assertFalse(_eq("sip:h:5060", "sip:h:5061"))
        self.assertFalse(_eq("sips:h", "sips:h:5061"))

    def test_must_match_params(self) -> None:
        for param in ["user=phone", "ttl=1", "method=INVITE", "maddr=192.0.2.1", "transport=tcp"]:
            self.assertFalse(_eq("sip:a@h", f"sip:a@h;{param}"), param)
            self.assertTrue(_eq(f"sip:a@h;{param};x=1", f"sip:a@h;{param.upper()}"), param)
        self.assertFalse(_eq("sip:a@h;user=phone", "sip:a@h;user=ip"))
        self.assertFalse(_eq("sip:a@h;ttl=1", "sip:a@h;ttl=2"))

    def test_other_params(self) -> None:
        self.assertTrue(_eq("sip:a@h;lr", "sip:a@h"))
        self.assertTrue(_eq("sip:a@h;lr;x=1", "sip:a@h;y=2;LR"))
        self.assertFalse(_eq("sip:a@h;x=1", "sip:a@h;x=2"))
        self.assertFalse(_eq("sip:a@h;lr", "sip:a@h;lr=on"))

    def test_headers(self) -> None:
        self.assertFalse(_eq("sip:h?a=1", "sip:h"))
        self.assertFalse(_eq("sip:h?a=1", "sip:h?a=2"))
        self.assertFalse(_eq("sip:h?subject=Hi", "sip:h?subject=hi"))
        self.assertTrue(_eq("sip:h?Subject=a%20b", "sip:h?subject=a%20b"))
        self.assertTrue(_eq("sip:h?subject=a%3Ab", "sip:h?subject=a:b"))
        self.assertTrue(_eq("sip:h?a=1&b=2", "sip:h?b=2&a=1"))
        self.assertFalse(_eq("sip:h?a=1&a=2", "sip:h?a=1"))

    def test_constructed_uri(self) -> None:
        u = URI("sip", "alice", None, "atlanta.com", None, [("transport", "tcp")])
        self.assertTrue(u.rfc_equal(parse_uri("sip:%61lice@ATLANTA.com;TRANSPORT=TCP")))


# --- property tests -----------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
UNRESERVED = ALNUM + "-_.!~*'()"
USER_CHARS = UNRESERVED + "&=+$,;?/#"
PASSWORD_CHARS = UNRESERVED + "&=+$,"
PARAM_CHARS = UNRESERVED + "[]/:&+$"
HEADER_CHARS = UNRESERVED + "[]/?:+$"

escape = st.integers(0, 255).map(lambda b: f"%{b:02x}" if b % 2 else f"%{b:02X}")


def escaped_text(alphabet: str, min_size: int) -> st.SearchStrategy[str]:
    """Text over ``alphabet`` with %HH escapes mixed in."""
    return st.lists(
        st.one_of(st.sampled_from(alphabet), escape), min_size=min_size, max_size=10
    ).map("".join)


label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,4}[A-Za-z0-9])?", fullmatch=True)
toplabel = st.from_regex(r"[A-Za-z]([A-Za-z0-9-]{0,4}[A-Za-z0-9])?", fullmatch=True)
hostname = st.builds(
    lambda labels, top, dot: ".".join([*labels, top]) + dot,
    st.lists(label, max_size=3),
    toplabel,
    st.sampled_from(["", "."]),
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).flatmap(
    lambda a: st.sampled_from([f"[{a.compressed}]", f"[{a.exploded.upper()}]"])
)
hosts = st.one_of(hostname, ipv4, ipv6)


@st.composite
def sip_uri_texts(draw: st.DrawFn) -> str:
    """Text of a valid sip:/sips: URI, built from the RFC 3261 grammar."""
    out = draw(st.sampled_from(["sip", "sips", "SIP", "Sips"])) + ":"
    if draw(st.booleans()):
        out += draw(escaped_text(USER_CHARS, 1))
        if draw(st.booleans()):
            out += ":" + draw(escaped_text(PASSWORD_CHARS, 0))
        out += "@"
    out += draw(hosts)
    if draw(st.booleans()):
        out += f":{draw(st.integers(0, 65535))}"
    for name, value in draw(
        st.lists(
            st.tuples(escaped_text(PARAM_CHARS, 1), st.none() | escaped_text(PARAM_CHARS, 1)),
            max_size=3,
        )
    ):
        out += f";{name}" if value is None else f";{name}={value}"
    headers = draw(
        st.lists(
            st.tuples(escaped_text(HEADER_CHARS, 1), escaped_text(HEADER_CHARS, 0)), max_size=3
        )
    )
    if headers:
        out += "?" + "&".join(f"{n}={v}" for n, v in headers)
    return out


phonedigits = st.text("0123456789-.()", max_size=8)


@st.composite
def tel_uri_texts(draw: st.DrawFn) -> str:
    """Text of a valid tel: URI (RFC 3966)."""
    if draw(st.booleans()):
        number = "+" + draw(phonedigits) + draw(st.sampled_from("0123456789")) + draw(phonedigits)
        context = None
    else:
        number = draw(st.text("0123456789abcdefABCDEF*#-.()", max_size=6))
        number += draw(st.sampled_from("0123456789ABCDEF*#"))
        context = draw(st.one_of(hostname.filter(lambda h: h[0].isalpha()), st.just("+1-914")))
    params = draw(
        st.lists(
            st.tuples(
                st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,5}", fullmatch=True).filter(
                    lambda n: n.lower() not in ("ext", "isub", "phone-context")
                ),
                st.none() | escaped_text(PARAM_CHARS, 1),
            ),
            max_size=2,
        )
    )
    if context is not None:
        params.insert(draw(st.integers(0, len(params))), ("phone-context", context))
    if draw(st.booleans()):
        params.append(("ext", draw(st.text("0123456789-", min_size=1, max_size=4))))
    return "tel:" + number + "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


uri_texts = st.one_of(sip_uri_texts(), tel_uri_texts())


def _rebuild(u: URI) -> URI:
    """The same fields in a fresh URI that has no remembered text."""
    return URI(u.scheme, u.user, u.password, u.host, u.port, u.params, u.headers)


class PropertyTests(SynchronousTestCase):
    """Hypothesis properties over generated URIs and arbitrary text."""

    @settings(max_examples=300, deadline=None)
    @given(uri_texts)
    def test_round_trip(self, text: str) -> None:
        u = parse_uri(text)
        self.assertEqual(u.serialize(), text)
        self.assertEqual(parse_uri(u.serialize()), u)
        fresh = _rebuild(u)
        rebuilt = fresh.serialize()
        # only the scheme's case and a port's leading zeros may change
        self.assertEqual(rebuilt, u.scheme + text[len(u.scheme) :])
        self.assertEqual(parse_uri(rebuilt), u)

    @settings(max_examples=300, deadline=None)
    @given(uri_texts)
    def test_rfc_equal_reflexive(self, text: str) -> None:
        u = parse_uri(text)
        self.assertTrue(u.rfc_equal(u))
        self.assertTrue(u.rfc_equal(_rebuild(u)))

    @settings(max_examples=300, deadline=None)
    @given(uri_texts, uri_texts)
    def test_rfc_equal_symmetric(self, a: str, b: str) -> None:
        ua, ub = parse_uri(a), parse_uri(b)
        self.assertEqual(ua.rfc_equal(ub), ub.rfc_equal(ua))

    @settings(max_examples=200, deadline=None)
    @given(sip_uri_texts(), st.data())
    def test_rfc_equal_symmetric_on_variants(self, text: str, data: st.DataObject) -> None:
        """Near-identical URIs (one param dropped, case changed) compare symmetrically."""
        u = parse_uri(text)
        params = list(u.params)
        if params:
            del params[data.draw(st.integers(0, len(params) - 1))]
        v = u.replace(host=u.host.upper(), params=params)
        self.assertEqual(u.rfc_equal(v), v.rfc_equal(u))
        self.assertTrue(v.rfc_equal(u.replace(params=params)))

    @settings(max_examples=500, deadline=None)
    @given(st.text(max_size=40))
    def test_arbitrary_text_only_parse_error(self, text: str) -> None:
        with contextlib.suppress(ParseError):
            parse_uri(text)

    @settings(max_examples=500, deadline=None)
    @given(
        st.sampled_from(["sip:", "sips:", "tel:", "tel:+", "x:"]),
        st.text(alphabet=USER_CHARS + '%@:[]<>"\\ \t\r\n\x00é', max_size=40),
    )
    def test_uri_like_text_only_parse_error(self, prefix: str, rest: str) -> None:
        try:
            u = parse_uri(prefix + rest)
        except ParseError:
            return
        # whatever parses must round-trip and compare equal to itself
        self.assertEqual(parse_uri(u.serialize()), u)
        self.assertTrue(u.rfc_equal(u))

    @settings(max_examples=300, deadline=None)
    @given(sip_uri_texts(), st.integers(0, 60), st.text(max_size=3))
    def test_mutated_uri_only_parse_error(self, text: str, at: int, junk: str) -> None:
        mutated = text[:at] + junk + text[at + 1 :]
        try:
            u = parse_uri(mutated)
        except ParseError:
            return
        self.assertEqual(u.serialize(), mutated)


class HostTextTests(SynchronousTestCase):
    def test_ipv6_bracketed_once_others_unchanged(self) -> None:
        self.assertEqual(host_text("2001:db8::1"), "[2001:db8::1]")
        self.assertEqual(host_text("[2001:db8::1]"), "[2001:db8::1]")
        self.assertEqual(host_text("192.0.2.1"), "192.0.2.1")
        self.assertEqual(host_text("sbc.example.net"), "sbc.example.net")
