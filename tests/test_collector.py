"""Collector: validation, enrichment and HTTP behaviour of /collect, the import, /s.js, CORS,
cookies and /metrics, against a fake of our own runtime that records what was submitted."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.identity import keyed_hash
from tracker import collector, enrich
from tracker.app import State, build_app
from tracker.config import Config
from tracker.enrich import DropReason

PII = "unit-test-pii-key"
KEY = "main-site-key-01"
KEY_DISABLED = "disabled-key-02"
KEY_CONTACTS = "contacts-key-03"
KEY_OTHER = "other-site-key-04"
TOKEN = "main-token-aaaaaaaaaaaaaaaa"
TOKEN_OTHER = "other-token-bbbbbbbbbbbbbbb"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
BROWSER = {"User-Agent": CHROME}


def make_config(**server) -> Config:
    return Config.model_validate({
        "pii_key": PII,
        "server": server,
        "projects": [
            {"id": "main", "currency": "KZT", "api_tokens": [TOKEN], "sites": [
                {"domain": "shop.example.ru", "key": KEY},
                {"domain": "landing.example.kz", "key": KEY_DISABLED, "enabled": False},
            ]},
            {"id": "crm", "store_contacts": True, "sites": [
                {"domain": "crm-site.ru", "key": KEY_CONTACTS}]},
            {"id": "other", "api_tokens": [TOKEN_OTHER], "sites": [
                {"domain": "other.org", "key": KEY_OTHER}]},
        ],
    })


class FakeRuntime:
    """Records submitted events; ``fail`` makes submit behave like a stopped runtime."""

    def __init__(self) -> None:
        self.events = []
        self.calls = 0
        self.fail = False

    def submit(self, events):
        if self.fail:
            raise RuntimeError("runtime is stopped")
        self.calls += 1
        self.events.extend(events)

    def stats(self):
        return {"submitted": len(self.events), "lag": 0}


@pytest.fixture
def runtime():
    return FakeRuntime()


async def _client(cfg: Config, runtime, ready=True):
    state = State(cfg, runtime=runtime, ready=ready)
    client = TestClient(TestServer(build_app(state)))
    await client.start_server()
    client.state = state
    return client


@pytest.fixture
async def client(runtime):
    c = await _client(make_config(), runtime)
    yield c
    await c.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def pv(**kw) -> dict:
    ev = {"id": str(uuid.uuid4()), "type": "pageview", "ts": now_ms(),
          "url": "https://shop.example.ru/courses/python?utm_source=yandex", "referrer": "",
          "title": "Python"}
    ev.update(kw)
    return ev


async def post(client, events, site=KEY, headers=None, **body):
    payload = {"site": site, "events": events, **body}
    return await client.post("/collect", data=json.dumps(payload),
                             headers={"Content-Type": "application/json", **BROWSER,
                                      **(headers or {})})


# -- per-event drop reasons (table) ---------------------------------------------------------

H = 3600 * 1000
REJECT_CASES = [
    ("not an object", lambda: "pageview", DropReason.INVALID_EVENT, "object"),
    ("id missing", lambda: {k: v for k, v in pv().items() if k != "id"},
     DropReason.INVALID_EVENT, "id"),
    ("id not a uuid", lambda: pv(id="12345"), DropReason.INVALID_EVENT, "id"),
    ("ts a string", lambda: pv(ts="1700000000000"), DropReason.INVALID_EVENT, "ts"),
    ("ts a bool", lambda: pv(ts=True), DropReason.INVALID_EVENT, "ts"),
    ("url not a string", lambda: pv(url=5), DropReason.INVALID_EVENT, "url"),
    ("props not an object", lambda: pv(props=[1]), DropReason.INVALID_EVENT, "props"),
    ("props too many keys", lambda: pv(props={f"k{i}": i for i in range(65)}),
     DropReason.INVALID_EVENT, "props"),
    ("pageview without http url", lambda: pv(url="javascript:alert(1)"),
     DropReason.INVALID_EVENT, "url"),
    ("goal without name", lambda: pv(type="goal", name=""), DropReason.INVALID_EVENT, "name"),
    ("contact not an object", lambda: pv(type="form", contact="+79123456789"),
     DropReason.INVALID_EVENT, "contact"),
    ("type missing", lambda: {k: v for k, v in pv().items() if k != "type"},
     DropReason.INVALID_EVENT, "type"),
    ("unknown type", lambda: pv(type="click"), DropReason.UNKNOWN_TYPE, "click"),
    ("call only via import", lambda: pv(type="call", name="line"), DropReason.UNKNOWN_TYPE, ""),
    ("ts 73 h ago", lambda: pv(ts=now_ms() - 73 * H), DropReason.TIMESTAMP_OUT_OF_WINDOW, "ts"),
    ("ts 6 min ahead", lambda: pv(ts=now_ms() + 6 * 60_000),
     DropReason.TIMESTAMP_OUT_OF_WINDOW, "ts"),
    ("ts in seconds", lambda: pv(ts=now_ms() // 1000), DropReason.TIMESTAMP_OUT_OF_WINDOW, ""),
    ("value not a number", lambda: pv(type="goal", name="buy", props={"value": "abc"}),
     DropReason.INVALID_VALUE, "value"),
    ("value negative", lambda: pv(type="goal", name="buy", props={"value": -5}),
     DropReason.INVALID_VALUE, "value"),
    ("value infinite", lambda: pv(type="goal", name="buy", props={"value": "1e400"}),
     DropReason.INVALID_VALUE, "value"),
    ("value a bool", lambda: pv(type="goal", name="buy", props={"value": True}),
     DropReason.INVALID_VALUE, "value"),
]


@pytest.mark.parametrize("label,make,reason,detail", REJECT_CASES,
                         ids=[c[0] for c in REJECT_CASES])
async def test_event_rejected_with_reason(client, runtime, label, make, reason, detail):
    good = pv()
    r = await post(client, [good, make()])
    assert r.status == 202
    body = await r.json()
    assert body["accepted"] == 1
    assert len(body["rejected"]) == 1
    rej = body["rejected"][0]
    assert rej["index"] == 1 and rej["reason"] == reason.value
    assert detail in rej.get("detail", "")
    assert [e.event_id for e in runtime.events] == [good["id"]]


ACCEPT_CASES = [
    ("ts 71 h ago", lambda: pv(ts=now_ms() - 71 * H)),
    ("ts 4 min ahead", lambda: pv(ts=now_ms() + 4 * 60_000)),
    ("ts as float ms", lambda: pv(ts=float(now_ms()))),
    ("form without name or contact", lambda: pv(type="form", name="")),
    ("goal with numeric string value", lambda: pv(type="goal", name="buy", props={"value": "1990,50"})),
    ("uuid without hyphens", lambda: pv(id=uuid.uuid4().hex)),
    ("extra unknown fields", lambda: pv(foo="bar")),
    ("pageview props.value is only a property", lambda: pv(props={"value": "n/a"})),
    ("null optional fields", lambda: pv(referrer=None, title=None, props=None)),
]


@pytest.mark.parametrize("label,make", ACCEPT_CASES, ids=[c[0] for c in ACCEPT_CASES])
async def test_event_accepted(client, runtime, label, make):
    r = await post(client, [make()])
    body = await r.json()
    assert r.status == 202 and body["accepted"] == 1 and body["rejected"] == [], body
    assert len(runtime.events) == 1


async def test_event_fields_are_canonical(client, runtime):
    eid = str(uuid.uuid4())
    ts = now_ms() - 1000
    before = now_ms()
    r = await post(client, [pv(id=eid.upper(), ts=ts),
                            pv(type="goal", name="signup", props={"value": 1500, "plan": "pro"})],
                   client_id="cid.123")
    assert r.status == 202
    a, b = runtime.events
    assert a.event_id == eid and a.ts == ts and a.project_id == "main"
    assert a.site == "shop.example.ru" and a.client_id == "cid.123"
    assert a.user_agent == CHROME and before <= a.received_at <= now_ms()
    assert a.value == 0.0 and a.currency == ""
    assert b.type == "goal" and b.name == "signup" and b.value == 1500.0 and b.currency == "KZT"
    assert b.props == {"value": 1500, "plan": "pro"}


async def test_duplicate_id_within_request(client, runtime):
    eid = str(uuid.uuid4())
    r = await post(client, [pv(id=eid), pv(id=eid.upper())])
    body = await r.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [{"index": 1, "reason": "duplicate_id",
                                 "detail": "same id earlier in this request"}]


# -- request-level drops --------------------------------------------------------------------

BOT_CASES = [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", True),
    ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 HeadlessChrome/124.0 Safari/537.36", True),
    ("curl/8.5.0", True),
    ("python-requests/2.31", True),
    ("Python/3.11 aiohttp/3.9.5", True),
    ("facebookexternalhit/1.1", True),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0)", True),
    (CHROME, False),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/122.0.0.0 YaBrowser/24.4.0.0 Safari/537.36", False),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", False),
    ("Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/123.0 Mobile Safari/537.36", False),
]


@pytest.mark.parametrize("ua,bot", BOT_CASES, ids=[u[:30] for u, _ in BOT_CASES])
async def test_bot_user_agents(client, runtime, ua, bot):
    r = await post(client, [pv(), pv()], headers={"User-Agent": ua})
    body = await r.json()
    assert r.status == 202
    if bot:
        assert body["accepted"] == 0
        assert [x["reason"] for x in body["rejected"]] == ["bot_user_agent"] * 2
        assert runtime.events == []
    else:
        assert body["accepted"] == 2 and body["rejected"] == []


async def test_bot_filter_can_be_turned_off(runtime):
    c = await _client(make_config(drop_bots=False), runtime)
    try:
        r = await post(c, [pv()], headers={"User-Agent": "HeadlessChrome/124.0"})
        assert (await r.json())["accepted"] == 1
    finally:
        await c.close()


async def test_disabled_site_rejects_every_event(client, runtime):
    r = await post(client, [pv(), pv()], site=KEY_DISABLED)
    body = await r.json()
    assert r.status == 202 and body["accepted"] == 0
    assert {x["reason"] for x in body["rejected"]} == {"site_disabled"}
    assert runtime.events == []


REFUSE_CASES = [
    # (label, raw body, content type, headers, status, reason)
    ("not json", b"{nope", "application/json", {}, 400, "malformed_body"),
    ("json array", b"[]", "application/json", {}, 400, "malformed_body"),
    ("no site", json.dumps({"events": [pv()]}).encode(), "application/json", {}, 400,
     "malformed_body"),
    ("site not a string", json.dumps({"site": 5, "events": [pv()]}).encode(),
     "application/json", {}, 400, "malformed_body"),
    ("events missing", json.dumps({"site": KEY}).encode(), "application/json", {}, 400,
     "malformed_body"),
    ("events empty", json.dumps({"site": KEY, "events": []}).encode(), "application/json", {},
     400, "malformed_body"),
    ("events an object", json.dumps({"site": KEY, "events": {}}).encode(), "application/json",
     {}, 400, "malformed_body"),
    ("bad client_id", json.dumps({"site": KEY, "client_id": "a b", "events": [pv()]}).encode(),
     "application/json", {}, 400, "invalid_client_id"),
    ("client_id too long", json.dumps({"site": KEY, "client_id": "a" * 65,
                                       "events": [pv()]}).encode(),
     "application/json", {}, 400, "invalid_client_id"),
    ("client_id a number", json.dumps({"site": KEY, "client_id": 5, "events": [pv()]}).encode(),
     "application/json", {}, 400, "invalid_client_id"),
    ("invalid utf-8", b'{"site": "\xff\xfe"}', "application/json", {}, 400, "malformed_body"),
    ("unknown site key", json.dumps({"site": "nope-nope-nope", "events": [pv()]}).encode(),
     "application/json", {}, 403, "unknown_site"),
    ("foreign origin", json.dumps({"site": KEY, "events": [pv()]}).encode(), "application/json",
     {"Origin": "https://evil.com"}, 403, "origin_not_allowed"),
    ("lookalike origin", json.dumps({"site": KEY, "events": [pv()]}).encode(),
     "application/json", {"Origin": "https://evilshop.example.ru"}, 403, "origin_not_allowed"),
    ("other project's origin", json.dumps({"site": KEY, "events": [pv()]}).encode(),
     "application/json", {"Origin": "https://other.org"}, 403, "origin_not_allowed"),
    ("null origin", json.dumps({"site": KEY, "events": [pv()]}).encode(), "application/json",
     {"Origin": "null"}, 403, "origin_not_allowed"),
    ("101 events", json.dumps({"site": KEY, "events": [pv() for _ in range(101)]}).encode(),
     "application/json", {}, 413, "too_many_events"),
    ("body over 256 KB", json.dumps({"site": KEY, "events": [pv(title="x" * 1000)] * 1,
                                     "pad": "x" * (256 * 1024)}).encode(),
     "application/json", {}, 413, "body_too_large"),
    ("form-encoded", b"site=x", "application/x-www-form-urlencoded", {}, 415,
     "unsupported_media_type"),
]


@pytest.mark.parametrize("label,raw,ctype,headers,status,reason", REFUSE_CASES,
                         ids=[c[0] for c in REFUSE_CASES])
async def test_request_refused(client, runtime, label, raw, ctype, headers, status, reason):
    r = await client.post("/collect", data=raw,
                          headers={"Content-Type": ctype, **BROWSER, **headers})
    assert r.status == status
    body = await r.json()
    assert body["reason"] == reason and body["error"]
    assert runtime.events == []
    metrics = await (await client.get("/metrics")).text()
    assert f'skvoz_http_request_errors_total{{route="/collect",reason="{reason}"}} 1' in metrics


async def test_chunked_body_over_limit_is_413(client, runtime):
    async def gen():
        for _ in range(300):
            yield b"x" * 1024

    r = await client.post("/collect", data=gen(), headers={"Content-Type": "text/plain"})
    assert r.status == 413
    assert (await r.json())["reason"] == "body_too_large"


async def test_text_plain_for_send_beacon(client, runtime):
    r = await client.post("/collect", data=json.dumps({"site": KEY, "events": [pv()]}),
                          headers={"Content-Type": "text/plain;charset=UTF-8", **BROWSER})
    assert r.status == 202 and (await r.json())["accepted"] == 1


@pytest.mark.parametrize("origin", ["https://shop.example.ru", "https://www.shop.example.ru",
                                    "http://m.shop.example.ru:8080", "https://landing.example.kz"])
async def test_allowed_origins_are_reflected(client, runtime, origin):
    r = await post(client, [pv()], headers={"Origin": origin})
    assert r.status == 202
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in r.headers["Vary"]


async def test_extra_allowed_origin_from_config(runtime):
    c = await _client(make_config(allowed_origins=["https://staging.partner.net"]), runtime)
    try:
        r = await post(c, [pv()], headers={"Origin": "https://staging.partner.net"})
        assert r.status == 202
        r = await post(c, [pv()], headers={"Origin": "https://prod.partner.net"})
        assert r.status == 403
    finally:
        await c.close()


async def test_no_cors_headers_without_origin(client):
    r = await post(client, [pv()])
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_errors_carry_cors_for_allowed_origin(client):
    """The snippet can read why a request from its own site was refused."""
    r = await post(client, [], headers={"Origin": "https://shop.example.ru"})
    assert r.status == 400
    assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example.ru"


async def test_preflight(client):
    r = await client.options("/collect", headers={
        "Origin": "https://www.shop.example.ru", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://www.shop.example.ru"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "content-type"
    assert "Origin" in r.headers["Vary"]
    r = await client.options("/collect", headers={"Origin": "https://evil.com",
                                                  "Access-Control-Request-Method": "POST"})
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


# -- client id and cookie -------------------------------------------------------------------


def set_cookie(r) -> dict[str, str]:
    raw = r.headers["Set-Cookie"]
    parts = [p.strip() for p in raw.split(";")]
    name, _, value = parts[0].partition("=")
    attrs = {p.partition("=")[0].lower(): p.partition("=")[2] for p in parts[1:]}
    return {"name": name, "value": value, **attrs}


async def test_new_client_id_is_minted_and_set(client, runtime):
    r = await post(client, [pv()])
    body = await r.json()
    cid = body["client_id"]
    assert enrich.valid_client_id(cid) and len(cid) >= 16
    c = set_cookie(r)
    assert c["name"] == "skvoz_cid" and c["value"] == cid
    assert c["max-age"] == str(400 * 86400) and c["samesite"] == "Lax" and c["path"] == "/"
    assert "httponly" not in c and "secure" not in c
    assert runtime.events[0].client_id == cid
    # the browser sends the cookie back: same client
    r2 = await post(client, [pv()])
    assert (await r2.json())["client_id"] == cid
    client.session.cookie_jar.clear()
    r3 = await post(client, [pv()])
    assert (await r3.json())["client_id"] != cid


async def test_client_id_from_body_wins_over_cookie(client, runtime):
    r = await post(client, [pv()], client_id="body-id", headers={"Cookie": "skvoz_cid=cookie-id"})
    assert (await r.json())["client_id"] == "body-id"
    assert set_cookie(r)["value"] == "body-id"


async def test_client_id_from_cookie(client, runtime):
    r = await post(client, [pv()], headers={"Cookie": "skvoz_cid=abc.DEF-123_x"})
    assert (await r.json())["client_id"] == "abc.DEF-123_x"
    assert runtime.events[0].client_id == "abc.DEF-123_x"


async def test_invalid_cookie_is_replaced_not_refused(client, runtime):
    r = await post(client, [pv()], headers={"Cookie": 'skvoz_cid="bad id!"'})
    assert r.status == 202
    cid = (await r.json())["client_id"]
    assert cid != "bad id!" and enrich.valid_client_id(cid)


@pytest.mark.parametrize("trust,headers,secure", [
    (False, {}, False),
    (False, {"X-Forwarded-Proto": "https"}, False),
    (True, {"X-Forwarded-Proto": "https"}, True),
    (True, {"X-Forwarded-Proto": "http"}, False),
    (True, {}, False),
])
async def test_secure_cookie_behind_proxy(runtime, trust, headers, secure):
    c = await _client(make_config(trust_proxy=trust), runtime)
    try:
        r = await post(c, [pv()], headers=headers)
        assert ("secure" in set_cookie(r)) is secure
    finally:
        await c.close()


# -- contacts -------------------------------------------------------------------------------


def form(contact: dict, **kw) -> dict:
    return pv(type="form", name="callback", contact=contact, **kw)


CONTACT_CASES = [
    # (contact, phone normalised or None, email normalised or None, warned fields)
    ({"phone": "8 (912) 345-67-89", "email": " Ivan@Example.RU "}, "79123456789",
     "ivan@example.ru", []),
    ({"phone": "+7 912 345 67 89"}, "79123456789", None, []),
    ({"phone": "+998 90 123 45 67"}, "998901234567", None, []),
    ({"phone": "12345"}, None, None, ["phone"]),
    ({"phone": "12345", "email": "a@b.co"}, None, "a@b.co", ["phone"]),
    ({"email": "not-an-email"}, None, None, ["email"]),
    ({"phone": ["+79123456789"]}, None, None, ["phone"]),
    ({"phone": "", "email": ""}, None, None, []),
    ({"name": "Ivan"}, None, None, []),
]


@pytest.mark.parametrize("contact,phone,email,warned", CONTACT_CASES,
                         ids=[json.dumps(c[0], ensure_ascii=False) for c in CONTACT_CASES])
async def test_contacts_hashed_not_stored(client, runtime, contact, phone, email, warned):
    r = await post(client, [form(contact)])
    body = await r.json()
    assert body["accepted"] == 1 and body["rejected"] == []
    assert [w["field"] for w in body.get("warnings", [])] == warned
    assert all(w["reason"] == "invalid_contact" and w["index"] == 0
               for w in body.get("warnings", []))
    ev = runtime.events[0]
    key = PII.encode()
    assert ev.phone_hash == (keyed_hash(key, "phone", phone) if phone else "")
    assert ev.email_hash == (keyed_hash(key, "email", email) if email else "")
    assert ev.phone == "" and ev.email == "" and ev.contact_name == ""
    # nothing raw leaks into the serialised event either
    text = ev.to_json()
    for raw in (contact.get("phone"), contact.get("email"), contact.get("name")):
        if isinstance(raw, str) and raw.strip():
            assert raw.strip() not in text


async def test_contacts_stored_with_opt_in(client, runtime):
    r = await post(client, [form({"phone": "8 912 345-67-89", "email": "A@B.CO", "name": "Ivan"})],
                   site=KEY_CONTACTS)
    assert (await r.json())["accepted"] == 1
    ev = runtime.events[0]
    assert (ev.phone, ev.email, ev.contact_name) == ("79123456789", "a@b.co", "Ivan")
    assert ev.phone_hash == keyed_hash(PII.encode(), "phone", "79123456789")


async def test_invalid_contact_counted_in_metrics(client):
    await post(client, [form({"phone": "123"}), form({"phone": "1", "email": "x"})])
    text = await (await client.get("/metrics")).text()
    assert ('skvoz_contacts_dropped_total{endpoint="collect",field="phone",'
            'reason="invalid_contact"} 2') in text
    assert ('skvoz_contacts_dropped_total{endpoint="collect",field="email",'
            'reason="invalid_contact"} 1') in text
    assert 'skvoz_events_accepted_total{endpoint="collect",project="main"} 2' in text


# -- readiness, runtime failure, metrics ----------------------------------------------------


async def test_not_ready_is_503(runtime):
    c = await _client(make_config(), runtime, ready=False)
    try:
        assert (await c.get("/healthz")).status == 503
        r = await post(c, [pv()])
        assert r.status == 503 and (await r.json())["reason"] == "not_ready"
        c.state.ready = True
        h = await c.get("/healthz")
        assert h.status == 200 and (await h.json())["status"] == "ok"
        assert (await post(c, [pv()])).status == 202
    finally:
        await c.close()


async def test_dead_runtime_thread_fails_healthz(client, runtime):
    assert (await client.get("/healthz")).status == 200
    runtime.stats = lambda: {"submitted": 0, "running": False}
    r = await client.get("/healthz")
    assert r.status == 503 and (await r.json())["status"] == "runtime stopped"


async def test_stopped_runtime_is_503_not_202(client, runtime):
    runtime.fail = True
    r = await post(client, [pv()])
    assert r.status == 503
    assert "stopped" in (await r.json())["error"]


async def test_metrics_count_rejections_by_reason(client):
    await post(client, [pv(), pv(type="nope"), pv(ts=1)])
    await post(client, [pv()], headers={"User-Agent": "curl/8.0"})
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    assert "# TYPE skvoz_events_rejected_total counter" in text
    for line in ('skvoz_events_accepted_total{endpoint="collect",project="main"} 1',
                 'skvoz_events_rejected_total{endpoint="collect",reason="unknown_type"} 1',
                 'skvoz_events_rejected_total{endpoint="collect",reason="timestamp_out_of_window"} 1',
                 'skvoz_events_rejected_total{endpoint="collect",reason="bot_user_agent"} 1',
                 'skvoz_http_requests_total{route="/collect",status="202"} 2',
                 "skvoz_runtime_submitted 1",
                 "skvoz_ready_state 1"):
        assert line in text, line


async def test_unknown_route_is_json_404_and_wrong_method_json_405(client):
    r = await client.get("/nope/deeper")
    assert r.status == 404 and (await r.json())["error"] == "not found"
    r = await client.get("/collect")
    assert r.status == 405 and "POST" in (await r.json())["error"]
    assert set(r.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    r = await client.delete("/healthz")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
    r = await client.head("/healthz")
    assert r.status == 200
    text = await (await client.get("/metrics")).text()
    assert 'skvoz_http_requests_total{route="unmatched",status="404"} 1' in text
    assert 'skvoz_http_requests_total{route="/collect",status="405"} 1' in text


# -- trusted import -------------------------------------------------------------------------


def imp(**kw) -> dict:
    ev = {"site": KEY, "client_id": "imported-1", **pv(ts=now_ms() - 400 * 86400 * 1000)}
    ev.update(kw)
    return ev


async def post_import(client, body: bytes | str, token=TOKEN, ctype="application/json"):
    return await client.post("/api/v1/import/events", data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": ctype})


async def test_import_json_lines_and_reasons(client, runtime):
    lines = [
        json.dumps(imp()),                                           # 0 ok, a year old
        json.dumps(imp(site="shop.example.ru", client_id="c2")),     # 1 ok, by domain
        json.dumps(imp(site="www.shop.example.ru")),                 # 2 ok, www. domain
        "{not json",                                                 # 3
        json.dumps(imp(site=KEY_OTHER)),                             # 4 other project's site
        json.dumps(imp(client_id="bad id")),                         # 5
        json.dumps(imp(ts=now_ms() + 3600_000)),                     # 6 future
        json.dumps(imp(type="call", name="main-line")),              # 7 ok: import takes calls
        json.dumps(imp(site=KEY_DISABLED)),                          # 8
        json.dumps(imp(user_agent="Googlebot/2.1")),                 # 9
        json.dumps([1]),                                             # 10
        "",
        json.dumps(imp(type="goal", name="buy", props={"value": 10}, ts=1_500_000_000_000)),
    ]
    r = await post_import(client, "\n".join(lines), ctype="application/x-ndjson")
    assert r.status == 202
    body = await r.json()
    assert body["accepted"] == 5
    got = {x["index"]: x["reason"] for x in body["rejected"]}
    assert got == {3: "invalid_event", 4: "unknown_site", 5: "invalid_client_id",
                   6: "timestamp_out_of_window", 8: "site_disabled", 9: "bot_user_agent",
                   10: "invalid_event"}
    assert [e.client_id for e in runtime.events] == ["imported-1", "c2", "imported-1",
                                                     "imported-1", "imported-1"]
    assert runtime.events[3].type == "call"
    assert runtime.events[4].value == 10.0 and runtime.events[4].currency == "KZT"
    text = await (await client.get("/metrics")).text()
    assert 'skvoz_events_accepted_total{endpoint="import",project="main"} 5' in text


async def test_import_json_array(client, runtime):
    r = await post_import(client, json.dumps([imp(), imp(), imp(type="x")]))
    body = await r.json()
    assert body["accepted"] == 2 and body["rejected"][0]["reason"] == "unknown_type"


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Bearer nope"}, 401),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
])
async def test_import_needs_token(client, runtime, headers, status):
    r = await client.post("/api/v1/import/events", data=json.dumps([imp()]), headers=headers)
    assert r.status == status
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert runtime.events == []


async def test_import_site_must_be_of_token_project(client, runtime):
    r = await post_import(client, json.dumps([imp()]), token=TOKEN_OTHER)
    body = await r.json()
    assert body["accepted"] == 0 and body["rejected"][0]["reason"] == "unknown_site"


@pytest.mark.parametrize("raw,status", [(b"", 400), (b"[1, 2", 400), (b"   \n\n", 400)])
async def test_import_bad_body(client, raw, status):
    r = await post_import(client, raw)
    assert r.status == status and (await r.json())["reason"] == "malformed_body"


async def test_import_body_limit(client, monkeypatch):
    monkeypatch.setattr(collector, "IMPORT_MAX_BYTES", 1000)
    r = await post_import(client, json.dumps([imp() for _ in range(20)]))
    assert r.status == 413 and (await r.json())["reason"] == "body_too_large"


async def test_import_submits_in_chunks(client, runtime, monkeypatch):
    monkeypatch.setattr(collector, "IMPORT_SUBMIT_CHUNK", 3)
    r = await post_import(client, "\n".join(json.dumps(imp()) for _ in range(7)))
    assert (await r.json())["accepted"] == 7
    assert runtime.calls == 3 and len(runtime.events) == 7


# -- snippet and call tracking --------------------------------------------------------------


async def test_snippet_missing_is_404(client, tmp_path, monkeypatch):
    monkeypatch.setattr(collector, "STATIC_DIR", tmp_path)
    r = await client.get("/s.js")
    assert r.status == 404 and "s.js" in (await r.json())["error"]


async def test_snippet_etag_and_304(client, tmp_path, monkeypatch):
    monkeypatch.setattr(collector, "STATIC_DIR", tmp_path)
    (tmp_path / "s.js").write_text("console.log(1);")
    r = await client.get("/s.js")
    assert r.status == 200 and await r.text() == "console.log(1);"
    assert r.headers["Content-Type"].startswith("application/javascript")
    assert r.headers["Cache-Control"] == "public, max-age=3600"
    etag = r.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    r = await client.get("/s.js", headers={"If-None-Match": etag})
    assert r.status == 304 and r.headers["ETag"] == etag
    # new content, new tag
    (tmp_path / "s.js").write_text("console.log(22);")
    r = await client.get("/s.js", headers={"If-None-Match": etag})
    assert r.status == 200 and r.headers["ETag"] != etag


@pytest.mark.parametrize("query,status,text", [
    ({"site": KEY, "client_id": "abc"}, 404, "call tracking is not configured for this site"),
    ({"site": "unknown-key-1"}, 403, "unknown site key"),
    ({}, 400, "site"),
    ({"site": KEY, "client_id": "a b"}, 400, "client_id"),
])
async def test_calltracking_numbers(client, query, status, text):
    r = await client.get("/calltracking/numbers", params=query)
    assert r.status == status
    assert text in (await r.json())["error"]


# -- enrichment unit level ------------------------------------------------------------------


def test_every_drop_reason_is_exercised():
    """Each DropReason appears in a table above (or in the import test)."""
    covered = {c[2] for c in REJECT_CASES} | {
        DropReason.BOT_USER_AGENT, DropReason.SITE_DISABLED, DropReason.DUPLICATE_ID,
        DropReason.UNKNOWN_SITE, DropReason.INVALID_CLIENT_ID, DropReason.INVALID_CONTACT}
    assert covered == set(DropReason)


def test_steps_are_named_and_ordered():
    assert [n for n, _ in enrich.EVENT_STEPS] == [
        "validate_shape", "check_type", "check_timestamp", "conversion_value", "hash_contact"]
    assert [n for n, _ in enrich.REQUEST_STEPS] == ["site_enabled", "bot_filter"]


async def test_long_url_and_title_are_truncated_not_dropped(client, runtime):
    from tracker.enrich import MAX_TITLE, MAX_URL

    long_url = "https://shop.example.ru/?q=" + "a" * 5000
    r = await post(client, [pv(url=long_url, title="t" * 2000)])
    body = await r.json()
    assert r.status == 202 and body["accepted"] == 1 and body["rejected"] == []
    [event] = runtime.events
    assert event.url == long_url[:MAX_URL] and len(event.title) == MAX_TITLE


async def test_refusals_carry_cors_so_the_counter_can_read_them(client):
    r = await post(client, [pv()], site="no-such-key-123", headers={"Origin": "https://shop.example.ru"})
    assert r.status == 403
    assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example.ru"


async def test_livez_answers_while_not_ready(runtime):
    """Liveness never depends on readiness: a collector waiting for Kafka must not be restarted."""
    st = State(make_config(), runtime=runtime, ready=False)
    async with TestClient(TestServer(build_app(st))) as c:
        assert (await c.get("/healthz")).status == 503
        assert (await c.get("/livez")).status == 200
