"""End to end over HTTP against a real `skvoz run` subprocess (embedded runtime + chdb).

Four people: A lands from a Yandex ad, signs up and leaves a phone; B comes from Google, leaves,
returns directly 2 h later and sends a form; C arrives directly on the second site and sends a
form; D is imported history from a VK ad that signed up two days ago. Models then disagree
only about B's form: last click credits the direct return, first click and last significant
click credit Google.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.plugins.server import BROWSER_UA

pytestmark = pytest.mark.slow

MIN = 60_000
H = 60 * MIN
NOW = int(time.time() * 1000)
TODAY = datetime.now(ZoneInfo("Europe/Moscow")).date()
RANGE = {"from": str(TODAY - timedelta(days=4)), "to": str(TODAY + timedelta(days=1))}


def ev(type_: str, ts: int, url: str = "", referrer: str = "", **kw) -> dict:
    return {"id": str(uuid.uuid4()), "type": type_, "ts": ts, "url": url, "referrer": referrer,
            "title": "", **kw}


SHOP, BLOG = "https://shop.example.ru", "https://blog.example.ru"
A_LAND = f"{SHOP}/courses/python?utm_source=yandex&utm_medium=cpc&utm_campaign=spring&yclid=77"
A = [
    ev("pageview", NOW - 2 * H, A_LAND, "https://yandex.ru/"),
    ev("pageview", NOW - 2 * H + 30_000, f"{SHOP}/pricing", A_LAND),
    ev("goal", NOW - 2 * H + MIN, f"{SHOP}/pricing", name="signup", props={"value": 1500}),
    ev("goal", NOW - 2 * H + 90_000, f"{SHOP}/pricing", name="scroll"),  # not a conversion goal
    ev("form", NOW - 2 * H + 2 * MIN, f"{SHOP}/pricing", name="callback",
       contact={"phone": "8 (912) 345-67-89", "name": "Anna"}),
]
B1 = [ev("pageview", NOW - 3 * H, f"{SHOP}/courses/js", "https://www.google.com/")]
B2 = [
    ev("pageview", NOW - H, f"{SHOP}/"),
    ev("form", NOW - H + MIN, f"{SHOP}/", name="callback", contact={"email": "B@Example.com"}),
]
C = [
    ev("pageview", NOW - 30 * MIN, f"{BLOG}/"),
    ev("form", NOW - 29 * MIN, f"{BLOG}/", name="question",
       contact={"phone": "+7 999 111-22-33", "email": "broken"}),
]
D_IMPORT = [
    {"site": "shop.example.ru", "client_id": "client-d",
     **ev("pageview", NOW - 48 * H, f"{SHOP}/courses/data?utm_source=vk&utm_medium=cpc")},
    {"site": "shop.example.ru", "client_id": "client-d",
     **ev("goal", NOW - 48 * H + MIN, f"{SHOP}/courses/data", name="signup")},
]

# (client_id, site key attr, events, Origin, content type)
COLLECTS = [
    ("client-a", "site_key", A, SHOP, "application/json"),
    ("client-b", "site_key", B1, SHOP, "text/plain;charset=UTF-8"),
    ("client-b", "site_key", B2, "https://www.shop.example.ru", "text/plain;charset=UTF-8"),
    ("client-c", "site_key_2", C, "https://www.blog.example.ru", "application/json"),
]

EXPECTED_BY_TYPE = {  # type -> (visits, conversions, leads)
    "last_click": {"ad": (2, 3, 1), "organic": (1, 0, 0), "direct": (2, 2, 2)},
    "first_click": {"ad": (2, 3, 1), "organic": (1, 1, 1), "direct": (2, 1, 1)},
    "last_significant_click": {"ad": (2, 3, 1), "organic": (1, 1, 1), "direct": (2, 1, 1)},
}


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"User-Agent": BROWSER_UA}) as s:
        yield s


async def send_all(http, server) -> list[dict]:
    replies = []
    for cid, key_attr, events, origin, ctype in COLLECTS:
        body = {"site": getattr(server, key_attr), "client_id": cid, "events": events}
        async with http.post(server.base_url + "/collect", data=json.dumps(body),
                             headers={"Origin": origin, "Content-Type": ctype}) as r:
            assert r.status == 202, await r.text()
            assert r.headers["Access-Control-Allow-Origin"] == origin
            replies.append(await r.json())
    lines = "\n".join(json.dumps(x) for x in D_IMPORT)
    async with http.post(server.base_url + "/api/v1/import/events", data=lines,
                         headers={"Authorization": f"Bearer {server.token}",
                                  "Content-Type": "application/x-ndjson"}) as r:
        assert r.status == 202, await r.text()
        replies.append(await r.json())
    return replies


async def report(http, server, name: str, params) -> dict:
    params = [("project", server.project), *RANGE.items(), *params]
    async with http.get(f"{server.base_url}/api/v1/reports/{name}", params=params,
                        headers={"Authorization": f"Bearer {server.token}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def by_type(body: dict) -> dict:
    return {r["type"]: (r["visits"], r["conversions"], r["leads"]) for r in body["rows"]}


FUNNEL = [("steps", "pageview:/courses*"), ("steps", "goal:signup"), ("steps", "form:*"),
          ("window", str(3 * 86400))]


async def all_reports(http, server) -> dict:
    out = {}
    for model in EXPECTED_BY_TYPE:
        for group_by in ("type", "source", "source,medium", "source,medium,campaign"):
            out[(model, group_by)] = await report(
                http, server, "channels", [("model", model), ("group_by", group_by)])
    out["funnel"] = await report(http, server, "funnel", FUNNEL)
    out["funnel_by_source"] = await report(http, server, "funnel", FUNNEL + [("group_by", "source")])
    return out


async def test_reports_from_collect_and_import_and_replay(skvoz_server, http):
    server = skvoz_server
    replies = await send_all(http, server)
    assert [r["accepted"] for r in replies] == [5, 1, 2, 2, 2]
    assert all(r["rejected"] == [] for r in replies)
    # C's broken email is dropped from the kept form, and said so
    assert replies[3]["warnings"] == [{"index": 1, "reason": "invalid_contact", "field": "email",
                                       "detail": "email: not a valid email address"}]
    assert [r["client_id"] for r in replies[:4]] == ["client-a", "client-b", "client-b", "client-c"]
    server.wait_processed()

    first = await all_reports(http, server)
    for model, expected in EXPECTED_BY_TYPE.items():
        body = first[(model, "type")]
        assert by_type(body) == expected, (model, body)
        assert body["totals"]["visits"] == 5 and body["totals"]["conversions"] == 5
        assert body["totals"]["leads"] == 3 and body["totals"]["visitors"] == 4
    camp = {(r["source"], r["medium"], r["campaign"]): (r["visits"], r["conversions"])
            for r in first[("last_click", "source,medium,campaign")]["rows"]}
    assert camp[("yandex", "cpc", "spring")] == (1, 2)
    assert camp[("vk", "cpc", "")] == (1, 1)
    assert camp[("google", "organic", "")] == (1, 0)
    steps = [s["persons"] for s in first["funnel"]["steps"]]
    assert steps == [3, 2, 1]  # A, B, D view a course; A, D sign up; A sends a form
    groups = {(g["source_type"], g["source"]): [s["persons"] for s in g["steps"]]
              for g in first["funnel_by_source"]["groups"]}
    assert groups[("ad", "yandex")] == [1, 1, 1] and groups[("organic", "google")] == [1, 0, 0]

    # the same batches again: accepted again at the edge, counted once in the reports
    again = await send_all(http, server)
    assert [r["accepted"] for r in again] == [5, 1, 2, 2, 2]
    server.wait_processed()
    assert await all_reports(http, server) == first

    async with http.get(server.base_url + "/metrics") as r:
        text = await r.text()
    assert 'skvoz_events_accepted_total{endpoint="collect",project="shop"} 20' in text
    assert 'skvoz_events_accepted_total{endpoint="import",project="shop"} 4' in text


async def test_accepted_event_is_in_the_report_within_a_second(skvoz_server, http):
    server = skvoz_server
    for attempt in range(3):
        source = f"latency{uuid.uuid4().hex[:8]}"
        body = {"site": server.site_key, "client_id": f"lat-{attempt}", "events": [
            ev("pageview", int(time.time() * 1000), f"{SHOP}/?utm_source={source}&utm_medium=cpc")]}
        async with http.post(server.base_url + "/collect", json=body) as r:
            assert r.status == 202 and (await r.json())["accepted"] == 1
        acked = time.monotonic()
        seen_after = None
        while time.monotonic() - acked < 3:
            rows = (await report(http, server, "channels",
                                 [("model", "last_click"), ("group_by", "source")]))["rows"]
            if any(row["source"] == source for row in rows):
                seen_after = time.monotonic() - acked
                break
            await asyncio.sleep(0.02)
        assert seen_after is not None, "event never showed up"
        assert seen_after < 1.0, f"showed up after {seen_after:.3f}s"


async def test_edge_refusals_over_http(skvoz_server, http):
    server = skvoz_server
    body = {"site": server.site_key, "events": [ev("pageview", int(time.time() * 1000), SHOP + "/")]}
    async with http.post(server.base_url + "/collect", json=body,
                         headers={"Origin": "https://evil.example.com"}) as r:
        assert r.status == 403
    async with http.post(server.base_url + "/collect", json={**body, "site": "nope-nope"}) as r:
        assert r.status == 403
    async with http.post(server.base_url + "/collect", data="x" * (300 * 1024),
                         headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 413
    async with http.options(server.base_url + "/collect", headers={
            "Origin": SHOP, "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == SHOP
    async with http.get(server.base_url + "/s.js") as r:
        # the snippet is built by the JS side; either served properly or a clear 404
        if r.status == 200:
            assert r.headers["Content-Type"].startswith("application/javascript")
            assert r.headers["ETag"]
        else:
            assert r.status == 404 and "s.js" in (await r.json())["error"]
    async with http.get(server.base_url + "/api/v1/openapi.json") as r:
        assert r.status == 200 and "/collect" in (await r.json())["paths"]


def test_graceful_stop_and_restart_keeps_data(skvoz_server_factory):
    """SIGTERM drains and snapshots; the next start serves the same data."""
    import urllib.request

    server = skvoz_server_factory().start()
    body = json.dumps({"site": server.site_key, "client_id": "restart-1", "events": [
        ev("pageview", int(time.time() * 1000), f"{SHOP}/?utm_source=restart&utm_medium=cpc")]})
    req = urllib.request.Request(server.base_url + "/collect", data=body.encode(), headers={
        "Content-Type": "application/json", "User-Agent": BROWSER_UA})
    with urllib.request.urlopen(req) as r:
        assert r.status == 202
    assert server.stop() == 0
    assert "shutting down" in server.log() and "stopped" in server.log()
    server.start()
    url = (f"{server.base_url}/api/v1/reports/channels?project={server.project}"
           f"&from={RANGE['from']}&to={RANGE['to']}&model=last_click&group_by=source")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req) as r:
        rows = json.loads(r.read())["rows"]
    assert [x["visits"] for x in rows if x["source"] == "restart"] == [1]
    assert server.stop(sig=signal.SIGINT) == 0  # Ctrl-C is graceful too
    assert server.log().count("stopped") == 2
