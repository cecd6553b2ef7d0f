"""sbc.auth.digest: RFC 7616 vectors, credentials grammar, nonces, nonce-count tracking."""

from __future__ import annotations

import base64
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sbc.auth.digest import (
    MalformedCredentialsError,
    NonceCountTracker,
    check_nonce,
    compute_ha1,
    compute_response,
    mint_nonce,
    nonce_minted_at,
    normalize_algorithm,
    parse_credentials,
    parse_nc,
    same_digest,
)

from .support import SECRET

SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# RFC 7616 §3.9.1 ("Example with SHA-256 and MD5"): the same GET answered with
# each algorithm. Inputs and the two response values are the RFC's.
RFC_USER = "Mufasa"
RFC_PASSWORD = "Circle of Life"
RFC_REALM = "http-auth@example.org"
RFC_URI = "/dir/index.html"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_MD5_RESPONSE = "8ca523f5e9506fed4657c9700eebdbec"
RFC_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def rfc_authorization(algorithm: str, response: str) -> str:
    """The RFC's Authorization value, with its line folding as written there."""
    return (
        f'Digest username="{RFC_USER}",\r\n    realm="{RFC_REALM}",\r\n'
        f'    uri="{RFC_URI}",\r\n    algorithm={algorithm},\r\n'
        f'    nonce="{RFC_NONCE}",\r\n    nc=00000001,\r\n'
        f'    cnonce="{RFC_CNONCE}",\r\n    qop=auth,\r\n'
        f'    response="{response}",\r\n    opaque="{RFC_OPAQUE}"'
    )


class RfcExampleTests(SynchronousTestCase):
    """RFC 7616 §3.9.1, both algorithms."""

    def check(self, algorithm: str, expected: str) -> None:
        ha1 = compute_ha1(algorithm, RFC_USER, RFC_REALM, RFC_PASSWORD)
        response = compute_response(
            algorithm, ha1, "GET", RFC_URI, RFC_NONCE, "00000001", RFC_CNONCE, "auth"
        )
        self.assertEqual(response, expected)
        # and from the parsed header, as the authenticator reads it
        credentials = parse_credentials(rfc_authorization(algorithm, expected))
        assert credentials is not None
        self.assertEqual(credentials.username, RFC_USER)
        self.assertEqual(credentials.opaque, RFC_OPAQUE)
        self.assertEqual(normalize_algorithm(credentials.algorithm or ""), algorithm)
        again = compute_response(
            algorithm,
            ha1,
            "GET",
            credentials.uri or "",
            credentials.nonce or "",
            credentials.nc or "",
            credentials.cnonce or "",
            credentials.qop or "",
        )
        self.assertTrue(same_digest(credentials.response or "", again))

    def test_sha256(self) -> None:
        self.check("SHA-256", RFC_SHA256_RESPONSE)

    def test_md5(self) -> None:
        self.check("MD5", RFC_MD5_RESPONSE)

    def test_wrong_password_differs(self) -> None:
        ha1 = compute_ha1("MD5", RFC_USER, RFC_REALM, "Circle Of Life")
        response = compute_response(
            "MD5", ha1, "GET", RFC_URI, RFC_NONCE, "00000001", RFC_CNONCE, "auth"
        )
        self.assertFalse(same_digest(response, RFC_MD5_RESPONSE))

    def test_same_digest_ignores_hex_case_and_survives_any_text(self) -> None:
        self.assertTrue(same_digest(RFC_MD5_RESPONSE.upper(), RFC_MD5_RESPONSE))
        self.assertFalse(same_digest("é\udcff", RFC_MD5_RESPONSE))

    def test_algorithm_names(self) -> None:
        self.assertEqual(normalize_algorithm("sha-256"), "SHA-256")
        self.assertEqual(normalize_algorithm("md5"), "MD5")
        self.assertIsNone(normalize_algorithm("MD5-sess"))
        self.assertIsNone(normalize_algorithm("SHA-512-256"))


