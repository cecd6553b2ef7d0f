"""The shared store of the worker processes of one machine, in the supervisor's memory.

``twistd sbc --workers N`` without a ``store`` line: the workers share their
registrations and call counts through the supervisor (docs/scaling.md). Each
worker runs the same :class:`~sbc.cluster.store.SharedStore` as with Redis;
its client sends the writes to the supervisor, which applies them to a
:class:`MemoryStore` and hands the resulting message to every worker, in
the order it applied them, as Redis's pub/sub channel does. The semantics
are those of the Lua scripts of :mod:`sbc.transport.redis`: keys with an
expiry, ``put`` / ``del`` / ``drop`` (remove only while the record names the
origin as its holder), one message per batch saying what each key holds
afterwards, heartbeats that expire.

Pure: ``clock`` gives the time; nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sbc.cluster.codec import BINDING_PREFIX, node_key, record_holder
from sbc.cluster.store import Delete, Drop, Op, Put

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keys with an expiry and heartbeats, as the Redis scripts keep them (module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        #: key -> (value, absolute expiry)
        self.data: dict[str, tuple[str, float]] = {}
        #: holder -> (counts text, absolute expiry)
        self.heartbeats: dict[str, tuple[str, float]] = {}

    def _live(self, key: str, now: float) -> str | None:
        held = self.data.get(key)
        if held is None:
            return None
        if held[1] <= now:
            del self.data[key]
            return None
        return held[0]

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> str:
        """Apply ``ops`` from ``origin``; the message every subscriber receives (JSON)."""
        now = self.clock()
        out: list[list[Any]] = []
        for op in ops:
            if isinstance(op, Put):
                self.data[op.key] = (op.value, now + op.ttl_ms / 1000.0)
                out.append(["put", op.key, op.value, op.ttl_ms])
            elif isinstance(op, Delete):
                self.data.pop(op.key, None)
                if op.key == node_key(origin):
                    self.heartbeats.pop(origin, None)
                out.append(["del", op.key])
            elif isinstance(op, Drop):
                value = self._live(op.key, now)
                if value is not None and record_holder(value) != origin:
                    left = int((self.data[op.key][1] - now) * 1000)
                    out.append(["put", op.key, value, left])
                else:
                    self.data.pop(op.key, None)
                    out.append(["del", op.key])
        return json.dumps({"by": origin, "seq": seq, "ops": out}, separators=(",", ":"))

    def load(self) -> list[tuple[str, str, int]]:
        """Every live binding record: (key, value, milliseconds left)."""
        now = self.clock()
        rows = []
        for key in list(self.data):
            value = self._live(key, now)
            if value is not None and key.startswith(BINDING_PREFIX):
                rows.append((key, value, int((self.data[key][1] - now) * 1000)))
        return rows

    def heartbeat(self, holder: str, counts: str, ttl_ms: int) -> dict[str, str]:
        """Keep ``holder``'s call counts for ``ttl_ms``; every live holder's counts, and
        under ``""`` what ``holder``'s heartbeat was before ("" if none)."""
        now = self.clock()
        before = self.heartbeats.get(holder)
        self.heartbeats[holder] = (counts, now + ttl_ms / 1000.0)
        for name in [n for n, (_, at) in self.heartbeats.items() if at <= now]:
            del self.heartbeats[name]
        live = {name: text for name, (text, _) in self.heartbeats.items()}
        live[""] = before[0] if before is not None and before[1] > now else ""
        return live

    def forget(self, holder: str) -> str | None:
        """Remove everything ``holder`` holds (a worker that died); the message, or None.

        Its connections died with it, and a worker started again in its
        place would remove the records that name it anyway.
        """
        self.heartbeats.pop(holder, None)
        now = self.clock()
        keys = sorted(
            key
            for key in list(self.data)
            if (value := self._live(key, now)) is not None and record_holder(value) == holder
        )
        if not keys:
            return None
        for key in keys:
            del self.data[key]
        ops = [["del", key] for key in keys]
        return json.dumps({"by": holder, "seq": 0, "ops": ops}, separators=(",", ":"))
