"""Scale-out stream processing: the three pipeline stages as Faust agents over Kafka.

Topology (``streams.routing`` has the design; names under ``[kafka] topic_prefix``):

    {p}.events  key "project:client", value per streams.codec        ─▶ clients agent  (table clients)
    {p}.views   key project id,       value pickled [ClientView, ...] ─▶ identity agent (table graphs: links)
    {p}.persons partition of the person keys, pickled [ToPerson, ...] ─▶ persons agent  (table persons)
    every agent ─▶ {p}.rows (JSON rows for the sink, ``encode_rows``) and {p}.dead-letters (JSON)

Agents are thin: decode → ``streams.routing`` handler → send outputs → set the table value. Each
table slot lives in the partition its key hashes to (Kafka's default partitioner), so it moves
with its source partition on a rebalance (recovered from its changelog topic). A batch sends one
views record per project and one persons record per partition (up to ITEMS_PER_MESSAGE items
each), not one per client or person: Faust's cost is per message.

Internal values (table values, ``views``, ``persons``) are pickled Python objects. Pickle runs
code on load: only workers may write these topics; ``rows`` and ``dead-letters`` are JSON.

Delivery guarantee: at-least-once, made exact by ordering. Per batch: (1) every output (rows,
messages to the next stage, dead letters) is sent and *acknowledged* by Kafka (acks=all);
(2) then the changed table values are written to their changelogs, also acknowledged; (3) then
the last source offset applied per partition, into the same changelog; (4) only then is the
batch acked, so Faust can commit its offsets. So a changelog is never ahead of what was sent,
and its applied offsets never ahead of its state. A crash anywhere replays from the applied
offsets: where the state was not yet written the messages re-derive the same rows and messages
(same keys and versions); where it was, they are skipped (or, between state and offsets, the
handlers dedup them: event ids, view versions, ``Moved``), which is right because everything
was sent before that state existed. Duplicated rows and messages are harmless
(ReplacingMergeTree FINAL; handlers are idempotent — tests/test_routing.py).
Faust's ``processing_guarantee="exactly_once"`` is not used: in faust-streaming 0.15 its
transaction manager puts a send into the transaction of the *destination* partition
(``TransactionManager.send``), so re-keyed outputs (views by project, persons by person) land in
another partition's transaction or fail when another worker owns that partition, and sends to
topics the worker does not consume (rows) go outside any transaction.

Bad messages (undecodable, invalid events, unknown project, a handler error) go to the
dead-letter topic with a reason; the stream goes on.

Faust's offset commits are a starting point, not the truth: a worker applies only the offset
after its table's applied offset (``Applied``), so messages Faust skips or commits past (it
does, around rebalances) are read again.

Faust internals used on purpose (pinned to faust-streaming 0.15): the current-event context
variable (``_as_of``), the table's store and changelog topic (``_commit_batch``), and a
message's ``acked`` flag (``Applied.hold``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import pickle
import time
import weakref
from pathlib import Path
from typing import Any, Iterable

from .codec import TOPICS, decode_events, topic_name
from .embedded import check_event
from .identity import IdentityGraph
from .model import Output
from .pipeline import ClientView
from .routing import ToPerson, client_handle, identity_handle, person_handle

log = logging.getLogger("skvoz.worker")

ROW_TABLES = ("events", "visits", "conversions", "attributions", "identities")
ROWS_PER_MESSAGE = 2000
# Views and person orders per message: Faust's cost is per message, but a view holds a client's
# whole history, so keep records far below MAX_MESSAGE_BYTES.
ITEMS_PER_MESSAGE = 200
# A person's state (all its clients' views) or a client's timeline can be large.
MAX_MESSAGE_BYTES = 16 << 20
PICKLE_CODEC = "skvoz_pickle"
TABLES = ("clients", "graphs", "persons")

def link_key(project_id: str, client_id: str, node: str) -> bytes:
    """Table key of one identity link: the graphs table holds these and the APPLIED_KEYs."""
    return f"{project_id}\x00{client_id}\x00{node}".encode()


# Per source partition, the last offset whose effects a stage's table holds (see Applied).
APPLIED_KEY = b"\x00applied:%d"
# Touched every 5 s while the worker's event loop runs (``skvoz worker --alive`` reads it).
HEARTBEAT_FILE = "alive"
# Test hook: os._exit(9) in the N-th batch after its outputs were acknowledged, before its state.
CRASH_ENV = "SKVOZ_WORKER_CRASH_AFTER_OUTPUTS"

try:  # orjson when installed (the [scale] image has it via the collector)
    import orjson

    _dumps = orjson.dumps
    _loads = orjson.loads
except ImportError:  # pragma: no cover
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    _loads = json.loads


# -- wire formats of rows and dead letters ----------------------------------------------------------


def _row_types() -> dict[str, type]:
    from .model import AttributionRow, ConversionRow, EventRow, IdentityRow, VisitRow

    return {"events": EventRow, "visits": VisitRow, "conversions": ConversionRow,
            "attributions": AttributionRow, "identities": IdentityRow}


ROW_TYPES = _row_types()


def encode_rows(out: Output, per_message: int = ROWS_PER_MESSAGE) -> list[bytes]:
    """The rows of an Output as JSON messages ``{"visits": [[col, ...], ...], ...}``,
    at most ``per_message`` rows each (keeps messages far below Kafka's size limit)."""
    messages: list[bytes] = []
    chunk: dict[str, list] = {}
    n = 0
    for table in ROW_TABLES:
        for row in getattr(out, table):
            chunk.setdefault(table, []).append(list(row))
            n += 1
            if n >= per_message:
                messages.append(_dumps(chunk))
                chunk, n = {}, 0
    if chunk:
        messages.append(_dumps(chunk))
    return messages


def decode_rows(value: bytes) -> Output:
    """Inverse of ``encode_rows``; ValueError for anything that is not a valid rows message."""
    try:
        data = _loads(value)
    except Exception as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    out = Output()
    for table, rows in data.items():
        row_type = ROW_TYPES.get(table)
        if row_type is None:
            raise ValueError(f"unknown table {table!r}")
        if not isinstance(rows, list):
            raise ValueError(f"{table}: not a list")
        width = len(row_type._fields)
        target = getattr(out, table)
        for row in rows:
            if not isinstance(row, list) or len(row) != width:
                raise ValueError(f"{table}: a row is not a list of {width} values")
            target.append(row_type(*row))
    return out


def dead_letter(reason: str, stage: str, *, topic: str = "", partition: int = -1, offset: int = -1,
                key: bytes | None = None, value: bytes | str | list | None = None) -> bytes:
    """A dead-letter record (JSON): why, where from, and the payload (text, or base64 if binary)."""
    rec: dict[str, Any] = {"reason": reason, "stage": stage, "topic": topic, "partition": partition,
                           "offset": offset, "at": int(time.time() * 1000)}
    if key is not None:
        rec["key"] = key.decode("utf-8", "replace")
    if isinstance(value, (bytes, bytearray)):
        try:
            rec["value"] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            rec["value_b64"] = base64.b64encode(value).decode()
    elif value is not None:
        rec["value"] = value
    return _dumps(rec)


# -- the app ------------------------------------------------------------------------------------------


def _register_pickle_codec() -> None:
    from faust.serializers import codecs

    class _Pickle(codecs.Codec):
        def _dumps(self, obj: Any) -> bytes:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

        def _loads(self, s: bytes) -> Any:
            return pickle.loads(s)

    if PICKLE_CODEC not in codecs.codecs:
        codecs.register(PICKLE_CODEC, _Pickle())


@contextlib.contextmanager
def _as_of(event):
    """Faust writes a table key to the changelog partition (and RocksDB partition) of the
    *current* event; in a batch that is whichever came last, so point it at the key's own."""
    from faust.streams import _current_event

    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _chunks(items: list, n: int = ITEMS_PER_MESSAGE) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def _get(table, key: bytes, ev):
    with _as_of(ev):  # RocksDB looks in the current event's partition only
        return table.get(key)


async def log_start(consumer, tp) -> int:
    return (await consumer.earliest_offsets(tp)).get(tp) or 0


class Applied:
    """Which messages of a batch a stage may apply: exactly the next offset of each partition.

    Each stage's table keeps, per source partition, the last offset whose effects it holds
    (``APPLIED_KEY``), written after the batch's state and read back with it on recovery. A
    message at or below it is a redelivery: skipped. A message past the next offset means the
    consumer skipped some — faust-streaming does after some rebalances (messages dropped as
    "already read", acks of batches cut short, commits across its own gaps); a worker taking
    over from committed offsets that ran ahead does too. It is not applied and not acked, and
    the partition is sought back to the next offset. So what a worker applies never depends on
    what Faust delivered or committed, only on its state; redelivery costs work, never rows."""

    def __init__(self, consumer, table, counters: dict) -> None:
        self.consumer = consumer
        self.table = table
        self.counters = counters
        self.last: dict[int, int | None] = {}  # partition -> last applied offset (this batch included)
        self.changed: dict[int, Any] = {}  # partition -> an event of it (to write the marker as of)
        self.seeks: dict[Any, int] = {}  # TP -> offset to read again from
        self.held: list = []  # events neither applied nor to be acked
        self.owned = consumer.assignment()

    async def admit(self, ev) -> bool:
        m = ev.message
        p = m.partition
        if m.tp not in self.owned:  # revoked while the batch was taken: its new owner applies it
            self.held.append(ev)
            return False
        if p not in self.last:
            self.last[p] = _get(self.table, APPLIED_KEY % p, ev)
        last = self.last[p]
        if last is not None and m.offset <= last:
            self.counters["redelivered"] += 1
            return False  # applied before; ack it
        if m.tp not in self.seeks and (last is None or m.offset > last + 1):
            want = await self._next_offset(m.tp, last)
            if m.offset > want:
                self.seeks[m.tp] = want
        if m.tp in self.seeks:  # behind a gap: not before the partition is read again
            self.held.append(ev)
            return False
        self.last[p] = m.offset
        self.changed[p] = ev
        return True

    async def _next_offset(self, tp, last: int | None) -> int:
        """The next offset to apply, if the log still has it; asked of the broker only on a
        first message or a gap, both rare."""
        start = await log_start(self.consumer, tp)
        if last is None or last + 1 >= start:
            return start if last is None else last + 1
        # Retention deleted records before they were applied: nothing brings them back.
        self.counters["lost_to_retention"] += start - last - 1
        log.error("%s: offsets %d..%d were deleted by retention before being applied", tp, last + 1, start - 1)
        return start

    def markers(self) -> dict[bytes, tuple[Any, int]]:
        return {APPLIED_KEY % p: (ev, self.last[p]) for p, ev in self.changed.items()}

    def hold(self, batch: list | None = None) -> None:
        """Keep Faust from acking the held events (with ``batch``: all of it, cut short)."""
        for ev in self.held if batch is None else batch:
            # Marked acked, never reported as acked: Faust neither commits past it nor waits for it.
            ev.message.acked = True

    async def read_again(self) -> None:
        for tp, offset in self.seeks.items():
            self.counters["gaps"] += 1
            log.warning("%s: offset %d was not delivered; reading again from it", tp, offset)
            await self.consumer.seek(tp, offset)


class Stages:
    """The agents' bodies, separated from Faust's decorators so they read as plain code."""

    def __init__(self, app, cfg, topics: dict[str, str], tables: dict[str, Any]) -> None:
        self.app = app
        self.graphs: dict[str, IdentityGraph] = {}  # per project, rebuilt from the graphs table
        self.rules = cfg.rules()
        self.click_ids = {pid: {p: (s, m) for p, s, m in r.click_ids} or None for pid, r in self.rules.items()}
        self.topics = topics
        self.tables = tables
        self.partitions = cfg.kafka.partitions
        self.counters = {"events": 0, "views": 0, "persons": 0, "rows": 0, "dead_letters": 0,
                         "send_retries": 0, "batches": 0, "redelivered": 0, "gaps": 0,
                         "lost_to_retention": 0}
        self._last_report = time.monotonic()
        self.running = 0  # batches in progress (the stalled-partition timer waits for none)
        crash = os.environ.get(CRASH_ENV, "")
        self.crash_after_outputs = int(crash) if crash else None

    # -- sending: everything acknowledged before any state is written ----------------------------
    async def _send_all(self, records: list[tuple]) -> list:
        """Send (topic, key, value[, partition]) records; return their metadata once Kafka
        acknowledged every one (acks=all), retrying failures for as long as it takes."""
        results: list = [None] * len(records)
        pending = list(range(len(records)))
        delay = 0.2
        while pending:
            producer = self.app.producer
            futures: list = []
            failed: list[int] = []
            for i in pending:
                topic, key, value, *part = records[i]
                try:
                    futures.append((i, await producer.send(topic, key, value, part[0] if part else None, None, None)))
                except Exception as e:  # e.g. no metadata while the broker restarts
                    log.warning("send to %s failed (%r); will retry", topic, e)
                    failed.append(i)
            done = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
            for (i, _), res in zip(futures, done):
                if isinstance(res, BaseException):
                    log.warning("send to %s not acknowledged (%r); will retry", records[i][0], res)
                    failed.append(i)
                else:
                    results[i] = res
            if failed:
                # This batch's state is already changed in memory; it must not be written (nor
                # its offsets committed) before its outputs are in Kafka, so keep trying.
                self.counters["send_retries"] += len(failed)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            pending = failed
        return results

    def _outputs(self, out: Output, stage: str) -> list[tuple[str, bytes | None, bytes]]:
        records = [(self.topics["rows"], None, m) for m in encode_rows(out)]  # any partition
        self.counters["rows"] += len(out)
        for event, reason in out.rejected:
            records.append(self._dead(reason, stage, value=event.to_list()))
        return records

    def _dead(self, reason: str, stage: str, **kw) -> tuple[str, bytes | None, bytes]:
        self.counters["dead_letters"] += 1
        log.warning("dead letter from %s: %s", stage, reason)
        return (self.topics["dead-letters"], None, dead_letter(reason, stage, **kw))

    @staticmethod
    def _where(ev) -> dict:
        m = ev.message
        return {"topic": m.topic, "partition": m.partition, "offset": m.offset, "key": m.key}

    async def _commit_batch(self, records, table, slots: dict, applied: Applied) -> None:
        """Outputs, then the state, then the applied offsets, each acknowledged before the next
        is sent and all before the batch is acked. Changelog records are sent here rather than
        by ``table[key] = v``: Faust buffers those and its pre-commit flush gives up after 0.1 s
        per message, which could commit offsets ahead of the state."""
        from faust.types import TP

        await self._send_all(records)
        self._maybe_crash()
        changelog = table.changelog_topic.get_topic_name()
        persisted: dict[int, int] = {}
        # The memory store frees the keys of partitions that moved away only if it knows their
        # partition, which it records for keys it recovered but not for keys set directly.
        key_partition = getattr(table.data, "_key_partition", None)
        # The markers last: a marker must never be in the changelog without the state it covers.
        for written in (slots, applied.markers()):
            changes = [(changelog, key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), ev.message.partition)
                       for key, (ev, value) in written.items()]
            metas = await self._send_all(changes)
            for (key, (ev, value)), meta in zip(written.items(), metas):
                with _as_of(ev):  # RocksDB stores by the current event's partition
                    table.data[key] = value
                if key_partition is not None:
                    key_partition[key] = meta.partition
                persisted[meta.partition] = max(meta.offset, persisted.get(meta.partition, -1))
        for partition, offset in persisted.items():  # RocksDB: recovery resumes after these
            table.data.set_persisted_offset(TP(changelog, partition), offset)
        self.counters["batches"] += 1
        self._report()

    async def run_batch(self, body, table_name: str, batch: list) -> None:
        """One batch through a stage body, with its offsets checked (``Applied``)."""
        applied = Applied(self.app.consumer, self.tables[table_name], self.counters)
        self.running += 1
        try:
            await body(batch, applied)
        except BaseException:
            applied.hold(batch)  # cut short (cancelled, or a bug): none of it counts as done
            raise
        finally:
            self.running -= 1
        applied.hold()
        await applied.read_again()

    def _maybe_crash(self) -> None:
        # Test hook: die where at-least-once would lose rows if state were written first.
        if self.crash_after_outputs is not None and self.counters["batches"] + 1 >= self.crash_after_outputs:
            log.error("%s=%d: exiting after the outputs, before the state", CRASH_ENV, self.crash_after_outputs)
            logging.shutdown()
            os._exit(9)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report >= 10:
            self._last_report = now
            log.info("worker counters: %s", self.counters)

    # -- 1. clients -----------------------------------------------------------------------------
    async def clients(self, batch: list, applied: Applied) -> None:
        """One ``client_handle`` call per message, never per batch: after a crash the messages
        are read again in other batches, and only message-by-message steps pass through the
        same intermediate states, so the rows sent before the crash (e.g. a visit that a later
        event folds into an earlier one) get the same follow-up rows (its tombstone)."""
        records: list = []
        rows = Output()
        table = self.tables["clients"]
        slots: dict = {}
        views: dict[str, list[ClientView]] = {}
        for ev in batch:
            if not await applied.admit(ev):
                continue
            key, value = ev.message.key, ev.message.value
            try:
                events = decode_events(value)
            except Exception as e:
                records.append(self._dead(f"undecodable: {e!r}"[:500], "clients", **self._where(ev), value=value))
                continue
            good = []
            for e in events:
                reason = check_event(e)
                if reason is None and e.project_id not in self.rules:
                    reason = "unknown_project"
                if reason is None and key != f"{e.project_id}:{e.client_id}".encode():
                    reason = "key_mismatch"  # its state would live in another partition
                if reason:
                    records.append(self._dead(reason, "clients", **self._where(ev), value=e.to_list()))
                else:
                    good.append(e)
            self.counters["events"] += len(events)
            if not good:
                continue
            project_id = good[0].project_id
            slot = slots[key][1] if key in slots else _get(table, key, ev)
            try:
                slot, out, view = client_handle(slot, good, self.rules[project_id], self.click_ids[project_id])
            except Exception as e:  # a bug, not bad data: keep the evidence, keep going
                log.exception("client stage failed for %r", key)
                records.extend(self._dead(f"pipeline_error: {e!r}", "clients", **self._where(ev), value=x.to_list()) for x in good)
                continue
            rows.extend(out)
            if view is not None:
                views.setdefault(view.project_id, []).append(view)
            slots[key] = (ev, slot)
        # Views travel together (the identity stage is one partition per project), in records
        # of at most ITEMS_PER_MESSAGE, as each view carries the client's whole history.
        records.extend((self.topics["views"], project_id.encode(), pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
                       for project_id, vs in views.items() for chunk in _chunks(vs))
        records.extend(self._outputs(rows, "clients"))
        await self._commit_batch(records, table, slots, applied)

    # -- 2. identity ----------------------------------------------------------------------------
    async def identity(self, batch: list, applied: Applied) -> None:
        """A project's identity graph is rebuilt in memory from its links, and only the links
        are state: one small table key per (client, contact), so a batch writes what it added,
        never the whole graph (which grows with the project's clients)."""
        table = self.tables["graphs"]
        graphs: dict[str, IdentityGraph] = {}  # this batch's: a rebalance may drop the cache

        def decode(message) -> list:
            views = pickle.loads(message.value)
            if not isinstance(views, list) or not all(isinstance(v, ClientView) and v.project_id.encode() == message.key for v in views):
                raise ValueError("not a list of ClientViews of this key's project")
            return views

        def step(ev, view: ClientView, changes: dict):
            graph = graphs.get(view.project_id)
            if graph is None:
                graph = graphs[view.project_id] = self._graph(view.project_id, table)
            _, out, messages = identity_handle(graph, view)
            for node in view.contacts:
                changes[link_key(view.project_id, view.client_id, node)] = (ev, True)
            return out, messages

        await self._list_stage(batch, applied, "identity", "views", table, decode, step)

    def _graph(self, project_id: str, table) -> IdentityGraph:
        graph = self.graphs.get(project_id)
        if graph is None:
            graph = self.graphs[project_id] = IdentityGraph()
            prefix = project_id.encode() + b"\x00"
            t0, n = time.monotonic(), 0
            for key in table.keys():
                if key.startswith(prefix):
                    client_id, node = key[len(prefix):].rsplit(b"\x00", 1)
                    graph.link(client_id.decode(), node.decode())
                    n += 1
            if n:
                log.info("identity graph of %s rebuilt from %d links in %.2fs", project_id, n, time.monotonic() - t0)
        return graph

    # -- 3. persons -----------------------------------------------------------------------------
    async def persons(self, batch: list, applied: Applied) -> None:
        table = self.tables["persons"]

        def decode(message) -> list:
            received = pickle.loads(message.value)
            if not isinstance(received, list) or not all(isinstance(m, ToPerson) for m in received):
                raise ValueError("not a list of ToPerson")
            if any(self.partition_of(m.key.encode()) != message.partition for m in received):
                raise ValueError("a ToPerson for another partition")  # its state lives there
            return received

        def step(ev, msg: ToPerson, changes: dict):
            key = msg.key.encode()
            slot = changes[key][1] if key in changes else _get(table, key, ev)
            slot, out, messages = person_handle(slot, msg)
            changes[key] = (ev, slot)
            return out, messages

        await self._list_stage(batch, applied, "persons", "persons", table, decode, step)

    async def _list_stage(self, batch: list, applied: Applied, stage: str, counter: str, table, decode, step) -> None:
        """A batch of a stage whose messages are lists of items (views, person orders): decode
        each message, ``step(event, item, changes)`` each item, then send the rows and the orders
        for the persons topic, then ``changes`` ({table key: (event, value)}) as the state."""
        records: list = []
        rows = Output()
        orders: list[ToPerson] = []
        changes: dict = {}
        for ev in batch:
            if not await applied.admit(ev):
                continue
            try:
                items = decode(ev.message)
            except Exception as e:
                records.append(self._dead(f"undecodable: {e!r}"[:500], stage, **self._where(ev), value=ev.message.value))
                continue
            self.counters[counter] += len(items)
            for item in items:
                try:
                    out, messages = step(ev, item, changes)
                except Exception as e:  # a bug, not bad data: keep the evidence, keep going
                    log.exception("%s stage failed for %s", stage, repr(item)[:200])
                    records.append(self._dead(f"pipeline_error: {e!r}", stage, **self._where(ev), value=repr(item)[:10_000]))
                    continue
                rows.extend(out)
                orders.extend(messages)
        records.extend(self._to_persons(orders))
        records.extend(self._outputs(rows, stage))
        await self._commit_batch(records, table, changes, applied)

    def partition_of(self, key: bytes) -> int:
        """The partition Kafka's default partitioner picks for ``key`` (murmur2, as the Java
        client and aiokafka): person messages are grouped per partition, state stays put."""
        from aiokafka.partitioner import murmur2

        return (murmur2(key) & 0x7FFFFFFF) % self.partitions

    def _to_persons(self, messages: list[ToPerson]) -> list[tuple]:
        """A batch's orders travel together: records per partition of at most ITEMS_PER_MESSAGE."""
        by_partition: dict[int, list[ToPerson]] = {}
        for m in messages:
            by_partition.setdefault(self.partition_of(m.key.encode()), []).append(m)
        return [(self.topics["persons"], b"persons:%d" % p, pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL), p)
                for p, ms in by_partition.items() for chunk in _chunks(ms)]


