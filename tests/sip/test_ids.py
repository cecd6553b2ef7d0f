"""Random identifiers from the batched kernel-randomness pool (sbc.sip.ids)."""

from __future__ import annotations

import os
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from sbc.sip import ids
from sbc.sip.ids import RandomPool


class RandomPoolTests(SynchronousTestCase):
    def test_one_kernel_read_serves_many_identifiers(self) -> None:
        pool = RandomPool(64)
        reads: list[int] = []
        real = os.urandom

        def counting(n: int) -> bytes:
            reads.append(n)
            return real(n)

        with mock.patch.object(os, "urandom", counting):
            values = [pool.take(6) for _ in range(10)]  # 60 bytes: one read
            self.assertEqual(reads, [64])
            pool.take(6)  # 66 > 64: a second read, the 4 left over are not reused
            self.assertEqual(reads, [64, 64])
        self.assertEqual(pool.reads, 2)
        self.assertTrue(all(len(v) == 6 for v in values))

    def test_every_byte_is_handed_out_once(self) -> None:
        pool = RandomPool(32)
        stream = bytes(range(256))
        chunks = iter([stream[:32], stream[32:64]])
        with mock.patch.object(os, "urandom", lambda n: next(chunks)):
            taken = b"".join(pool.take(8) for _ in range(4))
            after = pool.take(8)
        self.assertEqual(taken, stream[:32])
        self.assertEqual(after, stream[32:40])

    def test_larger_than_the_pool_reads_directly(self) -> None:
        pool = RandomPool(16)
        self.assertEqual(len(pool.take(40)), 40)
        self.assertEqual(pool.reads, 0)

    def test_forget_drops_the_unused_bytes(self) -> None:
        pool = RandomPool(32)
        first = pool.take(4)
        pool.forget()
        with mock.patch.object(os, "urandom", lambda n: b"\x00" * n):
            self.assertEqual(pool.take(4), b"\x00" * 4)
        self.assertEqual(len(first), 4)

    def test_hex_and_below(self) -> None:
        pool = RandomPool()
        tag = pool.hex(6)
        self.assertEqual(len(tag), 12)
        int(tag, 16)
        values = {pool.below(10) for _ in range(500)}
        self.assertEqual(values, set(range(10)))
        self.assertEqual(pool.below(1), 0)
        self.assertRaises(ValueError, pool.below, 0)

    def test_below_rejects_instead_of_folding(self) -> None:
        # limit 5 needs 3 bits: 5, 6 and 7 must be drawn again, not wrapped to 0..2
        pool = RandomPool(8)
        with mock.patch.object(os, "urandom", lambda n: bytes([7, 6, 5, 3, 0, 0, 0, 0])):
            self.assertEqual(pool.below(5), 3)

    def test_module_helpers(self) -> None:
        a, b = ids.random_hex(12), ids.random_hex(12)
        self.assertEqual(len(a), 24)
        self.assertNotEqual(a, b)
        self.assertTrue(1 <= ids.random_below(2**16) + 1 <= 2**16)
