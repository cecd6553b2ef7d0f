"""Registrations and active-call counts shared by SBC nodes through Redis (docs/scaling.md).

The SIP core is synchronous, so the store is **write-through with a local
view**: every lookup is answered from this process's memory at once; every
change this node makes is applied to that memory first and written to Redis
afterwards, without waiting; what other nodes change arrives as messages
on a Redis pub/sub channel and updates the memory.

- :class:`SharedStore` keeps the connection state (down, syncing, up), the
  other nodes' relayed bindings and call counts, and turns changes into
  write batches (:class:`Put`, :class:`Delete`, :class:`Drop`) for a
  :class:`StoreClient` (:mod:`sbc.transport.redis` is the real one).
- :class:`SharedLocationService` is the registrar's
  :class:`~sbc.interfaces.ILocationService`: this node's bindings (in the
  in-memory :class:`~sbc.registrar.LocationService` it extends, with its
  expiry heap and connection index) and the other nodes' bindings (marked
  with their ``node``), looked up together.

**Ordering.** The client applies each batch and publishes it in one Redis
script, so the order of the messages on the channel is the order of the
writes. Each message states what a key holds after it (a value and a TTL,
or nothing). A node ignores other nodes' messages for a key while one of
its own writes to that key is still on its way (the write comes later in
Redis's order, so it wins), and takes its own message, when it comes back,
as the key's state. Every node thus ends with Redis's state for every key.

**(Re)connection.** The client subscribes first, then reads every binding
(:meth:`StoreClient.load`); messages arriving meanwhile wait and are applied
after the snapshot (each message is a whole state, so the last one wins).
Then the other nodes' bindings replace the old view; records naming this
node that it no longer holds are removed (:class:`Drop`: only if they still
name it); and everything this node holds is written again. A binding this
node held that another node registered meanwhile is now that node's.

Pure: no reactor, no socket. ``clock`` gives the current time; the client
calls :meth:`SharedStore.connected`, :meth:`SharedStore.lost` and
:meth:`SharedStore.message`.
"""

from __future__ import annotations

import heapq
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, Union

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.b2bua.calllog import RefusalLimiter
from sbc.cluster.codec import (
    REGISTRAR_PREFIX,
    RELAY_PREFIX,
    RemoteRelayed,
    binding_key,
    decode_record,
    encode_binding,
    encode_relayed,
    holder_name,
    node_key,
    record_holder,
    relay_key,
)
from sbc.cluster.hop import (
    ClusterAddress,
    decode_heartbeat,
    encode_heartbeat,
    heartbeat_instance,
)
from sbc.errors import SipError
from sbc.interfaces import ILocationService
from sbc.registrar.bindings import Binding, LocationService
from sbc.registrar.registrar import log_binding
from sbc.sip.stack import Flow
from sbc.sip.uri import URI

__all__ = [
    "HEARTBEAT_INTERVAL",
    "Delete",
    "Drop",
    "Put",
    "RelayedRecord",
    "SharedLocationService",
    "SharedStore",
    "StoreClient",
    "StoreState",
]

#: Seconds between two heartbeats (this node's call counts written, the others' read).
HEARTBEAT_INTERVAL = 2.0
#: A node whose heartbeat is this old is gone: its call counts no longer count.
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL
#: Retry-After of a REGISTER refused while the store is unavailable.
RETRY_AFTER = 30
#: Operations per write batch (one Redis script call each).
BATCH = 500

_log = Logger(namespace="sbc.cluster")


@attrs.frozen
class Put:
    """Set ``key`` to ``value`` for ``ttl_ms`` milliseconds."""

    key: str
    value: str
    ttl_ms: int


@attrs.frozen
class Delete:
    """Remove ``key``."""

    key: str


@attrs.frozen
class Drop:
    """Remove ``key`` only while its record still names this node."""

    key: str


Op = Union[Put, Delete, Drop]


