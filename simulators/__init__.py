"""Simulators that publish ChirpStack v4-shaped events to an MQTT broker, to try the gateway."""
