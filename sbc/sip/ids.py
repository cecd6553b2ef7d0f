"""Random identifiers (tags, Call-IDs, initial CSeq numbers) from batched kernel randomness.

RFC 3261 §19.3 asks for tags and Call-IDs that cannot be guessed
(cryptographically random). Asking the kernel for each one (``secrets``,
``os.urandom``) costs a ``getrandom`` system call per identifier, about
seven per basic call through the SBC. :class:`RandomPool` reads
:data:`POOL_BYTES` bytes from ``os.urandom`` at once and hands them out,
each byte once, until they are used up; then it reads again.

Nothing is derived or stretched: every identifier is made of bytes the
kernel's CSPRNG produced, never used for anything else, so it is exactly
as unguessable as one read on its own. What changes is only when the bytes
were read (up to one pool earlier). Two safeguards keep them private to one
identifier:

- a forked child (twistd daemonizing) starts with an empty pool, so parent
  and child never hand out the same bytes (``os.register_at_fork``);
- the pool lives in this process only and is never logged or exposed.
"""

from __future__ import annotations

import os
import threading
from typing import Final

__all__ = ["POOL_BYTES", "RandomPool", "random_below", "random_hex"]

#: Bytes read from the kernel at once: about 140 basic calls' worth of identifiers.
POOL_BYTES: Final = 4096


class RandomPool:
    """Kernel random bytes read ``size`` at a time and handed out once each."""

    def __init__(self, size: int = POOL_BYTES) -> None:
        if size <= 0:
            raise ValueError("the pool size must be positive")
        self.size = size
        self._buffer = b""
        self._offset = 0
        self._lock = threading.Lock()
        #: How many times the pool was (re)filled from the kernel.
        self.reads = 0

    def take(self, count: int) -> bytes:
        """``count`` fresh random bytes (a request larger than the pool is read directly)."""
        if count > self.size:
            return os.urandom(count)
        with self._lock:
            offset = self._offset
            end = offset + count
            if end > len(self._buffer):
                self._buffer = os.urandom(self.size)
                self.reads += 1
                offset, end = 0, count
            self._offset = end
            return self._buffer[offset:end]

    def hex(self, count: int) -> str:
        """``count`` random bytes as ``2 * count`` lower-case hex digits."""
        return self.take(count).hex()

    def below(self, limit: int) -> int:
        """A uniformly random integer in ``[0, limit)`` (rejection sampling, no bias)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        bits = (limit - 1).bit_length()
        if bits == 0:
            return 0
        nbytes = (bits + 7) // 8
        mask = (1 << bits) - 1
        while True:
            value = int.from_bytes(self.take(nbytes), "big") & mask
            if value < limit:
                return value

    def forget(self) -> None:
        """Drop the unused bytes (after a fork: the other process has the same ones)."""
        self._buffer = b""
        self._offset = 0
        # a lock held by another thread at fork time stays locked in the child
        self._lock = threading.Lock()


_POOL: Final = RandomPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)


def random_hex(count: int) -> str:
    """``count`` bytes of kernel randomness as hex (``2 * count`` digits), from the pool."""
    return _POOL.hex(count)


def random_below(limit: int) -> int:
    """A uniformly random integer in ``[0, limit)`` from the pool."""
    return _POOL.below(limit)