class StoreClient(Protocol):
    """What :class:`SharedStore` asks of the connection to Redis."""

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> Deferred[object]:
        """Apply ``ops`` atomically and publish what each key then holds."""
        ...

    def load(self) -> Deferred[list[tuple[str, str, int]]]:
        """Every binding record: (key, value, milliseconds left)."""
        ...

    def heartbeat(self, node: str, counts: str, ttl_ms: int) -> Deferred[dict[str, str]]:
        """Write this node's counts (``ttl_ms``); fire with every live node's counts, and
        under the name ``""`` with what this node's heartbeat held before ("" if none)."""
        ...


class StoreState:
    """The connection states (plain strings, for logs and ``show``)."""

    DOWN = "down"
    #: connected; checking that no other live process uses this node name
    CLAIMING = "claiming"
    #: connected, but another live process writes this node name's heartbeat
    CONFLICT = "conflict"
    SYNCING = "syncing"
    UP = "up"


class StoreUnavailableError(SipError):
    """A REGISTER that would change the shared store while it cannot be written: 503."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "Service Unavailable - registration store unavailable",
            headers=(("Retry-After", str(RETRY_AFTER)),),
        )


class RelayedRecord(Protocol):
    """What the store reads of one of this node's relayed bindings.

    :class:`sbc.registrar.relay.RelayedBinding` is one.
    """

    token: str
    aor: str
    phone_contact: URI
    flow: Flow
    inbound: str
    outbound: str
    phone_expires_at: float


def _q(binding: Binding) -> float:
    return -(binding.q if binding.q is not None else 1.0)


@implementer(ILocationService)
class SharedLocationService(LocationService):
    """The registrar's bindings: this node's (in memory, written through) and the others'.

    :meth:`update` raises :class:`StoreUnavailableError` (503) instead of adding
    a binding, or moving one to another flow, while the store cannot be
    written; refreshes over the same flow and removals are applied here and
    written when the store is back. Expiry writes nothing (the keys expire
    in Redis by themselves); a closed connection deletes its bindings' keys.
    """

    def __init__(self, store: SharedStore) -> None:
        super().__init__()
        self.store = store
        #: key -> AOR of this node's bindings
        self.own_keys: dict[str, str] = {}
        #: AOR -> key -> another node's binding
        self.remote: dict[str, dict[str, Binding]] = {}
        self._remote_aors: dict[str, str] = {}
        self._remote_expiries: list[tuple[float, str]] = []

    # -- ILocationService ------------------------------------------------------------

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """This node's live bindings of ``aor`` and the other nodes', highest q first."""
        own = super().lookup(aor, now)
        remote = self.remote.get(aor)
        if not remote:
            return own
        live = own + [b for b in remote.values() if b.expires_at > now]
        return sorted(live, key=_q)

    def update(self, aor: str, bindings: list[Binding], now: float) -> None:
        """Replace the bindings of ``aor`` here and in the store (see the class docstring)."""
        own_old = {binding_key(b): b for b in self._bindings.get(aor, ())}
        remote_old = self.remote.get(aor, {})
        own_new: dict[str, Binding] = {}
        remote_kept: set[str] = set()
        for binding in bindings:
            if binding.expires_at <= now:
                continue
            key = binding_key(binding)
            if binding.node is None:
                own_new[key] = binding
            else:
                remote_kept.add(key)
        if not self.store.available:
            for key, binding in own_new.items():
                old = own_old.get(key)
                if old is None or old.flow != binding.flow:
                    self.store.refuse(aor, binding.adjacency, now)
        store = self.store
        ops: list[Op] = [
            Put(key, encode_binding(binding, store.node, store.worker), _ttl_ms(binding, now))
            for key, binding in own_new.items()
            if own_old.get(key) != binding
        ]
        gone = (own_old.keys() | remote_old.keys()) - own_new.keys() - remote_kept
        ops.extend(Delete(key) for key in sorted(gone))
        for key in remote_old.keys() - remote_kept:
            self._forget_remote(key)
        self._replace(aor, list(own_new.values()), now)
        store.write(ops)

    def _replace(self, aor: str, bindings: list[Binding], now: float) -> None:
        for binding in self._bindings.get(aor, ()):
            self.own_keys.pop(binding_key(binding), None)
        super()._replace(aor, bindings, now)
        for binding in self._bindings.get(aor, ()):
            self.own_keys[binding_key(binding)] = aor

    def remove_connection(self, connection_id: int, now: float) -> list[Binding]:
        """Remove this node's bindings over that connection, here and in the store."""
        gone = super().remove_connection(connection_id, now)
        self.store.write([Delete(binding_key(b)) for b in gone])
        return gone

    def expire(self, now: float) -> list[Binding]:
        """Remove and return this node's expired bindings (the store expires its own keys)."""
        return super().expire(now)

    def __len__(self) -> int:
        """This node's bindings and the other nodes'."""
        return super().__len__() + len(self._remote_aors)

    def __iter__(self) -> Iterator[Binding]:
        yield from super().__iter__()
        for bindings in list(self.remote.values()):
            yield from bindings.values()

    # -- what the store does to the view ----------------------------------------------

    def own_binding(self, key: str, now: float) -> Binding | None:
        """This node's live binding stored under ``key`` (a call from the cluster link)."""
        aor = self.own_keys.get(key)
        if aor is None:
            return None
        for binding in self._bindings.get(aor, ()):
            if binding.expires_at > now and binding_key(binding) == key:
                return binding
        return None

    def own(self) -> Iterator[tuple[str, Binding]]:
        """(key, binding) for every binding this node holds."""
        for binding in super().__iter__():
            yield binding_key(binding), binding

    def put_remote(self, key: str, binding: Binding, now: float) -> None:
        """Another node's binding for ``key`` (taking it over from this node if needed)."""
        if key in self.own_keys:
            self.drop_own(key, now, f"registered again through node {binding.node}")
        self._forget_remote(key)
        self.remote.setdefault(binding.aor, {})[key] = binding
        self._remote_aors[key] = binding.aor
        heapq.heappush(self._remote_expiries, (binding.expires_at, key))

    def delete(self, key: str, now: float, by: str) -> None:
        """``key`` is gone from the store (removed by node ``by``)."""
        if key in self.own_keys:
            self.drop_own(key, now, f"removed through node {by}")
        self._forget_remote(key)

    def drop_own(self, key: str, now: float, reason: str) -> None:
        """Remove (and log) this node's binding for ``key``; nothing is written."""
        aor = self.own_keys.get(key)
        if aor is None:
            return
        bindings = self._bindings.get(aor, [])
        gone = [b for b in bindings if binding_key(b) == key]
        self._replace(aor, [b for b in bindings if b not in gone], now)
        for binding in gone:
            log_binding("registration.removed", binding, now, reason)

    def replace_remote(self, bindings: Mapping[str, Binding], now: float) -> None:
        """The other nodes' bindings after a rebuild: exactly ``bindings``."""
        self.remote = {}
        self._remote_aors = {}
        self._remote_expiries = []
        for key, binding in bindings.items():
            self.put_remote(key, binding, now)

    def sweep(self, now: float) -> int:
        """Forget the other nodes' bindings that have expired; how many went."""
        gone = 0
        heap = self._remote_expiries
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            aor = self._remote_aors.get(key)
            if aor is None:
                continue
            binding = self.remote.get(aor, {}).get(key)
            if binding is not None and binding.expires_at == at:
                self._forget_remote(key)
                gone += 1
        return gone

    def _forget_remote(self, key: str) -> None:
        aor = self._remote_aors.pop(key, None)
        if aor is None:
            return
        bindings = self.remote.get(aor)
        if bindings is not None:
            bindings.pop(key, None)
            if not bindings:
                del self.remote[aor]