def topic_names(prefix: str) -> dict[str, str]:
    return {name: topic_name(prefix, name) for name in TOPICS}


def app_id(prefix: str) -> str:
    return f"{prefix}-stream"


def make_app(
    cfg,
    *,
    store: str = "memory://",
    datadir: str | None = None,
    batch_max: int | None = None,
    batch_ms: int | None = None,
    session_timeout: float = 30.0,
):
    """The Faust app for ``cfg`` (a tracker.config.Config). ``store``: ``memory://`` (state only
    in the changelog topics; recovery reads them whole) or ``rocksdb://`` (local state under
    ``datadir``; recovery reads only what is newer). ``session_timeout``: how long a silent
    (killed) worker keeps its partitions before the group hands them to others."""
    import faust

    _register_pickle_codec()
    prefix = cfg.kafka.topic_prefix
    if not cfg.kafka.bootstrap:
        raise ValueError("[kafka] bootstrap is empty; set it or SKVOZ_KAFKA_BOOTSTRAP")
    brokers = [f"kafka://{h.strip()}" for h in cfg.kafka.bootstrap.split(",") if h.strip()]
    partitions = cfg.kafka.partitions
    timing = dict(broker_session_timeout=session_timeout, broker_heartbeat_interval=min(3.0, session_timeout / 10),
                  broker_rebalance_timeout=max(2 * session_timeout, 10.0))
    datadir = datadir or str(Path(cfg.data_dir) / "worker")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id(prefix),
        broker=brokers,
        store=store,
        datadir=datadir,
        topic_partitions=partitions,
        topic_replication_factor=cfg.kafka.replication,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",  # made exact by ordering; see the module docstring
        producer_acks=-1,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        producer_request_timeout=max(cfg.kafka.ack_timeout_ms / 1000, 30.0),
        table_standby_replicas=0,
        broker_commit_interval=0.5,
        # A broker that just restarted can answer metadata without our topics; a rebalance then
        # assigns nothing, and only the next metadata refresh (5 min by default) heals it.
        consumer_metadata_max_age_ms=10_000,
        stream_wait_empty=True,  # finish the batch in hand before a rebalance or stop
        **timing,
    )
    names = topic_names(prefix)

    def raw_topic(name: str):
        return app.topic(names[name], key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=partitions, internal=False)

    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    tables = {}
    for name in TABLES:
        table = app.Table(name, default=None, partitions=partitions, key_type=bytes, extra_topic_configs=big)
        # Faust takes a table's value codec from its value type; set it by hand, and make the
        # changelog topic again (registering the table already made one with JSON).
        table.value_serializer = PICKLE_CODEC
        table._changelog_topic = None
        assert table.changelog_topic.value_serializer == PICKLE_CODEC
        tables[name] = table
    stages = Stages(app, cfg, names, tables)
    within = (batch_ms if batch_ms is not None else cfg.pipeline.batch_max_ms) / 1000
    # Messages per batch: bigger batches mean fewer views and person messages for the same
    # clients (one per client per batch) and fewer changelog writes of the same key.
    batch_max = batch_max or min(cfg.pipeline.batch_max_events, 10_000)

    async def run(body, table_name: str, stream) -> None:
        async for batch in stream.take_events(batch_max, within=within):
            await stages.run_batch(body, table_name, batch)

    @app.agent(raw_topic("events"), name="skvoz-clients")
    async def clients_agent(stream):
        await run(stages.clients, "clients", stream)

    @app.agent(raw_topic("views"), name="skvoz-identity")
    async def identity_agent(stream):
        await run(stages.identity, "graphs", stream)

    @app.agent(raw_topic("persons"), name="skvoz-persons")
    async def persons_agent(stream):
        await run(stages.persons, "persons", stream)

    sources = {names["events"]: "clients", names["views"]: "graphs", names["persons"]: "persons"}
    stalled: dict = {}

    @app.timer(5.0)
    async def _read_again_stalled() -> None:
        """A partition whose log goes on past what its table applied, with no batch running
        and no progress for two ticks, is read again from the next offset to apply. ``Applied``
        catches skipped messages when a later one arrives; this catches a skipped tail, and a
        partition Faust stopped delivering (after a rebalance that kept it on this worker, acks
        of a cut-short batch can leave it waiting for offsets it never redelivers)."""
        if app.rebalancing or getattr(app, "in_recovery", False) or stages.running:
            stalled.clear()
            return
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in sources]
        ends = await consumer.highwaters(*tps) if tps else {}
        for tp in tps:
            table = tables[sources[tp.topic]]
            last = table.get(APPLIED_KEY % tp.partition)
            want = last + 1 if last is not None else await log_start(consumer, tp)
            if want >= (ends.get(tp) or 0) or stages.running:
                stalled.pop(tp, None)
            elif stalled.get(tp) == want:
                log.warning("%s: nothing applied after offset %d for 10 s; reading again from it", tp, want - 1)
                stages.counters["gaps"] += 1
                await consumer.seek(tp, want)
                del stalled[tp]
            else:
                stalled[tp] = want

    heartbeat = Path(datadir) / HEARTBEAT_FILE

    @app.timer(5.0)
    async def _heartbeat() -> None:
        heartbeat.touch()

    @app.on_partitions_revoked.connect
    async def _forget_graphs(app, revoked, **kwargs) -> None:
        # Another worker may add links to a revoked project; rebuild from the table if it returns.
        stages.graphs.clear()

    @app.on_before_shutdown.connect
    async def _final_counters(app, **kwargs) -> None:
        stages._report(force=True)

    app.skvoz_stages = stages  # for logs and tests
    return app


