"""``Store``: the one object the app uses for ClickHouse (migrate, write, report, ping).

It holds two clients on the same database: one for the writer thread and one for report
queries, so a long insert never makes an API request wait for the client. Each
clickhouse-connect client is safe to share between threads (the chdb backend serialises
calls on its handle with a lock; HTTP clients run without a session), so callers need no
locking of their own.
"""

from __future__ import annotations

import logging
import threading
from datetime import date
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from sink import queries
from sink.client import check_identifier, connect
from sink.migrate import migrate
from sink.writer import Writer
from streams.model import Output

log = logging.getLogger(__name__)


class Store:
    def __init__(self, client: Client, database: str, read_client: Client | None = None, owns_clients: bool = False):
        """Wrap existing clients (tests share one); ``Store.connect`` opens its own."""
        self.database = check_identifier(database)
        self.client = client
        self.read_client = read_client or client
        self._owns = owns_clients
        self._writer = Writer(client, database)
        self._close_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(cls, url: str, data_dir: str | Path, database: str = "skvoz", **kw: Any) -> "Store":
        """Open ClickHouse (empty url: embedded chdb under ``data_dir``); no migration yet."""
        check_identifier(database)
        client = connect(url, data_dir, **kw)
        try:
            read_client = connect(url, data_dir, **kw)
        except Exception:
            client.close()
            raise
        return cls(client, database, read_client, owns_clients=True)

    def migrate(self) -> list[str]:
        return migrate(self.client, self.database)

    def write(self, output: Output) -> None:
        """Insert the rows; raises on failure, and calling again with the same Output is safe."""
        self._writer.write(output)

    def channels(
        self, project_id: str, tz: str, date_from: date, date_to: date, model: str, group_by: list[str]
    ) -> dict:
        return queries.channels(self.read_client, self.database, project_id, tz, date_from, date_to, model, group_by)

    def funnel(
        self,
        project_id: str,
        tz: str,
        date_from: date,
        date_to: date,
        steps: list[str],
        window_s: int,
        group_by: str | None = None,
    ) -> dict:
        return queries.funnel(
            self.read_client, self.database, project_id, tz, date_from, date_to, steps, window_s, group_by
        )

    def ping(self) -> bool:
        """True when ClickHouse answers a trivial query (False once closed)."""
        if self._closed:
            return False
        try:
            return self.read_client.command("SELECT 1") == 1
        except Exception as e:  # noqa: BLE001 - a health check reports, it does not raise
            log.warning("ClickHouse ping failed: %s", e)
            return False

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._owns:
            for c in {id(self.client): self.client, id(self.read_client): self.read_client}.values():
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    log.debug("error closing a ClickHouse client", exc_info=True)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
