"""Kafka → ClickHouse: the ``{prefix}.rows`` topic written to ClickHouse in batches.

One aiokafka consumer in the group ``{prefix}-sink`` reads row messages (``streams.faust_app.
encode_rows``), gathers them until ``batch_max_rows`` rows or ``batch_max_ms`` have passed,
inserts them with ``Store.write`` and only then commits the offsets (manual commit): a row is
never committed before ClickHouse acknowledged it.

A crash between the insert and the commit inserts the same rows again after the restart. That
is harmless: every table is a ReplacingMergeTree keyed by the row's identity, rows carry their
version (events: received_at), and reports read with FINAL, so a row written twice is one row.
Rows that are not valid go to the dead-letter topic with the reason, and the sink goes on.

The consumer reads with ``isolation_level="read_committed"``: it never sees rows of an aborted
producer transaction, should a writer of this topic ever use transactions.

Test hook: ``SKVOZ_SINK_CRASH_AFTER_INSERT=N`` makes the process ``os._exit(9)`` right after its
N-th insert, before that batch's commit (the crash window the design must survive).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from streams.codec import topic_name
from streams.faust_app import dead_letter, decode_rows
from streams.model import Output

log = logging.getLogger("skvoz.sink")

CRASH_ENV = "SKVOZ_SINK_CRASH_AFTER_INSERT"


class KafkaSink:
    def __init__(
        self,
        store,
        bootstrap: str,
        prefix: str,
        *,
        batch_max_rows: int = 50_000,
        batch_max_ms: int = 500,
        group: str | None = None,
        crash_after_insert: int | None = None,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self.topic = topic_name(prefix, "rows")
        self.dead_topic = topic_name(prefix, "dead-letters")
        self.group = group or f"{prefix}-sink"
        self.batch_max_rows = batch_max_rows
        self.batch_max_ms = batch_max_ms
        self.session_timeout_ms = session_timeout_ms
        env = os.environ.get(CRASH_ENV, "")
        self.crash_after_insert = crash_after_insert if crash_after_insert is not None else (int(env) if env else None)
        self.counters = {"messages": 0, "rows": 0, "inserts": 0, "insert_errors": 0, "dead_letters": 0,
                         "commits": 0, "commit_errors": 0}
        self.last_error = ""
        self.running = False
        self._stop = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "last_error": self.last_error, "running": self.running}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=min(3000, self.session_timeout_ms // 3),
            max_poll_interval_ms=600_000,  # an insert into a slow ClickHouse must not cost the group
            metadata_max_age_ms=10_000,  # see streams.faust_app: heal an empty assignment quickly
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await consumer.start()
        except BaseException:
            await producer.stop()
            raise
        self.running = True
        log.info("sink: %s -> ClickHouse (group %s)", self.topic, self.group)
        try:
            while not self._stop.is_set():
                await self._one_batch(consumer, producer)
        finally:
            self.running = False
            await consumer.stop()
            await producer.stop()

    async def _one_batch(self, consumer, producer) -> None:
        from aiokafka.errors import KafkaError

        out = Output()
        offsets: dict = {}
        dead: list[bytes] = []
        deadline = time.monotonic() + self.batch_max_ms / 1000
        while len(out) < self.batch_max_rows and not self._stop.is_set():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 and (offsets or dead):
                break
            try:
                got = await consumer.getmany(timeout_ms=max(left_ms, 50), max_records=5000)
            except KafkaError as e:  # the broker is away: keep what we have, try again
                self.last_error = f"fetch: {e!r}"
                log.warning("sink fetch failed: %r", e)
                await asyncio.sleep(0.5)
                continue
            for tp, messages in got.items():
                for m in messages:
                    self.counters["messages"] += 1
                    try:
                        out.extend(decode_rows(m.value))
                    except ValueError as e:
                        dead.append(dead_letter(f"bad_rows: {e}", "sink", topic=m.topic, partition=m.partition,
                                                offset=m.offset, key=m.key, value=m.value))
                    offsets[tp] = m.offset + 1
            if not got and not offsets and not dead:
                deadline = time.monotonic() + self.batch_max_ms / 1000  # idle: start the clock anew
        if not offsets:
            return
        if dead:
            await self._dead_letters(producer, dead)
        if len(out):
            await self._insert(out)
        try:
            await consumer.commit(offsets)
            self.counters["commits"] += 1
        except KafkaError as e:
            # e.g. the partitions moved in a rebalance: their new owner inserts them again (harmless)
            self.counters["commit_errors"] += 1
            self.last_error = f"commit: {e!r}"
            log.warning("sink commit failed (%r); the rows will be inserted again", e)

    async def _insert(self, out: Output) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                await loop.run_in_executor(None, self.store.write, out)
                break
            except Exception as e:  # ClickHouse down or refusing: the same rows again, later
                self.counters["insert_errors"] += 1
                self.last_error = f"insert: {e!r}"
                log.warning("inserting %d rows failed (%r); retrying in %.1fs", len(out), e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.counters["inserts"] += 1
        self.counters["rows"] += len(out)
        if self.crash_after_insert is not None and self.counters["inserts"] >= self.crash_after_insert:
            log.error("%s=%d: exiting after the insert, before the commit", CRASH_ENV, self.crash_after_insert)
            logging.shutdown()
            os._exit(9)

    async def _dead_letters(self, producer, records: list[bytes]) -> None:
        while True:
            try:
                futures = [await producer.send(self.dead_topic, r) for r in records]
                await asyncio.gather(*futures)
                break
            except Exception as e:
                log.warning("dead-letter send failed (%r); retrying", e)
                await asyncio.sleep(1.0)
        self.counters["dead_letters"] += len(records)
        log.warning("sink: %d bad row message(s) sent to %s", len(records), self.dead_topic)


# -- skvoz sink ------------------------------------------------------------------------------------


async def serve_sink(cfg, host: str | None = None, port: int | None = None, session_timeout: float = 10.0) -> int:
    """``skvoz sink``: migrate ClickHouse, run the sink; serve /healthz, /metrics and the query
    API on host:port (with embedded chdb only this process can answer queries). Runs until
    SIGTERM/SIGINT, then finishes the batch in hand and commits it."""
    import signal

    from aiohttp import web

    from sink.store import Store
    from streams.faust_app import ensure_topics
    from tracker.app import State, build_app

    if not cfg.kafka.bootstrap:
        raise ValueError("[kafka] bootstrap is empty; set it or SKVOZ_KAFKA_BOOTSTRAP")
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    loop = asyncio.get_running_loop()
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    store = await loop.run_in_executor(None, Store.connect, cfg.clickhouse.url, cfg.data_path, cfg.clickhouse.database)
    try:
        applied = await loop.run_in_executor(None, store.migrate)
        if applied:
            log.info("migrations applied: %s", ", ".join(map(str, applied)))
        await ensure_topics(cfg.kafka.bootstrap, cfg.kafka.topic_prefix, cfg.kafka.partitions,
                            cfg.kafka.replication, names=("rows", "dead-letters"))
        sink = KafkaSink(store, cfg.kafka.bootstrap, cfg.kafka.topic_prefix,
                         batch_max_rows=max(cfg.pipeline.batch_max_events, 1000),
                         batch_max_ms=max(cfg.pipeline.batch_max_ms, 50),
                         session_timeout_ms=int(session_timeout * 1000))
        state = State(cfg, runtime=_SinkStats(sink), store=store)
        app = build_app(state)  # /collect answers 503 here (no runtime to submit to)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("sink API on http://%s:%s", host, port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(sink.run())
        state.ready = True
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if task in done:  # the sink failed on its own
            log.error("sink stopped: %r", task.exception())
            code = 1
        else:
            sink.stop()
            try:
                await asyncio.wait_for(task, 60)
            except Exception as e:  # noqa: BLE001
                log.error("sink did not stop cleanly: %r", e)
        stopper.cancel()
        state.ready = False
        await runner.cleanup()
        state.executor.shutdown(wait=False, cancel_futures=True)
        return code
    finally:
        store.close()


class _SinkStats:
    """What /healthz and /metrics show for the sink (the app's ``runtime`` slot)."""

    def __init__(self, sink: KafkaSink) -> None:
        self.sink = sink

    def stats(self) -> dict:
        return self.sink.stats()

    def submit(self, events) -> None:  # the collector's path: not on a sink
        raise RuntimeError("the sink does not accept events; send them to a collector")
