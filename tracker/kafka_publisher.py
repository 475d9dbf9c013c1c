"""Publishing accepted events to the Kafka events topic, for `skvoz collector`.

A request's events become one message per client (key ``project:client``, value the JSON array
of ``streams.codec``), sent by an idempotent ``acks=all`` producer. ``publish`` returns only after
Kafka acknowledged every message, within ``[kafka] ack_timeout_ms``; otherwise it raises
``Unavailable`` and the collector answers 503, so a 202 always means the events are in Kafka.

``start`` keeps trying until Kafka answers (creating the topic when it is missing); meanwhile the
collector serves /healthz with 503. Afterwards a probe watches the partition leaders: while they
are gone ``publish`` fails fast instead of making every request wait for the timeout, and the
publisher recovers by itself when they are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from streams.codec import by_client, encode_events, topic_name
from streams.model import Event
from tracker.app import SubmitError, Unavailable
from tracker.config import Kafka

log = logging.getLogger("skvoz.kafka")

# A client's events are split into messages of at most this many bytes (big imports): well
# under the producer's max_request_size, so a message never fails for its size alone.
MAX_VALUE_BYTES = 512 * 1024
START_RETRY_MAX_S = 10.0
PROBE_HEALTHY_S = 2.0
PROBE_UNHEALTHY_S = 0.5


def _values(events: list[Event]) -> list[bytes]:
    """One client's events as message values, split in halves until each fits."""
    value = encode_events(events)
    if len(value) <= MAX_VALUE_BYTES or len(events) == 1:
        return [value]
    mid = len(events) // 2
    return _values(events[:mid]) + _values(events[mid:])


def _describe(e: BaseException) -> str:
    text = str(e)  # aiokafka's messages often start with the class name already
    return text if text.startswith(type(e).__name__) else f"{type(e).__name__}: {text}"


def _producer_state_errors() -> tuple[type, ...]:
    # Errors about the producer's own idempotence state: retrying with it cannot help.
    from aiokafka import errors as e

    return (e.OutOfOrderSequenceNumber, e.UnknownProducerId, e.InvalidProducerEpoch,
            e.InvalidProducerIdMapping, e.ProducerFenced, e.ProducerClosed)


def _discard(futures: list[asyncio.Future]) -> None:
    """Forget sends we no longer wait for, without 'exception was never retrieved' noise.
    (Cancelling an aiokafka send future does not unsend the record: the pipeline dedups.)"""
    for f in futures:
        if f.done():
            if not f.cancelled():
                f.exception()
        else:
            f.cancel()


