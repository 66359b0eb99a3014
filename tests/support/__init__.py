"""Test helpers that talk to real things: a private Mosquitto, real service processes."""
