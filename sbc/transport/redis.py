"""The connection to the shared store: Redis through txredisapi (docs/scaling.md).

:class:`RedisStoreService` keeps two connections to the ``store`` of the
configuration, each re-opened by a ``ClientService`` with back-off when it
drops: one for commands, one subscribed to the store's channel. When both
are up it tells the :class:`~sbc.cluster.SharedStore` (which then reads the
bindings and writes its own again); when either drops, the store hears it at
once. Every ``HEARTBEAT_INTERVAL`` seconds it runs :meth:`SharedStore.tick`
(this node's call counts out, the others' in).

Writes are Lua scripts, so that a batch and the message announcing it are
one atomic step in Redis's order (:data:`APPLY_SCRIPT`); a clean stop
removes this node's bindings before the connections close.

txredisapi is used for the protocol only (RESP, commands, ``EVALSHA``):
connecting, reconnecting and the clock are Twisted's and the injected
reactor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.cluster.codec import BINDING_PREFIX, NODE_PREFIX
from sbc.cluster.store import BATCH, HEARTBEAT_INTERVAL, Delete, Drop, Op, Put, SharedStore
from sbc.config import StoreUrl

__all__ = ["APPLY_SCRIPT", "RedisStoreService", "channel_name"]

#: Seconds a command may wait for its reply before the connection is dropped (and re-opened).
REPLY_TIMEOUT = 5.0
#: Seconds a clean stop waits for Redis to remove this node's bindings.
STOP_TIMEOUT = 3.0
#: Keys read per step when the view is rebuilt.
SCAN_COUNT = 1000
#: The set of node names whose heartbeat keys are read.
NODES_KEY = "sbc:nodes"

#: KEYS: the keys. ARGV: channel, origin (the holder: ``NODE`` or ``NODE/WORKER``,
#: sbc.cluster.codec.holder_name), sequence number, then for each key
#: ``put VALUE TTL-MS`` | ``del`` | ``drop`` (delete only while the record names
#: the origin as its holder). Publishes what each key holds afterwards, in one message.
APPLY_SCRIPT = """
local out = {}
local a = 4
for _, key in ipairs(KEYS) do
  local op = ARGV[a]
  if op == 'put' then
    redis.call('SET', key, ARGV[a + 1], 'PX', ARGV[a + 2])
    out[#out + 1] = {'put', key, ARGV[a + 1], tonumber(ARGV[a + 2])}
    a = a + 3
  elseif op == 'del' then
    redis.call('DEL', key)
    out[#out + 1] = {'del', key}
    a = a + 1
  else
    a = a + 1
    local value = redis.call('GET', key)
    local mine = false
    if value then
      local ok, record = pcall(cjson.decode, value)
      if ok and type(record) == 'table' then
        local holder = tostring(record['node'])
        local worker = tonumber(record['worker']) or 0
        if worker ~= 0 then holder = holder .. '/' .. string.format('%d', worker) end
        mine = holder == ARGV[2]
      end
    end
    if value and not mine then
      out[#out + 1] = {'put', key, value, redis.call('PTTL', key)}
    else
      if value then redis.call('DEL', key) end
      out[#out + 1] = {'del', key}
    end
  end
end
redis.call('PUBLISH', ARGV[1], cjson.encode({by = ARGV[2], seq = tonumber(ARGV[3]), ops = out}))
return #out
"""

#: ARGV: cursor, pattern, count. Returns the next cursor, then key, value, PTTL triples.
LOAD_SCRIPT = """
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {found[1]}
for _, key in ipairs(found[2]) do
  local value = redis.call('GET', key)
  if value then
    out[#out + 1] = key
    out[#out + 1] = value
    out[#out + 1] = redis.call('PTTL', key)
  end
end
return out
"""

#: ARGV: node key prefix, node, counts, TTL-MS, nodes set. Returns node, counts pairs.
HEARTBEAT_SCRIPT = """
local before = redis.call('GET', ARGV[1] .. ARGV[2])
redis.call('SET', ARGV[1] .. ARGV[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', ARGV[5], ARGV[2])
local out = {'', before or ''}
for _, node in ipairs(redis.call('SMEMBERS', ARGV[5])) do
  local counts = redis.call('GET', ARGV[1] .. node)
  if counts then
    out[#out + 1] = node
    out[#out + 1] = counts
  else
    redis.call('SREM', ARGV[5], node)
  end
end
return out
"""

_log = Logger(namespace="sbc.cluster")


def channel_name(url: StoreUrl) -> str:
    """The pub/sub channel of a store (channels are not per database: the number is in it)."""
    return f"sbc:{url.db}:bindings"


@implementer(IStreamClientEndpoint)
class _NamedEndpoint:
    """A client endpoint whose text names the store: the reconnecting service's
    "Scheduling retry N to connect ..." lines say what it connects to."""

    def __init__(self, endpoint: Any, name: str) -> None:
        self._endpoint = endpoint
        self._name = name

    def connect(self, factory: Any) -> Any:
        return self._endpoint.connect(factory)

    def __repr__(self) -> str:
        return self._name

    __str__ = __repr__


class _CommandProtocol(txredisapi.BaseRedisProtocol):
    """Commands; tells the service when the connection is lost."""

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.service.connection_lost(self, why)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    """The channel's messages go to the store."""

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.service.store.message(message)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.service.connection_lost(self, why)


def _unwrapped(protocol: Any) -> Any:
    """The protocol a ClientService hands over behind its reconnecting proxy."""
    return getattr(protocol, "_protocol", protocol)


class _Factory(Factory):
    """Builds one kind of protocol, on the service's clock; what txredisapi asks of a factory."""

    isLazy = True
    noisy = False

    def __init__(self, service: RedisStoreService, kind: type[Any], db: int | None) -> None:
        self.service = service
        self.kind = kind
        self.db = db

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.kind(
            charset="utf-8",
            replyTimeout=REPLY_TIMEOUT,
            dbid=self.db,
            convertNumbers=False,
        )
        protocol.factory = self
        protocol.callLater = self.service.reactor.callLater
        return protocol

    def stopTrying(self) -> None:
        """txredisapi calls it when AUTH or SELECT fails: the connection is dropped and retried."""

    def connectionError(self, why: str) -> None:
        _log.error("store: {why}", why=why)


class RedisStoreService(Service):
    """The two connections to Redis and the heartbeat of one :class:`SharedStore`."""

    def __init__(self, reactor: Any, url: StoreUrl, store: SharedStore) -> None:
        self.reactor = reactor
        self.url = url
        self.store = store
        self.channel = channel_name(url)
        self.commands: Any = None
        self.subscriber: Any = None
        self._ready: set[str] = set()
        self._services: list[ClientService] = []
        self._heartbeat: LoopingCall | None = None
        self._queue: list[tuple[Sequence[Op], str, int, defer.Deferred[object]]] = []
        self._flush_call: Any = None
        store.client = self
        self.setName("store")

    def _endpoint(self, role: str) -> Any:
        kind = TCP6ClientEndpoint if ":" in self.url.host else TCP4ClientEndpoint
        endpoint = kind(self.reactor, self.url.host, self.url.port, timeout=REPLY_TIMEOUT)
        return _NamedEndpoint(endpoint, f"the store {self.url} ({role})")

    def startService(self) -> None:
        super().startService()
        _log.info(
            "store: connecting to {url} as node {node}",
            event="store.connecting",
            url=str(self.url),
            node=self.store.node,
        )
        retry = backoffPolicy(initialDelay=0.5, maxDelay=5.0)
        for kind, prepare in (
            (_CommandProtocol, self._commands_ready),
            (_SubscriberProtocol, self._subscriber_ready),
        ):
            db = self.url.db if kind is _CommandProtocol else None
            role = "commands" if kind is _CommandProtocol else "messages"
            service = ClientService(
                self._endpoint(role),
                _Factory(self, kind, db),
                retryPolicy=retry,
                clock=self.reactor,
                prepareConnection=prepare,
            )
            service.startService()
            self._services.append(service)
        self._heartbeat = LoopingCall(self.store.tick)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        removed = self.store.stop()
        removed.addTimeout(STOP_TIMEOUT, self.reactor)
        removed.addErrback(
            lambda failure: _log.warn(
                "store: this node's bindings were not removed: {error}",
                error=failure.getErrorMessage(),
            )
        )

        def close(_: object) -> defer.Deferred[Any]:
            services, self._services = self._services, []
            return defer.gatherResults([s.stopService() for s in services], consumeErrors=True)

        return removed.addCallback(close).addCallback(lambda _: None)

    # -- connections -----------------------------------------------------------------

    def _commands_ready(self, proxy: Any) -> defer.Deferred[None]:
        protocol = _unwrapped(proxy)

        def ready(_: object) -> None:
            self.commands = protocol
            self._mark_ready("commands")

        return protocol.whenConnected().addCallback(ready)

    def _subscriber_ready(self, proxy: Any) -> defer.Deferred[None]:
        protocol = _unwrapped(proxy)

        def subscribed(_: object) -> None:
            self.subscriber = protocol
            self._mark_ready("subscriber")

        connected = protocol.whenConnected()
        connected.addCallback(lambda _: protocol.subscribe(self.channel))
        return connected.addCallback(subscribed)

    def _mark_ready(self, which: str) -> None:
        self._ready.add(which)
        if self._ready == {"commands", "subscriber"} and self.running:
            # a heartbeat at once: this node's cluster address, the others' (docs/scaling.md)
            self.store.connected().addCallback(lambda _: self.store.tick())

    def connection_lost(self, protocol: Any, why: Failure) -> None:
        """One of the connections dropped (its ClientService re-opens it)."""
        if protocol is self.commands:
            self.commands = None
            self._ready.discard("commands")
        elif protocol is self.subscriber:
            self.subscriber = None
            self._ready.discard("subscriber")
        else:
            return
        if self.running:
            self.store.lost(why.getErrorMessage())

    # -- StoreClient -------------------------------------------------------------------

    def _connection(self) -> Any:
        if self.commands is None:
            raise txredisapi.ConnectionError("not connected to the store")
        return self.commands

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> defer.Deferred[object]:
        """Apply ``ops`` and publish the result (:data:`APPLY_SCRIPT`).

        The batches of one reactor turn go to Redis together, in order, in
        as few script calls as :data:`BATCH` allows (one per turn usually):
        a busy node pays the round trip once for many REGISTERs.
        """
        waiter: defer.Deferred[object] = defer.Deferred()
        self._queue.append((ops, origin, seq, waiter))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return waiter

    def _flush(self) -> None:
        self._flush_call = None
        queue, self._queue = self._queue, []
        ops: list[Op] = []
        waiters: list[defer.Deferred[object]] = []
        origin, seq = "", 0
        for batch, origin, seq, waiter in queue:
            if ops and len(ops) + len(batch) > BATCH:
                self._send(ops, origin, seq, waiters)
                ops, waiters = [], []
            ops.extend(batch)
            waiters.append(waiter)
        if waiters:
            self._send(ops, origin, seq, waiters)

    def _send(
        self, ops: Sequence[Op], origin: str, seq: int, waiters: list[defer.Deferred[object]]
    ) -> None:
        def done(result: object) -> None:
            for waiter in waiters:
                waiter.callback(result)

        def failed(failure: Failure) -> None:
            for waiter in waiters:
                waiter.errback(failure)

        self._eval_apply(ops, origin, seq).addCallbacks(done, failed)

    def _eval_apply(self, ops: Sequence[Op], origin: str, seq: int) -> defer.Deferred[object]:
        keys: list[str] = []
        args: list[str | int] = [self.channel, origin, seq]
        for op in ops:
            keys.append(op.key)
            if isinstance(op, Put):
                args += ["put", op.value, op.ttl_ms]
            elif isinstance(op, Delete):
                args.append("del")
            elif isinstance(op, Drop):
                args.append("drop")
        return defer.maybeDeferred(lambda: self._connection().eval(APPLY_SCRIPT, keys, args))

    @defer.inlineCallbacks
    def load(self) -> Any:
        """Every binding record, (key, value, PTTL) (:data:`LOAD_SCRIPT`, a SCAN in steps)."""
        rows: list[tuple[str, str, int]] = []
        cursor = "0"
        while True:
            connection = self._connection()
            found = yield connection.eval(
                LOAD_SCRIPT, [], [cursor, BINDING_PREFIX + "*", SCAN_COUNT]
            )
            cursor = str(found[0])
            for index in range(1, len(found) - 2, 3):
                rows.append((str(found[index]), str(found[index + 1]), int(found[index + 2])))
            if cursor == "0":
                return rows

    @defer.inlineCallbacks
    def heartbeat(self, node: str, counts: str, ttl_ms: int) -> Any:
        """Write this node's counts, read every live node's (:data:`HEARTBEAT_SCRIPT`)."""
        connection = self._connection()
        found = yield connection.eval(
            HEARTBEAT_SCRIPT, [], [NODE_PREFIX, node, counts, ttl_ms, NODES_KEY]
        )
        return {str(found[i]): str(found[i + 1]) for i in range(0, len(found) - 1, 2)}
