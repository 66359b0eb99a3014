"""The gateway's three processes: ingest, decode and wsfanout."""