class ParseCredentialsTests(SynchronousTestCase):
    def test_quoted_escapes_case_and_blanks(self) -> None:
        parsed = parse_credentials(
            ' digest  UserName = "a\\"l\\\\ice" ,Realm="lab.test",\tNC = 0000000A , qop="auth"'
        )
        assert parsed is not None
        self.assertEqual(
            dict(parsed.params),
            {"username": 'a"l\\ice', "realm": "lab.test", "nc": "0000000A", "qop": "auth"},
        )
        self.assertEqual(parse_nc(parsed.nc or ""), 10)

    def test_comma_inside_quotes(self) -> None:
        parsed = parse_credentials('Digest uri="sip:a@b;x=1,2", realm="r"')
        assert parsed is not None
        self.assertEqual(parsed.uri, "sip:a@b;x=1,2")
        self.assertEqual(parsed.realm, "r")

    def test_other_schemes_are_not_ours(self) -> None:
        self.assertIsNone(parse_credentials("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="))
        self.assertIsNone(parse_credentials('AKAv1-MD5 realm="x"'))
        self.assertIsNone(parse_credentials('Digestrealm="x"'))  # a scheme named so

    def test_malformed(self) -> None:
        for value in [
            "",
            "   ",
            '"Digest" realm="x"',
            "Digest",
            "Digest ",
            'Digest realm="x",',
            'Digest realm="x" nonce="y"',
            'Digest realm="unterminated',
            'Digest realm="x\\',
            "Digest realm",
            "Digest realm=",
            'Digest =realm"x"',
            'Digest realm="x", realm="y"',
            'Digest realm="x", REALM="x"',
            'Digest realm="x";nonce="y"',
            "Digest realm=<x>",
            'Digest,realm="x"',
        ]:
            with self.subTest(value=value):
                self.assertRaises(MalformedCredentialsError, parse_credentials, value)

    def test_message_never_quotes_the_value(self) -> None:
        long_name = "n" * 500
        try:
            parse_credentials(f"Digest {long_name} x")
        except MalformedCredentialsError as e:
            self.assertLess(len(str(e)), 80)
        else:
            self.fail("no error")

    def test_many_escapes_are_fine(self) -> None:
        text = "\\a" * 20000
        parsed = parse_credentials(f'Digest realm="{text}"')
        assert parsed is not None
        self.assertEqual(parsed.realm, "a" * 20000)
        self.assertRaises(MalformedCredentialsError, parse_credentials, f'Digest realm="{text}')

    @SETTINGS
    @given(st.text())
    def test_any_text_parses_or_is_malformed(self, value: str) -> None:
        with contextlib.suppress(MalformedCredentialsError):
            parse_credentials(value)

    @SETTINGS
    @given(st.text(alphabet='Digest rmaluno=",\\ \t\r\nxé\udcff', max_size=80))
    def test_grammar_soup_parses_or_is_malformed(self, value: str) -> None:
        try:
            parsed = parse_credentials(value)
        except MalformedCredentialsError:
            return
        if parsed is not None:
            for name in parsed.params:
                self.assertEqual(name, name.lower())

    @SETTINGS
    @given(
        st.dictionaries(
            st.sampled_from(["username", "realm", "nonce", "uri", "response", "cnonce", "x"]),
            st.text(),
            max_size=6,
        )
    )
    def test_quoted_values_round_trip(self, params: dict[str, str]) -> None:
        from sbc.sip.headers import quote

        value = "Digest " + ", ".join(f"{k}={quote(v)}" for k, v in params.items())
        if not params:
            self.assertRaises(MalformedCredentialsError, parse_credentials, value)
            return
        parsed = parse_credentials(value)
        assert parsed is not None
        self.assertEqual(dict(parsed.params), params)


class NonceTests(SynchronousTestCase):
    def test_fresh_stale_and_clock_steps(self) -> None:
        nonce = mint_nonce(SECRET, 1000.0)
        self.assertEqual(len(nonce), 43)
        self.assertEqual(nonce_minted_at(nonce), 1000.0)
        self.assertEqual(check_nonce(SECRET, nonce, 1000.0, 300.0), "ok")
        self.assertEqual(check_nonce(SECRET, nonce, 1300.0, 300.0), "ok")
        self.assertEqual(check_nonce(SECRET, nonce, 1300.5, 300.0), "stale")
        self.assertEqual(check_nonce(SECRET, nonce, 999.0, 300.0), "ok")
        self.assertEqual(check_nonce(SECRET, nonce, 600.0, 300.0), "stale")

    def test_each_nonce_differs(self) -> None:
        self.assertNotEqual(mint_nonce(SECRET, 5.0), mint_nonce(SECRET, 5.0))

    def test_invalid(self) -> None:
        nonce = mint_nonce(SECRET, 1000.0)
        raw = bytearray(base64.urlsafe_b64decode(nonce + "="))
        raw[7] ^= 1  # move the mint time by a millisecond
        tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        for value in [
            "",
            "garbage",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",  # the RFC's, not ours
            nonce[:-1],
            nonce + "A",
            tampered,
            "A" * 43,
            "é" * 43,
        ]:
            with self.subTest(value=value):
                self.assertEqual(check_nonce(SECRET, value, 1000.0, 300.0), "invalid")
        self.assertEqual(check_nonce(b"another secret!!", nonce, 1000.0, 300.0), "invalid")

    def test_one_spelling_per_nonce(self) -> None:
        nonce = mint_nonce(SECRET, 1000.0)
        # the last character carries 4 unused bits: a variant decodes to the
        # same bytes and must not pass as a different nonce
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(nonce[-1])
        variant = nonce[:-1] + alphabet[last ^ 1]
        self.assertEqual(
            base64.urlsafe_b64decode(variant + "="), base64.urlsafe_b64decode(nonce + "=")
        )
        self.assertEqual(check_nonce(SECRET, variant, 1000.0, 300.0), "invalid")


