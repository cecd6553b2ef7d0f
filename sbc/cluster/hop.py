"""The cluster hop on the wire: how one SBC node hands a call to the node holding a phone.

A call that enters node B for a phone whose connection node A holds
(docs/scaling.md) leaves B through B's cluster link to the address A
advertises in the store, as an ordinary B-leg INVITE except for two things:

- its **Request-URI** names the binding, not the phone:
  ``SCHEME:sbcc-ID@A-ADDRESS:PORT``, where ``SCHEME`` is the call's own
  (``sips`` for a secure call, so the secure-target rules hold on both
  nodes) and ``ID`` is the binding's key in the store, base64url-encoded
  (:func:`cluster_user`). A node accepts such a URI only from its cluster
  link, and only for a binding it holds itself: it never hands the call on
  to a third node;
- a **Sbc-Cluster** header says what B knew of the caller, and where B's
  cluster link listens:
  ``Sbc-Cluster: node=B;inbound=trunk;caller=trusted;link=10.0.0.2:5070``
  (:class:`ClusterCaller`). A uses ``caller`` as the caller's class (an
  untrusted caller stays untrusted) and applies the security rules of the
  phone's adjacency again; it sends the call's requests towards the caller
  (the phone's BYE) over the connection the call came on, or to ``link``
  once that connection has closed.

The header is one of the per-hop headers: never copied from one leg to the
other, so a caller cannot bring one of its own to a node and the phone never
sees it. In a final response from A, ``Sbc-Cluster: not-reached`` says that A
did not reach the phone (the binding is gone, or the rules refused it), so B
hunts on to the caller's other contacts as it does for a contact it cannot
reach itself (:data:`NOT_REACHED`).

Each node advertises the address its cluster link listens on with its
heartbeat in the store (:func:`encode_heartbeat`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Mapping
from typing import Any

import attrs

from sbc.cluster.codec import BINDING_PREFIX
from sbc.errors import SipError

__all__ = [
    "CLUSTER_HEADER",
    "CLUSTER_USER_PREFIX",
    "NOT_REACHED",
    "ClusterAddress",
    "ClusterCaller",
    "binding_key_of",
    "cluster_user",
    "decode_heartbeat",
    "encode_heartbeat",
    "not_reached",
]

#: The header of a request that crossed the cluster link (and of A's not-reached answer).
CLUSTER_HEADER = "Sbc-Cluster"
#: Its value in a final response: the node that holds the binding did not reach the phone.
NOT_REACHED = "not-reached"
#: Every cluster Request-URI's user part starts with this.
CLUSTER_USER_PREFIX = "sbcc-"

_CALLER_CLASSES = {"trusted": True, "untrusted": False}


@attrs.frozen
class ClusterAddress:
    """Where a node's cluster link listens (what it advertises in the store)."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@attrs.frozen
class ClusterCaller:
    """What the node a call entered says of its caller (the ``Sbc-Cluster`` header).

    ``link`` is where that node's cluster link listens (None: not said).
    """

    node: str
    inbound: str
    trusted: bool
    link: ClusterAddress | None = None

    def header_value(self) -> str:
        """``node=B;inbound=trunk;caller=trusted;link=10.0.0.2:5070``."""
        caller = "trusted" if self.trusted else "untrusted"
        value = f"node={self.node};inbound={self.inbound};caller={caller}"
        return value if self.link is None else f"{value};link={self.link}"

    @classmethod
    def parse(cls, value: str | None) -> ClusterCaller:
        """The header's value; ``SipError(400)`` when it is missing or not understood."""
        if value is None:
            raise SipError(400, f"Bad Request - no {CLUSTER_HEADER} header from the cluster link")
        params: dict[str, str] = {}
        for part in value.split(";"):
            name, _, text = part.strip().partition("=")
            params[name.strip().lower()] = text.strip()
        trusted = _CALLER_CLASSES.get(params.get("caller", ""))
        node, inbound = params.get("node", ""), params.get("inbound", "")
        link = params.get("link")
        address = None if link is None else _address(link)
        if trusted is None or not node or not inbound or (link is not None and address is None):
            raise SipError(400, f"Bad Request - {CLUSTER_HEADER} header not understood")
        return cls(node, inbound, trusted, address)


def _address(text: str) -> ClusterAddress | None:
    """``10.0.0.2:5070`` or ``[2001:db8::2]:5070`` as a :class:`ClusterAddress`, else None."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        return None
    if not 0 < number < 65536:
        return None
    return ClusterAddress(str(address), number)


def cluster_user(key: str) -> str:
    """The Request-URI user part naming the binding stored under ``key``."""
    name = key[len(BINDING_PREFIX) :] if key.startswith(BINDING_PREFIX) else key
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    return CLUSTER_USER_PREFIX + encoded


def binding_key_of(user: str | None) -> str | None:
    """The store key a cluster Request-URI's user part names, or None when it names none."""
    if user is None or not user.startswith(CLUSTER_USER_PREFIX):
        return None
    text = user[len(CLUSTER_USER_PREFIX) :]
    try:
        name = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError):
        return None
    if not name.startswith(("reg:", "relay:")):
        return None
    return BINDING_PREFIX + name


def not_reached(error: SipError) -> SipError:
    """``error`` as a node answers it on the cluster link: marked :data:`NOT_REACHED`."""
    return SipError(
        error.status,
        error.reason,
        warning=error.warning,
        headers=(*error.headers, (CLUSTER_HEADER, NOT_REACHED)),
    )


def encode_heartbeat(
    calls: Mapping[str, int], cluster: ClusterAddress | None, instance: str = ""
) -> str:
    """A node's heartbeat value: its active calls per adjacency, its cluster address and
    the ``instance`` that wrote it (one per process start: a second process using the
    same node name is seen by the id that is not its own)."""
    value: dict[str, Any] = {"calls": dict(calls)}
    if instance:
        value["instance"] = instance
    if cluster is not None:
        value["cluster"] = [cluster.address, cluster.port]
    return json.dumps(value, separators=(",", ":"))


def heartbeat_instance(text: str) -> str:
    """The ``instance`` that wrote a heartbeat value ("" when unreadable or not given)."""
    try:
        value = json.loads(text)
        return str(value.get("instance", "")) if isinstance(value, dict) else ""
    except ValueError:
        return ""


def decode_heartbeat(text: str) -> tuple[dict[str, int], ClusterAddress | None]:
    """(calls per adjacency, cluster address) of a heartbeat; ``ValueError`` if unreadable."""
    try:
        value = json.loads(text)
        calls = {str(name): int(count) for name, count in value["calls"].items()}
        cluster = value.get("cluster")
        address = None
        if cluster is not None:
            address = ClusterAddress(str(cluster[0]), int(cluster[1]))
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as error:
        raise ValueError(f"unreadable heartbeat: {error}") from None
    return calls, address
