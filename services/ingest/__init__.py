"""ingest: one MQTT client that turns every broker message into a raw frame for the decoders
(a ROUTER socket with credit-based flow control, :mod:`shared.rawlink`).

It never parses payloads. QoS 1 messages are acknowledged to the broker only once a decoder
confirmed their frame (its credit came back), so whatever did not get that far is
redelivered, also after a SIGKILL of ingest.
"""
