"""Fixtures for clickhouse tests (owned by the clickhouse area)."""
