"""The embedded default: a local durable log and one processor thread running the pure pipeline.

Durability: ``submit`` returns after the events are ``write()``-n to the log file, so a
``kill -9`` of the process loses nothing that was acknowledged (the kernel keeps the page
cache). The processor reads the log in batches, runs ``Pipeline.process``, hands the rows to
``write`` (ClickHouse) and only then records the offset it reached in ``checkpoint``.

Recovery: ``state.pickle`` holds the pipeline state and the log offset it covers. On start it
is loaded and the log is replayed from that offset: events before the checkpoint rebuild state
silently (their rows are already written), events after it are written as usual. Versions in
rows depend only on the set of events, so rows written twice resolve to one.

No Kafka, HTTP or ClickHouse imports: ``write`` is injected.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Callable

from .codec import decode_events, encode_events
from .model import EVENT_TYPES, Event, Output

from .pipeline import Pipeline, State
from .rules import ProjectRules

log = logging.getLogger("skvoz.pipeline")

MAX_EVENTS_PER_LINE = 1000
WRITE_SHARE_INVERSE = 4  # a batch cycle lasts at least 4x its write: writes <= ~25% of the time
PACE_MAX_S = 0.8
_READ_CHUNK = 8 << 20


class LocalLog:
    """Append-only file of lines, each a list of events in the Kafka wire format (streams.codec)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._drop_torn_tail()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._rfd = os.open(path, os.O_RDONLY)
        self._end = os.fstat(self._fd).st_size
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)
        self.appended_events = 0  # since open, counted under the lock (callers are threads)

    def _drop_torn_tail(self) -> None:
        # A last line without its newline was being written when the process died: its
        # submit() never returned, so it was never acknowledged and may go.
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            pos = size
            while pos > 0:
                step = min(pos, 1 << 16)
                f.seek(pos - step)
                chunk = f.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            if pos != size:
                log.warning("log %s: dropping %d bytes of an unfinished write", self.path, size - pos)
                f.truncate(pos)

    @property
    def end(self) -> int:
        return self._end

    def append(self, events: list[Event]) -> int:
        """Write events durably (against process death); the log's new end offset."""
        data = b"".join(
            encode_events(events[i : i + MAX_EVENTS_PER_LINE]) + b"\n"
            for i in range(0, len(events), MAX_EVENTS_PER_LINE)
        )
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._end += len(data)
            self.appended_events += len(events)
            self._grew.notify_all()
            return self._end

    def wait(self, offset: int, timeout: float) -> bool:
        """True once the log extends past ``offset``."""
        with self._lock:
            if self._end > offset:
                return True
            self._grew.wait(timeout)
            return self._end > offset

    def wake(self) -> None:
        with self._lock:
            self._grew.notify_all()

    def read(self, offset: int, upto: int | None = None) -> tuple[list[bytes], int]:
        """Complete lines from ``offset`` (not past ``upto``), and the offset after them."""
        end = self._end if upto is None else min(upto, self._end)
        size = min(end - offset, _READ_CHUNK)
        if size <= 0:
            return [], offset
        data = os.pread(self._rfd, size, offset)
        cut = data.rfind(b"\n") + 1
        while cut == 0 and offset + size < end:  # one line longer than a chunk
            size = min(size * 2, end - offset)
            data = os.pread(self._rfd, size, offset)
            cut = data.rfind(b"\n") + 1
        return data[:cut].splitlines(), offset + cut

    def close(self, sync: bool = True) -> None:
        if sync:
            os.fsync(self._fd)
        os.close(self._fd)
        os.close(self._rfd)


def check_event(event: Event) -> str | None:
    """Why the pipeline cannot take this event, or None. Guards against a corrupt log."""
    if event.type not in EVENT_TYPES:
        return "unknown_type"
    if not isinstance(event.ts, int) or not isinstance(event.received_at, int):
        return "bad_timestamp"
    if not event.event_id or not event.client_id or not event.project_id:
        return "missing_id"
    return None