# -- topics and the worker process -------------------------------------------------------------------


async def ensure_topics(bootstrap: str, prefix: str, partitions: int, replication: int,
                        names: Iterable[str] = ("events", "views", "persons", "rows", "dead-letters"),
                        worker: bool = False, timeout: float = 60.0) -> list[str]:
    """Create the missing topics (and with ``worker`` the tables' changelogs and Faust's
    assignor topic, so a first start does not race Faust's own creation of them) and wait until
    every partition has a leader. An existing topic with another partition count is an error
    (keys would land on other partitions than their state). Returns the names created."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    wanted: dict[str, tuple[int, dict]] = {topic_name(prefix, n): (partitions, big) for n in names}
    keyed = {topic_name(prefix, n) for n in ("events", "views", "persons")}
    if worker:
        for table in TABLES:
            name = f"{app_id(prefix)}-{table}-changelog"
            wanted[name] = (partitions, {**big, "cleanup.policy": "compact"})
            keyed.add(name)
        wanted[f"{app_id(prefix)}-__assignor-__leader"] = (1, {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        have = {}
        for t in await admin.describe_topics(list(wanted)):
            if t.get("error_code", 0) == 0 and t.get("partitions"):
                have[t["topic"]] = len(t["partitions"])
        for name, count in have.items():
            if name in keyed and count != partitions:
                raise RuntimeError(f"topic {name} has {count} partitions, [kafka] partitions is {partitions}; "
                                   "they must match (the state is partitioned like the topic)")
        missing = [n for n in wanted if n not in have]
        if missing:
            try:
                await admin.create_topics([NewTopic(n, num_partitions=wanted[n][0], replication_factor=replication,
                                                    topic_configs=wanted[n][1]) for n in missing])
            except TopicAlreadyExistsError:
                pass  # another process was quicker
    finally:
        await admin.close()
    # Created is not yet served: wait until every partition answers (has a leader).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    await asyncio.sleep(0)
    try:
        tps = [TopicPartition(n, p) for n, (count, _) in wanted.items() for p in range(count)]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if len(await consumer.end_offsets(tps)) == len(tps):
                    break
            except KafkaError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not served {timeout:.0f}s after creating them: {missing}")
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
    return missing


def heartbeat_path(cfg) -> Path:
    return Path(cfg.data_dir) / "worker" / HEARTBEAT_FILE


def heartbeat_age(cfg) -> float | None:
    """Seconds since this machine's worker last showed its event loop running; None if never."""
    try:
        return max(0.0, time.time() - heartbeat_path(cfg).stat().st_mtime)
    except FileNotFoundError:
        return None


