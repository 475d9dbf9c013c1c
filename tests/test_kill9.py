"""kill -9 right after the last 202: every acknowledged event is counted exactly once after a
restart on the same data_dir (the log is written before the 202; the restart replays it).

Each client gets its own utm_source, so the channels report grouped by source shows each
acknowledged request's events individually: one visit and one conversion per client, never
two, and never a client that was not sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.plugins.server import BROWSER_UA

pytestmark = pytest.mark.slow

WORKERS = 4
REQUESTS = 80
IMPORT_CLIENTS = 25  # an import request carries 25 clients, 50 events


def batch(run: str, r: int) -> tuple[str, list[dict]]:
    """Request r: even ones go to /collect (one client, as a browser), odd ones to the import
    (many clients). Each client: an ad landing with its own utm_source, then a signup goal."""
    now = int(time.time() * 1000)
    events = []
    for c in range(1 if r % 2 == 0 else IMPORT_CLIENTS):
        src = f"k9{run}r{r}c{c}"
        cid = f"k9-{run}-{r}-{c}"
        events.append({"id": str(uuid.uuid4()), "type": "pageview", "ts": now, "cid": cid,
                       "src": src,
                       "url": f"https://shop.example.ru/k9?utm_source={src}&utm_medium=cpc"})
        events.append({"id": str(uuid.uuid4()), "type": "goal", "ts": now + 1, "cid": cid,
                       "url": "https://shop.example.ru/k9", "name": "signup"})
    return ("collect" if r % 2 == 0 else "import"), events


async def send_until_killed(server, run: str) -> tuple[set[str], set[str]]:
    """(sources acknowledged with a 202, sources sent). Whichever worker receives the
    (REQUESTS - WORKERS + 1)-th 202 SIGKILLs the server at once; the other workers may still
    have requests open, which then count as sent but not acknowledged."""
    acked: set[str] = set()
    sent: set[str] = set()
    todo = list(range(REQUESTS))
    acked_requests = 0
    killed = asyncio.Event()

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal acked_requests
        while todo and not killed.is_set():
            r = todo.pop()
            kind, events = batch(run, r)
            sources = {e.pop("src") for e in events if "src" in e}
            sent.update(sources)
            try:
                if kind == "collect":
                    ok = await post_collect(http, server, events)
                else:
                    ok = await post_import(http, server, events)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the server died under this request: not acknowledged
            if ok and not killed.is_set():
                acked.update(sources)
                acked_requests += 1
                if acked_requests == REQUESTS - WORKERS + 1:
                    server.kill()  # synchronous: nothing else runs on this loop meanwhile
                    killed.set()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"User-Agent": BROWSER_UA}) as http:
        await asyncio.gather(*(worker(http) for _ in range(WORKERS)))
    assert killed.is_set(), "the kill point was never reached"
    return acked, sent


async def post_import(http, server, events: list[dict]) -> bool:
    lines = "\n".join(json.dumps({"site": server.site_key, "client_id": e.pop("cid"), **e})
                      for e in events)
    async with http.post(server.base_url + "/api/v1/import/events", data=lines,
                         headers={"Authorization": f"Bearer {server.token}"}) as r:
        if r.status != 202:
            return False
        body = await r.json()
        assert body["accepted"] == len(events) and body["rejected"] == [], body
        return True


async def post_collect(http, server, events: list[dict]) -> bool:
    cid = events[0]["cid"]
    for e in events:
        e.pop("cid")
    body = {"site": server.site_key, "client_id": cid, "events": events}
    async with http.post(server.base_url + "/collect", json=body) as r:
        if r.status != 202:
            return False
        body = await r.json()
        assert body["accepted"] == len(events) and body["rejected"] == [], body
        return True


async def counted(server, prefix: str) -> dict[str, tuple[int, int]]:
    today = datetime.now(ZoneInfo("Europe/Moscow")).date()
    params = {"project": server.project, "from": str(today - timedelta(days=1)),
              "to": str(today + timedelta(days=1)), "model": "last_click", "group_by": "source"}
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + "/api/v1/reports/channels", params=params,
                            headers={"Authorization": f"Bearer {server.token}"}) as r:
            assert r.status == 200, await r.text()
            rows = (await r.json())["rows"]
    return {x["source"]: (x["visits"], x["conversions"]) for x in rows
            if x["source"].startswith(prefix)}


def check(acked: set[str], sent: set[str], got: dict[str, tuple[int, int]]) -> None:
    missing = acked - set(got)
    assert not missing, f"{len(missing)} acknowledged clients lost, e.g. {sorted(missing)[:5]}"
    twice = {s: v for s, v in got.items() if v != (1, 1)}
    assert not twice, f"counted more than once: {dict(list(twice.items())[:5])}"
    assert set(got) <= sent


async def test_kill9_loses_no_acknowledged_event(skvoz_server_factory):
    server = skvoz_server_factory().start()
    acked, sent = await send_until_killed(server, "a")
    assert len(acked) >= REQUESTS - WORKERS + 1
    first_log = server.log()

    server.start()  # same data_dir: replay from the checkpoint
    server.wait_processed(timeout=60)
    got = await counted(server, "k9")
    check(acked, sent, got)

    # once more, on top of the recovered state
    acked_b, sent_b = await send_until_killed(server, "b")
    server.start()
    server.wait_processed(timeout=60)
    got = await counted(server, "k9")
    check(acked | acked_b, sent | sent_b, got)
    assert server.stop() == 0, first_log