class Runtime:
    """Log + processor thread + snapshots, around one Pipeline."""

    def __init__(
        self,
        rules: dict[str, ProjectRules],
        data_dir: Path,
        write: Callable[[Output], None],
        batch_max_events: int = 20_000,
        batch_max_ms: int = 200,
        snapshot_every_s: int = 300,
    ) -> None:
        self.rules = rules
        self.dir = Path(data_dir) / "pipeline"
        self.write = write
        self.batch_max_events = batch_max_events
        self.batch_max_ms = batch_max_ms
        self.snapshot_every_s = snapshot_every_s
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self.log: LocalLog | None = None
        self.counters = {"processed": 0, "written_rows": 0, "dead_letters": 0, "write_errors": 0, "batches": 0}
        self.last_error = ""

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = LocalLog(self.dir / "events.log")
        state, self._offset = self._load_snapshot()
        self._written = max(self._read_checkpoint(), self._offset)
        self.pipeline = Pipeline(self.rules, state)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="skvoz-pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Process what was submitted, write it, snapshot."""
        if self._thread is None:
            return
        self._stopping.set()
        self.log.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("pipeline did not drain in %.0fs; the log will be replayed on start", timeout)
        self._thread = None
        self.log.close()

    def submit(self, events: list[Event]) -> None:
        if self._thread is None or self._stopping.is_set():
            raise RuntimeError("the pipeline is not running")
        if events:
            self.log.append(events)

    def wait_idle(self, timeout: float) -> bool:
        """True when everything submitted so far is written to the sink."""
        deadline = time.monotonic() + timeout
        target = self.log.end
        with self._idle:
            while self._written < target or self._offset < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stats(self) -> dict:
        return {
            **self.counters,
            "submitted": self.log.appended_events if self.log else 0,
            "log_end": self.log.end if self.log else 0,
            "processed_offset": getattr(self, "_offset", 0),
            "written_offset": getattr(self, "_written", 0),
            "lag_bytes": (self.log.end - self._offset) if self.log else 0,
            "last_error": self.last_error,
            "running": self._thread is not None and self._thread.is_alive(),
        }

    # -- the processor ----------------------------------------------------------------------------
    def _run(self) -> None:
        last_snapshot = time.monotonic()
        wait_s = self.batch_max_ms / 1000
        started = 0.0
        write_s = 0.0
        while True:
            if not self.log.wait(self._offset, wait_s):
                if self._stopping.is_set():
                    break
                continue
            # Under steady load let the next batch gather: an insert costs ClickHouse about the
            # same (a new part per table) for 30 rows as for 3000, so writing every few ms would
            # spend the CPU the collector needs. Writes take at most about a quarter of the time,
            # and a batch waits no more than PACE_MAX_S, which keeps reports fresh within a second.
            cycle = min(max(wait_s, WRITE_SHARE_INVERSE * write_s), PACE_MAX_S)
            pause = started + cycle - time.monotonic()
            if pause > 0 and self.log.end - self._offset < _READ_CHUNK and not self._stopping.is_set():
                self._stopping.wait(pause)
            started = time.monotonic()
            replaying = self._offset < self._written
            lines, end = self.log.read(self._offset, upto=self._written if replaying else None)
            events = self._decode(lines)
            out = self._process(events)
            before_write = time.monotonic()
            if not replaying and not self._write(out):
                break  # stopping while the sink is down: the log keeps the events
            write_s = time.monotonic() - before_write
            self._offset = end
            if not replaying:
                self._written = end
                self._save_checkpoint()
            self.counters["processed"] += len(events)
            self.counters["batches"] += 1
            # The state is millions of long-lived objects without cycles: keep the cyclic GC
            # from re-scanning them on every full collection (it dominated processing time).
            gc.freeze()
            with self._idle:
                self._idle.notify_all()
            if time.monotonic() - last_snapshot >= self.snapshot_every_s and not replaying:
                self._save_snapshot()
                last_snapshot = time.monotonic()
        if self._offset == self._written:
            self._save_snapshot()

    def _decode(self, lines: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            try:
                events.extend(decode_events(line))
            except (ValueError, TypeError) as e:
                self._dead_letter(line.decode("utf-8", "replace"), f"undecodable: {e}")
        return events

    def _process(self, events: list[Event]) -> Output:
        good = []
        for event in events:
            reason = check_event(event)
            if reason:
                self._dead_letter(event.to_list(), reason)
            else:
                good.append(event)
        try:
            out = self.pipeline.process(good)
        except Exception as e:  # a bug, not bad data: keep the stream going, keep the evidence
            log.exception("pipeline failed on a batch of %d events", len(good))
            self.last_error = f"pipeline: {e!r}"
            for event in good:
                self._dead_letter(event.to_list(), f"pipeline_error: {e!r}")
            return Output()
        for event, reason in out.rejected:
            self._dead_letter(event.to_list(), reason)
        return out

    def _write(self, out: Output) -> bool:
        if not len(out):
            return True
        delay = 0.05
        give_up = None
        while True:
            try:
                self.write(out)
                self.counters["written_rows"] += len(out)
                return True
            except Exception as e:  # the sink is down or refused: retry the same rows
                self.counters["write_errors"] += 1
                self.last_error = f"write: {e!r}"
                log.warning("writing %d rows failed (%r); retrying in %.2fs", len(out), e, delay)
                if self._stopping.is_set():
                    give_up = give_up or time.monotonic() + 10
                    if time.monotonic() > give_up:
                        return False
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dead_letter(self, payload, reason: str) -> None:
        self.counters["dead_letters"] += 1
        with open(self.dir / "dead-letters.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"reason": reason, "event": payload, "at": int(time.time() * 1000)}, ensure_ascii=False) + "\n")

    # -- checkpoint and snapshot ----------------------------------------------------------------
    def _read_checkpoint(self) -> int:
        try:
            return int((self.dir / "checkpoint").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _save_checkpoint(self) -> None:
        _atomic_write(self.dir / "checkpoint", str(self._written).encode())

    def _load_snapshot(self) -> tuple[State, int]:
        path = self.dir / "state.pickle"
        try:
            # Changed project settings (goals, timeout, domains) apply to events from now on,
            # as in Metrica; rows already written keep the settings they were derived with.
            with open(path, "rb") as f:
                gc.disable()  # millions of small objects: collections during the load only cost time
                try:
                    offset, state = pickle.load(f)
                finally:
                    gc.enable()
                    gc.freeze()
            return state, offset
        except FileNotFoundError:
            return State(), 0
        except Exception as e:  # damaged snapshot: the log has everything
            log.warning("snapshot %s unreadable (%r); rebuilding state from the log", path, e)
            return State(), 0

    def _save_snapshot(self) -> None:
        started = time.monotonic()
        # A full collection now and then frees cycles that were frozen with the state.
        gc.unfreeze()
        gc.collect()
        gc.disable()  # pickling allocates a large memo; collections during it only cost time
        try:
            data = pickle.dumps((self._offset, self.pipeline.state), protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            gc.enable()
            gc.freeze()
        _atomic_write(self.dir / "state.pickle", data)
        log.info("snapshot at offset %d: %d bytes in %.2fs", self._offset, len(data), time.monotonic() - started)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
