"""sbc.sip.framing: StreamFramer on TCP/TLS byte streams."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sbc.errors import ParseError
from sbc.sip.framing import KEEPALIVE_PING, StreamFramer
from sbc.sip.message import Request, parse_message


def message(body: bytes = b"", call_id: str = "a@h", content_length: str | None = None) -> bytes:
    """A complete OPTIONS request with *body*."""
    length = str(len(body)) if content_length is None else content_length
    return (
        "OPTIONS sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK1\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Content-Length: {length}\r\n"
        "\r\n"
    ).encode() + body


class FramingTests(SynchronousTestCase):
    def test_one_message(self) -> None:
        data = message(b"hello")
        self.assertEqual(StreamFramer().feed(data), [data])

    def test_byte_by_byte(self) -> None:
        data = message(b"body bytes\r\n\r\nwith blank lines") + message(call_id="b@h")
        framer = StreamFramer()
        items = []
        for i in range(len(data)):
            got = framer.feed(data[i : i + 1])
            items += got
            if got:
                self.assertEqual(framer.buffered, 0)
        self.assertEqual(
            items, [message(b"body bytes\r\n\r\nwith blank lines"), message(call_id="b@h")]
        )

    def test_pipelined_in_one_read(self) -> None:
        a, b, c = message(b"1"), message(b"22", "b@h"), message(b"", "c@h")
        framer = StreamFramer()
        self.assertEqual(framer.feed(a + b + c[:10]), [a, b])
        self.assertEqual(framer.buffered, 10)
        self.assertEqual(framer.feed(c[10:]), [c])
        self.assertEqual(framer.buffered, 0)

    def test_keepalive_ping_and_pong(self) -> None:
        a, b = message(), message(call_id="b@h")
        framer = StreamFramer()
        self.assertEqual(framer.feed(b"\r\n\r\n"), [KEEPALIVE_PING])
        self.assertEqual(framer.feed(a + b"\r\n\r\n" + b), [a, KEEPALIVE_PING, b])
        # a single CRLF (a pong) between messages is skipped
        self.assertEqual(framer.feed(b"\r\n" + a + b"\r\n"), [a])
        self.assertEqual(framer.feed(b), [b])

    def test_ping_split_across_reads(self) -> None:
        framer = StreamFramer()
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertEqual(framer.feed(b"\r"), [])
        self.assertEqual(framer.feed(b"\n"), [KEEPALIVE_PING])
        self.assertEqual(framer.feed(b"\r\n\r\n\r\n\r\n"), [KEEPALIVE_PING, KEEPALIVE_PING])

    def test_crlf_inside_a_body_is_not_a_ping(self) -> None:
        data = message(b"\r\n\r\n")
        self.assertEqual(StreamFramer().feed(data), [data])

    def test_bare_lf_messages(self) -> None:
        data = message(b"xy").replace(b"\r\n", b"\n")
        items = StreamFramer().feed(data + data)
        self.assertEqual(items, [data, data])
        self.assertEqual(parse_message(items[0]).body, b"xy")

    def test_compact_and_folded_content_length(self) -> None:
        data = message(b"abc").replace(b"Content-Length: 3", b"l:\r\n 3")
        self.assertEqual(StreamFramer().feed(data + b"rest"), [data])

    def test_missing_content_length_is_a_400(self) -> None:
        data = message(b"").replace(b"Content-Length: 0\r\n", b"")
        error = self.assertRaises(ParseError, StreamFramer().feed, data)
        self.assertEqual(error.status, 400)
        self.assertIn("Content-Length", error.reason)
        assert isinstance(error.request, Request)
        self.assertEqual(error.request.call_id, "a@h")

    def test_bad_content_length_is_a_400(self) -> None:
        for value in ("-1", "x", "1 1", "99999999999"):
            error = self.assertRaises(
                ParseError, StreamFramer().feed, message(content_length=value)
            )
            self.assertEqual(error.status, 400, value)
        both = message(b"ab").replace(b"Max-Forwards", b"Content-Length: 5\r\nMax-Forwards")
        self.assertEqual(self.assertRaises(ParseError, StreamFramer().feed, both).status, 400)
        same = message(b"ab").replace(b"Max-Forwards", b"l: 2\r\nMax-Forwards")
        self.assertEqual(StreamFramer().feed(same), [same])

    def test_framer_is_dead_after_an_error(self) -> None:
        framer = StreamFramer()
        self.assertRaises(ParseError, framer.feed, message(content_length="x"))
        error = self.assertRaises(ParseError, framer.feed, message())
        self.assertEqual(error.status, 400)
        self.assertEqual(framer.buffered, 0)


class LimitTests(SynchronousTestCase):
    def test_defaults_are_64_kib(self) -> None:
        framer = StreamFramer()
        self.assertEqual(
            (framer.max_header_bytes, framer.max_body_bytes, framer.max_message_bytes),
            (65536, 65536, 65536),
        )
        body = b"x" * (65536 - len(message(b"x" * 65000)) + 65000)
        self.assertEqual(len(message(body)), 65536)
        self.assertEqual(StreamFramer().feed(message(body)), [message(body)])
        error = self.assertRaises(ParseError, StreamFramer().feed, message(body + b"x"))
        self.assertEqual(error.status, 513)

    def test_header_limit_without_end_of_headers(self) -> None:
        framer = StreamFramer(max_header_bytes=100)
        framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 70)
        error = self.assertRaises(ParseError, framer.feed, b"y" * 10)
        self.assertEqual(error.status, 513)
        self.assertIsNone(error.request)

    def test_header_limit_with_end_of_headers(self) -> None:
        data = message()
        framer = StreamFramer(max_header_bytes=len(data) - 1)
        self.assertEqual(self.assertRaises(ParseError, framer.feed, data).status, 513)
        self.assertEqual(StreamFramer(max_header_bytes=len(data)).feed(data), [data])

    def test_body_limit(self) -> None:
        framer = StreamFramer(max_body_bytes=10)
        self.assertEqual(framer.feed(message(b"x" * 10)), [message(b"x" * 10)])
        # refused as soon as the headers are in, without waiting for the body
        head = message(b"x" * 11)[:-11]
        error = self.assertRaises(ParseError, framer.feed, head)
        self.assertEqual(error.status, 513)
        self.assertEqual(error.reason, "Message Too Large")
        # the request could be read: a 513 can be sent before closing
        assert isinstance(error.request, Request)
        self.assertEqual(error.request.cseq.method, "OPTIONS")

    def test_message_limit(self) -> None:
        data = message(b"x" * 20)
        framer = StreamFramer(max_message_bytes=len(data) - 1)
        self.assertEqual(self.assertRaises(ParseError, framer.feed, data).status, 513)
        self.assertEqual(StreamFramer(max_message_bytes=len(data)).feed(data), [data])

    def test_big_header_byte_by_byte_is_linear(self) -> None:
        framer = StreamFramer()
        data = b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 65000
        for i in range(0, len(data), 7):
            self.assertEqual(framer.feed(data[i : i + 7]), [])
        self.assertEqual(self.assertRaises(ParseError, framer.feed, b"z" * 600).status, 513)
