"""State shared by all collectors, in Redis: a per-site rate limit and an event-id dedup window.

Both only save load; correctness never depends on Redis (the pipeline dedups by event id). When
Redis fails, requests go through unchecked and the failure is counted; after a failure Redis is
left alone for a moment, so a dead Redis costs one timeout per second, not one per request.

An id goes through three states: absent, *claimed* (a collector is publishing it; the value is
that request's token, expiring after the ack bound plus a margin) and *published* (``"d"``, kept
for ``[redis] dedup_window_s``). A claim becomes published only after Kafka acknowledged the
event, and a failed publish deletes its claims, so a retry after a 503 is never mistaken for a
duplicate. A request meeting an id claimed by another request is answered 503 (retry soon): had
it been answered 202 and the other publish failed, the event would be lost.

Calls of concurrent requests are coalesced: while one pipeline is on the wire, the next calls
queue up and leave together in the next one. redis-py costs a few hundred microseconds of CPU
per round trip, as much as the rest of a 1-event request, so under load this is what keeps
Redis from halving a collector's throughput.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

log = logging.getLogger("skvoz.edge")

# KEYS[1]: the site's counter for this second (unused when the limit is 0); KEYS[2..]: one per
# event id. ARGV: events in the request, limit per second (0 = none), claim ms, claim token.
# Returns -1 when over the limit (nothing claimed), else per id 0 claimed / 1 published / 2 claimed
# by another request. One round trip, and atomic: two collectors cannot both claim an id.
_ADMIT = """
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit > 0 then
  local used = redis.call('INCRBY', KEYS[1], n)
  if used == n then redis.call('PEXPIRE', KEYS[1], 2000) end
  if used - n >= limit then return -1 end
end
local out = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[4], 'NX', 'PX', ARGV[3]) then
    out[i - 1] = 0
  elseif redis.call('GET', KEYS[i]) == 'd' then
    out[i - 1] = 1
  else
    out[i - 1] = 2
  end
end
return out
"""

# KEYS: the claimed ids, now acknowledged by Kafka; ARGV[1]: the dedup window in ms.
_CONFIRM = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], 'd', 'PX', ARGV[1]) end
return #KEYS
"""


@dataclass(slots=True)
class Admission:
    limited: bool = False
    checked: bool = True  # False: Redis was unavailable, nothing was checked or claimed
    claimed: list[str] = field(default_factory=list)  # Redis keys this request holds
    duplicates: set[str] = field(default_factory=set)  # event ids published before
    in_flight: int = 0  # ids another request is publishing right now


class EdgeState:
    def __init__(self, url: str, *, dedup_window_s: int, rate_limit_per_site: int,
                 claim_ms: int, prefix: str = "skvoz", timeout_s: float = 0.5,
                 pause_after_error_s: float = 1.0) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No client-side retries: a request must not wait through redis-py's backoff schedule.
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self.url = url
        self.window_ms = dedup_window_s * 1000
        self.limit = rate_limit_per_site
        self.claim_ms = claim_ms
        self.prefix = prefix
        self.pause_after_error_s = pause_after_error_s
        self._paused_until = 0.0
        self._token = "c:" + secrets.token_hex(6)
        self.last_error = ""
        self.counters = {"checked_events": 0, "unchecked_events": 0, "duplicates": 0,
                         "in_flight_conflicts": 0, "rate_limited_requests": 0,
                         "rate_limited_events": 0, "redis_errors": 0, "round_trips": 0}
        # queued calls: (method name, args, kwargs, future of the reply); one flusher at a time
        self._queue: list[tuple[str, tuple, dict, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def _call(self, method: str, *args, **kwargs):
        """Run one command in the next coalesced pipeline; raises what Redis or the
        connection raised."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((method, args, kwargs, fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for method, args, kwargs, _ in batch:
                            getattr(pipe, method)(*args, **kwargs)
                        replies = await pipe.execute(raise_on_error=False)
                    self.counters["round_trips"] += 1
                except Exception as e:  # the connection failed: every call of the batch did
                    replies = [e] * len(batch)
                for (*_, fut), reply in zip(batch, replies):
                    if fut.done():  # the caller went away
                        continue
                    if isinstance(reply, Exception):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
        finally:
            self._flusher = None
            for *_, fut in self._queue:  # only when cancelled (close)
                if not fut.done():
                    fut.cancel()
            self._queue = []

    def _key(self, project_id: str, event_id: str) -> str:
        return f"{self.prefix}:seen:{project_id}:{event_id}"

    def _available(self) -> bool:
        return time.monotonic() >= self._paused_until

    def _failed(self, op: str, e: Exception) -> None:
        self.counters["redis_errors"] += 1
        self._paused_until = time.monotonic() + self.pause_after_error_s
        self.last_error = f"{op}: {type(e).__name__}: {e}"
        log.warning("Redis at %s failed (%s); going on without it for %.1fs",
                    self.url, self.last_error, self.pause_after_error_s)

    async def admit(self, site_key: str, project_id: str, event_ids: list[str]) -> Admission:
        """Rate-limit the site and claim the ids that are new. Never raises for Redis trouble."""
        n = len(event_ids)
        if not self._available():
            self.counters["unchecked_events"] += n
            return Admission(checked=False)
        keys = [self._key(project_id, i) for i in event_ids]
        rate_key = f"{self.prefix}:rate:{site_key}:{int(time.time())}"
        try:
            res = await self._call("eval", _ADMIT, n + 1, rate_key, *keys,
                                   n, self.limit, self.claim_ms, self._token)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # redis.RedisError, OSError, a timeout: go on unchecked
            self._failed("admit", e)
            self.counters["unchecked_events"] += n
            return Admission(checked=False)
        self.counters["checked_events"] += n
        if res == -1:
            self.counters["rate_limited_requests"] += 1
            self.counters["rate_limited_events"] += n
            return Admission(limited=True)
        adm = Admission()
        for event_id, key, state in zip(event_ids, keys, res):
            if state == 0:
                adm.claimed.append(key)
            elif state == 1:
                adm.duplicates.add(event_id)
            else:
                adm.in_flight += 1
        self.counters["duplicates"] += len(adm.duplicates)
        if adm.in_flight:
            self.counters["in_flight_conflicts"] += adm.in_flight
        return adm

    async def confirm(self, adm: Admission) -> None:
        """Kafka acknowledged the claimed ids: remember them as published for the window."""
        if not adm.claimed:
            return
        try:
            await self._call("eval", _CONFIRM, len(adm.claimed), *adm.claimed, self.window_ms)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the ids stay claimed until their claim expires: harmless
            self._failed("confirm", e)

    async def release(self, adm: Admission) -> None:
        """The publish failed: drop the claims so the client's retry is not a 'duplicate'."""
        if not adm.claimed:
            return
        try:
            await self._call("delete", *adm.claimed)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the claims expire by themselves after claim_ms
            self._failed("release", e)

    def stats(self) -> dict[str, float]:
        return {**self.counters, "available": int(self._available())}

    def health(self) -> dict:
        out: dict = {"available": self._available(), **self.counters}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        close = getattr(self.client, "aclose", None) or self.client.close  # redis < 5.0.1: close
        try:
            await close()
        except Exception:
            pass
