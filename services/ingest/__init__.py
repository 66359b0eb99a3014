"""ingest: one MQTT client that turns every broker message into a raw frame on a PUSH socket.

It never parses payloads. QoS 1 messages are acknowledged to the broker only after their
frame has been handed to ZeroMQ, so whatever ingest has not passed on is redelivered.
"""