class NonceCountTrackerTests(SynchronousTestCase):
    def test_increasing_accepted_replay_and_decrease_refused(self) -> None:
        tracker = NonceCountTracker()
        nonce = mint_nonce(SECRET, 0.0)
        self.assertEqual(tracker.check(nonce, 1), "ok")
        tracker.accept(nonce, 1, 0.0, 300.0)
        self.assertEqual(tracker.check(nonce, 1), "replayed")
        self.assertEqual(tracker.check(nonce, 2), "ok")
        tracker.accept(nonce, 3, 1.0, 300.0)
        self.assertEqual(tracker.check(nonce, 2), "replayed")
        self.assertEqual(tracker.check(nonce, 3), "replayed")
        self.assertEqual(tracker.check(nonce, 4), "ok")
        tracker.accept(nonce, 2, 2.0, 300.0)  # a late lower count never lowers the mark
        self.assertEqual(tracker.check(nonce, 3), "replayed")

    def test_entries_go_after_the_lifetime(self) -> None:
        tracker = NonceCountTracker()
        old = mint_nonce(SECRET, 0.0)
        tracker.accept(old, 1, 0.0, 300.0)
        new = mint_nonce(SECRET, 250.0)
        tracker.accept(new, 1, 250.0, 300.0)
        self.assertEqual(len(tracker), 2)
        tracker.accept(new, 2, 301.0, 300.0)
        self.assertEqual(list(tracker.tracked()), [new])
        tracker.purge(551.0, 300.0)
        self.assertEqual(len(tracker), 0)

    def test_bounded_and_eviction_never_lets_a_replay_through(self) -> None:
        tracker = NonceCountTracker(capacity=3)
        nonces = [mint_nonce(SECRET, float(t)) for t in range(5)]
        for n in nonces:
            tracker.accept(n, 1, 5.0, 300.0)
        self.assertEqual(len(tracker), 3)
        # the two evicted ones (minted at 0 and 1) are "forgotten", not "ok"
        self.assertEqual(tracker.check(nonces[0], 2), "forgotten")
        self.assertEqual(tracker.check(nonces[1], 1), "forgotten")
        # still tracked ones keep their counts
        self.assertEqual(tracker.check(nonces[4], 1), "replayed")
        self.assertEqual(tracker.check(nonces[4], 2), "ok")
        # a nonce minted before the floor but never used is also refused;
        # one minted later is fine
        self.assertEqual(tracker.check(mint_nonce(SECRET, 0.5), 1), "forgotten")
        self.assertEqual(tracker.check(mint_nonce(SECRET, 6.0), 1), "ok")

    def test_garbage_is_never_tracked(self) -> None:
        tracker = NonceCountTracker()
        tracker.accept("garbage", 1, 0.0, 300.0)
        self.assertEqual(len(tracker), 0)
        self.assertEqual(tracker.check("garbage", 1), "forgotten")
        self.assertRaises(ValueError, NonceCountTracker, 0)

    def test_nc_syntax(self) -> None:
        self.assertEqual(parse_nc("00000001"), 1)
        self.assertEqual(parse_nc("FFFFFFFF"), 2**32 - 1)
        for bad in ["1", "000000001", "0000000g", "", " 0000001", "\u0660" * 7 + "\u0661"]:
            with self.subTest(bad=bad):
                self.assertIsNone(parse_nc(bad))
