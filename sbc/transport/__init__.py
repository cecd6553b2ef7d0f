"""The I/O edge of sbc: sockets, TLS contexts, connections and the reactor timer."""
