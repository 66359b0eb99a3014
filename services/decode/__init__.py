"""decode: PULL raw frames, decode them with pure functions, PUBlish events."""
