"""Query API: channel and funnel reports, scoped to the project of the bearer token.

Parameters are checked here so the caller gets a precise 400; the Store checks them again
(``ValueError`` -> 400 as well). Queries block, so they run in the state's thread pool and the
event loop keeps serving /collect meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import date
from typing import Any

from aiohttp import web

from tracker.app import STATE, State, add_route, error, json_response
from tracker.config import Project

log = logging.getLogger("skvoz.api")

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_RANGE_YEARS = 3
GROUP_BY = ("type", "source", "source,medium", "source,medium,campaign")
FUNNEL_GROUP_BY = ("source",)
STEP_TYPES = ("pageview", "goal", "form", "call", "deal")
MIN_STEPS, MAX_STEPS = 2, 10
MAX_WINDOW_S = 90 * 86400
DEFAULT_MODEL = "last_significant_click"
DEFAULT_GROUP_BY = "type"


def _models() -> tuple[str, ...]:
    try:
        from sink.queries import MODELS
    except ImportError:  # the sink is not installed: fall back to the documented three
        return ("first_click", "last_click", "last_significant_click")
    return tuple(MODELS)


class BadParams(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def authenticate(request: web.Request) -> tuple[Project | None, web.Response | None]:
    """(project, None) for a valid ``Authorization: Bearer TOKEN``, else (None, 401 reply)."""
    st = request.app[STATE]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    project = st.cfg.project_by_token(token.strip()) if scheme.lower() == "bearer" else None
    if project is None:
        msg = "missing bearer token" if not header else "invalid bearer token"
        resp = error(401, msg, reason="unauthorized")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="skvoz"'
        st.metrics.request_errors.inc(request.path, "unauthorized")
        return None, resp
    return project, None


def _one(request: web.Request, name: str, required: bool = True, default: str | None = None) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadParams(f"{name}: given more than once", name)
    if not values or values[0] == "":
        if required:
            raise BadParams(f"{name}: required", name)
        return default
    return values[0]


def _date(request: web.Request, name: str) -> date:
    raw = _one(request, name)
    assert raw is not None
    if not _DATE_RE.match(raw):
        raise BadParams(f"{name}: expected a date as YYYY-MM-DD, got {raw[:40]!r}", name)
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadParams(f"{name}: {raw!r} is not a calendar date", name) from None


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def _check_unknown(request: web.Request, known: set[str]) -> None:
    extra = sorted(set(request.query) - known)
    if extra:
        raise BadParams(f"unknown parameter(s): {', '.join(extra)}", extra[0])


def _common(request: web.Request, project: Project) -> tuple[date, date] | web.Response:
    pid = _one(request, "project")
    if pid != project.id:
        # never say whether that project exists
        return error(403, "the token does not grant access to this project", reason="forbidden")
    d0, d1 = _date(request, "from"), _date(request, "to")
    if d1 < d0:
        raise BadParams(f"from ({d0}) is after to ({d1})", "from")
    if d1 > _add_years(d0, MAX_RANGE_YEARS):
        raise BadParams(f"the date range is longer than {MAX_RANGE_YEARS} years", "to")
    return d0, d1


async def _run(st: State, fn, *args) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(st.executor, fn, *args)


async def _report(request: web.Request, known: set[str], build) -> web.Response:
    st = request.app[STATE]
    project, denied = authenticate(request)
    if denied is not None:
        return denied
    assert project is not None
    try:
        _check_unknown(request, known)
        common = _common(request, project)
        if isinstance(common, web.Response):
            return common
        method, args = build(request, project, *common)
    except BadParams as e:
        st.metrics.request_errors.inc(request.path, "bad_params")
        return error(400, str(e), reason="bad_params", param=e.param)
    if not st.ready or st.store is None:
        return error(503, "server is starting", reason="not_ready")
    try:
        result = await _run(st, getattr(st.store, method), *args)
    except ValueError as e:  # the Store's own parameter checks (sink.queries.ReportError)
        st.metrics.request_errors.inc(request.path, "bad_params")
        return error(400, str(e), reason="bad_params")
    except Exception:
        log.exception("report query failed: %s", request.path_qs)
        return error(500, "the report query failed; see the server log", reason="query_failed")
    return json_response(result)


def _channels_call(request: web.Request, project: Project, d0: date, d1: date):
    model = _one(request, "model", required=False, default=DEFAULT_MODEL)
    models = _models()
    if model not in models:
        raise BadParams(f"model: unknown model {model!r}; one of {', '.join(models)}", "model")
    group_by = _one(request, "group_by", required=False, default=DEFAULT_GROUP_BY)
    if group_by not in GROUP_BY:
        raise BadParams(f"group_by: {group_by!r} is not one of {' | '.join(GROUP_BY)}", "group_by")
    return "channels", (project.id, project.timezone, d0, d1, model, group_by.split(","))


def _funnel_call(request: web.Request, project: Project, d0: date, d1: date):
    steps = request.query.getall("steps", [])
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise BadParams(f"steps: give {MIN_STEPS} to {MAX_STEPS} steps as steps=TYPE:PATTERN",
                        "steps")
    for i, step in enumerate(steps, start=1):
        etype, sep, pattern = step.partition(":")
        if not sep or etype not in STEP_TYPES or not pattern:
            raise BadParams(f"steps: step {i} {step[:80]!r} is not TYPE:PATTERN with TYPE one of "
                            f"{', '.join(STEP_TYPES)} (e.g. pageview:/courses*, goal:signup, form:*)",
                            "steps")
    raw_window = _one(request, "window")
    assert raw_window is not None
    if not raw_window.isdigit() or not 1 <= int(raw_window) <= MAX_WINDOW_S:
        raise BadParams(f"window: a whole number of seconds from 1 to {MAX_WINDOW_S}", "window")
    group_by = _one(request, "group_by", required=False)
    if group_by is not None and group_by not in FUNNEL_GROUP_BY:
        raise BadParams(f"group_by: {group_by!r} is not one of {', '.join(FUNNEL_GROUP_BY)}",
                        "group_by")
    return "funnel", (project.id, project.timezone, d0, d1, steps, int(raw_window), group_by)


async def channels(request: web.Request) -> web.Response:
    return await _report(request, {"project", "from", "to", "model", "group_by"}, _channels_call)


async def funnel(request: web.Request) -> web.Response:
    return await _report(request, {"project", "from", "to", "steps", "window", "group_by"},
                         _funnel_call)


async def openapi(request: web.Request) -> web.Response:
    from tracker.openapi import spec

    return json_response(spec())


def add_routes(app: web.Application) -> None:
    add_route(app, "GET", "/api/v1/reports/channels", channels)
    add_route(app, "GET", "/api/v1/reports/funnel", funnel)
    add_route(app, "GET", "/api/v1/openapi.json", openapi)
