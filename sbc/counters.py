"""Per-adjacency event counters (pure: no I/O, no clock).

The transport counts what happens on each adjacency under short names:
``connections-accepted``, ``connections-closed:tls-on-plain``, ``handshakes``,
``handshake-failures``, ``verification-failures``, ``drops:no-adjacency``,
``drops:unparseable``... A name with a ``:`` is a family (``drops``) and a
reason. Events that belong to no adjacency (a message from a source no
attached adjacency accepts) are counted under :data:`UNCLASSIFIED`.

``show services sbc NAME sbe statistics`` prints :meth:`Counters.snapshot`.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["UNCLASSIFIED", "Counters"]

UNCLASSIFIED = "(unclassified)"
"""The pseudo-adjacency of events no attached adjacency owns (not a valid adjacency name)."""


class Counters:
    """Monotonic counters keyed by adjacency name and counter name."""

    def __init__(self) -> None:
        self._values: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )

    def increment(self, adjacency: str | None, name: str, by: int = 1) -> None:
        """Add ``by`` (a positive number) to counter ``name`` of ``adjacency``.

        ``None`` stands for :data:`UNCLASSIFIED`.
        """
        if by < 0:
            raise ValueError(f"counters only go up: cannot add {by} to {name!r}")
        self._values[UNCLASSIFIED if adjacency is None else adjacency][name] += by

    def get(self, adjacency: str | None, name: str) -> int:
        """The current value (0 for a counter never incremented)."""
        per = self._values.get(UNCLASSIFIED if adjacency is None else adjacency)
        return 0 if per is None else per.get(name, 0)

    def total(self, name: str) -> int:
        """The sum of counter ``name`` over every adjacency (and :data:`UNCLASSIFIED`)."""
        return sum(per.get(name, 0) for per in self._values.values())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A copy: ``{adjacency: {name: value}}``, both levels sorted by name."""
        return {
            adjacency: dict(sorted(per.items()))
            for adjacency, per in sorted(self._values.items())
            if per
        }

    def forget(self, adjacency: str) -> None:
        """Drop every counter of ``adjacency`` (e.g. when it is removed from the configuration)."""
        self._values.pop(adjacency, None)