class KafkaPublisher:
    def __init__(self, cfg: Kafka, *, client_id: str = "skvoz-collector") -> None:
        if not cfg.bootstrap:
            raise ValueError("[kafka] bootstrap is empty")
        self.cfg = cfg
        self.client_id = client_id
        self.topic = topic_name(cfg.topic_prefix, "events")
        self.ack_timeout = cfg.ack_timeout_ms / 1000
        self.healthy = False
        self.last_error = ""
        self.counters: dict[str, float] = {
            "published_events": 0, "published_messages": 0, "acked_requests": 0,
            "ack_seconds_sum": 0.0, "failed_requests": 0, "ack_timeouts": 0,
            "fast_failures": 0, "producer_resets": 0,
        }
        self._producer: Any = None
        self._started = asyncio.Event()
        self._probe_task: asyncio.Task | None = None
        self._reset_task: asyncio.Task | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------

    def _new_producer(self):
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(
            bootstrap_servers=self.cfg.bootstrap, client_id=self.client_id,
            acks="all", enable_idempotence=True,
            # Not beyond the ack bound by much: a record we stopped waiting for (503) should
            # not linger in the producer's buffer for long.
            request_timeout_ms=max(self.cfg.ack_timeout_ms * 2, 10_000),
            linger_ms=0,
        )

    async def _connect(self):
        from streams.faust_app import ensure_topics  # the same topic settings as the workers

        created = await ensure_topics(self.cfg.bootstrap, self.cfg.topic_prefix,
                                      self.cfg.partitions, self.cfg.replication,
                                      names=("events",), timeout=30.0)
        if created:
            log.info("created topic %s (%d partitions, replication %d)", self.topic,
                     self.cfg.partitions, self.cfg.replication)
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def start(self) -> None:
        """Connect, retrying with backoff until Kafka answers; the reason of each failure is
        logged and shown by /healthz."""
        delay = 0.5
        while not self._closing:
            try:
                self._producer = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_error = f"Kafka at {self.cfg.bootstrap} unavailable: {_describe(e)}"
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_MAX_S)
                continue
            self.healthy, self.last_error = True, ""
            self._started.set()
            self._probe_task = asyncio.create_task(self._probe_loop(), name="kafka-probe")
            log.info("publishing to %s on %s", self.topic, self.cfg.bootstrap)
            return

    async def wait_started(self) -> None:
        await self._started.wait()

    async def stop(self) -> None:
        """Flush what the producer still holds (bounded: what is left was never acknowledged
        to a client) and close it."""
        self._closing = True
        for task in (self._probe_task, self._reset_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        producer, self._producer = self._producer, None
        self.healthy = False
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=max(5.0, 2 * self.ack_timeout))
            except Exception as e:
                log.warning("producer did not flush cleanly: %s: %s", type(e).__name__, e)

    # -- health ---------------------------------------------------------------------------------

    async def _check(self) -> str:
        """'' when every partition of the topic has a leader, else what is wrong."""
        client = self._producer.client
        if not await asyncio.wait_for(client.force_metadata_update(), timeout=3.0):
            return "no broker answers a metadata request"
        parts = client.cluster.partitions_for_topic(self.topic)
        if not parts:
            return f"topic {self.topic} not found"
        led = client.cluster.available_partitions_for_topic(self.topic)
        if len(led) < len(parts):
            return f"{len(parts) - len(led)} of {len(parts)} partitions of {self.topic} have no leader"
        return ""

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_HEALTHY_S if self.healthy else PROBE_UNHEALTHY_S)
            if self._producer is None:
                continue
            try:
                reason = await self._check()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reason = _describe(e)
            if not reason and not self.healthy:
                log.info("Kafka is back: every partition of %s has a leader", self.topic)
                self.healthy, self.last_error = True, ""
            elif reason and self.healthy:
                self._unhealthy(f"Kafka metadata: {reason}")

    def _unhealthy(self, reason: str) -> None:
        if self.healthy:
            log.warning("publishing paused: %s", reason)
        self.healthy = False
        self.last_error = reason

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "connected": self._producer is not None,
                               "healthy": self.healthy}
        if self.last_error:
            out["error"] = self.last_error
        return out

    def stats(self) -> dict[str, float]:
        return {**self.counters, "connected": int(self._producer is not None),
                "healthy": int(self.healthy)}

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, events: list[Event]) -> None:
        """Return once Kafka acknowledged all ``events``; else raise (nothing is promised)."""
        producer = self._producer
        if producer is None or not self.healthy:
            self.counters["fast_failures"] += 1
            raise Unavailable(f"Kafka is unavailable: {self.last_error or 'not connected'}",
                              "kafka_unavailable")
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        t0 = time.monotonic()
        futures: list[asyncio.Future] = []
        messages = 0
        try:
            async with asyncio.timeout(self.ack_timeout):
                for key, group in by_client(events).items():
                    for value in _values(group):
                        futures.append(await producer.send(self.topic, value, key))
                        messages += 1
                results = await asyncio.gather(*futures)
        except TimeoutError:
            _discard(futures)
            self.counters["ack_timeouts"] += 1
            self._failed(f"no acknowledgement from Kafka within {self.cfg.ack_timeout_ms} ms")
            raise Unavailable(f"Kafka did not acknowledge within {self.cfg.ack_timeout_ms} ms",
                              "kafka_timeout") from None
        except MessageSizeTooLargeError:
            _discard(futures)
            self.counters["failed_requests"] += 1
            raise SubmitError(413, "an event is larger than Kafka accepts",
                              "event_too_large") from None
        except KafkaError as e:
            _discard(futures)
            self._failed(_describe(e))
            if isinstance(e, _producer_state_errors()):
                self._schedule_reset(e)
            raise Unavailable(f"Kafka did not accept the events: {type(e).__name__}",
                              "kafka_error") from None
        del results
        c = self.counters
        c["published_events"] += len(events)
        c["published_messages"] += messages
        c["acked_requests"] += 1
        c["ack_seconds_sum"] += time.monotonic() - t0

    def _failed(self, reason: str) -> None:
        self.counters["failed_requests"] += 1
        self._unhealthy(reason)

    def _schedule_reset(self, error: Exception) -> None:
        """A non-retriable producer error (e.g. an idempotence sequence the broker no longer
        knows) can stick to the producer: replace it rather than fail forever."""
        if self._reset_task is None or self._reset_task.done():
            log.warning("replacing the Kafka producer after %s", type(error).__name__)
            self._reset_task = asyncio.create_task(self._reset(), name="kafka-reset")

    async def _reset(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                new = await self._connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_error = f"Kafka producer restart failed: {_describe(e)}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_MAX_S)
        else:
            return
        old, self._producer = self._producer, new
        self.counters["producer_resets"] += 1
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=max(5.0, 2 * self.ack_timeout))
