"""ingest: one MQTT client that turns every broker message into a raw frame for the decoders
(a ROUTER socket with credit-based flow control, :mod:`shared.rawlink`).

It never parses payloads. QoS 1 messages are acknowledged to the broker only after their
frame has been handed to ZeroMQ, so whatever ingest has not passed on is redelivered.
"""
