"""Fixtures for server tests (owned by the server area)."""
