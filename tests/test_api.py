"""Query API on a real Store: bearer auth, parameter validation, reports, OpenAPI coverage."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.model import Output
from tests.plugins.clickhouse import attribution_row, ms, visit_row
from tracker.app import State, build_app
from tracker.config import Config
from tracker.openapi import spec

TOKEN = "project-p-token-xxxxxxxxxxxxxx"
TOKEN_Q = "project-q-token-yyyyyyyyyyyyyy"


def make_config() -> Config:
    return Config.model_validate({
        "pii_key": "k",
        "projects": [
            {"id": "p", "timezone": "Europe/Moscow", "api_tokens": [TOKEN],
             "sites": [{"domain": "example.com", "key": "site-key-ppp"}]},
            {"id": "q", "api_tokens": [TOKEN_Q],
             "sites": [{"domain": "q.example.org", "key": "site-key-qqq"}]},
        ],
    })


@pytest.fixture
async def api(store):
    state = State(make_config(), store=store, ready=True)
    client = TestClient(TestServer(build_app(state)))
    await client.start_server()
    client.state = state
    yield client
    await client.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = {"project": "p", "from": "2024-03-01", "to": "2024-03-31"}


async def get(api, path, params, headers=AUTH):
    return await api.get(path, params=params, headers=headers)


# -- auth -----------------------------------------------------------------------------------

AUTH_CASES = [
    ("no header", {}, {}, 401),
    ("empty bearer", {"Authorization": "Bearer "}, {}, 401),
    ("wrong token", {"Authorization": "Bearer nope"}, {}, 401),
    ("basic scheme", {"Authorization": f"Basic {TOKEN}"}, {}, 401),
    ("other project's token", {"Authorization": f"Bearer {TOKEN_Q}"}, {}, 403),
    ("unknown project", AUTH, {"project": "zzz"}, 403),
    ("lower-case scheme", {"Authorization": f"bearer {TOKEN}"}, {}, 200),
]


@pytest.mark.parametrize("path", ["/api/v1/reports/channels", "/api/v1/reports/funnel"])
@pytest.mark.parametrize("label,headers,override,status", AUTH_CASES,
                         ids=[c[0] for c in AUTH_CASES])
async def test_auth(api, path, label, headers, override, status):
    params = {**BASE, **override}
    if path.endswith("funnel"):
        params = [*params.items(), ("steps", "pageview:*"), ("steps", "form:*"),
                  ("window", "3600")]
    r = await api.get(path, params=params, headers=headers)
    assert r.status == status, await r.text()
    body = await r.json()
    if status == 401:
        assert body["error"] and r.headers["WWW-Authenticate"].startswith("Bearer")
    elif status == 403:
        assert "project" in body["error"]


# -- channels parameters --------------------------------------------------------------------

CHANNEL_BAD = [
    ("project missing", {"project": None}, "project"),
    ("from missing", {"from": None}, "from"),
    ("to missing", {"to": None}, "to"),
    ("from not a date", {"from": "yesterday"}, "from"),
    ("from compact form", {"from": "20240301"}, "from"),
    ("to not a calendar date", {"to": "2024-02-30"}, "to"),
    ("from after to", {"from": "2024-04-01"}, "from"),
    ("range over 3 years", {"from": "2021-03-01", "to": "2024-03-02"}, "to"),
    ("unknown model", {"model": "u_shaped"}, "model"),
    ("unknown group_by", {"group_by": "campaign"}, "group_by"),
    ("group_by out of order", {"group_by": "medium,source"}, "group_by"),
    ("unknown parameter", {"modle": "first_click"}, "modle"),
]


@pytest.mark.parametrize("label,override,param", CHANNEL_BAD, ids=[c[0] for c in CHANNEL_BAD])
async def test_channels_bad_params(api, label, override, param):
    params = {k: v for k, v in {**BASE, **override}.items() if v is not None}
    r = await get(api, "/api/v1/reports/channels", params)
    assert r.status == 400, await r.text()
    body = await r.json()
    assert body["reason"] == "bad_params" and body["param"] == param and body["error"]


async def test_repeated_param_is_400(api):
    r = await get(api, "/api/v1/reports/channels",
                  [*BASE.items(), ("model", "first_click"), ("model", "last_click")])
    assert r.status == 400 and (await r.json())["param"] == "model"


async def test_exactly_three_years_is_allowed(api):
    r = await get(api, "/api/v1/reports/channels", {**BASE, "from": "2021-03-02", "to": "2024-03-02"})
    assert r.status == 200


FUNNEL_OK = [("steps", "pageview:/courses*"), ("steps", "goal:signup"), ("window", "86400")]
FUNNEL_BAD = [
    ("one step", [("steps", "pageview:*"), ("window", "60")], "steps"),
    ("eleven steps", [("steps", "pageview:*")] * 11 + [("window", "60")], "steps"),
    ("step without type", [("steps", "/courses"), ("steps", "form:*"), ("window", "60")], "steps"),
    ("step unknown type", [("steps", "click:*"), ("steps", "form:*"), ("window", "60")], "steps"),
    ("step empty pattern", [("steps", "goal:"), ("steps", "form:*"), ("window", "60")], "steps"),
    ("window missing", FUNNEL_OK[:2], "window"),
    ("window zero", FUNNEL_OK[:2] + [("window", "0")], "window"),
    ("window not a number", FUNNEL_OK[:2] + [("window", "1h")], "window"),
    ("window over 90 days", FUNNEL_OK[:2] + [("window", str(91 * 86400))], "window"),
    ("group_by unknown", FUNNEL_OK + [("group_by", "medium")], "group_by"),
]


@pytest.mark.parametrize("label,extra,param", FUNNEL_BAD, ids=[c[0] for c in FUNNEL_BAD])
async def test_funnel_bad_params(api, label, extra, param):
    r = await get(api, "/api/v1/reports/funnel", [*BASE.items(), *extra])
    assert r.status == 400, await r.text()
    body = await r.json()
    assert body["param"] == param and body["error"]


async def test_store_validation_errors_become_400(api):
    """A pageview pattern must start with / or * (the Store's rule): 400, not 500."""
    r = await get(api, "/api/v1/reports/funnel",
                  [*BASE.items(), ("steps", "pageview:courses"), ("steps", "form:*"),
                   ("window", "60")])
    assert r.status == 400
    assert "pageview" in (await r.json())["error"]


# -- reports on real data -------------------------------------------------------------------


async def test_channels_report_reads_the_store(api, store):
    t = ms(2024, 3, 10, 12, 0)
    store.write(Output(
        visits=[visit_row("v1", "c1", t, source=("ad", "yandex", "cpc", "spring"), project_id="p"),
                visit_row("v2", "c2", t + 1000, source=("organic", "google", "organic", ""),
                          project_id="p"),
                visit_row("v3", "c3", t, project_id="q")],
        attributions=[attribution_row("conv1", m, t + 5000, "v1",
                                      source=("ad", "yandex", "cpc", "spring"), project_id="p")
                      for m in ("first_click", "last_click", "last_significant_click")],
    ))
    r = await get(api, "/api/v1/reports/channels",
                  {**BASE, "model": "last_click", "group_by": "source,medium"})
    assert r.status == 200
    body = await r.json()
    rows = {(x["source"], x["medium"]): x for x in body["rows"]}
    assert rows[("yandex", "cpc")]["visits"] == 1 and rows[("yandex", "cpc")]["conversions"] == 1
    assert rows[("google", "organic")]["visits"] == 1
    assert body["totals"]["visits"] == 2  # project q's visit is not there
    # defaults: model last_significant_click, group_by type
    r = await get(api, "/api/v1/reports/channels", BASE)
    body = await r.json()
    assert {x["type"] for x in body["rows"]} == {"ad", "organic"}
    # the day boundary is the project's (Moscow) midnight: 2024-03-11 is empty
    r = await get(api, "/api/v1/reports/channels", {**BASE, "from": "2024-03-11", "to": "2024-03-11"})
    assert (await r.json())["totals"]["visits"] == 0


async def test_funnel_report_shape(api):
    r = await get(api, "/api/v1/reports/funnel", [*BASE.items(), *FUNNEL_OK, ("group_by", "source")])
    assert r.status == 200, await r.text()
    body = await r.json()
    assert [s["step"] for s in body["steps"]] == ["pageview:/courses*", "goal:signup"]
    assert "groups" in body


async def test_queries_run_off_the_event_loop(api, monkeypatch):
    """A slow report must not stall the loop: /healthz answers while it runs."""
    store = api.state.store
    started, release = threading.Event(), threading.Event()

    def slow_channels(*args):
        started.set()
        release.wait(5)
        return {"rows": [], "totals": {}}

    monkeypatch.setattr(store, "channels", slow_channels)
    report = asyncio.ensure_future(get(api, "/api/v1/reports/channels", BASE))
    while not started.is_set():
        await asyncio.sleep(0.01)
    health = await asyncio.wait_for(api.get("/healthz"), 2)
    assert health.status == 200
    release.set()
    assert (await report).status == 200


async def test_not_ready_is_503(store):
    state = State(make_config(), store=None, ready=False)
    client = TestClient(TestServer(build_app(state)))
    await client.start_server()
    try:
        r = await get(client, "/api/v1/reports/channels", BASE)
        assert r.status == 503
    finally:
        await client.close()


# -- OpenAPI --------------------------------------------------------------------------------


async def test_openapi_describes_every_route(api):
    r = await api.get("/api/v1/openapi.json")
    assert r.status == 200
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    missing = []
    for route in api.app.router.routes():
        if route.method == "*":  # the JSON 404/405 catch-alls are not endpoints
            continue
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        method = route.method.lower()
        if method == "head":  # aiohttp adds HEAD beside GET
            method = "get"
        if method not in doc["paths"].get(path, {}):
            missing.append(f"{route.method} {path}")
    assert not missing, f"routes without an OpenAPI description: {missing}"
    described = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    registered = set()
    for route in api.app.router.routes():
        if route.method == "*":
            continue
        info = route.resource.get_info()
        registered.add((info.get("path") or info.get("formatter"), route.method.lower()))
    assert described <= registered, f"described but not served: {described - registered}"


def test_openapi_is_valid():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec())
