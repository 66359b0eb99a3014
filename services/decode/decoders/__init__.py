"""Pure decoders, one module per network server format (no sockets, no clock, no globals)."""