def fix_faust_recovery_race() -> None:
    """Work around a faust-streaming (0.15.3) race that silently skips events.

    After table recovery, ``Recovery.on_recovery_completed`` resumes the stream partitions and
    only then awaits the seek to the committed offsets, while the flow is already running (it was
    resumed to read the changelogs). Records fetched in that window reach the stream, are thrown
    away by the seek's flow reset, and when fetched again the consumer drops them as already read
    ("DROPPED MESSAGE ROFF" with DEVLOG=1): 1-14 events lost in ~30% of worker restarts with a
    backlog (tests/test_kafka_harness.py). Stopping the flow first closes the window; nothing has
    been processed from the stream partitions yet at that point (they are paused in recovery).
    """
    from faust.tables.recovery import Recovery

    if getattr(Recovery.on_recovery_completed, "_skvoz_fixed", False):
        return
    original = Recovery.on_recovery_completed

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        # Only for the current generation: for a stale one the original returns early without
        # resuming, and the next rebalance's recovery resumes the flow itself.
        if self.app.consumer_generation_id == generation_id:
            self.app.flow_control.suspend()
            self.app.consumer.stop_flow()
        await original(self, generation_id)  # resumes partitions, seeks, then resumes the flow

    on_recovery_completed._skvoz_fixed = True
    Recovery.on_recovery_completed = on_recovery_completed


def run_worker(cfg, *, store: str = "memory://", loglevel: str = "INFO", session_timeout: float = 30.0) -> int:
    """``skvoz worker``: create missing topics, then run the Faust worker until SIGTERM/SIGINT."""
    import faust

    fix_faust_recovery_race()

    created = asyncio.run(ensure_topics(cfg.kafka.bootstrap, cfg.kafka.topic_prefix,
                                        cfg.kafka.partitions, cfg.kafka.replication, worker=True))
    if created:
        log.info("created topics: %s", ", ".join(created))
    app = make_app(cfg, store=store, session_timeout=session_timeout)
    heartbeat_path(cfg).touch()  # alive from the start: recovering tables can take a while
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0
