"""wsfanout: ZeroMQ SUB of decoded events → WebSocket clients, with replay, resume, filters,
per-client bounded queues, tokens with tenant scopes, and HTTP (/, /healthz, /metrics).

Modules, from the edge inwards:

- ``app``: ``main(argv)``, the ``token`` sub-command, signals and shutdown.
- ``config``: settings (environment variables, flags) → frozen :class:`Config`.
- ``gate``: the HTTP side of the handshake: routes, Origin, tokens, URL parameters.
- ``handshakes``: handshakes websockets refuses before the gate sees them, counted.
- ``fanout``: the core: receive events, number them, keep history, dispatch, client ops.
- ``client``: one WebSocket client: filter, scope, bounded queue, relay task.
- ``index``: clients indexed by what they subscribed to.
- ``history``: per-device ring buffers in fan-out order; resume look-ups; save/load.
- ``messages``: event body → client message (JSON, serialized once); metadata.
- ``filters``: client filters and token scopes (pure).
- ``seqtrack`` / ``dedup``: gap, duplicate and reorder accounting per source.
- ``tokens`` / ``token_cli``: hashed token store and ``python -m services.wsfanout token``.
- ``metrics``: the Prometheus registry of this service.
"""
