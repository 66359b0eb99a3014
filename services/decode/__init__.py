"""decode: take raw frames on credit, decode them with pure functions, PUBlish events."""