def _ttl_ms(binding: Binding, now: float) -> int:
    return max(1, int((binding.expires_at - now) * 1000))


class SharedStore:
    """This node's side of the shared store; see the module docstring.

    ``node`` (and ``worker``) name what this process records as the holder
    of its bindings' flows. ``clock`` returns the current time (the same
    clock as every ``now``). ``count(adjacency, name)`` counts refusals
    (``store-unavailable``). Set :attr:`relayed` to list this node's relayed
    bindings, :attr:`call_counts` to count its active calls per adjacency and
    :attr:`advertise` to give the address its cluster link listens on (the
    heartbeat carries both; :attr:`peers` are the other nodes' addresses).
    """

    def __init__(
        self,
        node: str,
        clock: Callable[[], float],
        *,
        worker: int = 0,
        count: Callable[[str | None, str], object] | None = None,
    ) -> None:
        self.node = node
        self.worker = worker
        #: What this process is called in the store's messages and heartbeats
        #: (:func:`~sbc.cluster.codec.holder_name`: the node, or ``NODE/W``).
        self.holder = holder_name(node, worker)
        self.clock = clock
        self.count = count or (lambda adjacency, name: None)
        self.client: StoreClient | None = None
        self.state = StoreState.DOWN
        self.location = SharedLocationService(self)
        #: token -> another node's relayed binding
        self.remote_relayed: dict[str, RemoteRelayed] = {}
        #: adjacency -> active calls on the other live nodes (from their heartbeats)
        self.remote_calls: dict[str, int] = {}
        #: the live nodes seen in the last heartbeat (this one included)
        self.nodes: tuple[str, ...] = ()
        self.relayed: Callable[[], Iterable[RelayedRecord]] = tuple
        self.call_counts: Callable[[], Mapping[str, int]] = dict
        self.advertise: Callable[[], ClusterAddress | None] = lambda: None
        #: node -> where the other live nodes' cluster links listen (from their heartbeats)
        self.peers: dict[str, ClusterAddress] = {}
        self._pending: dict[str, int] = {}
        self._seq = 0
        self._waiting: list[dict[str, Any]] | None = None
        self._refusals = RefusalLimiter()
        #: when the store went away (None while it is up, or before it was ever up)
        self.lost_since: float | None = None
        #: this process start's id in its heartbeats (another id under the same
        #: name is another process using this node's name)
        self.instance = secrets.token_hex(8)
        self._conflicts = 0

    @property
    def available(self) -> bool:
        """True when connected: new bindings are accepted.

        While the view is being rebuilt (syncing) changes are kept here only;
        the end of the rebuild writes every binding this node holds. Not while
        another live process uses this node's name (conflict).
        """
        return self.state not in (StoreState.DOWN, StoreState.CONFLICT)

    # -- connection events (from the client) -------------------------------------------

    def connected(self) -> Deferred[None]:
        """Both connections are up and subscribed: claim the node name, rebuild the view,
        then write ours again.

        The claim is a heartbeat that also tells what the name's heartbeat held
        before: written by another process start (another ``instance``), the name
        is in use by a live node (a second node with the same ``node`` line), or
        was this node's own before a restart. Either way nothing is read or
        removed yet: the node retries at each heartbeat (state conflict,
        REGISTERs 503) until its own heartbeat is the one it finds, so a node
        started with a name already in use never removes the other's records.
        """
        client = self.client
        assert client is not None, "set SharedStore.client first"
        self.state = StoreState.CLAIMING
        self._waiting = []
        self._pending = {}
        return self._claim(client)

    def _claim(self, client: StoreClient) -> Deferred[None]:
        counts = encode_heartbeat(self.call_counts(), self.advertise(), self.instance)
        heard = client.heartbeat(self.holder, counts, int(HEARTBEAT_TTL * 1000))
        return heard.addCallbacks(self._claimed, self._load_failed)

    def _claimed(self, nodes: dict[str, str]) -> Deferred[None] | None:
        if self.state not in (StoreState.CLAIMING, StoreState.CONFLICT):
            return None
        if self._foreign(nodes):
            self.state = StoreState.CONFLICT
            self._waiting = None  # nothing is kept until the name is ours
            return None
        client = self.client
        assert client is not None
        self._conflicts = 0
        self.state = StoreState.SYNCING
        self._waiting = []
        self._pending = {}
        return client.load().addCallbacks(self._loaded, self._load_failed)

    def lost(self, reason: str) -> None:
        """A connection to the store was lost (the client reconnects)."""
        was = self.state
        self.state = StoreState.DOWN
        self._waiting = None
        self._pending = {}
        if was == StoreState.DOWN:
            return
        self.lost_since = self.clock()
        _log.warn(
            "store lost: {reason}; registrations that need it are refused (503) until it is back",
            event="store.lost",
            node=self.holder,
            reason=reason,
        )

    def message(self, data: str | bytes) -> None:
        """A message from the channel: what some keys hold now."""
        try:
            message = json.loads(data)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            _log.warn("store: unreadable message ignored: {data!r}", data=data[:200])
            return
        if self._waiting is not None:
            self._waiting.append(message)
        elif self.state == StoreState.UP:
            self._apply_message(message)

    def _loaded(self, rows: list[tuple[str, str, int]]) -> None:
        if self.state != StoreState.SYNCING:
            return
        now = self.clock()
        location = self.location
        own_relayed = {relay_key(r.token) for r in self.relayed()}
        remote: dict[str, Binding] = {}
        relayed: dict[str, RemoteRelayed] = {}
        stale: list[Op] = []
        for key, value, ttl_ms in rows:
            if ttl_ms <= 0:
                continue
            try:
                record = decode_record(value, now + ttl_ms / 1000.0)
            except ValueError as error:
                _log.warn("store: {key} ignored: {error}", key=key, error=str(error))
                continue
            if holder_name(record.node or "", record.worker) == self.holder:
                if key not in location.own_keys and key not in own_relayed:
                    stale.append(Drop(key))
            elif isinstance(record, Binding):
                remote[key] = record
            else:
                relayed[record.token] = record
        location.replace_remote(remote, now)
        self.remote_relayed = relayed
        waiting, self._waiting = self._waiting or [], None
        self.state = StoreState.UP
        for message in waiting:
            self._apply_message(message)
        ops: list[Op] = list(stale)
        ops += [
            Put(key, encode_binding(b, self.node, self.worker), _ttl_ms(b, now))
            for key, b in location.own()
            if b.expires_at > now
        ]
        ops += [self._relayed_put(r, now) for r in self.relayed() if r.phone_expires_at > now]
        for start in range(0, len(ops), BATCH):
            self.write(ops[start : start + BATCH])
        down_for = None if self.lost_since is None else now - self.lost_since
        self.lost_since = None
        _log.info(
            "store connected: {remote} binding(s) of other nodes, {own} of this node written "
            "again, {stale} stale record(s) of this node removed",
            event="store.connected",
            node=self.holder,
            remote=len(remote) + len(relayed),
            own=len(ops) - len(stale),
            stale=len(stale),
            down_for=down_for,
        )

    def _load_failed(self, failure: Failure) -> None:
        if self.state in (StoreState.CLAIMING, StoreState.CONFLICT, StoreState.SYNCING):
            self.lost(f"cannot read the bindings: {failure.getErrorMessage()}")

    # -- messages -----------------------------------------------------------------------

    def _apply_message(self, message: dict[str, Any]) -> None:
        origin = str(message.get("by", ""))
        ops = message.get("ops") or []
        mine = origin == self.holder
        now = self.clock()
        for op in ops:
            if not isinstance(op, list) or len(op) < 2:
                continue
            key = str(op[1])
            if mine:
                left = self._pending.get(key, 0) - 1
                if left > 0:
                    self._pending[key] = left
                    continue
                self._pending.pop(key, None)
            elif self._pending.get(key):
                continue  # one of our writes comes after it
            self._apply_state(key, op, origin, now)

    def _apply_state(self, key: str, op: list[Any], origin: str, now: float) -> None:
        if not key.startswith((REGISTRAR_PREFIX, RELAY_PREFIX)):
            return
        if op[0] == "put" and len(op) >= 4:
            if origin == self.holder and record_holder(op[2]) == self.holder:
                return  # our own write coming back: the view has it already
            try:
                record = decode_record(op[2], now + int(op[3]) / 1000.0)
            except (ValueError, TypeError) as error:
                _log.warn("store: {key} ignored: {error}", key=key, error=str(error))
                return
            if holder_name(record.node or "", record.worker) == self.holder:
                return  # ours: the view has it already
            if isinstance(record, Binding):
                self.location.put_remote(key, record, now)
            else:
                self.remote_relayed[record.token] = record
        elif op[0] == "del":
            if key.startswith(REGISTRAR_PREFIX):
                self.location.delete(key, now, origin)
            else:
                self.remote_relayed.pop(key[len(RELAY_PREFIX) :], None)

    # -- writes -------------------------------------------------------------------------

    def write(self, ops: Sequence[Op]) -> None:
        """Send ``ops`` to the store (dropped while it is not up: a rebuild writes all)."""
        client = self.client
        if not ops or self.state != StoreState.UP or client is None:
            return
        self._seq += 1
        for op in ops:
            self._pending[op.key] = self._pending.get(op.key, 0) + 1
        written = client.apply(ops, self.holder, self._seq)
        written.addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> None:
        if self.state != StoreState.UP:
            return
        _log.warn(
            "store: a write failed ({error}); reading the store again",
            event="store.write-failed",
            error=failure.getErrorMessage(),
        )
        self.connected()

    def refuse(self, aor: str, adjacency: str, now: float) -> None:
        """Count, log (capped) and raise the 503 of a REGISTER the store cannot take."""
        self.count(adjacency, "store-unavailable")
        suppressed = self._refusals.admit((adjacency, "store-unavailable"), now)
        if suppressed is not None:
            _log.info(
                "REGISTER for {aor} from {adjacency} refused: 503, the registration store is "
                "unavailable",
                event="registration.refused",
                aor=aor,
                adjacency=adjacency,
                status=503,
                reason="store unavailable",
                suppressed=suppressed,
            )
        raise StoreUnavailableError()

    # -- relayed bindings (RegistrationRelay's hooks) -----------------------------------

    def _relayed_put(self, record: RelayedRecord, now: float) -> Put:
        value = encode_relayed(
            record.token,
            record.aor,
            record.phone_contact,
            record.flow,
            record.inbound,
            record.outbound,
            self.node,
            self.worker,
        )
        ttl = max(1, int((record.phone_expires_at - now) * 1000))
        return Put(relay_key(record.token), value, ttl)

    def relayed_bound(self, record: RelayedRecord, now: float) -> None:
        """A relayed binding of this node was added or refreshed."""
        self.write([self._relayed_put(record, now)])

    def relayed_ended(self, token: str) -> None:
        """A relayed binding of this node ended."""
        self.write([Delete(relay_key(token))])

    def relayed_held_elsewhere(self, token: str, now: float) -> RemoteRelayed | None:
        """Another node's live relayed binding for ``token``, if the view has one."""
        record = self.remote_relayed.get(token)
        if record is None or record.phone_expires_at <= now:
            return None
        return record

    # -- call counts and housekeeping ---------------------------------------------------

    def active_calls(self, local: Callable[[str], int]) -> Callable[[str], int]:
        """``local`` plus the other live nodes' active calls on the same adjacency."""

        def active(adjacency: str) -> int:
            return local(adjacency) + self.remote_calls.get(adjacency, 0)

        return active

    def tick(self) -> Deferred[None]:
        """Every :data:`HEARTBEAT_INTERVAL`: forget expired remote bindings, swap call counts."""
        now = self.clock()
        self.location.sweep(now)
        for token in [t for t, r in self.remote_relayed.items() if r.phone_expires_at <= now]:
            del self.remote_relayed[token]
        client = self.client
        if self.state == StoreState.CONFLICT and client is not None:
            return self._claim(client)
        if self.state != StoreState.UP or client is None:
            self.remote_calls = {}
            return succeed(None)
        counts = encode_heartbeat(self.call_counts(), self.advertise(), self.instance)
        heard = client.heartbeat(self.holder, counts, int(HEARTBEAT_TTL * 1000))
        return heard.addCallbacks(self._heard, self._heartbeat_failed)

    def _foreign(self, nodes: dict[str, str]) -> bool:
        """True (and logged, capped) when this name's heartbeat was another process's."""
        before = nodes.pop("", "")
        writer = heartbeat_instance(before) if before else ""
        if not writer or writer == self.instance:
            return False
        self._conflicts += 1
        if self._conflicts % 30 == 1:  # the first time, then once a minute
            _log.error(
                "store: another process wrote the heartbeat of node {node}: another SBC "
                "is running with the same node name (give each node its own `node` line), "
                "or this node restarted less than {ttl:.0f} s ago; {action}",
                event="store.duplicate-node",
                node=self.holder,
                ttl=HEARTBEAT_TTL,
                action=(
                    "this node keeps serving"
                    if self.state == StoreState.UP
                    else "this node does not use the store (REGISTERs 503) until the name is free"
                ),
            )
        return True

    def _heard(self, nodes: dict[str, str]) -> None:
        self._foreign(nodes)
        totals: dict[str, int] = {}
        peers: dict[str, ClusterAddress] = {}
        for node, text in nodes.items():
            if node == self.holder:
                continue
            try:
                counts, address = decode_heartbeat(text)
            except ValueError:
                continue
            for adjacency, calls in counts.items():
                totals[adjacency] = totals.get(adjacency, 0) + calls
            if address is not None:
                peers[node] = address
        self.remote_calls = totals
        self.nodes = tuple(sorted(nodes))
        self._note_peers(peers)

    def _note_peers(self, peers: dict[str, ClusterAddress]) -> None:
        """Take the other nodes' cluster addresses; log the ones that came, moved or went."""
        old, self.peers = self.peers, peers
        for node in sorted(old.keys() | peers.keys()):
            was, now = old.get(node), peers.get(node)
            if was == now:
                continue
            if now is None:
                _log.info(
                    "cluster: node {peer} no longer takes calls for its phones "
                    "(no cluster link in its heartbeat, or no heartbeat)",
                    event="cluster.peer-gone",
                    peer=node,
                )
            else:
                _log.info(
                    "cluster: node {peer} takes calls for its phones at {address}",
                    event="cluster.peer",
                    peer=node,
                    address=str(now),
                )

    def peer_address(self, node: str) -> ClusterAddress | None:
        """Where node ``node``'s cluster link listens, as its last heartbeat said (or None)."""
        return self.peers.get(node)

    def _heartbeat_failed(self, failure: Failure) -> None:
        self.remote_calls = {}

    def stop(self) -> Deferred[Any]:
        """A clean stop: remove this node's bindings and heartbeat from the store."""
        client = self.client
        if self.state != StoreState.UP or client is None:
            self.state = StoreState.DOWN
            return succeed(None)
        ops: list[Op] = [Drop(key) for key, _ in self.location.own()]
        ops += [Drop(relay_key(r.token)) for r in self.relayed()]
        count = len(ops)
        ops.append(Delete(node_key(self.holder)))
        writes = []
        for start in range(0, len(ops), BATCH):
            self._seq += 1
            writes.append(client.apply(ops[start : start + BATCH], self.holder, self._seq))
        self.state = StoreState.DOWN
        _log.info(
            "store: node {node} stopping, {count} binding(s) of this node removed",
            event="store.stopping",
            node=self.holder,
            count=count,
        )
        return gatherResults(writes, consumeErrors=True)
