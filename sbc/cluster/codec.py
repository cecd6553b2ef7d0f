"""How bindings are written in the shared store: keys and portable JSON records.

A record names the node (and worker) that holds the binding's flow and
describes the flow itself (transport, addresses, connection id), so another
node can show it and, later, send a call to its holder. Expiry is not in the
record: the key's Redis TTL is the binding's expiry, and a reader turns the
TTL it reads back into a time on its own clock (nodes' clocks never meet).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import attrs

from sbc.errors import ParseError
from sbc.registrar.bindings import Binding
from sbc.sip.stack import Flow
from sbc.sip.uri import URI, parse_uri

__all__ = [
    "BINDING_PREFIX",
    "NODE_PREFIX",
    "REGISTRAR_PREFIX",
    "RELAY_PREFIX",
    "RemoteRelayed",
    "binding_key",
    "decode_record",
    "encode_binding",
    "encode_relayed",
    "holder_name",
    "node_key",
    "record_holder",
    "relay_key",
]

#: Every binding key starts with this (a rebuild scans ``sbc:b:*``).
BINDING_PREFIX = "sbc:b:"
#: ``local-domain`` bindings: ``sbc:b:reg:AOR:HASH`` (HASH: of the Contact).
REGISTRAR_PREFIX = BINDING_PREFIX + "reg:"
#: relayed bindings: ``sbc:b:relay:TOKEN``.
RELAY_PREFIX = BINDING_PREFIX + "relay:"
#: each node's heartbeat and active-call counts: ``sbc:node:NAME``.
NODE_PREFIX = "sbc:node:"


def binding_key(binding: Binding) -> str:
    """The key of a registrar binding: its AOR and a digest of its Contact."""
    return _binding_key(binding.aor, binding.contact)


@functools.lru_cache(maxsize=65536)
def _binding_key(aor: str, contact: URI) -> str:
    digest = hashlib.sha1(contact.serialize().encode(), usedforsecurity=False)
    return f"{REGISTRAR_PREFIX}{aor}:{digest.hexdigest()[:16]}"


def relay_key(token: str) -> str:
    """The key of a relayed binding."""
    return RELAY_PREFIX + token


def node_key(node: str) -> str:
    """The heartbeat key of a node."""
    return NODE_PREFIX + node


@attrs.frozen
class RemoteRelayed:
    """A relayed registration held by another node, as this node knows it."""

    token: str
    aor: str
    phone_contact: URI
    flow: Flow
    inbound: str
    outbound: str
    phone_expires_at: float
    node: str
    worker: int = 0

    def remaining(self, now: float) -> int:
        """Whole seconds the phone's binding has left."""
        return max(0, int(self.phone_expires_at - now + 0.5))


def _flow(flow: Flow) -> dict[str, Any]:
    return {
        "transport": flow.transport,
        "local": [flow.local[0], flow.local[1]],
        "remote": [flow.remote[0], flow.remote[1]],
        "connection": flow.connection_id,
        "server_name": flow.server_name,
        "pinned": flow.pinned,
    }


def _decode_flow(data: dict[str, Any]) -> Flow:
    local, remote = data["local"], data["remote"]
    connection = data.get("connection")
    return Flow(
        str(data["transport"]),
        (str(local[0]), int(local[1])),
        (str(remote[0]), int(remote[1])),
        int(connection) if connection is not None else None,
        data.get("server_name"),
        bool(data.get("pinned", False)),
    )


def encode_binding(binding: Binding, node: str, worker: int = 0) -> str:
    """The record of one of this node's registrar bindings."""
    return json.dumps(
        {
            "kind": "reg",
            "node": node,
            "worker": worker,
            "aor": binding.aor,
            "contact": binding.contact.serialize(),
            "adjacency": binding.adjacency,
            "flow": _flow(binding.flow),
            "call_id": binding.call_id,
            "cseq": binding.cseq,
            "q": binding.q,
            "trusted": binding.trusted,
        },
        separators=(",", ":"),
    )


def encode_relayed(
    token: str,
    aor: str,
    phone_contact: URI,
    flow: Flow,
    inbound: str,
    outbound: str,
    node: str,
    worker: int = 0,
) -> str:
    """The record of one of this node's relayed bindings."""
    return json.dumps(
        {
            "kind": "relay",
            "node": node,
            "worker": worker,
            "token": token,
            "aor": aor,
            "contact": phone_contact.serialize(),
            "inbound": inbound,
            "outbound": outbound,
            "flow": _flow(flow),
        },
        separators=(",", ":"),
    )


def decode_record(value: str | bytes, expires_at: float) -> Binding | RemoteRelayed:
    """A record read from the store, expiring at ``expires_at`` on the reader's clock.

    Raises ``ValueError`` for a record this version cannot read.
    """
    try:
        data = json.loads(value)
        node = str(data["node"])
        worker = int(data.get("worker", 0))
        flow = _decode_flow(data["flow"])
        contact = parse_uri(str(data["contact"]))
        if data["kind"] == "reg":
            q = data.get("q")
            return Binding(
                str(data["aor"]),
                contact,
                expires_at,
                str(data["adjacency"]),
                flow,
                str(data["call_id"]),
                int(data["cseq"]),
                float(q) if q is not None else None,
                bool(data.get("trusted", False)),
                node,
                worker,
            )
        if data["kind"] == "relay":
            return RemoteRelayed(
                str(data["token"]),
                str(data["aor"]),
                contact,
                flow,
                str(data["inbound"]),
                str(data["outbound"]),
                expires_at,
                node,
                worker,
            )
    except (KeyError, TypeError, IndexError, ValueError, ParseError) as error:
        raise ValueError(f"unreadable binding record: {error}") from None
    raise ValueError(f"unknown binding record kind {data.get('kind')!r}")


def holder_name(node: str, worker: int = 0) -> str:
    """Who holds a record's flow, as one name: ``NODE``, or ``NODE/W`` for worker W.

    A node that runs one process is its worker 0 and is named by its node
    name alone; the worker processes of ``twistd sbc --workers N`` (1..N)
    each hold their own bindings (docs/scaling.md). The store's messages,
    heartbeats and clean-up compare holders, never node names alone.
    """
    return node if not worker else f"{node}/{worker}"


def record_holder(value: str | bytes) -> str | None:
    """The holder a record names (:func:`holder_name`), or None when it cannot be read."""
    try:
        data = json.loads(value)
        return holder_name(str(data["node"]), int(data.get("worker") or 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
