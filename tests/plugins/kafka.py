"""Fixtures for kafka tests (owned by the kafka area)."""
