"""Fault-injection suite (issue 4, RELIABILITY.md §9.1)."""
